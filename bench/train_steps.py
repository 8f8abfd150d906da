"""Training steps to time: one optimizer step (forward, loss, backward, AdamW) of a model
in each row's configuration. Shared by ``bench/test_train.py`` (pytest-benchmark rows) and
``python -m bench.train_throughput`` (interleaved images/s for the README and notes)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ascan import build_model
from ascan.train.optim import param_groups

# (model, build kwargs, input shape without batch): the default trainers' shapes
CASES = {
    "ascan_t@digits32": ("ascan_t", dict(num_classes=10, in_chans=1), (1, 32, 32)),
    "ascan_t@224": ("ascan_t", dict(num_classes=1000), (3, 224, 224)),
    "ascan_unet_c2i_t@digits8": ("ascan_unet_c2i_t", dict(num_classes=10, in_channels=1), (1, 8, 8)),
}
ROWS = ("eager", "fused", "compile(eager)")


def make_step(case: str, row: str, dtype: str, batch: int, device: torch.device):
    """A zero-argument callable running one training step; the weights start equal in every row."""
    name, kwargs, shape = CASES[case]
    torch.manual_seed(0)
    model = build_model(name, fused=row == "fused", **kwargs).to(device).train()
    train_model = torch.compile(model) if row.startswith("compile") else model
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g).to(device)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    if "unet" in name:
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        y = torch.randint(0, kwargs["num_classes"] + 1, (batch,), generator=g).to(device)
        eps = torch.randn(batch, *shape, generator=g).to(device)

        def loss_fn():
            return F.mse_loss(train_model(x, t, y).float(), eps)
    else:
        y = torch.randint(0, kwargs["num_classes"], (batch,), generator=g).to(device)

        def loss_fn():
            return F.cross_entropy(train_model(x).float(), y, label_smoothing=0.1)

    def step():
        with ctx():
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step

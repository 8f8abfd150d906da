"""fused=True trains like fused=False: same losses over tens of steps from the same init,
with the fused impls visible in the trace (the unfused model is the reference)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan import build_model
from ascan.train.optim import param_groups


def _train(name, kwargs, fused, batches, loss_fn, steps):
    torch.manual_seed(0)
    m = build_model(name, fused=fused, **kwargs).train()
    opt = torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3)
    losses = []
    with K.trace() as tr:
        for i in range(steps):
            loss = loss_fn(m, *batches[i % len(batches)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses, tr


def _assert_same_trajectory(fused, eager):
    # the first steps agree to float32 rounding (the same gradients); later ones drift apart
    # only as float32 training runs do, by rounding amplified over the steps
    torch.testing.assert_close(torch.tensor(fused[:3]), torch.tensor(eager[:3]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(eager), rtol=1e-2, atol=1e-3)


def test_classifier_fused_training_matches_eager():
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(4)]
    def ce(m, x, y):
        return F.cross_entropy(m(x), y)
    kw = dict(num_classes=10, in_chans=1)
    eager, _ = _train("ascan_t", kw, False, batches, ce, 20)
    fused, tr = _train("ascan_t", kw, True, batches, ce, 20)
    _assert_same_trajectory(fused, eager)
    assert eager[-1] < eager[0] * 0.5  # it learned something: the comparison is not of two flat lines
    ran = {r.op for r in tr.records if r.impl != "eager" and r.grad}
    expect = {op for op in ("linear_gelu", "linear_add", "add_layer_norm")
              if K.available().get(op, {}).get("cpu") == "ok"}
    assert expect <= ran, f"fused impls that should have run with autograd: {expect - ran}; {tr.summary()}"


def test_unet_fused_training_matches_eager():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 1000, (8,), generator=g),
                torch.randint(0, 11, (8,), generator=g), torch.randn(8, 1, 8, 8, generator=g)) for _ in range(4)]
    def mse(m, x, t, y, eps):
        return F.mse_loss(m(x, t, y), eps)
    kw = dict(num_classes=10, in_channels=1)
    eager, _ = _train("ascan_unet_c2i_t", kw, False, batches, mse, 20)
    fused, tr = _train("ascan_unet_c2i_t", kw, True, batches, mse, 20)
    _assert_same_trajectory(fused, eager)
    assert eager[-1] < eager[0]
    assert any(r.grad for r in tr.records), "the fused UNet made no ascan_kernels calls under autograd"

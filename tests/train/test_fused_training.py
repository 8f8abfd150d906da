"""fused=True trains like fused=False: same losses over tens of steps from the same init
(the unfused model is the reference), and the trace says what ran and why.

Under autograd the registry does not pick the CPU impls that measured slower than eager
in forward + backward (``SLOWER_IN_TRAINING``); the fused-training comparison therefore
runs twice: as the registry picks, and with those impls forced, so their backward is
checked too."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan import build_model
from ascan.train.optim import param_groups


CPU_TRAIN_OPS = ("linear_gelu", "linear_add", "add_layer_norm")


def _forced_cpu():
    ops = {op: "cpu" for op in CPU_TRAIN_OPS if K.available(op).get("cpu") == "ok"}
    return K.use(**ops), set(ops)


def _train(name, kwargs, fused, batches, loss_fn, steps, force=False):
    if force:
        ctx, _ = _forced_cpu()
        with ctx:
            return _train(name, kwargs, fused, batches, loss_fn, steps)
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


def _first_grads(name, kwargs, fused, batch, loss_fn, force=False):
    """Every parameter's gradient after one backward from the shared init."""
    if force:
        ctx, _ = _forced_cpu()
        with ctx:
            return _first_grads(name, kwargs, fused, batch, loss_fn)
    torch.manual_seed(0)
    m = build_model(name, fused=fused, **kwargs).train()
    loss_fn(m, *batch).backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def _assert_same_grads(fused, eager):
    # one backward from the same weights: equal to float32 rounding, parameter by parameter
    # (measured: <= 1.2e-5 relative). The absolute floor is for gradients that are ~0, e.g.
    # stage 2's last fc2 bias (|grad| ~ 8e-8): there both sides hold float32 noise.
    assert fused.keys() == eager.keys()
    for n, g in eager.items():
        err = (fused[n] - g).norm().item()
        assert err <= 1e-4 * g.norm().item() + 1e-6, f"{n}: |fused - eager| = {err:.3g}, |eager| = {g.norm():.3g}"


def _assert_same_trajectory(fused, eager):
    # the first two steps agree to float32 rounding; later ones drift apart only as float32
    # training runs do, by rounding amplified over the steps (AdamW's early updates are
    # ~lr*sign(g): float32 noise in a ~0 gradient moves a weight by lr)
    torch.testing.assert_close(torch.tensor(fused[:2]), torch.tensor(eager[:2]), rtol=1e-4, atol=1e-5)
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
    # what the registry picked under autograd, and why
    _, available = _forced_cpu()
    for op in available:
        recs = [r for r in tr.records if r.op == op and r.grad]
        assert recs and all(r.impl == "eager" and "not preferred: under autograd" in r.why for r in recs), \
            tr.summary()
    # the slower-in-training impls still train correctly when forced
    want = _first_grads("ascan_t", kw, False, batches[0], ce)
    _assert_same_grads(_first_grads("ascan_t", kw, True, batches[0], ce), want)
    _assert_same_grads(_first_grads("ascan_t", kw, True, batches[0], ce, force=True), want)
    forced, tr2 = _train("ascan_t", kw, True, batches, ce, 20, force=True)
    _assert_same_trajectory(forced, eager)
    assert available <= {r.op for r in tr2.records if r.impl == "cpu" and r.grad}


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
    forced, _ = _train("ascan_unet_c2i_t", kw, True, batches, mse, 20, force=True)
    _assert_same_trajectory(forced, eager)
    assert eager[-1] < eager[0]
    assert any(r.grad for r in tr.records), "the fused UNet made no ascan_kernels calls under autograd"

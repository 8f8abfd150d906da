"""Numerical tolerances and comparison helpers, stated once for tests and benches."""
from __future__ import annotations

import torch

from .backends.onednn import onednn_bf16_reason, onednn_unavailable_reason
from .backends.triton import interpreting
from .registry import KernelUnavailableError, available, get_op, use

# (atol, rtol) per dtype for comparing a fused impl with the eager reference run in
# the same dtype. bf16 keeps 8 mantissa bits (rel. step 2^-8 = 3.9e-3); results that
# went through a reduction and a rounding of their own differ by a few steps.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """``dict(atol=..., rtol=...)`` for ``dtype``; ``scale`` widens both for deep stacks."""
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol * scale, "rtol": rtol * scale}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 scale: float = 1.0, msg: str = "") -> None:
    """``torch.testing.assert_close`` at the tolerance of ``dtype`` (default: expected's)."""
    dtype = dtype or expected.dtype
    torch.testing.assert_close(actual.to(expected.dtype), expected, **tolerance(dtype, scale),
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)


def assert_error_within(actual: torch.Tensor, lowp_eager: torch.Tensor, ref_fp32: torch.Tensor,
                        factor: float = 2.0, floor: float = 1e-6) -> None:
    """flash-attention's rule: the fused result's max error against an fp32 reference
    is at most ``factor`` x the error of plain PyTorch in the same low precision."""
    err = (actual.float() - ref_fp32.float()).abs().max().item()
    base = (lowp_eager.float() - ref_fp32.float()).abs().max().item()
    assert err <= factor * base + floor, f"max error {err:.3e} > {factor} x eager error {base:.3e} + {floor:g}"


def grads_by_impl(op: str, impls, fn, inputs) -> dict[str, list]:
    """Gradients of ``fn(*inputs)`` w.r.t. every input, once per impl of ``op`` (forced).

    The loss weights each output element differently (a ramp), so a wrong index or a
    transposed gradient cannot cancel out. Returns ``{impl: [grad per input]}``.
    """
    out: dict[str, list] = {}
    for name in impls:
        ins = [t.detach().clone().requires_grad_() for t in inputs]
        with use(**{op: name}):
            res = fn(*ins)
        loss = 0.0
        for r in res if isinstance(res, tuple) else (res,):
            loss = loss + (r * torch.linspace(-1, 1, r.numel()).reshape(r.shape)).sum()
        loss.backward()
        out[name] = [t.grad for t in ins]
    return out


def native_impls(op: str) -> list[str]:
    """The fused impls of ``op`` that run natively here (not eager, not Triton's CPU
    interpreter, which has its own small-shape tests in ``tests/ops/test_<op>.py``)."""

    return [i for i, s in available(op).items()
            if s == "ok" and i != "eager" and not (i == "triton" and interpreting())]


def _is_onednn(op: str, impl: str) -> bool:
    """Whether ``impl`` of ``op`` is one of oneDNN's fused conv/GEMM primitives (bf16 there
    needs AVX-512), read off its registration rather than kept as a list."""
    try:
        return get_op(op).impl(impl).available is onednn_unavailable_reason
    except KernelUnavailableError:  # no such impl
        return False


def machine_lacks(op: str, impl: str, dtype: torch.dtype) -> str | None:
    """Why this machine cannot run ``impl`` of ``op`` in ``dtype`` at all (a missing CPU
    instruction set), or None. Tests skip such cases with the reason; any other refusal
    by an impl is a failure."""
    if dtype == torch.bfloat16 and _is_onednn(op, impl):
        return onednn_bf16_reason()
    return None


def skip_if_machine_lacks(op: str, impl: str, dtype: torch.dtype) -> None:
    """``pytest.skip`` with the reason when :func:`machine_lacks` says so."""
    why = machine_lacks(op, impl, dtype)
    if why:
        import pytest

        pytest.skip(f"{op}/{impl} in {dtype}: {why}")


def fused_eager_pair(make, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(fused, eager)`` from ``make(fused: bool, **kwargs)`` with identical weights.

    BatchNorm layers get non-trivial running statistics and affine parameters first: at
    their initial values (mean 0, var 1, weight 1, bias 0) folding BN into a conv is the
    identity, so a wrong fold would go unnoticed.
    """
    fused, eager = make(True, **kwargs), make(False, **kwargs)
    with torch.no_grad():
        for m in fused.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    eager.load_state_dict(fused.state_dict())
    return fused, eager

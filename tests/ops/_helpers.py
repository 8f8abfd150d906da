"""What the op test files (``tests/ops/test_<op>.py``) share; not a test file.

* Triton sections: the kernels run on CUDA tensors, or on CPU tensors under Triton's
  interpreter when there is no GPU (tests/conftest.py sets ``TRITON_INTERPRET=1``).
* CUDA sections: on a GPU the ``cuda`` impls against eager; on any machine the CPU
  reference loops of the kernels' math (``ascan_C::*_reference``, plain loops over the
  same per-element code) against eager PyTorch, and the impls' Python glue on CPU tensors
  through those loops (:func:`cuda_ops_on_cpu`).

Tolerances and comparisons are ``ascan_kernels.testing``'s; only what that module does not
have is here.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import ascan_kernels as K
from ascan_kernels._ext import load_extension
from ascan_kernels.testing import assert_close, assert_error_within

# The dtypes the CUDA and Triton kernels take.
KERNEL_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_IDS = ["fp32", "bf16", "fp16"]


# ------------------------------------------------------------------------------ Triton
TRITON_DEV = "cuda" if torch.cuda.is_available() else "cpu"


def needs_triton(op: str):
    """Skip unless ``op``'s triton impl can run here (a GPU, or the interpreter on CPU tensors)."""
    status = K.available(op)["triton"]
    return pytest.mark.skipif(status != "ok", reason=f"triton impl unavailable: {status}")


def triton_rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device=TRITON_DEV) * scale).to(dtype)


def triton_forced(op, fn, *args):
    """Run ``fn(*args)`` with ``op`` forced to the triton impl; check it ran."""
    with K.use(**{op: "triton"}), K.trace() as t:
        out = fn(*args)
    assert t.impls(op) == ["triton"]
    return out


def eager(op, fn, *args):
    with K.use(**{op: "eager"}):
        return fn(*args)


def fp32(ts):
    return [t.float() if isinstance(t, torch.Tensor) else t for t in ts]


def triton_reason(op, fn, *args):
    """The reason a forced triton impl gives for refusing ``fn(*args)``."""
    with K.use(**{op: "triton"}), pytest.raises(K.KernelUnavailableError) as e:
        fn(*args)
    return str(e.value)


def check_lowp_ulps(got, lowp, ref):
    """Low precision: no worse than twice eager's own error against fp32 (plus a few ulps)."""
    floor = 4 * torch.finfo(got.dtype).eps * max(1.0, ref.abs().max().item())
    assert_error_within(got, lowp, ref, factor=2.0, floor=floor)


# -------------------------------------------------------------------------------- CUDA
EXT, WHY = load_extension()
HAS_NORM_ACT = EXT is not None and hasattr(torch.ops.ascan_C, "layer_norm_fwd_reference")
needs_ops = pytest.mark.skipif(not HAS_NORM_ACT, reason=f"ascan_kernels._C lacks the norm/act ops: {WHY or 'old build'}")
GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA device: GPU parity tests run only on a GPU machine")
LOWP = {torch.bfloat16: 1e-2, torch.float16: 1e-3}  # floors for assert_error_within

# The CPU reference loop of each CUDA-only ascan_C op (same schema, same checks, same math).
REFERENCE_LOOPS = {"bias_act_epilogue_": "bias_act_epilogue_reference_", "layer_norm_fwd": "layer_norm_fwd_reference",
                   "layer_norm_bwd": "layer_norm_bwd_reference"}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def cpu_rand(*shape, seed=0, scale=1.0, offset=0.0):
    """Seeded CPU values (the CUDA sections' inputs)."""
    return torch.randn(*shape, generator=gen(seed)) * scale + offset


def fmt(t, channels_last):
    if not channels_last:
        return t.contiguous()
    return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)


def check_lowp(actual, lowp_eager, ref32, dtype):
    """fp32: close to the reference; bf16/fp16: within 2x eager's own error (plus a floor)."""
    if dtype == torch.float32:
        assert_close(actual, ref32)
    else:
        assert actual.dtype == dtype
        assert_error_within(actual, lowp_eager, ref32, floor=LOWP[dtype])


def raises_ascan_error(name, call, msg):
    """``call()`` (one of a test file's ``cuda_bad_cases``, named ``name``) must raise the
    extension's TORCH_CHECK error, whose message starts ``ascan <msg>``."""
    with pytest.raises(RuntimeError, match=f"ascan {msg}"):
        call()


def cuda_forced(op):
    return K.use(**{op: "cuda"})


@contextlib.contextmanager
def cuda_ops_on_cpu(*names):
    """Give the CUDA-only ``ascan_C::<name>`` ops a CPU kernel for the block: their CPU
    reference loop (:data:`REFERENCE_LOOPS`). A ``cuda`` impl's Python glue (BN folding,
    casts, autograd) then runs on CPU tensors through the same math as its kernels."""
    lib = torch.library.Library("ascan_C", "IMPL")
    try:
        for name in names:
            lib.impl(name, getattr(torch.ops.ascan_C, REFERENCE_LOOPS[name]), "CPU")
        yield
    finally:
        lib._destroy()

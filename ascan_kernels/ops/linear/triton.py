"""Triton GEMMs for the T block's MLP with fused epilogues.

* ``linear_gelu``: ``gelu(x W^T + b)`` (erf or tanh GELU), the MLP expansion;
* ``linear_add``:  ``residual + x W^T + b``, the MLP projection with its shortcut.

One tiled GEMM kernel (``tl.dot``, fp32 accumulation, tf32 for fp32 inputs on GPU)
with a grouped ("GROUP_M swizzled") tile order so neighbouring programs share
tiles of W in L2. The bias, the GELU or the residual add run on the fp32
accumulator before the single store.

Backward (plain torch ops, registered on the custom ops): when any input needs a
gradient the GELU kernel also stores the pre-activation ``z = x W^T + b`` (the
same tensor eager PyTorch keeps for gelu's backward), so the backward needs no
extra GEMM: ``dz = gelu'(z) * dy``, ``dx = dz W``, ``dW = dz^T x``, ``db = sum dz``.
Recomputing z instead would save that activation's memory at the cost of a third
GEMM per step; the backward still falls back to recomputing when z was not kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..._common import compute_dtype
from ...backends import triton as runtime
from ...registry import Impl

# Autotune configs (GPU), by whether the launch is ALIGNED (16-byte aligned tiles,
# K and N multiples of 16; the T block's widths always are). Shared memory per stage is
# (BLOCK_M + BLOCK_N) * BLOCK_K * elem_size: 128x128x32 at 4 stages takes 64 KiB in
# fp16 and 128 KiB in fp32 (tf32), within sm_80's 163 KiB. Unaligned tiles load
# element by element through registers, so they get one small tile that does not
# spill.
GEMM_CONFIGS = {
    "aligned": (
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3),
    ),
    "unaligned": (
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=2),
    ),
}
# Under the interpreter: one small tile (tl.dot needs every dim >= 16).
INTERPRET_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4},
                                 num_warps=4, num_stages=1)

# Epilogue codes (the kernel's EPILOGUE constexpr)
EPI_GELU, EPI_GELU_TANH, EPI_ADD = 0, 1, 2
_GELU_CODE = {"none": EPI_GELU, "tanh": EPI_GELU_TANH}

_FLOATS = runtime.FLOATS


@triton.jit
def _linear_kernel(X, W, Bias, R, Y, Pre, M, N, K,
                   stride_xm, stride_xk, stride_wn, stride_wk, stride_rm, stride_rn, stride_ym,
                   store_pre,
                   HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, ALIGNED: tl.constexpr,
                   UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr):
    """Y[M, N] = epilogue(X[M, K] @ W[N, K]^T + Bias) with EPILOGUE 0: gelu (erf),
    1: gelu (tanh), 2: + R[M, N]. With ``store_pre`` the gelu kernels also write the
    pre-activation to Pre (row stride stride_ym, like Y). ALIGNED: the launcher checked
    that X, W, R, Y and their row strides are 16-byte aligned, the inner strides are 1
    and K, N are multiples of 16; the hints below let the tiles load and store as
    16-byte vectors (Triton also specialises that at launch, but only for arguments,
    not for what an ahead-of-time compile sees). UPCAST_DOT (interpreter only) feeds
    tl.dot fp32 copies of the tiles: the interpreter multiplies bf16 tiles as raw
    integers."""
    # Grouped tile order: GROUP_M row-tiles walk the columns together, so the W tiles
    # they read stay in L2.
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # Ragged edge tiles read wrapped-around (valid) rows/columns instead of masking
    # them in the K loop; the final store drops them.
    rm_in = (rm % M).to(tl.int64)
    rn_in = (rn % N).to(tl.int64)
    x_ptrs = X + rm_in[:, None] * stride_xm + rk[None, :] * stride_xk
    w_ptrs = W + rn_in[None, :] * stride_wn + rk[:, None] * stride_wk
    if ALIGNED:
        x_ptrs = tl.multiple_of(x_ptrs, [16, 16])
        w_ptrs = tl.multiple_of(w_ptrs, [16, 16])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        if ALIGNED:
            k_left = tl.multiple_of(k_left, 16)
        a = tl.load(x_ptrs, mask=rk[None, :] < k_left, other=0.0)
        b = tl.load(w_ptrs, mask=rk[:, None] < k_left, other=0.0)
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="tf32")
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    n_left = N - pid_n * BLOCK_N
    if ALIGNED:
        n_left = tl.multiple_of(n_left, 16)
    n_ok = tl.arange(0, BLOCK_N) < n_left
    mask = (rm < M)[:, None] & n_ok[None, :]
    rm64 = rm.to(tl.int64)[:, None]
    y_offs = rm64 * stride_ym + rn[None, :]
    y_ptrs = Y + y_offs
    r_ptrs = R + rm64 * stride_rm + rn[None, :] * stride_rn
    if ALIGNED:
        y_ptrs = tl.multiple_of(y_ptrs, [16, 16])
        r_ptrs = tl.multiple_of(r_ptrs, [16, 16])
    if HAS_BIAS:
        acc += tl.load(Bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 2:
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    else:
        if store_pre:  # training: keep z for the backward
            pre_ptrs = Pre + y_offs
            if ALIGNED:
                pre_ptrs = tl.multiple_of(pre_ptrs, [16, 16])
            tl.store(pre_ptrs, acc.to(Pre.dtype.element_ty), mask=mask)
        if EPILOGUE == 0:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        else:
            # 0.5 z (1 + tanh(u)) == z * sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
            u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = acc * tl.sigmoid(2.0 * u)
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask)


_TUNED = {kind: triton.autotune(configs=list(cfgs), key=["M", "N", "K", "EPILOGUE", "HAS_BIAS"])(_linear_kernel)
          for kind, cfgs in GEMM_CONFIGS.items()}


def _aligned(*ts: torch.Tensor) -> bool:
    """Every 2-D tile source/target: unit inner stride, 16-byte aligned base and rows."""
    for t in ts:
        if t.stride(1) != 1 or t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16:
            return False
    return True


def _launch(x, weight, bias, residual, epilogue: int, save_pre: bool, out_dtype: torch.dtype):
    """Run the GEMM; returns (y (..., N) contiguous, pre (like y, or empty (0,)))."""
    Kdim, N = x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, Kdim)
    M = x2.shape[0]
    y = torch.empty((*x.shape[:-1], N), dtype=out_dtype, device=x.device)
    pre = torch.empty(y.shape, dtype=x.dtype, device=x.device) if save_pre else x.new_empty(0)
    if y.numel() == 0:
        return y, pre
    if Kdim == 0:  # an empty contraction: nothing to multiply, apply the epilogue to the bias
        z = (torch.zeros(y.shape, dtype=torch.float32, device=x.device)
             + (bias.float() if bias is not None else 0.0))
        if save_pre:
            pre.copy_(z)
        out = z + residual if epilogue == EPI_ADD else F.gelu(z, approximate="tanh" if epilogue else "none")
        return y.copy_(out), pre
    r2 = residual.reshape(-1, N) if residual is not None else y.view(-1, N)
    b = bias.contiguous() if bias is not None else y
    args = (x2, weight, b, r2, y.view(-1, N), pre if save_pre else y, M, N, Kdim,
            x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), r2.stride(0), r2.stride(1), N,
            int(save_pre))
    aligned = Kdim % 16 == 0 and N % 16 == 0 and _aligned(x2, weight, y.view(-1, N), r2,
                                                          *((pre.view(-1, N),) if save_pre else ()))
    upcast = runtime.interpreting() and x.dtype == torch.bfloat16
    meta = dict(HAS_BIAS=bias is not None, EPILOGUE=epilogue, ALIGNED=aligned, UPCAST_DOT=upcast)
    if runtime.interpreting():
        cfg = INTERPRET_CONFIG
        grid = (triton.cdiv(M, cfg.kwargs["BLOCK_M"]) * triton.cdiv(N, cfg.kwargs["BLOCK_N"]),)
        _linear_kernel[grid](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]),)
        _TUNED["aligned" if aligned else "unaligned"][grid](*args, **meta)
    return y, pre


# ---------------------------------------------------------------------------------------
# Custom ops and autograd
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ascan_triton::linear_gelu_fwd", mutates_args=())
def linear_gelu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str,
                    save_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """gelu(x @ weight.T + bias); x (..., K), weight (N, K), bias (N,), one dtype.
    Returns (y (..., N) contiguous, pre-activation like y if save_pre else an empty (0,))."""
    return _launch(x, weight, bias, None, _GELU_CODE[approximate], save_pre, x.dtype)


@linear_gelu_fwd.register_fake
def _(x, weight, bias, approximate, save_pre):
    y = x.new_empty((*x.shape[:-1], weight.shape[0]))
    return y, (torch.empty_like(y) if save_pre else x.new_empty(0))


def _gelu_setup(ctx, inputs, output):
    x, weight, bias, approximate, _ = inputs
    ctx.save_for_backward(x, weight, bias, output[1])
    ctx.approximate = approximate
    ctx.mark_non_differentiable(output[1])


def _linear_grads(ctx, dz, x, weight, has_bias):
    """dx, dW, db of z = x W^T + b given dz (..., N), in plain torch ops."""
    N, Kdim = weight.shape
    dz2 = dz.reshape(-1, N)
    dx = (dz2 @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
    dw = dz2.t() @ x.reshape(-1, Kdim) if ctx.needs_input_grad[1] else None
    db = dz2.sum(0) if has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db


def _gelu_grad(ctx, dy, _dpre):
    x, weight, bias, pre = ctx.saved_tensors
    if pre.numel() != dy.numel():  # the forward ran without grad tracking: recompute z
        pre = F.linear(x, weight, bias)
    dz = torch.ops.aten.gelu_backward(dy.to(pre.dtype), pre, approximate=ctx.approximate)
    return (*_linear_grads(ctx, dz, x, weight, bias is not None), None, None)


torch.library.register_autograd("ascan_triton::linear_gelu_fwd", _gelu_grad, setup_context=_gelu_setup)


@torch.library.custom_op("ascan_triton::linear_add_fwd", mutates_args=())
def linear_add_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   residual: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight.T + bias; x (..., K), weight (N, K), residual (..., N).
    Returns (..., N) contiguous in promote_types(x.dtype, residual.dtype)."""
    return _launch(x, weight, bias, residual, EPI_ADD, False,
                   torch.promote_types(x.dtype, residual.dtype))[0]


@linear_add_fwd.register_fake
def _(x, weight, bias, residual):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.promote_types(x.dtype, residual.dtype))


def _add_setup(ctx, inputs, output):
    x, weight, bias, residual = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.r_dtype = residual.dtype


def _add_grad(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw, db = _linear_grads(ctx, dy.to(x.dtype), x, weight, ctx.has_bias)
    dr = dy.to(ctx.r_dtype) if ctx.needs_input_grad[3] else None
    return dx, dw, db, dr


torch.library.register_autograd("ascan_triton::linear_add_fwd", _add_grad, setup_context=_add_setup)


# ---------------------------------------------------------------------------------------
# Registry glue
# ---------------------------------------------------------------------------------------
def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _supports(x, weight, bias, residual=None):
    if x.numel() == 0 or weight.numel() == 0:
        return "empty input"
    for name, t in (("bias", bias), ("residual", residual)):
        if t is not None and t.dtype not in _FLOATS:
            return f"{name} dtype {t.dtype} not supported (float16, bfloat16, float32)"
    return None


def _gelu_supports(x, weight, bias, approximate="none"):
    return _supports(x, weight, bias)


def _add_supports(x, weight, bias, residual):
    return _supports(x, weight, bias, residual)


def _prefer(x, *args, **kwargs):
    return runtime.prefer_reason(x)


def _linear_gelu(x, weight, bias, approximate="none"):
    dtype = compute_dtype(x)  # autocast: the matmul runs in autocast's dtype
    save = _needs_grad(x, weight, bias)
    return linear_gelu_fwd(x.to(dtype), weight.to(dtype), _cast(bias, dtype), approximate, save)[0]


def _linear_add(x, weight, bias, residual):
    dtype = compute_dtype(x)
    return linear_add_fwd(x.to(dtype), weight.to(dtype), _cast(bias, dtype), residual)


def impls() -> dict[str, Impl]:
    def impl(fn, supports, doc):
        return Impl("triton", fn, caps=runtime.capabilities(empty=True), supports=supports,
                    available=runtime.unavailable_reason, autograd=True, prefer=_prefer, doc=doc)

    return {
        "linear_gelu": impl(_linear_gelu, _gelu_supports,
                            "Triton GEMM (tl.dot, fp32 acc) with bias + GELU in the epilogue"),
        "linear_add": impl(_linear_add, _add_supports,
                           "Triton GEMM (tl.dot, fp32 acc) with bias + residual add in the epilogue"),
    }


# ---------------------------------------------------------------------------------------
# AOT specs: each epilogue x dtype x alignment over its GEMM_CONFIGS (HAS_BIAS on;
# store_pre is a runtime flag, so the store path is in every gelu compile).
# ---------------------------------------------------------------------------------------
# Row-major x, W and residual: Triton specialises these unit strides at launch.
_UNIT_STRIDES = ("stride_xk", "stride_wk", "stride_rn")


def aot_specs() -> list[runtime.KernelSpec]:
    specs = []
    for tt in ("fp16", "bf16", "fp32"):
        p = f"*{tt}"
        sig = {"X": p, "W": p, "Bias": p, "R": p, "Y": p, "Pre": p, "M": "i32", "N": "i32", "K": "i32",
               **{s: "i32" for s in ("stride_xm", "stride_wn", "stride_rm", "stride_ym", "store_pre")},
               **{c: "constexpr" for c in _UNIT_STRIDES},
               **{c: "constexpr" for c in ("HAS_BIAS", "EPILOGUE", "ALIGNED", "UPCAST_DOT",
                                           "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}}
        for name, epi in (("linear_gelu", EPI_GELU), ("linear_gelu_tanh", EPI_GELU_TANH), ("linear_add", EPI_ADD)):
            for kind, cfgs in GEMM_CONFIGS.items():
                consts = {"HAS_BIAS": True, "EPILOGUE": epi, "ALIGNED": kind == "aligned", "UPCAST_DOT": False,
                          **{c: 1 for c in _UNIT_STRIDES}}
                specs.append(runtime.KernelSpec(f"{name}[{tt},{kind}]", _linear_kernel, dict(sig), consts, cfgs,
                                            uses_dot=True))
    return specs

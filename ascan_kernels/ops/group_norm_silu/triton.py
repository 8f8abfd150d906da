"""Triton GroupNorm + FiLM + SiLU (``group_norm_silu``).

Two passes over x: a stats kernel where each (sample, group, split) program sums a slice
of the group in fp32 (shifted by the group's first element so the variance does not
cancel), then an apply kernel that combines the splits' partial sums, folds mean/rstd,
weight/bias and the FiLM scale/shift into one per-channel multiply-add, applies SiLU and
stores. NCHW and channels_last (and any layout whose spatial dims flatten to one stride)
go through the strides. Forward only.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...backends import triton as runtime
from ...registry import Impl

# ---------------------------------------------------------------------------------------
# Launch configurations
# ---------------------------------------------------------------------------------------
# GroupNorm tiles [BLOCK_P spatial positions, BLOCK_CG channels]. The first suits
# NCHW (positions contiguous), the second channels_last (channels contiguous).
GN_CONFIGS = (
    triton.Config({"BLOCK_P": 128, "BLOCK_CG": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_P": 32, "BLOCK_CG": 64}, num_warps=8, num_stages=2),
)
GN_MAX_SPLITS = 64          # programs per (sample, group) at most (power of two)
GN_ELEMS_PER_SPLIT = 8192   # aim for this many elements per program
GN_P_ALIGN = 128            # a split covers a multiple of this many positions

_FLOATS = runtime.FLOATS


# ---------------------------------------------------------------------------------------
# GroupNorm kernels
# ---------------------------------------------------------------------------------------
@triton.jit
def _gn_stats_kernel(X, Part, HW, Cg, G, stride_n, stride_c, stride_p, p_per_split,
                     BLOCK_P: tl.constexpr, BLOCK_CG: tl.constexpr, MAX_SPLITS: tl.constexpr):
    """Part[ng, split] = (sum(v), sum(v*v)) over this split's slice of group ng, with
    v = x - (the group's first element), in fp32."""
    ng = tl.program_id(0)
    split = tl.program_id(1)
    n = ng // G
    g = ng % G
    base = X + n.to(tl.int64) * stride_n + (g * Cg).to(tl.int64) * stride_c
    shift = tl.load(base).to(tl.float32)
    p_lo = split * p_per_split
    p_hi = tl.minimum(p_lo + p_per_split, HW)
    acc_s = tl.zeros((BLOCK_P, BLOCK_CG), dtype=tl.float32)
    acc_q = tl.zeros((BLOCK_P, BLOCK_CG), dtype=tl.float32)
    for c0 in range(0, Cg, BLOCK_CG):
        cs = c0 + tl.arange(0, BLOCK_CG)
        c_ok = cs < Cg
        for p0 in range(p_lo, p_hi, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            mask = (ps < p_hi)[:, None] & c_ok[None, :]
            v = tl.load(base + ps[:, None] * stride_p + cs[None, :] * stride_c, mask=mask, other=0.0)
            v = tl.where(mask, v.to(tl.float32) - shift, 0.0)
            acc_s += v
            acc_q += v * v
    out = Part + (ng * MAX_SPLITS + split) * 2
    tl.store(out, tl.sum(tl.sum(acc_s, axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(acc_q, axis=1), axis=0))


@triton.jit
def _gn_apply_kernel(X, Y, Part, W, B, Scale, Shift,
                     C, HW, Cg, G, stride_xn, stride_xc, stride_xp, stride_yn, stride_yc, stride_yp,
                     stride_scn, stride_scc, stride_shn, stride_shc, p_per_split, num_splits, inv_count, eps,
                     HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                     HAS_SHIFT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CG: tl.constexpr,
                     MAX_SPLITS: tl.constexpr):
    """y = silu(((x - mean) * rstd * w + b) * (1 + scale) + shift) over this split's slice."""
    ng = tl.program_id(0)
    split = tl.program_id(1)
    n = ng // G
    g = ng % G
    xbase = X + n.to(tl.int64) * stride_xn + (g * Cg).to(tl.int64) * stride_xc
    ybase = Y + n.to(tl.int64) * stride_yn + (g * Cg).to(tl.int64) * stride_yc
    # Combine every split's partial sums (cheap: MAX_SPLITS pairs) into mean and rstd.
    sidx = tl.arange(0, MAX_SPLITS)
    parts = Part + (ng * MAX_SPLITS + sidx) * 2
    s_ok = sidx < num_splits
    m_shift = tl.sum(tl.load(parts, mask=s_ok, other=0.0), axis=0) * inv_count
    var = tl.sum(tl.load(parts + 1, mask=s_ok, other=0.0), axis=0) * inv_count - m_shift * m_shift
    # Clamp rounding's negative variances to 0 but keep a NaN (an inf in the group gives
    # inf - inf): tl.maximum(NaN, 0) is 0, which would turn the group's outputs into inf.
    var = tl.where(var < 0.0, 0.0, var)
    rstd = tl.math.rsqrt(var + eps)
    mean = m_shift + tl.load(xbase).to(tl.float32)
    p_lo = split * p_per_split
    p_hi = tl.minimum(p_lo + p_per_split, HW)
    for c0 in range(0, Cg, BLOCK_CG):
        cs = c0 + tl.arange(0, BLOCK_CG)
        c_ok = cs < Cg
        ch = g * Cg + cs
        # Fold normalisation, affine and FiLM into y = x * a + b per channel.
        a = tl.zeros((BLOCK_CG,), dtype=tl.float32) + rstd
        if HAS_W:
            a = a * tl.load(W + ch, mask=c_ok, other=0.0).to(tl.float32)
        b = -mean * a
        if HAS_B:
            b += tl.load(B + ch, mask=c_ok, other=0.0).to(tl.float32)
        if HAS_SCALE:
            film = 1.0 + tl.load(Scale + n * stride_scn + ch * stride_scc, mask=c_ok, other=0.0).to(tl.float32)
            a = a * film
            b = b * film
        if HAS_SHIFT:
            b += tl.load(Shift + n * stride_shn + ch * stride_shc, mask=c_ok, other=0.0).to(tl.float32)
        for p0 in range(p_lo, p_hi, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            mask = (ps < p_hi)[:, None] & c_ok[None, :]
            x = tl.load(xbase + ps[:, None] * stride_xp + cs[None, :] * stride_xc, mask=mask, other=0.0)
            y = x.to(tl.float32) * a[None, :] + b[None, :]
            # silu(y) = y / (1 + e^-y) with the fast divide (an IEEE divide per element
            # calls a slow-path subroutine); e^-y = inf gives -0, the right limit.
            y = tl.math.fdiv(y, 1.0 + tl.exp(-y), ieee_rounding=False)
            tl.store(ybase + ps[:, None] * stride_yp + cs[None, :] * stride_yc, y.to(Y.dtype.element_ty), mask=mask)


def _gn_kernels():
    """GroupNorm kernels: autotuned over GN_CONFIGS on a GPU, one fixed tile under the
    interpreter (autotuning there would only measure numpy)."""
    if runtime.interpreting():
        return _gn_stats_kernel, _gn_apply_kernel, {"BLOCK_P": 16, "BLOCK_CG": 16}
    return _GN_STATS_TUNED, _GN_APPLY_TUNED, {}


# Tuned per (group width, spatial size, channel stride): the channel stride tells the
# layouts apart (1 for channels_last).
_GN_STATS_TUNED = triton.autotune(configs=list(GN_CONFIGS), key=["Cg", "HW", "stride_c"])(_gn_stats_kernel)
_GN_APPLY_TUNED = triton.autotune(configs=list(GN_CONFIGS), key=["Cg", "HW", "stride_xc"])(_gn_apply_kernel)


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------
def _vec(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _flat_spatial_stride(x: torch.Tensor) -> int | None:
    """Stride of x's spatial dims flattened into one, or None if they do not flatten."""
    dims = [(s, st) for s, st in zip(x.shape[2:], x.stride()[2:]) if s != 1]
    if not dims:
        return 1
    inner = dims[-1][1]
    for (size_o, st_o), (size_i, st_i) in zip(dims[:-1], dims[1:]):
        if st_o != st_i * size_i:
            return None
    return inner


def _gn_splits(Cg: int, HW: int) -> tuple[int, int]:
    """(splits, positions per split) for one (sample, group)."""
    want = max(1, min(GN_MAX_SPLITS, triton.cdiv(Cg * HW, GN_ELEMS_PER_SPLIT)))
    per = triton.cdiv(triton.cdiv(HW, want), GN_P_ALIGN) * GN_P_ALIGN
    return triton.cdiv(HW, per), per


def _gn_forward(x, num_groups, weight, bias, eps, scale, shift, out_dtype):
    N, C = x.shape[:2]
    HW = math.prod(x.shape[2:])
    Cg = C // num_groups
    y = torch.empty_like(x, dtype=out_dtype)
    sp_x, sp_y = _flat_spatial_stride(x), _flat_spatial_stride(y)
    if y.numel() == 0:
        return y
    splits, per = _gn_splits(Cg, HW)
    part = torch.empty((N * num_groups, GN_MAX_SPLITS, 2), dtype=torch.float32, device=x.device)
    stats, apply, cfg = _gn_kernels()
    grid = (N * num_groups, splits)
    stats[grid](x, part, HW, Cg, num_groups, x.stride(0), x.stride(1), sp_x, per,
                MAX_SPLITS=GN_MAX_SPLITS, **cfg)
    w, b = _vec(weight), _vec(bias)
    sc = scale if scale is not None else x
    sh = shift if shift is not None else x
    apply[grid](x, y, part, w if w is not None else x, b if b is not None else x, sc, sh,
                C, HW, Cg, num_groups, x.stride(0), x.stride(1), sp_x, y.stride(0), y.stride(1), sp_y,
                sc.stride(0), sc.stride(1), sh.stride(0), sh.stride(1), per, splits, 1.0 / (Cg * HW), eps,
                HAS_W=w is not None, HAS_B=b is not None, HAS_SCALE=scale is not None,
                HAS_SHIFT=shift is not None, MAX_SPLITS=GN_MAX_SPLITS, **cfg)
    return y



# ---------------------------------------------------------------------------------------
# Custom op (torch.compile / opcheck see it)
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ascan_triton::group_norm_silu_fwd", mutates_args=())
def group_norm_silu_fwd(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                        bias: torch.Tensor | None, eps: float, scale: torch.Tensor | None,
                        shift: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """silu(group_norm(x) * (1 + scale) + shift); x (N, C, *spatial) whose spatial dims
    flatten to one stride (NCHW, channels_last). Returns empty_like(x, out_dtype)."""
    return _gn_forward(x, num_groups, weight, bias, eps, scale, shift, out_dtype)


@group_norm_silu_fwd.register_fake
def _(x, num_groups, weight, bias, eps, scale, shift, out_dtype):
    return torch.empty_like(x, dtype=out_dtype)



# ---------------------------------------------------------------------------------------
# Registry glue: dtype rules, supports, impl fn
# ---------------------------------------------------------------------------------------
def _autocast_fp32(x: torch.Tensor) -> bool:
    """CUDA autocast runs layer_norm and group_norm in fp32 (their outputs are fp32);
    CPU autocast leaves them in the input dtype."""
    return x.device.type == "cuda" and torch.is_autocast_enabled("cuda")


def _common_reason(x, *params) -> str | None:
    for name, t in params:
        if t is not None and t.dtype not in _FLOATS:
            return f"{name} dtype {t.dtype} not supported (float16, bfloat16, float32)"
    return None


def _gn_supports(x, num_groups, weight, bias, eps, scale, shift):
    reason = _common_reason(x, ("weight", weight), ("bias", bias), ("scale", scale), ("shift", shift))
    if reason:
        return reason
    if _flat_spatial_stride(x) is None:
        return (f"layout with strides {tuple(x.stride())}: the spatial dims must flatten to one "
                "stride (NCHW or channels_last)")
    return None


def _prefer(x, *args, **kwargs):
    return runtime.prefer_reason(x)


def _group_norm_silu(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None):
    out_dtype = torch.float32 if _autocast_fp32(x) else x.dtype
    for t in (scale, shift):  # the reference multiplies/adds them with type promotion
        if t is not None:
            out_dtype = torch.promote_types(out_dtype, t.dtype)
    return group_norm_silu_fwd(x, num_groups, weight, bias, float(eps), scale, shift, out_dtype)



def impls() -> dict[str, Impl]:
    return {"group_norm_silu": Impl(
        "triton", _group_norm_silu, caps=runtime.capabilities(), supports=_gn_supports,
        available=runtime.unavailable_reason, autograd=False, prefer=_prefer,
        doc="Triton: split fp32 group stats, then one fused normalise+FiLM+SiLU pass")}


# ---------------------------------------------------------------------------------------
# AOT specs: every kernel x dtype; HAS_W/HAS_B/HAS_SCALE/HAS_SHIFT fixed on (the
# variant with the most loads and registers).
# ---------------------------------------------------------------------------------------
_TT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_specs() -> list[runtime.KernelSpec]:
    specs: list[runtime.KernelSpec] = []
    for dtype, tt in _TT.items():
        p = f"*{tt}"
        gn_common = {"BLOCK_P": "constexpr", "BLOCK_CG": "constexpr", "MAX_SPLITS": "constexpr"}
        specs.append(runtime.KernelSpec(
            f"group_norm_stats[{tt}]", _gn_stats_kernel,
            {"X": p, "Part": "*fp32", "HW": "i32", "Cg": "i32", "G": "i32", "stride_n": "i32",
             "stride_c": "i32", "stride_p": "i32", "p_per_split": "i32", **gn_common},
            {"MAX_SPLITS": GN_MAX_SPLITS}, GN_CONFIGS))
        specs.append(runtime.KernelSpec(
            f"group_norm_silu_apply[{tt}]", _gn_apply_kernel,
            {"X": p, "Y": p, "Part": "*fp32", "W": p, "B": p, "Scale": p, "Shift": p,
             **{k: "i32" for k in ("C", "HW", "Cg", "G", "stride_xn", "stride_xc", "stride_xp",
                                   "stride_yn", "stride_yc", "stride_yp", "stride_scn", "stride_scc",
                                   "stride_shn", "stride_shc", "p_per_split", "num_splits")},
             "inv_count": "fp32", "eps": "fp32", "HAS_W": "constexpr", "HAS_B": "constexpr",
             "HAS_SCALE": "constexpr",
             "HAS_SHIFT": "constexpr", **gn_common},
            {"HAS_W": True, "HAS_B": True, "HAS_SCALE": True, "HAS_SHIFT": True, "MAX_SPLITS": GN_MAX_SPLITS},
            GN_CONFIGS))
    return specs

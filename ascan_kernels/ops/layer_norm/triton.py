"""Triton LayerNorm and residual-add + LayerNorm (``layer_norm``, ``add_layer_norm``).

Each program holds ``ROWS`` whole rows in registers (``BLOCK_C`` >= C), so the forward
reads x once and writes y once, with fp32 statistics; it also stores the per-row mean and
1/std for the backward. The backward runs a fixed number of programs that stride over
the rows: each writes dx for its rows and keeps running fp32 sums of ``dy * xhat`` and
``dy`` per column, written out as one partial row per program; a second small kernel
sums those partial rows into dweight and dbias (deterministic, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backends import triton as runtime
from ...registry import Impl

# ---------------------------------------------------------------------------------------
# Launch configurations
# ---------------------------------------------------------------------------------------
# LayerNorm keeps whole rows in registers, so the config follows from C rather than
# from tuning: a tier is picked by BLOCK_C = next_pow2(C). The small tier packs
# several rows per program (ROWS = min(16, 2048 // BLOCK_C): never more elements than the
# 512 x 4 shown here); wide rows get one row per program and more warps.
LN_CONFIGS = (
    triton.Config({"BLOCK_C": 512, "ROWS": 4}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_C": 4096, "ROWS": 1}, num_warps=8, num_stages=1),
)
LN_SMALL_ELEMS = 2048       # BLOCK_C * ROWS of the small tier
MAX_C = 4096                # widest row that fits one block (the large tier)
# dweight/dbias: how the column sums over the backward's partial rows are tiled.
REDUCE_CONFIG = triton.Config({"BLOCK_G": 32, "BLOCK_N": 128}, num_warps=4, num_stages=1)

_FLOATS = runtime.FLOATS


# ---------------------------------------------------------------------------------------
# LayerNorm kernels
# ---------------------------------------------------------------------------------------
@triton.jit
def _ln_fwd_kernel(X, R, W, B, Y, S, Mean, Rstd,
                   M, C, stride_xm, stride_xc, stride_rm, stride_rc, stride_ym, stride_sm, inv_c, eps,
                   HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                   BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
    """y = (s - mean) * rstd * w + b over rows of s = x (+ r); stores mean, rstd (fp32)
    and, with HAS_RES, s in S's dtype."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < M
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]  # row * stride can pass 2**31 on big activations
    x = tl.load(X + rows64 * stride_xm + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + rows64 * stride_rm + cols[None, :] * stride_rc, mask=mask, other=0.0)
        # Round the sum to its storage dtype before normalising, as eager does: the
        # backward then differentiates exactly the s it is given.
        s = (x + r.to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + rows64 * stride_sm + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)
    # 1/C comes from the host and rsqrt is the hardware approximation: an IEEE divide
    # or sqrt here would pull in a slow-path subroutine (and a stack frame).
    mean = tl.sum(x, axis=1) * inv_c
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) * inv_c
    rstd = tl.math.rsqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64 * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)


@triton.jit
def _ln_bwd_kernel(DY, X, W, Mean, Rstd, DX, DS, Part,
                   M, C, stride_dym, stride_dyc, stride_xm, stride_xc, stride_dxm,
                   stride_dsm, stride_dsc, inv_c, has_extra,
                   HAS_W: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
    """dx for the rows this program visits (plus DS when ``has_extra``), and its
    partial column sums of dy * xhat and dy in Part[pid, :C] and Part[pid, C:2C]."""
    pid = tl.program_id(0)
    step = tl.num_programs(0) * ROWS
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    if HAS_W:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_dw = tl.zeros((ROWS, BLOCK_C), dtype=tl.float32)
    acc_db = tl.zeros((ROWS, BLOCK_C), dtype=tl.float32)
    for start in range(pid * ROWS, M, step):
        rows = start + tl.arange(0, ROWS)
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)[:, None]
        x = tl.load(X + rows64 * stride_xm + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64 * stride_dym + cols[None, :] * stride_dyc, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy
        if HAS_W:
            wdy = dy * w[None, :]
        # d/dx of (x - mean) * rstd, contracted with wdy, row by row
        c1 = tl.sum(xhat * wdy, axis=1) * inv_c
        c2 = tl.sum(wdy, axis=1) * inv_c
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if has_extra:  # add_layer_norm: the sum s is also an output with its own grad
            ds = tl.load(DS + rows64 * stride_dsm + cols[None, :] * stride_dsc, mask=mask, other=0.0)
            dx += ds.to(tl.float32)
        tl.store(DX + rows64 * stride_dxm + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        acc_dw += dy * xhat
        acc_db += dy
    part = Part + pid.to(tl.int64) * 2 * C
    tl.store(part + cols, tl.sum(acc_dw, axis=0), mask=col_ok)
    tl.store(part + C + cols, tl.sum(acc_db, axis=0), mask=col_ok)


@triton.jit
def _col_sum_kernel(P, DW, DB, G, C, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    """DW[c] = sum_g P[g, c] and DB[c] = sum_g P[g, C + c] for a row-major fp32 (G, 2C)
    P; program_id(1) picks which half (separate outputs: a custom op's returns may
    not share storage)."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < C
    if tl.program_id(1) == 0:
        src = P
        out = DW
    else:
        src = P + C
        out = DB
    acc = tl.zeros((BLOCK_G, BLOCK_N), dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        mask = (g < G)[:, None] & col_ok[None, :]
        acc += tl.load(src + g.to(tl.int64)[:, None] * (2 * C) + cols[None, :], mask=mask, other=0.0)
    tl.store(out + cols, tl.sum(acc, axis=0), mask=col_ok)



# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------
def _ln_launch(C: int) -> tuple[int, int, int]:
    """(BLOCK_C, ROWS, num_warps) for rows of width C (C <= MAX_C)."""
    block_c = max(16, triton.next_power_of_2(C))
    small, large = LN_CONFIGS
    if block_c <= small.kwargs["BLOCK_C"]:
        return block_c, min(16, LN_SMALL_ELEMS // block_c), small.num_warps
    return block_c, 1, large.num_warps


def _bwd_programs(x: torch.Tensor, rows_total: int, rows: int) -> int:
    """Programs for the LayerNorm backward: enough to fill the GPU a few times over,
    few enough that the (programs, 2C) partial sums stay small."""
    blocks = triton.cdiv(rows_total, rows)
    cap = 8 if x.device.type != "cuda" else 4 * runtime.sm_count(x.device.index or 0)
    return max(1, min(blocks, cap))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., C) as a (M, C) view when the leading dims flatten (a copy otherwise)."""
    return t.reshape(-1, t.shape[-1])


def _vec(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _ln_forward(x, residual, weight, bias, eps, out_dtype, s_dtype):
    """Launch the forward; returns (s or None, y, mean, rstd) shaped like x / x[..., 0]."""
    C = x.shape[-1]
    x2 = _rows(x)
    M = x2.shape[0]
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    mean = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    s = None
    r2 = x2
    if residual is not None:
        r2 = _rows(residual)
        s = torch.empty(x.shape, dtype=s_dtype, device=x.device)
    if M == 0:
        return s, y, mean, rstd
    w, b = _vec(weight), _vec(bias)
    block_c, rows, warps = _ln_launch(C)
    s2 = s.view(-1, C) if s is not None else y.view(-1, C)
    _ln_fwd_kernel[(triton.cdiv(M, rows),)](
        x2, r2, w if w is not None else x2, b if b is not None else x2, y.view(-1, C), s2, mean, rstd,
        M, C, x2.stride(0), x2.stride(1), r2.stride(0), r2.stride(1), C, C, 1.0 / C, eps,
        HAS_RES=residual is not None, HAS_W=w is not None, HAS_B=b is not None,
        BLOCK_C=block_c, ROWS=rows, num_warps=warps)
    return s, y, mean, rstd


def _ln_backward(dy, x, weight, mean, rstd, extra):
    """(dx in x's dtype and shape, dweight fp32 (C,), dbias fp32 (C,))."""
    C = x.shape[-1]
    x2, dy2 = _rows(x), _rows(dy)
    M = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if M == 0:
        return (dx, torch.zeros(C, dtype=torch.float32, device=x.device),
                torch.zeros(C, dtype=torch.float32, device=x.device))
    e2 = _rows(extra) if extra is not None else dy2
    block_c, rows, warps = _ln_launch(C)
    progs = _bwd_programs(x, M, rows)
    part = torch.empty((progs, 2 * C), dtype=torch.float32, device=x.device)
    w = _vec(weight)
    _ln_bwd_kernel[(progs,)](
        dy2, x2, w if w is not None else x2, mean, rstd, dx.view(-1, C), e2, part,
        M, C, dy2.stride(0), dy2.stride(1), x2.stride(0), x2.stride(1), C,
        e2.stride(0), e2.stride(1), 1.0 / C, int(extra is not None),
        HAS_W=w is not None, BLOCK_C=block_c, ROWS=rows, num_warps=warps)
    dw = torch.empty(C, dtype=torch.float32, device=x.device)
    db = torch.empty_like(dw)
    bg, bn = REDUCE_CONFIG.kwargs["BLOCK_G"], REDUCE_CONFIG.kwargs["BLOCK_N"]
    _col_sum_kernel[(triton.cdiv(C, bn), 2)](part, dw, db, progs, C, BLOCK_G=bg, BLOCK_N=bn,
                                             num_warps=REDUCE_CONFIG.num_warps)
    return dx, dw, db



# ---------------------------------------------------------------------------------------
# Custom ops (torch.compile / opcheck see these) and their autograd
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ascan_triton::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim of x (..., C). Returns y (x's shape, out_dtype,
    contiguous) and the fp32 per-row mean and rstd (x.shape[:-1])."""
    _, y, mean, rstd = _ln_forward(x, None, weight, bias, eps, out_dtype, None)
    return y, mean, rstd


@layer_norm_fwd.register_fake
def _(x, weight, bias, eps, out_dtype):
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return x.new_empty(x.shape, dtype=out_dtype), stats, torch.empty_like(stats)


@torch.library.custom_op("ascan_triton::add_layer_norm_fwd", mutates_args=())
def add_layer_norm_fwd(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                       bias: torch.Tensor | None, eps: float, out_dtype: torch.dtype
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """s = x + residual (promoted dtype) and LayerNorm(s) in out_dtype, one pass.
    Returns (s, y, mean, rstd); s and y contiguous with x's shape."""
    s_dtype = torch.promote_types(x.dtype, residual.dtype)
    s, y, mean, rstd = _ln_forward(x, residual, weight, bias, eps, out_dtype, s_dtype)
    return s, y, mean, rstd


@add_layer_norm_fwd.register_fake
def _(x, residual, weight, bias, eps, out_dtype):
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    s = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))
    return s, x.new_empty(x.shape, dtype=out_dtype), stats, torch.empty_like(stats)


@torch.library.custom_op("ascan_triton::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                   rstd: torch.Tensor, extra: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm backward: dx (x's dtype and shape, plus ``extra`` if given), and fp32
    dweight, dbias of shape (C,) (computed even when the forward had no weight)."""
    return _ln_backward(dy, x, weight, mean, rstd, extra)


@layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, extra):
    C = x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((C,), dtype=torch.float32), x.new_empty((C,), dtype=torch.float32)


def _param_grads(ctx, dw, db):
    gw = dw.to(ctx.w_dtype) if ctx.w_dtype is not None else None
    gb = db.to(ctx.b_dtype) if ctx.b_dtype is not None else None
    return gw, gb


def _ln_setup(ctx, inputs, output):
    x, weight, bias, _, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.w_dtype = weight.dtype if weight is not None else None
    ctx.b_dtype = bias.dtype if bias is not None else None
    ctx.mark_non_differentiable(mean, rstd)


def _ln_grad(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd, None)
    return (dx, *_param_grads(ctx, dw, db), None, None)


def _add_ln_setup(ctx, inputs, output):
    x, residual, weight, bias, _, _ = inputs
    s, _, mean, rstd = output
    ctx.save_for_backward(s, weight, mean, rstd)
    ctx.x_dtype, ctx.r_dtype = x.dtype, residual.dtype
    ctx.w_dtype = weight.dtype if weight is not None else None
    ctx.b_dtype = bias.dtype if bias is not None else None
    ctx.mark_non_differentiable(mean, rstd)


def _add_ln_grad(ctx, ds, dy, _dmean, _drstd):
    s, weight, mean, rstd = ctx.saved_tensors
    # s feeds both the LayerNorm and the caller, so its gradient is the kernel's dx
    # plus ds (added inside the kernel); x and residual both receive it.
    dsum, dw, db = layer_norm_bwd(dy, s, weight, mean, rstd, ds)
    return (dsum.to(ctx.x_dtype), dsum.to(ctx.r_dtype), *_param_grads(ctx, dw, db), None, None)


torch.library.register_autograd("ascan_triton::layer_norm_fwd", _ln_grad, setup_context=_ln_setup)
torch.library.register_autograd("ascan_triton::add_layer_norm_fwd", _add_ln_grad, setup_context=_add_ln_setup)



# ---------------------------------------------------------------------------------------
# Registry glue: dtype rules, supports, impl fns
# ---------------------------------------------------------------------------------------
def _autocast_fp32(x: torch.Tensor) -> bool:
    """CUDA autocast runs layer_norm and group_norm in fp32 (their outputs are fp32);
    CPU autocast leaves them in the input dtype."""
    return x.device.type == "cuda" and torch.is_autocast_enabled("cuda")


def _ln_out_dtype(dtype: torch.dtype, x: torch.Tensor) -> torch.dtype:
    return torch.float32 if _autocast_fp32(x) else dtype


def _common_reason(x, *params) -> str | None:
    for name, t in params:
        if t is not None and t.dtype not in _FLOATS:
            return f"{name} dtype {t.dtype} not supported (float16, bfloat16, float32)"
    return None


def _ln_supports(x, weight, bias, eps=1e-5):
    reason = _common_reason(x, ("weight", weight), ("bias", bias))
    if reason:
        return reason
    if x.shape[-1] > MAX_C:
        return f"C={x.shape[-1]} > {MAX_C}: a row must fit one block"
    return None


def _add_ln_supports(x, residual, weight, bias, eps=1e-5):
    return _ln_supports(x, weight, bias) or _common_reason(residual, ("residual", residual))


def _prefer(x, *args, **kwargs):
    return runtime.prefer_reason(x)


def _layer_norm(x, weight, bias, eps=1e-5):
    out_dtype = _ln_out_dtype(x.dtype, x)
    return layer_norm_fwd(x, weight, bias, float(eps), out_dtype)[0]


def _add_layer_norm(x, residual, weight, bias, eps=1e-5):
    out_dtype = _ln_out_dtype(torch.promote_types(x.dtype, residual.dtype), x)
    s, y, _, _ = add_layer_norm_fwd(x, residual, weight, bias, float(eps), out_dtype)
    return s, y



def impls() -> dict[str, Impl]:
    def impl(fn, supports, doc):
        return Impl("triton", fn, caps=runtime.capabilities(), supports=supports,
                    available=runtime.unavailable_reason, autograd=True, prefer=_prefer, doc=doc)

    return {
        "layer_norm": impl(_layer_norm, _ln_supports,
                           "Triton: rows in registers, fp32 stats; two-stage dweight/dbias backward"),
        "add_layer_norm": impl(_add_layer_norm, _add_ln_supports,
                               "Triton: residual add + LayerNorm in one pass; backward adds ds in-kernel"),
    }


# ---------------------------------------------------------------------------------------
# AOT specs: every kernel x dtype, HAS_W/HAS_B on (the variant with the most loads).
# ---------------------------------------------------------------------------------------
_TT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_specs() -> list[runtime.KernelSpec]:
    specs: list[runtime.KernelSpec] = []
    # LayerNorm rows have a contiguous last dim in the usual case; Triton specialises a
    # stride of 1 at launch, so these specs fix those strides to 1 too.
    for dtype, tt in _TT.items():
        p = f"*{tt}"
        for has_res in (False, True):
            specs.append(runtime.KernelSpec(
                f"{'add_' if has_res else ''}layer_norm_fwd[{tt}]", _ln_fwd_kernel,
                {"X": p, "R": p, "W": p, "B": p, "Y": p, "S": p, "Mean": "*fp32", "Rstd": "*fp32",
                 "M": "i32", "C": "i32", "stride_xm": "i32", "stride_xc": "constexpr", "stride_rm": "i32",
                 "stride_rc": "constexpr", "stride_ym": "i32", "stride_sm": "i32", "inv_c": "fp32", "eps": "fp32",
                 "HAS_RES": "constexpr", "HAS_W": "constexpr", "HAS_B": "constexpr",
                 "BLOCK_C": "constexpr", "ROWS": "constexpr"},
                {"HAS_RES": has_res, "HAS_W": True, "HAS_B": True, "stride_xc": 1, "stride_rc": 1}, LN_CONFIGS))
        specs.append(runtime.KernelSpec(
            f"layer_norm_bwd[{tt}]", _ln_bwd_kernel,
            {"DY": p, "X": p, "W": p, "Mean": "*fp32", "Rstd": "*fp32", "DX": p, "DS": p, "Part": "*fp32",
             "M": "i32", "C": "i32", "stride_dym": "i32", "stride_dyc": "constexpr", "stride_xm": "i32",
             "stride_xc": "constexpr", "stride_dxm": "i32", "stride_dsm": "i32", "stride_dsc": "constexpr",
             "inv_c": "fp32", "has_extra": "i32", "HAS_W": "constexpr", "BLOCK_C": "constexpr", "ROWS": "constexpr"},
            {"HAS_W": True, "stride_xc": 1, "stride_dyc": 1, "stride_dsc": 1}, LN_CONFIGS))
    specs.append(runtime.KernelSpec(
        "layer_norm_bwd_colsum[fp32]", _col_sum_kernel,
        {"P": "*fp32", "DW": "*fp32", "DB": "*fp32", "G": "i32", "C": "i32", "BLOCK_G": "constexpr",
         "BLOCK_N": "constexpr"},
        {}, (REDUCE_CONFIG,)))
    return specs


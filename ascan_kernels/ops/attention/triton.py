"""Triton flash attention, forward and backward, for the ``attention`` op.

``softmax(q k^T * scale + mask) v`` over q (B, H, Lq, D), k/v (B, H, Lk, D) without
ever holding the Lq x Lk score matrix in memory.

Forward (``_attn_fwd``)
    One program per (query block, batch*head). It keeps its q tile in registers,
    walks the key/value blocks and keeps an online softmax: a running row max and
    row sum in fp32, rescaling the fp32 output accumulator whenever the max grows.
    Scores live in base 2 (``scale * log2(e)`` folded into one multiply, ``exp2``
    instead of ``exp``). It stores o and the per-row log-sum-exp of the scaled,
    masked scores (natural log, fp32) for the backward.

Backward
    ``_attn_bwd_preprocess``: delta = rowsum(dO * O) (fp32).
    ``_attn_bwd_dkdv``: one program per (key block, batch*head), looping over the
    query blocks; it recomputes P^T from k, q and the saved LSE, and accumulates
    dV = P^T dO and dK = scale * dS^T q with dS = P * (dO V^T - delta).
    ``_attn_bwd_dq``: one program per (query block, batch*head), looping over the
    key blocks: dQ = scale * dS K. Two kernels instead of atomics keep the backward
    deterministic.

Masks
    None, bool (True = attend) or float (added to the scaled scores), any shape that
    broadcasts to (B, H, Lq, Lk): the kernels read it through its strides, with zero
    strides on the broadcast dims, so a key-padding mask (B, 1, 1, Lk) is never
    expanded in memory. A bool mask is read as uint8.

Fully masked rows
    Where a row has no key to attend (all masked by a bool mask, or every float
    mask entry -inf) the eager reference gives NaN. These kernels give an output row
    of zeros (as flash-attention does), store LSE = +inf for it, and every gradient
    through that row is zero.

Layout
    q, k, v, dO are read and o, dq, dk, dv written through their strides (the model
    passes permuted views of one qkv projection: no copies). o is allocated as
    (B, Lq, H, D) memory viewed as (B, H, Lq, D), so the usual
    ``o.transpose(1, 2).reshape(B, Lq, H * D)`` that follows is free.

Not supported (``supports`` says why): dropout, head dims other than 16/32/64/128,
v head dim != q head dim, gradients with respect to a float mask.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ..._common import compute_dtype
from ...backends import triton as runtime
from ...registry import Impl

# ---------------------------------------------------------------------------------------
# Launch configurations
# ---------------------------------------------------------------------------------------
# GPU autotune configs per (kernel, element size in bytes). BLOCK_M tiles the
# queries, BLOCK_N the keys. The forward holds q (BLOCK_M x D) and an fp32
# accumulator in registers; the dK/dV kernel holds k, v and two fp32 accumulators
# (BLOCK_N x D each), the dQ kernel q, dO and one accumulator (BLOCK_M x D), so fp32
# inputs get narrower tiles. Each config here compiles without spills and within
# shared memory for sm_80 and sm_90 at every head dim up to 128 and every mask kind
# (``python -m ascan_kernels.tools.aot --module attention``); num_warps is a
# multiple of 4, so sm_90 lowers tl.dot to wgmma. Wider dK/dV or dQ tiles (32 or
# more queries per step, 32 keys per dQ step) spilled at D=128 or with a mask.
ATTN_CONFIGS = {
    ("fwd", 2): (
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    ),
    ("fwd", 4): (
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    ),
    ("bwd_dkdv", 2): (
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    ),
    ("bwd_dkdv", 4): (
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    ),
    ("bwd_dq", 2): (
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4, num_stages=2),
    ),
    ("bwd_dq", 4): (
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4, num_stages=2),
    ),
}
# delta = rowsum(dO * O): memory bound, one fixed tile.
PREPROCESS_CONFIG = triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1)
# Under the interpreter: one small config per kernel (tl.dot needs dims >= 16); the
# key and query blocks differ so ragged tails and several loop trips get exercised.
INTERPRET_CONFIGS = {
    "fwd": triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
    "bwd_dkdv": triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1),
    "bwd_dq": triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
}

HEAD_DIMS = (16, 32, 64, 128)
MASK_NONE, MASK_BOOL, MASK_FLOAT = 0, 1, 2
_FLOATS = runtime.FLOATS
_LOG2E = 1.4426950408889634
_INT32_MAX = 2**31 - 1
_MAX_GRID_Y = 65535  # CUDA's limit on grid dim 1, which carries batch * heads


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------
@triton.jit
def _mm(a, b, acc, UPCAST_DOT: tl.constexpr):
    """acc + a @ b on tensor cores (tf32 for fp32 tiles). UPCAST_DOT (interpreter
    only) feeds fp32 copies: the interpreter multiplies bf16 tiles as raw integers."""
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="tf32")


@triton.jit
def _tile(P, r, c, stride_r, stride_c, ALIGNED: tl.constexpr):
    """Pointers P + r * stride_r + c * stride_c for broadcast index tensors r (rows or
    head dim) and c. ALIGNED: the launcher checked that P's slice starts 16-byte aligned
    and its row strides are multiples of 16 elements, so every row starts 16-byte
    aligned; saying so lets the tile loads vectorise and pipeline even in an
    ahead-of-time compile, which never sees the launch arguments."""
    ptrs = P + r * stride_r + c * stride_c
    if ALIGNED:
        ptrs = tl.multiple_of(ptrs, [16, 16])
    return ptrs


@triton.jit
def _masked_scores(s, Mask, rows, cols, row_ok, col_ok, stride_mm, stride_mn, MASK_KIND: tl.constexpr):
    """Apply the attention mask to base-2 scores ``s`` [rows, cols] (either orientation:
    ``rows``/``cols`` come already broadcast). Out-of-range keys and masked-out
    entries become -inf; a float mask is added in base 2."""
    valid = row_ok & col_ok
    if MASK_KIND == 1:
        keep = tl.load(Mask + rows * stride_mm + cols * stride_mn, mask=valid, other=0)
        valid = valid & (keep != 0)
    elif MASK_KIND == 2:
        add = tl.load(Mask + rows * stride_mm + cols * stride_mn, mask=valid, other=0.0)
        s = s + add.to(tl.float32) * 1.4426950408889634
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _attn_fwd(Q, K, V, Mask, O, LSE,
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_mb, stride_mh, stride_mm, stride_mn,
              stride_ob, stride_oh, stride_om, stride_od,
              H, Lq, Lk, qk_scale,
              MASK_KIND: tl.constexpr, HEAD_D: tl.constexpr, UPCAST_DOT: tl.constexpr, ALIGNED: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """O[b, h, m] = softmax_n(q k^T * scale + mask) v for one BLOCK_M query block of one
    (b, h); LSE[(b*H + h), m] = logsumexp_n of the scaled, masked scores (fp32, +inf
    for a row with no key). ``qk_scale`` = scale * log2(e)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # batch/head offsets can pass 2**31 on big activations
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    Mask += b * stride_mb + h * stride_mh
    O += b * stride_ob + h * stride_oh

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, HEAD_D)
    m_ok = rm < Lq
    q = tl.load(_tile(Q, rm[:, None], rd[None, :], stride_qm, stride_qd, ALIGNED), mask=m_ok[:, None], other=0.0)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)   # running max (base 2)
    l_i = tl.zeros((BLOCK_M,), tl.float32)                  # running sum of exp2
    acc = tl.zeros((BLOCK_M, HEAD_D), tl.float32)
    for start in range(0, Lk, BLOCK_N):
        cols = start + rn
        n_ok = cols < Lk
        kt = tl.load(_tile(K, cols[None, :], rd[:, None], stride_kn, stride_kd, ALIGNED),
                     mask=n_ok[None, :], other=0.0)
        v = tl.load(_tile(V, cols[:, None], rd[None, :], stride_vn, stride_vd, ALIGNED),
                    mask=n_ok[:, None], other=0.0)
        s = _mm(q, kt, tl.zeros((BLOCK_M, BLOCK_N), tl.float32), UPCAST_DOT) * qk_scale
        s = _masked_scores(s, Mask, rm[:, None], cols[None, :], m_ok[:, None], n_ok[None, :],
                           stride_mm, stride_mn, MASK_KIND)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with every key masked so far has max -inf: subtract 0 instead, so
        # exp2(-inf - -inf) never makes a NaN and the row's p stays 0.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _mm(p.to(v.dtype), v, acc * alpha[:, None], UPCAST_DOT)
        m_i = m_new

    empty = l_i == 0.0  # no key attended: output 0, LSE +inf (P = 0 in the backward)
    l_safe = tl.where(empty, 1.0, l_i)
    acc = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    tl.store(_tile(O, rm[:, None], rd[None, :], stride_om, stride_od, ALIGNED), acc.to(O.dtype.element_ty),
             mask=m_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * Lq + rm, lse, mask=m_ok)


@triton.jit
def _attn_bwd_preprocess(O, DO, Delta,
                         stride_ob, stride_oh, stride_om, stride_od,
                         stride_db, stride_dh, stride_dm, stride_dd,
                         H, Lq,
                         HEAD_D: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta[(b*H + h), m] = sum_d dO[b, h, m, d] * O[b, h, m, d] in fp32."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD_D)
    m_ok = rm < Lq
    O += b * stride_ob + h * stride_oh
    DO += b * stride_db + h * stride_dh
    o = tl.load(_tile(O, rm[:, None], rd[None, :], stride_om, stride_od, ALIGNED), mask=m_ok[:, None], other=0.0)
    do = tl.load(_tile(DO, rm[:, None], rd[None, :], stride_dm, stride_dd, ALIGNED), mask=m_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * Lq + rm, delta, mask=m_ok)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, Mask, DO, LSE, Delta, DK, DV,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_mb, stride_mh, stride_mm, stride_mn,
                   stride_db, stride_dh, stride_dm, stride_dd,
                   stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                   stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                   H, Lq, Lk, qk_scale, scale,
                   MASK_KIND: tl.constexpr, HEAD_D: tl.constexpr, UPCAST_DOT: tl.constexpr, ALIGNED: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV for one BLOCK_N key block of one (b, h), looping over every query block.
    Works on transposed scores (keys x queries) so P^T and dS^T feed the dots as is."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    Mask += b * stride_mb + h * stride_mh
    DO += b * stride_db + h * stride_dh
    LSE += bh.to(tl.int64) * Lq
    Delta += bh.to(tl.int64) * Lq

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD_D)
    n_ok = rn < Lk
    k = tl.load(_tile(K, rn[:, None], rd[None, :], stride_kn, stride_kd, ALIGNED), mask=n_ok[:, None], other=0.0)
    v = tl.load(_tile(V, rn[:, None], rd[None, :], stride_vn, stride_vd, ALIGNED), mask=n_ok[:, None], other=0.0)
    dk = tl.zeros((BLOCK_N, HEAD_D), tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_D), tl.float32)
    for start in range(0, Lq, BLOCK_M):
        rows = start + rm
        m_ok = rows < Lq
        qt = tl.load(_tile(Q, rows[None, :], rd[:, None], stride_qm, stride_qd, ALIGNED),
                     mask=m_ok[None, :], other=0.0)
        do = tl.load(_tile(DO, rows[:, None], rd[None, :], stride_dm, stride_dd, ALIGNED),
                     mask=m_ok[:, None], other=0.0)
        # Rows past Lq get LSE +inf, so their P is exactly 0 like a fully masked row's.
        lse = tl.load(LSE + rows, mask=m_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(Delta + rows, mask=m_ok, other=0.0)
        st = _mm(k, qt, tl.zeros((BLOCK_N, BLOCK_M), tl.float32), UPCAST_DOT) * qk_scale
        st = _masked_scores(st, Mask, rows[None, :], rn[:, None], m_ok[None, :], n_ok[:, None],
                            stride_mm, stride_mn, MASK_KIND)
        pt = tl.math.exp2(st - lse[None, :])
        dv = _mm(pt.to(do.dtype), do, dv, UPCAST_DOT)
        dpt = _mm(v, tl.trans(do), tl.zeros((BLOCK_N, BLOCK_M), tl.float32), UPCAST_DOT)
        dst = pt * (dpt - delta[None, :])
        dk = _mm(dst.to(qt.dtype), tl.trans(qt), dk, UPCAST_DOT)

    dk *= scale
    DK += b * stride_dkb + h * stride_dkh
    DV += b * stride_dvb + h * stride_dvh
    tl.store(_tile(DK, rn[:, None], rd[None, :], stride_dkn, stride_dkd, ALIGNED), dk.to(DK.dtype.element_ty),
             mask=n_ok[:, None])
    tl.store(_tile(DV, rn[:, None], rd[None, :], stride_dvn, stride_dvd, ALIGNED), dv.to(DV.dtype.element_ty),
             mask=n_ok[:, None])


@triton.jit
def _attn_bwd_dq(Q, K, V, Mask, DO, LSE, Delta, DQ,
                 stride_qb, stride_qh, stride_qm, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_mb, stride_mh, stride_mm, stride_mn,
                 stride_db, stride_dh, stride_dm, stride_dd,
                 stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                 H, Lq, Lk, qk_scale, scale,
                 MASK_KIND: tl.constexpr, HEAD_D: tl.constexpr, UPCAST_DOT: tl.constexpr, ALIGNED: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ for one BLOCK_M query block of one (b, h), looping over every key block."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    Mask += b * stride_mb + h * stride_mh
    DO += b * stride_db + h * stride_dh

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, HEAD_D)
    m_ok = rm < Lq
    q = tl.load(_tile(Q, rm[:, None], rd[None, :], stride_qm, stride_qd, ALIGNED), mask=m_ok[:, None], other=0.0)
    do = tl.load(_tile(DO, rm[:, None], rd[None, :], stride_dm, stride_dd, ALIGNED), mask=m_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * Lq + rm, mask=m_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + bh.to(tl.int64) * Lq + rm, mask=m_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, HEAD_D), tl.float32)
    for start in range(0, Lk, BLOCK_N):
        cols = start + rn
        n_ok = cols < Lk
        kt = tl.load(_tile(K, cols[None, :], rd[:, None], stride_kn, stride_kd, ALIGNED),
                     mask=n_ok[None, :], other=0.0)
        vt = tl.load(_tile(V, cols[None, :], rd[:, None], stride_vn, stride_vd, ALIGNED),
                     mask=n_ok[None, :], other=0.0)
        s = _mm(q, kt, tl.zeros((BLOCK_M, BLOCK_N), tl.float32), UPCAST_DOT) * qk_scale
        s = _masked_scores(s, Mask, rm[:, None], cols[None, :], m_ok[:, None], n_ok[None, :],
                           stride_mm, stride_mn, MASK_KIND)
        p = tl.math.exp2(s - lse[:, None])
        dp = _mm(do, vt, tl.zeros((BLOCK_M, BLOCK_N), tl.float32), UPCAST_DOT)
        ds = p * (dp - delta[:, None])
        dq = _mm(ds.to(kt.dtype), tl.trans(kt), dq, UPCAST_DOT)

    dq *= scale
    DQ += b * stride_dqb + h * stride_dqh
    tl.store(_tile(DQ, rm[:, None], rd[None, :], stride_dqm, stride_dqd, ALIGNED), dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None])


_PLAIN = {"fwd": _attn_fwd, "bwd_dkdv": _attn_bwd_dkdv, "bwd_dq": _attn_bwd_dq}
_KEY = ["Lq", "Lk", "HEAD_D", "MASK_KIND"]
_TUNED = {key: triton.autotune(configs=list(cfgs), key=_KEY)(_PLAIN[key[0]]) for key, cfgs in ATTN_CONFIGS.items()}


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------
def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def _mask_args(mask: torch.Tensor | None, q: torch.Tensor, Lk: int):
    """(pointer tensor, its 4 strides, MASK_KIND) for ``mask`` broadcast to (B, H, Lq, Lk):
    a view with zero strides on the broadcast dims, bool reinterpreted as uint8."""
    if mask is None:
        return q, (0, 0, 0, 0), MASK_NONE
    B, H, Lq, _ = q.shape
    kind = MASK_BOOL if mask.dtype == torch.bool else MASK_FLOAT
    if kind == MASK_BOOL:
        mask = mask.view(torch.uint8)
    mask = mask.expand(B, H, Lq, Lk)
    return mask, _strides(mask), kind


def _launch(name: str, grid_len: int, bh: int, args: tuple, meta: dict, elem_size: int) -> None:
    """Run kernel ``name`` over (cdiv(grid_len, BLOCK), bh) programs: the autotuned
    kernel on GPU, the plain one with its small fixed config under the interpreter."""
    block = "BLOCK_N" if name == "bwd_dkdv" else "BLOCK_M"
    if runtime.interpreting():
        cfg = INTERPRET_CONFIGS[name]
        grid = (triton.cdiv(grid_len, cfg.kwargs[block]), bh)
        _PLAIN[name][grid](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        _TUNED[name, elem_size][lambda m: (triton.cdiv(grid_len, m[block]), bh)](*args, **meta)


def _alloc_out(q: torch.Tensor) -> torch.Tensor:
    """o as (B, Lq, H, D) memory viewed (B, H, Lq, D): the head merge after it is free."""
    B, H, Lq, D = q.shape
    return q.new_empty((B, Lq, H, D)).permute(0, 2, 1, 3)


def _forward(q, k, v, mask, scale: float):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    o = _alloc_out(q)
    lse = torch.empty((B, H, Lq), dtype=torch.float32, device=q.device)
    m, m_strides, kind = _mask_args(mask, q, Lk)
    args = (q, k, v, m, o, lse, *_strides(q), *_strides(k), *_strides(v), *m_strides, *_strides(o),
            H, Lq, Lk, scale * _LOG2E)
    meta = dict(MASK_KIND=kind, HEAD_D=D, UPCAST_DOT=_upcast(q), ALIGNED=_aligned(q, k, v, o))
    _launch("fwd", Lq, B * H, args, meta, q.element_size())
    return o, lse


def _backward(do, q, k, v, o, lse, mask, scale: float):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    delta = torch.empty((B, H, Lq), dtype=torch.float32, device=q.device)
    cfg = PREPROCESS_CONFIG
    _attn_bwd_preprocess[(triton.cdiv(Lq, cfg.kwargs["BLOCK_M"]), B * H)](
        o, do, delta, *_strides(o), *_strides(do), H, Lq, HEAD_D=D, ALIGNED=_aligned(o, do), **cfg.kwargs,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    m, m_strides, kind = _mask_args(mask, q, Lk)
    meta = dict(MASK_KIND=kind, HEAD_D=D, UPCAST_DOT=_upcast(q), ALIGNED=_aligned(q, k, v, do, dq, dk, dv))
    common = (*_strides(q), *_strides(k), *_strides(v), *m_strides, *_strides(do))
    tail = (H, Lq, Lk, scale * _LOG2E, scale)
    _launch("bwd_dkdv", Lk, B * H, (q, k, v, m, do, lse, delta, dk, dv, *common, *_strides(dk),
                                    *_strides(dv), *tail), meta, q.element_size())
    _launch("bwd_dq", Lq, B * H, (q, k, v, m, do, lse, delta, dq, *common, *_strides(dq), *tail), meta,
            q.element_size())
    return dq, dk, dv


def _aligned(*ts: torch.Tensor) -> bool:
    """16-byte aligned data, unit head-dim stride and batch/head/row strides that are
    multiples of 16 elements (the model's views of a qkv projection always are): the
    kernels' ALIGNED."""
    return all(t.data_ptr() % 16 == 0 and t.stride(3) == 1 and all(s % 16 == 0 for s in t.stride()[:3])
               for t in ts)


def _upcast(q: torch.Tensor) -> bool:
    return runtime.interpreting() and q.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------
# Custom ops and autograd
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ascan_triton::flash_attn_fwd", mutates_args=())
def flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention forward. q (B, H, Lq, D), k and v (B, H, Lk, D), one dtype
    (fp16/bf16/fp32), any strides; attn_mask None, bool or float, broadcastable to
    (B, H, Lq, Lk) (no gradient flows to it). Returns (o (B, H, Lq, D) in q's dtype,
    laid out as (B, Lq, H, D); lse (B, H, Lq) fp32, natural log, +inf for rows with
    no key)."""
    return _forward(q, k, v, attn_mask, scale)


@flash_attn_fwd.register_fake
def _(q, k, v, attn_mask, scale):
    B, H, Lq, _ = q.shape
    return _alloc_out(q), q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op("ascan_triton::flash_attn_bwd", mutates_args=())
def flash_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, attn_mask: torch.Tensor | None,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash attention backward: (dq, dk, dv) like (q, k, v) (``empty_like`` layouts) from
    dO (B, H, Lq, D) any strides and the forward's inputs, output and lse."""
    return _backward(do, q, k, v, o, lse, attn_mask, scale)


@flash_attn_bwd.register_fake
def _(do, q, k, v, o, lse, attn_mask, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, attn_mask, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, attn_mask)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _grad(ctx, do, _dlse):
    q, k, v, o, lse, attn_mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.ascan_triton.flash_attn_bwd(do, q, k, v, o, lse, attn_mask, ctx.scale)
    return dq, dk, dv, None, None


torch.library.register_autograd("ascan_triton::flash_attn_fwd", _grad, setup_context=_setup)


# ---------------------------------------------------------------------------------------
# Registry glue
# ---------------------------------------------------------------------------------------
def _offsets_fit_int32(t: torch.Tensor) -> bool:
    """Within one (b, h) slice the kernels index in int32: the last element's offset
    from the slice start must fit."""
    return sum((n - 1) * abs(s) for n, s in zip(t.shape[2:], t.stride()[2:])) <= _INT32_MAX


def _shape_reason(q, k, v) -> str | None:
    if q.numel() == 0 or k.shape[2] == 0:
        return "empty input"
    D = q.shape[-1]
    if D not in HEAD_DIMS:
        return f"head dim {D} not supported (the kernels take {', '.join(map(str, HEAD_DIMS))})"
    if v.shape[-1] != D:
        return f"v head dim {v.shape[-1]} != q head dim {D} (the kernels need them equal)"
    B, H, Lq, _ = q.shape
    if B * H > _MAX_GRID_Y:
        return f"batch * heads = {B * H} > {_MAX_GRID_Y} (grid limit)"
    out_span = (Lq - 1) * H * D + D - 1  # o is (B, Lq, H, D) memory
    if not all(_offsets_fit_int32(t) for t in (q, k, v)) or out_span > _INT32_MAX:
        return "a (batch, head) slice of q/k/v spans more than 2**31 elements"
    return None


def _mask_reason(mask, q, k) -> str | None:
    if mask is None:
        return None
    if mask.dtype != torch.bool and mask.dtype not in _FLOATS:
        return f"attn_mask dtype {mask.dtype} not supported (bool, float16, bfloat16, float32)"
    if mask.requires_grad and torch.is_grad_enabled():
        return "attn_mask requires grad: the Triton backward has no gradient for the mask"
    if not _offsets_fit_int32(mask.expand(*q.shape[:3], k.shape[2])):
        return "a (batch, head) slice of attn_mask spans more than 2**31 elements"
    return runtime.device_reason(mask)


def _supports(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """None if the kernels can run these inputs, else why not (device, dtype: the caps)."""
    if dropout_p > 0.0:
        return "dropout not implemented in the Triton kernel"
    return _shape_reason(q, k, v) or _mask_reason(attn_mask, q, k)


def _prefer(q, *args, **kwargs):
    return runtime.prefer_reason(q)


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """The registry's entry: same arguments as ``attention_reference``."""
    dtype = compute_dtype(q)  # autocast: run in autocast's dtype
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return flash_attn_fwd(q.to(dtype), k.to(dtype), v.to(dtype), attn_mask, scale)[0]


def impls() -> dict[str, Impl]:
    return {"attention": Impl(
        "triton", _attention, caps=runtime.capabilities(empty=True), supports=_supports,
        available=runtime.unavailable_reason, autograd=True, prefer=_prefer,
        doc="Triton flash attention (online softmax, fp32 stats; fwd + dK/dV and dQ backward kernels)",
    )}


# ---------------------------------------------------------------------------------------
# AOT specs
# ---------------------------------------------------------------------------------------
# Each dtype at every head dim without a mask; the mask kinds at head dim 64 for bf16
# and fp32 (a mask adds a load and a select but does not change the tiling, and fp16
# compiles to the same code as bf16 but for the conversions). ALIGNED on and unit
# head-dim strides: what Triton specialises at launch for the model's views.
AOT_HEAD_DIMS = (32, 64, 128)
_ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
_MASK_PTR = {MASK_BOOL: "*u8", MASK_FLOAT: "*fp32"}
_MASK_TAG = {MASK_NONE: "nomask", MASK_BOOL: "boolmask", MASK_FLOAT: "floatmask"}


def _variants():
    """(dtype, head dim, mask kind) compiled ahead of time."""
    for tt in ("fp16", "bf16", "fp32"):
        for d in AOT_HEAD_DIMS:
            yield tt, d, MASK_NONE
        if tt != "fp16":
            yield tt, 64, MASK_BOOL
            yield tt, 64, MASK_FLOAT


def _kernel_sig(fn, tt: str, kind: int) -> tuple[dict[str, str], dict]:
    """Every parameter of ``fn`` typed for dtype ``tt`` and mask kind ``kind``, and the
    constexpr values fixed by the layout (the unit head-dim strides)."""
    sig, consts = {}, {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name in ("H", "Lq", "Lk"):
            sig[name] = "i32"
        elif name in ("qk_scale", "scale"):
            sig[name] = "fp32"
        elif name in ("LSE", "Delta"):
            sig[name] = "*fp32"
        elif name == "Mask":
            sig[name] = _MASK_PTR.get(kind, f"*{tt}")  # no mask: a dummy pointer (q)
        elif name.startswith("stride_"):
            # the head-dim stride of q/k/v/dO/o/dq/dk/dv is 1; the mask's strides are free
            unit = name.endswith("d") and not name.startswith("stride_m")
            sig[name] = "constexpr" if unit else "i32"
            if unit:
                consts[name] = 1
        else:
            sig[name] = f"*{tt}"  # Q, K, V, O, DO, DQ, DK, DV
    return sig, consts


def aot_specs() -> list[runtime.KernelSpec]:
    specs = []
    for tt, d, kind in _variants():
        for name, fn in _PLAIN.items():
            sig, consts = _kernel_sig(fn, tt, kind)
            consts.update(MASK_KIND=kind, HEAD_D=d, UPCAST_DOT=False, ALIGNED=True)
            specs.append(runtime.KernelSpec(f"attn_{name}[{tt},d{d},{_MASK_TAG[kind]}]", fn, sig, consts,
                                        ATTN_CONFIGS[name, _ELEM_BYTES[tt]], uses_dot=True))
        if kind == MASK_NONE:
            sig, consts = _kernel_sig(_attn_bwd_preprocess, tt, kind)
            consts.update(HEAD_D=d, ALIGNED=True)
            specs.append(runtime.KernelSpec(f"attn_bwd_preprocess[{tt},d{d}]", _attn_bwd_preprocess, sig, consts,
                                        (PREPROCESS_CONFIG,)))
    return specs

"""Triton implicit-GEMM convolution with the bias / residual / activation epilogue fused.

One kernel, ``act(conv(x, w) + b (+ residual))`` (inference only), serves ``conv_bias_act``
and the three conv_bn ops, whose impls (ascan_kernels/ops/conv_bn/triton.py) fold the
inference BatchNorm into (w, b) and call it:

* ``conv_bn_gelu``: ``gelu(conv(x, w') + b')`` - the C block's 3x3 expand conv, the stem;
* ``conv_bn_add``:  ``conv(x, w') + b' + residual`` - the 1x1 projection with its shortcut;
* ``conv_bn``:      ``conv(x, w') + b'`` - projections without a shortcut, downsampling;
* the UNets' convs with their bias, residual or SiLU (``conv_bias_act``).

GEMM view: ``M = N * Ho * Wo`` output pixels by ``Cout`` output channels, contracted
over ``K = KH * KW * Cin``. The A operand is never materialised: each K step reads
one tap ``(kh, kw)`` and a block of input channels for BLOCK_M output pixels straight
from ``x`` through its four strides, with masks for the zero padding (an NHWC /
channels_last ``x`` makes those rows contiguous runs of channels; NCHW works too, at
gather speed). The B operand is the folded weight laid out once as
``(KH * KW * Cin, Cout)`` (row ``(kh * KW + kw) * Cin + cin``) in the compute dtype;
``tl.dot`` accumulates in fp32 (tf32 for fp32 inputs on GPU). The epilogue adds the
fp32 bias, then the residual (read through its strides), then the activation (GELU erf
or tanh, SiLU), and stores once into a channels_last output.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._common import DerivedWeights, apply_act, compute_dtype, residual_needs_promotion
from ...backends import triton as runtime
from ...registry import Impl

# Autotune configs (GPU), by whether the launch is ALIGNED (16-byte aligned channel
# runs: channels_last x and residual, Cin and Cout multiples of 16 - every conv of the
# model but the stem). Shared memory per pipeline stage is
# (BLOCK_M + BLOCK_N) * BLOCK_K * elem_size: 128x128x32 takes 16 KiB in fp16/bf16 and
# 32 KiB in fp32, so three stages stay far below sm_80's 163 KiB. The big tile suits
# the early, high-resolution stages (M in the hundreds of thousands); the small one
# keeps enough programs in flight for the late 7x7 / 14x14 stages and narrow convs.
# Unaligned tiles gather element by element through registers (a 64-bit address per
# element), so they get the small tile only, two stages deep (the big tile spills; a
# third stage took the fp32 residual variant to the 255-register cap). Every config
# has 4+ warps and 64-row tiles per warp group so sm_90 lowers tl.dot to wgmma.
CONV_CONFIGS = {
    "aligned": (
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
    ),
    "unaligned": (
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=2),
    ),
}
# Under the interpreter: one small tile (tl.dot needs every dim >= 16).
INTERPRET_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 4},
                                 num_warps=4, num_stages=1)

# Epilogue activation codes (the kernel's ACT constexpr).
ACT_NONE, ACT_GELU, ACT_GELU_TANH, ACT_SILU = 0, 1, 2, 3
_ACT_CODE = {"none": ACT_NONE, "gelu": ACT_GELU, "gelu_tanh": ACT_GELU_TANH, "silu": ACT_SILU}

# (kernel size, stride, padding) the kernel is built and tuned for: the C block's 3x3
# expand conv (stride 1 or 2) and stem, the 1x1 projection (and a strided 1x1).
_SUPPORTED_GEOMETRY = {(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)}
_FLOATS = runtime.FLOATS


@triton.jit
def _conv_kernel(X, Wgt, Bias, Res, Y,
                 M, H, W, Ho, Wo, Cin, Cout, M_BUCKET,
                 sxn, sxc, sxh, sxw, srn, src, srh, srw,
                 KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                 ACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ALIGNED: tl.constexpr, UPCAST_DOT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """Y[m, co] = act(sum_k A[m, k] Wgt[k, co] + Bias[co] (+ Res[m, co])).

    X: (N, Cin, H, W) read through strides (sxn, sxc, sxh, sxw); Wgt: (KH*KW*Cin, Cout)
    row-major; Bias: (Cout,) fp32; Res: (N, Cout, Ho, Wo) through (srn, src, srh, srw);
    Y: (M, Cout) row-major, i.e. a channels_last (N, Cout, Ho, Wo). ACT 0: none,
    1: gelu (erf), 2: gelu (tanh), 3: silu. M_BUCKET is only an autotune key.

    ALIGNED: the launcher checked that every pointer is 16-byte aligned, x and the
    residual have unit channel stride and their other strides, Cin and Cout are
    multiples of 16. The hints below then let the channel runs load and store as
    16-byte vectors (Triton specialises that at launch from the arguments, but an
    ahead-of-time compile sees no arguments). UPCAST_DOT (interpreter only) feeds
    tl.dot fp32 copies: the interpreter multiplies bf16 tiles as raw integers.
    """
    # Grouped tile order: GROUP_M row-tiles sweep the columns together, so the weight
    # tiles they share stay in L2.
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(Cout, BLOCK_N)
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < Cout
    if ALIGNED:
        n_ok = tl.max_constancy(n_ok, 16)
    # Output pixel (n, oh, ow) of each GEMM row; its top-left input tap.
    hw_out = Ho * Wo
    img = rm // hw_out
    rem = rm - img * hw_out
    oh = rem // Wo
    ow = rem - oh * Wo
    h0 = oh * STRIDE - PAD
    w0 = ow * STRIDE - PAD
    x_img = img.to(tl.int64) * sxn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) so the pipeliner overlaps loads across
    # taps; the tap's row offsets and border masks are a few vector ops per step.
    c_blocks = tl.cdiv(Cin, BLOCK_K)
    for it in range(0, KH * KW * c_blocks):
        if KH * KW == 1:
            tap = 0
            c0 = it * BLOCK_K
        else:
            tap = it // c_blocks
            c0 = (it - tap * c_blocks) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        hi = h0 + kh
        wi = w0 + kw
        row_ok = m_ok
        if PAD > 0:
            row_ok = row_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        cin = c0 + rk
        c_ok = cin < Cin
        x_row = x_img + hi * sxh + wi * sxw
        if ALIGNED:
            c_ok = tl.max_constancy(c_ok, 16)
            a_ptrs = tl.multiple_of(X + x_row[:, None] + cin[None, :], [1, 16])
        else:
            a_ptrs = X + x_row[:, None] + cin[None, :] * sxc
        a = tl.load(a_ptrs, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        b_ptrs = Wgt + (tap * Cin + cin)[:, None] * Cout + rn[None, :]
        if ALIGNED:
            b_ptrs = tl.multiple_of(b_ptrs, [1, 16])
        b = tl.load(b_ptrs, mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="tf32")

    acc += tl.load(Bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:
        r_row = img.to(tl.int64) * srn + oh * srh + ow * srw
        if ALIGNED:
            r_ptrs = tl.multiple_of(Res + r_row[:, None] + rn[None, :], [1, 16])
        else:
            r_ptrs = Res + r_row[:, None] + rn[None, :] * src
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    if ACT == 1:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == 2:
        # 0.5 z (1 + tanh(u)) == z * sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * u)
    elif ACT == 3:
        acc = acc * tl.sigmoid(acc)
    y_ptrs = Y + rm.to(tl.int64)[:, None] * Cout + rn[None, :]
    if ALIGNED:
        y_ptrs = tl.multiple_of(y_ptrs, [1, 16])
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask)


_TUNED = {kind: triton.autotune(configs=list(cfgs), key=["Cin", "Cout", "KH", "STRIDE", "M_BUCKET"])(_conv_kernel)
          for kind, cfgs in CONV_CONFIGS.items()}


def _aligned(x: torch.Tensor, cout: int, *others: torch.Tensor | None) -> bool:
    """The ALIGNED contract: x (and each 4-D other) has unit channel stride and its
    other strides multiples of 16; Cin, Cout multiples of 16; every base 16-byte aligned."""
    if x.shape[1] % 16 or cout % 16:
        return False
    for t in (x, *others):
        if t is None:
            continue
        if t.data_ptr() % 16:
            return False
        if t.dim() == 4 and (t.stride(1) != 1 or any(s % 16 for s in (t.stride(0), t.stride(2), t.stride(3)))):
            return False
    return True


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _launch(x: torch.Tensor, w_gemm: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
            kh: int, kw: int, stride: int, pad: int, act: str) -> torch.Tensor:
    """Run the conv kernel; returns (N, Cout, Ho, Wo) channels_last in x's dtype."""
    n, cin, h, w = x.shape
    cout = w_gemm.shape[1]
    ho, wo = _out_size(h, kh, stride, pad), _out_size(w, kw, stride, pad)
    y = torch.empty((n, cout, ho, wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    m = n * ho * wo
    if y.numel() == 0:
        return y
    res = residual if residual is not None else y
    args = (x, w_gemm, bias, res, y, m, h, w, ho, wo, cin, cout, triton.next_power_of_2(m),
            *x.stride(), *(res.stride() if residual is not None else (0, 0, 0, 0)))
    aligned = _aligned(x, cout, residual, w_gemm, bias, y)
    meta = dict(KH=kh, KW=kw, STRIDE=stride, PAD=pad, ACT=_ACT_CODE[act], HAS_RESIDUAL=residual is not None,
                ALIGNED=aligned, UPCAST_DOT=runtime.interpreting() and x.dtype != torch.float32)
    if runtime.interpreting():
        cfg = INTERPRET_CONFIG
        grid = (triton.cdiv(m, cfg.kwargs["BLOCK_M"]) * triton.cdiv(cout, cfg.kwargs["BLOCK_N"]),)
        _conv_kernel[grid](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        grid = lambda c: (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(cout, c["BLOCK_N"]),)
        _TUNED["aligned" if aligned else "unaligned"][grid](*args, **meta)
    return y


# ---------------------------------------------------------------------------------------
# Custom op (forward only: the impl serves inference, the registry skips it for grads)
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ascan_triton::conv2d_bias_act", mutates_args=())
def conv2d_bias_act(x: torch.Tensor, w_gemm: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                    kh: int, kw: int, stride: int, pad: int, act: str) -> torch.Tensor:
    """act(conv2d(x, w) + bias (+ residual)) as an implicit GEMM.

    x: (N, Cin, H, W) fp16/bf16/fp32, any strides (channels_last is fastest);
    w_gemm: (kh*kw*Cin, Cout) row-major in x's dtype, row ``(i*kw + j)*Cin + c`` holding
    ``w[:, c, i, j]`` (see :func:`gemm_weight`); bias: (Cout,) fp32; residual: None or
    (N, Cout, Ho, Wo) in x's dtype, any strides; act: "none", "gelu", "gelu_tanh" or "silu".
    Square stride and padding, dilation 1, groups 1. Returns (N, Cout, Ho, Wo)
    channels_last in x's dtype.
    """
    return _launch(x, w_gemm, bias, residual, kh, kw, stride, pad, act)


@conv2d_bias_act.register_fake
def _(x, w_gemm, bias, residual, kh, kw, stride, pad, act):
    n, _, h, w = x.shape
    return torch.empty((n, w_gemm.shape[1], _out_size(h, kh, stride, pad), _out_size(w, kw, stride, pad)),
                       dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------
# The GEMM weight: laid out once per folded weight and dtype, cached
# ---------------------------------------------------------------------------------------
_WEIGHT_CACHE_MAX = 64
_WEIGHT_CACHE = DerivedWeights(_WEIGHT_CACHE_MAX)


def gemm_weight(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(Cout, Cin, KH, KW) weight -> (KH*KW*Cin, Cout) row-major in ``dtype``."""
    cout = w.shape[0]
    return w.detach().permute(2, 3, 1, 0).reshape(-1, cout).to(dtype).contiguous()


def _cached_gemm_weight(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`gemm_weight`, memoised for a caller-owned folded weight (e.g. ConvBN's);
    see :class:`~ascan_kernels._common.DerivedWeights`."""
    return _WEIGHT_CACHE.get(w, dtype, lambda: gemm_weight(w, dtype))


def clear_weight_cache() -> None:
    """Drop every cached GEMM weight."""
    _WEIGHT_CACHE.clear()


# ---------------------------------------------------------------------------------------
# Registry glue (the op's arguments: ascan_kernels/ops/conv_bias_act/__init__.py)
# ---------------------------------------------------------------------------------------
def geometry_reason(x, weight, residual, stride, padding, dilation, groups, act) -> str | None:
    """Why the kernel cannot run this conv (also asked by the conv_bn ops), or None."""
    if groups != 1:
        return f"groups={groups}: only groups=1 (dense conv) is implemented"
    if tuple(dilation) != (1, 1):
        return f"dilation={tuple(dilation)}: only dilation 1 is implemented"
    kh, kw = weight.shape[2], weight.shape[3]
    geometry = (kh, stride[0], padding[0])
    if kh != kw or stride[0] != stride[1] or padding[0] != padding[1] or geometry not in _SUPPORTED_GEOMETRY:
        return (f"kernel {kh}x{kw} stride={tuple(stride)} padding={tuple(padding)}: implemented are "
                "3x3 stride 1/2 padding 1 and 1x1 stride 1/2 padding 0")
    if act not in _ACT_CODE:
        return f"activation {act!r} not implemented"
    if residual is not None and residual.dtype not in _FLOATS:
        return f"residual dtype {residual.dtype} not supported (float16, bfloat16, float32)"
    if x.shape[0] * x.shape[2] * x.shape[3] >= 2**31:
        return "more than 2^31 input pixels: the kernel indexes pixels with int32"
    return None


def prefer_reason(x, *args, **kwargs):
    return runtime.prefer_reason(x)


def run(x, w_gemm, b, residual, kh, kw, stride, padding, act, dtype):
    """The kernel on ``x`` in ``dtype`` with a laid-out weight and an fp32 bias; an fp32
    residual under autocast is added after it (eager returns fp32 there)."""
    if residual_needs_promotion(dtype, residual):
        y = conv2d_bias_act(x.to(dtype), w_gemm, b, None, kh, kw, stride[0], padding[0], "none") + residual
        return apply_act(y, act)  # the residual goes in before the activation
    if residual is not None:
        residual = residual.to(dtype)
    return conv2d_bias_act(x.to(dtype), w_gemm, b, residual, kh, kw, stride[0], padding[0], act)


def _supports(x, weight, bias, residual, stride, padding, dilation, groups, act):
    return geometry_reason(x, weight, residual, stride, padding, dilation, groups, act)


def _triton(x, weight, bias, residual, stride, padding, dilation, groups, act):
    """Lay the weight out for the GEMM (cached per weight and dtype), run the kernel.
    Returns (N, Cout, Ho, Wo) channels_last in x's (or autocast's) dtype."""
    dtype = compute_dtype(x)
    with torch.no_grad():
        w_gemm = _cached_gemm_weight(weight, dtype)
        b = (bias.detach().float() if bias is not None
             else torch.zeros(weight.shape[0], device=x.device)).contiguous()
    return run(x, w_gemm, b, residual, weight.shape[2], weight.shape[3], stride, padding, act, dtype)


def impls() -> dict[str, Impl]:
    return {"conv_bias_act": Impl(
        "triton", _triton, caps=runtime.capabilities(), supports=_supports, available=runtime.unavailable_reason,
        autograd=False, prefer=prefer_reason,
        doc="Triton implicit-GEMM conv (NHWC) with bias, residual and GELU/SiLU in the epilogue")}


# ---------------------------------------------------------------------------------------
# AOT specs: per dtype, the four variants the model runs, ALIGNED over the aligned
# configs. The unaligned kernel (the stem, NCHW inputs, ragged channel counts) is
# checked at its one config for the two variants that bound it: a 3x3 gather with
# border masks (the stem) and the 1x1 with the residual epilogue (the most live
# registers); the others are the same code minus a mask or the residual load.
# channels_last x and residual have unit channel stride, which Triton specialises at
# launch; the specs fix it the same way.
# ---------------------------------------------------------------------------------------
_VARIANTS = {  # name: (KH, STRIDE, PAD, ACT, HAS_RESIDUAL)
    "conv3x3_s1_gelu": (3, 1, 1, ACT_GELU, False),
    "conv3x3_s2_gelu": (3, 2, 1, ACT_GELU, False),
    "conv1x1_residual": (1, 1, 0, ACT_NONE, True),
    "conv1x1": (1, 1, 0, ACT_NONE, False),
    "conv3x3_s1_silu": (3, 1, 1, ACT_SILU, False),  # conv_bias_act's SiLU epilogue
}
_UNALIGNED_VARIANTS = ("conv3x3_s2_gelu", "conv1x1_residual")


def aot_specs() -> list[runtime.KernelSpec]:
    specs = []
    for tt in ("fp16", "bf16", "fp32"):
        p = f"*{tt}"
        sig = {"X": p, "Wgt": p, "Bias": "*fp32", "Res": p, "Y": p,
               **{s: "i32" for s in ("M", "H", "W", "Ho", "Wo", "Cin", "Cout", "M_BUCKET",
                                     "sxn", "sxc", "sxh", "sxw", "srn", "src", "srh", "srw")},
               **{c: "constexpr" for c in ("KH", "KW", "STRIDE", "PAD", "ACT", "HAS_RESIDUAL", "ALIGNED",
                                           "UPCAST_DOT", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}}
        sig["sxc"] = sig["src"] = "constexpr"
        for kind, cfgs in CONV_CONFIGS.items():
            for name, (k, stride, pad, act, has_res) in _VARIANTS.items():
                if kind == "unaligned" and name not in _UNALIGNED_VARIANTS:
                    continue
                consts = {"KH": k, "KW": k, "STRIDE": stride, "PAD": pad, "ACT": act, "HAS_RESIDUAL": has_res,
                          "ALIGNED": kind == "aligned", "UPCAST_DOT": False, "sxc": 1, "src": 1}
                specs.append(runtime.KernelSpec(f"{name}[{tt},{kind}]", _conv_kernel, dict(sig), consts, cfgs,
                                            uses_dot=True))
    return specs

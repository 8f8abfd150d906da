"""flash-attn 2 and flash-attn 4 as impls of ``attention``: ``flash_attn`` and ``flash_attn4``.

Both run Tri Dao's flash attention kernels from PyPI as they are; this module only adapts
the call (layout, scale, what each takes) and says why when it cannot run.

``flash_attn`` - flash-attn 2.x (``pip install flash-attn --no-build-isolation``)
    ``flash_attn.flash_attn_func``: CUDA C++ kernels, sm_80 and newer, forward and backward
    (its own autograd.Function; recent 2.x releases make its kernels torch custom ops,
    which torch.compile traces), attention dropout. fp16/bf16; head dims that are multiples of 8 up to 256 (it would pad other
    head dims with a copy: those go to the next impl); v's head dim equal to q's.

``flash_attn4`` - flash-attn-4 (``pip install --pre flash-attn-4``; 4.0.0b36 when written)
    ``flash_attn.cute.flash_attn_func``: kernels written in NVIDIA's CuTe DSL (pure Python,
    compiled by the DSL the first time each dtype / head-dim configuration runs), for
    Hopper (sm_90) and datacenter Blackwell (sm_100, sm_103, sm_110). Its code also has
    sm_80 and sm_120 paths, left out here: on sm_8x it has no backward and flash-attn 2 is
    the mature kernel there, and sm_120 skips its head-dim validation. fp16/bf16; head
    dims (multiples of 8): on sm_90 8..256 for q and v each; on sm_10x/11x 8..128 each, or
    (192, 128), or (256, 256). No dropout. Its entry point is an ``autograd.Function``
    around DSL-compiled launches that Dynamo cannot trace, so it is wrapped in two torch
    custom ops, ``ascan_fa4::fwd`` (returns ``(out, lse)``) and ``ascan_fa4::bwd`` (its
    ``flash_attn.cute.interface._flash_attn_bwd``), with fake impls and an autograd
    registration: ``torch.compile(fullgraph=True)`` sees one opaque op.

Both backwards accumulate dQ across key blocks with atomics (flash-attn's default,
``deterministic=False``): gradients are not bitwise reproducible run to run, unlike the
``triton`` impl's two-kernel backward.

Neither takes a tensor mask (flash-attn masks by position only: causal, sliding windows),
so a masked call is declined with that reason and the registry runs the next impl
(``triton``, then ``sdpa``). float32 inputs are declined too (run under autocast to use
them). Lq != Lk (cross-attention) is fine for both.

Layout
    Ours is (B, H, L, D), theirs (B, L, H, D): :func:`to_flash_layout` is a transpose view,
    and a transpose of a contiguous (B, H, L, D) keeps the unit head-dim stride the kernels
    need, so nothing is copied. The output comes back (B, Lq, H, D) contiguous and is
    returned as its (B, H, Lq, D) transpose view, so the usual head merge after attention
    (``o.transpose(1, 2).reshape(B, Lq, H * D)``) is free, as with the ``triton`` impl. The
    one copy: an input whose head dim is strided (both kernels would copy it themselves).

Priority (``capabilities.PRIORITY``): ``flash_attn4`` 260 > ``flash_attn`` 250 >
``triton`` 200 > ``sdpa`` 50, on the GPUs each takes. Not measured here yet (an autotune
issue will decide by timing); the default is a judgement: these are the vendor-tuned
kernels, timed by their authors on exactly these GPUs, while our Triton kernel was
verified but never timed on a GPU; flash-attn 4 is the newer kernel written for
Hopper/Blackwell's asynchronous tensor-core instructions, which flash-attn 2 (an Ampere
design) does not use, so where both run (sm_90, sm_10x) 4 goes first; sdpa stays last
on CUDA, where its flash backend is a vendored copy of flash-attn 2's kernels.
Force or forbid with ``use(attention="flash_attn4")`` / ``use(attention="!flash_attn4")``
or ``ASCAN_KERNELS=attention=flash_attn``.

Availability is probed once, when the op registers (``import ascan_kernels``), cheapest
check first: the distribution's metadata (installed? which version? no import), then
whether there is a CUDA device (without one, importing is skipped: ``flash_attn.cute``
takes seconds to import, for kernels that could not run), then the import itself, whose
every exception (a missing dependency, an ABI mismatch: ``undefined symbol``, a CUDA
library that cannot be loaded) becomes the reason, then the entry points this module
calls. ``python -m ascan_kernels`` and ``ascan_kernels.available("attention")`` show it.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
from typing import Any, Callable

import torch

from ..._common import compute_dtype
from ...capabilities import Capabilities, device_capability
from ...registry import Impl, KernelUnavailableError, register_decomposition

__all__ = ["Backend", "fa2", "fa4", "probe_fa2", "probe_fa4", "to_flash_layout", "run_fa2", "run_fa4",
           "fa4_forward", "fa4_backward", "fa2_head_dim_reason", "fa4_head_dim_reason", "fa2_impl", "fa4_impl"]

FA2_DIST, FA4_DIST = "flash-attn", "flash-attn-4"
FA2_INSTALL = "pip install flash-attn --no-build-isolation"
# A plain `pip install flash-attn-4` finds nothing while only pre-releases exist.
FA4_INSTALL = "pip install --pre flash-attn-4"
FA4_TESTED = "4.0.0b36"

HALF = (torch.float16, torch.bfloat16)
_DTYPES_NOTE = "flash-attn computes in fp16/bf16 only; float32 goes to the next impl (or run under autocast)"
HEAD_DIM_MULTIPLE = 8  # 16-byte rows of 2-byte elements: both kernels' load granularity
FA2_MAX_HEAD_DIM = 256

FA2_CAPS = Capabilities(devices=("cuda",), dtypes=HALF, dtypes_note=_DTYPES_NOTE, cuda_capability=((8, 0), None),
                        empty=False)
# sm_90 up to sm_110: Hopper and datacenter Blackwell (see the module docstring for sm_80, sm_120).
FA4_CAPS = Capabilities(devices=("cuda",), dtypes=HALF, dtypes_note=_DTYPES_NOTE,
                        cuda_capability=((9, 0), (11, 0)), empty=False)

NO_MASK = "attn_mask given: flash-attn takes no tensor mask (it masks by position only: causal, windows)"


# ---------------------------------------------------------------------------------------
# Availability probes
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Backend:
    """What a probe found. ``reason``: why it cannot run here (None: it can); ``version``:
    the installed version; ``fwd``/``bwd``: the entry points this module calls (FA2 has
    only ``fwd``, its ``flash_attn_func``, which carries its own backward)."""

    reason: str | None
    version: str | None = None
    fwd: Callable[..., Any] | None = None
    bwd: Callable[..., Any] | None = None


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _major(version: str) -> int | None:
    m = re.match(r"\s*(\d+)", version)
    return int(m.group(1)) if m else None


def _no_cuda(what: str, version: str, gpus: str) -> str:
    return (f"no CUDA device ({what} {version} is installed; its kernels run on {gpus} GPUs; "
            f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'})")


def import_failure(what: str, version: str | None, module: str, e: BaseException) -> str:
    """The reason for a failed ``import module``, naming the kind of failure: a missing
    dependency, an ABI mismatch with this torch, a shared library that cannot be loaded."""
    msg = (str(e).strip().splitlines() or [""])[0][:300]
    head = f"{what} {version or '(unknown version)'}: import {module} failed"
    err = f"{type(e).__name__}: {msg}"
    if "undefined symbol" in msg:
        return (f"{head}: ABI mismatch, it was built against another torch/CUDA than this one (torch "
                f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}) ({err}); reinstall a build for this torch")
    lib = re.search(r"([\w.+-]+\.so[\w.]*): cannot open shared object file", msg)
    if lib:
        return f"{head}: a shared library it needs cannot be loaded: {lib.group(1)} ({err})"
    if isinstance(e, ModuleNotFoundError) and e.name:
        if module == e.name or module.startswith(e.name + "."):
            return f"{head}: the module is missing although its metadata is installed (a broken install?) ({err})"
        return f"{head}: its dependency {e.name!r} is not installed ({err}); reinstall {what} with its dependencies"
    return f"{head} ({err})"


def _import(import_module, what: str, version: str | None, module: str):
    """(module, None) or (None, reason). Any exception counts: an extension built for another
    torch raises ImportError or OSError, a broken dependency can raise anything."""
    try:
        return import_module(module), None
    except Exception as e:  # never let a broken optional package break ascan_kernels
        return None, import_failure(what, version, module, e)


def probe_fa2(*, dist_version=_dist_version, find_spec=_find_spec, cuda_available=torch.cuda.is_available,
              import_module=importlib.import_module) -> Backend:
    """Whether flash-attn 2 can run here. The keyword arguments are the probe's view of the
    world (metadata, the import system, CUDA), replaceable so tests can stage failures."""
    version = dist_version(FA2_DIST)
    if version is None:
        spec = find_spec("flash_attn")
        if spec is None:
            return Backend(f"flash-attn is not installed ({FA2_INSTALL}; needs a CUDA build of torch)")
        if spec.origin is None:  # a namespace package: no flash_attn/__init__.py
            return Backend(f"flash-attn 2 is not installed: the flash_attn package here is only flash-attn-4's "
                           f"flash_attn.cute namespace ({FA2_INSTALL})")
        # a source tree without metadata: the version is read from the module below
    elif _major(version) != 2:
        return Backend(f"flash-attn {version} is installed; this impl needs flash-attn 2.x ({FA2_INSTALL})", version)
    if not cuda_available():
        return Backend(_no_cuda("flash-attn", version or "(unknown version)", "CUDA sm_80+"), version)
    mod, why = _import(import_module, "flash-attn", version, "flash_attn")
    if mod is None:
        return Backend(why, version)
    version = version or str(getattr(mod, "__version__", "unknown"))
    if _major(version) != 2:
        return Backend(f"flash_attn {version} is installed; this impl needs flash-attn 2.x ({FA2_INSTALL})", version)
    fn = getattr(mod, "flash_attn_func", None)
    if not callable(fn):
        return Backend(f"flash-attn {version}: flash_attn has no flash_attn_func", version)
    return Backend(None, version, fwd=fn)


# The parameters this module passes to FA4's entry points: a version that renamed them is
# reported here, not found out by a TypeError mid-model.
_FA4_FWD_PARAMS = ("q", "k", "v", "softmax_scale", "causal", "return_lse")
_FA4_BWD_PARAMS = ("q", "k", "v", "out", "dout", "lse", "softmax_scale", "causal", "dq", "dk", "dv")


def _lacks(fn, params: tuple[str, ...]) -> list[str]:
    try:
        have = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return list(params)
    return [p for p in params if p not in have]


def probe_fa4(*, dist_version=_dist_version, cuda_available=torch.cuda.is_available,
              import_module=importlib.import_module) -> Backend:
    """Whether flash-attn-4 can run here (see :func:`probe_fa2` for the arguments).

    Its version is the ``flash-attn-4`` distribution's: the ``flash_attn.cute`` module
    reads its ``__version__`` from a distribution named ``fa4``, which pip never installs."""
    version = dist_version(FA4_DIST)
    if version is None:
        return Backend(f"flash-attn-4 is not installed ({FA4_INSTALL}; Hopper/Blackwell GPUs)")
    if _major(version) != 4:
        return Backend(f"flash-attn-4 {version} is installed; this impl needs 4.x ({FA4_INSTALL})", version)
    if not cuda_available():
        return Backend(_no_cuda("flash-attn-4", version, "Hopper (sm_90) / Blackwell (sm_100)"), version)
    # Importing flash_attn.cute runs flash_attn/__init__.py first: flash-attn 2's, when it
    # is installed too, which loads flash-attn 2's CUDA extension.
    both = "" if dist_version(FA2_DIST) is None else (
        " (importing flash_attn.cute runs the installed flash-attn 2's flash_attn/__init__.py first)")
    cute, why = _import(import_module, "flash-attn-4", version, "flash_attn.cute")
    if cute is None:
        return Backend(why + both, version)
    iface, why = _import(import_module, "flash-attn-4", version, "flash_attn.cute.interface")
    if iface is None:
        return Backend(why, version)
    fwd, bwd = getattr(cute, "flash_attn_func", None), getattr(iface, "_flash_attn_bwd", None)
    for name, fn, params in (("flash_attn.cute.flash_attn_func", fwd, _FA4_FWD_PARAMS),
                             ("flash_attn.cute.interface._flash_attn_bwd", bwd, _FA4_BWD_PARAMS)):
        if not callable(fn):
            return Backend(f"flash-attn-4 {version} has no {name} (written against {FA4_TESTED})", version)
        missing = _lacks(fn, params)
        if missing:
            return Backend(f"flash-attn-4 {version}: {name} has no parameter {', '.join(missing)} "
                           f"(written against {FA4_TESTED})", version)
    return Backend(None, version, fwd=fwd, bwd=bwd)


# One probe per process, made when the op registers; tests swap entries for stand-ins.
_PROBED: dict[str, Backend] = {}


def fa2() -> Backend:
    if "fa2" not in _PROBED:
        _PROBED["fa2"] = probe_fa2()
    return _PROBED["fa2"]


def fa4() -> Backend:
    if "fa4" not in _PROBED:
        _PROBED["fa4"] = probe_fa4()
    return _PROBED["fa4"]


def _entry(backend: Backend, name: str) -> Callable[..., Any]:
    fn = getattr(backend, name)
    if fn is None:
        raise KernelUnavailableError(backend.reason or f"no {name} entry point")
    return fn


# ---------------------------------------------------------------------------------------
# Layout and argument adapters (kernel-agnostic: the tests run them with CPU stand-ins)
# ---------------------------------------------------------------------------------------
def to_flash_layout(t: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> flash-attn's (B, L, H, D), as a view. Copies only a tensor whose head
    dim is strided: both kernels read rows of D contiguous elements."""
    t = t.transpose(1, 2)
    return t if t.stride(-1) == 1 else t.contiguous()


def _scale(q: torch.Tensor, scale: float | None) -> float:
    # flash-attn's default is the same 1/sqrt(D); passing it always keeps one definition.
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def run_fa2(flash_attn_func, q, k, v, dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """``attention(q, k, v, None, dropout_p, scale)`` through a function with flash-attn 2's
    ``flash_attn_func`` contract: q (B, Lq, H, D), k/v (B, Lk, H, D) -> out (B, Lq, H, D).

    q, k, v: (B, H, L, D), one dtype (cast to autocast's when it is on). Returns
    (B, H, Lq, D) in the compute dtype, a view of the kernel's (B, Lq, H, D) output."""
    dtype = compute_dtype(q)
    out = flash_attn_func(to_flash_layout(q.to(dtype)), to_flash_layout(k.to(dtype)), to_flash_layout(v.to(dtype)),
                          dropout_p=dropout_p, softmax_scale=_scale(q, scale), causal=False)
    return out.transpose(1, 2)


def run_fa4(fwd, q, k, v, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention(q, k, v, None, 0.0, scale)`` through ``fwd(q, k, v, scale) -> (out, lse)``
    in flash-attn's layout (``ascan_fa4::fwd``, or :func:`fa4_forward` over a stand-in).

    q: (B, H, Lq, D), k: (B, H, Lk, D), v: (B, H, Lk, Dv). Returns (out (B, H, Lq, Dv), a view of
    the kernel's (B, Lq, H, Dv); lse (B, H, Lq) float32, natural log)."""
    dtype = compute_dtype(q)
    out, lse = fwd(to_flash_layout(q.to(dtype)), to_flash_layout(k.to(dtype)), to_flash_layout(v.to(dtype)),
                   _scale(q, scale))
    return out.transpose(1, 2), lse


def fa4_forward(flash_attn_func, q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of a function with ``flash_attn.cute.flash_attn_func``'s contract: q
    (B, Lq, H, D), k (B, Lk, H, D), v (B, Lk, H, Dv) -> (out (B, Lq, H, Dv), lse (B, H, Lq) fp32)."""
    out, lse = flash_attn_func(q, k, v, softmax_scale=scale, causal=False, return_lse=True)
    return out, lse


def fa4_backward(flash_attn_bwd, dout, q, k, v, out, lse, scale: float):
    """(dq, dk, dv) from a function with ``flash_attn.cute.interface._flash_attn_bwd``'s
    contract, all in flash-attn's layout. The gradients are allocated here, contiguous, so
    their layout is the one the fake impl promises whatever the inputs' strides."""
    dq, dk, dv = (t.new_empty(t.shape) for t in (q, k, v))
    # by keyword: the probe checked these names, so a reordered signature cannot mix them up
    flash_attn_bwd(q=q, k=k, v=v, out=out, dout=dout, lse=lse, softmax_scale=scale, causal=False, dq=dq, dk=dk, dv=dv)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------
# flash-attn 4 as torch custom ops
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ascan_fa4::fwd", mutates_args=())
def fa4_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """flash-attn 4 forward, no mask, no dropout, not causal. q (B, Lq, H, D), k (B, Lk, H, D),
    v (B, Lk, H, Dv), fp16/bf16 CUDA tensors with unit head-dim stride. Returns (out
    (B, Lq, H, Dv) contiguous in q's dtype, lse (B, H, Lq) float32, natural log)."""
    return fa4_forward(_entry(fa4(), "fwd"), q, k, v, scale)


@fa4_fwd.register_fake
def _(q, k, v, scale):
    B, Lq, H, _ = q.shape
    return q.new_empty((B, Lq, H, v.shape[-1])), q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op("ascan_fa4::bwd", mutates_args=())
def fa4_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """flash-attn 4 backward: (dq, dk, dv), contiguous, shaped like (q, k, v), from dout
    (B, Lq, H, Dv) and the forward's inputs, out and lse."""
    return fa4_backward(_entry(fa4(), "bwd"), dout, q, k, v, out, lse, scale)


@fa4_bwd.register_fake
def _(dout, q, k, v, out, lse, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fa4_setup(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _fa4_grad(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.ascan_fa4.bwd(dout, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


torch.library.register_autograd("ascan_fa4::fwd", _fa4_grad, setup_context=_fa4_setup)


def _fa4_fwd_decomposition(q, k, v, scale):
    """``ascan_fa4::fwd`` in aten ops (for exported graphs): scores and softmax in at least
    float32, as the kernel keeps them; out (B, Lq, H, Dv) contiguous, lse float32."""
    acc = torch.promote_types(q.dtype, torch.float32)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    s = torch.matmul(qh.to(acc), kh.to(acc).transpose(-2, -1)) * scale
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    return torch.matmul(p.to(v.dtype), vh).transpose(1, 2).contiguous(), lse.float()


register_decomposition("ascan_fa4::fwd", _fa4_fwd_decomposition)


# ---------------------------------------------------------------------------------------
# What each takes, per call (devices, dtypes and compute capability are the caps')
# ---------------------------------------------------------------------------------------
def fa2_head_dim_reason(D: int, Dv: int) -> str | None:
    if Dv != D:
        return f"v head dim {Dv} != q head dim {D} (flash-attn 2 needs them equal)"
    if D > FA2_MAX_HEAD_DIM or D % HEAD_DIM_MULTIPLE:
        return (f"head dim {D} not supported (flash-attn 2 takes multiples of {HEAD_DIM_MULTIPLE} up to "
                f"{FA2_MAX_HEAD_DIM}; it would pad others with a copy)")
    return None


def fa4_head_dim_reason(D: int, Dv: int, cc: tuple[int, int] | None) -> str | None:
    """What flash-attn-4's forward and backward validate, per architecture (``cc`` None:
    unknown, judged as sm_90)."""
    if D % HEAD_DIM_MULTIPLE or Dv % HEAD_DIM_MULTIPLE:
        return f"head dims (q {D}, v {Dv}) not supported (flash-attn-4 takes multiples of {HEAD_DIM_MULTIPLE})"
    if cc is not None and cc[0] in (10, 11):
        if (8 <= D <= 128 and 8 <= Dv <= 128) or (D, Dv) in ((192, 128), (256, 256)):
            return None
        return (f"head dims (q {D}, v {Dv}) not supported on sm_{cc[0]}{cc[1]} (flash-attn-4 takes 8..128 each, "
                "or (192, 128), or (256, 256))")
    if 8 <= D <= 256 and 8 <= Dv <= 256:
        return None
    return f"head dims (q {D}, v {Dv}) not supported (flash-attn-4 takes 8..256 each on sm_90)"


def _common_reason(q, k, attn_mask) -> str | None:
    if attn_mask is not None:
        return NO_MASK
    if k.shape[2] == 0:
        return "empty input"
    return None


def _fa2_supports(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    reason = _common_reason(q, k, attn_mask) or fa2_head_dim_reason(q.shape[-1], v.shape[-1])
    if reason is None and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        # flash-attn 2's backward refuses these on GPUs other than A100/H100 (smaller shared memory)
        D, cc = q.shape[-1], device_capability(q.device)
        if D > 192 and (D <= 224 or dropout_p > 0.0) and cc not in (None, (8, 0), (9, 0)):
            reason = (f"head dim {D} backward{' with dropout' if dropout_p > 0.0 else ''} needs sm_80 or sm_90 "
                      "in flash-attn 2")
    return reason


def _fa4_supports(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    if dropout_p > 0.0:
        return "dropout not supported by flash-attn-4"
    return _common_reason(q, k, attn_mask) or fa4_head_dim_reason(q.shape[-1], v.shape[-1],
                                                                  device_capability(q.device))


# ---------------------------------------------------------------------------------------
# Registry glue
# ---------------------------------------------------------------------------------------
def _fa2_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """The registry's entry: same arguments as ``attention_reference`` (attn_mask None)."""
    return run_fa2(_entry(fa2(), "fwd"), q, k, v, dropout_p, scale)


def _fa4_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """The registry's entry: same arguments as ``attention_reference`` (no mask, no dropout)."""
    return run_fa4(torch.ops.ascan_fa4.fwd, q, k, v, scale)[0]


def fa2_impl() -> Impl:
    return Impl("flash_attn", _fa2_attention, caps=FA2_CAPS, supports=_fa2_supports, available=lambda: fa2().reason,
                autograd=True, doc="flash-attn 2 (flash_attn.flash_attn_func, sm_80+; head dims multiples of 8 up to 256; "
                    "no tensor mask)")


def fa4_impl() -> Impl:
    return Impl("flash_attn4", _fa4_attention, caps=FA4_CAPS, supports=_fa4_supports,
                available=lambda: fa4().reason, autograd=True,
                doc="flash-attn 4 (CuTe DSL flash_attn.cute.flash_attn_func as custom ops ascan_fa4::fwd/bwd, "
                    "sm_90 to sm_110; no tensor mask, no dropout)")


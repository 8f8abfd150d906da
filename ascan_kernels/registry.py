"""The kernel registry: ops, their implementations, and per-call dispatch.

An :class:`Op` owns one eager PyTorch reference (the source of truth used by the
fallback, the tests and the benchmarks) and any number of fused :class:`Impl`\\ s.
Each call walks the impls from the highest priority down and runs the first one
whose checks pass; the eager reference is always last and always accepts.

Nothing falls back silently:

* ``available(op)`` lists every impl with ``"ok"`` or the reason it cannot run here;
* ``trace()`` records, for each call, the impl that ran and every impl that was
  skipped with its reason;
* ``ASCAN_KERNELS_LOG=1`` logs the first fallback per (op, reason) with ``logging``.

Users force or forbid impls with ``use(attention="eager")`` /
``use(attention="!sdpa")`` or the ``ASCAN_KERNELS`` environment variable
(``ASCAN_KERNELS="attention=eager,conv_bn_gelu=!cpu"``). Forcing an impl that
cannot run the given inputs raises :class:`KernelUnavailableError`; it never falls
back.

With autotuning on (``ASCAN_AUTOTUNE=1`` or ``with autotune():``, see
:mod:`ascan_kernels.autotuning`) an inference call's impl is chosen by timing every impl that
can run it instead of by priority and ``prefer`` rules; the trace shows the timings.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import torch

from . import autotuning as _autotune
from .capabilities import (EAGER_PRIORITY, PRIORITY, Capabilities, call_info, capability_reason, device_capability,
                           device_reason)

__all__ = [
    "Capabilities",
    "Impl",
    "Op",
    "KernelUnavailableError",
    "TraceRecord",
    "Trace",
    "register_op",
    "unavailable_impl",
    "get_op",
    "list_ops",
    "available",
    "trace",
    "use",
    "register_decomposition",
    "decompositions",
]

logger = logging.getLogger("ascan_kernels")

EAGER = "eager"

# A check returns None when it accepts and a human-readable reason when it does not.
Check = Callable[..., "str | None"]


class KernelUnavailableError(RuntimeError):
    """A forced impl cannot run the given inputs, or an unknown impl was named."""


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation of an op.

    ``fn`` takes the op's arguments exactly as the op's public function receives
    them. ``caps`` declares, as data, what it takes (devices, compute dtypes, CUDA compute
    capability, empty inputs: :class:`~ascan_kernels.capabilities.Capabilities`); the
    registry checks that first. ``available`` answers once per process whether the
    backend exists here (installed, built, device present); ``supports`` answers per
    call what data cannot say (shapes, geometry, strides); ``prefer`` answers whether
    automatic selection should pick it for these inputs (e.g. it was measured slower than
    the next impl at such shapes) - a forced impl skips that last check. Each returns
    ``None`` for yes and a reason string for no. ``autograd`` says whether ``fn`` is
    differentiable; impls without it are skipped whenever an input requires grad.
    ``priority`` defaults to the backend's entry in ``capabilities.PRIORITY``.
    """

    name: str
    fn: Callable[..., Any]
    priority: int | None = None
    supports: Check | None = None
    available: Callable[[], "str | None"] | None = None
    autograd: bool = False
    prefer: Check | None = None
    doc: str = ""
    caps: Capabilities | None = None

    def __post_init__(self) -> None:
        if self.priority is None:
            if self.name not in PRIORITY:
                raise ValueError(f"impl {self.name!r}: no priority given and none in capabilities.PRIORITY "
                                 f"({', '.join(PRIORITY)})")
            object.__setattr__(self, "priority", PRIORITY[self.name])


def unavailable_impl(name: str, reason: str, caps: Capabilities | None = None) -> Impl:
    """An impl that cannot run in this process, kept so that ``available()``, traces and
    errors still list it with ``reason`` (e.g. Triton on a machine that cannot run it)."""
    def fn(*args, **kwargs):
        raise KernelUnavailableError(reason)
    return Impl(name, fn, available=lambda: reason, doc=reason, caps=caps)


class Op:
    """A named op with an eager reference and prioritised fused implementations."""

    def __init__(self, name: str, reference: Callable[..., Any], doc: str = "",
                 validate: Callable[..., None] | None = None, autocast: bool = False):
        self.name = name
        self.doc = doc
        # Whether autocast casts this op's inputs (convs, GEMMs, attention) or leaves
        # them in their dtype (norms): decides the compute dtype traces report.
        self.autocast = autocast
        self.reference = reference
        # Raises on bad input. It may look only at metadata (shapes, dtypes, devices,
        # non-tensor args), so one check per call signature is enough.
        self.validate = validate
        self._impls: list[Impl] = [
            Impl(EAGER, reference, priority=EAGER_PRIORITY, autograd=True, doc="eager PyTorch reference")
        ]
        self._availability: dict[str, str | None] = {}

    # -- registration -----------------------------------------------------------------
    def register(self, impl: Impl) -> Impl:
        if impl.name == EAGER or any(i.name == impl.name for i in self._impls):
            raise ValueError(f"op {self.name!r} already has an impl named {impl.name!r}")
        self._impls.append(impl)
        self._impls.sort(key=lambda i: -i.priority)
        self._availability.pop(impl.name, None)
        # Probe now, outside any user context: torch.compile cannot trace a probe later.
        self.availability(impl)
        _invalidate_cache()
        return impl

    @property
    def impls(self) -> list[Impl]:
        """Impls from the highest priority down; eager is last."""
        return list(self._impls)

    def impl(self, name: str) -> Impl:
        for i in self._impls:
            if i.name == name:
                return i
        raise KernelUnavailableError(
            f"{self.name}: no impl named {name!r}; impls: {[i.name for i in self._impls]}"
        )

    # -- checks -----------------------------------------------------------------------
    def availability(self, impl: Impl) -> str | None:
        """Why ``impl`` cannot run in this process at all (cached), or None."""
        if impl.name not in self._availability:
            reason = None
            if impl.available is not None:
                try:
                    reason = impl.available()
                except Exception as e:  # an availability probe must never break dispatch
                    reason = f"availability check failed: {type(e).__name__}: {e}"
            self._availability[impl.name] = reason
        return self._availability[impl.name]

    def why_not(self, impl: Impl, args: tuple, kwargs: dict, needs_grad: bool) -> str | None:
        """Why ``impl`` cannot run these inputs, or None if it can."""
        return self._why_not(impl, args, kwargs, needs_grad)[0]

    def _why_not(self, impl: Impl, args: tuple, kwargs: dict, needs_grad: bool) -> tuple[str | None, bool]:
        """(reason or None, whether the reason is worth logging).

        The order: the device (an impl for another device is never asked anything else),
        whether the backend exists here, grad, the declared capabilities, then the impl's
        own ``supports``."""
        call = call_info(_first_tensor(args, kwargs), self.autocast)
        reason = device_reason(impl.caps, call)
        if reason is not None:
            return reason, False
        reason = self.availability(impl)
        if reason is not None:
            return reason, True
        if needs_grad and not impl.autograd:
            return "inputs require grad and this impl has no backward", False
        if impl.caps is not None:
            reason = capability_reason(impl.caps, call, device_capability)
            if reason is not None:
                return reason, True
        if impl.supports is not None:
            reason = impl.supports(*args, **kwargs)
            return reason, reason is not None
        return None, False

    # -- dispatch ---------------------------------------------------------------------
    def select(self, args: tuple, kwargs: dict) -> tuple[Impl, tuple[tuple[str, str], ...]]:
        """Pick the impl for these inputs. Returns (impl, ((skipped_name, reason), ...))."""
        impl, skipped, _forced, _quiet, _decision = self._select(args, kwargs)
        return impl, skipped

    def _select(self, args: tuple, kwargs: dict) -> Selection:
        """(impl, skipped (name, reason) pairs, forced?, names of skips not worth logging,
        the autotune decision or None)."""
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in _flat_tensors(args, kwargs)
        )
        forced, forbidden = _override_for(self.name)
        if forced is not None:
            impl = self.impl(forced)
            reason = self.why_not(impl, args, kwargs, needs_grad)
            if reason is not None:
                raise KernelUnavailableError(
                    f"{self.name}: impl {forced!r} was forced but cannot run these inputs: {reason}\n"
                    + self.explain(args, kwargs))
            return impl, (), True, frozenset(), None
        if not needs_grad and _autotune.enabled():
            tuned = self._select_autotuned(args, kwargs, forbidden)
            if tuned is not None:
                return tuned
        skipped: list[tuple[str, str]] = []
        quiet: set[str] = set()
        for impl in self._impls:
            if impl.name in forbidden:
                skipped.append((impl.name, "forbidden by use()/ASCAN_KERNELS"))
                continue
            reason, loud = (None, False) if impl.name == EAGER else self._why_not(impl, args, kwargs, needs_grad)
            if reason is None and impl.prefer is not None:
                why = impl.prefer(*args, **kwargs)
                reason, loud = (None, False) if why is None else (f"not preferred: {why}", False)
            if reason is None:
                return impl, tuple(skipped), False, frozenset(quiet), None
            skipped.append((impl.name, reason))
            if not loud:
                quiet.add(impl.name)
        raise AssertionError("unreachable: eager always accepts")  # pragma: no cover

    def _select_autotuned(self, args: tuple, kwargs: dict, forbidden: frozenset[str]) -> Selection | None:
        """The fastest impl by measurement among those that can run these inputs (``prefer``
        rules are what autotuning replaces, so they are not asked). None where autotune has
        nothing to decide (one candidate) or must not decide (see ``autotune.choose``)."""
        first = _first_tensor(args, kwargs)
        if first is None:
            return None
        skipped: list[tuple[str, str]] = []
        quiet: set[str] = set()
        candidates: list[Impl] = []
        for impl in self._impls:
            if impl.name in forbidden:
                skipped.append((impl.name, "forbidden by use()/ASCAN_KERNELS"))
                quiet.add(impl.name)
                continue
            reason = None if impl.name == EAGER else self._why_not(impl, args, kwargs, False)[0]
            if reason is None and impl.caps is not None:
                reason = impl.caps.untimed_reason(first.device.type)
            if reason is None:
                candidates.append(impl)
            else:
                skipped.append((impl.name, reason))
                quiet.add(impl.name)
        if len(candidates) < 2:
            return None
        signature = describe_inputs(args, kwargs) + _autocast_note(first.device.type)
        decision = _autotune.choose(self.name, candidates, args, kwargs, first.device, signature)
        if decision is None:
            return None
        for impl in candidates:
            if impl.name != decision.impl:
                why = decision.errors.get(impl.name)
                skipped.append((impl.name, f"failed while autotuned: {why}" if why else "slower when autotuned"))
                quiet.add(impl.name)
        return self.impl(decision.impl), tuple(skipped), False, frozenset(quiet), decision

    def explain(self, args: tuple, kwargs: dict) -> str:
        """The inputs and every impl's verdict on them, for error messages."""
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in _flat_tensors(args, kwargs))
        try:  # name the arguments after the reference's parameters, for the description only
            named: dict = dict(inspect.signature(self.reference).bind(*args, **kwargs).arguments)
            shown = describe_inputs((), named)
        except (TypeError, ValueError):
            shown = describe_inputs(args, kwargs)
        lines = [f"  inputs: {shown}" + ("; requires grad" if needs_grad else "")]
        for impl in self._impls:
            reason = None if impl.name == EAGER else self.why_not(impl, args, kwargs, needs_grad)
            lines.append(f"  {impl.name}: {reason or 'can run these inputs'}")
        return "\n".join(lines)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _onnx_exporting():
            # ONNX has no counterpart of our fused impls' custom ops, and the runtimes that
            # read ONNX fuse conv+bias+act, GEMM+GELU and LayerNorm themselves: export the
            # reference, whose aten ops all have standard ONNX translations.
            if self.validate is not None:
                self.validate(*args, **kwargs)
            return self.reference(*args, **kwargs)
        if torch.compiler.is_compiling():
            # Under torch.compile the choice is made once while tracing; recording or
            # logging here would be a side effect Dynamo has to replay.
            if self.validate is not None:
                self.validate(*args, **kwargs)
            impl = self._select(args, kwargs)[0]
            return impl.fn(*args, **kwargs)
        # Validation and selection depend only on the call's signature: memoise both.
        key = _cache_key(self.name, args, kwargs)
        hit = _SELECT_CACHE.get(key) if key is not None else None
        if hit is None:
            if self.validate is not None:
                self.validate(*args, **kwargs)
            hit = self._select(args, kwargs)
            if key is not None:
                if len(_SELECT_CACHE) >= _SELECT_CACHE_MAX:
                    _SELECT_CACHE.clear()
                _SELECT_CACHE[key] = hit
        impl, skipped, forced, quiet, tuned = hit
        if _ACTIVE_TRACES:
            rec = TraceRecord.of(self.name, impl.name, skipped, args, kwargs, forced=forced,
                                 tuned=tuned.note() if tuned is not None else None)
            for t in _ACTIVE_TRACES:
                t._add(rec, args, kwargs)
        if skipped and _LOG_FALLBACKS:
            _log_fallback(self.name, impl.name, tuple(s for s in skipped if s[0] not in quiet))
        return impl.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, impls={[i.name for i in self._impls]})"


def _onnx_exporting() -> bool:
    """Whether ``torch.onnx.export`` (either exporter) is tracing this call. Read from
    ``sys.modules`` so that a process that never exports never imports ``torch.onnx``."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


# ---------------------------------------------------------------------------------------
# Global registry
# ---------------------------------------------------------------------------------------
_OPS: dict[str, Op] = {}


def register_op(name: str, reference: Callable[..., Any], doc: str = "",
                validate: Callable[..., None] | None = None, autocast: bool = False) -> Op:
    """Create and register an op whose eager reference is ``reference``.

    ``validate`` (same arguments as the reference) raises on bad input; it must depend
    only on metadata, since its verdict is memoised per call signature.
    """
    if name in _OPS:
        raise ValueError(f"op {name!r} is already registered")
    op = Op(name, reference, doc, validate, autocast)
    _OPS[name] = op
    return op


def get_op(name: str) -> Op:
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; ops: {sorted(_OPS)}") from None


def list_ops() -> list[str]:
    return sorted(_OPS)


def available(op: str | None = None) -> dict[str, Any]:
    """Every impl of ``op`` with ``"ok"`` or the reason it cannot run in this process.

    Per-call checks (dtype, shape, grad) are not evaluated here: ``trace()`` shows those.
    With ``op=None`` returns ``{op_name: {impl_name: status}}`` for all ops.
    """
    if op is None:
        return {name: available(name) for name in list_ops()}
    o = get_op(op)
    return {i.name: (o.availability(i) or "ok") for i in o.impls}


# ---------------------------------------------------------------------------------------
# Decompositions: each custom op an impl calls, in terms of standard aten ops
# ---------------------------------------------------------------------------------------
_DECOMPOSITIONS: dict[str, Callable[..., Any]] = {}


def register_decomposition(qualname: str, fn: Callable[..., Any]) -> None:
    """Declare ``fn`` (same arguments and outputs, standard torch ops only) as the
    decomposition of the custom op ``qualname`` (``"ascan::conv2d_bias_act"``). Ops whose
    library is not loaded here (the CUDA extension on a CPU build) are skipped later."""
    if qualname in _DECOMPOSITIONS:
        raise ValueError(f"custom op {qualname!r} already has a decomposition")
    _DECOMPOSITIONS[qualname] = fn


def decompositions() -> dict[Any, Callable[..., Any]]:
    """``{OpOverload: fn}`` for every loaded custom op of ours that has a decomposition, the
    table ``ExportedProgram.run_decompositions`` takes to replace them with aten ops."""
    table: dict[Any, Callable[..., Any]] = {}
    for qualname, fn in _DECOMPOSITIONS.items():
        ns, name = qualname.split("::", 1)
        try:
            table[getattr(getattr(torch.ops, ns), name).default] = fn
        except (AttributeError, RuntimeError):  # not in this build (e.g. no CUDA kernels)
            continue
    return table


# Every custom op of ours is in one of these; an exported graph holding any of them needs
# ``import ascan_kernels`` to load (or :func:`decompositions` to become portable).
CUSTOM_OP_NAMESPACES = ("ascan", "ascan_C", "ascan_triton", "ascan_fa4")


# ---------------------------------------------------------------------------------------
# Selection cache: selection depends only on metadata, so memoise it per signature.
# ---------------------------------------------------------------------------------------
# (impl, skipped (name, reason) pairs, forced?, skips not worth logging, autotune decision)
Selection = tuple[Impl, tuple[tuple[str, str], ...], bool, frozenset[str], "_autotune.Decision | None"]
_SELECT_CACHE: dict[tuple, Selection] = {}
_SELECT_CACHE_MAX = 4096


def _invalidate_cache() -> None:
    _SELECT_CACHE.clear()


def _flat_tensors(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (tuple, list)):
            for b in a:
                if isinstance(b, torch.Tensor):
                    yield b


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for t in _flat_tensors(args, kwargs):
        return t
    return None


def describe_inputs(args: tuple, kwargs: dict) -> str:
    """``"(2, 3, 8, 8) float32 cpu, (4, 3, 3, 3) float32 cpu, stride=(1, 1), ..."``."""
    def one(a: Any) -> str:
        if isinstance(a, torch.Tensor):
            layout = "" if a.is_contiguous() else (
                " channels_last" if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last)
                else f" strides {a.stride()}")
            return f"{tuple(a.shape)} {_fmt_dtype(a.dtype)} {a.device}{layout}"
        if type(a) in (tuple, list) and any(isinstance(b, torch.Tensor) for b in a):
            return "[" + ", ".join(one(b) for b in a) + "]"
        return repr(a)
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _describe(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return (a.shape, a.stride(), a.dtype, a.device, a.requires_grad)
    if type(a) in (tuple, list):
        return tuple(map(_describe, a))
    return a


def _autocast_state() -> tuple:
    # Autocast changes the dtype impls compute in, hence which impls accept.
    return tuple(torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None for d in ("cpu", "cuda"))


def _autocast_note(device_type: str) -> str:
    """``"; autocast bfloat16"`` when autocast is on for ``device_type``: part of an
    autotune signature, since autocast changes the dtype every impl computes in."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta)
        return ""
    return f"; autocast {_fmt_dtype(torch.get_autocast_dtype(device_type))}" if on else ""


def _cache_key(name: str, args: tuple, kwargs: dict) -> tuple | None:
    key = (
        name,
        torch.is_grad_enabled(),
        _OVERRIDE_VERSION[0],
        _autotune.state_key(),
        _autocast_state(),
        tuple(map(_describe, args)),
        tuple((k, _describe(v)) for k, v in kwargs.items()) if kwargs else (),
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


# ---------------------------------------------------------------------------------------
# Overrides: use() and ASCAN_KERNELS
# ---------------------------------------------------------------------------------------
ALL_OPS = "*"
# Stack of {op_or_*: (forced_or_None, frozenset(forbidden))}; index 0 comes from the env.
_OVERRIDES: list[dict[str, tuple[str | None, frozenset[str]]]] = []
_OVERRIDE_VERSION = [0]


def _parse_spec(op: str, spec: str | Sequence[str]) -> tuple[str | None, frozenset[str]]:
    parts = spec.split("|") if isinstance(spec, str) else list(spec)
    forced, forbidden = None, set()
    for p in (p.strip() for p in parts):
        if not p or p == "auto":
            continue
        if p.startswith("!"):
            forbidden.add(p[1:])
        elif forced is None:
            forced = p
        else:
            raise ValueError(f"{op}: cannot force two impls ({forced!r} and {p!r})")
    if EAGER in forbidden:
        raise ValueError(f"{op}: the eager reference cannot be forbidden (it is the fallback)")
    return forced, frozenset(forbidden)


def _validate_names(op: str, forced: str | None, forbidden: frozenset[str]) -> None:
    valid = {i.name for i in get_op(op).impls}
    for impl in ([forced] if forced else []) + sorted(forbidden):
        if impl not in valid:
            raise KernelUnavailableError(f"{op}: no impl named {impl!r}; impls: {sorted(valid)}")


def parse_env(value: str) -> dict[str, tuple[str | None, frozenset[str]]]:
    """Parse ``ASCAN_KERNELS="attention=eager,conv_bn_gelu=!cpu|!triton,*=eager"``.

    A bare impl spec applies to every op, as ``use("eager")`` does: ``ASCAN_KERNELS=eager``
    is ``*=eager``, ``ASCAN_KERNELS=!triton`` forbids Triton everywhere."""
    impl_names = {i.name for o in _OPS.values() for i in o.impls} | {EAGER}
    out: dict[str, tuple[str | None, frozenset[str]]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            names = [p.strip().lstrip("!") for p in item.split("|")]
            if not all(n in impl_names for n in names):
                raise ValueError(f"ASCAN_KERNELS: expected op=impl, or an impl for every op "
                                 f"({', '.join(sorted(impl_names))}), got {item!r}")
            item = f"{ALL_OPS}={item}"
        op, spec = (s.strip() for s in item.split("=", 1))
        out[op] = _parse_spec(op, spec)
    return out


def _override_for(op: str) -> tuple[str | None, frozenset[str]]:
    """(forced impl or None, forbidden impls) for ``op``; later layers win, and an
    op's own entry wins over ``*`` within a layer."""
    names = {i.name for i in get_op(op).impls}
    forced: str | None = None
    forbidden: set[str] = set()
    for layer in _OVERRIDES:
        for key in (ALL_OPS, op):
            if key not in layer:
                continue
            f, fb = layer[key]
            if key == ALL_OPS and f not in names:
                f = None  # "*=cpu" forces cpu only on ops that have a cpu impl
            if f is not None:
                forced, forbidden = f, set()
            forbidden |= fb
            if forced in forbidden:
                forced = None
    return forced, frozenset(forbidden)


@contextlib.contextmanager
def use(_all: str | None = None, **ops: str | Sequence[str]) -> Iterator[None]:
    """Force or forbid impls inside a ``with`` block.

    ``use(conv_bn_gelu="eager", attention="sdpa")`` forces impls;
    ``use(attention="!sdpa")`` or ``use(attention=["!triton", "!sdpa"])`` forbids;
    ``use("eager")`` forces the eager reference for every op.
    Forcing an impl that cannot run the inputs raises KernelUnavailableError.
    """
    layer: dict[str, tuple[str | None, frozenset[str]]] = {}
    if _all is not None:
        layer[ALL_OPS] = _parse_spec(ALL_OPS, _all)
    for op, spec in ops.items():
        get_op(op)  # unknown op names raise here, not silently later
        layer[op] = _parse_spec(op, spec)
        _validate_names(op, *layer[op])
    _OVERRIDES.append(layer)
    _OVERRIDE_VERSION[0] += 1
    try:
        yield
    finally:
        _OVERRIDES.remove(layer)
        _OVERRIDE_VERSION[0] += 1


_ENV_LAYER: dict = {}


def _load_env_overrides() -> None:
    value = os.environ.get("ASCAN_KERNELS", "")
    if value:
        _ENV_LAYER.update(parse_env(value))
        _OVERRIDES.insert(0, _ENV_LAYER)
        _OVERRIDE_VERSION[0] += 1


# ---------------------------------------------------------------------------------------
# Tracing and logging
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TraceRecord:
    op: str
    impl: str
    skipped: tuple[tuple[str, str], ...]
    shapes: tuple[tuple[int, ...], ...]
    # The dtype the op computes in: autocast's for the ops autocast casts (convs, GEMMs,
    # attention), else the first input's.
    dtype: torch.dtype | None
    device: str | None
    grad: bool
    # Every argument, tensors as (shape, dtype) and other values as given (None kept),
    # for tools that need the full call (e.g. the roofline report).
    args: tuple = ()
    forced: bool = False
    input_dtype: torch.dtype | None = None
    # The autotune decision's timings (``Decision.note()``) when autotuning chose the impl.
    tuned: str | None = None

    @classmethod
    def of(cls, op: str, impl: str, skipped, args: tuple, kwargs: dict, forced: bool = False,
           tuned: str | None = None) -> "TraceRecord":
        tensors = list(_flat_tensors(args, kwargs))
        first = tensors[0] if tensors else None
        return cls(
            op=op,
            impl=impl,
            skipped=skipped,
            shapes=tuple(tuple(t.shape) for t in tensors[:2]),
            dtype=_compute_dtype(op, first),
            device=str(first.device) if first is not None else None,
            grad=torch.is_grad_enabled() and any(t.requires_grad for t in tensors),
            args=tuple(_arg_summary(a) for a in args),
            forced=forced,
            input_dtype=first.dtype if first is not None else None,
            tuned=tuned,
        )

    @property
    def why(self) -> str:
        if self.forced:
            return "forced by use()/ASCAN_KERNELS"
        if self.tuned:
            return self.tuned
        if not self.skipped:
            return "highest-priority impl that accepts"
        return "; ".join(f"{n}: {r}" for n, r in self.skipped)


def _compute_dtype(op: str, t: torch.Tensor | None) -> torch.dtype | None:
    o = _OPS.get(op)
    return call_info(t, o is not None and o.autocast).compute_dtype


class Trace:
    """Records of the op calls made inside a ``with trace()`` block.

    With ``keep_inputs``, :attr:`inputs` also holds a copy of the arguments of the first call
    per distinct ``(op, args)`` summary (``TraceRecord.op``/``.args``), keyed by that pair, so a
    tool can replay each op at a model's real shapes (``bench/gpu_session.py`` times every impl
    on them). The copies keep their strides and device; they cost memory, so it is off by default.
    """

    def __init__(self, keep_inputs: bool = False) -> None:
        self.records: list[TraceRecord] = []
        self.keep_inputs = keep_inputs
        self.inputs: dict[tuple[str, tuple], tuple[tuple, dict]] = {}

    def _add(self, rec: TraceRecord, args: tuple, kwargs: dict) -> None:
        self.records.append(rec)
        if not self.keep_inputs:
            return
        key = (rec.op, rec.args)
        try:
            if key in self.inputs:
                return
        except TypeError:  # an unhashable argument: such a call is not kept
            return
        # A copy: the model may later write into an activation it passed in.
        self.inputs[key] = (_copy_args(args), {k: _copy_args((v,))[0] for k, v in kwargs.items()})

    def __len__(self) -> int:
        return len(self.records)

    def impls(self, op: str | None = None) -> list[str]:
        return [r.impl for r in self.records if op is None or r.op == op]

    def summary(self) -> dict[tuple[str, str, str], int]:
        """Count of calls per (op, impl, why)."""
        out: dict[tuple[str, str, str], int] = {}
        for r in self.records:
            k = (r.op, r.impl, r.why)
            out[k] = out.get(k, 0) + 1
        return out

    def table(self, per_call: bool = False) -> str:
        """A text table: one row per distinct (op, impl, shapes, dtype, why), with a count.

        The dtype column is the compute dtype (autocast's where autocast casts the op).
        Each distinct skip reason is written once, under the table, and rows refer to it
        by number: ``cuda [1], triton [2]``. ``per_call=True`` gives one row per call, in
        call order.
        """
        notes: dict[str, int] = {}

        def why(r: TraceRecord) -> str:
            if r.forced or r.tuned or not r.skipped:
                return r.why
            refs = []
            for name, reason in r.skipped:
                n = notes.setdefault(reason, len(notes) + 1)
                refs.append(f"{name} [{n}]")
            return ", ".join(refs)

        rows: list[tuple[str, ...]] = []
        if per_call:
            for n, r in enumerate(self.records):
                rows.append((str(n), r.op, r.impl, _fmt_shapes(r.shapes), _fmt_dtype(r.dtype), why(r)))
            header = ("#", "op", "impl", "shapes", "dtype", "impls skipped [reason]")
        else:
            counts: dict[tuple, int] = {}
            for r in self.records:
                k = (r.op, r.impl, _fmt_shapes(r.shapes), _fmt_dtype(r.dtype), why(r))
                counts[k] = counts.get(k, 0) + 1
            for k, c in counts.items():
                rows.append((k[0], k[1], str(c), *k[2:]))
            header = ("op", "impl", "calls", "shapes", "dtype", "impls skipped [reason]")
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        widths[-1] = len(header[-1])  # the reason column is free-form; don't pad it
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]
        if notes:
            out.append("")
            out += [f"[{n}] {reason}" for reason, n in notes.items()]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _arg_summary(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), a.dtype)
    if isinstance(a, (tuple, list)):
        return tuple(_arg_summary(x) for x in a)
    return a


def _copy_args(args: tuple) -> tuple:
    def one(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return a.detach().clone()  # preserve_format: same strides for dense tensors
        if type(a) in (tuple, list):
            return type(a)(one(b) for b in a)
        return a
    return tuple(one(a) for a in args)


def _fmt_shapes(shapes) -> str:
    return " ".join("x".join(map(str, s)) for s in shapes)


def _fmt_dtype(d) -> str:
    return str(d).replace("torch.", "") if d is not None else "-"


_ACTIVE_TRACES: list[Trace] = []


@contextlib.contextmanager
def trace(keep_inputs: bool = False) -> Iterator[Trace]:
    """Record which impl ran for each op call (and why) inside the block; with
    ``keep_inputs``, also a copy of each distinct call's arguments (:class:`Trace`).

    Calls made inside ``torch.compile``'d code are selected at compile time and are
    not recorded per call.
    """
    t = Trace(keep_inputs)
    _ACTIVE_TRACES.append(t)
    try:
        yield t
    finally:
        _ACTIVE_TRACES.remove(t)


_LOG_FALLBACKS = os.environ.get("ASCAN_KERNELS_LOG", "") not in ("", "0")
_LOGGED: set[tuple[str, str, str]] = set()


def set_fallback_logging(enabled: bool) -> None:
    """Turn fallback logging on or off (the ``ASCAN_KERNELS_LOG`` env var sets the default)."""
    global _LOG_FALLBACKS
    _LOG_FALLBACKS = bool(enabled)


def _log_fallback(op: str, impl: str, skipped: tuple[tuple[str, str], ...]) -> None:
    for name, reason in skipped:
        key = (op, name, reason)
        if key not in _LOGGED:
            _LOGGED.add(key)
            logger.warning("ascan_kernels: %s ran %r instead of %r: %s", op, impl, name, reason)


def validate_env_overrides() -> None:
    """Read ``ASCAN_KERNELS`` and check it names real ops and impls (called once all ops
    are registered, so that a bare impl name can be checked against every op's impls)."""
    if not any(layer is _ENV_LAYER for layer in _OVERRIDES):
        _load_env_overrides()
    value = os.environ.get("ASCAN_KERNELS", "")
    for op, (forced, forbidden) in parse_env(value).items():
        if op == ALL_OPS:
            continue
        if op not in _OPS:
            raise ValueError(f"ASCAN_KERNELS names unknown op {op!r}; ops: {list_ops()}")
        _validate_names(op, forced, forbidden)

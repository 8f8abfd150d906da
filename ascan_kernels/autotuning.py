"""Autotuned dispatch: choose an op's impl by timing every eligible one, and remember it.

The built-in selection walks impls by priority and asks each impl's ``prefer`` rule, rules
that encode measurements from one machine. With autotuning on (``ASCAN_AUTOTUNE=1`` or
``with ascan_kernels.autotune():``) the first inference call per (op, input signature,
device) instead times every impl that can run it (eager included), interleaved round by
round, and the fastest median wins. The decision is kept for the process and in a JSON cache
on disk, so a later process (or ``torch.compile``) reuses it without timing again.

The cache file (``ASCAN_AUTOTUNE_CACHE``, default ``$XDG_CACHE_HOME/ascan_kernels/
autotune.json``) holds one section per environment: the device (CPU model and ATen ISA level,
or the GPU name and compute capability), the thread count and the torch and ascan_kernels
versions, so a decision is never reused where it was not measured. Writers lock, merge what is
on disk with what they add, and replace the file atomically: several processes may tune at
once. A corrupt file is ignored with a warning and replaced on the next write.

What is not tuned, and keeps the built-in rules: calls whose inputs require grad (a forward
timing says nothing about the backward), forced impls (``use()``), calls with one eligible
impl, and cache misses while ``torch.compile`` traces (timing there would run kernels on
fake tensors).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ._files import atomic_write
from ._host import cpu_model_and_flags
from ._version import __version__

__all__ = ["autotune", "enabled", "cache_path", "cache_report", "TimingPolicy", "Decision", "clear_memory"]

logger = logging.getLogger("ascan_kernels")

ENV_ENABLE = "ASCAN_AUTOTUNE"
ENV_CACHE = "ASCAN_AUTOTUNE_CACHE"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TimingPolicy:
    """How each candidate is timed: ``warmup`` untimed calls each (first calls build oneDNN
    primitives, compile Triton kernels), then rounds that time every candidate once in turn
    until ``min_rounds`` are done and either ``max_rounds`` or ``budget_s`` is reached."""

    warmup: int = 2
    min_rounds: int = 5
    max_rounds: int = 25
    budget_s: float = 0.3


POLICY = TimingPolicy()


@dataclasses.dataclass(frozen=True)
class Decision:
    """The impl chosen for one (op, signature) and the median milliseconds that chose it.

    ``ms`` has every timed impl; ``errors`` the impls that raised while being timed.
    ``source`` is ``"timed"`` (measured in this process) or ``"cache"`` (read from disk)."""

    impl: str
    ms: dict[str, float]
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    source: str = "timed"

    def note(self) -> str:
        """``"autotuned (timed): cpu 1.20 ms, eager 1.34 ms"``, the fastest first."""
        parts = [f"{name} {ms:.3g} ms" for name, ms in sorted(self.ms.items(), key=lambda kv: kv[1])]
        parts += [f"{name} failed ({why})" for name, why in self.errors.items()]
        return f"autotuned ({self.source}): " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"impl": self.impl, "ms": {k: float(f"{v:.4g}") for k, v in self.ms.items()}, **({"errors": self.errors} if self.errors else {})}

    @classmethod
    def from_json(cls, d: Any) -> "Decision":
        if not (isinstance(d, dict) and isinstance(d.get("impl"), str) and isinstance(d.get("ms"), dict)):
            raise ValueError(f"not an autotune decision: {d!r:.80}")
        return cls(d["impl"], {str(k): float(v) for k, v in d["ms"].items()},
                   {str(k): str(v) for k, v in d.get("errors", {}).items()}, "cache")


# ---------------------------------------------------------------------------------------
# Switching it on
# ---------------------------------------------------------------------------------------
_ENV_ON = os.environ.get(ENV_ENABLE, "") not in ("", "0")
# Stack of (cache path or None, retune) for the active autotune() blocks.
_CONTEXTS: list[tuple[Path | None, bool]] = []
# Bumped when what this process remembers is forgotten (clear_memory): the selection memo in
# the registry keys on it, with the active contexts.
_GENERATION = [0]


def enabled() -> bool:
    """Whether autotuned dispatch is on (``ASCAN_AUTOTUNE=1`` or inside ``autotune()``)."""
    return _ENV_ON or bool(_CONTEXTS)


@contextlib.contextmanager
def autotune(cache: str | os.PathLike | None = None, *, retune: bool = False) -> Iterator[None]:
    """Turn autotuned dispatch on inside the block.

    ``cache`` points this block at another cache file (default: ``cache_path()``);
    ``retune=True`` times again even where the cache has a decision, and stores the new one.
    """
    path = Path(cache) if cache is not None else None
    _mark_for_compile()
    _cache_for(path or cache_path()).load()  # read now: torch.compile cannot read files while tracing
    _CONTEXTS.append((path, retune))
    try:
        yield
    finally:
        _CONTEXTS.pop()


def state_key() -> tuple | None:
    """What the registry's selection memo must key on: None when autotune is off."""
    if not enabled():
        return None
    # Entering the same block again (one per forward, say) keeps the memo: same key.
    return (_GENERATION[0], torch.get_num_threads(), tuple(_CONTEXTS), _ENV_ON)


def _active() -> tuple[Path, bool]:
    path, retune = _CONTEXTS[-1] if _CONTEXTS else (None, False)
    return path or cache_path(), retune


def cache_path() -> Path:
    """``ASCAN_AUTOTUNE_CACHE``, else ``$XDG_CACHE_HOME/ascan_kernels/autotune.json``
    (``~/.cache`` without XDG_CACHE_HOME)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ascan_kernels" / "autotune.json"


# ---------------------------------------------------------------------------------------
# Where a decision is valid
# ---------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    """The facts a timing depends on, for a call on ``device``."""
    env: dict[str, Any] = {"torch": torch.__version__, "ascan_kernels": __version__}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(device=p.name, capability=f"sm_{p.major}{p.minor}", cuda=torch.version.cuda)
    else:
        model, _flags = cpu_model_and_flags()
        env.update(device=model if device.type == "cpu" else device.type,
                   isa=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())
    return env


def environment_key(env: dict[str, Any]) -> str:
    return " | ".join(f"{k}={env[k]}" for k in sorted(env))


# ---------------------------------------------------------------------------------------
# The cache file
# ---------------------------------------------------------------------------------------
class _CacheFile:
    """One JSON cache: {"format": 1, "environments": {env key: {"env": {...},
    "ops": {op: {signature: decision}}}}}, mirrored in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self.loaded = False
        self.lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        """The file's environments; {} when absent; {} with a warning when corrupt."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as e:
            warnings.warn(f"ascan_kernels autotune: cannot read the cache {self.path}: {e}; "
                          "tuning without it", RuntimeWarning, stacklevel=4)
            return {}
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("environments"), dict):
                raise ValueError(f"expected {{'format': {FORMAT}, 'environments': {{...}}}}")
            envs = doc["environments"]
            for section in envs.values():
                for entries in section["ops"].values():
                    for d in entries.values():
                        Decision.from_json(d)
            return envs
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            warnings.warn(f"ascan_kernels autotune: ignoring the corrupt cache {self.path} "
                          f"({type(e).__name__}: {e}); it will be replaced on the next write",
                          RuntimeWarning, stacklevel=4)
            return {}

    def load(self) -> None:
        with self.lock:
            if not self.loaded:
                self.data = self._read()
                self.loaded = True

    def lookup(self, env_key: str, op: str, signature: str) -> Decision | None:
        self.load()
        d = self.data.get(env_key, {}).get("ops", {}).get(op, {}).get(signature)
        return Decision.from_json(d) if d is not None else None

    def store(self, env: dict[str, Any], op: str, signature: str, decision: Decision) -> None:
        """Add a decision here and on disk. On disk: lock, re-read, merge, replace atomically,
        so that concurrent tuners keep each other's decisions."""
        key = environment_key(env)
        with self.lock:
            section = self.data.setdefault(key, {"env": env, "ops": {}})
            section["ops"].setdefault(op, {})[signature] = decision.to_json()
            try:
                with _file_lock(self.path):
                    on_disk = self._read()
                    merged_section = on_disk.setdefault(key, {"env": env, "ops": {}})
                    merged_section["ops"].setdefault(op, {})[signature] = decision.to_json()
                    doc = {"format": FORMAT, "environments": on_disk}
                    atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1, sort_keys=True)))
                    # What other processes wrote is now ours too.
                    for k, sec in on_disk.items():
                        mine = self.data.setdefault(k, {"env": sec["env"], "ops": {}})
                        for o, entries in sec["ops"].items():
                            mine["ops"].setdefault(o, {}).update(entries)
            except OSError as e:
                warnings.warn(f"ascan_kernels autotune: cannot write the cache {self.path}: {e}; "
                              "the decision is kept for this process only", RuntimeWarning, stacklevel=4)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (no-op where fcntl does not exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic replace alone (a writer may lose a merge)
        yield
        return
    with open(str(path) + ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_FILES: dict[Path, _CacheFile] = {}


def _cache_for(path: Path) -> _CacheFile:
    path = Path(os.path.abspath(path))
    if path not in _FILES:
        _FILES[path] = _CacheFile(path)
    return _FILES[path]


def clear_memory() -> None:
    """Forget what this process has read or timed (the files stay); for tests and tools."""
    _FILES.clear()
    _GENERATION[0] += 1


# ---------------------------------------------------------------------------------------
# Timing and choosing
# ---------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_impls(fns: dict[str, Callable[[], Any]], device: torch.device,
               policy: TimingPolicy = POLICY) -> tuple[dict[str, float], dict[str, str]]:
    """Median milliseconds per candidate, timed round-robin so that a noisy neighbour hits
    every candidate alike; CUDA events on a GPU. Returns (ms, errors): a candidate that raises
    is dropped with its error."""
    errors: dict[str, str] = {}
    live = dict(fns)
    for name, fn in list(live.items()):
        try:
            for _ in range(policy.warmup):
                fn()
            _synchronize(device)
        except Exception as e:  # a kernel that fails here must not win, nor break the call
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            del live[name]
    samples: dict[str, list[float]] = {name: [] for name in live}
    start = time.perf_counter()
    rounds = 0
    while live and (rounds < policy.min_rounds
                    or (rounds < policy.max_rounds and time.perf_counter() - start < policy.budget_s)):
        for name, fn in live.items():
            if device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                samples[name].append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}, errors


def _cached_choice(op: str, signature: str, device: str, names: tuple[str, ...]) -> str | None:
    """The cached impl name for a call being traced by torch.compile, or None (no timing)."""
    path, _retune = _active()
    d = _cache_for(path).lookup(environment_key(environment(torch.device(device))), op, signature)
    return d.impl if d is not None and d.impl in names else None


_MARKED: list[bool] = []


def _mark_for_compile() -> None:
    """Tell Dynamo that :func:`_cached_choice`'s answer is a constant. Done when autotuning is
    turned on, not at import: marking imports torch._dynamo, which ``import ascan_kernels``
    must not (it costs seconds and changes what other libraries see)."""
    if not _MARKED:
        torch.compiler.assume_constant_result(_cached_choice)
        _MARKED.append(True)


def choose(op: str, candidates: Sequence[Any], args: tuple, kwargs: dict, device: torch.device,
           signature: str) -> Decision | None:
    """The decision for one call among ``candidates`` (registry Impls that can run it, in
    priority order), from memory, the cache file, or timing. None where autotune must not
    decide: nothing cached while torch.compile traces, or no candidate could be timed."""
    names = tuple(c.name for c in candidates)
    if torch.compiler.is_compiling():
        # Dynamo cannot trace file reads or path handling: ask a function it runs as-is at
        # trace time and whose (string) answer it bakes into the graph.
        name = _cached_choice(op, signature, str(device), names)
        return Decision(name, {}, source="cache") if name is not None else None
    path, retune = _active()
    cache = _cache_for(path)
    env = environment(device)
    if not retune:
        cached = cache.lookup(environment_key(env), op, signature)
        if cached is not None and cached.impl in names:
            return cached
    with torch.no_grad():
        ms, errors = time_impls({c.name: (lambda c=c: c.fn(*args, **kwargs)) for c in candidates}, device)
    if not ms:
        return None
    best = min(ms, key=ms.get)
    decision = Decision(best, ms, errors)
    cache.store(env, op, signature, decision)
    if errors:
        logger.warning("ascan_kernels autotune: %s: impls failed while timed: %s", op, errors)
    return decision


# ---------------------------------------------------------------------------------------
# What is cached (python -m ascan_kernels)
# ---------------------------------------------------------------------------------------
def cache_report(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The cache file's content for reports: path, whether it exists, and per environment the
    decisions as (op, signature, impl, ms). Read fresh from disk."""
    p = Path(path) if path is not None else cache_path()
    envs = _CacheFile(p)._read() if p.exists() else {}
    out: dict[str, Any] = {"path": str(p), "exists": p.exists(), "enabled": enabled(), "environments": []}
    here = environment_key(environment(torch.device("cpu")))
    for key, section in sorted(envs.items()):
        rows = [{"op": op, "signature": sig, "impl": d["impl"], "ms": d["ms"]}
                for op, entries in sorted(section["ops"].items()) for sig, d in sorted(entries.items())]
        out["environments"].append({"key": key, "this_cpu": key == here, "env": section["env"], "decisions": rows})
    return out


def format_cache_report(rep: dict[str, Any], limit: int = 40) -> str:
    lines = [f"autotune: {'on' if rep['enabled'] else 'off'} ({ENV_ENABLE}=1 or ascan_kernels.autotune()); "
             f"cache {rep['path']}" + ("" if rep["exists"] else " (none yet)")]
    for env in rep["environments"]:
        lines.append(f"  [{'this machine' if env['this_cpu'] else 'other'}] {env['key']}: "
                     f"{len(env['decisions'])} decisions")
        for row in env["decisions"][:limit]:
            timings = ", ".join(f"{k} {v:.3g}" for k, v in sorted(row["ms"].items(), key=lambda kv: kv[1]))
            lines.append(f"    {row['op']:<15} {row['impl']:<8} {timings} ms | {row['signature']}")
        if len(env["decisions"]) > limit:
            lines.append(f"    ... {len(env['decisions']) - limit} more (python -m ascan_kernels --json)")
    return "\n".join(lines)


if _ENV_ON:
    _mark_for_compile()

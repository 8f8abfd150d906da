"""``python -m ascan bench``: latency of the AsCAN classifiers (and timm peers) on this machine.

For each model, dtype and batch size: parameters and MACs (counted by code), the
latency of the eager model (``fused=False``), of the fused model (``fused=True``),
optionally of ``torch.compile`` of the eager model (with Inductor's freezing on the CPU,
the way a CPU deployer would compile for inference), of the fused model with autotuned
dispatch (``--autotune``), of the deployment runtimes on the model exported to ONNX (ONNX
Runtime and OpenVINO, when installed, on the CPU: the choice a CPU deployer has), the fused
speedup, the throughput, and the fraction of this machine's measured GEMM peak each reaches.

How it times: the implementations compared with each other (eager, fused and compile
of one model/dtype/batch; a timm peer and the reference AsCAN model, fused) are run
interleaved, round-robin (one call of each per round, after ``--warmup`` untimed
rounds), so a busy neighbour slows them alike. Each latency is the median of
``--runs`` rounds with the interquartile range (q1-q3) as its spread. A comparison
says "holds here" / "does not hold here" only when the two interquartile ranges do
not overlap, and "inconclusive" (with both ranges) when they do.

Output: a table on the terminal at the end; with ``--out DIR`` a JSON file (``bench.json``)
and the table (``table.md``) rewritten atomically after every finished row (``"complete":
false`` until the run ends, so an interrupted run keeps what it measured) and, at the end, a PNG plot (latency vs
parameters, one panel per batch size). A WARNING goes to stderr when the machine is
busy (1-minute load average above the threads torch uses): timings are unreliable then.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import torch

import ascan_kernels as K

from .. import export as ex
from ..complexity import count_macs, count_params
from ..models.classifier import CONFIGS
from ..models.registry import build_model
from .tables import markdown_table

# The paper compares against hybrid and efficient-attention nets of the same class.
DEFAULT_PEERS = ("coatnet_0_rw_224", "maxvit_tiny_tf_224", "convnext_tiny", "fastvit_sa12", "efficientvit_b1")

# The deployment runtimes, timed on the eager model exported to ONNX (fp32 graph; OpenVINO
# runs the bf16 rows with its bf16 inference-precision hint, ONNX Runtime has no CPU bf16).
RUNTIMES = ("onnxruntime", "openvino")  # also their import names

# Below this many timed runs the quartiles say nothing: a comparison is "inconclusive".
MIN_RUNS_FOR_VERDICT = 3


def _ms(x: float) -> str:
    """A latency in ms with about three significant digits."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


@dataclasses.dataclass
class Timing:
    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int
    samples_ms: list[float] = dataclasses.field(default_factory=list)

    @property
    def spread(self) -> str:
        return f"{_ms(self.q1_ms)}-{_ms(self.q3_ms)}"

    def cell(self) -> str:
        """``median [q1-q3]`` for a table cell."""
        return f"{_ms(self.median_ms)} [{self.spread}]"

    @classmethod
    def from_samples(cls, ts: list[float]) -> "Timing":
        if len(ts) == 1:
            q1 = med = q3 = ts[0]
        else:  # "inclusive": quartiles stay within the measured values even for few runs
            q1, med, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        return cls(med, q1, q3, len(ts), list(ts))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Timing | None":
        if not d:
            return None
        return cls(d["median_ms"], d["q1_ms"], d["q3_ms"], d.get("runs", 0), list(d.get("samples_ms", [])))


@dataclasses.dataclass
class Verdict:
    """Whether ``candidate`` is faster (lower latency) than ``baseline``."""
    status: str                    # "holds", "does not hold" or "inconclusive"
    ratio: float                   # baseline median / candidate median (> 1: candidate faster)
    text: str                      # what to print, with both interquartile ranges


def verdict(candidate: Timing, baseline: Timing) -> Verdict:
    """"holds here" when ``candidate``'s IQR lies wholly below ``baseline``'s, "does not hold
    here" when wholly above, otherwise "inconclusive (ranges overlap: A-B ms vs C-D ms)".

    Touching ranges count as overlapping, and fewer than ``MIN_RUNS_FOR_VERDICT`` runs on
    either side is inconclusive whatever the numbers say."""
    ratio = baseline.median_ms / candidate.median_ms
    ranges = f"{candidate.spread} ms vs {baseline.spread} ms"
    if min(candidate.runs, baseline.runs) < MIN_RUNS_FOR_VERDICT:
        return Verdict("inconclusive", ratio,
                       f"inconclusive (too few runs, {min(candidate.runs, baseline.runs)}: {ranges})")
    if candidate.q3_ms < baseline.q1_ms:
        return Verdict("holds", ratio, f"holds here ({ranges})")
    if baseline.q3_ms < candidate.q1_ms:
        return Verdict("does not hold", ratio, f"does not hold here ({ranges})")
    return Verdict("inconclusive", ratio, f"inconclusive (ranges overlap: {ranges})")


@dataclasses.dataclass
class Row:
    model: str
    kind: str                      # "ascan" or "peer"
    dtype: str
    batch: int
    size: int
    params_m: float
    macs_g: float | None
    eager: Timing | None = None
    fused: Timing | None = None
    compiled: Timing | None = None
    tuned: Timing | None = None    # the fused model with autotuned dispatch (--autotune)
    note: str = ""
    ref_model: str | None = None   # peers: the AsCAN model (fused) timed interleaved with this one
    ref: Timing | None = None
    runtimes: dict[str, Timing] = dataclasses.field(default_factory=dict)   # "onnxruntime"/"openvino"
    runtime_notes: dict[str, str] = dataclasses.field(default_factory=dict)  # why one has no timing

    @property
    def speedup(self) -> float | None:
        if self.eager is None or self.fused is None:
            return None
        return self.eager.median_ms / self.fused.median_ms

    @property
    def fused_verdict(self) -> Verdict | None:
        """Is fused faster than eager (ascan rows)?"""
        if self.eager is None or self.fused is None:
            return None
        return verdict(self.fused, self.eager)

    @property
    def ref_verdict(self) -> Verdict | None:
        """Is the reference AsCAN model (fused) faster than this peer (peer rows)?"""
        if self.ref is None or self.eager is None:
            return None
        return verdict(self.ref, self.eager)

    @property
    def best(self) -> Timing | None:
        ts = [t for t in (self.fused, self.eager, self.compiled, self.tuned, *self.runtimes.values())
              if t is not None]
        return min(ts, key=lambda t: t.median_ms) if ts else None

    @property
    def throughput(self) -> float | None:
        t = self.fused or self.eager
        return None if t is None else self.batch / (t.median_ms / 1e3)

    def peak_fraction(self, t: Timing | None, peak_gflops: dict[str, float]) -> float | None:
        """Achieved GFLOP/s (2 x counted MACs x batch / median) over the measured GEMM peak
        for this row's dtype (:func:`peak_for`)."""
        peak = peak_for(self.dtype, peak_gflops)
        if t is None or self.macs_g is None or not peak:
            return None
        return 2 * self.macs_g * self.batch / (t.median_ms / 1e3) / peak


def time_interleaved(fns: dict[str, Callable[[], Any]], runs: int, warmup: int,
                     device: torch.device) -> dict[str, Timing]:
    """Median/IQR in ms of each ``fns[k]()``, timed round-robin: ``warmup`` untimed rounds,
    then ``runs`` rounds of one call of each (the starting one rotating per round), so that
    load from elsewhere falls on all of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    sync()
    ts: dict[str, list[float]] = {k: [] for k in names}
    for i in range(runs):
        j = i % len(names)
        for k in names[j:] + names[:j]:
            t0 = time.perf_counter()
            fns[k]()
            sync()
            ts[k].append((time.perf_counter() - t0) * 1e3)
    return {k: Timing.from_samples(v) for k, v in ts.items()}


def time_fn(fn: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> Timing:
    """Median/IQR in ms of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    return time_interleaved({"fn": fn}, runs, warmup, device)["fn"]


class Progress:
    """A one-line progress bar on stderr (no dependency); one line per step when not a terminal."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if not self.tty:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)
            return
        width = 30
        fill = int(width * self.done / self.total)
        el = time.perf_counter() - self.t0
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {el:5.0f}s {label:<50.50}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def measure_gemm_peak(dtypes: list[str], device: torch.device, n: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of a large square matmul (``n`` x ``n`` x ``n``) per dtype, best of ``reps``:
    what this machine's cores reach on the friendliest dense work, with torch's thread count.
    Each dtype is probed at ``n // 4`` first; one that is far slower there (bf16 emulated on a
    CPU without bf16 FMA: a 2048^3 call would take a minute) is reported from the probe."""
    out: dict[str, float] = {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def rate(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
        torch.mm(a, b)
        best = math.inf
        for _ in range(k):
            sync()
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t0)
        return 2 * a.shape[0] ** 3 / best / 1e9

    for name in dtypes:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        try:
            small = [torch.randn(n // 4, n // 4, device=device).to(dt) for _ in range(2)]
            gflops = rate(*small, 2)
            if gflops * 1e9 > 2 * n ** 3 / 0.5:  # a full-size call under half a second: measure it
                gflops = rate(*[torch.randn(n, n, device=device).to(dt) for _ in range(2)], reps)
            out[name] = gflops
        except RuntimeError:  # a dtype without a matmul here (fp16 on some CPUs)
            continue
    return out


def peak_for(dtype: str, peak_gflops: dict[str, float]) -> float | None:
    """The peak a row of ``dtype`` is measured against: its own GEMM's, or fp32's where that is
    faster (a low-precision GEMM emulated through fp32 cannot beat it; autocast's convs run
    the same way)."""
    own = peak_gflops.get(dtype)
    if own is None:
        return peak_gflops.get("fp32")
    return max(own, peak_gflops.get("fp32", 0.0))


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def _count(model_fn: Callable[[], torch.nn.Module], size: int) -> tuple[float, float | None]:
    with torch.device("meta"):
        m = model_fn()
    params = count_params(m) / 1e6
    try:
        macs = count_macs(m, (1, 3, size, size)) / 1e9
    except Exception:  # a peer whose forward does not run on meta: MACs unknown
        macs = None
    return params, macs


def _peer_builder(name: str):
    import timm

    return lambda: timm.create_model(name, pretrained=False)


def _compile(model: torch.nn.Module, device: torch.device) -> Callable[..., Any]:
    """torch.compile for inference; on the CPU with Inductor's freezing (weights folded into
    the graph as constants, conv weights pre-packed for oneDNN), applied when the first call
    compiles."""
    compiled = torch.compile(model)
    if device.type != "cpu":
        return compiled

    def call(*args):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return compiled(*args)
    return call


def installed_runtimes() -> list[str]:
    """The deployment runtimes importable here."""
    import importlib.util

    return [r for r in RUNTIMES if importlib.util.find_spec(r) is not None]


class _Deployed:
    """One model exported to ONNX once (batch dynamic) and loaded in each runtime for each
    dtype up front, inside a temporary folder that is gone once they are loaded (the
    runtimes keep the model in memory), so an interrupted bench leaves no file behind."""

    def __init__(self, model: torch.nn.Module, size: int, runtimes: list[str], dtypes: list[str]):
        self.runners: dict[tuple[str, str], Callable[..., Any]] = {}
        self.notes: dict[tuple[str, str], str] = {}
        with tempfile.TemporaryDirectory(prefix="ascan-bench-") as d:
            path = os.path.join(d, f"{model.cfg.name}.onnx")
            try:
                ex.save_onnx(model, path, ex.example_inputs(model, batch=2, size=size))
            except Exception as e:
                self.notes = {(rt, dt): f"ONNX export {_failed(e)}" for rt in runtimes for dt in dtypes}
                return
            for rt in runtimes:
                for dt in dtypes:
                    if dt != "fp32" and rt == "onnxruntime":
                        self.notes[rt, dt] = "ONNX Runtime's CPU provider has no bf16/fp16 path"
                    elif dt == "fp16":
                        self.notes[rt, dt] = "not timed in fp16 on the CPU"
                    else:
                        try:
                            self.runners[rt, dt] = (ex.load_runner(path, "onnx") if rt == "onnxruntime" else
                                                    ex.openvino_runner(path, precision="bf16" if dt == "bf16" else "f32"))
                        except Exception as e:
                            self.notes[rt, dt] = _failed(e)

    def runner(self, runtime: str, dtype: str) -> tuple[Callable[..., Any] | None, str | None]:
        """(run(x), None), or (None, why this runtime has no timing for this dtype)."""
        return self.runners.get((runtime, dtype)), self.notes.get((runtime, dtype))


def _failed(e: Exception) -> str:
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def run_bench(models: list[str], dtypes: list[str], batches: list[int], size: int, device: torch.device,
              runs: int, warmup: int, compile_: bool, peers: list[str], progress: bool = True,
              ref_model: str | None = None, on_row: Callable[[Row], None] | None = None,
              runtimes: list[str] | None = None, autotune_cache: str | None = None,
              autotune: bool = False) -> list[Row]:
    """Measure every (model, dtype, batch); returns the rows (see :class:`Row`).

    Per cell, eager, fused (and compile, and each of ``runtimes`` on the ONNX export of the
    eager model: CPU only; and the fused model under ``ascan_kernels.autotune(autotune_cache)``
    when ``autotune``, its cache filled by one call before timing) are timed interleaved;
    per peer cell the peer
    (and its compile) is timed interleaved with ``ref_model`` fused when given.
    ``on_row(row)`` is called after every finished row (to save as it goes). A cell that
    raises gets a row with the error as its note and the run goes on."""
    warm = max(warmup, 1) if compile_ else warmup    # the first compiled call compiles: never time it
    total = (len(models) + len(peers)) * len(dtypes) * len(batches)
    bar = Progress(total, progress)
    rows: list[Row] = []

    def done(row: Row) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    runtimes = list(runtimes or []) if device.type == "cpu" else []
    impls = "eager+fused" + ("+autotuned" if autotune else "") + ("+compile" if compile_ else "") + "".join(f"+{r}" for r in runtimes)
    for name in models:
        params, macs = _count(lambda: build_model(name, fused=False), size)
        torch.manual_seed(0)
        eager = build_model(name, fused=False).eval().to(device)
        fused = build_model(name, fused=True).eval().to(device)
        fused.load_state_dict(eager.state_dict())
        compiled = _compile(eager, device) if compile_ else None
        deployed = _Deployed(eager, size, runtimes, dtypes) if runtimes else None
        for dtype in dtypes:
            for b in batches:
                bar.step(f"{name} {dtype} b{b} ({impls}, interleaved)")
                x = torch.randn(b, 3, size, size, device=device)
                row = Row(name, "ascan", dtype, b, size, params, macs)
                fns = {"eager": lambda: eager(x), "fused": lambda: fused(x)}
                if autotune:
                    def tuned_call(x=x):
                        with K.autotune(autotune_cache):
                            return fused(x)
                    fns["tuned"] = tuned_call
                if compiled is not None:
                    fns["compiled"] = lambda: compiled(x)
                for rt in runtimes:
                    run, why = deployed.runner(rt, dtype)
                    if run is None:
                        row.runtime_notes[rt] = why
                    else:
                        fns[rt] = (lambda run: lambda: run(x))(run)
                try:
                    with torch.no_grad(), _autocast(device, dtype):
                        if autotune:
                            fns["tuned"]()  # times each op's impls once and caches the choices
                        t = time_interleaved(fns, runs, warm, device)
                    row.eager, row.fused, row.compiled = t["eager"], t["fused"], t.get("compiled")
                    row.tuned = t.get("tuned")
                    row.runtimes = {rt: t[rt] for rt in runtimes if rt in t}
                except Exception as e:
                    row.note = _failed(e)
                done(row)
    ref = None
    if peers and ref_model:
        torch.manual_seed(0)
        ref = build_model(ref_model, fused=True).eval().to(device)
    for name in peers:
        try:
            build = _peer_builder(name)
            params, macs = _count(build, size)
            torch.manual_seed(0)
            model = build().eval().to(device)
        except Exception as e:
            bar.done += len(dtypes) * len(batches)
            done(Row(name, "peer", dtypes[0], batches[0], size, float("nan"), None,
                     note=f"could not build: {type(e).__name__}: {e}"))
            continue
        compiled = _compile(model, device) if compile_ else None
        for dtype in dtypes:
            for b in batches:
                bar.step(f"{name} {dtype} b{b}" + (f" (interleaved with {ref_model} fused)" if ref else ""))
                x = torch.randn(b, 3, size, size, device=device)
                row = Row(name, "peer", dtype, b, size, params, macs, ref_model=ref_model if ref else None)
                fns = {"eager": lambda: model(x)}
                if compiled is not None:
                    fns["compiled"] = lambda: compiled(x)
                if ref is not None:
                    fns["ref"] = lambda: ref(x)
                try:
                    with torch.no_grad(), _autocast(device, dtype):
                        t = time_interleaved(fns, runs, warm, device)
                    row.eager, row.compiled, row.ref = t["eager"], t.get("compiled"), t.get("ref")
                except Exception as e:
                    row.note = _failed(e)
                done(row)
    return rows


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(load: float | None, threads: int, when: str, own: float = 0.0) -> str | None:
    """A WARNING line when ``load - own`` (own: this process's estimated share) exceeds ``threads``."""
    if load is None or load - own <= threads:
        return None
    mine = f" (about {own:.1f} of it this run's own work)" if own >= 0.05 else ""
    return (f"WARNING: this machine is busy {when}: load average {load:.1f}{mine} > {threads} threads "
            f"torch uses. Timings are unreliable: other work slows torch's multi-threaded runs many times "
            f"over (and barely moves other runtimes); re-run when the machine is idle.")


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    threads = torch.get_num_threads()
    load = load_average()
    info = {"cpu": cpu, "threads": threads, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": str(device),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "load_avg_start": load, "load_avg_end": None,
            "busy": load is not None and load > threads}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class _LoadMeter:
    """Start/end load average; at the end, this process's own share of it is estimated from
    its CPU time (the 1-minute average lags: a run of T s reaches 1 - exp(-T/60) of its load)."""

    def __init__(self, info: dict[str, Any]):
        self.info = info
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def start(self) -> None:
        warn = busy_warning(self.info["load_avg_start"], self.info["threads"], "before timing")
        if warn:
            print(warn, file=sys.stderr, flush=True)

    def end(self) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        own = (time.process_time() - self.cpu0) / wall * (1 - math.exp(-wall / 60))
        load = load_average()
        self.info["load_avg_end"] = load
        self.info["own_load_est"] = round(own, 2)
        warn = busy_warning(load, self.info["threads"], "at the end of the run", own)
        self.info["busy"] = bool(self.info["busy"] or warn)
        if warn:
            print(warn, file=sys.stderr, flush=True)


def format_table(rows: list[Row], peak_gflops: dict[str, float] | None = None) -> str:
    """Markdown table of the rows: ms are medians [interquartile range]; the comparison column
    is fused vs eager for AsCAN rows and the reference AsCAN model (fused, timed interleaved)
    vs the peer for peer rows, with a verdict (see :func:`verdict`). With ``peak_gflops`` (per
    dtype, :func:`measure_gemm_peak`) a column gives the fraction of it the fused model and each
    runtime reach."""
    runtimes = [rt for rt in RUNTIMES if any(rt in r.runtimes or rt in r.runtime_notes for r in rows)]
    tuned = any(r.tuned is not None for r in rows)
    peak_gflops = peak_gflops or {}
    head = ("model", "dtype", "batch", "params (M)", "MACs (G)", "eager ms [IQR]", "fused ms [IQR]",
            *(("autotuned ms [IQR]",) if tuned else ()),
            "compile ms [IQR]", *(f"{rt} ms [IQR]" for rt in runtimes), "img/s",
            *(("% of GEMM peak",) if peak_gflops else ()), "comparison (verdict from the IQRs)")
    out = [head]
    for r in rows:
        if r.note:
            out.append((r.model + (" (timm)" if r.kind == "peer" else ""), r.dtype, str(r.batch),
                        *("" for _ in head[3:-1]), r.note))
            continue
        fractions = []
        for label, t in (("fused" if r.kind == "ascan" else "eager", r.fused if r.kind == "ascan" else r.eager),
                         ("autotuned", r.tuned), *((rt, r.runtimes.get(rt)) for rt in runtimes)):
            f = r.peak_fraction(t, peak_gflops)
            if f is not None:
                fractions.append(f"{label} {100 * f:.0f}")
        if r.kind == "ascan":
            v = r.fused_verdict
            cmp = f"fused {v.ratio:.2f}x vs eager: {v.text}" if v else "-"
        else:
            v = r.ref_verdict
            cmp = f"{r.ref_model} fused ({r.ref.cell()} ms) {v.ratio:.2f}x vs this: {v.text}" if v else "-"
        out.append((
            r.model + (" (timm)" if r.kind == "peer" else ""), r.dtype, str(r.batch),
            f"{r.params_m:.1f}" if not math.isnan(r.params_m) else "?",
            f"{r.macs_g:.2f}" if r.macs_g is not None else "?",
            r.eager.cell() if r.eager else "-",
            r.fused.cell() if r.fused else "-",
            *((r.tuned.cell() if r.tuned else "-",) if tuned else ()),
            r.compiled.cell() if r.compiled else "-",
            *(r.runtimes[rt].cell() if rt in r.runtimes else ("n/a" if rt in r.runtime_notes else "-")
              for rt in runtimes),
            f"{r.throughput:.1f}" if r.throughput else "-",
            *((", ".join(fractions) or "-",) if peak_gflops else ()),
            cmp + "".join(f"; fused {r.runtimes[rt].median_ms / r.fused.median_ms:.2f}x vs {rt}"
                          for rt in runtimes if rt in r.runtimes and r.fused is not None),
        ))
    lines = [markdown_table(out)]
    notes = sorted({f"{rt} n/a ({r.dtype}): {why}" for r in rows for rt, why in r.runtime_notes.items()})
    if peak_gflops:
        notes.insert(0, "% of GEMM peak: 2 x counted MACs x batch / median time, over the measured peak of a "
                        "large torch.mm (2048^3; 512^3 for a dtype far slower there) (" + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak_gflops.items())
                        + "); attention's matmuls and elementwise work are not in the MACs"
                        + "".join(f"; {k} rows against the fp32 peak ({k} GEMM slower here)"
                                  for k, v in peak_gflops.items() if v < peak_gflops.get("fp32", 0)))
    if tuned:
        notes.insert(0, "autotuned: the fused model under ascan_kernels.autotune(), choices timed once "
                        "before the rows and taken from the cache while timed")
    if runtimes:
        notes.insert(0, "onnxruntime / openvino: the eager model exported to ONNX (fp32 graph; openvino "
                        "bf16 rows use its bf16 inference-precision hint), run with torch's thread count")
    return "\n".join(lines + ([""] + notes if notes else []))


def _verdict_json(v: Verdict | None) -> dict[str, Any] | None:
    return None if v is None else dataclasses.asdict(v)


def to_json(rows: list[Row], info: dict[str, Any], args: dict[str, Any], complete: bool = True,
            interrupted: bool = False) -> dict[str, Any]:
    def t(x):
        return None if x is None else dataclasses.asdict(x)
    return {"complete": complete, "interrupted": interrupted, "machine": info, "args": args,
            "timing": "interleaved round-robin per cell after warm-up rounds; median and IQR (q1-q3, "
                      "inclusive quartiles) of the timed rounds; verdicts only where the IQRs do not overlap",
            "rows": [
                {"model": r.model, "kind": r.kind, "dtype": r.dtype, "batch": r.batch, "size": r.size,
                 "params_m": None if math.isnan(r.params_m) else r.params_m, "macs_g": r.macs_g,
                 "eager": t(r.eager), "fused": t(r.fused), "compiled": t(r.compiled), "autotuned": t(r.tuned),
                 "gemm_peak_fraction": {k: r.peak_fraction(v, info.get("gemm_peak_gflops") or {})
                                        for k, v in (("fused", r.fused), ("eager", r.eager),
                                                     ("autotuned", r.tuned), *r.runtimes.items())},
                 "speedup": r.speedup, "verdict": _verdict_json(r.fused_verdict),
                 "ref_model": r.ref_model, "ref": t(r.ref), "ref_verdict": _verdict_json(r.ref_verdict),
                 "runtimes": {k: t(v) for k, v in r.runtimes.items()}, "runtime_notes": dict(r.runtime_notes),
                 "throughput": r.throughput, "note": r.note}
                for r in rows]}


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` so that a reader (or an interrupted run) only ever sees a
    whole file (``ascan_kernels.atomic_write``: temporary, fsync, rename)."""
    K.atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(data, indent=1)))


def plot(rows: list[Row], path: str, info: dict[str, Any]) -> str | None:
    """Latency vs params, one panel per batch size, log-log: AsCAN variants as lines per dtype
    (fused solid, eager dashed, compile dotted), peers as one marker each; bars are the IQR."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import (FixedFormatter, FixedLocator, FuncFormatter, LogLocator,
                                       NullFormatter, NullLocator)
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    good = [r for r in rows if not r.note and r.eager is not None]
    if not good:
        return "no measured rows: no plot"
    batches = sorted({r.batch for r in good})
    dtypes = sorted({r.dtype for r in good}, key=["fp32", "bf16", "fp16"].index)
    peer_names = list(dict.fromkeys(r.model for r in good if r.kind == "peer"))
    colors = dict(zip(dtypes, ["tab:blue", "tab:orange", "tab:green"]))
    markers = dict(zip(peer_names, "sD^vPX*hp<>"))

    fig, axes = plt.subplots(1, len(batches), figsize=(4.6 * len(batches) + 0.6, 4.8), squeeze=False,
                             layout="constrained")
    for ax, b in zip(axes[0], batches):
        for i, dtype in enumerate(dtypes):
            dodge = 1 + 0.035 * (i - (len(dtypes) - 1) / 2)      # fp32/bf16 side by side, not on top
            c = colors[dtype]

            def bars(rs, timing, fmt, **kw):
                ts = [timing(r) for r in rs]
                ax.errorbar([r.params_m * dodge for r in rs], [t.median_ms for t in ts],
                            yerr=[[t.median_ms - t.q1_ms for t in ts], [t.q3_ms - t.median_ms for t in ts]],
                            fmt=fmt, color=c, capsize=2.5, markersize=5, lw=1.3, elinewidth=1, **kw)

            ours = sorted((r for r in good if r.kind == "ascan" and (r.dtype, r.batch) == (dtype, b)),
                          key=lambda r: r.params_m)
            if ours:
                bars(ours, lambda r: r.fused, "o-")
                bars(ours, lambda r: r.eager, "o--", alpha=0.5, mfc="none")
                if all(r.compiled for r in ours):
                    bars(ours, lambda r: r.compiled, "^:", alpha=0.7)
            for r in good:
                if r.kind == "peer" and (r.dtype, r.batch) == (dtype, b):
                    bars([r], lambda r: r.eager, markers[r.model], mec="black", mew=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = [r.params_m for r in good if r.batch == b]
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            dense = math.log10(hi / lo) < 1.2             # a narrow range: more labelled ticks
            axis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 5, 7) if dense else (1, 2, 5)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_locator(LogLocator(subs="all"))
            axis.set_minor_formatter(NullFormatter())
        ascan_x = sorted({(r.params_m, r.model) for r in good if r.kind == "ascan" and r.batch == b})
        for x, _ in ascan_x:
            ax.axvline(x, color="0.85", lw=0.8, zorder=0)
        top = ax.secondary_xaxis("top")              # AsCAN variants named on the top axis: no overlap
        top.xaxis.set_major_locator(FixedLocator([x for x, _ in ascan_x]))
        top.xaxis.set_major_formatter(FixedFormatter([m for _, m in ascan_x]))
        top.xaxis.set_minor_locator(NullLocator())
        top.tick_params(labelsize=7)
        ax.set_title(f"batch {b}", fontsize=9)
        ax.set_xlabel("parameters (M, log)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("latency per batch (ms, median; bars: IQR; log)", fontsize=8)

    handles = [Line2D([], [], color=colors[d], marker="o", ls="-", label=f"AsCAN fused {d}") for d in dtypes]
    handles += [Line2D([], [], color=colors[d], marker="o", mfc="none", ls="--", alpha=0.5,
                       label=f"AsCAN eager {d}") for d in dtypes]
    if any(r.compiled for r in good if r.kind == "ascan"):
        handles += [Line2D([], [], color=colors[d], marker="^", ls=":", label=f"AsCAN compile {d}")
                    for d in dtypes]
    handles += [Line2D([], [], color="0.5", mec="black", mew=0.6, marker=markers[p], ls="", label=f"{p} (timm)")
                for p in peer_names]
    where = info.get("gpu") or f"{info['cpu']}, {info['threads']} threads"
    busy = " - machine was BUSY, timings unreliable" if info.get("busy") else ""
    fig.suptitle(f"latency vs parameters at {good[0].size}x{good[0].size} on {where}{busy}\n"
                 "colour: dtype; timm peers: one marker per model; bars: interquartile range", fontsize=9)
    nrows = max(len(dtypes), 2)              # column-major: a column per AsCAN impl, then the peers
    try:
        fig.legend(handles=handles, loc="outside lower center", ncol=-(-len(handles) // nrows), fontsize=7,
                   frameon=False)
    except ValueError:                       # matplotlib < 3.7: no "outside"
        fig.legend(handles=handles, loc="lower center", ncol=-(-len(handles) // nrows), fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _csv(s: str, cast=str) -> list:
    return [cast(v) for v in s.split(",") if v]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" unless the help already says it or there is nothing to say."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "(default" in h or action.default in (None, False, argparse.SUPPRESS):
            return h
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ascan bench", description=__doc__.split("\n\n")[0],
                                 epilog=" ".join(__doc__.split("\n\n")[2:4]), formatter_class=_HelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--models", type=_csv, default=",".join(CONFIGS), help="comma list of classifiers")
    ap.add_argument("--dtype", type=_csv, default="fp32,bf16", help="comma list of fp32, bf16, fp16 "
                                                                    "(low precision via autocast)")
    ap.add_argument("--batch", type=lambda s: _csv(s, int), default="1,16", help="comma list of batch sizes")
    ap.add_argument("--size", type=int, default=224, help="input resolution (multiple of 32)")
    ap.add_argument("--runs", type=int, default=20, help="timed rounds per cell (one call of each "
                                                         "implementation per round)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the eager model "
                                                           "(its first call compiles, untimed)")
    ap.add_argument("--autotune", action="store_true",
                    help="also time the fused model with autotuned dispatch (ascan_kernels.autotune())")
    ap.add_argument("--autotune-cache", default=None,
                    help="the autotune cache file for --autotune (default: ASCAN_AUTOTUNE_CACHE or the "
                         "user cache dir, as ascan_kernels uses)")
    ap.add_argument("--no-peak", action="store_true",
                    help="skip measuring the GEMM peak (the %% of peak column)")
    ap.add_argument("--peers", type=_csv, default=None,
                    help=f"comma list of timm models to compare (default when timm is installed: "
                         f"{','.join(DEFAULT_PEERS)})")
    ap.add_argument("--no-peers", action="store_true", help="no timm peers")
    ap.add_argument("--runtimes", type=_csv, default="auto",
                    help=f"comma list of {', '.join(RUNTIMES)} timed on the ONNX export (CPU); 'auto': "
                         "those installed (pip install 'ascan[deploy]'); 'none'")
    ap.add_argument("--ref", help="AsCAN model timed (fused) interleaved with each peer, for a fair "
                                  "comparison; 'none' for no pairing (default: the first of --models)")
    ap.add_argument("--out", help="directory for bench.json (rewritten after every row) and bench.png "
                                  "(default: none, table only)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice, "
                                                f"{torch.get_num_threads()} here)")
    args = ap.parse_args(argv)

    bad = [m for m in args.models if m not in CONFIGS]
    if bad:
        ap.error(f"unknown model(s) {bad}; classifiers: {', '.join(CONFIGS)}")
    bad = [d for d in args.dtype if d not in ("fp32", "bf16", "fp16")]
    if bad:
        ap.error(f"unknown dtype(s) {bad}; use fp32, bf16, fp16")
    if args.size % 32 or args.size < 32:
        ap.error(f"--size must be a positive multiple of 32, got {args.size}")
    if args.runs < 1 or args.warmup < 0 or not args.batch or min(args.batch) < 1:
        ap.error("--runs and --batch must be >= 1, --warmup >= 0")
    ref_model = None if (args.ref or "").lower() == "none" else (args.ref or args.models[0])
    if ref_model is not None and ref_model not in CONFIGS:
        ap.error(f"unknown --ref model {ref_model!r}; classifiers: {', '.join(CONFIGS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    peers: list[str] = []
    if not args.no_peers:
        try:
            import timm  # noqa: F401
            peers = args.peers if args.peers is not None else list(DEFAULT_PEERS)
        except ImportError:
            if args.peers:
                ap.error("--peers needs timm (pip install timm)")
            print("timm is not installed: no peers (pip install timm to compare)", file=sys.stderr)

    if args.runtimes == ["auto"]:
        runtimes = installed_runtimes() if device.type == "cpu" else []
    elif args.runtimes == ["none"]:
        runtimes = []
    else:
        runtimes = args.runtimes
        bad = [r for r in runtimes if r not in RUNTIMES]
        if bad:
            ap.error(f"unknown runtime(s) {bad}; use {', '.join(RUNTIMES)}, auto or none")
        missing = [r for r in runtimes if r not in installed_runtimes()]
        if missing:
            ap.error(f"--runtimes {','.join(missing)}: not installed (pip install 'ascan[deploy]')")
        if device.type != "cpu":
            ap.error("--runtimes: the deployment runtimes are timed on the CPU only")

    info = machine_info(device)
    if not args.no_peak:
        # fp32 always: the low-precision rows are measured against it where it is faster
        info["gemm_peak_gflops"] = measure_gemm_peak(["fp32", *(d for d in args.dtype if d != "fp32")], device)
    meter = _LoadMeter(info)
    meter.start()
    json_path = os.path.join(args.out, "bench.json") if args.out else None
    arg_record = {**vars(args), "ref": ref_model, "peers": peers, "runtimes": runtimes}
    done: list[Row] = []

    def save(complete: bool = False, interrupted: bool = False) -> None:
        if json_path:
            write_json_atomic(json_path, to_json(done, info, arg_record, complete, interrupted))
            if done:  # the terminal's table too, for a reader of the folder (bench/gpu_session.py)
                table = format_table(done, info.get("gemm_peak_gflops"))
                K.atomic_write(os.path.join(args.out, "table.md"), lambda tmp: pathlib.Path(tmp).write_text(table + "\n"))

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        save()

    def on_row(row: Row) -> None:
        done.append(row)
        save()

    interrupted = False
    try:
        run_bench(args.models, args.dtype, args.batch, args.size, device, args.runs, args.warmup,
                  args.compile, peers, ref_model=ref_model, on_row=on_row, runtimes=runtimes,
                  autotune=args.autotune, autotune_cache=args.autotune_cache)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: keeping the rows finished so far", file=sys.stderr)
    meter.end()
    print(f"\n{info['cpu']} | {info['threads']} threads | torch {info['torch']} | device {info['device']}"
          f" | load average {info['load_avg_start'] or 0:.1f} at start, {info['load_avg_end'] or 0:.1f} at end"
          f"{' (BUSY: timings unreliable)' if info['busy'] else ''}"
          f" | median [IQR] of {args.runs} interleaved rounds after {args.warmup} warm-up\n")
    if interrupted:
        print(f"INTERRUPTED after {len(done)} row(s): the table has only those\n")
    print(format_table(done, info.get("gemm_peak_gflops")) if done else "(no rows finished)")
    if args.out:
        save(complete=not interrupted, interrupted=interrupted)
        why = plot(done, os.path.join(args.out, "bench.png"), info) if done else "no rows: no plot"
        print(f"\nwrote {json_path}" + ("" if why else f" and {os.path.join(args.out, 'bench.png')}")
              + (" (incomplete)" if interrupted else ""))
        if why:
            print(why, file=sys.stderr)
    return 130 if interrupted else 0

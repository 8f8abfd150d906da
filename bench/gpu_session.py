"""One prepared GPU session: every check that needs a GPU, in order, each step time-boxed.

``bash bench/gpu_session.sh`` installs the package for the GPU's architecture and then runs
``python -m bench.gpu_session --out DIR`` (from the repository root). The steps:

=============  =========================================================================
info           ``python -m ascan_kernels`` (text and JSON: what is available and why), the
               GPU, and two measured roofs: device-to-device copy bandwidth and a large
               bf16 matmul's rate (the roofline's ceilings on this very card)
parity         the kernel tests (:data:`PARITY_TESTS`) on the GPU: compiled Triton kernels,
               the CUDA C++ extension and the flash-attn backends against the eager
               reference at every dtype they test; counts, failures and skip reasons
ops            every distinct fused-op call of ``ascan_t`` and ``ascan_unet_c2i_b`` (bf16
               inference, batch 64), replayed with each impl that can run it (cuda,
               triton, flash_attn*, sdpa, eager) and with ``torch.compile`` of the eager
               reference (its first call per op), timed interleaved with CUDA events
classifiers    ``python -m ascan bench``: ascan_t/s/b/l, bf16, batch 1/16/64: eager, fused,
               fused with autotuned dispatch (which fills ``DIR/autotune.json``; the unets
               step fills it for the UNets: a later ``ASCAN_AUTOTUNE=1`` run reuses it)
compile        the same for ascan_t and ascan_b with ``torch.compile`` of the eager model
peers          ascan_t beside the timm peers (coatnet_0, maxvit_tiny, convnext_tiny,
               fastvit, efficientvit) at batch 64, if timm is installed
unets          ``python -m bench.generation_table``: the UNets, eager / fused / autotuned /
               compile, bf16
roofline       the roofline floors of the ops step's calls (this card's measured roofs and
               an H100's spec) beside the measured times: how far each op is from its floor
=============  =========================================================================

Each step runs in its own process under a time box (:data:`MODES`; the boxes add up to
under 8 minutes, 3 with ``--quick``); a step that overruns is stopped (with whatever it
started) and reported ``timed out`` with what it had written, and the session goes on. After
every step ``DIR/gpu_session.json`` (all results) and ``DIR/summary.md`` (the same, to read)
are rewritten atomically, so an interrupted session keeps what it measured. Per-step files sit
beside them (``<step>.json``, ``<step>.log``, the bench's own ``bench.json``).

Without a GPU every GPU step is reported ``skipped`` with the reason (``tests/
test_gpu_session.py`` checks that in CI). ``--rehearse-on-cpu`` runs every step on the CPU at
tiny shapes instead, to exercise the whole script before a GPU is lent: its numbers mean
nothing. ``--quick`` fits the steps in about 3 minutes (fewer models and batches).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import pathlib
import platform
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable

import torch

import ascan
import ascan_kernels as K
from ascan.cli.bench import write_json_atomic
from ascan.cli.tables import markdown_table
from ascan.export import example_inputs
from ascan_kernels.autotuning import TimingPolicy, cache_report, time_impls
from ascan_kernels.tools import report

FORMAT = 1
ROOT = pathlib.Path(__file__).resolve().parents[1]

# The kernel tests: every impl against the eager reference. On a GPU the Triton tests run the
# compiled kernels on CUDA tensors (tests/ops/_helpers.TRITON_DEV) and the CUDA and flash-attn
# sections stop skipping; without one they run the interpreter or skip ("no CUDA device").
PARITY_TESTS = ("tests/ops", "tests/test_triton_models.py", "tests/test_extension.py", "tests/test_fuzz_ops.py")


@dataclasses.dataclass(frozen=True)
class Mode:
    """What one kind of session runs: models, batches, rounds and each step's time box (s)."""

    device: str
    dtype: str                                   # the ops/model steps' dtype
    ops_models: tuple[tuple[str, int, int], ...]  # (model, batch, size): the ops step's calls
    ops_compile: int                             # at most this many (model, op) pairs also time torch.compile
    classifiers: tuple[str, ...]
    batches: tuple[int, ...]
    size: int
    compile_models: tuple[str, ...]
    compile_batches: tuple[int, ...]
    peers: tuple[str, ...] | None                # None: the bench's default peers
    peer_batch: int
    unet_cells: tuple[str, ...]
    unet_size: int | None
    unet_compile: bool
    runs: int
    warmup: int
    parity_args: tuple[str, ...]
    timebox: dict[str, float]


MODES: dict[str, Mode] = {
    "full": Mode(
        device="cuda", dtype="bf16",
        ops_models=(("ascan_t", 64, 224), ("ascan_unet_c2i_b", 64, 32)), ops_compile=100,
        classifiers=("ascan_t", "ascan_s", "ascan_b", "ascan_l"), batches=(1, 16, 64), size=224,
        compile_models=("ascan_t", "ascan_b"), compile_batches=(1, 64),
        peers=None, peer_batch=64,
        unet_cells=("ascan_unet_c2i_s:1,16", "ascan_unet_c2i_b:1,16,64", "ascan_unet_t2i_b:1,16"), unet_size=None,
        unet_compile=True, runs=20, warmup=5, parity_args=("-n", "auto"),
        timebox={"info": 30, "parity": 120, "ops": 90, "classifiers": 60, "compile": 60, "peers": 30,
                 "unets": 60, "roofline": 20}),
    "quick": Mode(
        device="cuda", dtype="bf16",
        ops_models=(("ascan_t", 64, 224),), ops_compile=0,
        classifiers=("ascan_t", "ascan_b"), batches=(1, 64), size=224,
        compile_models=("ascan_t",), compile_batches=(64,),
        peers=("coatnet_0_rw_224", "fastvit_sa12"), peer_batch=64,
        unet_cells=("ascan_unet_c2i_b:16",), unet_size=None, unet_compile=False,
        runs=10, warmup=3, parity_args=("-n", "auto", "-k", "bf16 and not fuzz"),
        timebox={"info": 20, "parity": 40, "ops": 30, "classifiers": 20, "compile": 25, "peers": 15,
                 "unets": 20, "roofline": 10}),
    # On the CPU at tiny shapes: exercises every step's code; the numbers mean nothing.
    "rehearsal": Mode(
        device="cpu", dtype="fp32",
        ops_models=(("ascan_t", 1, 64), ("ascan_unet_c2i_s", 1, 8)), ops_compile=1,
        classifiers=("ascan_t",), batches=(1,), size=64,
        compile_models=("ascan_t",), compile_batches=(1,),
        peers=("resnet18",), peer_batch=1,
        unet_cells=("ascan_unet_c2i_s:1",), unet_size=8, unet_compile=False,
        runs=2, warmup=1, parity_args=("-k", "test_layer_norm and cpu and not triton and fp32"),
        timebox={"info": 120, "parity": 240, "ops": 240, "classifiers": 240, "compile": 300, "peers": 240,
                 "unets": 300, "roofline": 120}),
}

TIMING = TimingPolicy(warmup=3, min_rounds=10, max_rounds=200, budget_s=0.25)


# ---------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    out: pathlib.Path
    mode_name: str
    python: str = sys.executable

    @property
    def mode(self) -> Mode:
        return MODES[self.mode_name]

    def path(self, name: str) -> pathlib.Path:
        return self.out / name

    def read_json(self, name: str) -> Any:
        """A step's JSON file, or None where it is missing or unreadable (a step killed early)."""
        try:
            return json.loads(self.path(name).read_text())
        except (OSError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class Step:
    """One time-boxed step: ``argv(ctx)`` is the command it runs (its own process);
    ``summarize(ctx)`` reads what it wrote into (one line, markdown section, JSON)."""

    name: str
    what: str
    needs_gpu: bool
    argv: Callable[[Context], list[str]]
    summarize: Callable[[Context], tuple[str, str, Any]]


def _self(step: str) -> Callable[[Context], list[str]]:
    """The argv that runs ``step`` in-process code of this module in a child process."""
    return lambda ctx: [ctx.python, "-m", "bench.gpu_session", "--step", step, "--out", str(ctx.out),
                        "--mode", ctx.mode_name]


def _csv(xs) -> str:
    return ",".join(str(x) for x in xs)


def _bench_argv(ctx: Context, sub: str, models, batches, *extra: str) -> list[str]:
    m = ctx.mode
    return [ctx.python, "-m", "ascan", "bench", "--device", m.device, "--models", _csv(models),
            "--dtype", m.dtype, "--batch", _csv(batches), "--size", str(m.size), "--runs", str(m.runs),
            "--warmup", str(m.warmup), "--runtimes", "none", "--autotune-cache", str(ctx.path("autotune.json")),
            "--out", str(ctx.path(sub)), *extra]


# -- info --------------------------------------------------------------------------------
def measure_roofs(device: torch.device, big: bool = True) -> dict[str, float]:
    """Device-to-device copy GB/s (bytes read + written) and bf16 (fp32 on a CPU) matmul
    TFLOP/s, best of several: this card's ceilings for the roofline."""
    n_copy = (1 << 30) if big else (1 << 22)
    n_mm = 8192 if big else 256
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    src = torch.empty(n_copy, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    a = torch.randn(n_mm, n_mm, device=device).to(dt)
    b = torch.randn(n_mm, n_mm, device=device).to(dt)
    copy_ms, _ = time_impls({"copy": lambda: dst.copy_(src)}, device, TimingPolicy(2, 5, 20, 0.5))
    mm_ms, _ = time_impls({"mm": lambda: torch.mm(a, b)}, device, TimingPolicy(2, 5, 20, 1.0))
    return {"copy_gb_s": 2 * n_copy / (copy_ms["copy"] * 1e-3) / 1e9,
            "mm_tflop_s": 2 * n_mm ** 3 / (mm_ms["mm"] * 1e-3) / 1e12,
            "mm_dtype": str(dt).replace("torch.", ""), "mm_n": n_mm, "copy_bytes": n_copy}


def step_info(ctx: Context) -> None:
    text = subprocess.run([ctx.python, "-m", "ascan_kernels"], capture_output=True, text=True, cwd=ROOT)
    js = subprocess.run([ctx.python, "-m", "ascan_kernels", "--json"], capture_output=True, text=True, cwd=ROOT)
    ctx.path("info.txt").write_text(text.stdout + text.stderr)
    try:
        available = json.loads(js.stdout)
    except ValueError:
        available = {"error": f"python -m ascan_kernels --json exited {js.returncode}: {js.stderr[-500:]}"}
    device = torch.device(ctx.mode.device)
    missing = no_gpu_reason() if device.type == "cuda" else None
    data: dict[str, Any] = {"report": available, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "device": str(device), "cuda_available": torch.cuda.is_available()}
    if device.type == "cuda" and not missing:
        p = torch.cuda.get_device_properties(device)
        data["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                       "memory_gib": round(p.total_memory / 2 ** 30, 1)}
    write_json_atomic(str(ctx.path("info.json")), data)
    if missing:
        data["roofs_skipped"] = missing
    else:
        data["roofs"] = measure_roofs(device, big=device.type == "cuda")
    write_json_atomic(str(ctx.path("info.json")), data)


def summarize_info(ctx: Context) -> tuple[str, str, Any]:
    data = ctx.read_json("info.json") or {}
    gpu = data.get("gpu")
    roofs = data.get("roofs") or {}
    line = (f"{gpu['name']} (sm_{gpu['capability'].replace('.', '')}, {gpu['sms']} SMs, {gpu['memory_gib']} GiB)"
            if gpu else "no GPU" if data.get("roofs_skipped") else f"device {data.get('device', '?')}")
    if roofs:
        line += f"; measured {roofs['copy_gb_s']:.0f} GB/s copy, {roofs['mm_tflop_s']:.1f} TFLOP/s {roofs['mm_dtype']} mm"
    elif data.get("roofs_skipped"):
        line += f"; roofs not measured: {data['roofs_skipped']}"
    text = ""
    if ctx.path("info.txt").exists():
        text = "```\n" + ctx.path("info.txt").read_text().strip() + "\n```"
    return line, text, data


# -- parity ------------------------------------------------------------------------------
def parity_argv(ctx: Context) -> list[str]:
    extra = list(ctx.mode.parity_args)
    if "-n" in extra:
        try:
            import xdist  # noqa: F401  - the kernel tests compile many Triton kernels: spread them
        except ImportError:
            i = extra.index("-n")
            del extra[i:i + 2]
    # -v: one line per test as it ends, so a time-boxed (killed) run still says what it did
    return [ctx.python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE",
            f"--junitxml={ctx.path('parity.xml')}", *PARITY_TESTS, *extra]


def parse_junit(path: pathlib.Path) -> dict[str, Any]:
    """Counts, failures (test id + first line of the message) and skip reasons (with counts)
    of a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures: list[dict[str, str]] = []
    skips: dict[str, int] = {}
    for case in root.iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {c.tag: c for c in case}
        if "failure" in kinds or "error" in kinds:
            tag = "failure" if "failure" in kinds else "error"
            counts["failed" if tag == "failure" else "error"] += 1
            msg = (kinds[tag].get("message") or kinds[tag].text or "").strip().splitlines()
            failures.append({"test": tid, "kind": tag, "message": (msg[0] if msg else "")[:300]})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = (kinds["skipped"].get("message") or "").strip()
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return {"counts": counts, "failures": failures,
            "skip_reasons": dict(sorted(skips.items(), key=lambda kv: -kv[1]))}


_OUTCOME = re.compile(r"^(?:\[gw\d+\] \[\s*\d+%\] (?P<a>PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) (?P<ida>\S+)"
                      r"|(?P<idb>\S+::\S+) (?P<b>PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b)")


def parse_pytest_log(path: pathlib.Path) -> dict[str, Any]:
    """Counts and failed test ids from ``pytest -v`` output (with or without xdist's ``-n``):
    what a run stopped before its JUnit file was written still tells."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures = []
    names = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "error",
             "SKIPPED": "skipped", "XFAIL": "skipped"}
    for line in path.read_text(errors="replace").splitlines():
        m = _OUTCOME.match(line)
        if not m:
            continue
        outcome, tid = (m["a"], m["ida"]) if m["a"] else (m["b"], m["idb"])
        counts[names[outcome]] += 1
        if outcome in ("FAILED", "ERROR"):
            failures.append({"test": tid, "kind": outcome.lower(), "message": "(see parity.log)"})
    return {"counts": counts, "failures": failures, "skip_reasons": {}, "from": "log"}


def summarize_parity(ctx: Context) -> tuple[str, str, Any]:
    xml, log = ctx.path("parity.xml"), ctx.path("parity.log")
    data, note = None, ""
    if xml.exists():
        try:
            data = parse_junit(xml)
        except ET.ParseError as e:
            note = f" (unreadable JUnit file: {e})"
    if data is None:
        if not log.exists():
            return "no JUnit file and no log", "", None
        data = parse_pytest_log(log)
        note = note or " (counted from parity.log: pytest stopped before writing its JUnit file)"
    c = data["counts"]
    line = f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped{note}"
    parts = []
    if data["failures"]:
        parts.append(markdown_table([("test", "kind", "message")] +
                                    [(f["test"], f["kind"], f["message"].replace("|", "/")) for f in data["failures"]]))
    if data["skip_reasons"]:
        parts.append("Skip reasons (count):\n\n" + "\n".join(f"- {n} x {r}" for r, n in list(data["skip_reasons"].items())[:15]))
    return line, "\n\n".join(parts), data


# -- ops ---------------------------------------------------------------------------------
def call_key(op: str, args_summary: tuple) -> str:
    """The join key of one distinct call between the ops step and the roofline (the trace's
    ``(op, args)`` summary, as text)."""
    return repr((op, args_summary))


def _model_and_inputs(name: str, batch: int, size: int, device: torch.device, dtype: torch.dtype):
    """The fused model in eval mode on ``device`` in ``dtype`` (the roofline's bf16 inference:
    weights and activations in bf16, not autocast), with its example inputs at that dtype."""
    torch.manual_seed(0)
    model = ascan.build_model(name, fused=True).eval().to(device=device, dtype=dtype)
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in example_inputs(model, batch=batch, size=size))
    if inputs[0].dim() == 4 and not name.startswith("ascan_unet"):
        inputs = (inputs[0].contiguous(memory_format=torch.channels_last),) + inputs[1:]
    return model, inputs


def time_call(op_name: str, args: tuple, kwargs: dict, device: torch.device, with_compile: bool,
              policy: TimingPolicy = TIMING) -> dict[str, Any]:
    """Every impl of ``op_name`` that can run these inputs (and ``torch.compile`` of the eager
    reference), timed interleaved; the impls that cannot, with the registry's reason."""
    op = K.get_op(op_name)
    fns: dict[str, Callable[[], Any]] = {}
    not_run: dict[str, str] = {}
    for impl in op.impls:
        reason = None if impl.name == "eager" else op.why_not(impl, args, kwargs, False)
        if reason is None and impl.caps is not None:
            reason = impl.caps.untimed_reason(device.type)
        if reason is None:
            fns[impl.name] = lambda impl=impl: impl.fn(*args, **kwargs)
        else:
            not_run[impl.name] = reason
    if with_compile:
        compiled = torch.compile(op.reference, dynamic=False)
        fns["compile"] = lambda: compiled(*args, **kwargs)
    else:
        not_run["compile"] = "torch.compile timed on the first call of each op only (or not in this mode)"
    with torch.no_grad():
        ms, errors = time_impls(fns, device, policy)
    default = op.select(args, kwargs)[0].name
    impls_only = {k: v for k, v in ms.items() if k != "compile"}
    return {"ms": ms, "errors": errors, "not_run": not_run, "default": default,
            "best": min(impls_only, key=impls_only.get) if impls_only else None}


def step_ops(ctx: Context) -> None:
    m = ctx.mode
    device = torch.device(m.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[m.dtype]
    data: dict[str, Any] = {"device": str(device), "dtype": m.dtype, "timing": dataclasses.asdict(TIMING),
                            "models": [], "calls": [], "complete": False}
    compile_left = m.ops_compile
    for name, batch, size in m.ops_models:
        model, inputs = _model_and_inputs(name, batch, size, device, dtype)
        with torch.no_grad(), K.trace(keep_inputs=True) as t:
            model(*inputs)
        del model
        counts: dict[tuple, int] = {}
        for r in t.records:
            counts[(r.op, r.args)] = counts.get((r.op, r.args), 0) + 1
        data["models"].append({"model": name, "batch": batch, "size": size, "distinct_calls": len(t.inputs)})
        compiled_ops: set[str] = set()
        for (op, summary), (args, kwargs) in t.inputs.items():
            # torch.compile of the reference costs seconds per call: its first call per op only
            with_compile = compile_left > 0 and op not in compiled_ops
            if with_compile:
                compiled_ops.add(op)
                compile_left -= 1
            row = {"model": name, "op": op, "shape": report.call_costs(op, summary)[2],
                   "calls": counts.get((op, summary), 1), "key": call_key(op, summary)}
            row.update(time_call(op, args, kwargs, device, with_compile))
            data["calls"].append(row)
            write_json_atomic(str(ctx.path("ops.json")), data)
        del t
        if device.type == "cuda":
            torch.cuda.empty_cache()
    data["complete"] = True
    write_json_atomic(str(ctx.path("ops.json")), data)


def _us(ms: float | None) -> str:
    return "-" if ms is None else f"{ms * 1e3:.1f}"


def summarize_ops(ctx: Context) -> tuple[str, str, Any]:
    data = ctx.read_json("ops.json")
    if not data or not data.get("calls"):
        return "no op timed", "", data
    impls = sorted({k for c in data["calls"] for k in c["ms"]}, key=lambda k: (k == "compile", k))
    rows = [("model", "op", "shape", "calls", "default", *(f"{k} us" for k in impls), "fastest", "default / fastest")]
    slower = 0
    for c in data["calls"]:
        best = c["best"]
        d, b = c["ms"].get(c["default"]), c["ms"].get(best) if best else None
        ratio = d / b if d and b else None
        slower += ratio is not None and ratio > 1.1
        rows.append((c["model"], c["op"], c["shape"], str(c["calls"]), c["default"],
                     *(_us(c["ms"].get(k)) for k in impls), best or "-", f"{ratio:.2f}x" if ratio else "-"))
    not_run = sorted({f"{k}: {v}" for c in data["calls"] for k, v in c["not_run"].items()})
    errors = sorted({f"{k}: {v}" for c in data["calls"] for k, v in c["errors"].items()})
    text = markdown_table(rows, right={3, *range(5, 5 + len(impls)), len(rows[0]) - 1})
    if errors:
        text += "\n\nImpls that raised while timed:\n\n" + "\n".join(f"- {e}" for e in errors)
    if not_run:
        text += "\n\nNot timed (the registry's reason):\n\n" + "\n".join(f"- {e}" for e in not_run[:20])
    line = (f"{len(data['calls'])} distinct calls timed ({data['dtype']}); the registry's default is >10% slower "
            f"than the fastest impl on {slower}" + ("" if data.get("complete") else " (incomplete)"))
    return line, text, data


# -- the model steps (python -m ascan bench / bench.generation_table) ----------------------
def classifiers_argv(ctx: Context) -> list[str]:
    m = ctx.mode
    return _bench_argv(ctx, "classifiers", m.classifiers, m.batches, "--autotune", "--no-peers")


def compile_argv(ctx: Context) -> list[str]:
    m = ctx.mode
    return _bench_argv(ctx, "compile", m.compile_models, m.compile_batches, "--compile", "--no-peers", "--no-peak")


def peers_argv(ctx: Context) -> list[str]:
    m = ctx.mode
    peers = ["--peers", _csv(m.peers)] if m.peers is not None else []
    return _bench_argv(ctx, "peers", m.classifiers[:1], (m.peer_batch,), "--ref", m.classifiers[0], *peers,
                       "--no-peak")


def unets_argv(ctx: Context) -> list[str]:
    m = ctx.mode
    return [ctx.python, "-m", "bench.generation_table", "--device", m.device, "--dtype", m.dtype,
            "--cells", *m.unet_cells, "--runs", str(m.runs), "--warmup", str(m.warmup),
            *(() if m.unet_compile else ("--no-compile",)),
            "--autotune-cache", str(ctx.path("autotune.json")), "--json", str(ctx.path("unets.json")),
            *(["--size", str(m.unet_size)] if m.unet_size else [])]


def _bench_summary(sub: str) -> Callable[[Context], tuple[str, str, Any]]:
    def summarize(ctx: Context) -> tuple[str, str, Any]:
        data = ctx.read_json(f"{sub}/bench.json")
        if not data:
            return "no bench.json", "", None
        rows = [r for r in data["rows"] if not r.get("note")]
        table = ctx.path(f"{sub}/table.md")
        text = table.read_text().strip() if table.exists() else ""
        done = "" if data.get("complete") else " (incomplete: the time box ended it)"
        speed = [f"{r['model']} b{r['batch']} {r['speedup']:.2f}x" for r in rows if r.get("speedup")]
        line = f"{len(rows)} rows{done}" + (f"; fused vs eager: {', '.join(speed[:6])}" if speed else "")
        return line, text, data
    return summarize


def summarize_unets(ctx: Context) -> tuple[str, str, Any]:
    data = ctx.read_json("unets.json")
    if not data:
        return "no unets.json", "", None
    rows = [("model", "batch", "eager ms", "fused ms", "autotuned ms", "compile ms")]
    for r in data["rows"]:
        rows.append((r["model"], str(r["batch"]), *(f"{r[k]['median_ms']:.2f}" if r.get(k) else "-"
                                                   for k in ("eager", "fused", "tuned", "compiled"))))
    done = "" if data.get("complete") else " (incomplete: the time box ended it)"
    return f"{len(data['rows'])} rows{done}", markdown_table(rows, right={1, 2, 3, 4, 5}), data


# -- roofline ----------------------------------------------------------------------------
def step_roofline(ctx: Context) -> None:
    info = ctx.read_json("info.json") or {}
    ops = ctx.read_json("ops.json") or {"calls": [], "models": []}
    roofs = info.get("roofs") or {}
    measured = {c["key"]: c for c in ops["calls"]}
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[ctx.mode.dtype]
    rows = []
    for name, batch, size in ctx.mode.ops_models:
        for op, summary, count in report.model_calls(name, batch, size, dtype=dtype):
            fused, eager, desc = report.call_costs(op, summary)
            row = {"model": name, "batch": batch, "op": op, "shape": desc, "calls": count,
                   "gflop": fused.flops / 1e9, "fused_mb": fused.bytes / 1e6,
                   "floor_h100_us": fused.floor_s() * 1e6,
                   "eager_floor_h100_us": sum(c.floor_s() for c in eager) * 1e6}
            if roofs:
                bw, fl = roofs["copy_gb_s"] * 1e9, roofs["mm_tflop_s"] * 1e12
                row["floor_here_us"] = fused.floor_s(bw, fl) * 1e6
            m = measured.get(call_key(op, summary))
            if m:
                row["default"], row["default_us"] = m["default"], (m["ms"].get(m["default"]) or 0) * 1e3 or None
                row["best"], row["best_us"] = m["best"], (m["ms"].get(m["best"]) or 0) * 1e3 or None
                row["eager_us"] = (m["ms"].get("eager") or 0) * 1e3 or None
            rows.append(row)
    write_json_atomic(str(ctx.path("roofline.json")), {"roofs": roofs, "rows": rows,
                                                       "h100": {"bytes_per_s": report.H100_BYTES_PER_S,
                                                                "flops_per_s": report.H100_BF16_FLOPS}})


def summarize_roofline(ctx: Context) -> tuple[str, str, Any]:
    data = ctx.read_json("roofline.json")
    if not data or not data["rows"]:
        return "no roofline rows", "", data
    here = "floor_here_us" in data["rows"][0]
    head = ("model", "op", "shape", "calls", "H100 floor us", *(("floor here us",) if here else ()),
            "eager us", "default us (impl)", "fastest us (impl)", "floor / fastest")
    rows = [head]
    tot = {"floor": 0.0, "default": 0.0, "best": 0.0, "eager": 0.0}
    timed_all = True
    for r in data["rows"]:
        floor = r["floor_here_us"] if here else r["floor_h100_us"]
        eff = floor / r["best_us"] if r.get("best_us") else None
        rows.append((r["model"], r["op"], r["shape"], str(r["calls"]), f"{r['floor_h100_us']:.1f}",
                     *((f"{r['floor_here_us']:.1f}",) if here else ()),
                     f"{r['eager_us']:.1f}" if r.get("eager_us") else "-",
                     f"{r['default_us']:.1f} ({r['default']})" if r.get("default_us") else "-",
                     f"{r['best_us']:.1f} ({r['best']})" if r.get("best_us") else "-",
                     f"{100 * eff:.0f}%" if eff else "-"))
        if r.get("best_us") and r.get("default_us") and r.get("eager_us"):
            tot["floor"] += floor * r["calls"]
            tot["default"] += r["default_us"] * r["calls"]
            tot["best"] += r["best_us"] * r["calls"]
            tot["eager"] += r["eager_us"] * r["calls"]
        else:
            timed_all = False
    roofs = data.get("roofs") or {}
    line = (f"{len(data['rows'])} calls; fused-op time with the default impls {tot['default'] / 1e3:.2f} ms vs "
            f"floor {tot['floor'] / 1e3:.2f} ms ({100 * tot['floor'] / tot['default']:.0f}% of the floor), eager "
            f"{tot['eager'] / 1e3:.2f} ms" if tot["default"] else f"{len(data['rows'])} calls; nothing measured")
    if not timed_all:
        line += " (totals over the calls the ops step timed)"
    note = ("Floors: max(bytes / bandwidth, FLOPs / rate) per kernel (`ascan_kernels.tools.report`); "
            f"H100: {report.H100_BYTES_PER_S / 1e12:.1f} TB/s, {report.H100_BF16_FLOPS / 1e12:.0f} TFLOP/s"
            + (f"; here (measured in the info step): {roofs['copy_gb_s']:.0f} GB/s copy, "
               f"{roofs['mm_tflop_s']:.1f} TFLOP/s {roofs['mm_dtype']} mm" if roofs else "")
            + ". floor / fastest: the fraction of its floor the fastest impl reaches.")
    return line, markdown_table(rows, right=set(range(3, len(head)))) + "\n\n" + note, data


STEPS: tuple[Step, ...] = (
    Step("info", "what is available and why; the GPU; measured roofs", False, _self("info"), summarize_info),
    Step("parity", "kernel tests on the GPU (compiled Triton, CUDA C++, flash-attn vs eager)", True,
         parity_argv, summarize_parity),
    Step("ops", "every impl and torch.compile per distinct fused-op call (CUDA events)", True,
         _self("ops"), summarize_ops),
    Step("classifiers", "ascan_t/s/b/l eager vs fused vs autotuned", True, classifiers_argv,
         _bench_summary("classifiers")),
    Step("compile", "fused vs torch.compile of the eager model", True, compile_argv, _bench_summary("compile")),
    Step("peers", "ascan_t beside timm peers", True, peers_argv, _bench_summary("peers")),
    Step("unets", "the UNets: eager / fused / autotuned / compile", True, unets_argv, summarize_unets),
    Step("roofline", "floors beside the ops step's measured times", True, _self("roofline"), summarize_roofline),
)
IN_PROCESS = {"info": step_info, "ops": step_ops, "roofline": step_roofline}


# ---------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------
def no_gpu_reason() -> str | None:
    """Why the GPU steps cannot run here, or None where a CUDA device is usable."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"no CUDA device: this torch ({torch.__version__}) is a CPU-only build"
    return f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {torch.version.cuda})"


def run_step(step: Step, ctx: Context, timebox: float) -> dict[str, Any]:
    """Run one step in its own process under ``timebox`` seconds; its output goes to
    ``<step>.log``. Returns status, seconds, returncode, the command and its summary."""
    argv = step.argv(ctx)
    log = ctx.path(f"{step.name}.log")
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timebox)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status = None, "timed out"
    took = time.perf_counter() - start
    result: dict[str, Any] = {"name": step.name, "what": step.what, "status": status, "seconds": round(took, 1),
                              "timebox_s": timebox, "returncode": rc, "command": argv, "log": log.name}
    if status == "failed":
        result["reason"] = f"exited {rc}: " + _last_line(log)
    elif status == "timed out":
        result["reason"] = f"stopped after its time box of {timebox:.0f} s; what it wrote is kept"
    try:
        result["summary"], result["markdown"], result["data"] = step.summarize(ctx)
    except Exception as e:  # a summary must never end the session
        result["summary"], result["markdown"], result["data"] = f"summary failed: {type(e).__name__}: {e}", "", None
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a step and whatever it started (its own process group): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(log: pathlib.Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_outputs(ctx: Context, session: dict[str, Any]) -> None:
    """Rewrite ``gpu_session.json`` and ``summary.md`` atomically."""
    write_json_atomic(str(ctx.path("gpu_session.json")), session)
    md = format_summary(session)
    K.atomic_write(str(ctx.path("summary.md")), lambda tmp: pathlib.Path(tmp).write_text(md))


def format_summary(session: dict[str, Any]) -> str:
    mode = session["mode"]
    head = [f"# GPU session: {session['started']} (mode {mode}, commit {session.get('commit') or '?'})", ""]
    if mode == "rehearsal":
        head += ["**Rehearsal on the CPU at tiny shapes: this exercises the script; its numbers mean nothing.**", ""]
    inst = session.get("install")
    if inst:
        head += [f"Install: {inst.get('status')} in {inst.get('seconds', '?')} s "
                 f"(TORCH_CUDA_ARCH_LIST={inst.get('arch') or '-'}, MAX_JOBS={inst.get('jobs', '?')})"
                 + (f": {inst['reason']}" if inst.get("reason") else ""), ""]
    total = sum(s["seconds"] for s in session["steps"])
    head += [f"Steps: {total:.0f} s in all" + ("" if session["complete"] else " so far (the session is still running or was cut short)"), ""]
    table = [("step", "status", "s", "box s", "result")]
    for s in session["steps"]:
        result = s.get("reason") if s["status"] == "skipped" else s.get("summary", "")
        if s["status"] in ("failed", "timed out"):
            result = f"{s['reason']}. {s.get('summary', '')}"
        table.append((s["name"], s["status"], f"{s['seconds']:.0f}", f"{s.get('timebox_s', 0):.0f}",
                      (result or "").replace("|", "/")))
    out = head + [markdown_table(table, right={2, 3}), ""]
    tuned = session.get("autotune")
    if tuned:
        out += [f"Autotune cache: {tuned['decisions']} decisions in `{pathlib.Path(tuned['path']).name}` "
                f"(ASCAN_AUTOTUNE=1 ASCAN_AUTOTUNE_CACHE=<it> reuses them on this GPU).", ""]
    for s in session["steps"]:
        if s.get("markdown"):
            out += [f"## {s['name']}: {s['what']}", "", s["markdown"], ""]
    return "\n".join(out)


def run_session(ctx: Context, only: list[str] | None = None, install: dict | None = None,
                steps: tuple[Step, ...] = STEPS, timebox: dict[str, float] | None = None) -> dict[str, Any]:
    """Every step in order (or those in ``only``); GPU steps skipped with the reason where the
    mode's device is a GPU and none is usable. Outputs rewritten after every step. ``timebox``
    (seconds per step name) defaults to the mode's."""
    timebox = timebox or ctx.mode.timebox
    ctx.out.mkdir(parents=True, exist_ok=True)
    session: dict[str, Any] = {
        "format": FORMAT, "complete": False, "mode": ctx.mode_name,
        "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "commit": _git_commit(), "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "ascan": ascan.__version__, "install": install, "steps": []}
    gpu_missing = no_gpu_reason() if ctx.mode.device == "cuda" else None
    for step in steps:
        if only and step.name not in only:
            continue
        print(f"gpu_session: {step.name} ...", file=sys.stderr, flush=True)
        if step.needs_gpu and gpu_missing:
            result = {"name": step.name, "what": step.what, "status": "skipped", "seconds": 0.0,
                      "timebox_s": timebox[step.name], "reason": gpu_missing}
        else:
            result = run_step(step, ctx, timebox[step.name])
        print(f"gpu_session: {step.name}: {result['status']} in {result['seconds']:.0f} s: "
              f"{result.get('reason') or result.get('summary', '')}", file=sys.stderr, flush=True)
        session["steps"].append(result)
        write_outputs(ctx, session)
    cache = ctx.path("autotune.json")
    if cache.exists():
        rep = cache_report(cache)
        session["autotune"] = {"path": str(cache), "decisions": sum(len(e["decisions"]) for e in rep["environments"]),
                               "environments": [e["key"] for e in rep["environments"]]}
    session["complete"] = True
    write_outputs(ctx, session)
    return session


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_session", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="output folder (default: gpu-session-<UTC time>)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="fewer models and batches: about 3 minutes")
    g.add_argument("--rehearse-on-cpu", action="store_true",
                   help="run every step on the CPU at tiny shapes (exercises the script; numbers mean nothing)")
    g.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None, help="comma list of steps to run (default: all): "
                                                 + ",".join(s.name for s in STEPS))
    ap.add_argument("--install-json", default=None, help=argparse.SUPPRESS)  # written by gpu_session.sh
    ap.add_argument("--step", choices=sorted(IN_PROCESS), help=argparse.SUPPRESS)  # a child's one step
    args = ap.parse_args(argv)
    mode = args.mode or ("quick" if args.quick else "rehearsal" if args.rehearse_on_cpu else "full")
    out = pathlib.Path(args.out or f"gpu-session-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}").resolve()
    ctx = Context(out=out, mode_name=mode)
    if args.step:
        IN_PROCESS[args.step](ctx)
        return 0
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    bad = [s for s in only or [] if s not in {st.name for st in STEPS}]
    if bad:
        ap.error(f"--only: unknown step(s) {bad}; steps: {', '.join(s.name for s in STEPS)}")
    install = None
    if args.install_json:
        try:
            install = json.loads(pathlib.Path(args.install_json).read_text())
        except (OSError, ValueError) as e:
            install = {"status": "unknown", "reason": f"unreadable {args.install_json}: {e}"}
    session = run_session(ctx, only, install)
    print((ctx.path("summary.md")).read_text())
    print(f"gpu_session: results in {ctx.path('gpu_session.json')} and {ctx.path('summary.md')}", file=sys.stderr)
    return 0 if all(s["status"] in ("ok", "skipped") for s in session["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())

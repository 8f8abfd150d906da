"""``python -m ascan bench``: latency of the AsCAN classifiers (and timm peers) on this machine.

For each model, dtype and batch size: parameters and MACs (counted by code), the
latency of the eager model (``fused=False``), of the fused model (``fused=True``),
optionally of ``torch.compile`` of the eager model, the fused speedup and the
throughput. Each latency is the median of ``--runs`` timed forwards after
``--warmup`` untimed ones, with the interquartile range as the spread. Peers (timm
models of the same class as in the paper's comparisons) get the same measurement
when timm is installed. Output: a table on the terminal, and with ``--out DIR`` a
JSON file and a PNG plot (latency vs parameters).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

# The paper compares against hybrid and efficient-attention nets of the same class.
DEFAULT_PEERS = ("coatnet_0_rw_224", "maxvit_tiny_tf_224", "convnext_tiny", "fastvit_sa12", "efficientvit_b1")


@dataclasses.dataclass
class Timing:
    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int

    @property
    def spread(self) -> str:
        return f"{self.q1_ms:.1f}-{self.q3_ms:.1f}"


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
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.eager is None or self.fused is None:
            return None
        return self.eager.median_ms / self.fused.median_ms

    @property
    def best(self) -> Timing | None:
        ts = [t for t in (self.fused, self.eager, self.compiled) if t is not None]
        return min(ts, key=lambda t: t.median_ms) if ts else None

    @property
    def throughput(self) -> float | None:
        t = self.fused or self.eager
        return None if t is None else self.batch / (t.median_ms / 1e3)


def time_fn(fn: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> Timing:
    """Median/IQR in ms of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return Timing(statistics.median(ts), q[0], q[2], runs)


class Progress:
    """A one-line progress bar on stderr (no dependency); silent when not a terminal."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)
            return
        width = 30
        fill = int(width * self.done / self.total)
        el = time.perf_counter() - self.t0
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {el:5.0f}s {label:<50.50}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def _count(model_fn: Callable[[], torch.nn.Module], size: int) -> tuple[float, float | None]:
    from .complexity import count_macs, count_params

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


def run_bench(models: list[str], dtypes: list[str], batches: list[int], size: int, device: torch.device,
              runs: int, warmup: int, compile_: bool, peers: list[str], progress: bool = True) -> list[Row]:
    """Measure every (model, dtype, batch); returns the rows (see :class:`Row`)."""
    from .registry import build_model

    per_cell = 2 + int(compile_)
    total = len(models) * len(dtypes) * len(batches) * per_cell + len(peers) * len(dtypes) * len(batches) * (1 + int(compile_))
    bar = Progress(total, progress)
    rows: list[Row] = []
    for name in models:
        params, macs = _count(lambda: build_model(name, fused=False), size)
        torch.manual_seed(0)
        eager = build_model(name, fused=False).eval().to(device)
        fused = build_model(name, fused=True).eval().to(device)
        fused.load_state_dict(eager.state_dict())
        compiled = torch.compile(eager) if compile_ else None
        for dtype in dtypes:
            for b in batches:
                x = torch.randn(b, 3, size, size, device=device)
                row = Row(name, "ascan", dtype, b, size, params, macs)
                with torch.no_grad(), _autocast(device, dtype):
                    bar.step(f"{name} {dtype} b{b} eager")
                    row.eager = time_fn(lambda: eager(x), runs, warmup, device)
                    bar.step(f"{name} {dtype} b{b} fused")
                    row.fused = time_fn(lambda: fused(x), runs, warmup, device)
                    if compiled is not None:
                        bar.step(f"{name} {dtype} b{b} compile")
                        row.compiled = time_fn(lambda: compiled(x), runs, warmup, device)
                rows.append(row)
    for name in peers:
        try:
            build = _peer_builder(name)
            params, macs = _count(build, size)
            torch.manual_seed(0)
            model = build().eval().to(device)
        except Exception as e:
            rows.append(Row(name, "peer", dtypes[0], batches[0], size, float("nan"), None,
                            note=f"could not build: {type(e).__name__}: {e}"))
            bar.done += len(dtypes) * len(batches) * (1 + int(compile_))
            continue
        compiled = torch.compile(model) if compile_ else None
        for dtype in dtypes:
            for b in batches:
                x = torch.randn(b, 3, size, size, device=device)
                row = Row(name, "peer", dtype, b, size, params, macs)
                with torch.no_grad(), _autocast(device, dtype):
                    bar.step(f"{name} {dtype} b{b}")
                    row.eager = time_fn(lambda: model(x), runs, warmup, device)
                    if compiled is not None:
                        bar.step(f"{name} {dtype} b{b} compile")
                        row.compiled = time_fn(lambda: compiled(x), runs, warmup, device)
                rows.append(row)
    return rows


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": str(device),
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(rows: list[Row]) -> str:
    """Markdown table of the rows (ms are medians; the spread is the IQR)."""
    head = ("model", "dtype", "batch", "params (M)", "MACs (G)", "eager ms", "fused ms", "speedup",
            "compile ms", "img/s", "spread (fused IQR ms)")
    out = [head]
    for r in rows:
        if r.note:
            out.append((r.model, r.dtype, str(r.batch), "", "", "", "", "", "", "", r.note))
            continue
        out.append((
            r.model + (" (timm)" if r.kind == "peer" else ""), r.dtype, str(r.batch), f"{r.params_m:.1f}",
            f"{r.macs_g:.2f}" if r.macs_g is not None else "?",
            f"{r.eager.median_ms:.1f}" if r.eager else "-",
            f"{r.fused.median_ms:.1f}" if r.fused else "-",
            f"{r.speedup:.2f}x" if r.speedup else "-",
            f"{r.compiled.median_ms:.1f}" if r.compiled else "-",
            f"{r.throughput:.1f}" if r.throughput else "-",
            (r.fused or r.eager).spread if (r.fused or r.eager) else "-",
        ))
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in out]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def to_json(rows: list[Row], info: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    def t(x):
        return None if x is None else dataclasses.asdict(x)
    return {"machine": info, "args": args, "rows": [
        {"model": r.model, "kind": r.kind, "dtype": r.dtype, "batch": r.batch, "size": r.size,
         "params_m": r.params_m, "macs_g": r.macs_g, "eager": t(r.eager), "fused": t(r.fused),
         "compiled": t(r.compiled), "speedup": r.speedup, "throughput": r.throughput, "note": r.note}
        for r in rows]}


def plot(rows: list[Row], path: str, info: dict[str, Any]) -> str | None:
    """Latency vs params: AsCAN variants as a line per (dtype, batch), peers as points."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    fig, ax = plt.subplots(figsize=(7.5, 5))
    cells = sorted({(r.dtype, r.batch) for r in rows if not r.note})
    for dtype, b in cells:
        ours = sorted((r for r in rows if r.kind == "ascan" and (r.dtype, r.batch) == (dtype, b)),
                      key=lambda r: r.params_m)
        if ours:
            line, = ax.plot([r.params_m for r in ours], [r.fused.median_ms for r in ours], "o-",
                            label=f"AsCAN fused ({dtype}, b{b})")
            ax.plot([r.params_m for r in ours], [r.eager.median_ms for r in ours], "o--", alpha=0.4,
                    color=line.get_color(), label=f"AsCAN eager ({dtype}, b{b})")
            for r in ours:
                ax.annotate(r.model, (r.params_m, r.fused.median_ms), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        peers = [r for r in rows if r.kind == "peer" and not r.note and (r.dtype, r.batch) == (dtype, b)]
        if peers:
            sc = ax.scatter([r.params_m for r in peers], [r.eager.median_ms for r in peers], marker="s",
                            label=f"timm peers ({dtype}, b{b})")
            for r in peers:
                ax.annotate(r.model, (r.params_m, r.eager.median_ms), fontsize=7, xytext=(3, -9),
                            textcoords="offset points", color=sc.get_facecolor()[0])
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("latency (ms, median)")
    where = info.get("gpu") or f"{info['cpu']}, {info['threads']} threads"
    ax.set_title(f"latency vs parameters at {rows[0].size}x{rows[0].size} on {where}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _csv(s: str, cast=str) -> list:
    return [cast(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    from .config import CONFIGS

    ap = argparse.ArgumentParser(prog="python -m ascan bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", type=_csv, default=list(CONFIGS), help="comma list (default: all classifiers)")
    ap.add_argument("--dtype", type=_csv, default=["fp32", "bf16"], help="fp32,bf16,fp16 (low precision via autocast)")
    ap.add_argument("--batch", type=lambda s: _csv(s, int), default=[1, 16])
    ap.add_argument("--size", type=int, default=224, help="input resolution")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the eager model")
    ap.add_argument("--peers", type=_csv, default=None,
                    help=f"timm models to compare (default when timm is installed: {','.join(DEFAULT_PEERS)})")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", help="directory for bench.json and bench.png")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = ap.parse_args(argv)

    bad = [m for m in args.models if m not in CONFIGS]
    if bad:
        ap.error(f"unknown model(s) {bad}; classifiers: {', '.join(CONFIGS)}")
    bad = [d for d in args.dtype if d not in ("fp32", "bf16", "fp16")]
    if bad:
        ap.error(f"unknown dtype(s) {bad}; use fp32, bf16, fp16")
    if args.size % 32 or args.size < 32:
        ap.error(f"--size must be a positive multiple of 32, got {args.size}")
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

    rows = run_bench(args.models, args.dtype, args.batch, args.size, device, args.runs, args.warmup,
                     args.compile, peers)
    info = machine_info(device)
    print(f"\n{info['cpu']} | {info['threads']} threads | torch {info['torch']} | device {info['device']}"
          f" | median of {args.runs} runs after {args.warmup} warm-up\n")
    print(format_table(rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump(to_json(rows, info, {k: v for k, v in vars(args).items()}), f, indent=1)
        why = plot(rows, os.path.join(args.out, "bench.png"), info)
        print(f"\nwrote {args.out}/bench.json" + ("" if why else f" and {args.out}/bench.png"))
        if why:
            print(why, file=sys.stderr)
    return 0

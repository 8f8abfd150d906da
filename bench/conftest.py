"""Shared bench plumbing: smoke mode, timing settings and the ratio table.

``pytest bench/ --benchmark-only`` times every row; at the end a table lists each
group's rows with their median and the ratio against the group's baseline row (the
eager reference, or the eager model). ``ASCAN_BENCH_SMOKE=1`` shrinks every shape so
``pytest bench/ --benchmark-disable`` runs each row once in seconds (CI does this so
the benches never rot).
"""
from __future__ import annotations

import os

import pytest
import torch

SMOKE = os.environ.get("ASCAN_BENCH_SMOKE", "") not in ("", "0")
BASELINES = ("eager",)  # the row every other row in a group is compared with
# Benches run where users run: the GPU when there is one (ASCAN_BENCH_DEVICE overrides).
DEVICE = torch.device(os.environ.get("ASCAN_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def run(benchmark, fn, group: str, name: str, rounds: int = 10, warmup: int = 2):
    """Time ``fn`` (no args) under ``group``; returns fn's last output."""
    benchmark.group = group
    benchmark.name = name
    benchmark.extra_info["row"] = name
    benchmark.extra_info["device"] = str(DEVICE)
    if DEVICE.type == "cuda":
        inner = fn

        def fn():  # time the kernels, not their asynchronous launch
            out = inner()
            torch.cuda.synchronize()
            return out
    with torch.no_grad():
        return benchmark.pedantic(fn, rounds=1 if SMOKE else rounds, warmup_rounds=0 if SMOKE else warmup,
                                  iterations=1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or getattr(bs, "disabled", True) or not bs.benchmarks:
        return
    groups: dict[str, list] = {}
    for b in bs.benchmarks:
        if getattr(b, "stats", None) is None or not getattr(b.stats, "data", None):
            continue
        groups.setdefault(b.group or "", []).append(b)
    tr = terminalreporter
    tr.write_sep("=", f"ascan ratios vs eager (median ms; {torch.get_num_threads()} threads, "
                      f"{torch.backends.cpu.get_cpu_capability()})")
    for g, rows in sorted(groups.items()):
        base = next((r for r in rows if r.extra_info.get("row") in BASELINES), None)
        tr.write_line(g)
        for r in sorted(rows, key=lambda r: r.stats.median, reverse=True):
            med = r.stats.median * 1e3
            ratio = f"{base.stats.median / r.stats.median:6.2f}x" if base is not None else "   n/a"
            tr.write_line(f"    {r.extra_info.get('row', r.name):<28} {med:10.3f} ms   {ratio}")


def skip_unless_ok(op: str, impl: str) -> None:
    """Skip a row, with the registry's reason, when ``impl`` cannot run in this process.

    ``impl="compile"`` is ``torch.compile`` of the op's eager reference (skipped in smoke
    mode: compile time dominates there). Triton under ``TRITON_INTERPRET`` is a numerics
    tool, never timed. Per-call refusals (a dtype this CPU lacks, a shape) are found by
    :func:`skip_unless_runs` with the row's real inputs.
    """
    import ascan_kernels as K
    from ascan_kernels.backends.triton import interpreting

    if impl == "compile":
        if SMOKE:
            pytest.skip("smoke mode: torch.compile rows are skipped (compile time dominates)")
        return
    if impl == "triton" and interpreting() and DEVICE.type == "cpu":
        pytest.skip(f"{op}/triton: TRITON_INTERPRET runs it on the CPU for numerics only; not timed")
    status = K.available(op).get(impl)
    if status != "ok":
        pytest.skip(f"{op}/{impl}: {status}")


def runnable(op: str, impl: str, call):
    """``call`` (the row's op call, with ``impl`` forced) after one trial run; the row is
    skipped with the registry's reason when the impl declines these inputs here (e.g.
    bf16 on a CPU without oneDNN's bf16 kernels) or cannot run in this process at all."""
    import ascan_kernels as K

    skip_unless_ok(op, impl)
    try:
        with torch.no_grad():
            call()
    except K.KernelUnavailableError as e:
        pytest.skip(f"{op}/{impl}: {str(e).splitlines()[0]}")
    return call


def op_runner(op: str, impl: str):
    """A callable taking the op's public arguments and running ``impl`` forced.

    ``impl="compile"`` runs ``torch.compile`` of the public function with the eager
    reference forced, i.e. what inductor makes of the unfused sequence.
    """
    import ascan_kernels as K

    public = getattr(K, op)
    if impl == "compile":
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        compiled = torch.compile(public, dynamic=False)

        def call(*args, **kwargs):
            with K.use(**{op: "eager"}):
                return compiled(*args, **kwargs)
        return call

    def call(*args, **kwargs):
        with K.use(**{op: impl}):
            return public(*args, **kwargs)
    return call

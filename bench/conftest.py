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


def run(benchmark, fn, group: str, name: str, rounds: int = 10, warmup: int = 2):
    """Time ``fn`` (no args) under ``group``; returns fn's last output."""
    benchmark.group = group
    benchmark.name = name
    benchmark.extra_info["row"] = name
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
    import ascan_kernels as K

    status = K.available(op).get(impl)
    if status != "ok":
        pytest.skip(f"{op}/{impl}: {status}")

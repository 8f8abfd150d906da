"""What ``python -m ascan bench`` / ``claims`` tell the user: verdicts from the IQRs,
interleaved timing, the JSON written as it goes (and kept on Ctrl-C), --help defaults,
the busy-machine warning, the plot. Tiny settings; nothing asserts that anything is faster."""
import importlib.util
import json
import os

import pytest
import torch

import ascan.cli.bench as B
from ascan.cli.bench import Row, Timing, main as bench_main, time_interleaved, verdict
from ascan.cli.claims import claims_table, main as claims_main

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
TINY = ["--models", "ascan_t", "--batch", "1", "--size", "64", "--runs", "1", "--warmup", "0", "--no-peers",
        "--runtimes", "none", "--no-peak"]


def T(q1, med, q3, runs=10):
    return Timing(med, q1, q3, runs)


# ---- verdict --------------------------------------------------------------------------

def test_verdict_overlap_is_inconclusive_and_shows_both_ranges():
    v = verdict(T(10.0, 11.0, 12.0), T(11.5, 12.5, 13.5))
    assert v.status == "inconclusive"
    assert v.text == "inconclusive (ranges overlap: 10.0-12.0 ms vs 11.5-13.5 ms)"
    assert v.ratio == pytest.approx(12.5 / 11.0)


def test_verdict_touching_ranges_are_inconclusive():
    assert verdict(T(10.0, 11.0, 12.0), T(12.0, 13.0, 14.0)).status == "inconclusive"


def test_verdict_separated_holds():
    v = verdict(T(10.0, 10.5, 11.0), T(20.0, 21.0, 22.0))
    assert v.status == "holds" and v.text.startswith("holds here (")
    assert "10.0-11.0 ms vs 20.0-22.0 ms" in v.text and v.ratio == pytest.approx(2.0)


def test_verdict_separated_does_not_hold():
    v = verdict(T(20.0, 21.0, 22.0), T(10.0, 10.5, 11.0))
    assert v.status == "does not hold" and v.text.startswith("does not hold here (")
    assert "20.0-22.0 ms vs 10.0-11.0 ms" in v.text and v.ratio == pytest.approx(0.5)


def test_verdict_too_few_runs_is_inconclusive():
    v = verdict(T(1.0, 1.0, 1.0, runs=2), T(5.0, 5.0, 5.0, runs=2))
    assert v.status == "inconclusive" and "too few runs" in v.text and "1.00-1.00 ms vs 5.00-5.00 ms" in v.text


def test_timing_quartiles_stay_within_samples():
    t = Timing.from_samples([3.0, 1.0, 2.0, 10.0])
    assert 1.0 <= t.q1_ms <= t.median_ms <= t.q3_ms <= 10.0 and t.runs == 4 and t.samples_ms == [3.0, 1.0, 2.0, 10.0]
    one = Timing.from_samples([4.0])
    assert one.q1_ms == one.median_ms == one.q3_ms == 4.0


# ---- interleaved timing ---------------------------------------------------------------

def test_time_interleaved_is_round_robin():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("eager", "fused", "compiled")}
    t = time_interleaved(fns, runs=4, warmup=2, device=torch.device("cpu"))
    assert set(t) == set(fns) and all(v.runs == 4 for v in t.values())
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(rounds) == 6 and all(sorted(r) == sorted(fns) for r in rounds)   # one call of each per round


# ---- --help ---------------------------------------------------------------------------

def test_bench_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        bench_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())      # argparse wraps lines
    assert e.value.code == 0
    for want in ("(default: 20)", "(default: 5)", "(default: 224)", "(default: fp32,bf16)", "(default: 1,16)",
                 "(default: ascan_t,ascan_s,ascan_b,ascan_l)", "interleaved"):
        assert want in out, want


def test_claims_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        claims_main(["--help"])
    assert e.value.code == 0 and "(default: 10)" in capsys.readouterr().out


# ---- busy machine ---------------------------------------------------------------------

def test_busy_machine_warns_and_is_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    assert bench_main([*TINY, "--dtype", "fp32", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    threads = torch.get_num_threads()
    assert err.count("WARNING: this machine is busy") == 2             # before timing and at the end
    assert "load average 99.0" in err and f"> {threads} threads" in err and "unreliable" in err
    m = json.loads((tmp_path / "bench.json").read_text())["machine"]
    assert m["busy"] is True and m["load_avg_start"] == 99.0 and m["load_avg_end"] == 99.0


def test_idle_machine_does_not_warn(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    info = B.machine_info(torch.device("cpu"))
    assert info["busy"] is False and info["load_avg_start"] == 0.0
    assert B.busy_warning(0.0, 2, "now") is None
    assert B.busy_warning(3.5, 2, "now") is not None
    assert B.busy_warning(3.5, 2, "now", own=2.0) is None               # our own threads do not count


def test_no_load_average_is_not_an_error(monkeypatch):
    def nope():
        raise OSError("no load average here")
    monkeypatch.setattr(os, "getloadavg", nope)
    assert B.load_average() is None and B.machine_info(torch.device("cpu"))["busy"] is False


# ---- written as it goes; Ctrl-C keeps the rows done -----------------------------------

def test_interrupt_keeps_valid_json_with_rows_done(tmp_path, monkeypatch, capsys):
    real, seen = B.time_interleaved, []

    def flaky(*a, **kw):
        if seen:                      # second cell: the first row must already be on disk
            data = json.loads((tmp_path / "bench.json").read_text())
            seen.append(data)
            raise KeyboardInterrupt
        seen.append(None)
        return real(*a, **kw)

    monkeypatch.setattr(B, "time_interleaved", flaky)
    rc = bench_main([*TINY, "--dtype", "fp32,bf16", "--out", str(tmp_path)])
    assert rc == 130
    mid = seen[1]
    assert mid["complete"] is False and [r["dtype"] for r in mid["rows"]] == ["fp32"]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["complete"] is False and data["interrupted"] is True
    assert [(r["model"], r["dtype"]) for r in data["rows"]] == [("ascan_t", "fp32")]
    assert data["rows"][0]["eager"]["median_ms"] > 0 and "load_avg_end" in data["machine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bench.json", "bench.png", "table.md"] if HAS_MPL
                                                           else ["bench.json", "table.md"])   # no temp files left
    assert "| ascan_t" in (tmp_path / "table.md").read_text()  # the table of the rows done
    out = capsys.readouterr().out
    assert "INTERRUPTED after 1 row(s)" in out and "| ascan_t" in out


def test_claims_warns_on_incomplete_or_busy_json(tmp_path, capsys):
    rows = [{"model": "ascan_t", "kind": "ascan", "dtype": "fp32", "batch": 1, "params_m": 13.7,
             "eager": {"median_ms": 20.0, "q1_ms": 19.0, "q3_ms": 21.0, "runs": 10},
             "fused": {"median_ms": 10.0, "q1_ms": 9.0, "q3_ms": 11.0, "runs": 10}, "note": ""},
            {"model": "slowpeer", "kind": "peer", "dtype": "fp32", "batch": 1, "params_m": 30.0,
             "eager": {"median_ms": 10.5, "q1_ms": 10.0, "q3_ms": 12.0, "runs": 10}, "note": "",
             "ref_model": "ascan_t", "ref": {"median_ms": 10.2, "q1_ms": 9.5, "q3_ms": 11.0, "runs": 10}}]
    p = tmp_path / "bench.json"
    p.write_text(json.dumps({"complete": False, "interrupted": True, "rows": rows,
                             "machine": {"busy": True, "load_avg_start": 5.0, "load_avg_end": 6.0, "threads": 2}}))
    assert claims_main(["--from", str(p)]) == 0
    cap = capsys.readouterr()
    assert "is incomplete" in cap.err and "busy machine" in cap.err
    assert "fused faster than eager: holds here (9.00-11.0 ms vs 19.0-21.0 ms)" in cap.out
    assert "inconclusive (ranges overlap: 9.50-11.0 ms vs 10.0-12.0 ms)" in cap.out   # the interleaved ref
    assert "timed interleaved" in cap.out
    del rows[1]["ref"]
    table = claims_table(rows)
    assert "timed in separate runs" in table and "inconclusive (ranges overlap: 9.00-11.0 ms vs 10.0-12.0 ms)" in table


# ---- the plot -------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_MPL, reason="matplotlib not installed")
def test_plot_panels_per_batch(tmp_path):
    rows = []
    for b, scale in ((1, 1.0), (16, 12.0)):
        for dtype, f in (("fp32", 1.0), ("bf16", 0.6)):
            for name, params in (("ascan_t", 13.7), ("ascan_s", 26.5)):
                t = scale * f * params
                rows.append(Row(name, "ascan", dtype, b, 224, params, 1.0, T(t * 1.1, t * 1.2, t * 1.3),
                                T(t * 0.9, t, t * 1.05), T(t * 0.8, t * 0.9, t)))
            rows.append(Row("convnext_tiny", "peer", dtype, b, 224, 28.6, 4.5, T(30 * scale * f, 32 * scale * f,
                                                                                  35 * scale * f)))
    rows.append(Row("broken", "peer", "fp32", 1, 224, float("nan"), None, note="could not build: x"))
    info = {"cpu": "test cpu", "threads": 2, "busy": True}
    assert B.plot(rows, str(tmp_path / "p.png"), info) is None
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = B.format_table(rows)                                       # every kind of row renders
    assert "could not build" in table and "convnext_tiny (timm)" in table
    assert "fused 1.20x vs eager: holds here" in table


# ---- fraction of the measured peak; the autotuned row ---------------------------------

def test_peak_fraction_is_flops_over_the_measured_peak():
    fused = T(9.0, 10.0, 11.0)
    row = Row("ascan_t", "ascan", "fp32", 2, 224, 13.7, 1.0, T(19.0, 20.0, 21.0), fused)
    peaks = {"fp32": 800.0, "bf16": 10.0}
    assert row.peak_fraction(fused, peaks) == pytest.approx(2 * 1e9 * 2 / 0.010 / 800e9)   # 0.5
    low = Row("ascan_t", "ascan", "bf16", 2, 224, 13.7, 1.0, T(19.0, 20.0, 21.0), fused)
    assert low.peak_fraction(fused, peaks) == pytest.approx(0.5)  # an emulated bf16 GEMM: the fp32 peak
    assert low.peak_fraction(fused, {"fp32": 100.0, "bf16": 1600.0}) == pytest.approx(0.25)
    assert Row("p", "peer", "fp32", 1, 224, 1.0, None, fused).peak_fraction(fused, peaks) is None  # MACs unknown
    table = B.format_table([row, low], peaks)
    assert "% of GEMM peak" in table and "fused 50" in table and "bf16 rows against the fp32 peak" in table


def test_autotuned_row_fills_and_uses_the_cache(tmp_path, capsys):
    cache = tmp_path / "autotune.json"
    args = [a for a in TINY if a != "--no-peak"]
    assert bench_main([*args, "--dtype", "fp32", "--autotune", "--autotune-cache", str(cache),
                       "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    row = data["rows"][0]
    assert row["autotuned"]["runs"] == 1 and row["fused"]["runs"] == 1
    assert data["machine"]["gemm_peak_gflops"]["fp32"] > 0
    assert 0 < row["gemm_peak_fraction"]["fused"] < 1.5
    assert "autotuned ms [IQR]" in out and "% of GEMM peak" in out
    doc = json.loads(cache.read_text())
    assert sum(len(e) for sec in doc["environments"].values() for e in sec["ops"].values()) >= 10

"""``python -m ascan bench`` and ``python -m ascan claims`` on tiny settings."""
import importlib.util
import json
import re
import subprocess
import sys

import pytest

from ascan.cli.bench import main as bench_main
from ascan.cli.claims import claims_table, main as claims_main

HAS_TIMM = importlib.util.find_spec("timm") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
RUNTIMES = [r for r in ("onnxruntime", "openvino") if importlib.util.find_spec(r) is not None] \
    if importlib.util.find_spec("onnxscript") else []


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    peers = ["--peers", "convnext_tiny"] if HAS_TIMM else ["--no-peers"]
    rc = bench_main(["--models", "ascan_t", "--dtype", "fp32,bf16", "--batch", "1", "--size", "64",
                     "--runs", "2", "--warmup", "1", "--out", str(out), *peers])
    assert rc == 0
    return out


def test_bench_writes_json_and_plot(bench_out):
    data = json.loads((bench_out / "bench.json").read_text())
    assert data["machine"]["torch"] and data["args"]["size"] == 64
    assert data["complete"] is True and data["interrupted"] is False
    assert {"load_avg_start", "load_avg_end", "busy"} <= set(data["machine"])
    ours = [r for r in data["rows"] if r["kind"] == "ascan"]
    assert [(r["model"], r["dtype"], r["batch"]) for r in ours] == [("ascan_t", "fp32", 1), ("ascan_t", "bf16", 1)]
    for r in ours:
        assert 10 < r["params_m"] < 20 and r["macs_g"] > 0            # ascan_t: 13.7M params
        assert r["eager"]["median_ms"] > 0 and r["fused"]["median_ms"] > 0
        assert r["eager"]["q1_ms"] <= r["eager"]["median_ms"] <= r["eager"]["q3_ms"]
        assert r["speedup"] == pytest.approx(r["eager"]["median_ms"] / r["fused"]["median_ms"])
        assert r["throughput"] == pytest.approx(1 / (r["fused"]["median_ms"] / 1e3))
        assert r["eager"]["runs"] == r["fused"]["runs"] == 2 and len(r["eager"]["samples_ms"]) == 2
        assert r["verdict"]["status"] == "inconclusive" and "too few runs" in r["verdict"]["text"]   # 2 runs
    # the deployment runtimes installed here, on the ONNX export, timed in the same rounds
    assert data["args"]["runtimes"] == RUNTIMES
    fp32, bf16 = ours
    assert sorted(fp32["runtimes"]) == RUNTIMES and fp32["runtime_notes"] == {}
    for rt in RUNTIMES:
        assert fp32["runtimes"][rt]["runs"] == 2 and fp32["runtimes"][rt]["median_ms"] > 0
    if "onnxruntime" in RUNTIMES:   # no CPU bf16 in ONNX Runtime: said, not timed
        assert "onnxruntime" not in bf16["runtimes"] and "no bf16" in bf16["runtime_notes"]["onnxruntime"]
    if "openvino" in RUNTIMES:
        assert bf16["runtimes"]["openvino"]["median_ms"] > 0
    if HAS_TIMM:
        peer = next(r for r in data["rows"] if r["kind"] == "peer")
        assert peer["model"] == "convnext_tiny" and 25 < peer["params_m"] < 32 and peer["fused"] is None
        assert peer["ref_model"] == "ascan_t" and peer["ref"]["median_ms"] > 0     # timed interleaved with it
        assert peer["ref_verdict"]["status"] in ("holds", "does not hold", "inconclusive")
    assert (bench_out / "bench.png").exists() == HAS_MPL
    if HAS_MPL:
        assert (bench_out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_printed(bench_out, capsys):
    claims_main(["--from", str(bench_out / "bench.json")])
    out = capsys.readouterr().out
    assert "fused kernels (this package)" in out and "ascan_t fp32 b1: fused" in out
    assert "GenEval 0.64" in out and "not measured: needs trained weights" in out
    assert "fused faster than eager: inconclusive (too few runs" in out        # 2 runs: no verdict
    assert "holds here" not in out
    if HAS_TIMM:
        assert "faster than convnext_tiny" in out and "timed interleaved" in out


def test_bench_prints_ranges_and_verdicts(capsys):
    assert bench_main(["--models", "ascan_t", "--dtype", "fp32", "--batch", "1", "--size", "64",
                       "--runs", "3", "--warmup", "0", "--no-peers", "--runtimes", "none"]) == 0
    out = capsys.readouterr().out
    assert "eager ms [IQR]" in out and re.search(r"fused \d+\.\d\dx vs eager: ", out)
    assert any(v in out for v in ("holds here (", "does not hold here (", "inconclusive (ranges overlap: "))
    assert " ms vs " in out                                                     # both ranges shown


def test_claims_without_measuring():
    table = claims_table(None)
    assert "holds in all" in table and "2.23" in table and "50.3" in table
    assert "fused kernels" not in table


@pytest.mark.parametrize("args,msg", [
    (["--models", "ascan_xxl"], "unknown model"),
    (["--dtype", "fp8"], "unknown dtype"),
    (["--size", "100"], "multiple of 32"),
    (["--runtimes", "tensorrt"], "unknown runtime"),
])
def test_bench_bad_arguments(args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        bench_main(args)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_module_entry_point():
    p = subprocess.run([sys.executable, "-m", "ascan", "nope"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown command 'nope'" in p.stderr and "bench" in p.stderr
    p = subprocess.run([sys.executable, "-m", "ascan", "variants"], capture_output=True, text=True)
    assert p.returncode == 0 and "| `ascan_t` |" in p.stdout


@pytest.mark.parametrize("module,args", [("ascan", ["variants"]), ("ascan_kernels", [])])
def test_entry_point_with_closed_pipe(module, args):
    """`python -m ascan_kernels | grep -q ...` closes the pipe early: no traceback, status 0."""
    p = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # no reader left: every write the child makes now fails with EPIPE
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err

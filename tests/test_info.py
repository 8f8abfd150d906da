"""``python -m ascan_kernels`` (what can run here and why) and ``python -m ascan`` (the main job)."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

import ascan_kernels as K
from ascan_kernels import info


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_report_covers_every_op_and_impl_with_the_registrys_verdict():
    data = info.collect()
    assert set(data["ops"]) == set(K.list_ops())
    for op, impls in data["ops"].items():
        assert {i: d["status"] for i, d in impls.items()} == K.available(op)
    assert data["versions"]["torch"] == torch.__version__ and data["versions"]["ascan"] == K.__version__
    assert data["cpu"]["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(data["cpu"]["onednn_bf16"], bool)
    assert data["gpus"] == [] or torch.cuda.is_available()
    ext = data["extension"]
    assert ext["loaded"] == (K._ext.load_extension()[0] is not None)
    build = ext["build"] or {}
    if ext["loaded"] and "skipped" not in build:
        # what was built, and why CUDA was not, is on record
        assert build["cpu_isas"] and (build["with_cuda"] or build["why_no_cuda"])


def test_text_report_says_why_for_each_unavailable_impl():
    text = info.format_report(info.collect())
    for op, impls in K.available().items():
        assert f"  {op}\n" in text + "\n"
        for impl, status in impls.items():
            assert status in text, (op, impl)
    assert "CPU ISA: ATen" in text and "extension:" in text


def test_module_entry_point_text_and_json():
    out = _run("-m", "ascan_kernels")
    assert out.returncode == 0, out.stderr
    assert "ops (impls in priority order" in out.stdout and "conv_bn_gelu" in out.stdout
    out = _run("-m", "ascan_kernels", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"versions", "cpu", "gpus", "triton", "extension", "ops"}


def test_main_job_runs_and_reports():
    """``python -m ascan`` (here on a small input): both models, the verdict, the kernels."""
    out = _run("-m", "ascan", "--batch", "1", "--size", "64", "--runs", "3", "--warmup", "1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "eager median" in text and "fused median" in text and "fused vs eager:" in text
    assert "outputs agree to" in text
    assert "impls skipped [reason]" in text and "conv_bn_gelu" in text
    bad = _run("-m", "ascan", "--size", "100")
    assert bad.returncode == 2 and "multiple of 32" in bad.stderr

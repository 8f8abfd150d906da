"""Export: ONNX (ONNX Runtime, OpenVINO), torch.export .pt2 (with our custom ops, or
decomposed), OpenVINO IR, the ``python -m ascan export`` command, and the registry's
ONNX-export path. The references are the eager models (float64 differences) and the
runtimes' and torch's documented behaviour (a .pt2 with an unregistered custom op does
not load).

Small configs of the real model classes keep each export to seconds; ``ascan_t`` itself
goes through the CLI test."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

import ascan_kernels as K
from ascan import export as ex
from ascan.models.classifier import AsCAN, AsCANConfig
from ascan.models.unet import AsCANUNet, UNetConfig

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

TINY = AsCANConfig(name="ascan_export_test", dims=(32, 32, 64, 64), layouts=("C", "C", "CT", "T"),
                   stem_chs=(16, 32))
TINY_UNET = UNetConfig("ascan_unet_export_test", channels=(32, 32, 32), layouts=("C", "CT", "T"), mid_layout="T",
                       head_dim=16, groups=8, in_channels=3)
STANDARD_DOMAINS = ("", "ai.onnx")


def _tiny(fused: bool = True) -> AsCAN:
    torch.manual_seed(0)
    m = AsCAN(TINY, num_classes=10, fused=fused).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that a lost BN would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    got, want = got.double(), want.double()
    assert got.shape == want.shape
    assert (got - want).abs().max() <= rtol * max(1.0, float(want.abs().max()))


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def onnx_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return ex.save_onnx(tiny, path, ex.example_inputs(tiny, batch=2, size=64))


def test_plain_torch_onnx_export_of_the_fused_model_holds_standard_ops_only(tiny):
    """The user's call, unchanged: torch.onnx.export(fused_model, (x,), dynamo=True)."""
    x = torch.randn(2, 3, 64, 64)
    with K.trace() as tr:
        tiny(x)
    assert any(r.impl != "eager" for r in tr.records)            # the fused model does run custom impls
    prog = torch.onnx.export(tiny, (x,), dynamo=True, verbose=False)
    domains = {n.domain for n in prog.model_proto.graph.node}
    assert domains <= set(STANDARD_DOMAINS), domains
    ops = {n.op_type for n in prog.model_proto.graph.node}
    assert {"Conv", "MatMul", "Softmax"} <= ops
    if importlib.util.find_spec("onnxruntime"):          # ONNXProgram.__call__ runs ONNX Runtime
        with torch.no_grad():
            _close(prog(x)[0], tiny(x))


def test_onnx_runtime_and_openvino_match_eager_at_any_batch(tiny, onnx_file):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    meta = {p.key: p.value for p in onnx.load(str(onnx_file.path)).metadata_props}
    assert json.loads(meta["ascan"])["model"] == TINY.name
    ort_run = ex.load_runner(onnx_file.path, "onnx")
    ov_run = ex.openvino_runner(str(onnx_file.path))
    for b in (1, 5):   # exported at batch 2: the batch is dynamic
        x = torch.randn(b, 3, 64, 64)
        with torch.no_grad():
            want = tiny(x)
        _close(ort_run(x), want)
        _close(ov_run(x), want)
    p = ex.parity(tiny, ort_run, (torch.randn(3, 3, 64, 64),))
    assert p.ok and p.max_abs < 1e-4 and "OK" in str(p)


def test_parity_reports_a_mismatch(tiny):
    x = torch.randn(2, 3, 64, 64)
    wrong = ex.parity(tiny, lambda x: tiny(x) + 1e-2, (x,))
    assert not wrong.ok and "MISMATCH" in str(wrong)
    assert not ex.parity(tiny, lambda x: tiny(x)[:1], (x,)).ok                 # wrong shape
    assert not ex.parity(tiny, lambda x: tiny(x) * float("nan"), (x,)).ok     # NaN


def test_openvino_ir_is_written_whole(tiny, tmp_path):
    pytest.importorskip("openvino")
    out = ex.save_openvino(tiny, tmp_path / "ir" / "tiny.xml", ex.example_inputs(tiny, batch=2, size=64))
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["tiny.bin", "tiny.xml"]   # no temporaries
    run = ex.load_runner(out.path, "openvino")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        _close(run(x), tiny(x))
    with pytest.raises(ex.ExportError, match="must end in .xml"):
        ex.save_openvino(tiny, tmp_path / "tiny.onnx")


def test_pt2_needs_ascan_kernels_unless_decomposed(tiny, tmp_path):
    """A .pt2 of the fused model holds our custom ops: a fresh process loads it after
    `import ascan_kernels` and not before; the decomposed one loads with torch alone."""
    fused = ex.save_pt2(tiny, tmp_path / "fused.pt2", ex.example_inputs(tiny, batch=2, size=64))
    plain = ex.save_pt2(tiny, tmp_path / "plain.pt2", ex.example_inputs(tiny, batch=2, size=64), decompose=True)
    assert "ascan::conv2d_bias_act" in fused.custom_ops and plain.custom_ops == []
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.save({"x": x, "y": tiny(x)}, tmp_path / "io.pt")
    script = textwrap.dedent("""
        import sys, torch
        mode, io, paths = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3:]
        if mode == "import":
            import ascan_kernels  # noqa: F401  (registers the custom ops)
        for path in paths:
            try:
                ep = torch.export.load(path)
            except Exception as e:
                print("FAILED", type(e).__name__)
                continue
            y = ep.module()(io["x"])
            print("LOADED", (y.double() - io["y"].double()).abs().max().item(), "ascan_kernels" in sys.modules)
    """)

    def run(mode, *paths):
        p = subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / "io.pt"), *map(str, paths)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return [line.split() for line in p.stdout.splitlines()], p.stderr

    (decomposed, custom), log = run("no-import", plain.path, fused.path)
    assert decomposed[0] == "LOADED" and float(decomposed[1]) < 1e-4 and decomposed[2] == "False", decomposed
    assert custom == ["FAILED", "RuntimeError"], custom
    assert "torch.ops.ascan.conv2d_bias_act" in log and "not registered" in log   # torch's warning names it
    (custom,), _ = run("import", fused.path)
    assert custom[0] == "LOADED" and float(custom[1]) < 1e-4, custom
    with zipfile.ZipFile(fused.path) as z:
        name = next(n for n in z.namelist() if n.endswith("ascan.json"))
        meta = json.loads(z.read(name))
    assert meta["custom_ops"] == fused.custom_ops and "import ascan_kernels" in meta["load"]


def test_decompose_turns_an_exported_fused_program_into_aten_ops(tiny):
    ep = ex.export_program(tiny, ex.example_inputs(tiny, batch=2, size=64))
    have = ex.custom_ops_in(ep)
    assert have, "the fused CPU model exports our custom ops"
    table = {f"{op.namespace}::{op._opname}" for op in K.decompositions()}
    assert set(have) <= table
    plain = ex.decompose(ep)
    assert ex.custom_ops_in(plain) == []
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        _close(plain.module()(x), tiny(x))
        _close(plain.module()(x), ep.module()(x))


def test_unet_exports_to_onnx_with_its_three_inputs(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    unet = AsCANUNet(TINY_UNET, num_classes=10, fused=True).eval()
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.1)   # the zero init would make every output 0
    out = ex.save_onnx(unet, tmp_path / "unet.onnx", ex.example_inputs(unet, batch=2, size=16))
    assert [i["name"] for i in out.meta["inputs"]] == ["latents", "t", "y"]
    run = ex.load_runner(out.path, "onnx")
    inputs = ex.example_inputs(unet, batch=3, size=16, seed=1)
    p = ex.parity(unet, run, inputs)
    assert p.ok and p.ref_max > 0, p


def test_bad_exports_fail_clearly_and_leave_nothing(tiny, tmp_path, monkeypatch):
    train = _tiny()
    train.train()
    with pytest.raises(ex.ExportError, match="ascan_export_test.*training mode.*eval"):
        ex.save_onnx(train, tmp_path / "t.onnx")
    with pytest.raises(ex.ExportError, match="unknown format 'tflite'"):
        ex.export(tiny, tmp_path / "t.tflite", "tflite")
    with pytest.raises(TypeError, match="cannot make example inputs for Linear"):
        ex.example_inputs(torch.nn.Linear(2, 2))

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        ex.save_onnx(tiny, tmp_path / "half.onnx", ex.example_inputs(tiny, batch=2, size=64))
    assert list(tmp_path.iterdir()) == []                       # no file, no temporary


def test_cli_export_prints_the_parity_check(tmp_path, capsys):
    from ascan.cli import main

    assert main(["export", "--model", "ascan_t", "--format", "onnx", "--size", "32", "--num-classes", "10",
                 "--out", str(tmp_path / "t.onnx")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "(batch dynamic)" in out
    assert "parity on a fresh input (batch 2): max |exported - eager|" in out and ": OK" in out
    with pytest.raises(SystemExit):        # --decompose is for pt2 only: an argparse error
        main(["export", "--format", "onnx", "--out", str(tmp_path / "x.onnx"), "--decompose"])
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_aoti_package_of_the_decomposed_model_runs(tiny, tmp_path):
    """AOTInductor compiles C++ (minutes on 2 cores): slow."""
    out = ex.save_aoti(tiny, tmp_path / "tiny.pt2", ex.example_inputs(tiny, batch=2, size=64))
    run = ex.load_runner(out.path, "aoti")
    assert ex.parity(tiny, run, (torch.randn(3, 3, 64, 64),)).ok


def test_readme_export_snippet_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n", text.index("## Export and deployment")) + len("```python\n")
    code = text[start:text.index("```", start)]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert ": OK" in capsys.readouterr().out and (tmp_path / "ascan_t.onnx").exists()

"""Export an AsCAN model for deployment, and check the artifact against the model.

Formats (``FORMATS``):

* ``onnx``: ``torch.onnx.export(..., dynamo=True)``. The graph holds standard ONNX ops
  only: while ONNX export traces, every ``ascan_kernels`` op runs its eager reference
  (the registry does this itself, so a plain ``torch.onnx.export(fused_model, ...)``
  works too), and ONNX Runtime / OpenVINO fuse conv+bias+act, GEMM+GELU and LayerNorm on
  their own.
* ``pt2``: ``torch.export.save``. By default the fused model's custom ops stay in the
  graph (``ascan::conv2d_bias_act``, ``ascan_C::add_layer_norm``, ...): loading it needs
  ``import ascan_kernels`` first. ``decompose=True`` traces the eager references instead
  and checks that no custom op is left: the artifact needs nothing but torch.
* ``aoti``: an AOTInductor package (``torch._inductor.aoti_compile_and_package``) of the
  decomposed program: compiled C++ that ``torch._inductor.aoti_load_package`` runs.
* ``openvino``: OpenVINO IR (``.xml`` + ``.bin``), converted from the ONNX export.

Every artifact is written under a temporary name and renamed when complete. The batch
dimension is dynamic by default (one artifact serves every batch size); spatial sizes
are fixed at the example's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

import ascan_kernels as K

from .models.classifier import AsCAN
from .models.segmentation import AsCANSegmenter
from .models.unet import AsCANUNet

FORMATS = ("onnx", "pt2", "aoti", "openvino")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "aoti": ".pt2", "openvino": ".xml"}
# Where exported fp32 graphs may differ from eager: the runtimes reorder sums and use
# their own GELU/LayerNorm/softmax kernels; the differences seen here were ~1e-6.
PARITY_RTOL = 1e-4


class ExportError(RuntimeError):
    """An export that cannot be made or does not match the model."""


def _name(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "name", type(model).__name__)


# --------------------------------------------------------------------------- inputs
def example_inputs(model: nn.Module, batch: int = 1, size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs the model's ``forward`` takes, in order, on its device and in float32:
    classifiers and segmenters ``(images (B, in_chans, size, size),)`` (size 224 / 512 by
    default); UNets ``(latents (B, C, size, size), t (B,) long, y (B,) long)`` for
    class-conditional models or ``(latents, t, context (B, 77, context_dim))`` for
    text-to-image ones (size 32 by default)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    if isinstance(model, AsCANUNet):
        s = size or 32
        cfg = model.cfg
        lat = torch.randn(batch, cfg.in_channels, s, s, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        if model.num_classes is not None:
            cond = torch.randint(0, model.num_classes, (batch,), generator=g)
        else:
            cond = torch.randn(batch, 77, cfg.context_dim, generator=g)
        return tuple(x.to(dev) for x in (lat, t, cond))
    if isinstance(model, (AsCAN, AsCANSegmenter)):
        s = size or (512 if isinstance(model, AsCANSegmenter) else 224)
        return (torch.randn(batch, model.in_chans, s, s, generator=g).to(dev),)
    raise TypeError(f"export: cannot make example inputs for {type(model).__name__}; pass inputs=")


def input_names(model: nn.Module) -> list[str]:
    """The names the exported graph gives its inputs (in ``example_inputs`` order)."""
    if isinstance(model, AsCANUNet):
        return ["latents", "t", "y" if model.num_classes is not None else "context"]
    return ["images"]


def _dynamic_batch(inputs: Sequence[torch.Tensor]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return tuple({0: batch} for _ in inputs)


def _export_inputs(model: nn.Module, inputs: Sequence[torch.Tensor] | None, dynamic_batch: bool):
    """The tracing inputs: batch >= 2 when the batch is dynamic (torch.export specialises
    a dimension of size 1 to the constant 1)."""
    if inputs is None:
        return example_inputs(model, batch=2 if dynamic_batch else 1)
    inputs = tuple(inputs)
    if dynamic_batch and inputs and inputs[0].shape[0] == 1:
        inputs = tuple(torch.cat([x, x]) for x in inputs)
    return inputs


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ExportError(f"export {_name(model)}: the model is in training mode; call model.eval() first "
                          "(BatchNorm, dropout and drop path would be exported as in training)")


# --------------------------------------------------------------------------- torch.export
def custom_ops_in(ep: torch.export.ExportedProgram) -> list[str]:
    """The qualified names of our custom ops an exported program calls (sorted)."""
    found = set()
    for node in ep.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            ns = node.target.namespace
            if ns in K.CUSTOM_OP_NAMESPACES:
                found.add(f"{ns}::{node.target._opname}")
    return sorted(found)


def decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Replace our custom ops in ``ep`` by their aten decompositions
    (``ascan_kernels.decompositions()``); raises if one has none (GPU ops: export the
    model with ``decompose=True`` instead, which traces the eager references)."""
    ep = ep.run_decompositions(K.decompositions())
    left = custom_ops_in(ep)
    if left:
        raise ExportError(f"export: no decomposition for {', '.join(left)}; export the model with "
                          "decompose=True (it traces the eager references instead)")
    return ep


def export_program(model: nn.Module, inputs: Sequence[torch.Tensor] | None = None, *, decompose: bool = False,
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` (in eval mode) on ``inputs`` (default
    :func:`example_inputs`). ``decompose=True``: every op runs its eager reference while
    tracing, so the program holds aten ops only (checked)."""
    _check_eval(model)
    inputs = _export_inputs(model, inputs, dynamic_batch)
    shapes = _dynamic_batch(inputs) if dynamic_batch else None
    with (K.use("eager") if decompose else contextlib.nullcontext()):
        ep = torch.export.export(model, inputs, dynamic_shapes=shapes)
    if decompose:
        left = custom_ops_in(ep)
        if left:  # pragma: no cover - every op's eager reference is plain torch
            raise ExportError(f"export {_name(model)}: custom ops left after tracing the references: {left}")
    return ep


def _meta(model: nn.Module, fmt: str, inputs: Sequence[torch.Tensor], **extra) -> dict[str, Any]:
    return {"model": _name(model), "format": fmt, "ascan_version": K.__version__, "torch": torch.__version__,
            "inputs": [{"name": n, "shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
                       for n, x in zip(input_names(model), inputs)], **extra}


# --------------------------------------------------------------------------- the writers
@dataclasses.dataclass
class Exported:
    """What an export wrote: the artifact (``path``; OpenVINO also ``path.with_suffix('.bin')``),
    its format, the custom ops it needs (pt2 without decompose) and its metadata."""
    path: Path
    format: str
    custom_ops: list[str]
    meta: dict[str, Any]


def save_pt2(model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor] | None = None, *,
             decompose: bool = False, dynamic_batch: bool = True) -> Exported:
    """``torch.export.save`` of :func:`export_program`. The file carries ``ascan.json``
    (model, version, inputs, the custom ops it needs) as an extra file."""
    inputs = _export_inputs(model, inputs, dynamic_batch)
    ep = export_program(model, inputs, decompose=decompose, dynamic_batch=dynamic_batch)
    ops = custom_ops_in(ep)
    meta = _meta(model, "pt2", inputs, decomposed=decompose, custom_ops=ops,
                 load=("torch.export.load(path)" if not ops else "import ascan_kernels; torch.export.load(path)"))
    K.atomic_write(path, lambda tmp: torch.export.save(ep, tmp, extra_files={"ascan.json": json.dumps(meta)}))
    return Exported(Path(path), "pt2", ops, meta)


def save_aoti(model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor] | None = None, *,
              dynamic_batch: bool = True) -> Exported:
    """An AOTInductor package of the decomposed program (compiles C++: minutes on 2 cores)."""
    inputs = _export_inputs(model, inputs, dynamic_batch)
    ep = export_program(model, inputs, decompose=True, dynamic_batch=dynamic_batch)
    meta = _meta(model, "aoti", inputs)
    K.atomic_write(path, lambda tmp: torch._inductor.aoti_compile_and_package(ep, package_path=tmp))
    return Exported(Path(path), "aoti", [], meta)


def _onnx_program(model: nn.Module, inputs: Sequence[torch.Tensor], dynamic_batch: bool):
    _check_eval(model)
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:  # torch.onnx's dynamo exporter needs both
        raise ExportError(f"export {_name(model)} to ONNX needs {' and '.join(missing)}: "
                          "pip install 'ascan[deploy]'")
    shapes = _dynamic_batch(inputs) if dynamic_batch else None
    prog = torch.onnx.export(model, tuple(inputs), dynamo=True, dynamic_shapes=shapes,
                             input_names=input_names(model), output_names=["output"], verbose=False)
    foreign = sorted({n.domain for n in prog.model_proto.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:  # pragma: no cover - the registry exports references while ONNX traces
        raise ExportError(f"export {_name(model)}: the ONNX graph has non-standard op domains {foreign}")
    return prog


def save_onnx(model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor] | None = None, *,
              dynamic_batch: bool = True) -> Exported:
    """ONNX (standard ops only, weights inside the file) via the dynamo exporter."""
    inputs = _export_inputs(model, inputs, dynamic_batch)
    proto = _onnx_program(model, inputs, dynamic_batch).model_proto  # a fresh proto per access: keep one
    meta = _meta(model, "onnx", inputs, opset=next(o.version for o in proto.opset_import
                                                   if o.domain in ("", "ai.onnx")))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ascan", json.dumps(meta)
    import onnx  # optional: the deploy extra

    K.atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    return Exported(Path(path), "onnx", [], meta)


def save_openvino(model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor] | None = None, *,
                  dynamic_batch: bool = True) -> Exported:
    """OpenVINO IR (``path`` ``.xml`` and its ``.bin``), converted from the ONNX export,
    weights kept in float32."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ExportError(f"export {_name(model)} to OpenVINO needs openvino: pip install 'ascan[deploy]' ({e})") from None
    path = Path(path)
    if path.suffix != ".xml":
        raise ExportError(f"export {_name(model)} to OpenVINO: the path must end in .xml (the weights go to "
                          f"the .bin beside it), got {str(path)!r}")
    inputs = _export_inputs(model, inputs, dynamic_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-ov-", dir=path.parent) as d:  # same file system: renames
        onnx_path = Path(d) / "model.onnx"
        exp = save_onnx(model, onnx_path, inputs, dynamic_batch=dynamic_batch)
        ov_model = ov.convert_model(str(onnx_path))
        ov_model.set_rt_info(json.dumps({**exp.meta, "format": "openvino"}), "ascan")
        staged = Path(d) / "model.xml"
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        # The .bin first: an .xml is only ever beside the weights it names.
        K.atomic_write(path.with_suffix(".bin"), lambda tmp: os.replace(staged.with_suffix(".bin"), tmp))
        K.atomic_write(path, lambda tmp: os.replace(staged, tmp))
    return Exported(path, "openvino", [], {**exp.meta, "format": "openvino"})


SAVERS: dict[str, Callable[..., Exported]] = {"onnx": save_onnx, "pt2": save_pt2, "aoti": save_aoti,
                                              "openvino": save_openvino}
assert set(SAVERS) == set(FORMATS)


def export(model: nn.Module, path: str | os.PathLike, fmt: str, inputs: Sequence[torch.Tensor] | None = None,
           **kwargs) -> Exported:
    """Export ``model`` (eval mode) to ``path`` in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in SAVERS:
        raise ExportError(f"export: unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return SAVERS[fmt](model, path, inputs, **kwargs)


# --------------------------------------------------------------------------- running artifacts
def load_runner(path: str | os.PathLike, fmt: str, threads: int | None = None) -> Callable[..., torch.Tensor]:
    """A function ``run(*inputs) -> torch.Tensor`` for an exported artifact: ONNX Runtime
    for ``onnx``, OpenVINO (CPU) for ``openvino``, ``torch.export.load(...).module()`` for
    ``pt2``, ``aoti_load_package`` for ``aoti``. ``threads`` (default torch's) sets the
    runtimes' intra-op threads, so that all rows of a comparison use the same cores."""
    threads = threads or torch.get_num_threads()
    path = str(path)
    if fmt == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def run_ort(*xs: torch.Tensor) -> torch.Tensor:
            feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, xs)}
            return torch.from_numpy(sess.run(None, feeds)[0])
        return run_ort
    if fmt == "openvino":
        return openvino_runner(path, threads=threads)
    if fmt == "pt2":
        mod = torch.export.load(path).module()
        return lambda *xs: mod(*xs)
    if fmt == "aoti":
        runner = torch._inductor.aoti_load_package(path)
        return lambda *xs: runner(*xs)
    raise ExportError(f"load_runner: unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


def openvino_runner(model_or_path, threads: int | None = None, precision: str = "f32") -> Callable[..., torch.Tensor]:
    """OpenVINO on the CPU for an IR/ONNX path or an ``openvino.Model``; ``precision``
    "f32" or "bf16" (OpenVINO's inference precision hint: bf16 where the CPU has it)."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "INFERENCE_PRECISION_HINT": precision,
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(model_or_path, "CPU", config)
    request = compiled.create_infer_request()

    def run_ov(*xs: torch.Tensor) -> torch.Tensor:
        out = request.infer([x.detach().cpu().numpy() for x in xs])
        return torch.from_numpy(next(iter(out.values())).copy())
    return run_ov


@dataclasses.dataclass
class Parity:
    """How an artifact's output compares with the model's (eager PyTorch, float64 diff)."""
    max_abs: float
    ref_max: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tol

    def __str__(self) -> str:
        text = (f"max |exported - eager| = {self.max_abs:.3g} (outputs up to {self.ref_max:.3g}; "
                f"tolerance {self.tol:.3g}): {'OK' if self.ok else 'MISMATCH'}")
        if self.ref_max == 0:  # e.g. an untrained UNet: its output conv starts at zero
            text += " - but the eager output is all zeros, so this compares little (export trained weights)"
        return text


def parity(model: nn.Module, run: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
           rtol: float = PARITY_RTOL) -> Parity:
    """Run the model (no grad) and the artifact on ``inputs`` and compare: the tolerance is
    ``rtol * max(1, max|eager|)``. A shape mismatch or a NaN is a mismatch (max_abs inf)."""
    with torch.no_grad():
        ref = model(*inputs).double().cpu()
        got = run(*inputs)
    got = got.double().cpu() if isinstance(got, torch.Tensor) else torch.as_tensor(got).double()
    ref_max = float(ref.abs().max()) if ref.numel() else 0.0
    tol = rtol * max(1.0, ref_max)
    if got.shape != ref.shape or not torch.isfinite(got).all():
        return Parity(float("inf"), ref_max, tol)
    return Parity(float((got - ref).abs().max()) if ref.numel() else 0.0, ref_max, tol)

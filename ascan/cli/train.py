"""``python -m ascan train``, ``validate`` and ``train-diffusion``.

The options are derived from the config dataclasses (``ClassifierConfig``,
``DiffusionConfig``): one ``--flag`` per field, so the CLI and the Python API cannot
drift apart. ``--resume RUN_DIR`` reloads the run's own config from ``RUN_DIR/run.json``;
only the options in ``RESUME_MAY_CHANGE`` may differ from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from .. import train as T
from ..train import classify, diffusion

HELP = {
    "model": "model name (python -m ascan variants; UNets: ascan_unet_*)",
    "data": "'digits' (the embedded data set) or an ImageFolder root (with train/ and val/, or split by --holdout)",
    "epochs": "epochs (the LR schedule spans them all)",
    "batch_size": "GLOBAL batch: all processes x accumulation steps",
    "accum_steps": "gradient accumulation micro-batches per optimizer step",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay (not on norms, biases, embeddings)",
    "warmup_steps": "linear warmup steps (default: 5%% of the run), then cosine",
    "min_lr_ratio": "final LR / peak LR",
    "clip_grad": "gradient-norm clip (0 = off)",
    "ema": "EMA decay of the weights (0 = off); evaluation and best.safetensors use the EMA",
    "amp": "'none' or 'bf16' (autocast)",
    "channels_last": "channels_last model and inputs",
    "compile": "torch.compile the model (before the DDP wrap; after sharding under FSDP2)",
    "fused": "use the fused ascan_kernels ops (--no-fused: plain PyTorch)",
    "fsdp": "FSDP2: fully_shard every C/T block, then the model (for models that do not fit one device)",
    "sync_bn": "SyncBatchNorm across processes (CUDA only in torch)",
    "seed": "seed of the initial weights, the data order and every augmentation draw",
    "workers": "DataLoader worker processes",
    "device": "'cpu' or 'cuda' (default: cuda when available)",
    "out": "run directory: run.json, ckpt-<step>/, best.safetensors, summary.json",
    "keep": "checkpoints to keep (the newest)",
    "save_every": "checkpoint every N steps as well as at each epoch end (0 = epoch ends only)",
    "log_every": "progress line every N steps",
    "eval_every": "evaluate every N epochs",
    "max_steps": "stop after this many optimizer steps in total (with a checkpoint; resumable)",
    "quiet": "no progress output",
    "image_size": "input resolution (default: 32 for digits, 224 for folders; diffusion: 16)",
    "holdout": "fraction held out per class when the data has no val/ folder",
    "label_smoothing": "label smoothing of the cross-entropy",
    "drop_path": "stochastic depth rate of the deepest block (linear in depth)",
    "mixup": "mixup alpha (0 = off)",
    "cutmix": "cutmix alpha (0 = off)",
    "eval_batch_size": "batch size of the evaluation",
    "num_train_steps": "diffusion timesteps of the noise schedule",
    "cond_drop": "probability of dropping the class/context (classifier-free guidance)",
    "samples_per_class": "samples per class in the final PNG grid",
    "sample_steps": "DDIM steps of the final samples",
    "guidance": "classifier-free guidance scale of the final samples",
    "judge": "classifier checkpoint that labels the final samples (default: runs/ascan-digits)",
    "train_judge": "train the default judge classifier first when it is missing",
    "grid": "file name of the PNG grid inside --out",
}
RESUME_MAY_CHANGE = {"max_steps", "log_every", "workers", "keep", "save_every", "quiet", "device", "eval_every"}
NOT_OPTIONS = {"resume"}


def _add_config_options(ap: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in NOT_OPTIONS:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        kind = base[0]
        h = HELP.get(f.name, "")
        if kind is bool:
            if f.default is True:
                ap.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const", const=False,
                                default=None, help=h)
            else:
                ap.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=h)
        else:
            ap.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                            help=f"{h} (default: {f.default})" if h else None)


def _config(cls, args: argparse.Namespace, defaults: dict, prog: str):
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if f.name not in NOT_OPTIONS and getattr(args, f.name) is not None}
    if args.resume is None:
        data = given.get("data", "digits")
        base = defaults if data == "digits" else {}
        return cls(**{**base, **given})
    run_json = Path(args.resume) / "run.json"
    if not run_json.is_file():
        raise FileNotFoundError(f"--resume {args.resume}: no run.json there (not a run directory of {prog})")
    saved = json.loads(run_json.read_text())["config"]
    names = {f.name for f in dataclasses.fields(cls)}
    saved = {k: v for k, v in saved.items() if k in names}
    clash = [k for k, v in given.items() if k not in RESUME_MAY_CHANGE and k != "out" and saved.get(k) != v]
    if clash:
        raise ValueError(f"--resume: a resumed run keeps its config; {', '.join('--' + k.replace('_', '-') for k in clash)} "
                         f"differ{'s' if len(clash) == 1 else ''} from {run_json} (may change: "
                         f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_MAY_CHANGE))})")
    return cls(**{**saved, **given, "out": str(args.resume), "resume": True})


def _run(prog: str, argv: list[str], cls_name: str) -> int:
    cls = {"classify": classify.ClassifierConfig, "diffusion": diffusion.DiffusionConfig}[cls_name]
    defaults = {"classify": classify.DEFAULTS_DIGITS, "diffusion": diffusion.DEFAULTS_DIGITS}[cls_name]
    doc = {"classify": "Train an AsCAN classifier (no arguments: ascan_t on the embedded digits, ~5 min on 2 cores).",
           "diffusion": "Train an AsCAN diffusion UNet (no arguments: ascan_unet_c2i_t on the embedded digits, "
                        "then a PNG grid of samples and their classifier-judged accuracy)."}[cls_name]
    ap = argparse.ArgumentParser(prog=prog, description=doc + " Under torchrun: one process per device, DDP "
                                 "(or FSDP2 with --fsdp).")
    _add_config_options(ap, cls)
    ap.add_argument("--resume", metavar="RUN_DIR", default=None,
                    help="continue the run in RUN_DIR from its last complete checkpoint, with its own config")
    args = ap.parse_args(argv)
    try:
        cfg = _config(cls, args, defaults, prog)
        task = classify.ClassifyTask(cfg) if cls_name == "classify" else diffusion.DiffusionTask(cfg)
        summary = T.loop.run(task, cfg)
    except (T.DataError, T.CheckpointError, T.TrainingError, ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 1
    if not cfg.quiet and summary["is_main"]:
        m = summary.get("metrics") or {}
        if "top1" in m:
            print(f"held-out top-1: {m['top1']:.2f}% ({m['held_out']} images"
                  f"{', EMA weights' if cfg.ema else ''}), best {summary['best']['score']:.2f}% at step "
                  f"{summary['best']['step']}; {summary['step']} steps in {summary['wall_s']:.0f} s")
            print(f"checkpoints: {summary['out']}/best.safetensors, {summary['checkpoint']}")
        elif "judged_accuracy" in summary:
            print(f"classifier-judged accuracy: {summary['judged_accuracy']:.1f}%; grid: {summary['grid']}; "
                  f"{summary['step']} steps in {summary['wall_s']:.0f} s")
    return 0


def train_main(argv: list[str]) -> int:
    return _run("python -m ascan train", argv, "classify")


def diffusion_main(argv: list[str]) -> int:
    return _run("python -m ascan train-diffusion", argv, "diffusion")


def validate_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m ascan validate",
                                 description="Held-out top-1 of a classifier checkpoint.")
    ap.add_argument("--checkpoint", required=True,
                    help="a .safetensors file, a ckpt-<step>/ directory or a run directory (its best.safetensors)")
    ap.add_argument("--data", default=None, help="'digits' or an ImageFolder root (default: what it was trained on)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-fused", dest="fused", action="store_false")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        r = T.validate(args.checkpoint, args.data, args.batch_size, args.fused, args.device)
    except (T.CheckpointError, T.DataError, ValueError) as e:
        print(f"python -m ascan validate: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r) if args.json else f"{r['model']} ({r['checkpoint']}): held-out top-1 {r['top1']:.2f}% "
          f"on {r['held_out']} images, loss {r['val_loss']:.4f}")
    return 0

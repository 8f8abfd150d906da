"""Checkpoints that never lose work.

A run directory holds ``run.json`` (the run's config), ``ckpt-<step>/`` directories and
``best.safetensors``. A checkpoint directory holds ``model.safetensors`` (the weights,
with the model's name and build arguments in the safetensors metadata),
``ema.safetensors`` (when the run keeps an EMA), ``trainer.pt`` (optimizer, scheduler,
step, data position, every rank's RNG states, best score) and, for FSDP runs,
``sharded/`` (a torch.distributed.checkpoint of the model, one file per rank).

Every file is written to a temporary name, fsynced and renamed; a checkpoint directory
is assembled under ``.tmp-ckpt-<step>`` and renamed into place only when complete, so a
kill at any moment leaves either the previous checkpoint set or the new one, never half
of one. Leftover temporaries are removed by the next save.
"""
from __future__ import annotations

import contextlib

import json
import os
import shutil
from pathlib import Path

import torch

import ascan_kernels as K

CKPT_PREFIX = "ckpt-"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt, or for another model."""


def write_json(path: str | os.PathLike, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
    K.atomic_write(path, w)


# --------------------------------------------------------------------------- weights
def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """safetensors file of ``tensors`` (moved to CPU, made contiguous, shared storage
    broken) with ``meta`` JSON-encoded under the ``ascan`` metadata key."""
    from safetensors.torch import save_file
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    K.atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={"ascan": json.dumps(meta, sort_keys=True)}))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a file written by :func:`save_weights`; CheckpointError when the
    file is missing, truncated, not safetensors, or not one of ours."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get("ascan")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file: {e}") from None
    if meta_raw is None:
        raise CheckpointError(f"checkpoint {str(path)!r} has no ascan metadata (not written by ascan.train): "
                              "load it with safetensors and model.load_state_dict yourself")
    return tensors, json.loads(meta_raw)


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: dict, source: str,
              expect_model: str | None = None) -> None:
    """``model.load_state_dict(tensors)`` with an error that names the checkpoint's model
    and what does not fit (instead of a page of missing/unexpected keys)."""
    ck_model = meta.get("model")
    if expect_model is not None and ck_model != expect_model:
        raise CheckpointError(f"checkpoint {source!r} holds a {ck_model!r} model, not {expect_model!r}")
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise CheckpointError(f"checkpoint {source!r} ({ck_model}, {meta.get('model_kwargs')}) does not fit "
                              f"this model: {'; '.join(parts)}")
    model.load_state_dict(tensors)


# --------------------------------------------------------------------------- checkpoint directories
def step_dir(out: Path, step: int) -> Path:
    return out / f"{CKPT_PREFIX}{step:08d}"


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories in ``out``, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)
             and p.name[len(CKPT_PREFIX):].isdigit() and (p / "trainer.pt").is_file()
             and (p / "model.safetensors").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(out)
    return ckpts[-1] if ckpts else None


def begin_checkpoint(out: Path, step: int) -> Path:
    """A fresh temporary directory to assemble checkpoint ``step`` in (rank 0 only)."""
    tmp = out / f"{K.TMP_PREFIX}{CKPT_PREFIX}{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(out: Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename the finished ``tmp`` into place, then drop all but the newest ``keep``
    checkpoints and any temporaries left by an interrupted save."""
    K.fsync_dir(tmp)
    final = step_dir(out, step)
    if final.exists():  # the same step saved twice (end of run right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    K.fsync_dir(out)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for p in out.iterdir():
        if p.name.startswith(K.TMP_PREFIX) and p != tmp:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
    return final


def save_torch(path: str | os.PathLike, obj) -> None:
    K.atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_trainer_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: trainer.pt is corrupt: {e}") from None


def resolve_weights(path: str | os.PathLike, prefer_ema: bool = True) -> Path:
    """A weights file from a user's path: the file itself, a checkpoint directory
    (its ema.safetensors when there is one, else model.safetensors) or a run directory
    (best.safetensors, else the latest checkpoint)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if (p / "best.safetensors").is_file():
        return p / "best.safetensors"
    ck = p if (p / "model.safetensors").is_file() else latest_checkpoint(p)
    if ck is None:
        raise CheckpointError(f"{str(p)!r} holds no checkpoint (no best.safetensors, no ckpt-* directory)")
    if prefer_ema and (ck / "ema.safetensors").is_file():
        return ck / "ema.safetensors"
    return ck / "model.safetensors"


def load_sharded_into(model: torch.nn.Module, sharded_dir: str | os.PathLike) -> None:
    """Load an FSDP run's ``sharded/`` checkpoint (torch.distributed.checkpoint) into a
    plain, unsharded model in this one process."""
    import torch.distributed.checkpoint as dcp
    sd = {"model": model.state_dict()}
    dcp.load(sd, checkpoint_id=str(sharded_dir))
    model.load_state_dict(sd["model"])

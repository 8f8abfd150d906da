"""The training loop shared by the classifier and the diffusion trainers.

A :class:`Task` says what is trained (the model, the data, the loss, the evaluation);
:func:`run` does everything else: process group, DDP / FSDP2, AdamW with decay groups,
warmup + cosine, gradient accumulation and clipping, bf16 autocast, channels_last,
torch.compile, EMA, progress log, checkpoints, resume.

``batch_size`` is the global batch (all ranks, all accumulation micro-batches): the
same run on 1 or N processes takes the same optimizer steps on the same samples.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ascan_kernels._version import __version__

from . import checkpoint as ck
from .data import ResumableSampler
from .distributed import DistContext, apply_fsdp, convert_sync_bn, setup, wrap_ddp
from .optim import EMA, param_groups, warmup_cosine


class TrainingError(RuntimeError):
    """Training cannot go on: a loss that is not finite, out of memory, a bad resume."""


@dataclasses.dataclass
class LoopConfig:
    """What every trainer shares. ``batch_size`` is global; ``lr`` is the peak LR for it.

    ``warmup_steps=None``: 5% of the run. ``ema=0``: no EMA. ``save_every=0``: checkpoint at
    the end of each epoch only. ``max_steps``: stop (with a checkpoint) after this many
    optimizer steps; the LR schedule still spans ``epochs``, so a cut run resumes exactly.
    """

    epochs: int = 10
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    ema: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    fused: bool = True
    fsdp: bool = False
    sync_bn: bool = False
    seed: int = 0
    workers: int = 0
    device: str | None = None
    out: str = "runs/ascan"
    keep: int = 2
    save_every: int = 0
    log_every: int = 20
    eval_every: int = 1
    max_steps: int | None = None
    resume: bool = False
    quiet: bool = False

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.accum_steps < 1:
            raise ValueError("epochs, batch_size and accum_steps must be >= 1")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.ema and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema decay must be in (0, 1) (0 = off), got {self.ema}")


class Task:
    """What a trainer trains. Subclasses set ``kind`` and implement the methods below."""

    kind = "task"
    train_set: Any
    model_name: str
    model_kwargs: dict

    def build_model(self, fused: bool) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch, device: torch.device, channels_last: bool) -> torch.Tensor:
        """Mean loss of one micro-batch."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, ctx: DistContext, cfg: LoopConfig) -> dict:
        """Metrics on held-out data, reduced over ranks; ``score`` (higher is better) picks the best."""
        return {}

    def finish(self, model: nn.Module, cfg: LoopConfig, log) -> dict:
        """Rank 0, after training, with a plain eval model holding the final (EMA) weights."""
        return {}

    def meta(self) -> dict:
        """What a checkpoint needs to rebuild the model and its input pipeline."""
        return {"task": self.kind, "model": self.model_name, "model_kwargs": self.model_kwargs}


# --------------------------------------------------------------------------- state dicts
def _full_model_state(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _full_optim_state(model: nn.Module, opt: torch.optim.Optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def _load_model_state(model: nn.Module, sd: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(sd)


def _load_optim_state(model: nn.Module, opt: torch.optim.Optimizer, sd: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, opt, sd, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(sd)


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)  # FSDP2 shards are DTensors (a collective)
    return (full() if full is not None else t).detach().cpu()


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e))


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------- the loop
def run(task: Task, cfg: LoopConfig) -> dict:
    """Train ``task`` under ``cfg``; returns a summary dict (steps, metrics, best, paths, wall time)."""
    cfg.check()
    t_start = time.perf_counter()
    ctx = setup(cfg.device, need_group=cfg.fsdp)
    try:
        return _run(task, cfg, ctx, t_start)
    finally:
        ctx.close()


def _run(task: Task, cfg: LoopConfig, ctx: DistContext, t_start: float) -> dict:
    out = Path(cfg.out)
    log = (lambda *a: None) if (cfg.quiet or not ctx.is_main) else (lambda *a: print(*a, flush=True))
    dev = ctx.device

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = task.build_model(cfg.fused).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        model = convert_sync_bn(model, ctx)
    elif cfg.sync_bn:
        log("note: --sync-bn has no effect in a single process")
    raw = model
    if cfg.fsdp:
        apply_fsdp(raw, ctx, mixed_bf16=cfg.amp == "bf16")
        train_model = torch.compile(raw) if cfg.compile else raw
    else:
        train_model = torch.compile(raw) if cfg.compile else raw  # compile first, then wrap
        if ctx.distributed:
            train_model = wrap_ddp(train_model, ctx)
    n_params = sum(p.numel() for p in raw.parameters())

    micro, rem = divmod(cfg.batch_size, ctx.world * cfg.accum_steps)
    if rem or micro < 1:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of processes x accum_steps "
                         f"({ctx.world} x {cfg.accum_steps})")
    sampler = ResumableSampler(task.train_set, ctx.world, ctx.rank, shuffle=True, seed=cfg.seed, drop_last=False)
    loader = DataLoader(task.train_set, batch_size=micro, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=dev.type == "cuda",
                        persistent_workers=False,
                        # its own generator: iter(loader) draws a worker base seed, and a draw from the
                        # global RNG would make a resumed run's dropout stream differ from a straight run's
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = sampler.num_samples // micro // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set "
                         f"({len(task.train_set)} samples)")
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.05 * total))

    opt = torch.optim.AdamW(param_groups(raw, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, warmup, cfg.min_lr_ratio))
    ema = EMA(raw, cfg.ema) if cfg.ema else None
    step, epoch, pos, best = 0, 0, 0, None
    history: list[dict] = []

    meta = dict(task.meta(), ascan_version=__version__)
    if cfg.resume:
        latest = ck.latest_checkpoint(out)
        if latest is None:
            raise ck.CheckpointError(f"--resume: {str(out)!r} holds no complete checkpoint to resume from")
        state = ck.load_trainer_state(latest)
        if state.get("world") != ctx.world:
            raise TrainingError(f"--resume: {latest} was written by {state.get('world')} processes, this run has "
                                f"{ctx.world}; resume with the same process count (the data position is per rank)")
        weights, wmeta = ck.load_weights(latest / "model.safetensors")
        if wmeta.get("model") != task.model_name:
            raise ck.CheckpointError(f"--resume: {latest} holds a {wmeta.get('model')!r} model, "
                                     f"this run builds {task.model_name!r}")
        if cfg.fsdp:
            _load_model_state(raw, weights, True)
        else:
            ck.load_into(raw, weights, wmeta, str(latest / "model.safetensors"))
        _load_optim_state(raw, opt, state["optimizer"], cfg.fsdp)
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            if not (latest / "ema.safetensors").is_file():
                raise ck.CheckpointError(f"--resume: {latest} has no EMA weights but this run keeps an EMA")
            ema.load(ck.load_weights(latest / "ema.safetensors")[0], state["ema_updates"])
        step, epoch, pos, best = state["step"], state["epoch"], state["pos"], state["best"]
        history = state.get("history", [])
        _set_rng_state(state["rng"][ctx.rank], dev)
        log(f"resumed from {latest} at step {step} (epoch {epoch + 1}, batch {pos // cfg.accum_steps})")
    elif ctx.is_main:
        existing = ck.latest_checkpoint(out)
        if existing is not None:
            raise TrainingError(f"{str(out)!r} already holds checkpoints ({existing.name}): pass --resume to "
                                "continue that run, or choose another --out")
    if not cfg.resume:
        torch.manual_seed(cfg.seed + 1 + ctx.rank)  # dropout / drop path: a different stream per rank
    if ctx.is_main:
        ck.write_json(out / "run.json", {"config": dataclasses.asdict(cfg), "meta": meta, "world": ctx.world})

    limit = total if cfg.max_steps is None else min(total, cfg.max_steps)
    amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else contextlib.nullcontext())
    log(f"{task.model_name} ({n_params / 1e6:.2f}M params, fused={cfg.fused}) on {ctx.world} x {dev.type}: "
        f"{len(task.train_set)} training samples, global batch {cfg.batch_size} "
        f"({ctx.world} proc x {cfg.accum_steps} accum x {micro}), {steps_per_epoch} steps/epoch, "
        f"{total} steps over {cfg.epochs} epochs" + (f", stopping at step {limit}" if limit < total else ""))

    def ema_weights() -> dict[str, torch.Tensor] | None:
        return {k: _full(v) for k, v in ema.named().items()} if ema is not None else None

    def save(step_: int) -> tuple[Path | None, dict[str, torch.Tensor]]:
        """Checkpoint (collective under FSDP; rank 0 writes). Returns (the checkpoint
        directory on rank 0, else None; the weights evaluation uses, EMA or model)."""
        model_sd = _full_model_state(raw, cfg.fsdp)
        ema_sd = ema_weights()
        optim_sd = _full_optim_state(raw, opt, cfg.fsdp)
        rngs = ctx.gather_objects(_rng_state(dev))
        tmp = ck.begin_checkpoint(out, step_) if ctx.is_main else None
        tmp = Path(ctx.broadcast_object(str(tmp) if tmp else None))
        if cfg.fsdp:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_model_state_dict
            dcp.save({"model": get_model_state_dict(raw)}, checkpoint_id=str(tmp / "sharded"))
        final = None
        if ctx.is_main:
            m = dict(meta, step=step_)
            ck.save_weights(tmp / "model.safetensors", model_sd, dict(m, kind="model"))
            if ema_sd is not None:
                ck.save_weights(tmp / "ema.safetensors", ema_sd, dict(m, kind="ema"))
            ck.save_torch(tmp / "trainer.pt", {
                "step": step_, "epoch": epoch, "pos": pos, "best": best, "world": ctx.world,
                "optimizer": optim_sd, "scheduler": sched.state_dict(),
                "ema_updates": ema.updates if ema is not None else 0, "rng": rngs, "history": history})
            final = ck.commit_checkpoint(out, tmp, step_, cfg.keep)
        ctx.barrier()
        return final, (ema_sd if ema_sd is not None else model_sd)

    def eval_weights() -> dict[str, torch.Tensor]:
        return ema_weights() if ema is not None else _full_model_state(raw, cfg.fsdp)

    def evaluate(tag: str) -> dict:
        nonlocal best
        if ema is not None:
            ema.swap(raw)
        try:
            raw.eval()
            # an evaluation must not move the training RNG (else where a run was cut and
            # evaluated would change the dropout draws after it, and resume would not be exact)
            devices = [dev.index or 0] if dev.type == "cuda" else []
            with torch.no_grad(), amp, torch.random.fork_rng(devices=devices):
                metrics = task.evaluate(raw, ctx, cfg)
        finally:
            raw.train()
            if ema is not None:
                ema.swap(raw)
        if not metrics:
            return metrics
        metrics = dict(metrics, step=step, epoch=epoch)
        history.append(metrics)
        log(f"{tag}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in metrics.items() if k not in ("step", "epoch")))
        score = metrics.get("score")
        if score is not None and (best is None or score > best["score"]):
            best = {"score": score, "step": step}
            sd = eval_weights()
            if ctx.is_main:
                ck.save_weights(out / "best.safetensors", sd,
                                dict(meta, step=step, kind="ema" if ema is not None else "model", metrics=metrics))
        return metrics

    raw.train()
    t_window, n_window, loss_window, steps_window = time.perf_counter(), 0, 0.0, 0
    t_loop, steps_at_loop = time.perf_counter(), step
    last_metrics: dict = {}
    ddp = ctx.distributed and not cfg.fsdp
    while step < limit:
        sampler.set_position(epoch, pos * micro)
        if hasattr(task.train_set, "set_epoch"):
            task.train_set.set_epoch(epoch)
        batches = iter(loader)
        while pos // cfg.accum_steps < steps_per_epoch and step < limit:
            try:
                loss_sum = 0.0
                for a in range(cfg.accum_steps):
                    batch = next(batches)
                    sync = contextlib.nullcontext() if (not ddp or a == cfg.accum_steps - 1) else train_model.no_sync()
                    with sync:
                        with amp:
                            loss = task.loss(train_model, batch, dev, cfg.channels_last)
                        (loss / cfg.accum_steps).backward()
                    loss_sum += float(loss.detach()) / cfg.accum_steps
                if not math.isfinite(loss_sum):
                    raise TrainingError(f"{task.model_name}: the loss is {loss_sum} at step {step + 1} "
                                        f"(lr {sched.get_last_lr()[0]:.3g}); nothing was saved for this step. "
                                        "Lower --lr, keep --clip-grad on, or check the data for NaN/Inf")
                if cfg.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip_grad)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                if ema is not None:
                    ema.update(raw)
            except BaseException as e:
                if _is_oom(e):
                    raise TrainingError(f"{task.model_name}: out of memory on {dev} with a micro-batch of {micro} "
                                        f"(global batch {cfg.batch_size}); lower --batch-size or raise "
                                        f"--accum-steps. The last complete checkpoint is untouched. ({e})") from None
                raise
            step += 1
            pos += cfg.accum_steps
            n_window += micro * cfg.accum_steps * ctx.world
            loss_window += loss_sum
            steps_window += 1
            if step % cfg.log_every == 0 or step == limit:
                (loss_avg,) = ctx.all_sum([loss_window / steps_window])
                now = time.perf_counter()
                rate = n_window / (now - t_window)
                per_step = (now - t_loop) / max(1, step - steps_at_loop)
                log(f"step {step}/{limit} epoch {epoch + 1}/{cfg.epochs} loss {loss_avg / ctx.world:.4f} "
                    f"lr {sched.get_last_lr()[0]:.3g} {rate:.0f} img/s eta {_fmt_time(per_step * (limit - step))}")
                t_window, n_window, loss_window, steps_window = now, 0, 0.0, 0
            if cfg.save_every and step % cfg.save_every == 0 and step < limit:
                save(step)
        if pos // cfg.accum_steps >= steps_per_epoch:
            epoch, pos = epoch + 1, 0
            if epoch % cfg.eval_every == 0 or step == limit:
                last_metrics = evaluate(f"epoch {epoch}/{cfg.epochs}")
            if step < limit:
                save(step)
    if not last_metrics or last_metrics.get("step") != step:
        last_metrics = evaluate(f"step {step}")
    final_ckpt, final_sd = save(step)  # the gathered weights serve finish() too
    summary: dict = {"step": step, "total_steps": total, "epochs_done": epoch, "metrics": last_metrics,
                     "best": best, "out": str(out), "checkpoint": str(final_ckpt) if final_ckpt else None,
                     "params": n_params, "world": ctx.world, "is_main": ctx.is_main}
    if ctx.is_main:
        plain = task.build_model(cfg.fused).to(dev).eval()
        plain.load_state_dict(final_sd)
        summary.update(task.finish(plain, cfg, log))
        summary["wall_s"] = time.perf_counter() - t_start
        ck.write_json(out / "summary.json", _jsonable(summary))
    else:
        summary["wall_s"] = time.perf_counter() - t_start
    ctx.barrier()
    return summary


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


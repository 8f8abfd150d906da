"""torch.distributed for the trainers: torchrun's env:// rendezvous, DDP and FSDP2.

One process without ``torchrun`` is world size 1 and needs no process group. Under
torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the group is NCCL on CUDA and gloo
on CPU. FSDP2 (``fully_shard``) shards each C/T block, bottom-up, then the root.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from ..layers import CBlock, TBlock
from ..models.unet import GenCBlock, GenTBlock


@dataclasses.dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum floats over the ranks (float64 on the group's device)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str | None = None, need_group: bool = False) -> DistContext:
    """Join torchrun's process group when launched by it; pick the device.

    ``device``: "cpu", "cuda" or None (CUDA when available). Under torchrun on CUDA each
    process takes GPU ``LOCAL_RANK``. ``need_group``: make a one-process group when not
    under torchrun (FSDP2 shards over a process group even when it has one member)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device on this machine")
    dev = torch.device("cuda", local) if kind == "cuda" else torch.device(kind)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    ctx = DistContext(rank=rank, world=world, local_rank=local, device=dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", init_method="env://")
        ctx.initialized_here = True
    elif need_group and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        ctx.initialized_here = True
    return ctx


def block_types() -> tuple[type, ...]:
    """The C and T block classes of every model family: FSDP2's sharding units."""
    return (CBlock, TBlock, GenCBlock, GenTBlock)


def apply_fsdp(model: nn.Module, ctx: DistContext, mixed_bf16: bool) -> nn.Module:
    """FSDP2: ``fully_shard`` every C/T block (bottom-up), then the whole model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    kw = {"mesh": mesh}
    if mixed_bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for m in [m for m in model.modules() if isinstance(m, block_types())]:
        fully_shard(m, **kw)
    fully_shard(model, **kw)
    return model


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def convert_sync_bn(model: nn.Module, ctx: DistContext) -> nn.Module:
    """BatchNorm -> SyncBatchNorm. torch's SyncBatchNorm runs on CUDA/XPU only: on CPU
    (gloo) this raises rather than silently training with per-rank statistics."""
    if ctx.device.type not in ("cuda", "xpu"):
        raise ValueError(f"--sync-bn: torch's SyncBatchNorm supports CUDA/XPU tensors only, this run is on "
                         f"{ctx.device.type}; without it each rank's BatchNorm uses its own batch statistics")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)

"""torch.distributed through torchrun: process group, model wrapping (DDP or FSDP2) and reductions.

Koi starts nothing itself: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and Koi joins the group.
Without those variables everything here is a no-op, so single-process code paths stay plain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError, DistributedConfig


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(cfg: DistributedConfig) -> DistInfo:
    """Join the process group torchrun prepared (once); return this process's place in it."""
    if not launched_by_torchrun():
        if cfg.strategy != "none":
            raise ConfigError("", "distributed.strategy", f"{cfg.strategy!r} needs a launch through torchrun (WORLD_SIZE > 1)")
        return DistInfo()
    if cfg.strategy == "none":
        raise ConfigError("", "distributed.strategy", "expected ddp or fsdp when launched by torchrun, got 'none'")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def device_for(info: DistInfo, requested: torch.device) -> torch.device:
    """One GPU per process (the local rank's); a process beyond the GPU count is a config error, not a CUDA crash."""
    if info.active and requested.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError("", "train.device", f"process {info.local_rank} on this machine needs GPU {info.local_rank}, but "
                              f"{torch.cuda.device_count()} are visible; start at most that many processes per node, "
                              "or set train.device to cpu")
        return torch.device("cuda", info.local_rank)
    return requested


def wrap_model(model: nn.Module, cfg: DistributedConfig, info: DistInfo, device: torch.device,
               autocast_dtype: torch.dtype | None) -> nn.Module:
    """DDP replicates the model; FSDP2 shards each block and the root, keeping the precision plan's modules."""
    if not info.active:
        return model
    if cfg.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Buffers are the same on every rank by construction (RoPE tables; 2:4 masks, computed from the same
        # weights at the same steps), so they are not re-sent from rank 0 before every forward.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if device.type != "cuda" and not fsdp_runs_off_cuda():
        raise ConfigError("", "distributed.strategy", f"'fsdp' on {device.type} needs torch >= 2.7 (torch "
                          f"{torch.__version__}'s FSDP2 streams are CUDA-only); use ddp, a GPU, or a newer torch")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32) if autocast_dtype else MixedPrecisionPolicy()
    # The mesh names the run's device type: left to itself FSDP picks CUDA whenever the machine
    # has a GPU, even for a CPU (gloo) run, and fails on ranks beyond the GPU count.
    mesh = init_device_mesh(device.type, (info.world_size,))
    blocks = model.model.blocks if hasattr(model, "model") else model.blocks  # the objective wraps the model
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def fsdp_runs_off_cuda() -> bool:
    """FSDP2 (fully_shard) runs on CPU/gloo from torch 2.7; before, it records events on CUDA streams."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 7)


def mean_across_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    """`mean_on_device` of a host number, read back (a host sync)."""
    if not info.active:
        return value
    return float(mean_on_device(torch.tensor(value, dtype=torch.float64, device=device), info))


def mean_on_device(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean over ranks as a float64 tensor on the value's device: a collective, but no host read."""
    value = value.double()
    if not info.active:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / info.world_size


def broadcast_object(value, info: DistInfo):
    """Rank 0's value on every rank (e.g. the run folder it chose)."""
    if not info.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def full_state_dicts(model: nn.Module, optimizer, strategy: str, info: DistInfo) -> tuple[dict, list[dict]]:
    """Model and optimizer state as full tensors, whatever the sharding (a checkpoint any world size can load)."""
    if not (info.active and strategy == "fsdp"):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            [get_optimizer_state_dict(model, opt, options=options) for opt in optimizer.optimizers])


def load_full_state_dicts(model: nn.Module, optimizer, model_state: dict, optimizer_state: list[dict], strategy: str,
                          info: DistInfo) -> None:
    if not (info.active and strategy == "fsdp"):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    for opt, state in zip(optimizer.optimizers, optimizer_state, strict=True):
        set_optimizer_state_dict(model, opt, state, options=options)

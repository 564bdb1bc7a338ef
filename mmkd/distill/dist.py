"""Distributed helpers: torchrun environment, process group, gathering for the losses."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """Where this process sits (from torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    env = DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend)
        logger.info("rank %d/%d joined the %s process group", env.rank, env.world_size, backend)
    return env


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather(x: torch.Tensor, env: DistEnv, with_grad: bool) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, rank order.

    With ``with_grad`` gradients flow back to every rank's input (the loss is then
    the same on every rank, and DDP's averaging yields the global gradient).
    """
    if not env.distributed:
        return x
    if with_grad:
        import torch.distributed.nn.functional as dnn

        return torch.cat(dnn.all_gather(x.contiguous()), dim=0)
    out = [torch.empty_like(x) for _ in range(env.world_size)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)

"""Scale-out of calibration on torch.distributed (torchrun): split prompts, fold exactly.

Under torchrun (WORLD_SIZE > 1) prompt i runs on rank i % W. After each round of W
prompts every rank's partial statistics are all-gathered and folded in prompt order,
so the sums are added in exactly the order one process adds them: the CALIB bytes
are the same for any number of ranks. Only rank 0 writes. Backend: gloo on CPU,
nccl with --device cuda (one GPU per rank, LOCAL_RANK).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The torchrun world, or a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: str) -> str:
    """Start the process group if needed; return the torch device string of this rank."""
    import torch
    import torch.distributed as dist

    if device == "cuda":
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def rounds(n: int, world: World) -> list[int | None]:
    """Prompt index this rank runs in each round (None when a round has no prompt for it)."""
    count = -(-n // world.size)
    return [i if (i := r * world.size + world.rank) < n else None for r in range(count)]


def gather(part, world: World) -> list:
    """Every rank's object of this round, in rank order (a one-element list without torchrun)."""
    if not world.distributed:
        return [part]
    import torch.distributed as dist

    out = [None] * world.size
    dist.all_gather_object(out, part)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def finish(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

"""Distributed helpers: where this process runs and how ranks agree, as thin wrappers over torch.distributed.

A run started by ``torchrun`` has several ranks; one started plainly has world size 1, and then every helper here
is a no-op that returns its input, so single-process code needs no branches.
"""
from __future__ import annotations

import os

import torch


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_process_group(world: int, device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, Gloo on CPUs) once, and pin this rank's GPU."""
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)


def all_true(flag: bool, world: int, device) -> bool:
    """True on every rank when ``flag`` is True on every rank (so that all ranks stop together)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item() > 0)


def gather(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order (any picklable object)."""
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank, as DDP does before each forward pass."""
    if world > 1:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, 0)


def barrier(world: int) -> None:
    """Wait for every rank."""
    if world > 1:
        torch.distributed.barrier()

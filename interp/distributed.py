"""The process group that ``torchrun`` describes, for the commands that run data-parallel (``interp.harvest``,
``interp.sae``'s training). It is ``torch.distributed`` itself: gloo on a CPU-only machine; on a machine with
GPUs, nccl for CUDA tensors and gloo for CPU ones (``"cpu:gloo,cuda:nccl"``), with each rank on its own GPU
(``LOCAL_RANK``; in turn when there are more ranks than GPUs), so that ``"cuda"`` means that GPU once ``join``
has run. interp's barrier, statistics and dead-latent counts are CPU tensors, so they go through gloo; nccl
starts only for CUDA tensors (the gradients of an SAE training on GPUs). Outside
``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op for one process, rank 0 of 1."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce", "barrier", "broadcast", "join", "leave"]


def join() -> tuple[int, int]:
    """(rank, world size); joins the process group from torchrun's environment when there is more than one.
    The commands join before they load the model, so that ``--device cuda`` is each rank's own GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():  # ranks share the GPUs in turn when there are more ranks than GPUs
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier() -> None:
    """Wait for every rank."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """``tensor`` summed (``op="sum"``) or maximised (``"max"``) over the ranks, in place; returned."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def broadcast(tensor: Tensor, src: int) -> Tensor:
    """Rank ``src``'s ``tensor`` on every rank, in place (same shape and dtype everywhere); returned."""
    if dist.is_initialized():
        dist.broadcast(tensor, src=src)
    return tensor


def leave() -> None:
    """Leave the process group (a command's last step under torchrun), so no rank exits under another."""
    if dist.is_initialized():
        dist.destroy_process_group()

"""DDP helpers: the process group under torchrun, rank/world size, and syncs outside DDP.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the trainer
initialises gloo on CPU and NCCL on GPU. Without it every helper degrades to
the single-process answer, so methods can call them unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting WORLD_SIZE > 1) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints, logs and images."""
    return rank() == 0


def init_process_group(device_type: str) -> None:
    """Start the process group for this torchrun worker: NCCL on CUDA, gloo on CPU."""
    if is_initialized() or not launched_by_torchrun():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of parameters stepped outside DDP (e.g. TUSK prototypes) over ranks.

    Parameters without a gradient are skipped; every rank must pass the same
    parameters in the same order.
    """
    if not is_initialized() or world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum a few floats over ranks (validation loss totals, stop flags)."""
    if not is_initialized() or world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop at the same step)."""
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def broadcast_(tensor: torch.Tensor, src: int = 0) -> None:
    """Overwrite ``tensor`` on every rank with rank ``src``'s values (in place; no-op without a group)."""
    if is_initialized() and world_size() > 1:
        dist.broadcast(tensor, src=src)

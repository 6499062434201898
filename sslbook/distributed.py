"""PyTorch DDP, launched by ``torchrun``: the few helpers the methods and the trainer need.

Outside ``torchrun`` (one process) every helper is the identity, so the methods read the same
either way.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> torch.device:
    """Join the process group ``torchrun`` describes in the environment; return this process's device.

    NCCL on GPUs, gloo on the CPU. Without ``torchrun`` (no WORLD_SIZE) nothing happens.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every process's copy (then keeps our slice).

    Every process computes the *same* global loss from the gathered tensors, so each process's
    rows receive gradient from all W copies of that loss; summing them here and letting DDP
    average over the W processes gives exactly the gradient of one global loss.
    """

    @staticmethod
    def forward(ctx, tensor):
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()  # all_reduce works in place; never touch autograd's buffer
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over all processes (rank order), keeping the gradient path."""
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over all processes without gradient (MoCo's keys, memory-bank indices)."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes in place (identity on one process); used by SwAV's Sinkhorn."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (a new tensor; the identity on one process).

    A collective: the trainer calls it at logging points, so the logged loss is the global batch's.
    """
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def any_process(flag: bool, device=None) -> bool:
    """True if ``flag`` is true on any process: a decision all processes take together.

    A collective (every process must call it, at the same point) and a host sync; the trainer uses
    it at logging points to stop on a time budget, which each process reads from its own clock.
    """
    if not is_distributed():
        return bool(flag)
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()

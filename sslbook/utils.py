"""Small helpers the rest of the package shares: evaluation mode, private random streams, devices.

- :func:`eval_mode` runs a block with modules in eval mode and puts every submodule's own
  train/eval flag back afterwards (a frozen BatchNorm stays frozen);
- :func:`fork_rng` gives a block its own random stream: what runs inside may reseed or draw,
  and the caller's global RNG state comes back unchanged;
- :func:`module_device` is where a module's parameters live;
- :func:`top1` is classification accuracy in %.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(*modules):
    """``with eval_mode(model): ...`` runs the block with ``model`` in eval mode (BatchNorm uses its
    running statistics, dropout is off). Each submodule's train/eval flag is recorded first and put
    back exactly afterwards, even if the block raises. Arguments that are not ``nn.Module`` (e.g. a
    plain function) are ignored, so callers need not check.
    """
    modules = [m for m in modules if isinstance(m, nn.Module)]
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def fork_rng(device="cpu"):
    """A context manager with a private copy of the CPU RNG (and ``device``'s, if it is a GPU).

    ``with fork_rng(device): torch.manual_seed(seed); ...`` makes the block deterministic without
    changing the random stream of the code around it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index])
    return torch.random.fork_rng(devices=[])


def module_device(module, default="cpu") -> torch.device:
    """The device of ``module``'s first parameter (``default`` if it has none or is not a module)."""
    params = list(module.parameters()) if isinstance(module, nn.Module) else []
    return params[0].device if params else torch.device(default)


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy in % of predicted classes ``pred`` [N] against ``labels`` [N]."""
    return 100.0 * (pred.cpu() == labels.cpu()).float().mean().item()


@torch.no_grad()
def feature_dim(encoder: nn.Module, size: int = 32, device=None) -> int:
    """``encoder.feature_dim``, or the width of its output on one blank ``size`` x ``size`` image
    (computed in eval mode, so BatchNorm's running statistics are not touched)."""
    if hasattr(encoder, "feature_dim"):
        return int(encoder.feature_dim)
    device = module_device(encoder) if device is None else device
    with eval_mode(encoder):
        return encoder(torch.zeros(1, 3, size, size, device=device)).flatten(1).shape[1]

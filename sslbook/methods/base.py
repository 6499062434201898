"""What every method shares, and nothing more.

A method is an ``nn.Module`` that owns its networks (the ``backbone`` we evaluate, plus heads,
momentum copies, queues or memory banks) and whose ``forward`` takes the augmented views of a batch
and returns the loss. The trainer (:mod:`sslbook.trainer`) does everything else: data, augmentation,
optimiser, schedule, precision, checkpoints, logging, evaluation. State that must survive a restart
(queues, banks) is kept in registered buffers, so it travels in ``state_dict()``.
"""

from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone  # the encoder f whose features are evaluated downstream

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> dict:
        """views: one float batch [B, 3, H, W] per view; index: dataset indices [B].

        Returns a dict with ``"loss"`` (a scalar to minimise) and, optionally, ``"z"`` (the output
        embeddings, for the trainer's collapse monitor) and other detached scalars to log.
        """
        raise NotImplementedError

    def before_optimizer_step(self, epoch: int) -> None:
        """Called after backward, before the optimiser step (e.g. SwAV freezes its prototypes)."""

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimiser step with training progress in [0, 1] (momentum updates)."""

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The representation evaluated downstream: the backbone's features (before any head)."""
        return self.backbone(images)


@torch.no_grad()
def momentum_update(online_parameters, target_parameters, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter.

    MoCo's key encoder (Eq. 2) and BYOL's target network (Eq. 1) are both this moving average of
    the network that the optimiser trains; buffers (BatchNorm statistics) are not averaged.
    """
    for online, target in zip(online_parameters, target_parameters):
        target.mul_(momentum).add_(online.detach(), alpha=1.0 - momentum)

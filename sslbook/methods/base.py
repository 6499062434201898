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
    # What the constructor needs from the training data, passed by the trainer as keyword arguments:
    # "num_data" (number of training images), "labels" (their label tensor), "mean"/"std" (the
    # normalisation the augmentation applies). E.g. a memory bank: ``data_needs = ("num_data",)``.
    data_needs: tuple = ()

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

    def param_groups(self) -> list[dict]:
        """Parameters that need their own optimiser settings, as dicts with ``"params"`` and any of
        ``"fixed_lr"`` (True: the lr stays at its peak, no schedule), ``"lr_scale"`` (a factor on the lr)
        and ``"weight_decay"``. Every other parameter gets the config's settings. Default: none."""
        return []

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


def encode_crops(network: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """``network`` applied to every view, concatenated in order: ``[V * B, ...]``.

    Multi-crop (SwAV, Caron et al. 2020) mixes sizes, e.g. 2 global 32 px crops and 6 local 18 px
    ones, and one batched forward pass needs one size. So consecutive views of the same size go
    through ``network`` together (BatchNorm sees them as one batch), one pass per size: the official
    code's resolution grouping. With views all of one size this is ``network(torch.cat(views))``.
    """
    outputs, start = [], 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        outputs.append(network(torch.cat(views[start:end])))
        start = end
    return torch.cat(outputs)

"""SimCLR: the end-to-end architecture (Chen, Kornblith, Norouzi, Hinton, 2020).

The paper's Algorithm 1, line by line:

    for sampled minibatch {x_k}, k = 1..N:
        draw two augmentation functions t ~ T, t' ~ T          -> the trainer's Augment: views[0], views[1]
        h = f(t(x)), h' = f(t'(x))                              -> self.backbone
        z = g(h), z' = g(h')                                    -> self.projector
        s_ij = z_i.z_j / (|z_i||z_j|);  l(i,j) = -log softmax_j(s_i / tau) over the 2N-1 others
        L = 1/2N sum_k [l(2k-1, 2k) + l(2k, 2k-1)]              -> losses.nt_xent
        update networks f and g to minimise L

Negatives are the other 2(N-1) views of the same batch, so every negative is encoded by the
current network (no staleness) at the cost of needing big batches. Under DDP the embeddings of
all processes are gathered (with gradient), so the negatives come from the global batch, as in
the paper's TPU training; BatchNorm is then synchronised too if ``sync_bn`` is set ("global BN").
"""

from __future__ import annotations

import math

import torch

from ..distributed import gather_with_grad
from ..losses import nt_xent
from ..models import simclr_projector
from .base import Method


TEMPERATURE_SCHEDULES = ("constant", "log")


def annealed_temperature(tau0: float, t: int) -> float:
    """tau_t = tau0 / (1 + ln t), t = 1, 2, ... (optimiser steps).

    The annealing idea of the book's SimCLR notes (a temperature that starts high, like simulated
    annealing, and cools as training goes on); not part of the SimCLR paper, which keeps tau fixed.
    tau_1 = tau0, tau_e = tau0 / 2, tau_{e^2} = tau0 / 3.
    """
    if t < 1:
        raise ValueError(f"the annealing step t starts at 1, got {t}")
    return tau0 / (1.0 + math.log(t))


class SimCLR(Method):
    def __init__(self, backbone, hidden_dim: int | None = None, out_dim: int = 128, temperature: float = 0.5,
                 temperature_schedule: str = "constant"):
        super().__init__(backbone)
        # g(.): Linear-BN-ReLU-Linear; the paper's hidden width equals the encoder's output width.
        self.projector = simclr_projector(backbone.feature_dim, hidden_dim or backbone.feature_dim, out_dim)
        if temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(f"temperature_schedule must be one of {', '.join(TEMPERATURE_SCHEDULES)}, "
                             f"got {temperature_schedule!r}")
        self.temperature, self.temperature_schedule = temperature, temperature_schedule
        if temperature_schedule == "log":  # the step count travels in checkpoints, so a resume continues it
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def current_temperature(self) -> float:
        if self.temperature_schedule == "constant":
            return self.temperature
        return annealed_temperature(self.temperature, int(self.steps_done) + 1)

    def forward(self, views, index=None):
        x1, x2 = views[0], views[1]
        h = self.backbone(torch.cat([x1, x2]))  # one pass: BN statistics over all 2N views
        z1, z2 = self.projector(h).chunk(2)
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)  # negatives from the global batch
        tau = self.current_temperature()
        loss = nt_xent(z1, z2, tau)
        out = {"loss": loss, "z": z1.detach()}
        if self.temperature_schedule != "constant":
            out["temperature"] = torch.tensor(tau)
        return out

    def after_optimizer_step(self, progress: float) -> None:
        if self.temperature_schedule == "log":
            self.steps_done += 1

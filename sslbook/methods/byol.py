"""BYOL: bootstrap your own latent (Grill et al., 2020).

Paper: Jean-Bastien Grill, Florian Strub, Florent Altché, Corentin Tallec, Pierre H. Richemond et
al. (2020), "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS.

Two networks. The *online* network (parameters theta) is an encoder f_theta, a projector g_theta
and a predictor q_theta; the *target* network (parameters xi) is an encoder f_xi and a projector
g_xi with the online network's architecture but no predictor. The online network learns to predict
the target's projection of another view of the same image; the target is never trained, it is a
slowly moving average of the online network. The paper's Sec. 3.1, step by step:

    xi = theta  (at start)                         -> __init__: target_* are deep copies
    v, v' = t(x), t'(x)                            -> the trainer's Augment: views[0], views[1]
    y = f_theta(v); z = g_theta(y); p = q_theta(z) -> self.backbone, self.projector, self.predictor
    y' = f_xi(v'); z' = g_xi(y')                   -> self.target (no gradient)
    L = || p/||p|| - z'/||z'|| ||^2 = 2 - 2cos(p, z')  -> losses.byol_loss (Eq. 2)
    L_tilde: the same with v and v' swapped        -> the second byol_loss term (Eq. 2, symmetrised)
    theta <- optimizer(theta, grad_theta(L + L_tilde))   -> the trainer (LARS on ImageNet)
    xi <- tau xi + (1 - tau) theta                 -> after_optimizer_step (Eq. 1)
    tau = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2    -> momentum_at(progress), progress = k/K (Sec. 3.3)

What makes the family different. There are no negatives: nothing in the loss pushes two images
apart, and a collapsed network (one constant target, a prediction pointing the same way) would make
the loss 0, its minimum. BYOL does not collapse in practice; the paper credits the predictor and
the slowly moving target (its Table 5a: with tau = 0, i.e. the target is the online network itself,
linear top-1 falls to 0.3%). Chen & He (2021, SimSiam) later showed that the moving average is not
what prevents collapse: a stop-gradient on the target branch plus the predictor suffice (see
:mod:`sslbook.methods.simsiam`). The cost of BYOL is a second, gradient-free forward pass per view
through the target network and the target's memory, independent of the batch size; the paper
nevertheless trains with batch 4096 and LARS.

Semantics of the target, as in the official code (deepmind-research ``byol/byol_experiment.py``):

* it is evaluated under ``torch.no_grad()`` but with BatchNorm in *training* mode (the official code
  calls it with ``is_training=True``): batch statistics normalise the targets, and the target's own
  running statistics are updated by its forward passes, never averaged from the online network;
* only parameters are averaged (Eq. 1); target parameters have ``requires_grad=False``, so the
  optimiser never sees them;
* each view goes through the networks in its own forward pass (per-view BatchNorm statistics).

Progress. The trainer calls ``after_optimizer_step(step / total_steps)`` after every optimiser step,
so tau follows the cosine schedule of the *planned* run; the official code uses k/K with k the step
about to be taken, ours the step just taken (a one-step shift; the last update uses final_momentum). tau is
recomputed from progress on every step (nothing to restore on resume); the ``tau`` buffer only keeps
the value used by the latest update, for logging.
"""

from __future__ import annotations

import copy
import math
from itertools import chain

import torch

from ..losses import byol_loss
from ..models import byol_predictor, byol_projector
from .base import Method, momentum_update


class BYOL(Method):
    def __init__(
        self,
        backbone,
        dim: int = 256,
        hidden_dim: int = 4096,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ):
        """BYOL around ``backbone`` (the online encoder f_theta, evaluated downstream).

        Args:
            dim: output width of the projector and the predictor (256 in the paper).
            hidden_dim: hidden width of both MLPs (4096 in the paper).
            base_momentum: tau_base, the EMA rate at the start (0.996 for 1000 epochs on ImageNet).
            final_momentum: tau at the end of training (1 in the paper); set it equal to
                ``base_momentum`` for a constant tau.
        """
        super().__init__(backbone)
        if not (0.0 <= base_momentum <= 1.0 and 0.0 <= final_momentum <= 1.0):
            raise ValueError(f"momenta must be in [0, 1], got {base_momentum} and {final_momentum}")
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        # Online network: f_theta (self.backbone), g_theta, q_theta.
        self.projector = byol_projector(backbone.feature_dim, hidden_dim, dim)
        self.predictor = byol_predictor(dim, hidden_dim)
        # Target network: f_xi, g_xi, initialised as copies of the online ones, moved only by the EMA.
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("tau", torch.tensor(float(base_momentum)))  # tau of the latest EMA update

    def momentum_at(self, progress: float) -> float:
        """tau = final - (final - base) * (cos(pi * progress) + 1) / 2, progress in [0, 1] (Sec. 3.3)."""
        progress = min(max(float(progress), 0.0), 1.0)
        return self.final_momentum - (self.final_momentum - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2

    # ---- the two networks
    def online(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, p) = (g_theta(f_theta(v)), q_theta(z)), with gradient."""
        z = self.projector(self.backbone(v))
        return z, self.predictor(z)

    @torch.no_grad()
    def target(self, v: torch.Tensor) -> torch.Tensor:
        """z' = g_xi(f_xi(v)), no gradient (BatchNorm in the same mode as the online network)."""
        return self.target_projector(self.target_backbone(v))

    def _online_parameters(self):
        return chain(self.backbone.parameters(), self.projector.parameters())

    def _target_parameters(self):
        return chain(self.target_backbone.parameters(), self.target_projector.parameters())

    # ---- one step
    def forward(self, views, index=None):
        v1, v2 = views[0], views[1]
        z1, p1 = self.online(v1)
        _, p2 = self.online(v2)
        t1, t2 = self.target(v1), self.target(v2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)  # L + L_tilde (Eq. 2, symmetrised)
        return {"loss": loss, "z": z1.detach(), "tau": self.tau.detach().clone()}

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """Eq. 1, xi <- tau xi + (1 - tau) theta, with tau from the cosine schedule at ``progress``."""
        tau = self.momentum_at(progress)
        self.tau.fill_(tau)
        momentum_update(self._online_parameters(), self._target_parameters(), tau)

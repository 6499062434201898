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

import torch

from ..distributed import gather_with_grad
from ..losses import nt_xent
from ..models import simclr_projector
from .base import Method


class SimCLR(Method):
    def __init__(self, backbone, hidden_dim: int | None = None, out_dim: int = 128, temperature: float = 0.5):
        super().__init__(backbone)
        # g(.): Linear-BN-ReLU-Linear; the paper's hidden width equals the encoder's output width.
        self.projector = simclr_projector(backbone.feature_dim, hidden_dim or backbone.feature_dim, out_dim)
        self.temperature = temperature

    def current_temperature(self) -> float:
        """tau of this step: fixed in the paper (a subclass may schedule it, see :mod:`.simclr_annealed`)."""
        return self.temperature

    def forward(self, views, index=None):
        x1, x2 = views[0], views[1]
        h = self.backbone(torch.cat([x1, x2]))  # one pass: BN statistics over all 2N views
        z1, z2 = self.projector(h).chunk(2)
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)  # negatives from the global batch
        loss = nt_xent(z1, z2, self.current_temperature())
        return {"loss": loss, "z": z1.detach()}

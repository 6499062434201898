"""SimSiam: a Siamese network with neither negatives nor a momentum encoder (Chen & He, 2021).

Paper: Xinlei Chen and Kaiming He (2021), "Exploring Simple Siamese Representation Learning", CVPR.

The paper's Algorithm 1, line by line:

    # f: backbone + projection mlp;  h: prediction mlp
    for x in loader:                            -> the trainer
        x1, x2 = aug(x), aug(x)                 -> the trainer's Augment: views[0], views[1]
        z1, z2 = f(x1), f(x2)                   -> self.encode (backbone, then self.projector)
        p1, p2 = h(z1), h(z2)                   -> self.predictor
        L = D(p1, z2)/2 + D(p2, z1)/2           -> forward, D = losses.negative_cosine
        L.backward(); update(f, h)              -> the trainer (SGD step)

    def D(p, z):                                -> losses.negative_cosine
        z = z.detach()                          # stop gradient (``stop_gradient=True``)
        p = normalize(p, dim=1); z = normalize(z, dim=1)
        return -(p*z).sum(dim=1).mean()

What makes the family different. There is nothing here that pushes different images apart: no
negatives (SimCLR, MoCo), no prototypes with a balanced assignment (SwAV), not even a slowly moving
target network (BYOL). Both branches are the *same* encoder f. A constant output minimises the loss
(every D = -1, its minimum), and the paper shows that the network does reach it as soon as the
``stop-gradient`` is removed (Sec. 4.1, Fig. 2: loss -> -1 and the std of the l2-normalised output
-> 0). With it, the encoder on x2 gets no gradient from z2 in the first term, only from p2 in the
second, and SimSiam does not collapse. Chen & He's hypothesis (Sec. 5) is that SimSiam is an
EM-like alternation: stopgrad(z) plays the role of a per-image target eta_x held fixed while
theta takes an SGD step, and the predictor h learns to approximate the expectation of z over
augmentations that the one-sample target leaves out. ``stop_gradient=False`` is the collapse
experiment. The cost per image is two forward/backward passes of one encoder and nothing else: no
queue, no bank, no second network, and it works at ordinary batch sizes (256 or 512).

Details that follow the paper and the official code (facebookresearch/simsiam, ``builder.py``):

* the projection MLP has BN on every layer including the output (no affine there), 3 layers on
  ImageNet (``projector_layers=3``) and 2 on CIFAR (Appendix D), hidden and output width ``dim``;
* the predictor is a bottleneck ``dim -> pred_dim -> dim`` with BN on the hidden layer only;
* each view is encoded in its own forward pass, so BatchNorm statistics are per view;
* the paper keeps the predictor's learning rate constant while the encoder's decays (Table 1c,
  68.1% vs 67.7%): ``fix_predictor_lr=True`` puts ``self.predictor`` in a parameter group with a
  fixed lr (``param_groups``), which the trainer's schedule leaves alone.
"""

from __future__ import annotations

import torch

from ..losses import negative_cosine
from ..models import simsiam_predictor, simsiam_projector
from .base import Method


class SimSiam(Method):
    def __init__(
        self,
        backbone,
        dim: int = 2048,
        pred_dim: int = 512,
        stop_gradient: bool = True,
        projector_layers: int = 3,
        fix_predictor_lr: bool = False,
    ):
        """SimSiam around ``backbone`` (the trunk of f, evaluated downstream).

        Args:
            dim: d, the width of z and p (2048 in the paper, ImageNet and CIFAR alike).
            pred_dim: the predictor's bottleneck width (512 = d/4 in the paper).
            stop_gradient: detach z in D(p, z), as SimSiam does; ``False`` is the paper's Sec. 4.1
                ablation, in which the network collapses.
            projector_layers: layers of the projection MLP (3 on ImageNet, 2 on CIFAR-10).
            fix_predictor_lr: keep the predictor's learning rate at the base rate while the rest
                follows the schedule (the paper's default from Table 1c on; ``--fix-pred-lr`` in the
                official code).
        """
        super().__init__(backbone)
        # f = backbone + projection MLP; "The hidden fc is 2048-d", the output fc is d-dimensional.
        self.projector = simsiam_projector(backbone.feature_dim, dim, dim, projector_layers)
        # h: the bottleneck prediction MLP.
        self.predictor = simsiam_predictor(dim, pred_dim)
        self.stop_gradient = stop_gradient
        self.fix_predictor_lr = fix_predictor_lr

    def param_groups(self) -> list[dict]:
        """The predictor at a fixed learning rate, if ``fix_predictor_lr``."""
        return [{"params": list(self.predictor.parameters()), "fixed_lr": True}] if self.fix_predictor_lr else []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = f(x): backbone, then the projection MLP. [N, dim]."""
        return self.projector(self.backbone(x))

    def forward(self, views, index=None):
        x1, x2 = views[0], views[1]
        z1, z2 = self.encode(x1), self.encode(x2)  # projections, n-by-d
        p1, p2 = self.predictor(z1), self.predictor(z2)  # predictions, n-by-d
        D = negative_cosine
        loss = D(p1, z2, self.stop_gradient) / 2 + D(p2, z1, self.stop_gradient) / 2
        return {"loss": loss, "z": z1.detach()}

"""Context prediction: where is the second patch relative to the first? (Doersch, Gupta & Efros, 2015).

Paper: Doersch, Gupta & Efros (2015), "Unsupervised Visual Representation Learning by Context
Prediction", ICCV.

Sample a patch, then one of its 8 neighbours in a 3x3 grid; shown only the two patches, the
network classifies the neighbour's position (8 classes). Doing so needs some understanding of
what is in the patches: a wheel below a car door, an ear above an eye. The network is a pair of
towers with shared weights (one per patch), whose features are concatenated and classified by
fully connected layers, so a patch's representation is computed without seeing the other one.

The procedure, line by line:

    for each mini-batch of images x                                    -> views[0]
        a 3x3 grid of patches, gaps between them, each patch jittered   -> pretext.patch_grid
        y ~ Uniform{0..7}; first patch = centre, second = neighbour y   -> pretext.relative_patch_pairs
        (optional) each patch grayscale with probability gray_p         -> the colour-shortcut remedy
        h_c = f(centre), h_n = f(neighbour), one shared backbone        -> self.backbone on both
        logits = MLP(concat(h_c, h_n))                                  -> self.classifier (fc7, fc8)
        loss = cross-entropy(logits, y)                                 -> F.cross_entropy
        SGD step                                                        -> the trainer

The paper's shortcuts: the gap and the jitter stop the network from matching lines and textures
across touching borders; chromatic aberration (green shifted against red and blue, more towards
the borders of a photograph) tells a patch's absolute position in the frame, and was removed by
colour projection or colour dropping (see :func:`sslbook.pretext.relative_patch_pairs`); here a
per-patch random grayscale (``gray_p``) is offered instead.

``all_neighbours=True`` (an option, not the paper's sampling): every image contributes its centre
paired with *each* of its 8 neighbours, one grid per image, 9 patches through the backbone for 8
labelled pairs -- as RotNet feeds all four rotations of an image. The backbone is trained on
patches only (8 px on CIFAR-10) and evaluated on whole images (``embed`` = ``self.backbone``).

``grid=2`` (also not the paper's): a 2x2 grid, which fits patches almost half the image wide (14 px
on CIFAR-10, against 6 to 8 px for a 3x3 grid). On it every cell neighbours every other, so the first
patch is no longer always the centre: :func:`sslbook.pretext.cell_pairs` lists the 12 ordered pairs
(with ``all_neighbours``, 4 patches through the backbone for 12 labelled pairs), still labelled by the
8 directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import CIFAR10_MEAN, CIFAR10_STD
from ..models import mlp
from ..pretext import NEIGHBOURS, cell_pairs, patch_grid, relative_patch_pairs
from .base import Method


class RelativePatch(Method):
    """Relative patch position prediction; see the module docstring.

    ``patch``/``gap``/``jitter`` in px (defaults: 8/3/1, the paper's 96/48/7 scaled to fit a 32 px
    image); ``hidden_dim``: the fc layer on the concatenated pair (4096 in the paper's AlexNet
    towers); ``gray_p``: probability of a grayscale patch; ``mean``/``std``: the normalisation of the
    views (the trainer passes them), kept as buffers, for taking grayscale on the pixels.
    """

    data_needs = ("mean", "std")  # passed by the trainer (see Method.data_needs)

    def __init__(
        self,
        backbone,
        patch: int = 8,
        gap: int = 3,
        jitter: int = 1,
        hidden_dim: int = 4096,
        gray_p: float = 0.0,
        all_neighbours: bool = False,
        grid: int = 3,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ):
        super().__init__(backbone)
        self.patch, self.gap, self.jitter = patch, gap, jitter
        self.gray_p = gray_p
        self.all_neighbours = all_neighbours
        self.grid = grid
        cell_pairs(grid)  # a grid other than 3 or 2 fails here, not at the first step
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.classifier = mlp(2 * backbone.feature_dim, hidden_dim, len(NEIGHBOURS), num_layers=2)

    def pairs(self, x: torch.Tensor):
        """Features of (centre, neighbour) pairs ``[P, 2d]`` and their labels ``[P]``, plus the patch features."""
        cut = dict(
            patch=self.patch,
            gap=self.gap,
            jitter=self.jitter,
            gray_p=self.gray_p,
            mean=self.mean,
            std=self.std,
            grid=self.grid,
        )
        B = x.shape[0]
        if self.all_neighbours:
            patches, _ = patch_grid(x, **cut)  # [B, 9, C, p, p] (4 cells on a 2x2 grid)
            h = self.backbone(patches.flatten(0, 1)).reshape(B, self.grid**2, -1)  # every patch once
            firsts, seconds, labels = cell_pairs(self.grid)  # 3x3: the centre and each neighbour, in label order
            pair_features = torch.cat([h[:, list(firsts)], h[:, list(seconds)]], dim=2)  # [B, pairs, 2d]
            labels = torch.tensor(labels, device=x.device).repeat(B)
            return pair_features.flatten(0, 1), labels, h.flatten(0, 1)
        centre, neighbour, labels = relative_patch_pairs(x, labels=None, **cut)
        h = self.backbone(torch.cat([centre, neighbour]))  # one pass: BN statistics over both
        h_c, h_n = h.chunk(2)
        return torch.cat([h_c, h_n], dim=1), labels, h

    def forward(self, views, index=None):
        pair_features, labels, h = self.pairs(views[0])
        logits = self.classifier(pair_features)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean() * 100
        return {"loss": loss, "z": h.detach(), "accuracy": accuracy}

"""Jigsaw: solve the puzzle by naming the permutation (Noroozi & Favaro, 2016).

Paper: Noroozi & Favaro (2016), "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV.

An image is cut into a 3x3 grid of tiles and the tiles are shuffled by one of N fixed
permutations; the network sees the shuffled tiles and classifies *which* permutation it was, an
N-way problem (N = 1000 in the paper). The paper's network is the **context-free network** (CFN):
every tile goes through the same convolutional trunk on its own (a "siamese-ennead": nine
branches with shared weights), so no unit sees two tiles at once and low-level statistics shared
across tile borders cannot be compared early; only after the per-tile features are concatenated
do fully connected layers reason about their arrangement.

The procedure, line by line:

    once: P <- N permutations far apart in Hamming distance        -> pretext.hamming_permutation_set
                                                                      (the ``permutations`` buffer)
    for each mini-batch of images x                                -> views[0]
        y ~ Uniform{0..N-1} per image                              -> pretext.jigsaw_puzzle
        9 tiles, each at a random spot in its cell (gaps, so
        no shared edges), put in the order P[y]                    -> pretext.jigsaw_tiles
        each tile normalised on its own (mean 0, std 1)            -> pretext.standardize_tiles
        h_k = f(tile_k), k = 1..9, one shared backbone             -> self.backbone on all B*9 tiles
        logits = MLP(concat(h_1, ..., h_9))                        -> self.classifier (the CFN's fc7, fc8)
        loss = cross-entropy(logits, y)                            -> F.cross_entropy
        SGD step                                                   -> the trainer

Shortcuts the paper closes: tiles are smaller than their cells and placed at a
random position inside them (no edge continuity), each tile is normalised independently (no
matching of brightness or contrast), and the permutations are far apart (no near-duplicate
classes). The concatenation is in slot order, so the classifier knows which feature came from
which slot -- it has to, to name the order.

Compared with PIRL (:mod:`sslbook.methods.memory_bank`), which cuts the same puzzle: PIRL asks the
representation of the puzzle to be *invariant* (close to the image's own), Jigsaw asks it to
*encode the permutation*. The backbone is trained on tiles only (8 px on CIFAR-10) and evaluated,
like every method here, on whole images (``embed`` = ``self.backbone``).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from ..models import mlp
from ..pretext import hamming_permutation_set, jigsaw_puzzle, standardize_tiles
from .base import Method


class Jigsaw(Method):
    """The jigsaw pretext task with a fixed permutation set; see the module docstring.

    Defaults are the paper's: N = 1000 permutations chosen by its greedy average-distance rule
    (``selection="mean"``; ``"min"`` picks the farthest permutation first, see
    :func:`sslbook.pretext.hamming_permutation_set`), a 3x3 grid, tiles 64/85 of a cell, per-tile
    normalisation, an fc layer of 4096 units on the concatenated tile features. The set is a
    registered buffer, so a checkpoint carries the exact classes it was trained with.
    """

    def __init__(
        self,
        backbone,
        num_permutations: int = 1000,
        grid: int = 3,
        tile: Optional[int] = None,
        hidden_dim: int = 4096,
        selection: str = "mean",
        permutation_seed: int = 0,
        normalize_tiles: bool = True,
    ):
        super().__init__(backbone)
        self.grid = grid
        self.tile = tile
        self.normalize_tiles = normalize_tiles
        self.register_buffer(
            "permutations", hamming_permutation_set(num_permutations, grid, permutation_seed, selection)
        )
        # fc7 + fc8 of the CFN: on the grid**2 tile features concatenated in slot order.
        self.classifier = mlp(grid * grid * backbone.feature_dim, hidden_dim, num_permutations, num_layers=2)

    def forward(self, views, index=None):
        x = views[0]
        tiles, labels = jigsaw_puzzle(x, self.permutations, self.grid, self.tile)  # [B*9, C, t, t], y [B]
        if self.normalize_tiles:
            tiles = standardize_tiles(tiles)
        h = self.backbone(tiles)  # one shared network for every tile: [B*9, d]
        logits = self.classifier(h.reshape(x.shape[0], -1))  # concat(h_1..h_9) -> N classes
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean() * 100
        return {"loss": loss, "z": h.detach(), "accuracy": accuracy}

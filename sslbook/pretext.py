"""Pretext-task transforms: pure functions that turn a batch of images into a pretext task's inputs.

A *pretext task* makes a label out of the data itself: cut an image into pieces and shuffle them,
rotate it, remove its colour. The covariant use of such a transform asks the network to predict
it (which permutation? which angle?); PIRL (Misra & van der Maaten 2020) instead asks the
representation to be *invariant* to it. Either way the transform is the same, and it lives here
as a pure function: tensors in, tensors out, randomness from torch's global generator (so a
resumed run replays it exactly), no learnable state.

Contents:

* :func:`jigsaw_tiles` - the jigsaw puzzle of Noroozi & Favaro (2016), as PIRL uses it.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["jigsaw_tiles", "default_tile"]

# Noroozi & Favaro (2016) and PIRL cut a 255 px crop into a 3x3 grid of 85 px cells and take a
# 64 px tile at a random position inside each cell: the tile covers 64/85 of its cell's side.
TILE_FRACTION = 64 / 85


def default_tile(cell: int) -> int:
    """Side of a jigsaw tile for a ``cell`` px grid cell: 64/85 of it (64 for 85, 8 for CIFAR's 10)."""
    return max(1, round(cell * TILE_FRACTION))


def jigsaw_tiles(
    images: torch.Tensor,
    grid: int = 3,
    tile: Optional[int] = None,
    permutations: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut every image into a ``grid`` x ``grid`` puzzle and shuffle the pieces.

    Paper: Noroozi & Favaro (2016), "Unsupervised Learning of Visual Representations by Solving
    Jigsaw Puzzles", ECCV; used invariantly by Misra & van der Maaten (2020), "Self-Supervised
    Learning of Pretext-Invariant Representations" (PIRL), CVPR, Sec. 2.3 and Appendix A.1.

    Steps, for each image:

    1. the image is divided into ``grid`` x ``grid`` cells of ``H // grid`` x ``W // grid`` px,
       starting at the top-left corner (a remainder of fewer than ``grid`` px at the bottom and
       right is unused; 255 px -> cells of 85, 32 px -> cells of 10);
    2. from every cell a ``tile`` x ``tile`` square is taken at a uniformly random offset inside
       the cell, so neighbouring tiles do not share a border (the network cannot solve the
       puzzle by matching edges); ``tile`` equal to the cell side means no jitter;
    3. the tiles are put in a random order: output slot k holds the tile of cell ``perm[k]``,
       cells numbered row by row (0 = top-left, ``grid**2 - 1`` = bottom-right).

    Args:
        images: ``[B, C, H, W]`` batch (any dtype; values are copied, not changed).
        grid: cells per side (3 in both papers).
        tile: side of a tile in px; default :func:`default_tile` of the cell side (64/85 of it).
        permutations: ``[B, grid**2]`` orders to use (row b is a permutation of
            0..grid**2-1), e.g. drawn from a fixed permutation set as in Noroozi & Favaro. None
            draws a uniformly random permutation per image, as PIRL does.

    Returns:
        ``(tiles, perm)``: tiles ``[B * grid**2, C, tile, tile]``, the ``grid**2`` tiles of
        image b at rows ``b * grid**2 ...`` in slot order; perm ``[B, grid**2]`` (long).
        Cell c of image b sits in slot ``perm[b].argsort()[c]``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(images.shape)}")
    B, C, H, W = images.shape
    n = grid * grid
    cell_h, cell_w = H // grid, W // grid
    if cell_h < 1 or cell_w < 1:
        raise ValueError(f"a {H}x{W} image is too small for a {grid}x{grid} grid")
    tile = default_tile(min(cell_h, cell_w)) if tile is None else tile
    if not 1 <= tile <= min(cell_h, cell_w):
        raise ValueError(f"tile must be between 1 and the cell side {min(cell_h, cell_w)}, got {tile}")
    device = images.device

    if permutations is None:
        perm = torch.rand(B, n, device=device).argsort(dim=1)  # a uniform random permutation per image
    else:
        perm = torch.as_tensor(permutations, device=device).long()
        if perm.shape != (B, n) or not torch.equal(perm.sort(dim=1).values,
                                                    torch.arange(n, device=device).expand(B, n)):
            raise ValueError(f"permutations must be [B={B}, {n}] rows that each permute 0..{n - 1}")
    # Offsets inside each cell, uniform in [0, cell - tile]: drawn for every slot even when there is
    # no room to move (then they are all 0), so the amount of randomness used never varies.
    off_y = torch.randint(0, cell_h - tile + 1, (B, n), device=device)
    off_x = torch.randint(0, cell_w - tile + 1, (B, n), device=device)

    steps = torch.arange(tile, device=device)
    rows = ((perm // grid) * cell_h + off_y)[..., None] + steps  # [B, n, tile]: image rows of slot k
    cols = ((perm % grid) * cell_w + off_x)[..., None] + steps  # [B, n, tile]
    b = torch.arange(B, device=device)[:, None, None, None]
    tiles = images.permute(0, 2, 3, 1)[b, rows[..., :, None], cols[..., None, :]]  # [B, n, tile, tile, C]
    tiles = tiles.permute(0, 1, 4, 2, 3).reshape(B * n, C, tile, tile)
    return tiles.contiguous(), perm

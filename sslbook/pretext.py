"""Pretext-task transforms: pure functions that turn a batch of images into a pretext task's inputs.

A *pretext task* makes a label out of the data itself: cut an image into pieces and shuffle them,
rotate it, remove its colour. The covariant use of such a transform asks the network to predict
it (which permutation? which angle?); PIRL (Misra & van der Maaten 2020) instead asks the
representation to be *invariant* to it. Either way the transform is the same, and it lives here
as a pure function: tensors in, tensors out, randomness from torch's global generator (so a
resumed run replays it exactly), no learnable state.

Contents:

* :func:`jigsaw_tiles` - the jigsaw puzzle of Noroozi & Favaro (2016), as PIRL uses it.
* :func:`rotate_batch` - RotNet's pseudo-labels (Gidaris, Singh & Komodakis 2018): turn each image by
  0, 90, 180 or 270 degrees; the label is the number of quarter turns.
* :func:`hamming_permutation_set` - Noroozi & Favaro's fixed set of jigsaw permutations, chosen
  greedily far apart in Hamming distance; :func:`hamming_distances` measures a set.
* :func:`jigsaw_puzzle` - a puzzle whose order is drawn from such a set; the label is the index of the
  order in the set (the covariant jigsaw task).
* :func:`standardize_tiles` - each tile to zero mean and unit standard deviation (a jigsaw shortcut remedy).
* :func:`patch_grid` and :func:`relative_patch_pairs` - Doersch, Gupta & Efros's (2015) context
  prediction: a centre patch and one of its 8 neighbours, with gaps and jitter; the label is the
  neighbour's position.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Optional, Sequence, Union

import torch

__all__ = [
    "jigsaw_tiles",
    "default_tile",
    "rotate_batch",
    "hamming_permutation_set",
    "hamming_distances",
    "jigsaw_puzzle",
    "standardize_tiles",
    "patch_grid",
    "relative_patch_pairs",
    "cell_pairs",
    "NEIGHBOURS",
    "NEIGHBOUR_CELLS",
]

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
        if perm.shape != (B, n) or not torch.equal(
            perm.sort(dim=1).values, torch.arange(n, device=device).expand(B, n)
        ):
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


# ---------------------------------------------------------------------------------------------
# Rotation (RotNet)
# ---------------------------------------------------------------------------------------------
NUM_ROTATIONS = 4  # 0, 90, 180, 270 degrees


def rotate_batch(
    images: torch.Tensor,
    angles: Union[None, str, Sequence[int], torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn images by multiples of 90 degrees; the label is the number of quarter turns.

    Paper: Gidaris, Singh & Komodakis (2018), "Unsupervised Representation Learning by Predicting
    Image Rotations", ICLR. The pretext task is a 4-way classification: which of the rotations
    g(X, y) = rot(X, 90 y degrees), y in {0, 1, 2, 3}, was applied to the image X?

    Rule: label k means the image was turned **k x 90 degrees counter-clockwise** as displayed
    (row 0 at the top), i.e. ``torch.rot90(image, k, dims=(-2, -1))``: k = 1 moves the top-right
    corner to the top-left. ``torch.rot90(rotated, -k, dims=(-2, -1))`` undoes it. A multiple of 90
    degrees needs no interpolation, so the network cannot spot the rotation from resampling
    artefacts: it has to know which way up the content is (the paper's argument for these four).

    Args:
        images: ``[B, C, H, W]`` with H == W (any dtype; values are copied, not changed).
        angles: which rotations, as quarter turns k:
            ``None``: one uniformly random rotation per image (torch's global generator);
            ``"all"``: all four rotations of every image, as the paper trains (it reports that
            feeding the four rotated copies of an image together in one mini-batch works better
            than one random rotation per image); the output is grouped by rotation, rows
            ``k*B .. (k+1)*B - 1`` hold the batch turned by k quarter turns;
            a sequence or tensor of B integers in 0..3: the rotation of each image.

    Returns:
        ``(rotated, labels)``: ``[B, C, H, W]`` and ``[B]`` (``[4B, ...]`` and ``[4B]`` for "all"); labels long.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(images.shape)}")
    B, _, H, W = images.shape
    if H != W:
        raise ValueError(f"rotating a batch by 90 degrees needs square images, got {H}x{W}")
    device = images.device
    if isinstance(angles, str):
        if angles != "all":
            raise ValueError(f"angles must be None, 'all' or quarter turns in 0..3, got {angles!r}")
        rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)])
        labels = torch.arange(NUM_ROTATIONS, device=device).repeat_interleave(B)
        return rotated.contiguous(), labels
    if angles is None:
        labels = torch.randint(NUM_ROTATIONS, (B,), device=device)
    else:
        labels = torch.as_tensor(angles, device=device).long().reshape(-1)
        if labels.shape != (B,) or bool(((labels < 0) | (labels >= NUM_ROTATIONS)).any()):
            raise ValueError(f"angles must give one quarter-turn count in 0..3 per image (B={B}), got {angles!r}")
    # All four rotations, then each image picks its own: no data-dependent branching (or host sync).
    every = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)])  # [4, B, ...]
    return every[labels, torch.arange(B, device=device)], labels


# ---------------------------------------------------------------------------------------------
# Jigsaw with a fixed permutation set (Noroozi & Favaro)
# ---------------------------------------------------------------------------------------------
SELECTIONS = ("mean", "min")


@functools.lru_cache(maxsize=4)
def _all_permutations(n: int) -> torch.Tensor:
    """Every permutation of 0..n-1 in lexicographic order, ``[n!, n]`` int8 (9! rows = 3.3 MB)."""
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int8)


@functools.lru_cache(maxsize=16)
def _greedy_permutations(n_permutations: int, n: int, seed: int, selection: str) -> torch.Tensor:
    candidates = _all_permutations(n)
    g = torch.Generator().manual_seed(seed)
    j = int(torch.randint(len(candidates), (1,), generator=g))  # the first one at random
    total = torch.zeros(len(candidates), dtype=torch.long)  # sum of distances to the chosen ones
    nearest = torch.full((len(candidates),), n + 1, dtype=torch.long)  # distance to the closest chosen one
    taken = torch.zeros(len(candidates), dtype=torch.bool)
    chosen = []
    while True:
        chosen.append(j)
        taken[j] = True
        d = (candidates != candidates[j]).sum(dim=1)  # Hamming distance of every candidate to the new one
        total += d
        torch.minimum(nearest, d, out=nearest)
        if len(chosen) == n_permutations:
            break
        if selection == "mean":  # Algorithm 1: the largest average distance (first index on ties)
            score = total
        else:  # farthest point first; among those, the largest average distance
            score = nearest * (n * n_permutations + 1) + total
        j = int(score.masked_fill(taken, -1).argmax())
    return candidates[chosen].long()


def hamming_permutation_set(n_permutations: int, grid: int = 3, seed: int = 0, selection: str = "mean") -> torch.Tensor:
    """A fixed set of jigsaw permutations that are far apart in Hamming distance.

    Paper: Noroozi & Favaro (2016), "Unsupervised Learning of Visual Representations by Solving
    Jigsaw Puzzles", ECCV, and its Algorithm 1. Of the 9! = 362,880 orders of a
    3x3 puzzle they use a set of N (1000 in the main experiments): the network classifies which
    member of the set shuffled the tiles. Two members that differ in only two positions would be
    nearly indistinguishable classes, so the set is chosen greedily to be spread out. The Hamming
    distance of two permutations is the number of positions where they differ (0..grid**2).

    Algorithm 1, line by line (``selection="mean"``, the paper's rule):

        candidates <- all (grid**2)! permutations, lexicographic order
        pick the first member uniformly at random (from ``seed``; this function's only randomness)
        repeat until N are chosen:
            D <- Hamming distance of every remaining candidate to every chosen member
            next <- the candidate with the largest *average* distance to the chosen ones

    Ties go to the first candidate in lexicographic order, so the set is a function of
    (N, grid, seed). The average criterion does not stop two members from being close: with
    N = 100 and seed 0 the set's smallest pairwise distance is 2 (two members differ by swapping two
    tiles), as small as for 100 random permutations (typically 2 to 4). ``selection="min"`` is the
    farthest-point variant: the candidate whose distance to its *nearest* chosen member is largest,
    ties broken by the average distance; its average distance comes out the same (8.08 for N = 100, grid 3) and its
    minimum distance much larger (6 for N = 100). :func:`hamming_distances` measures a set.

    Args:
        n_permutations: N, the size of the set (1 .. (grid**2)!).
        grid: cells per side; 2 or 3 (a 4x4 grid has 16! candidates, too many to enumerate).
        seed: picks the first member.
        selection: ``"mean"`` (the paper) or ``"min"`` (farthest point first).

    Returns:
        ``[N, grid**2]`` long; row i is a permutation of 0..grid**2-1 (usable as the ``permutations``
        of :func:`jigsaw_tiles`), and i is its class label. Results are cached; a copy is returned.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if grid not in (2, 3):
        raise ValueError(f"grid must be 2 or 3 (all (grid**2)! orders are enumerated), got {grid}")
    n = grid * grid
    if not 1 <= n_permutations <= math.factorial(n):
        raise ValueError(f"n_permutations must be between 1 and {n}! = {math.factorial(n)}, got {n_permutations}")
    return _greedy_permutations(int(n_permutations), n, int(seed), selection).clone()


def hamming_distances(permutations: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` long: the Hamming distance (positions that differ) of every pair of rows."""
    p = torch.as_tensor(permutations)
    return (p[:, None, :] != p[None, :, :]).sum(dim=-1)


def jigsaw_puzzle(
    images: torch.Tensor,
    permutation_set: torch.Tensor,
    grid: int = 3,
    tile: Optional[int] = None,
    labels: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The covariant jigsaw task: shuffle each image's tiles by a member of a fixed set; label = its index.

    Paper: Noroozi & Favaro (2016). For each image a class ``y`` is drawn uniformly from
    0..N-1 (``permutation_set`` is ``[N, grid**2]``, e.g. :func:`hamming_permutation_set`), and the
    tiles are cut and ordered by ``permutation_set[y]`` with :func:`jigsaw_tiles` (random position
    of each tile inside its cell, so no two tiles share an edge). Output slot k holds the tile of
    cell ``permutation_set[y][k]``; the network must name ``y``.

    Args:
        images: ``[B, C, H, W]``.
        permutation_set: ``[N, grid**2]`` permutations; row index = class.
        grid, tile: as :func:`jigsaw_tiles`.
        labels: ``[B]`` classes to use; None draws them uniformly (torch's global generator).

    Returns:
        ``(tiles, labels)``: tiles ``[B * grid**2, C, tile, tile]`` in slot order (image b's at rows
        ``b * grid**2 ...``), labels ``[B]`` long.
    """
    device = images.device
    perm_set = torch.as_tensor(permutation_set, device=device).long()
    if labels is None:
        labels = torch.randint(len(perm_set), (images.shape[0],), device=device)
    else:
        labels = torch.as_tensor(labels, device=device).long()
    tiles, _ = jigsaw_tiles(images, grid, tile, permutations=perm_set[labels])
    return tiles, labels


def standardize_tiles(tiles: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Each tile ``[N, C, h, w]`` to zero mean and unit standard deviation over its C*h*w values.

    Noroozi & Favaro (2016), on shortcuts: tiles of one image share low-level statistics
    (mean brightness, contrast), which can help to tell neighbours apart without understanding
    them; normalising every tile independently removes them. ``eps`` floors the standard deviation,
    so a flat tile stays finite (about 0 everywhere). Computed in float32; returns float32.
    """
    x = tiles.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(eps)


# ---------------------------------------------------------------------------------------------
# Relative patch position (context prediction)
# ---------------------------------------------------------------------------------------------
# The 8 neighbours of the centre of a 3x3 grid, labelled row by row as one reads them:
#     0 1 2
#     3 . 4
#     5 6 7
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))  # label -> (row, col)
NEIGHBOUR_CELLS = (0, 1, 2, 3, 5, 6, 7, 8)  # label -> cell index row * 3 + col
CENTRE = 4  # the centre's cell index


def cell_pairs(grid: int = 3) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(first cells, second cells, labels)`` of every labelled pair of a ``grid`` x ``grid`` patch grid.

    3 (the paper's): the centre paired with each of its 8 neighbours, labels 0..7. 2: every ordered
    pair of two different cells, 12 in all (on a 2x2 grid every cell is a neighbour of every other);
    the label is the second cell's direction from the first, numbered as :data:`NEIGHBOURS`. The
    directions are then not equally frequent: left, right, up and down occur twice, each diagonal once.
    Cells are numbered row by row, ``row * grid + col``.
    """
    if grid == 3:
        return (CENTRE,) * len(NEIGHBOURS), NEIGHBOUR_CELLS, tuple(range(len(NEIGHBOURS)))
    if grid != 2:
        raise ValueError(f"relative patch position works on a 3x3 or a 2x2 grid, got grid={grid}")
    firsts, seconds, labels = [], [], []
    for a in range(4):
        for b in range(4):
            if a != b:
                direction = (1 + b // 2 - a // 2, 1 + b % 2 - a % 2)  # as the neighbour's place around a centre
                firsts.append(a)
                seconds.append(b)
                labels.append(NEIGHBOURS.index(direction))
    return tuple(firsts), tuple(seconds), tuple(labels)


def _grayscale(x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """ITU-R 601 luma of ``[..., 3, h, w]`` copied to the 3 channels, in the input's units and dtype.

    With ``mean``/``std`` the input is normalised ``(pixel - mean) / std``: the luma is computed on the
    pixels and normalised back, so a gray patch looks like a normalised gray image.
    """
    if x.shape[-3] != 3:
        raise ValueError(f"grayscale needs 3 channels, got {x.shape[-3]}")
    v = x.float()
    shape = (3, 1, 1)
    if mean is not None:
        m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(shape)
        s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(shape)
        v = v * s + m
    luma = 0.299 * v[..., 0:1, :, :] + 0.587 * v[..., 1:2, :, :] + 0.114 * v[..., 2:3, :, :]
    out = luma.expand_as(v)
    if mean is not None:
        out = (out - m) / s
    if not x.dtype.is_floating_point:
        out = out.round().clamp(torch.iinfo(x.dtype).min, torch.iinfo(x.dtype).max)
    return out.to(x.dtype)


def patch_grid(
    images: torch.Tensor,
    patch: int = 8,
    gap: int = 3,
    jitter: int = 1,
    gray_p: float = 0.0,
    mean=None,
    std=None,
    grid: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``grid`` x ``grid`` grid (3x3 by default) of square patches per image, with gaps and random jitter.

    Paper: Doersch, Gupta & Efros (2015), "Unsupervised Visual Representation Learning by Context
    Prediction", ICCV: 96 px patches, a gap of 48 px (half a patch) between
    neighbours, each patch jittered by up to 7 px. Gap and jitter are there so the network cannot
    solve the task from low-level shortcuts, such as a line or a texture continuing across the
    border of two touching patches. At 32 px the defaults (8 px
    patches, 3 px gaps, 1 px jitter) are these proportions scaled down so the grid fits: 3*8 + 2*3
    + 2*1 = 32 px.

    ``grid=2`` cuts a 2x2 grid instead, which leaves room for patches almost half the image wide (on
    CIFAR-10: 14 px patches, 2 px gap, 1 px jitter).

    Geometry, per image: the grid plus its jitter margin, ``3*patch + 2*gap + 2*jitter`` px a side
    (``grid*patch + (grid-1)*gap + 2*jitter`` in general), is placed at a uniformly random position
    inside the image; the patch of row r and column c has its nominal top-left corner at
    ``origin + jitter + (r, c) * (patch + gap)`` and is then
    moved by independent uniform integer offsets in ``[-jitter, jitter]`` along each axis. Two
    neighbouring patches are therefore at least ``gap - 2*jitter`` px apart (1 px by default).

    ``gray_p``: each patch is independently turned grayscale with this probability -- a simple
    remedy for the colour shortcut Doersch et al. found (chromatic aberration, see
    :func:`relative_patch_pairs`). ``mean``/``std``: the normalisation ``images`` carry, so the
    grayscale is taken on the pixels (None: on the values as they are).

    Returns:
        ``(patches, corners)``: patches ``[B, 9, C, patch, patch]``, cells row by row (cell 4 is the
        centre); corners ``[B, 9, 2]`` long, each patch's top-left (y, x) in the image (``grid**2``
        cells instead of 9 for another ``grid``).
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(images.shape)}")
    B, C, H, W = images.shape
    if grid < 2:
        raise ValueError(f"a patch grid needs grid >= 2 cells a side, got grid={grid}")
    if patch < 1 or jitter < 0 or gap < 2 * jitter:
        raise ValueError(
            f"need patch >= 1, jitter >= 0 and gap >= 2 * jitter (else jittered patches can "
            f"overlap), got patch={patch}, gap={gap}, jitter={jitter}"
        )
    extent = grid * patch + (grid - 1) * gap + 2 * jitter
    if extent > min(H, W):
        raise ValueError(
            f"a grid of {grid} x {patch} px patches with {gap} px gaps and {jitter} px jitter needs "
            f"{extent} px, the images are {H}x{W}"
        )
    device = images.device
    origin = torch.stack(
        [torch.randint(0, H - extent + 1, (B,), device=device), torch.randint(0, W - extent + 1, (B,), device=device)],
        dim=1,
    )  # [B, 2]
    n = grid * grid
    shake = torch.randint(-jitter, jitter + 1, (B, n, 2), device=device)
    gray = torch.rand(B, n, device=device) < gray_p  # drawn even when gray_p = 0: the same RNG use always

    cells = torch.arange(n, device=device)
    nominal = torch.stack([cells // grid, cells % grid], dim=1) * (patch + gap)  # [n, 2]
    corners = origin[:, None, :] + jitter + nominal + shake  # [B, n, 2]
    steps = torch.arange(patch, device=device)
    rows = corners[..., 0, None] + steps  # [B, n, patch]
    cols = corners[..., 1, None] + steps
    b = torch.arange(B, device=device)[:, None, None, None]
    patches = images.permute(0, 2, 3, 1)[b, rows[..., :, None], cols[..., None, :]]  # [B, n, p, p, C]
    patches = patches.permute(0, 1, 4, 2, 3).contiguous()  # [B, n, C, p, p]
    if gray_p > 0:
        patches = torch.where(gray[..., None, None, None], _grayscale(patches, mean, std), patches)
    return patches, corners


def relative_patch_pairs(
    images: torch.Tensor,
    patch: int = 8,
    gap: int = 3,
    jitter: int = 1,
    labels: Optional[torch.Tensor] = None,
    gray_p: float = 0.0,
    mean=None,
    std=None,
    grid: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Context prediction's pairs: a centre patch, one of its 8 neighbours, and where the neighbour sits.

    Paper: Doersch, Gupta & Efros (2015), "Unsupervised Visual Representation Learning by Context
    Prediction", ICCV. Shown only the two patches, the network must say which of the 8
    positions around the first patch the second came from: an 8-way classification that needs
    an understanding of objects and their parts (is this an ear above an eye, or beside it?).

    Rule: a :func:`patch_grid` is cut from each image (gaps and jitter as there); the first patch is
    the grid's centre, the second the neighbour of label ``y``, where the labels number the 8
    positions row by row as one reads them (:data:`NEIGHBOURS`)::

        0 1 2
        3 c 4
        5 6 7

    Shortcut the paper found: **chromatic aberration**. Camera lenses focus the colour channels
    slightly differently, so green is displaced relative to red and blue by an amount that grows
    towards the edges of the photograph; a network can read from a single patch where in the frame
    it lies, and so solve the task without looking at the content. The paper removed the cue by
    "projection" (shifting green and magenta towards gray, i.e. discarding the green-magenta
    colour axis) or by "colour dropping" (keeping one randomly chosen channel of each patch and
    replacing the other two with faint noise). ``gray_p`` is a simpler remedy offered here: each
    patch is turned grayscale with that probability, which removes every inter-channel cue of
    that patch (and its colour with it).

    ``grid=2`` (not the paper's): the patches come from a 2x2 grid, which has room for bigger
    patches. The first patch is then the cell from which neighbour ``y`` lies inside the grid (a
    random one of the two where two fit: for "right of", the left cell of either row), so its
    place in the grid depends on the label; only its content can tell the network that place.

    Args:
        images: ``[B, C, H, W]``, e.g. normalised training views.
        patch, gap, jitter, gray_p, mean, std, grid: as :func:`patch_grid`.
        labels: ``[B]`` positions 0..7 to use; None draws them uniformly (torch's global generator).

    Returns:
        ``(centre, neighbour, labels)``: ``[B, C, patch, patch]`` twice, labels ``[B]`` long.
    """
    B = images.shape[0]
    device = images.device
    if labels is None:
        labels = torch.randint(len(NEIGHBOURS), (B,), device=device)
    else:
        labels = torch.as_tensor(labels, device=device).long()
    firsts, seconds, pair_labels = cell_pairs(grid)
    patches, _ = patch_grid(images, patch, gap, jitter, gray_p, mean, std, grid)
    # Each label's pairs: one on the 3x3 grid; one or two on the 2x2 grid (a lone diagonal pair is listed twice).
    by_label = [[i for i, y in enumerate(pair_labels) if y == label] for label in range(len(NEIGHBOURS))]
    k = max(len(pairs) for pairs in by_label)
    table = torch.tensor([pairs * (k // len(pairs)) for pairs in by_label], device=device)  # [8, k]
    which = torch.randint(0, k, (B,), device=device) if k > 1 else torch.zeros(B, dtype=torch.long, device=device)
    pick = table[labels, which]  # the 3x3 grid draws nothing here: its pairs are as the paper's
    rows = torch.arange(B, device=device)
    first, second = torch.tensor(firsts, device=device)[pick], torch.tensor(seconds, device=device)[pick]
    return patches[rows, first], patches[rows, second], labels

"""Diagnostics of what a contrastive loss does to a representation (the losses-and-training chapter).

- :func:`alignment_uniformity`: Wang & Isola's (2020) alignment of positive pairs and uniformity
  of the embedding on the sphere, measured on augmented views of real images;
- :func:`same_class_neighbour_rate`: how often the hardest negatives of a batch are false
  negatives (same class as the anchor);
- :func:`shifted_accuracy` and :func:`boundary_contrast`: whether a pretext task is solved from the
  content of the image or from where pixels sit in the frame (a *shortcut*: chromatic aberration in
  Doersch et al. 2015, the 8 px block grid of JPEG compression in our offline CIFAR-10 copy).

The formulas themselves (:func:`sslbook.losses.alignment`, :func:`sslbook.losses.uniformity`,
:func:`sslbook.losses.mutual_information_bound`) live with the losses.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .augment import Augment, recipe
from .losses import alignment, uniformity
from .utils import eval_mode, fork_rng


def shift_content(images: torch.Tensor, shift: int) -> torch.Tensor:
    """``images`` [B, C, H, W] with their content moved ``shift`` px right and down, same size.

    The uncovered top rows and left columns are filled by reflection. A task that reads the image
    barely notices a shift of a few pixels; one that reads *where* pixels sit in the frame does.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(images.shape)}")
    if not 0 <= shift < min(images.shape[-2:]):
        raise ValueError(f"shift must be in 0..{min(images.shape[-2:]) - 1} px, got {shift}")
    if shift == 0:
        return images.clone()
    H, W = images.shape[-2:]
    return F.pad(images.float(), (shift, 0, shift, 0), mode="reflect")[..., :H, :W].to(images.dtype)


@torch.no_grad()
def shifted_accuracy(method, images: torch.Tensor, shifts, batch_size: int = 500, seed: int = 0) -> dict:
    """A pretext task's own accuracy (the ``accuracy`` its forward reports) after :func:`shift_content`.

    ``images`` are the method's input views (normalised floats). Every shift uses the same random
    draws (puzzles, patch positions), so only the shift differs. Returns ``{shift: accuracy in %}``.
    Noroozi & Favaro's network, like Doersch et al.'s, had to be kept from solving its puzzle by
    reading the absolute position of a tile instead of its content; a sharp drop at a shift of
    2 or 3 px is the sign of such a shortcut.
    """
    device = next(method.parameters()).device
    out = {}
    with eval_mode(method):
        for shift in shifts:
            moved = shift_content(images, int(shift))
            total = 0.0
            with fork_rng(device):
                torch.manual_seed(seed)
                for start in range(0, len(moved), batch_size):
                    batch = moved[start : start + batch_size].to(device)
                    total += float(method([batch])["accuracy"]) * len(batch)
            out[int(shift)] = total / len(moved)
    return out


def boundary_contrast(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring columns, ``[W - 1]``: entry c is |x[c+1] - x[c]|.

    Averaged over images, channels and rows. Block-wise compression (JPEG: 8 x 8 px blocks, colour
    on 16 x 16 px with 4:2:0 subsampling) makes the boundaries c = 7, 15, 23, ... stand out from
    their neighbours: a grid that tells a small tile where in the frame it was cut.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(images.shape)}")
    x = images.float()
    return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2))


def same_class_neighbour_rate(
    features: torch.Tensor, labels: torch.Tensor, batch_size: int, k: int = 1, batches: int = 20, seed: int = 0
) -> dict:
    """How often the hardest "negatives" of an anchor in a random batch share its class (in %).

    Instance discrimination treats every other image of the batch as a negative, so the images of
    the anchor's own class are **false negatives** (the survey's cat-vs-cat example; Chuang et al.
    2020, "Debiased Contrastive Learning"). The hard negatives, the ones that dominate the softmax,
    are the most similar ones, and those are the likeliest to be false. For ``batches`` random batches
    of ``batch_size`` images (without replacement within a batch), every image is an anchor; its
    ``k`` nearest other images by cosine similarity of ``features`` are its hardest negatives.

    Returns ``{"nearest": % of those k neighbours with the anchor's class, "random": % of all other
    images of the batch with the anchor's class (what a random negative gives; about
    (N/C - 1) / (N - 1) for C balanced classes), "batch_size": N, "k": k}``.
    """
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"need features [N, d] and N labels, got {tuple(features.shape)} and {len(labels)}")
    if not 2 <= batch_size <= len(features):
        raise ValueError(f"batch_size must be in [2, {len(features)}], got {batch_size}")
    if not 1 <= k < batch_size:
        raise ValueError(f"k must be in [1, batch_size - 1], got {k}")
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(features.float(), dim=1)
    labels = torch.as_tensor(labels)
    nearest_hits = random_hits = anchors = 0
    for _ in range(batches):
        pick = torch.randperm(len(z), generator=g)[:batch_size]
        zb, yb = z[pick], labels[pick]
        sim = zb @ zb.T
        sim.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
        top = sim.topk(k, dim=1).indices
        nearest_hits += (yb[top] == yb[:, None]).sum().item()
        same = (yb[:, None] == yb[None, :]).sum(dim=1) - 1  # others of the anchor's class
        random_hits += same.sum().item()
        anchors += batch_size
    return {
        "nearest": 100.0 * nearest_hits / (anchors * k),
        "random": 100.0 * random_hits / (anchors * (batch_size - 1)),
        "batch_size": batch_size,
        "k": k,
    }


@torch.no_grad()
def alignment_uniformity(
    encoder: Callable,
    images: torch.Tensor,
    mean,
    std,
    views: str = "simclr",
    max_images: int = 2000,
    seed: int = 0,
    batch_size: int = 512,
) -> dict:
    """Wang & Isola's (2020) two properties of a representation, measured on ``images`` (uint8).

    Two augmented views of each image (the recipe ``views`` of :mod:`sslbook.augment`, normalised
    with ``mean``/``std``) go through ``encoder`` (e.g. ``method.embed``); the outputs are
    L2-normalised and scored with :func:`sslbook.losses.alignment` (mean ||f(x) - f(x')||^2 over
    positive pairs: lower = views closer) and :func:`sslbook.losses.uniformity` (log of the mean
    Gaussian potential over all pairs of the first views: lower = more evenly spread on the sphere).
    ``max_images`` (a fixed random subset, ``seed``) keeps the all-pairs uniformity cheap. The
    augmentation draws from a private generator state, so calling this does not change the caller's
    random stream.
    """
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:max_images]
    augment = Augment(recipe(views, size=images.shape[-1], mean=mean, std=std))
    with eval_mode(getattr(encoder, "__self__", encoder)), fork_rng(images.device):
        torch.manual_seed(seed)
        z1s, z2s = [], []
        for start in range(0, len(pick), batch_size):
            v1, v2 = augment(images[pick[start : start + batch_size]])[:2]
            z1s.append(F.normalize(encoder(v1).float().flatten(1), dim=1))
            z2s.append(F.normalize(encoder(v2).float().flatten(1), dim=1))
    z1, z2 = torch.cat(z1s), torch.cat(z2s)
    return {"alignment": float(alignment(z1, z2)), "uniformity": float(uniformity(z1)), "images": len(z1)}

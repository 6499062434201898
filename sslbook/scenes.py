"""Synthetic scenes for dense transfer: CIFAR objects on backgrounds, with boxes *and* masks.

Detection and semantic segmentation need images with several objects, each with a box and a
per-pixel outline. PASCAL VOC has them but does not fit a CPU budget; this module makes a small
stand-in from the images the encoders were pre-trained on. A *scene* is a ``canvas`` px square
background with 1 to a few CIFAR images ("objects") pasted on it, and we know by construction:

* ``boxes``: each object's pasted square, ``(x1, y1, x2, y2)`` in pixels, x2/y2 exclusive, so the
  pixels are ``image[:, y1:y2, x1:x2]`` (torchvision's continuous-coordinate convention);
* ``labels``: the object's CIFAR class **+ 1**;
* ``masks``: a class per pixel, **0 = background**, ``c + 1`` where an object of CIFAR class ``c``
  was pasted (PASCAL VOC's convention: 0 is the background, objects are 1..C).

So ``classes[0] == "__background__"`` and ``classes[c + 1]`` is CIFAR class ``c``, exactly as in
:mod:`sslbook.detection`, whose :class:`~sslbook.detection.DetectionDataset` a
:class:`SceneDataset` extends (so its detectors and :func:`~sslbook.detection.show_detections`
take scenes as they are).

Placement is on a grid: the canvas is cut into ``grid x grid`` cells, each object gets its own
cell (drawn without replacement) and a random size and position inside it, so objects never
overlap and a box holds exactly its object's pixels. A CIFAR image includes its own background, so
an "object" is the whole pasted square: the tasks are to find, outline and classify the squares.
Everything is drawn from ``seed`` in one go, with tensor operations, so thousands of scenes take
about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .data import labelled_images
from .detection import BACKGROUND, DetectionDataset

BACKGROUNDS = ("blur", "noise", "mixed")


@dataclass
class SceneDataset(DetectionDataset):
    """Scenes in memory: ``images`` uint8 ``[N, 3, H, W]``, ``targets[i] = {"boxes" float [n, 4],
    "labels" int64 [n], "sources" int64 [n]}`` (``sources``: the index of each object's image in
    the set it was pasted from) and ``masks`` uint8 ``[N, H, W]`` (0 = background, labels 1..C).

    ``dataset[i]`` is ``(float image in [0, 1], target)`` like its parent's; the masks are read
    from ``dataset.masks``.
    """

    masks: Optional[torch.Tensor] = None

    def subset(self, index) -> "SceneDataset":
        """The scenes at ``index`` (a list or an int64 tensor), in that order."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return SceneDataset(
            self.images[index], [self.targets[i] for i in index.tolist()], self.classes, self.masks[index]
        )

    def fraction(self, fraction: float, seed: int = 0) -> "SceneDataset":
        """A random ``fraction`` of the scenes (at least one), fixed by ``seed``: the labelled part of
        a learning curve. ``fraction=1`` returns the set itself."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        n = max(1, round(fraction * len(self)))
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[:n].sort().values)


def _backgrounds(images: torch.Tensor, n: int, canvas: int, kinds: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Float ``[n, 3, canvas, canvas]`` in [0, 1], smooth: a coarse grid of colours (``canvas // 8``
    px square) upsampled bilinearly. Where ``kinds`` is 0 the grid is another image of the set,
    shrunk (antialiased), so the colours are natural but there are no sharp, object-like edges;
    where it is 1 the grid is uniform random colour."""
    grid = max(2, canvas // 8)
    picks = torch.randint(len(images), (n,), generator=g)
    coarse = F.interpolate(
        images[picks].float() / 255, size=(grid, grid), mode="bilinear", antialias=True, align_corners=False
    )
    coarse = torch.where(kinds.view(-1, 1, 1, 1) == 0, coarse, torch.rand(n, 3, grid, grid, generator=g))
    return F.interpolate(coarse, size=(canvas, canvas), mode="bilinear", align_corners=False).clamp(0, 1)


def resize_object(image: torch.Tensor, side: int) -> torch.Tensor:
    """One or more uint8 images ``[..., 3, h, w]`` resized to ``side`` px (bilinear, antialiased),
    as float in [0, 1]: the pixels :func:`make_scenes` pastes."""
    batch = image.reshape(-1, *image.shape[-3:]).float() / 255
    out = F.interpolate(batch, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1).reshape(*image.shape[:-2], side, side)


def make_scenes(
    images,
    labels=None,
    n: int = 1000,
    canvas: int = 64,
    grid: int = 2,
    objects=(1, 3),
    size=(20, 32),
    background: str = "mixed",
    classes: Optional[Sequence[str]] = None,
    seed: int = 0,
) -> SceneDataset:
    """``n`` scenes of ``canvas`` px with objects pasted from ``images`` (module docstring).

    ``images``: uint8 ``[N, 3, h, w]`` with ``labels`` ``[N]``, or an
    :class:`~sslbook.data.ImageTensorDataset` (its labels and class names are then used).

    * ``background``: ``"blur"`` -- another image of the set shrunk to a canvas/8 px grid and
      upsampled bilinearly: natural colours, no sharp edges; ``"noise"`` -- the same with uniform
      random colours on the grid; ``"mixed"`` -- each scene one or the other with equal probability.
    * ``objects = (lo, hi)``: the number of objects per scene, uniform in lo..hi (an int: exactly
      that many), at most ``grid ** 2``.
    * ``size = (lo, hi)``: each object's side in px, uniform in lo..hi, at most the cell
      (``canvas // grid``). Its top-left corner is uniform among the positions that keep it in its cell.

    Returns a :class:`SceneDataset`; everything is drawn from ``seed``.
    """
    images, labels, classes = labelled_images(images, labels, classes)
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    lo_n, hi_n = (objects, objects) if isinstance(objects, int) else objects
    cell = canvas // grid
    if not 1 <= lo_n <= hi_n <= grid * grid:
        raise ValueError(f"objects must be between 1 and grid ** 2 = {grid * grid}, got {objects}")
    if not 1 <= size[0] <= size[1] <= cell:
        raise ValueError(f"size must be between 1 and the cell side canvas // grid = {cell} px, got {size}")
    g = torch.Generator().manual_seed(seed)

    # Every random choice for every scene, drawn at once.
    kinds = {
        "blur": torch.zeros(n, dtype=torch.int64),
        "noise": torch.ones(n, dtype=torch.int64),
        "mixed": torch.randint(2, (n,), generator=g),
    }[background]
    out = _backgrounds(images, n, canvas, kinds, g)
    k = grid * grid
    counts = torch.randint(lo_n, hi_n + 1, (n,), generator=g)
    cells = torch.rand(n, k, generator=g).argsort(dim=1)  # a random order of the cells per scene
    sides = torch.randint(size[0], size[1] + 1, (n, k), generator=g)
    slack = cell - sides  # how far an object can move inside its cell
    x = (cells % grid) * cell + (torch.rand(n, k, generator=g) * (slack + 1)).floor().long()
    y = (cells // grid) * cell + (torch.rand(n, k, generator=g) * (slack + 1)).floor().long()
    sources = torch.randint(len(images), (n, k), generator=g)
    used = torch.arange(k) < counts[:, None]  # [n, k]: the first counts[i] cells get an object

    masks = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    for side in sides[used].unique().tolist():  # resize all objects of one size in one call
        scene, slot = (used & (sides == side)).nonzero(as_tuple=True)
        pixels = resize_object(images[sources[scene, slot]], side)
        for i, j, obj in zip(scene.tolist(), slot.tolist(), pixels):
            x0, y0 = int(x[i, j]), int(y[i, j])
            out[i, :, y0 : y0 + side, x0 : x0 + side] = obj
            masks[i, y0 : y0 + side, x0 : x0 + side] = int(labels[sources[i, j]]) + 1
    boxes = torch.stack([x, y, x + sides, y + sides], dim=-1).float()
    targets = [
        {"boxes": boxes[i][used[i]], "labels": labels[sources[i][used[i]]].long() + 1, "sources": sources[i][used[i]]}
        for i in range(n)
    ]
    pixels = (out * 255).round().clamp(0, 255).to(torch.uint8)
    return SceneDataset(pixels, targets, [BACKGROUND, *classes], masks)


def class_mixed_indices(dataset: SceneDataset, n: int = 8, seed: int = 0) -> list:
    """``n`` scene indices whose first objects cover as many different classes as possible (a random
    scene per class, classes in a random order, both fixed by ``seed``): scenes to show."""
    g = torch.Generator().manual_seed(seed)
    first = torch.tensor([int(t["labels"][0]) for t in dataset.targets])
    picks = []
    for c in torch.randperm(dataset.num_classes, generator=g).tolist():
        candidates = (first == c + 1).nonzero()[:, 0]
        if len(candidates):
            picks.append(int(candidates[torch.randint(len(candidates), (), generator=g)]))
    rest = [i for i in torch.randperm(len(dataset), generator=g).tolist() if i not in picks]
    return (picks + rest)[:n]

"""Clips of frames: synthetic camera paths over still images, and real videos stored as frame folders.

Frame-based contrast (Jaiswal et al. 2020, Sec. 2.2.3) needs video: frames of one video are
positives, frames of other videos negatives. The book trains offline on CIFAR-10, which has no
video, so :func:`camera_clips` makes a **stand-in**: for each still image it draws a smooth
random camera path (a steady pan in a random direction plus a steady zoom) and renders one crop
per frame. A clip made this way has what consecutive video frames share -- the same scene,
moving a little from frame to frame -- and none of what real video adds (objects that move on
their own, deform, occlude each other, change lighting). It is a synthetic substitute, not video.

Real video enters through :class:`ClipFolder`: a folder per video holding its frames as image
files, the layout that frame-extraction scripts for UCF-101 (Soomro et al. 2012) produce.
:func:`train_on_clips` trains a method (e.g. :class:`sslbook.methods.temporal.TemporalContrast`)
on such a folder with a few lines of SGD, outside the CIFAR trainer.

Contents:

* :func:`camera_paths` - the crop box of every frame: a pure function of the random draws;
* :func:`camera_clips` - the clips ``[B, T, C, size, size]`` (crops resampled by
  :func:`sslbook.augment.resized_crop`, the same resampler as the augmentations);
* :class:`ClipFolder` - real frames from disk, ``root/<video>/*.jpg`` or ``root/<class>/<video>/*.jpg``;
* :func:`train_on_clips` - a minimal training loop over a ``ClipFolder``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .augment import resized_crop
from .data import IMAGENET_MEAN, IMAGENET_STD, DatasetFormatError, DatasetNotFoundError

__all__ = ["camera_paths", "camera_clips", "ClipFolder", "IMAGE_EXTENSIONS", "train_on_clips"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


# ---------------------------------------------------------------------------------------------
# Synthetic clips: a camera moving over a still image
# ---------------------------------------------------------------------------------------------


def camera_paths(
    batch: int,
    height: int,
    width: int,
    frames: int = 4,
    scale: Sequence[float] = (0.3, 0.8),
    zoom: float = 1.5,
    pan: float = 0.5,
    device=None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The crop boxes of ``batch`` random camera paths over a ``height`` x ``width`` image.

    Rule, per path (all crops are square, s = min(height, width)):

    1. the first frame's crop covers an area fraction a ~ U(``scale``) of an s x s square:
       side L_0 = s * sqrt(a);
    2. zoom: the last frame's side is L_1 = L_0 * f with log f ~ U(-log ``zoom``, log ``zoom``),
       capped at s (``zoom=1``: no zoom);
    3. pan: the crop's centre travels a straight line of length d ~ U(0, ``pan`` * s) in a direction
       theta ~ U(0, 2 pi), shortened (keeping its direction) where a crop would leave the image;
    4. the start is uniform among the positions that keep the first *and* last crops inside the
       image (then every crop in between is inside too: the box is linear in time);
    5. frame t of T sits at u = t / (T - 1) along the path (u = 0 for a single frame): side
       L_0 + u (L_1 - L_0), centre start + u * travel. Boxes are in fractional pixels, so the
       motion is smooth even on a 32 px image.

    Exactly six ``[batch]`` uniform draws are made whatever the arguments (so a resumed run replays
    the same stream), from ``generator`` or torch's global generator.

    Returns:
        ``[batch, frames, 4]`` float32 boxes (top, left, height, width), as
        :func:`sslbook.augment.resized_crop` takes them.
    """
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got frames={frames}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be an area range inside (0, 1], got {tuple(scale)}")
    if zoom < 1 or pan < 0:
        raise ValueError(f"need zoom >= 1 and pan >= 0, got zoom={zoom}, pan={pan}")
    side = float(min(height, width))

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(batch, device=device, generator=generator)

    area, log_zoom, theta, distance, where_y, where_x = (
        uniform(*scale),
        uniform(-math.log(zoom), math.log(zoom)),
        uniform(0.0, 2 * math.pi),
        uniform(0.0, pan * side),
        uniform(0.0, 1.0),
        uniform(0.0, 1.0),
    )
    first = side * area.sqrt()
    last = (first * log_zoom.exp()).clamp(max=side)
    travel = torch.stack([distance * theta.sin(), distance * theta.cos()], dim=1)  # [B, 2] (dy, dx)
    # Keep both end crops inside: |travel| <= room along each axis; shrink the whole vector if not.
    room = torch.tensor([height, width], device=first.device, dtype=first.dtype) - ((first + last) / 2)[:, None]
    shrink = torch.where(travel.abs() > room, room / travel.abs().clamp(min=1e-12), torch.ones_like(travel))
    travel = travel * shrink.amin(dim=1, keepdim=True)
    size = torch.tensor([height, width], device=first.device, dtype=first.dtype)
    lo = torch.maximum(first[:, None] / 2, last[:, None] / 2 - travel)  # start-centre range, per axis
    hi = torch.minimum(size - first[:, None] / 2, size - last[:, None] / 2 - travel)
    start = lo + (hi - lo).clamp(min=0) * torch.stack([where_y, where_x], dim=1)  # [B, 2]

    u = torch.arange(frames, device=first.device, dtype=first.dtype) / max(frames - 1, 1)  # [T]
    sides = first[:, None] + u[None, :] * (last - first)[:, None]  # [B, T]
    centres = start[:, None, :] + u[None, :, None] * travel[:, None, :]  # [B, T, 2]
    corners = centres - sides[..., None] / 2
    corners = torch.minimum(corners.clamp(min=0), size - sides[..., None])  # float round-off only
    return torch.cat([corners, sides[..., None], sides[..., None]], dim=2).float()


def camera_clips(
    images: torch.Tensor,
    frames: int = 4,
    size: Optional[int] = None,
    scale: Sequence[float] = (0.3, 0.8),
    zoom: float = 1.5,
    pan: float = 0.5,
    generator: Optional[torch.Generator] = None,
    return_boxes: bool = False,
):
    """Synthetic video: a clip of ``frames`` crops along a random camera path over each image.

    A stand-in for real video (see the module docstring): the frames of a clip are crops of the
    same still image along a smooth path (:func:`camera_paths`: a pan and a zoom), each resampled
    to ``size`` x ``size`` (default: the image side) by :func:`sslbook.augment.resized_crop`
    (bilinear, antialiased when a crop is shrunk). uint8 images are scaled to [0, 1]; float images
    (e.g. normalised views) keep their values, so a constant image gives constant frames.

    Args:
        images: ``[B, C, H, W]`` uint8 or float.
        frames: T, frames per clip.
        size: output side (default ``min(H, W)``).
        scale, zoom, pan, generator: the camera path's distribution, see :func:`camera_paths`.
        return_boxes: also return the ``[B, T, 4]`` boxes.

    Returns:
        ``[B, T, C, size, size]`` float32 clips (and the boxes if asked).
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    B, C, H, W = images.shape
    size = size or min(H, W)
    boxes = camera_paths(B, H, W, frames, scale, zoom, pan, images.device, generator)
    with torch.autocast(images.device.type, enabled=False):  # resampling in float32, even under autocast
        x = images if images.dtype == torch.uint8 else images.float()
        crops = resized_crop(x.repeat_interleave(frames, dim=0), boxes.reshape(-1, 4), size)
    clips = crops.reshape(B, frames, C, size, size)
    return (clips, boxes) if return_boxes else clips


# ---------------------------------------------------------------------------------------------
# Real video: a folder of extracted frames per video
# ---------------------------------------------------------------------------------------------


def _natural_key(path: Path):
    """frame_2.jpg before frame_10.jpg: compare the digit runs of a name as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=_natural_key)


class ClipFolder:
    """Clips of ``frames`` frames from videos stored as folders of image files.

    Layouts (what UCF-101 frame-extraction scripts write; hidden files such as ``.DS_Store`` are
    ignored, frames are ordered by name with numbers compared as numbers)::

        root/<video>/frame_0001.jpg ...            no labels (label -1)
        root/<class>/<video>/frame_0001.jpg ...    label = index of <class> in sorted order

    A clip is ``frames`` frames ``step`` apart (consecutive for ``step=1``) from a uniformly random
    start. Every frame is resized so its shorter side is ``size`` and centre-cropped to
    ``size`` x ``size``. Problems are one-line errors naming the file and the fix, at construction
    (a file that is not an image, a video with too few frames, a mixed layout) or when a frame is
    read (an image file that cannot be decoded).

    Items: ``folder[i] -> (clip uint8 [T, 3, size, size], label)``; :meth:`sample` draws a batch.
    """

    def __init__(
        self, root, frames: int = 4, size: int = 64, step: int = 1, extensions: Sequence[str] = IMAGE_EXTENSIONS
    ):
        if frames < 1 or step < 1 or size < 1:
            raise ValueError(f"need frames, step and size >= 1, got frames={frames}, step={step}, size={size}")
        self.root = Path(root).expanduser()
        self.frames, self.size, self.step = frames, size, step
        self.extensions = tuple(e.lower() for e in extensions)
        layout = "<video>/frame_0001.jpg or root/<class>/<video>/frame_0001.jpg"
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"ClipFolder: {self.root} is not a folder; point root at the extracted "
                f"frames, laid out as root/{layout}"
            )
        videos, labels, classes = [], [], []
        for entry in _visible(self.root):
            if not entry.is_dir():
                raise DatasetFormatError(
                    f"ClipFolder: {entry} is a file directly under root; frames must sit in "
                    f"one folder per video (root/{layout}): move it"
                )
            children = _visible(entry)
            folders = [c for c in children if c.is_dir()]
            if folders and len(folders) < len(children):
                stray = next(c for c in children if not c.is_dir())
                raise DatasetFormatError(
                    f"ClipFolder: {entry} holds both folders and files (e.g. {stray}); a class "
                    "folder holds only video folders, a video folder only frames: move it"
                )
            if folders:  # a class folder
                classes.append(entry.name)
                for video in children:
                    videos.append(video)
                    labels.append(len(classes) - 1)
            else:  # a video folder (its files are checked below)
                videos.append(entry)
                labels.append(-1)
        if not videos:
            raise DatasetNotFoundError(f"ClipFolder: no videos under {self.root}; expected root/{layout}")
        if classes and -1 in labels:
            flat = videos[labels.index(-1)]
            raise DatasetFormatError(
                f"ClipFolder: {self.root} mixes class folders and video folders (e.g. {flat}); "
                f"use one layout: root/{layout}"
            )
        needed = (frames - 1) * step + 1
        self.videos, self.frame_files = videos, []
        for video in videos:
            files = _visible(video)
            for f in files:
                if f.is_dir():
                    raise DatasetFormatError(
                        f"ClipFolder: {f} is a folder inside the video folder {video}; a video "
                        "folder holds only its frames (move it out)"
                    )
                if f.suffix.lower() not in self.extensions:
                    raise DatasetFormatError(
                        f"ClipFolder: {f} is not an image file (frames must end in "
                        f"{', '.join(self.extensions)}); move it out of {video}"
                    )
            if len(files) < needed:
                raise DatasetFormatError(
                    f"ClipFolder: video {video} has {len(files)} frames, a clip of {frames} "
                    f"frames {step} apart needs {needed}; lower frames or step, or remove "
                    "that video"
                )
            self.frame_files.append(files)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.classes = classes

    def __len__(self) -> int:
        return len(self.videos)

    def num_starts(self, i: int) -> int:
        """How many clip positions video ``i`` offers."""
        return len(self.frame_files[i]) - (self.frames - 1) * self.step

    def read_frame(self, path: Path) -> torch.Tensor:
        """One frame as uint8 ``[3, size, size]``: shorter side resized to ``size``, centre crop."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                ratio = self.size / min(w, h)
                img = img.resize((max(self.size, round(w * ratio)), max(self.size, round(h * ratio))), Image.BILINEAR)
                w, h = img.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                img = img.crop((left, top, left + self.size, top + self.size))
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DatasetFormatError(
                f"ClipFolder: cannot read frame {path} ({type(e).__name__}); re-extract it or delete it"
            ) from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def clip(self, i: int, start: int) -> torch.Tensor:
        """Frames ``start, start + step, ...`` of video ``i``: uint8 ``[T, 3, size, size]``."""
        if not 0 <= start < self.num_starts(i):
            raise IndexError(f"video {self.videos[i]} has clip starts 0..{self.num_starts(i) - 1}, got {start}")
        files = self.frame_files[i][start : start + (self.frames - 1) * self.step + 1 : self.step]
        return torch.stack([self.read_frame(f) for f in files])

    def __getitem__(self, i: int):
        start = int(torch.randint(self.num_starts(i), ()))
        return self.clip(i, start), self.labels[i]

    def sample(self, batch_size: int, clips_per_video: int = 2, generator: Optional[torch.Generator] = None):
        """A batch of ``batch_size`` distinct videos with ``clips_per_video`` clips each.

        Each clip of a video has its own uniformly random start (CVRL, Qian et al. 2021, also draws
        two clips per video, with a time gap favouring nearby clips). Returns ``(clips, labels,
        index)``: a list of ``clips_per_video`` uint8 tensors ``[B, T, 3, size, size]``, the labels
        ``[B]`` and the video indices ``[B]``.
        """
        if not 1 <= batch_size <= len(self):
            raise ValueError(f"batch_size must be between 1 and the {len(self)} videos, got {batch_size}")
        index = torch.randperm(len(self), generator=generator)[:batch_size]
        clips = []
        for _ in range(clips_per_video):
            starts = [int(torch.randint(self.num_starts(int(i)), (), generator=generator)) for i in index]
            clips.append(torch.stack([self.clip(int(i), s) for i, s in zip(index, starts)]))
        return clips, self.labels[index], index

    def __repr__(self) -> str:
        return (
            f"ClipFolder({str(self.root)!r}, videos={len(self)}, classes={len(self.classes)}, "
            f"frames={self.frames}, step={self.step}, size={self.size})"
        )


def train_on_clips(
    method,
    folder: ClipFolder,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 0.05,
    clips_per_video: int = 2,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device=None,
) -> list[dict]:
    """Train ``method`` on real clips for ``steps`` SGD steps; returns one record per step.

    The minimal loop, for a method whose ``forward`` accepts clips (views of shape ``[B, T, 3, H,
    W]``, normalised with ``mean``/``std``, as :class:`sslbook.methods.temporal.TemporalContrast`
    does): sample ``batch_size`` videos with ``clips_per_video`` clips each, normalise, loss,
    backward, SGD (momentum 0.9) at a constant ``lr``. No schedule, checkpoints or evaluation: for
    those the book's trainer (:func:`sslbook.trainer.train`) would need a clip data set.
    """
    device = torch.device(device) if device is not None else next(method.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 1, 3, 1, 1)
    optimizer = torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    method.train()
    records = []
    for step in range(1, steps + 1):
        clips, _, index = folder.sample(batch_size, clips_per_video, generator)
        views = [(c.to(device).float() / 255 - m) / s for c in clips]
        out = method(views, index.to(device))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        records.append(
            {
                "step": step,
                "loss": float(out["loss"].detach()),
                **{k: float(v) for k, v in out.items() if k not in ("loss", "z")},
            }
        )
    return records

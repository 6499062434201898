"""Batched image augmentations for contrastive self-supervised learning.

Every method in this book learns by comparing two (or more) random *views* of the same
image, so the augmentation pipeline is as much a part of the method as the loss. The
usual way to build views is a torchvision ``transforms.Compose`` applied to one PIL image
at a time inside ``DataLoader`` workers. That is simple, but on a small machine it is the
bottleneck: the model waits for the CPU workers.

This module does the same augmentations on a whole ``uint8`` batch at once, on whatever
device the batch lives on (CPU or GPU):

* every sample gets its own random parameters (crop box, flip, jitter factors, jitter
  order, ...), drawn as tensors of shape ``[B]``;
* there is no Python loop over samples, only over the handful of ops;
* all randomness comes from torch's global RNG, so ``torch.manual_seed`` makes it
  deterministic and a checkpoint of the RNG state resumes it exactly.

Each functional op below says which torchvision op it matches; ``tests/test_augment.py``
checks them against torchvision pixel by pixel (they agree to ~1e-6).

Reading order: crop+resize(+flip), the colour ops, blur / solarize / normalise, the
random-parameter samplers, then ``ViewSpec`` / ``Augment``, then the papers' recipes.

On speed (``benchmarks/augment_throughput.py``): the ops are plain eager PyTorch. What
costs time on a CPU is the number of passes over the batch, Python's overhead per op, and
fresh memory for temporaries, so the code fuses where it stays readable (crop, resize,
flip and uint8 -> float are one resampling step; brightness, contrast and saturation are
one blend per jitter slot; the hue shift skips the HSV image) and, on CPU, renders small
chunks on a couple of threads.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from .data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported)

# ITU-R 601-2 luma weights, the ones torchvision (and PIL's "L" mode) use for grayscale.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------
# Crop + resize (+ flip), per sample, in one resampling step
# ----------------------------------------------------------------------------------------


def resized_crop(
    images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop ``boxes[b] = (top, left, height, width)`` out of each image and resize it to
    ``size x size`` (bilinear, antialiased): torchvision's
    ``v2.functional.resized_crop(img, top, left, height, width, [size, size])``, per sample.

    ``flip`` (optional bool ``[B]``) also mirrors the chosen samples left-right
    (``RandomHorizontalFlip``) at no cost, by reading their crop columns backwards.
    ``uint8`` input is scaled to [0, 1]. Boxes must lie inside the image
    (``sample_crop_boxes`` guarantees it). Returns float32 ``[B, C, size, size]``.

    Two exact implementations, picked per batch:

    * every crop side <= ``size`` (always so for RandomResizedCrop of a 32 px image to
      32 px): the resize only upsamples, where antialiasing does nothing and bilinear
      interpolation is 4 pixels per output pixel: one ``grid_sample`` (``_crop_upsample``);
    * otherwise some crop is shrunk, and torchvision's antialiasing averages over a wider
      window: two small matrix products per sample (``_crop_resample_matrices``).
    """
    boxes = boxes.to(images.device)
    if bool((boxes[:, 2:] <= size).all()):
        x = _crop_upsample(images.to(torch.float32), boxes, size, flip)
        return x.mul_(1.0 / 255.0) if images.dtype == torch.uint8 else x
    return _crop_resample_matrices(images, boxes, size, flip)


def _crop_upsample(images: torch.Tensor, boxes: torch.Tensor, size: int, flip) -> torch.Tensor:
    """Bilinear crop-and-upsample with ``grid_sample``, exactly like torch's
    ``interpolate(mode="bilinear", align_corners=False)`` on the cropped image.

    Output pixel ``i`` of a crop of length ``L`` reads crop coordinate
    ``(i + 0.5) * L / size - 0.5``, clamped to ``[0, L - 1]``: the clamp makes the crop's
    own edge pixels repeat, as they do when torchvision resizes the cropped image (a plain
    ``grid_sample`` on the whole image would blend in the pixels just outside the crop).
    """
    B, _, H, W = images.shape
    top, left, height, width = boxes.to(torch.float32).unbind(1)
    i = torch.arange(size, device=images.device, dtype=torch.float32) + 0.5

    def coords(start, length):  # [B, size] absolute pixel coordinates along one axis
        c = i[None, :] * (length[:, None] / size) - 0.5
        return torch.minimum(c.clamp_(min=0.0), length[:, None] - 1.0) + start[:, None]

    ys, xs = coords(top, height), coords(left, width)
    if flip is not None:
        xs = torch.where(flip.to(images.device)[:, None], xs.flip(1), xs)
    # grid_sample wants (x, y) in [-1, 1], -1 and 1 being the centres of the edge pixels
    # (align_corners=True).
    gx = (xs * (2.0 / max(W - 1, 1)) - 1.0)[:, None, :].expand(B, size, size)
    gy = (ys * (2.0 / max(H - 1, 1)) - 1.0)[:, :, None].expand(B, size, size)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _resample_matrix(
    start: torch.Tensor, length: torch.Tensor, size: int, in_size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample 1-D resampling matrices ``[B, size, in_size]`` for one image axis.

    Row ``i`` of sample ``b`` holds the weights with which output pixel ``i`` averages the
    input pixels ``start[b] .. start[b] + length[b] - 1`` (the crop). They are the weights
    of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
    antialias=True)``, which is what torchvision's ``resize`` calls:

    * the crop is stretched onto the output: ``scale = length / size`` input pixels per
      output pixel, output pixel ``i`` is centred at ``(i + 0.5) * scale`` in the crop;
    * the filter is a triangle ("tent") whose half-width is 1 pixel when upsampling and
      ``scale`` pixels when downsampling (that widening *is* the antialiasing);
    * weights are only taken from pixels inside the crop and renormalised to sum to 1,
      which is the same as torch's edge clamping.

    ``flip`` (bool ``[B]``) walks the output pixels of those samples backwards: a mirror.
    """
    dev = start.device
    start = start.to(torch.float32)[:, None, None]
    length = length.to(torch.float32)[:, None, None]
    scale = length / size
    support = scale.clamp(min=1.0)  # tent half-width in input pixels
    i = torch.arange(size, device=dev, dtype=torch.float32)[None, :, None]
    if flip is not None:
        i = i + flip.to(torch.float32)[:, None, None] * (size - 1 - 2 * i)  # i -> size-1-i
    centre = (i + 0.5) * scale
    u = torch.arange(in_size, device=dev, dtype=torch.float32)[None, None, :] - start  # crop coords
    weight = (1.0 - ((u + 0.5 - centre) / support).abs()).clamp_(min=0.0)
    weight = weight * ((u >= 0) & (u < length))  # nothing from outside the crop
    return weight / weight.sum(dim=-1, keepdim=True)


def _crop_resample_matrices(images: torch.Tensor, boxes: torch.Tensor, size: int, flip) -> torch.Tensor:
    """Crop + antialiased resize of any scale as ``out = Wy @ img @ Wx.T`` per sample.

    Cropping and resizing are linear and separable, so with the two resampling matrices
    of ``_resample_matrix`` this is exact (same weights as torch's interpolate, borders
    included), for upsampling and downsampling alike; ``1/255`` for uint8 input is folded
    into ``Wy``.
    """
    B, C, H, W = images.shape
    wy = _resample_matrix(boxes[:, 0], boxes[:, 2], size, H)  # [B, size, H]
    wx = _resample_matrix(boxes[:, 1], boxes[:, 3], size, W, flip)  # [B, size, W]
    if images.dtype == torch.uint8:
        wy = wy / 255.0
    x = images.to(torch.float32)
    # Columns: [B, C*H, W] @ [B, W, size] -> [B, C, H, size].
    x = torch.bmm(x.view(B, C * H, W), wx.transpose(1, 2)).view(B, C, H, size)
    # Rows: [B, 1, size, H] @ [B, C, H, size] -> [B, C, size, size], the same Wy for every channel.
    return torch.matmul(wy.unsqueeze(1), x)


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the samples where ``mask`` (bool ``[B]``) is True
    (``v2.functional.horizontal_flip``)."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


# ----------------------------------------------------------------------------------------
# Colour ops. Inputs are float [B, 3, H, W] in [0, 1]; factors are [B] tensors (or floats).
# ----------------------------------------------------------------------------------------


def _per_sample(factors, images: torch.Tensor) -> torch.Tensor:
    """A float or ``[B]`` tensor of factors, shaped ``[B, 1, 1, 1]`` to broadcast."""
    f = torch.as_tensor(factors, dtype=images.dtype, device=images.device)
    return f.view(-1, 1, 1, 1) if f.ndim else f


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` as ``[B, 1, H, W]``
    (``v2.functional.rgb_to_grayscale``). Expand it to 3 channels for ``RandomGrayscale``."""
    r, g, b = images.unbind(dim=1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``f * images + (1 - f) * other``, clipped to [0, 1]: torchvision's ``_blend``."""
    return (images * f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factors) -> torch.Tensor:
    """Scale intensities by ``factor`` and clip (``v2.functional.adjust_brightness``):
    blending with a black image."""
    return (images * _per_sample(factors, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factors) -> torch.Tensor:
    """Blend each image with its mean grey level (``v2.functional.adjust_contrast``):
    0 gives a flat grey image, 1 the original, > 1 more contrast."""
    # The mean of the luma is the luma of the channel means: one pass instead of two.
    weights = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype, device=images.device)
    mean = (images.mean(dim=(2, 3)) @ weights).view(-1, 1, 1, 1)
    return _blend(images, mean, _per_sample(factors, images))


def adjust_saturation(images: torch.Tensor, factors) -> torch.Tensor:
    """Blend each image with its own grayscale version (``v2.functional.adjust_saturation``):
    0 gives grayscale, 1 the original, > 1 more saturated colours."""
    return _blend(images, rgb_to_grayscale(images), _per_sample(factors, images))


def adjust_hue(images: torch.Tensor, factors) -> torch.Tensor:
    """Rotate the hue by ``factor`` turns, ``factor`` in [-0.5, 0.5]
    (``v2.functional.adjust_hue``: RGB -> HSV, shift H, HSV -> RGB).

    A hue shift leaves V = max(R, G, B) and the chroma C = max - min alone, so we skip
    building the HSV image and use the closed form of HSV -> RGB: with the hue ``h`` in
    sixths of a turn,

        channel_n = V - C * clip(min(k, 4 - k), 0, 1),   k = (n + h) mod 6,  n = 5, 3, 1 for R, G, B.

    Same function as torchvision's table lookup over the six colour-wheel sectors, in far
    fewer passes over the batch.
    """
    maxc = images.amax(dim=1, keepdim=True)
    minc = images.amin(dim=1, keepdim=True)
    chroma = maxc - minc
    # Each channel's place between the min (0) and the max (1). Grey pixels (C = 0) get 0
    # everywhere, hence hue 0 and output = V, as in torchvision.
    t = (images - minc).div_(chroma.clamp(min=1e-30))
    # 1 on the channel holding the max, ties going to R then G (as in PIL and torchvision);
    # float masks rather than bool + torch.where, which is several times slower on CPU.
    is_r, is_g, is_b = torch.floor(t).unbind(dim=1)
    is_g.addcmul_(is_g, is_r, value=-1.0)
    torch.sub(1.0 - is_r, is_g, out=is_b)
    # HSV hue in sixths: R max -> G - B, G max -> 2 + B - R, B max -> 4 + R - G (on t).
    r, g, b = t.unbind(dim=1)
    h = (g - b).mul_(is_r)
    h.addcmul_((b - r).add_(2.0), is_g).addcmul_((r - g).add_(4.0), is_b)
    shift = _per_sample(factors, images).view(-1, 1, 1, 1) * 6.0 + _HUE_N.to(images.device)  # [B, 3, 1, 1]
    k = h.unsqueeze(1) + shift
    k.sub_(torch.div(k, 6.0).floor_().mul_(6.0))  # k mod 6 (torch.remainder is much slower on CPU)
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(maxc, chroma, k, value=-1.0)  # V - C * k


_HUE_N = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)


def _apply_where(mask: torch.Tensor, images: torch.Tensor, op) -> torch.Tensor:
    """Replace, in place, the samples where ``mask`` is True by ``op(those samples, their
    indices)``. Random ops run only on the samples that drew them: cheaper than computing
    the op for everyone and selecting with ``torch.where``."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        images.index_copy_(0, idx, op(images.index_select(0, idx), idx))
    return images


def apply_color_jitter(
    images: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    apply: torch.Tensor,
    enabled=(True, True, True, True),
    inplace: bool = False,
) -> torch.Tensor:
    """Apply brightness, contrast, saturation, hue (op ids 0..3) to the samples where
    ``apply`` is True, sample ``b`` in the order ``order[b]`` (a permutation of 0..3) with
    ``factors[b]`` = (brightness, contrast, saturation, hue): ``v2.ColorJitter.transform``
    for every sample at once. ``enabled[op]`` false skips an op (a zero range in
    ``ColorJitter``).

    The order differs per sample, so we go slot by slot: in slot ``k`` every sample does
    the op ``order[b, k]``. Brightness, contrast and saturation are all clipped blends,

        brightness  clip(f x)                 contrast  clip(f x + (1 - f) mean(gray(x)))
        saturation  clip(f x + (1 - f) gray(x))

    i.e. ``clip(a x + b gray(x) + c mean(gray(x)))`` with per-sample ``(a, b, c)``, and
    ``(1, 0, 0)`` leaves a sample as it is. So each slot is one such blend over the whole
    batch, each sample with the coefficients of its own op, plus the hue rotation on the
    samples whose op in this slot is hue. The jitter costs about 4 blends + 1 hue over
    the batch, whatever the mix of orders.
    """
    x = images if inplace else images.clone()
    # Per sample and slot [B, 4]: the op, its factor, and the blend coefficients a, b, c.
    f = factors.gather(1, order)
    on = apply[:, None] & torch.tensor(enabled, device=x.device)[order]
    a = torch.where(on & (order <= 2), f, torch.ones_like(f))
    b = torch.where(on & (order == 2), 1.0 - f, torch.zeros_like(f))
    c = torch.where(on & (order == 1), 1.0 - f, torch.zeros_like(f))
    hue = on & (order == 3)
    for slot in range(4):
        ak, bk, ck = (t[:, slot].view(-1, 1, 1, 1) for t in (a, b, c))
        gray = rgb_to_grayscale(x)
        other = torch.addcmul(gray.mean(dim=(1, 2, 3), keepdim=True) * ck, gray, bk)  # b gray + c mean
        torch.addcmul(other, x, ak, out=x).clamp_(0.0, 1.0)  # a x + b gray + c mean, clipped
        _apply_where(hue[:, slot], x, lambda xs, idx: adjust_hue(xs, f[idx, slot]))
    return x


def _to_gray3(images: torch.Tensor, idx=None) -> torch.Tensor:
    """``Grayscale(num_output_channels=3)``: the luma copied into all three channels."""
    return rgb_to_grayscale(images).expand_as(images)


def random_grayscale(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``RandomGrayscale``: the samples where ``mask`` is True become 3-channel grey."""
    return _apply_where(mask, images.clone(), _to_gray3)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur with a per-sample ``sigma`` ([B]) and an odd ``kernel_size``, reflect
    padding: ``v2.functional.gaussian_blur(img, [k, k], [sigma, sigma])`` per sample.

    The 2-D Gaussian is the outer product of two 1-D ones, so we blur rows then columns
    (2k instead of k^2 multiply-adds per pixel); the result is the same.
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    B, C, H, W = images.shape
    half = kernel_size // 2
    # torchvision's kernel: exp(-x^2 / (2 sigma^2)) at integer offsets x, normalised.
    x = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    sigma = torch.as_tensor(sigma, device=images.device, dtype=images.dtype).reshape(-1, 1)
    k1d = torch.softmax(-(x**2) / (2.0 * sigma**2), dim=-1).expand(B, kernel_size)
    k1d = k1d.repeat_interleave(C, dim=0)  # one kernel per (sample, channel)
    x = F.pad(images, (half, half, half, half), mode="reflect").reshape(1, B * C, H + 2 * half, W + 2 * half)
    # Depthwise convolutions: every (sample, channel) plane is its own group.
    x = F.conv2d(x, k1d.view(B * C, 1, 1, kernel_size), groups=B * C)
    x = F.conv2d(x, k1d.view(B * C, 1, kernel_size, 1), groups=B * C)
    return x.view(B, C, H, W)


def _solarize_all(images: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(images >= threshold, 1.0 - images, images)


def gaussian_noise(images: torch.Tensor, sigma, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add zero-mean Gaussian noise of standard deviation ``sigma`` (a float or ``[B]``) and clip
    to [0, 1]: ``clip(x + sigma * N(0, 1))`` on float images in [0, 1]. One of the survey's colour
    transformations (Jaiswal et al. 2020, Fig. 4); not in any recipe of the book."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return (images + _per_sample(sigma, images) * noise).clamp_(0.0, 1.0)


def solarize(images: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert (``x -> 1 - x``) the pixels ``>= threshold`` of the samples where ``mask`` is
    True (``v2.functional.solarize``; BYOL's solarisation)."""
    return _apply_where(mask, images.clone(), lambda xs, idx: _solarize_all(xs, threshold))


def normalize(images: torch.Tensor, mean, std, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(x - mean) / std`` per channel (``v2.functional.normalize``), into ``out`` if given."""
    mean = torch.as_tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return torch.sub(images, mean, out=out).div_(std)


# ----------------------------------------------------------------------------------------
# Random parameters, one per sample, from torch's global RNG on the batch's device
# ----------------------------------------------------------------------------------------


def _uniform(B: int, low: float, high: float, device) -> torch.Tensor:
    return torch.rand(B, device=device) * (high - low) + low


def sample_crop_boxes(
    B: int, H: int, W: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), device=None, tries: int = 10
) -> torch.Tensor:
    """``RandomResizedCrop``'s box distribution for ``B`` images of size ``H x W``, as a
    long tensor ``[B, 4]`` of (top, left, height, width).

    torchvision, per image: up to 10 times draw an area fraction ~ U(scale) and a log
    aspect ratio ~ U(log ratio), round to integer w, h; take the first try that fits in the
    image, at a uniformly random position. If none fits, fall back to a centre crop whose
    aspect ratio is clipped into ``ratio``.

    Vectorised: draw all 10 tries for all images at once, then pick each image's first
    try that fits (``argmax`` over a bool mask returns the first True).
    """
    area = H * W
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    target_area = area * _uniform(B * tries, scale[0], scale[1], device).view(B, tries)
    aspect = torch.exp(_uniform(B * tries, *log_r, device).view(B, tries))
    # torch.round and Python's round both round half to even.
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.long().argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    ok = fits.any(dim=1)

    # The fallback centre crop (same for every image that needs it).
    in_ratio = W / H
    if in_ratio < min(ratio):
        fw, fh = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(H * max(ratio))), H
    else:
        fw, fh = W, H
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    # Uniform integer position in [0, H - h] (randint's range), vectorised.
    top = (torch.rand(B, device=device) * (H - h + 1)).long().clamp_(max=H - h)
    left = (torch.rand(B, device=device) * (W - w + 1)).long().clamp_(max=W - w)
    top = torch.where(ok, top, (H - h) // 2)
    left = torch.where(ok, left, (W - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _jitter_range(value: float, center: float, bound: tuple[float, float]):
    """``ColorJitter``'s reading of one strength: ``[center - v, center + v]`` clipped to
    ``bound``, or None (op disabled) when ``v == 0``."""
    if value == 0:
        return None
    return (max(center - value, bound[0]), min(center + value, bound[1]))


def _jitter_enabled(jitter) -> tuple[bool, bool, bool, bool]:
    """Which of brightness, contrast, saturation, hue a ``ColorJitter(*jitter)`` changes."""
    return tuple(float(v) != 0.0 for v in jitter)


def sample_jitter_params(B: int, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, device=None):
    """Per-sample ``RandomApply([ColorJitter(b, c, s, h)], p)`` parameters:
    ``factors [B, 4]`` (brightness, contrast, saturation, hue), ``order [B, 4]`` (a random
    permutation of the op ids per sample, like ``torch.randperm(4)``), ``apply [B]`` bool
    and ``enabled`` (which of the 4 ops have a non-zero range)."""
    ranges = [
        _jitter_range(brightness, 1.0, (0.0, math.inf)),
        _jitter_range(contrast, 1.0, (0.0, math.inf)),
        _jitter_range(saturation, 1.0, (0.0, math.inf)),
        _jitter_range(hue, 0.0, (-0.5, 0.5)),
    ]
    identity = (1.0, 1.0, 1.0, 0.0)
    factors = torch.stack(
        [_uniform(B, *r, device) if r else torch.full((B,), identity[i], device=device) for i, r in enumerate(ranges)],
        dim=1,
    )
    order = torch.rand(B, 4, device=device).argsort(dim=1)  # uniform random permutations
    apply = torch.rand(B, device=device) < p
    return dict(factors=factors, order=order, apply=apply, enabled=tuple(r is not None for r in ranges))


def color_jitter(images: torch.Tensor, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8) -> torch.Tensor:
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` on each
    sample independently, each with its own factors and its own random op order."""
    params = sample_jitter_params(images.shape[0], brightness, contrast, saturation, hue, p, images.device)
    return apply_color_jitter(images, **params)


def blur_kernel_size(size: int, frac: float = 0.1) -> int:
    """SimCLR's blur kernel: ``frac`` of the image side, made odd (224 px -> 23), at least 3."""
    k = int(frac * size)
    return max(3, k + 1 if k % 2 == 0 else k)


# ----------------------------------------------------------------------------------------
# Views and the module
# ----------------------------------------------------------------------------------------


@dataclass
class ViewSpec:
    """The recipe of one view: plain data, so the YAML configs can build it.

    The ops run in the order torchvision pipelines in the papers use: random resized crop,
    horizontal flip, colour jitter (p = ``jitter_p``), grayscale (p = ``gray_p``),
    Gaussian blur (p = ``blur_p``), solarize (p = ``solarize_p``), normalise.
    """

    size: int = 32  # output side
    crop: bool = True  # False: resize the whole image (eval views)
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # ColorJitter(b, c, s, h)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    gray_before_jitter: bool = False  # MoCo v1 / InstDisc put RandomGrayscale before ColorJitter
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1  # kernel side = ~10% of image side, odd (SimCLR)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple = CIFAR10_MEAN
    std: tuple = CIFAR10_STD


def _check_batch(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of uint8 images [B, 3, H, W], got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images [B, 3, H, W] with values 0..255, got dtype {images.dtype} "
            "(convert with (x * 255).round().to(torch.uint8) if you have floats in [0, 1])"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a batch of RGB images of shape [B, 3, H, W], got shape {tuple(images.shape)}")


class Augment(torch.nn.Module):
    """Turn a ``uint8`` batch ``[B, 3, H, W]`` into one normalised float view
    ``[B, 3, size, size]`` per ``ViewSpec``, on the batch's device.

    Each view draws its own random parameters for every sample, so the views of one image
    are independent. There are no learnable parameters; it is a Module only so it can sit
    in a model or be moved with ``.to()`` like one.

    On GPU each view is rendered in one go. On CPU two things make it ~2-4x faster:

    * ``chunk``: render ``chunk`` images at a time (default ~128 at 32 px), so the
      temporaries stay small: cache-resident and cheap to allocate;
    * ``workers``: render the chunks of all views on that many threads (default
      ``torch.get_num_threads()``), each running torch single-threaded. The ops on one
      chunk are too small for torch's own intra-op threads to pay off, and those threads
      stall badly when another process shares the cores.

    Neither changes the result: all random parameters are drawn up front, in view order,
    from the global RNG, and rendering is deterministic.
    """

    def __init__(self, views: list[ViewSpec], chunk: int | None = None, workers: int | None = None):
        super().__init__()
        if isinstance(views, ViewSpec):
            views = [views]
        if not views:
            raise ValueError("Augment needs at least one ViewSpec")
        self.views = list(views)
        self.chunk = chunk
        self.workers = workers

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        _check_batch(images)
        B, dev = images.shape[0], images.device
        params = [sample_view_params(images, spec) for spec in self.views]  # all RNG use, in order
        outs = [torch.empty(B, 3, spec.size, spec.size, device=dev, dtype=torch.float32) for spec in self.views]
        jobs = []  # (images, params, spec, out) for every chunk of every view
        for spec, p, out in zip(self.views, params, outs):
            chunk = max(1, B) if dev.type != "cpu" else (self.chunk or max(1, CPU_CHUNK_PIXELS // spec.size**2))
            for lo in range(0, B, chunk):
                part = slice(lo, lo + chunk)
                jobs.append((images[part], {k: v[part] for k, v in p.items()}, spec, out[part]))
        workers = self.workers or torch.get_num_threads()
        if dev.type == "cpu" and workers > 1 and len(jobs) > 1:
            threads = torch.get_num_threads()
            list(_thread_pool(workers).map(lambda job: render_view(*job), jobs))
            # A worker's torch.set_num_threads(1) also lowers torch's default for threads
            # started later; put it back (this thread's own setting never changed).
            torch.set_num_threads(threads)
        else:
            for job in jobs:
                render_view(*job)
        return outs

    def extra_repr(self) -> str:
        return "\n".join(repr(v) for v in self.views)


CPU_CHUNK_PIXELS = 128 * 32 * 32  # output pixels per chunk on CPU

_POOLS: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of the threads


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """A shared pool of ``workers`` threads that run torch ops single-threaded."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(
            workers, thread_name_prefix="sslbook-augment", initializer=torch.set_num_threads, initargs=(1,)
        )
    return _POOLS[workers]


def sample_view_params(images: torch.Tensor, spec: ViewSpec) -> dict[str, torch.Tensor]:
    """All random parameters of one view, one row per sample, on the batch's device.

    Every parameter is drawn whether or not its op ends up applied, so the amount of RNG
    consumed never depends on the data (and a resumed run replays exactly).
    """
    B, _, H, W = images.shape
    dev = images.device
    if spec.crop:
        boxes = sample_crop_boxes(B, H, W, spec.scale, spec.ratio, device=dev)
    else:
        boxes = torch.tensor([0, 0, H, W], device=dev).expand(B, 4)
    flip = torch.rand(B, device=dev) < spec.flip_p
    jit = sample_jitter_params(B, *spec.jitter, p=spec.jitter_p, device=dev)
    return dict(
        boxes=boxes,
        flip=flip,
        jitter_factors=jit["factors"],
        jitter_order=jit["order"],
        jitter=jit["apply"],
        gray=torch.rand(B, device=dev) < spec.gray_p,
        blur=torch.rand(B, device=dev) < spec.blur_p,
        sigma=_uniform(B, *spec.blur_sigma, dev),
        solarize=torch.rand(B, device=dev) < spec.solarize_p,
    )


def render_view(images: torch.Tensor, p: dict[str, torch.Tensor], spec: ViewSpec, out=None) -> torch.Tensor:
    """Apply one view's ops with the given parameters (no randomness here), in the order
    of the torchvision pipelines: crop+resize+flip, [grayscale,] jitter, grayscale, blur,
    solarize, normalise."""
    H, W = images.shape[2:]
    # Crop, resize, flip and uint8 -> [0, 1] in one go (see resized_crop).
    if not spec.crop and (H, W) == (spec.size, spec.size):
        x = images.to(torch.float32).div_(255.0)  # eval at native size: nothing to resample
    else:
        x = resized_crop(images, p["boxes"], spec.size, flip=p["flip"] if spec.flip_p > 0 else None)

    if spec.gray_before_jitter and spec.gray_p > 0:
        _apply_where(p["gray"], x, _to_gray3)
    enabled = tuple(bool(v) for v in _jitter_enabled(spec.jitter))
    if spec.jitter_p > 0 and any(enabled):
        apply_color_jitter(x, p["jitter_factors"], p["jitter_order"], p["jitter"], enabled, inplace=True)
    if not spec.gray_before_jitter and spec.gray_p > 0:
        _apply_where(p["gray"], x, _to_gray3)
    if spec.blur_p > 0:
        k = blur_kernel_size(spec.size, spec.blur_kernel_frac)
        _apply_where(p["blur"], x, lambda xs, idx: gaussian_blur(xs, p["sigma"][idx], k))
    if spec.solarize_p > 0:
        _apply_where(p["solarize"], x, lambda xs, idx: _solarize_all(xs, spec.solarize_threshold))
    return normalize(x, spec.mean, spec.std, out=out)


# ----------------------------------------------------------------------------------------
# Recipes of the papers
# ----------------------------------------------------------------------------------------

# Gaussian blur only at ImageNet-like resolution: SimCLR dropped it for 32 px CIFAR-10
# (Appendix B.9), and so do the CIFAR versions of the other methods.
BLUR_MIN_SIZE = 64


def _blur(size: int, p: float) -> float:
    return p if size >= BLUR_MIN_SIZE else 0.0


def _simclr(size, mean, std):
    """SimCLR (Chen et al. 2020), Appendix A: RandomResizedCrop(scale 0.08-1), flip,
    ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) p=0.8, RandomGrayscale p=0.2, GaussianBlur
    p=0.5 sigma 0.1-2.0 kernel 10% of the side. Colour strength s=1.0 on ImageNet, s=0.5 on
    CIFAR-10 (-> 0.4, 0.4, 0.4, 0.1) where the blur is also left out. Two identical views."""
    s = 1.0 if size >= BLUR_MIN_SIZE else 0.5
    v = ViewSpec(
        size=size,
        scale=(0.08, 1.0),
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=_blur(size, 0.5),
        mean=mean,
        std=std,
    )
    return [v, replace(v)]


def _instdisc_view(size, mean, std):
    # InstDisc (Wu et al. 2018) / MoCo v1 (He et al. 2020): RandomResizedCrop(scale 0.2-1),
    # RandomGrayscale p=0.2, ColorJitter(0.4, 0.4, 0.4, 0.4) always, flip -- in that order.
    return ViewSpec(
        size=size,
        scale=(0.2, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.4),
        jitter_p=1.0,
        gray_p=0.2,
        gray_before_jitter=True,
        mean=mean,
        std=std,
    )


def _instdisc(size, mean, std):
    """InstDisc (Wu et al. 2018): one view per image (the other side is the memory bank):
    crop(0.2, 1), grayscale p=0.2, jitter(0.4, 0.4, 0.4, 0.4) always, flip."""
    return [_instdisc_view(size, mean, std)]


def _moco_v1(size, mean, std):
    """MoCo v1 (He et al. 2020), InstDisc's augmentation for query and key: crop(0.2, 1),
    grayscale p=0.2, jitter(0.4, 0.4, 0.4, 0.4) always, flip."""
    v = _instdisc_view(size, mean, std)
    return [v, replace(v)]


def _moco_v2(size, mean, std):
    """MoCo v2 (Chen et al. 2020, "Improved baselines"): crop(0.2, 1), jitter(0.4, 0.4, 0.4,
    0.1) p=0.8, grayscale p=0.2, GaussianBlur sigma 0.1-2.0 p=0.5 (ImageNet scale only), flip."""
    v = ViewSpec(
        size=size,
        scale=(0.2, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=_blur(size, 0.5),
        blur_sigma=(0.1, 2.0),
        mean=mean,
        std=std,
    )
    return [v, replace(v)]


def _simsiam(size, mean, std):
    """SimSiam (Chen & He 2021) uses MoCo v2's augmentation unchanged."""
    return _moco_v2(size, mean, std)


def _byol(size, mean, std):
    """BYOL (Grill et al. 2020), Table 6: asymmetric views. Both: crop(0.08, 1), flip,
    jitter(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2, blur sigma 0.1-2.0 (kernel 23 at 224).
    View 1: blur p=1.0, solarize p=0. View 2: blur p=0.1, solarize p=0.2.
    At 32 px the blur is left out, the solarisation kept."""
    v1 = ViewSpec(
        size=size,
        scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=_blur(size, 1.0),
        solarize_p=0.0,
        mean=mean,
        std=std,
    )
    v2 = replace(v1, blur_p=_blur(size, 0.1), solarize_p=0.2)
    return [v1, v2]


def _swav(size, mean, std, local_crops=6):
    """SwAV (Caron et al. 2020), multi-crop: 2 global + 6 local views (``local_crops``). ImageNet:
    224 px crops with scale (0.14, 1) and 96 px crops with scale (0.05, 0.14); for 32 px CIFAR the
    common port uses 32 px and 18 px (the local side is 18/32 of the global one at other
    sizes). Every crop: flip, jitter(0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2, Gaussian
    blur sigma 0.1-2.0 p=0.5 (ImageNet scale only)."""
    local = 96 if size == 224 else max(8, round(size * 18 / 32))
    g = ViewSpec(
        size=size,
        scale=(0.14, 1.0),
        jitter=(0.8, 0.8, 0.8, 0.2),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=_blur(size, 0.5),
        blur_sigma=(0.1, 2.0),
        mean=mean,
        std=std,
    )
    small = replace(g, size=local, scale=(0.05, 0.14))
    return [g, replace(g)] + [replace(small) for _ in range(local_crops)]


def _eval(size, mean, std):
    """Evaluation (linear probe, k-NN): no randomness, resize the whole image to ``size`` if
    it is not already that size, then normalise."""
    return [
        ViewSpec(
            size=size, crop=False, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0, mean=mean, std=std
        )
    ]


RECIPES = {
    "simclr": _simclr,
    "moco_v1": _moco_v1,
    "moco_v2": _moco_v2,
    "byol": _byol,
    "swav": _swav,
    "simsiam": _simsiam,
    "instdisc": _instdisc,
    "eval": _eval,
}


MULTI_CROP = ("swav",)  # the recipes with small local crops besides the global views


def recipe(
    name: str, size: int = 32, mean=CIFAR10_MEAN, std=CIFAR10_STD, local_crops: Optional[int] = None
) -> list[ViewSpec]:
    """The list of ``ViewSpec`` a paper used, at output side ``size`` (32 for CIFAR-10, 224
    for ImageNet). ``Augment(recipe("simclr"))`` is SimCLR's CIFAR-10 augmentation.
    ``local_crops``: how many small crops a multi-crop recipe adds (None = the paper's)."""
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {name!r}; valid names: {', '.join(sorted(RECIPES))}")
    if local_crops is None:
        return RECIPES[name](size, tuple(mean), tuple(std))
    if name not in MULTI_CROP:
        raise ValueError(f"augmentation recipe {name!r} has no local crops (multi-crop: {', '.join(MULTI_CROP)})")
    return RECIPES[name](size, tuple(mean), tuple(std), local_crops=local_crops)

"""Colorization as a pretext task (Zhang, Isola & Efros 2016, "Colorful Image Colorization", ECCV).

Keep only the lightness of a colour photograph and train a network to give the colours back. The
label is free (every colour photo is its own answer), and the task cannot be solved from local
pixel statistics alone: to colour a grey blob the network must recognise it as sky, grass or skin.
The survey files it among the pretext tasks that predict one part of the data from another
(Jaiswal et al. 2020, Sec. 2.2.2); Larsson et al. (2016) proposed the same task at the same time.

Zhang et al. work in CIE Lab (:mod:`sslbook.color`): the input X is the L channel, the target Y the
ab channels. Predicting ab by regression (L2) gives greyish images, because the mean of several
plausible colours (a red or a green apple) is grey. So the paper predicts a *distribution* over 313
quantised ab bins per pixel and trains it with a rebalanced cross-entropy. Sec. 2 of the paper,
line by line:

    X = the L channel of a training image                     -> rgb_to_lab(denormalize(view)), .lightness
    Y = its ab channels, at the prediction's resolution       -> adaptive_avg_pool2d(ab) in forward
    Z = H_gt^-1(Y): soft-encode each pixel over Q = 313 bins   -> color.soft_encode (5 nearest, sigma 5)
    Z_hat = G(X): a CNN giving Q scores per pixel (1/4 res.)   -> .scores: backbone maps -> decoder
    L_cl = -sum_{h,w} v(Z_hw) sum_q Z_hwq log Z_hat_hwq        -> forward (mean over pixels)
    v(Z_hw) = w_q*, q* = argmax_q Z_hwq (the nearest bin)      -> .class_weights()[nearest]
    w ~ ((1 - lambda) p_smooth + lambda / Q)^-1, E[w] = 1      -> color.rebalancing_weights, lambda = 0.5
    p_smooth = the data's bin frequencies, Gaussian-smoothed   -> bin_counts buffer, color.smooth_distribution
    test time: Y_hat = H(Z_hat), the annealed mean, T = 0.38   -> .predict_ab, colorize()

What differs from the paper, and why:

* The network. The paper's G is a VGG-style stack of 8 convolution blocks that goes down to 1/8 of
  the input side, uses dilated convolutions there instead of further downsampling, and upsamples
  once at the end to predict at 1/4 (56 x 56 for 224 px). Here G is the book's encoder (a ResNet, whose pooled
  features are what kNN and the linear probe evaluate), given a 1-channel first convolution
  (:func:`sslbook.models.with_input_channels`; feeding L copied into 3 channels would be the same
  network, as a filter on three identical channels is a filter with the summed weights), and a small
  decoder: its last map (4 x 4 for a 32 px image with the CIFAR stem) is upsampled once, x2, by a
  transposed convolution, then a 3x3 convolution and a 1x1 convolution to the Q scores. For 32 px
  CIFAR images the prediction is 8 x 8: 1/4 of the input side, as in the paper.
* The colour prior. The paper measured p on 1.3M ImageNet images once. Here the bin frequencies are
  counted on the training views as they come (``bin_counts``, a buffer, so a checkpoint carries it),
  and the weights of each step use all counts so far, this batch included; after a few batches they
  are CIFAR-10's own.
* ``loss="regression"``: the paper's L2 baseline (its Eq. 1) on the normalised ab channels, for
  comparison; the decoder then gives 2 numbers per pixel instead of Q scores.

The representation evaluated downstream is the encoder's pooled features of the *lightness* image:
:meth:`Colorization.embed` converts the RGB images it receives to L itself, so kNN and the linear
probe see what the network was trained on.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..color import (
    LAB_CENTER,
    LAB_HALF_RANGE,
    ab_bins,
    annealed_mean,
    denormalize,
    lab_to_rgb,
    normalize_lab,
    rebalancing_weights,
    rgb_to_lab,
    smooth_distribution,
    soft_encode,
)
from ..data import CIFAR10_MEAN, CIFAR10_STD
from ..models import with_input_channels
from ..utils import eval_mode
from .base import Method

LOSSES = ("classification", "regression")


def colorization_decoder(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """Upsample x2 (transposed conv), a 3x3 conv, then a 1x1 conv to ``out_channels`` per pixel."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, hidden, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, kernel_size=1),
    )


class Colorization(Method):
    """Colorization (Zhang et al. 2016); see the module docstring.

    ``backbone``: a ResNet (it needs ``forward_maps``); its first convolution is replaced by a
    1-channel one. ``mean``/``std``: the views' normalisation (the trainer passes them; kept as
    buffers) to get the pixels back. ``loss``: "classification" (the paper's, over the 313 bins) or
    "regression" (L2 on ab). ``rebalance``/``lam``: class rebalancing and its lambda (0.5);
    ``neighbours``/``sigma``: the soft-encoding (5 nearest bins, sigma = 5, also the prior's
    smoothing); ``temperature``: the annealed mean's T (0.38); ``decoder_dim``: the decoder's width
    (default: half the encoder's feature width).
    """

    data_needs = ("mean", "std")  # passed by the trainer (see Method.data_needs)

    def __init__(
        self,
        backbone,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        loss: str = "classification",
        rebalance: bool = True,
        lam: float = 0.5,
        neighbours: int = 5,
        sigma: float = 5.0,
        temperature: float = 0.38,
        decoder_dim: Optional[int] = None,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not hasattr(backbone, "forward_maps"):
            raise ValueError("Colorization needs a ResNet encoder (with forward_maps): it predicts colours per pixel")
        super().__init__(with_input_channels(backbone, 1))  # the encoder sees L only
        self.loss, self.rebalance, self.lam = loss, rebalance, lam
        self.neighbours, self.sigma, self.temperature = neighbours, sigma, temperature
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("bins", ab_bins(), persistent=False)  # [Q, 2], a constant of the paper
        self.register_buffer("bin_counts", torch.zeros(len(self.bins), dtype=torch.long))  # the colour prior
        width = backbone.feature_dim
        out = len(self.bins) if loss == "classification" else 2
        self.decoder = colorization_decoder(width, decoder_dim or max(width // 2, 8), out)

    # ---- the pieces
    def lab(self, views: torch.Tensor) -> torch.Tensor:
        """The views (normalised RGB) in Lab, float32 ``[B, 3, H, W]`` (no gradient needed: it is data)."""
        return rgb_to_lab(denormalize(views, self.mean, self.std))

    @staticmethod
    def lightness(lab: torch.Tensor) -> torch.Tensor:
        """X: the L channel, scaled to [-1, 1]: the network's only input, ``[B, 1, H, W]``."""
        return normalize_lab(lab)[:, :1]

    def scores(self, lab: torch.Tensor):
        """Z_hat = G(X): per-pixel outputs ``[B, Q (or 2), h, w]``, and the pooled features ``[B, d]``."""
        maps = self.backbone.forward_maps(self.lightness(lab))
        last = maps[f"layer{self.backbone.num_stages}"]
        return self.decoder(last), last.mean(dim=(2, 3))

    @torch.no_grad()
    def count_colours(self, nearest: torch.Tensor) -> None:
        """Add this batch's nearest-bin counts (of all processes) to the colour prior."""
        counts = torch.bincount(nearest.flatten(), minlength=len(self.bins))
        self.bin_counts += distributed.all_reduce_sum(counts)

    @torch.no_grad()
    def class_weights(self) -> torch.Tensor:
        """w ``[Q]`` from the colours counted so far: smoothed frequencies -> rebalancing weights."""
        p = self.bin_counts.float() / self.bin_counts.sum().clamp(min=1)
        return rebalancing_weights(smooth_distribution(p, self.bins, self.sigma), self.lam)

    # ---- training
    def forward(self, views, index=None):
        lab = self.lab(views[0])  # X and Y come from the same (cropped, flipped) view
        out, h = self.scores(lab)
        out = out.float()
        ab = F.adaptive_avg_pool2d(lab[:, 1:], out.shape[-2:])  # Y at the prediction's resolution
        if self.loss == "regression":  # the paper's Eq. 1 baseline: 1/2 ||Y - Y_hat||^2, normalised units
            target = F.adaptive_avg_pool2d(normalize_lab(lab)[:, 1:], out.shape[-2:])
            loss = 0.5 * (out - target).square().sum(dim=1).mean()
            return {"loss": loss, "z": h.detach()}
        z = soft_encode(ab, self.bins, self.neighbours, self.sigma)  # Z [B, Q, h, w]
        nearest = z.argmax(dim=1)  # q*, the hard label [B, h, w]
        if self.training:
            self.count_colours(nearest)
        per_pixel = -(z * F.log_softmax(out, dim=1)).sum(dim=1)  # cross-entropy with the soft target
        if self.rebalance:
            per_pixel = per_pixel * self.class_weights()[nearest]  # v(Z) = w_q*
        loss = per_pixel.mean()
        accuracy = (out.detach().argmax(dim=1) == nearest).float().mean() * 100
        return {"loss": loss, "z": h.detach(), "accuracy": accuracy}

    # ---- use
    @torch.no_grad()
    def predict_ab(self, lab: torch.Tensor, temperature: Optional[float] = None) -> torch.Tensor:
        """Y_hat: predicted ab ``[B, 2, h, w]`` for images given in Lab (only their L is used)."""
        out, _ = self.scores(lab)
        if self.loss == "regression":
            centre = torch.tensor(LAB_CENTER[1:], device=out.device).view(1, 2, 1, 1)
            half = torch.tensor(LAB_HALF_RANGE[1:], device=out.device).view(1, 2, 1, 1)
            return out.float() * half + centre
        return annealed_mean(out, self.bins, self.temperature if temperature is None else temperature)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluated features: the encoder's pooled features of the images' lightness.

        ``images`` are normalised RGB (as the evaluation passes them); they are turned into L here.
        """
        return self.backbone(self.lightness(self.lab(images)))


@torch.no_grad()
def colorize(method: Colorization, images: torch.Tensor, temperature: Optional[float] = None) -> torch.Tensor:
    """Colour images from their lightness alone: RGB ``[B, 3, H, W]`` in [0, 1] (float32, on the CPU).

    ``images``: uint8 ``[B, 3, H, W]`` (or float in [0, 1]). As in the paper, the prediction (8 x 8
    for 32 px) is upsampled bilinearly to the image's size and joined to the image's own L channel;
    the colours come from the annealed mean with ``temperature`` (default: the method's, 0.38).
    The method runs in eval mode; its train/eval flags are put back afterwards.
    """
    device = method.mean.device
    rgb = images.to(device)
    rgb = rgb.float() / 255 if rgb.dtype == torch.uint8 else rgb.float()
    lab = rgb_to_lab(rgb)
    with eval_mode(method):
        ab = method.predict_ab(lab, temperature)
    ab = F.interpolate(ab, size=lab.shape[-2:], mode="bilinear", align_corners=False)
    return lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1)).cpu()

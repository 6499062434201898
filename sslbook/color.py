"""Colour spaces, and the label makers of the colour pretext tasks.

Two pretext tasks of the book split an image by colour. *Colorization* (Zhang, Isola & Efros 2016)
shows a network the lightness of an image and asks for its colours; *Contrastive Multiview Coding*
(Tian, Krishnan & Isola 2020) treats lightness and colour as two views of one scene. Both work in
CIE L*a*b* ("Lab"): L is lightness (0 = black, 100 = white), a runs from green (negative) to red
(positive), b from blue (negative) to yellow (positive). Unlike R, G and B, which all carry the
brightness, Lab puts it in one channel and the colour in the other two, so "lightness" and "colour"
are two clean halves of an image.

Contents:

* :func:`rgb_to_lab`, :func:`lab_to_rgb` -- sRGB (D65) <-> Lab, batched, differentiable.
* :func:`denormalize` -- back from the views' ``(x - mean) / std`` to RGB in [0, 1].
* :func:`normalize_lab` -- Lab scaled to about [-1, 1] per channel, the networks' input.
* Zhang et al.'s colour classes: :func:`ab_bins` (the 313 bins), :func:`soft_encode` (the targets),
  :func:`smooth_distribution` and :func:`rebalancing_weights` (class rebalancing),
  :func:`annealed_mean` (from a predicted distribution back to one colour).

Everything here is a pure function of tensors: no learnable state, no randomness. The conversions run
in float32 with autocast switched off (a bfloat16 cube root would cost a few Lab units).
"""

from __future__ import annotations

import torch

__all__ = [
    "rgb_to_lab",
    "lab_to_rgb",
    "denormalize",
    "normalize_lab",
    "LAB_CENTER",
    "LAB_HALF_RANGE",
    "ab_bins",
    "soft_encode",
    "smooth_distribution",
    "rebalancing_weights",
    "annealed_mean",
]

# --------------------------------------------------------------------------- sRGB <-> Lab
# Linear sRGB -> CIE XYZ for the D65 white point (IEC 61966-2-1, the matrix as given to 7 digits by
# B. Lindbloom); the rows sum to the D65 white (0.95047, 1, 1.08883), so RGB white -> XYZ white.
RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
WHITE_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6 / 29  # CIE: the cube root is replaced by a line below (6/29)^3


def _disable_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65), channel dimension -3: ``[..., 3, H, W] -> [..., 3, H, W]``.

    The standard formulas (IEC 61966-2-1 for sRGB, CIE 1976 for L*a*b*):

    1. undo the sRGB gamma: ``c_lin = c / 12.92`` if ``c <= 0.04045`` else ``((c + 0.055) / 1.055) ** 2.4``;
    2. linear RGB -> XYZ with :data:`RGB_TO_XYZ`, divide by the D65 white :data:`WHITE_D65`;
    3. ``f(t) = t ** (1/3)`` if ``t > (6/29) ** 3`` else ``t / (3 (6/29) ** 2) + 4/29``;
       ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``.

    White (1, 1, 1) gives (100, 0, 0); any grey (c, c, c) gives a = b = 0; pure red (1, 0, 0) gives
    about (53.24, 80.09, 67.20). Returns float32, L in [0, 100], a in about [-86, 98], b in about
    [-108, 94].
    """
    with _disable_autocast(images):
        rgb = images.float()
        linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
        matrix = torch.tensor(RGB_TO_XYZ, device=rgb.device) / torch.tensor(WHITE_D65, device=rgb.device)[:, None]
        xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear)  # X/Xn, Y/Yn, Z/Zn
        f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
        fx, fy, fz = f.unbind(dim=-3)
        return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """CIE L*a*b* (D65) -> sRGB, the exact inverse of :func:`rgb_to_lab`: ``[..., 3, H, W]``.

    ``f^-1(t) = t ** 3`` if ``t > 6/29`` else ``3 (6/29) ** 2 (t - 4/29)``; XYZ = white * f^-1(...);
    linear RGB = inverse matrix @ XYZ; gamma: ``12.92 c`` if ``c <= 0.0031308`` else
    ``1.055 c ** (1/2.4) - 0.055``. A Lab colour outside the sRGB gamut (predicted colours can be)
    gives values outside [0, 1]; ``clip`` clamps them to [0, 1].
    """
    with _disable_autocast(lab):
        lab = lab.float()
        L, a, b = lab.unbind(dim=-3)
        fy = (L + 16) / 116
        f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
        xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29))
        white = torch.tensor(WHITE_D65, device=lab.device)
        inverse = torch.linalg.inv(torch.tensor(RGB_TO_XYZ, dtype=torch.float64)).float().to(lab.device)
        linear = torch.einsum("ij,...jhw->...ihw", inverse * white[None, :], xyz)
        rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
        return rgb.clamp(0.0, 1.0) if clip else rgb


def denormalize(views: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the augmentation's ``(x - mean) / std``: RGB in [0, 1] (clamped), float32, ``[B, 3, H, W]``."""
    with _disable_autocast(views):
        mean = torch.as_tensor(mean, dtype=torch.float32, device=views.device).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32, device=views.device).view(1, -1, 1, 1)
        return (views.float() * std + mean).clamp(0.0, 1.0)


# The sRGB gamut's extent in Lab: L in [0, 100], a in [-86.183, 98.233], b in [-107.857, 94.478].
# (x - centre) / half-range maps each channel to [-1, 1]: the normalisation of CMC's official code
# (Tian et al. 2020), used here for both colour methods.
LAB_CENTER = (50.0, (98.233 - 86.183) / 2, (94.478 - 107.857) / 2)
LAB_HALF_RANGE = (50.0, (98.233 + 86.183) / 2, (94.478 + 107.857) / 2)


def normalize_lab(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``[B, 3, H, W]`` -> each channel scaled to [-1, 1] over the sRGB gamut (network input)."""
    centre = torch.tensor(LAB_CENTER, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    half = torch.tensor(LAB_HALF_RANGE, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    return (lab - centre) / half


# --------------------------------------------------------------------------- Zhang et al.'s colour classes
# The ab plane cut into 10 x 10 cells (Zhang et al. 2016, Sec. 2.1: "grid size 10"), keeping the
# Q = 313 cells the paper calls in gamut: for every a (a multiple of 10 from -90 to 100) the range
# of b kept, lowest and highest centre. This is the set the authors released (resources/
# pts_in_hull.npy of github.com/richzhang/colorization), written as ranges. It holds every cell
# that the (a, b) of an sRGB colour rounds to (261 cells; tests/test_color_cmc.py checks it) and,
# besides, a ring of cells along the gamut's edge.
_ZHANG_B_RANGES = {
    -90: (50, 90),
    -80: (20, 90),
    -70: (0, 90),
    -60: (-20, 90),
    -50: (-30, 100),
    -40: (-40, 100),
    -30: (-50, 100),
    -20: (-50, 100),
    -10: (-60, 100),
    0: (-70, 100),
    10: (-80, 90),
    20: (-80, 90),
    30: (-90, 90),
    40: (-100, 90),
    50: (-100, 80),
    60: (-110, 80),
    70: (-110, 80),
    80: (-110, 70),
    90: (-110, 70),
    100: (-90, 0),
}


def ab_bins() -> torch.Tensor:
    """The Q = 313 colour classes of Zhang et al. (2016): bin centres ``[313, 2]`` (a, b), float32.

    Ordered by a, then b (the released file's order). Bin q covers the 10 x 10 square of ab values
    around its centre.
    """
    centres = [(a, b) for a, (lo, hi) in _ZHANG_B_RANGES.items() for b in range(lo, hi + 1, 10)]
    return torch.tensor(centres, dtype=torch.float32)


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Zhang et al.'s soft-encoded targets Z: ``ab [B, 2, H, W] -> [B, Q, H, W]``, each pixel summing to 1.

    Paper (Sec. 2.1): "we find the 5-nearest neighbors to Y_{h,w} in the output space and weight
    them proportionally to their distance from the ground truth using a Gaussian kernel with
    sigma = 5". For each pixel's true colour y: the ``neighbours`` bin centres c_q closest to y get
    weight ``exp(-|y - c_q|^2 / (2 sigma^2))``, normalised to sum to 1; all other bins get 0. Nearer
    bins get more, so the nearest bin (the hard label) holds the largest share.
    """
    with _disable_autocast(ab):
        B, _, H, W = ab.shape
        bins = bins.to(device=ab.device, dtype=torch.float32)
        points = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)  # [BHW, 2]
        d2 = torch.cdist(points, bins).square()  # [BHW, Q]
        near_d2, near = d2.topk(neighbours, dim=1, largest=False)
        weights = torch.softmax(-near_d2 / (2 * sigma**2), dim=1)  # Gaussian kernel, normalised
        z = torch.zeros_like(d2).scatter_(1, near, weights)
        return z.reshape(B, H, W, -1).permute(0, 3, 1, 2)


def smooth_distribution(p: torch.Tensor, bins: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """A distribution over the bins, blurred over the ab plane by a Gaussian of ``sigma``; sums to 1.

    ``p_smooth(q) ~ sum_r p(r) exp(-|c_q - c_r|^2 / (2 sigma^2))``: Zhang et al.'s "empirical
    probability of colors ... smoothed with a Gaussian kernel G_sigma" (Sec. 2.2, sigma = 5).
    """
    bins = bins.to(device=p.device, dtype=torch.float32)
    kernel = torch.exp(-torch.cdist(bins, bins).square() / (2 * sigma**2))  # [Q, Q]
    smooth = kernel @ p.float()
    return smooth / smooth.sum()


def rebalancing_weights(p_smooth: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Zhang et al.'s class-rebalancing weights w ``[Q]`` from the smoothed colour distribution.

    Paper (Sec. 2.2, Eq. 3-4): ``w ~ ((1 - lambda) p_smooth + lambda / Q) ** -1`` with ``E[w] =
    sum_q p_smooth(q) w_q = 1``, lambda = 0.5. Rare colours (low p) get large weights, common
    ones (the greys and browns of natural images) small ones; mixing in the uniform distribution
    keeps every weight finite (at most Q / lambda before normalisation), also for colours never seen.
    """
    Q = p_smooth.numel()
    w = 1.0 / ((1 - lam) * p_smooth + lam / Q)
    return w / (p_smooth * w).sum()


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """From predicted colour distributions back to one ab value per pixel: ``[B, Q, h, w] -> [B, 2, h, w]``.

    Paper (Sec. 2.3, Eq. 5): ``H(Z) = E[f_T(Z)]``, ``f_T(z) = exp(log(z) / T) / sum_q exp(log(z_q) / T)``,
    T = 0.38: the distribution is sharpened (T < 1) and its mean taken. T = 1 is the mean (smooth
    but greyish: the mean of red and green is grey), T -> 0 the mode (vivid but patchy). ``logits``
    are the network's scores, so ``log z = log_softmax(logits)`` and ``f_T(z) = softmax(logits / T)``.
    """
    with _disable_autocast(logits):
        sharpened = torch.softmax(logits.float() / temperature, dim=1)  # f_T(z), [B, Q, h, w]
        return torch.einsum("bqhw,qc->bchw", sharpened, bins.to(device=logits.device, dtype=torch.float32))

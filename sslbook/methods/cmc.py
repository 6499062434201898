"""Contrastive Multiview Coding (Tian, Krishnan & Isola 2020, "Contrastive Multiview Coding", ECCV).

CMC's starting point: a scene is seen through several *views* (colour channels, depth, optical flow,
another camera), each noisy and incomplete, and what the views agree on is what matters. So learn
one encoder per view and train them contrastively: the embeddings of two views of the same scene
must be close, those of different scenes far apart. The survey lists it under view prediction
(Jaiswal et al. 2020, Sec. 2.2.5). On ImageNet the views are the two halves of CIE Lab
(:mod:`sslbook.color`): the lightness L and the colour channels ab. Colorization (Zhang et al. 2016)
*predicts* ab from L; CMC only asks the two to be recognisably the same image.

The paper's two-view objective (Sec. 3.1, Eq. 2-3), line by line:

    v1 = L channel, v2 = ab channels of the same (augmented) image   -> .split: one view, cut in two
    z1 = f_1(v1), z2 = f_2(v2): one encoder per view (ResNet halves)  -> .backbone (L), .ab_encoder (ab)
    128-D linear heads, L2-normalised                                 -> .l_head, .ab_head, F.normalize
    h(z1, z2) = exp(z1 . z2 / T), T = 0.07
    L^{V1,V2} = -E log h(z1_i, z2_i) / sum_j h(z1_i, z2_j)    (v1 anchors, positive + negatives from v2)
    L = L^{V1,V2} + L^{V2,V1}                                         -> losses.cmc_loss
    representation: the two encoders' features, concatenated         -> .embed

Two encoders. The official code builds an L network with a 1-channel input and an ab network with a
2-channel input; its ResNet-50 setting ("v1") gives each half the width, so the pair costs about as
much as one network and the concatenated feature has the usual size (other settings use full- or
double-width halves). Here the backbone (with a 1-channel first convolution,
:func:`sslbook.models.with_input_channels`) is the L encoder and a copy of it (2-channel first
convolution) the ab encoder; the config's ``model.width`` sets the width of each, so halving it
gives the paper's split. The copy starts from the same weights except its first layer, which does
not matter: the two networks share nothing and see different inputs from the first step.

Negatives. The paper keeps a memory bank of both views' embeddings for every image and approximates
the softmax with NCE against sampled bank entries (4,096 by default in the official code, as in
InstDisc; this book's memory-bank chapter builds that machinery). Here the negatives are the other images of the batch,
encoded now by the current encoders, with the exact softmax (InfoNCE), as in SimCLR: with a batch of
256 each anchor has 255 negatives, there is no per-image state to keep or to go stale, and no
normalising constant to estimate. Under DDP the embeddings of all processes are gathered (with
gradient), so the negatives come from the global batch.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..color import denormalize, normalize_lab, rgb_to_lab
from ..data import CIFAR10_MEAN, CIFAR10_STD
from ..distributed import gather_with_grad
from ..losses import cmc_loss
from ..models import linear_projector, with_input_channels
from .base import Method


class CMC(Method):
    """Contrastive Multiview Coding with the L and ab views (Tian et al. 2020); see the module docstring.

    ``backbone``: a ResNet, becomes the L encoder (1-channel first convolution); a copy with a
    2-channel first convolution becomes the ab encoder. ``mean``/``std``: the views' normalisation
    (the trainer passes them; kept as buffers). ``dim``: the heads' output size (128);
    ``temperature``: T (0.07, the paper's for ImageNet; the official code uses 0.1 for STL-10).
    """

    data_needs = ("mean", "std")  # passed by the trainer (see Method.data_needs)

    def __init__(self, backbone, mean=CIFAR10_MEAN, std=CIFAR10_STD, dim: int = 128, temperature: float = 0.07):
        ab_encoder = with_input_channels(copy.deepcopy(backbone), 2)  # f_2, for ab
        super().__init__(with_input_channels(backbone, 1))  # f_1, for L: self.backbone
        self.ab_encoder = ab_encoder
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.l_head = linear_projector(self.backbone.feature_dim, dim)
        self.ab_head = linear_projector(self.ab_encoder.feature_dim, dim)
        self.temperature = temperature

    def split(self, images: torch.Tensor):
        """The two views of normalised RGB images: L ``[B, 1, H, W]`` and ab ``[B, 2, H, W]``, each in [-1, 1]."""
        lab = normalize_lab(rgb_to_lab(denormalize(images, self.mean, self.std)))
        return lab[:, :1], lab[:, 1:]

    def forward(self, views, index=None):
        lightness, ab = self.split(views[0])  # one augmented image, cut into its two views
        z_l = F.normalize(self.l_head(self.backbone(lightness)), dim=1)
        z_ab = F.normalize(self.ab_head(self.ab_encoder(ab)), dim=1)
        z_l, z_ab = gather_with_grad(z_l), gather_with_grad(z_ab)  # negatives from the global batch
        loss = cmc_loss(z_l.float(), z_ab.float(), self.temperature)  # both directions, summed
        with torch.no_grad():  # how often each view picks its own partner out of the batch
            similarity = z_l.float() @ z_ab.float().T
            target = torch.arange(len(similarity), device=similarity.device)
            accuracy = (
                (similarity.argmax(1) == target).float().mean() + (similarity.argmax(0) == target).float().mean()
            ) * 50
        return {"loss": loss, "z": z_l.detach(), "accuracy": accuracy}

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluated representation: [f_1(L), f_2(ab)], both encoders' pooled features concatenated.

        ``images`` are normalised RGB (as the evaluation passes them); they are split into L and ab here.
        """
        lightness, ab = self.split(images)
        return torch.cat([self.backbone(lightness), self.ab_encoder(ab)], dim=1)

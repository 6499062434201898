"""Contrastive Predictive Coding on images: predict the patches below from the patches above.

Papers: van den Oord, Li & Vinyals (2018), "Representation Learning with Contrastive Predictive
Coding", arXiv:1807.03748 (CPC); Hénaff, Srinivas, De Fauw, Razavi, Doersch, Eslami & van den Oord
(2020), "Data-Efficient Image Recognition with Contrastive Predictive Coding", ICML (CPC v2).

The survey's *future prediction* task (Jaiswal et al. 2020, Sec. 2.2.4, its Fig. 7 is CPC): encode
a sequence, summarise the past in a context c_t, and from c_t pick the true future embedding
z_{t+k} out of a set of candidates. For images, "time" runs down the image: the sequence is a grid
of overlapping patches read row by row, the past of a row is the rows above it. The InfoNCE loss
maximises a lower bound on the mutual information between c_t and z_{t+k}:
I(z_{t+k}; c_t) >= log N - L_N with N candidates (CPC, Sec. 2.3).

CPC v2's pseudocode (its appendix), line by line:

    cut each image into a grid of overlapping patches                    -> overlapping_patches
        (256 px image, 64 px patches, stride 32: a 7x7 grid)
    latents z_ij = mean-pooled ResNet features of each patch             -> CPC.latents (self.backbone)
    context = pixelCNN(latents): 5 residual blocks of                    -> CausalContext
        1x1 conv, ReLU, 1x3 conv, pad 1 row on top, 2x1 conv (valid), ReLU, 1x1 conv;
        so c_ij sees only latents of rows <= i
    targets = 1x1 conv (latents -> target_dim = 64)                      -> self.to_target
    for i in range(steps_to_ignore = 2, steps_to_predict = 3):           -> self.offsets: k = i + 1 = 3
        preds_i = 1x1 conv_i(context)[rows 0 .. H - k - 1] * emb_scale   -> self.predictors[i], emb_scale = 0.1
        logits = preds_i @ targets of every patch of every image         -> losses.cpc_info_nce(..., positives=)
        label = the target k rows below, same column, same image
        loss += cross_entropy(logits, label)

Rows 1 and 2 below are not predicted ("steps to ignore"): with 50% overlap, the patch one row
below shares half its pixels with the context's own row and the patch two rows below touches it,
so predicting them could be done from low-level continuity. The candidates are the targets of all
positions of all images of the batch: N = B * rows * cols, and the bound is log N - L.

Differences from the papers, kept small: the patch encoder is the book's shared ResNet with
BatchNorm (CPC v2 uses layer normalisation, since batch statistics over patches of one image can
leak information between them, and a deeper ResNet-161); only the top-to-bottom direction is
predicted (CPC v2 also predicts in other directions); patches are not augmented individually
(CPC v2 augments each patch, e.g. colour dropping); the image-level augmentation is the trainer's.
The 32 px CIFAR geometry, 8 px patches every 4 px (7 x 7), is CPC v2's 64/32 on 256 px scaled by 1/8.

``embed(images)``: the representation CPC v2 evaluates -- the encoder's patch features averaged
over the grid (no context network).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import cpc_info_nce
from .base import Method


def overlapping_patches(images: torch.Tensor, patch: int = 8, stride: int = 4) -> torch.Tensor:
    """The grid of overlapping square patches CPC reads like a sequence.

    Paper: Hénaff et al. (2020), CPC v2, Sec. 3: a 256 px image becomes a 7 x 7 grid of 64 px
    patches with 32 px overlap (stride 32); CPC (van den Oord et al. 2018) used the same layout.

    Rule: the patch at grid row r, column c is ``images[..., r*stride : r*stride + patch,
    c*stride : c*stride + patch]``; there are ``(H - patch) // stride + 1`` rows (columns likewise),
    starting at the top-left corner (a remainder at the bottom/right is unused).

    Returns:
        ``[B, rows, cols, C, patch, patch]`` (a copy).
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    B, C, H, W = images.shape
    if patch < 1 or stride < 1 or patch > min(H, W):
        raise ValueError(
            f"need 1 <= patch <= {min(H, W)} (the image side) and stride >= 1, got patch={patch}, stride={stride}"
        )
    grid = images.unfold(2, patch, stride).unfold(3, patch, stride)  # [B, C, rows, cols, p, p]
    return grid.permute(0, 2, 3, 1, 4, 5).contiguous()


class CausalContext(nn.Module):
    """CPC v2's context network: a PixelCNN-style stack in which row i only sees rows <= i.

    Each residual block (CPC v2 appendix): 1x1 conv to ``hidden`` channels, ReLU, 1x3 conv within
    the row (padding 1 left and right), one row of zero padding on top and a 2x1 conv without
    padding (so output row i reads input rows i - 1 and i), ReLU, 1x1 conv back to ``dim``;
    added to the block's input. A final ReLU. After L blocks, c_ij depends on the latents of rows
    i - L .. i (and 2L columns either side) -- never on a row below i.

    Input and output: ``[B, dim, rows, cols]``.
    """

    def __init__(self, dim: int, hidden: int = 256, layers: int = 5):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "reduce": nn.Conv2d(dim, hidden, 1),
                    "row": nn.Conv2d(hidden, hidden, (1, 3), padding=(0, 1)),
                    "down": nn.Conv2d(hidden, hidden, (2, 1)),  # on input padded with one row on top: causal
                    "expand": nn.Conv2d(hidden, dim, 1),
                }
            )
            for _ in range(layers)
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        c = latents
        for block in self.blocks:
            x = F.relu(block["reduce"](c))
            x = block["row"](x)
            x = F.pad(x, (0, 0, 1, 0))  # (left, right, top, bottom): one row of zeros on top
            x = F.relu(block["down"](x))
            c = c + block["expand"](x)
        return F.relu(c)


class CPC(Method):
    """CPC v2 on a grid of overlapping patches; see the module docstring.

    ``patch``/``stride``: the grid (8 px every 4 px on 32 px images: 7 x 7); ``target_dim``: the
    dimension of targets and predictions (64); ``context_dim``/``context_layers``: the PixelCNN's
    hidden channels and residual blocks (256, 5); ``emb_scale``: the predictions' scale (0.1);
    ``steps_to_ignore``/``steps_to_predict``: the pseudocode's loop bounds, predicting the rows
    k = steps_to_ignore + 1 .. steps_to_predict below (only k = 3 with the defaults).
    """

    def __init__(
        self,
        backbone,
        patch: int = 8,
        stride: int = 4,
        target_dim: int = 64,
        context_dim: int = 256,
        context_layers: int = 5,
        emb_scale: float = 0.1,
        steps_to_ignore: int = 2,
        steps_to_predict: int = 3,
    ):
        super().__init__(backbone)
        if not 0 <= steps_to_ignore < steps_to_predict:
            raise ValueError(f"need 0 <= steps_to_ignore < steps_to_predict, got {steps_to_ignore}, {steps_to_predict}")
        self.patch, self.stride, self.emb_scale = patch, stride, emb_scale
        self.offsets = [i + 1 for i in range(steps_to_ignore, steps_to_predict)]  # rows ahead: k = i + 1
        dim = backbone.feature_dim
        self.context = CausalContext(dim, context_dim, context_layers)
        self.to_target = nn.Conv2d(dim, target_dim, 1)
        self.predictors = nn.ModuleList(nn.Conv2d(dim, target_dim, 1) for _ in self.offsets)  # W_k

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """z: the backbone's (mean-pooled) features of every patch, ``[B, dim, rows, cols]``."""
        patches = overlapping_patches(images, self.patch, self.stride)  # [B, rows, cols, C, p, p]
        B, rows, cols = patches.shape[:3]
        h = self.backbone(patches.flatten(0, 2))  # [B * rows * cols, dim], row-major per image
        return h.reshape(B, rows, cols, -1).permute(0, 3, 1, 2)

    def forward(self, views, index=None):
        z = self.latents(views[0])  # [B, dim, rows, cols]
        B, _, rows, cols = z.shape
        if rows <= self.offsets[-1]:
            raise ValueError(
                f"a grid of {rows} rows cannot predict {self.offsets[-1]} rows ahead; "
                "use smaller patches or stride, or fewer steps"
            )
        c = self.context(z)
        targets = self.to_target(z)  # [B, t, rows, cols]
        candidates = targets.permute(0, 2, 3, 1).reshape(B * rows * cols, -1)  # row (b*rows + r)*cols + col
        b, r, col = torch.meshgrid(torch.arange(B), torch.arange(rows), torch.arange(cols), indexing="ij")
        losses, correct = [], []
        with torch.autocast(z.device.type, enabled=False):  # logits and softmax in float32
            for k, predictor in zip(self.offsets, self.predictors):
                pred = predictor(c.float())[:, :, : rows - k, :] * self.emb_scale  # context rows 0 .. rows-k-1
                pred = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
                positives = ((b * rows + r + k) * cols + col)[:, : rows - k, :].reshape(-1).to(z.device)
                losses.append(cpc_info_nce(pred, candidates.float(), positives))
                with torch.no_grad():
                    correct.append((pred @ candidates.float().T).argmax(dim=1) == positives)
        loss = torch.stack(losses).sum()  # the pseudocode's loss += over the offsets
        log_n = math.log(candidates.shape[0])  # N candidates per softmax: 1 positive + N - 1 negatives
        return {
            "loss": loss,
            "z": z.mean(dim=(2, 3)).detach(),  # the evaluated representation, for the collapse monitor
            "accuracy": torch.cat(correct).float().mean() * 100,  # true patch ranked first of N (%)
            # I >= log N - L (losses.mutual_information_bound(L, N - 1)), L = the mean loss of an offset;
            # kept a tensor, so the trainer syncs only when it logs.
            "mi_bound": log_n - loss.detach() / len(losses),
            "log_n": torch.tensor(log_n),  # the bound's ceiling
        }

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """CPC v2's evaluated representation: the patch features averaged over the grid, ``[B, dim]``."""
        return self.latents(images).mean(dim=(2, 3))

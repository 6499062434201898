"""Semi-supervised learning *with* a self-supervised loss: S4L.

Paper: Zhai, Oliver, Kolesnikov & Beyer (2019), "S4L: Self-Supervised Semi-Supervised Learning",
ICCV. Pre-train-then-fine-tune (:func:`sslbook.eval.fine_tune` on a label subset) uses the
unlabelled images and the labels one after the other; S4L trains one network on both at once:

    min_theta  L_l(D_l, theta) + w * L_u(D_u, theta)

    L_l: cross-entropy of a class head on the labelled mini-batch x_l
    L_u: a self-supervised loss on the unlabelled mini-batch x_u (and, in S4L, on x_l too)
    w:   a weight (1 in the official configs); x_l and x_u have the same size

Two choices of L_u, both written here as the official code (google-research/s4l,
``semi_supervised/rotation.py`` and ``exemplar.py``, configs ``config/s4l_*.sh``) computes them:

S4L-Rotation (self_supervised="rotation"; Gidaris et al. 2018's pretext task)::

    every image of x_l and x_u is fed in all four rotations       -> rotation_views()
    L_rot  = mean( CE(rotation_head(f(rot(x_u))), k),              -> 4-way head, both batches
                   CE(rotation_head(f(rot(x_l))), k) )
    L_l    = CE(head(f(rot(x_l))), y)   on all four rotated copies (the class label repeated)
    loss   = L_l + w * L_rot

S4L-Exemplar (self_supervised="exemplar"; Dosovitskiy et al. 2014's exemplar task)::

    every image of x_l and x_u is fed as ``copies`` augmented copies (paper: 8; crop, flip, HSV noise)
    e      = normalize(embedding_head(f(copies)))                   -> a linear embedding head
    L_ex   = mean( batch_hard_triplet(e_u, ids_u), batch_hard_triplet(e_l, ids_l) )
             (soft margin, margin 0; ids = which image a copy comes from) -> sslbook.losses
    L_l    = CE(head(f(copies of x_l)), y)
    loss   = L_l + w * L_ex

At test time only the class head is used, on the plain (unrotated, unaugmented) image.
:func:`s4l_train` trains it; compare its ``test_top1`` with :func:`sslbook.eval.fine_tune` on the
same labelled subset (labels only) and with fine-tuning a pre-trained encoder.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import utils
from .augment import Augment, ViewSpec
from .data import ImageTensorDataset
from .eval import predict
from .losses import batch_hard_triplet_loss
from .pretext import NUM_ROTATIONS, rotate_batch
from .supervised import fit
from .utils import fork_rng, module_device, top1

SELF_SUPERVISED = ("rotation", "exemplar")


# --------------------------------------------------------------------------- pseudo-labels
def rotation_views(images: torch.Tensor, labels: Optional[torch.Tensor] = None):
    """All four rotations of every image, with their rotation labels and (if given) class labels.

    ``images`` [B, C, H, W] -> ``(rotated [4B, C, H, W], rotation [4B], classes [4B] or None)``:
    rows ``k*B .. (k+1)*B - 1`` are the batch turned by k quarter turns counter-clockwise
    (:func:`sslbook.pretext.rotate_batch` with ``angles="all"``), so row ``k*B + i`` has rotation
    label k and class label ``labels[i]``.
    """
    rotated, rotation = rotate_batch(images, "all")
    classes = labels.repeat(NUM_ROTATIONS) if labels is not None else None
    return rotated, rotation, classes


def exemplar_identities(num_images: int, copies: int, device=None) -> torch.Tensor:
    """``[num_images * copies]``: row ``i * copies + j`` (copy j of image i) has identity i."""
    return torch.arange(num_images, device=device).repeat_interleave(copies)


# --------------------------------------------------------------------------- the model
class S4L(nn.Module):
    """An encoder with a class head and a self-supervised head; ``forward(x)`` gives class scores.

    ``loss(labelled, labels, unlabelled)`` is the S4L objective (see the module docstring) on one
    step's batches of normalised float images: ``[B, 3, H, W]`` for rotation, ``[B, copies, 3, H, W]``
    (copies of each image) for exemplar. Returns ``{"loss", "supervised", "self_supervised",
    "accuracy"}`` (accuracy: of the class head on the labelled batch, in [0, 1]; detached).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        self_supervised: str = "rotation",
        weight: float = 1.0,
        embed_dim: int = 128,
        feature_dim: Optional[int] = None,
    ):
        super().__init__()
        if self_supervised not in SELF_SUPERVISED:
            raise ValueError(f"self_supervised must be one of {SELF_SUPERVISED}, got {self_supervised!r}")
        self.self_supervised, self.weight = self_supervised, weight
        dim = feature_dim or utils.feature_dim(encoder, 32)
        self.encoder = encoder
        self.head = nn.Linear(dim, num_classes)  # the classifier that is evaluated
        self.aux_head = nn.Linear(dim, NUM_ROTATIONS if self_supervised == "rotation" else embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def loss(self, labelled: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor) -> dict:
        if self.self_supervised == "rotation":
            x_l, rot_l, y = rotation_views(labelled, labels)
            x_u, rot_u, _ = rotation_views(unlabelled)
            h = self.encoder(torch.cat([x_l, x_u]))  # one pass: BatchNorm sees both batches
            h_l, h_u = h[: len(x_l)], h[len(x_l) :]
            self_loss = 0.5 * (F.cross_entropy(self.aux_head(h_u), rot_u) + F.cross_entropy(self.aux_head(h_l), rot_l))
        else:
            (b_l, n_l), (b_u, n_u) = labelled.shape[:2], unlabelled.shape[:2]
            x_l, x_u = labelled.flatten(0, 1), unlabelled.flatten(0, 1)  # row i*copies + j = copy j of image i
            y = labels.repeat_interleave(n_l)
            h = self.encoder(torch.cat([x_l, x_u]))
            h_l, h_u = h[: len(x_l)], h[len(x_l) :]
            e_l, e_u = F.normalize(self.aux_head(h_l), dim=1), F.normalize(self.aux_head(h_u), dim=1)
            self_loss = 0.5 * (
                batch_hard_triplet_loss(e_u, exemplar_identities(b_u, n_u, e_u.device))
                + batch_hard_triplet_loss(e_l, exemplar_identities(b_l, n_l, e_l.device))
            )
        logits = self.head(h_l)
        supervised = F.cross_entropy(logits, y)
        return {
            "loss": supervised + self.weight * self_loss,
            "supervised": supervised.detach(),
            "self_supervised": self_loss.detach(),
            "accuracy": (logits.argmax(1) == y).float().mean().detach(),
        }


# --------------------------------------------------------------------------- training
def s4l_views(self_supervised: str, size: int, mean, std, copies: int = 4):
    """The function that augments a batch for S4L: one view (rotation; the four turns come later) or
    ``copies`` views stacked as ``[B, copies, 3, H, W]`` (exemplar)."""
    if self_supervised == "rotation":
        augment = Augment([ViewSpec(size=size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0, mean=mean, std=std)])
    else:
        view = ViewSpec(size=size, scale=(0.2, 1.0), jitter_p=0.8, gray_p=0.0, mean=mean, std=std)
        augment = Augment([view] * copies)

    def views(images: torch.Tensor) -> torch.Tensor:
        out = augment(images)
        return out[0] if self_supervised == "rotation" else torch.stack(out, dim=1)

    return views


def s4l_train(
    encoder: nn.Module,
    labelled: ImageTensorDataset,
    unlabelled: ImageTensorDataset,
    test: ImageTensorDataset,
    self_supervised: str = "rotation",
    weight: float = 1.0,
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    copies: int = 4,
    embed_dim: int = 128,
    device=None,
    seed: int = 0,
    max_minutes: Optional[float] = None,
    copy: bool = True,
    eval_every: Optional[int] = None,
) -> dict:
    """Train an encoder with S4L on ``labelled`` + ``unlabelled`` images and report test top-1.

    Each step takes ``batch_size`` labelled and ``batch_size`` unlabelled images (the paper's equal
    mini-batches; fewer labelled ones if the subset is smaller) and minimises the S4L loss
    (:class:`S4L`). An epoch is one pass over ``unlabelled`` (pass the full training set: the labels
    of the labelled subset are simply not used there); the labelled subset is cycled through,
    reshuffled on each pass. ``unlabelled`` labels are never read.

    Augmentation (the paper's recipes, shrunk to small images): for rotation, a random resized crop
    covering 50-100% of the image and a horizontal flip (as :func:`sslbook.eval.fine_tune`), then
    the four rotations; for exemplar, ``copies`` independent views per image (paper: 8) with crops of
    20-100%, flips and colour jitter (which stands in for the paper's HSV noise), and an
    ``embed_dim``-d embedding head (paper: 1000). Optimisation as :func:`sslbook.eval.fine_tune`
    (SGD, momentum 0.9, per-step cosine from ``lr`` to 0, weight decay on everything; the official
    config uses lr 0.03 with batch 256, weight decay 1e-3 and a step schedule over 200 epochs),
    seeded through a forked RNG, ``max_minutes`` re-plans the schedule after the first epoch.

    ``weight=0`` is the supervised baseline on the same batches. ``copy=True`` trains a deep copy of
    ``encoder``. Returns ``{"train_top1", "test_top1", "history", "model"}`` like ``fine_tune``:
    clean top-1 (%) on the labelled set and on ``test`` with the class head, one record per epoch
    (``loss``, ``supervised``, ``self_supervised``, ``train_top1`` on the labelled batches, ``lr``,
    ``minutes``, and ``test_top1`` every ``eval_every`` epochs), and the :class:`S4L` model in eval
    mode (``model.encoder``, ``model.head``).
    """
    if self_supervised not in SELF_SUPERVISED:
        raise ValueError(f"self_supervised must be one of {SELF_SUPERVISED}, got {self_supervised!r}")
    device = torch.device(device) if device is not None else module_device(encoder)
    size = labelled.images.shape[-1]
    mean, std = tuple(labelled.mean), tuple(labelled.std)
    views = s4l_views(self_supervised, size, mean, std, copies)
    batch_size = max(2, min(batch_size, len(unlabelled)))
    labelled_batch = max(2, min(batch_size, len(labelled)))
    steps_per_epoch = max(1, len(unlabelled) // batch_size)  # drop the last partial batch

    def evaluate(model: nn.Module, dataset: ImageTensorDataset) -> float:
        return top1(predict(model, dataset, device=device, mean=mean, std=std, size=size), dataset.labels)

    with fork_rng(device):
        torch.manual_seed(seed)
        backbone = deepcopy(encoder) if copy else encoder
        backbone.to(device)
        model = S4L(
            backbone,
            labelled.num_classes,
            self_supervised,
            weight,
            embed_dim,
            utils.feature_dim(backbone, size, device),
        ).to(device)
        g = torch.Generator().manual_seed(seed)
        labelled_order = torch.zeros(0, dtype=torch.long)

        def next_labelled() -> torch.Tensor:
            nonlocal labelled_order
            if len(labelled_order) < labelled_batch:  # a fresh pass over the labelled subset
                labelled_order = torch.cat([labelled_order, torch.randperm(len(labelled), generator=g)])
            idx, labelled_order = labelled_order[:labelled_batch], labelled_order[labelled_batch:]
            return idx

        def batches(epoch: int):
            order = torch.randperm(len(unlabelled), generator=g)
            for b in range(steps_per_epoch):
                idx_l, idx_u = next_labelled(), order[b * batch_size : (b + 1) * batch_size]
                yield (
                    views(labelled.images[idx_l].to(device)),
                    labelled.labels[idx_l].to(device),
                    views(unlabelled.images[idx_u].to(device)),
                )

        def loss_fn(model: S4L, batch) -> dict:
            return model.loss(*batch)

        history = []

        def log(record: dict) -> None:
            entry = {k: record[k] for k in ("loss", "supervised", "self_supervised")}
            entry.update(
                train_top1=100.0 * record["accuracy"], epoch=record["epoch"], lr=record["lr"], minutes=record["minutes"]
            )
            if eval_every and record["epoch"] % eval_every == 0:
                entry["test_top1"] = evaluate(model, test)
            history.append(entry)

        optimisation = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, momentum=0.9, max_minutes=max_minutes)
        fit(model, batches, loss_fn, **optimisation, device=device, seed=None, log=log, steps_per_epoch=steps_per_epoch)

    model.eval()
    return {
        "train_top1": evaluate(model, labelled),
        "test_top1": evaluate(model, test),
        "history": history,
        "model": model,
    }

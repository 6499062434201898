"""Dense transfer: detection and semantic segmentation heads on a pre-trained encoder.

The survey's downstream chapter (Fig. 16/17) transfers an encoder to tasks that predict *where*,
not only *what*. This module does both on the scenes of :mod:`sslbook.scenes`, at a size a CPU
trains in minutes, with one light decoder on the encoder's last two feature maps:

* :class:`DenseModel` -- the encoder (fine-tuned, or frozen: eval mode, no gradient) and an
  FCN-style decoder (Long et al. 2015, "Fully Convolutional Networks"): the last stage's map is
  projected, upsampled x2 and added to the previous stage's, then two 3x3 convs and a 1x1 output;
* **detection**, anchor-free in the style of CenterNet (Zhou et al. 2019, "Objects as Points"):
  per output cell a centre heatmap per class (:func:`centernet_targets`, :func:`focal_loss`), the
  box size and the sub-cell offset of the centre; :func:`decode_detections` keeps local maxima of the
  heatmap and applies per-class NMS. Scored by AP50 (:func:`detection_map`: the VOC rule of
  :func:`sslbook.detection.mean_average_precision`, in %);
* **segmentation**: per-pixel cross-entropy on the decoder's logits upsampled to the image, scored
  by mean IoU (:func:`mean_iou`, background included as PASCAL VOC does);
* :func:`transfer_arm` -- one arm of the comparison (a backbone, a task, frozen or fine-tuned, a
  label fraction, a seed, a budget), trained by the package's one loop, :func:`sslbook.supervised.fit`.

Labels follow :mod:`sslbook.scenes` (and VOC): 0 is the background, objects are 1..C.
:class:`SegmentationConfig` holds the full-scale protocol (MoCo's FCN on PASCAL VOC 2012) for GPU
readers, as ``sslbook/configs/segmentation/voc.yaml``.
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import SHIPPED, ConfigError, configure
from .data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from .detection import mean_average_precision
from .supervised import fit
from .utils import eval_mode, fork_rng, module_device

TASKS = ("detection", "segmentation")


# --------------------------------------------------------------------------- the model
def stage_maps(encoder: nn.Module, x: torch.Tensor) -> list:
    """The encoder's feature maps, shallow to deep (a ResNet's ``forward_maps``: stem, layer1..4)."""
    if not hasattr(encoder, "forward_maps"):
        raise ValueError(f"{type(encoder).__name__} has no forward_maps: dense heads need a ResNet encoder")
    return list(encoder.forward_maps(x).values())


class DenseModel(nn.Module):
    """An encoder and an FCN-style decoder: ``forward(x) -> [B, out_channels, H / s, W / s]``.

    ``x`` is a standardised float batch; the output stride ``s`` is the second-to-last stage's (4 for
    the CIFAR-stem ResNet: a 64 px scene gives a 16 x 16 map). The decoder: 1x1 convs take the last
    and second-to-last stage maps to ``hidden`` channels, the deeper one is upsampled (bilinear) and
    the two are added, then two 3x3 conv-BN-ReLU and a 1x1 conv to ``out_channels``.

    ``frozen=True`` keeps the encoder as it is: no gradient, always in eval mode (its BatchNorm
    statistics stay the pre-trained ones), computed under ``no_grad``. ``copy=True`` leaves the
    encoder passed in untouched. ``mean``/``std``: the normalisation :meth:`standardise` applies
    (the encoder's pre-training one).
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int,
        hidden: int = 64,
        frozen: bool = False,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        copy: bool = True,
    ):
        super().__init__()
        self.encoder = deepcopy(encoder) if copy else encoder
        self.frozen = frozen
        if frozen:
            self.encoder.requires_grad_(False)
        with eval_mode(self.encoder), torch.no_grad():
            maps = stage_maps(self.encoder, torch.zeros(1, 3, 32, 32, device=module_device(self.encoder)))
        mid, deep = maps[-2].shape[1], maps[-1].shape[1]
        self.deep = nn.Conv2d(deep, hidden, 1)
        self.mid = nn.Conv2d(mid, hidden, 1)
        self.fuse = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(hidden, out_channels, 1)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, 3, H, W]`` -> float, standardised with the model's ``mean``/``std``."""
        return (images.to(self.mean.device).float() / 255 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad() if self.frozen else torch.enable_grad():
            maps = stage_maps(self.encoder, x)
        mid, deep = maps[-2], maps[-1]
        y = F.interpolate(self.deep(deep), size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse(y + self.mid(mid)))


def detection_model(encoder: nn.Module, num_classes: int, **kwargs) -> DenseModel:
    """A :class:`DenseModel` with CenterNet's outputs: ``num_classes`` heatmap channels, then box
    width and height and the centre's x/y offset, in output cells. The heatmap bias starts at
    -log((1 - 0.1) / 0.1) (a prior probability 0.1 per cell, CenterNet's choice) so the focal loss
    does not start on a flood of confident negatives."""
    model = DenseModel(encoder, num_classes + 4, **kwargs)
    with torch.no_grad():
        model.out.bias[:num_classes].fill_(-math.log((1 - 0.1) / 0.1))
    return model


def segmentation_model(encoder: nn.Module, num_classes: int, **kwargs) -> DenseModel:
    """A :class:`DenseModel` with one logit per class and pixel: ``num_classes`` objects + background."""
    return DenseModel(encoder, num_classes + 1, **kwargs)


# --------------------------------------------------------------------------- detection: CenterNet
def centernet_targets(targets: Sequence[dict], num_classes: int, grid: tuple, stride: float) -> dict:
    """Training targets on an output grid of ``grid = (h, w)`` cells of ``stride`` px.

    For each box (labels 1..C) its centre in cells, ``c = centre / stride``, falls in cell
    ``floor(c)``; there the heatmap of its class is 1, with a Gaussian around it (sigma = the box's
    mean side in cells / 6, at least 0.5) -- overlapping Gaussians of one class keep the maximum --
    and the cell stores the box ``size`` (w, h in cells) and the ``offset`` c - floor(c) in [0, 1).
    Returns ``{"heatmap" [B, C, h, w], "size" [B, 2, h, w], "offset" [B, 2, h, w], "centres" bool [B, h, w]}``.
    """
    h, w = grid
    heatmap = torch.zeros(len(targets), num_classes, h, w)
    size, offset = torch.zeros(len(targets), 2, h, w), torch.zeros(len(targets), 2, h, w)
    centres = torch.zeros(len(targets), h, w, dtype=torch.bool)
    ys, xs = torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]
    for b, t in enumerate(targets):
        for box, label in zip(t["boxes"].float().cpu(), t["labels"].cpu().tolist()):
            sides = (box[2:] - box[:2]) / stride
            centre = (box[:2] + box[2:]) / 2 / stride
            cx, cy = (int(v) for v in centre.floor().clamp(min=0).minimum(torch.tensor([w - 1.0, h - 1.0])))
            sigma = max(0.5, float(sides.mean()) / 6)
            bump = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
            heatmap[b, label - 1] = torch.maximum(heatmap[b, label - 1], bump)
            size[b, :, cy, cx] = sides
            offset[b, :, cy, cx] = centre - torch.tensor([cx, cy], dtype=torch.float32)
            centres[b, cy, cx] = True
    return {"heatmap": heatmap, "size": size, "offset": offset, "centres": centres}


def focal_loss(logits: torch.Tensor, heatmap: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (Zhou et al. 2019, Eq. 1; from CornerNet).

    With p = sigmoid(logits) and Y the target heatmap: at centres (Y = 1) -(1 - p)^alpha log p,
    elsewhere -(1 - Y)^beta p^alpha log(1 - p) (near a centre a confident guess costs less), summed
    and divided by the number of centres (at least 1).
    """
    pos = heatmap.eq(1).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = (1 - p) ** alpha * log_p * pos
    neg_loss = (1 - heatmap) ** beta * p**alpha * log_not_p * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def detection_loss(
    out: torch.Tensor, targets: Sequence[dict], num_classes: int, stride: float, size_weight: float = 0.1
) -> dict:
    """CenterNet's loss: :func:`focal_loss` on the heatmap + ``size_weight`` x L1 on the box size +
    L1 on the offset, both at the centres only, per centre (Zhou et al.: size weight 0.1)."""
    t = {k: v.to(out.device) for k, v in centernet_targets(targets, num_classes, out.shape[-2:], stride).items()}
    heat = focal_loss(out[:, :num_classes], t["heatmap"])
    mask = t["centres"][:, None].float()
    n = mask.sum().clamp(min=1)
    size = (F.l1_loss(out[:, num_classes : num_classes + 2], t["size"], reduction="none") * mask).sum() / n
    offset = (F.l1_loss(out[:, num_classes + 2 : num_classes + 4], t["offset"], reduction="none") * mask).sum() / n
    return {
        "loss": heat + size_weight * size + offset,
        "heatmap": heat.detach(),
        "size": size.detach(),
        "offset": offset.detach(),
    }


@torch.no_grad()
def decode_detections(
    out: torch.Tensor,
    num_classes: int,
    stride: float,
    image_size: tuple,
    top_k: int = 20,
    score_threshold: float = 0.05,
    nms_iou: Optional[float] = 0.5,
) -> list:
    """The model's output -> per image ``{"boxes" [m, 4], "scores" [m], "labels" [m]}`` (labels 1..C).

    Cells whose heatmap score is the maximum of their 3x3 neighbourhood (CenterNet's "NMS" by
    max-pooling) and above ``score_threshold``, the ``top_k`` best per image; each gives the box
    centred at (cell + offset) x stride with the predicted size, clipped to the image. ``nms_iou``:
    then torchvision's per-class NMS at that IoU (None: none).
    """
    from torchvision.ops import batched_nms

    heat = out[:, :num_classes].float().sigmoid()
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    b, _, h, w = heat.shape
    scores, index = heat.flatten(1).topk(min(top_k, heat[0].numel()), dim=1)
    labels, cell = index // (h * w), index % (h * w)
    cy, cx = (cell // w).float(), (cell % w).float()
    regress = out[:, num_classes : num_classes + 4].float().flatten(2)  # [B, 4, h * w]
    picked = regress.gather(2, cell[:, None].expand(-1, 4, -1))  # [B, 4, k]
    width, height = picked[:, 0].clamp(min=0), picked[:, 1].clamp(min=0)
    x, y = (cx + picked[:, 2]) * stride, (cy + picked[:, 3]) * stride
    boxes = torch.stack(
        [x - width * stride / 2, y - height * stride / 2, x + width * stride / 2, y + height * stride / 2], dim=-1
    )
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, image_size[1])
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, image_size[0])
    results = []
    for i in range(b):
        keep = scores[i] > score_threshold
        bx, sc, lb = boxes[i][keep], scores[i][keep], labels[i][keep] + 1
        if nms_iou is not None and len(sc):
            kept = batched_nms(bx, sc, lb, nms_iou)
            bx, sc, lb = bx[kept], sc[kept], lb[kept]
        results.append({"boxes": bx.cpu(), "scores": sc.cpu(), "labels": lb.cpu()})
    return results


def detection_map(predictions: Sequence[dict], targets: Sequence[dict], iou_threshold: float = 0.5) -> dict:
    """AP at ``iou_threshold`` (0.5: PASCAL VOC's AP50) in %, by the VOC rule with all-point
    interpolation (:func:`sslbook.detection.mean_average_precision`): ``{"map50", "ap50": {label: AP}}``."""
    result = mean_average_precision(predictions, targets, iou_threshold)
    return {"map50": 100.0 * result["map"], "ap50": {c: 100.0 * v for c, v in result["ap"].items()}}


# --------------------------------------------------------------------------- segmentation
def segmentation_loss(out: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy of the logits, upsampled (bilinear) to the masks' size; pixels
    labelled ``ignore_index`` (VOC's object borders) do not count."""
    logits = F.interpolate(out, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks.long(), ignore_index=ignore_index)


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``[K, K]`` pixel counts, row = true class, column = predicted class; ``ignore_index`` pixels skipped."""
    pred, target = pred.flatten().long().cpu(), target.flatten().long().cpu()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if len(target) and (target.max() >= num_classes or pred.max() >= num_classes or pred.min() < 0):
        raise ValueError(f"class indices must be in 0..{num_classes - 1} (or {ignore_index} in target)")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> dict:
    """Mean intersection over union in %, PASCAL VOC's segmentation score.

    Pixels of the whole set are pooled (not averaged per image): for each class c, IoU = TP / (TP +
    FP + FN) with TP the pixels of class c predicted c, FP the other pixels predicted c, FN the
    pixels of c predicted otherwise. The mean runs over the classes that occur in ``target`` or
    ``pred`` (a class absent from both has no IoU); the background (class 0) is a class, as in VOC.
    Returns ``{"miou": %, "iou": {class: %}, "pixel_accuracy": %}``.
    """
    counts = confusion_counts(pred, target, num_classes, ignore_index).double()
    tp = counts.diag()
    union = counts.sum(0) + counts.sum(1) - tp
    iou = {c: 100.0 * float(tp[c] / union[c]) for c in range(num_classes) if union[c] > 0}
    return {
        "miou": sum(iou.values()) / len(iou) if iou else 0.0,
        "iou": iou,
        "pixel_accuracy": 100.0 * float(tp.sum() / counts.sum().clamp(min=1)),
    }


# --------------------------------------------------------------------------- training and evaluation
def output_stride(model: DenseModel, image_size: int) -> float:
    """Input pixels per output cell of ``model`` at ``image_size`` px."""
    with eval_mode(model), torch.no_grad():
        out = model(torch.zeros(1, 3, image_size, image_size, device=module_device(model)))
    return image_size / out.shape[-1]


def flip_target(target: dict, width: int) -> dict:
    """A target's boxes mirrored as its image is by ``image.flip(-1)`` (``width`` px wide)."""
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return {**target, "boxes": boxes}


def scene_batches(dataset, batch_size: int, seed: int = 0, hflip: bool = True):
    """``batches(epoch)`` for :func:`sslbook.supervised.fit`: a shuffled list of ``(indices, flips)``,
    the same for a given (seed, epoch); ``flips`` marks the scenes to mirror (half, at random)."""

    def batches(epoch: int) -> list:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(dataset), generator=g)
        flips = torch.rand(len(dataset), generator=g) < 0.5 if hflip else torch.zeros(len(dataset), dtype=torch.bool)
        return [(index, flips[index]) for index in order.split(batch_size)]

    return batches


def _batch(model: DenseModel, dataset, index: torch.Tensor, flips: torch.Tensor):
    images = dataset.images[index]
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    return model.standardise(images), images.shape[-1]


def detection_step(dataset, num_classes: int, stride: float, size_weight: float = 0.1):
    """``loss_fn(model, (indices, flips))`` for :func:`sslbook.supervised.fit` on detection scenes."""

    def loss_fn(model: DenseModel, batch) -> dict:
        index, flips = batch
        x, width = _batch(model, dataset, index, flips)
        targets = [
            flip_target(dataset.targets[i], width) if f else dataset.targets[i]
            for i, f in zip(index.tolist(), flips.tolist())
        ]
        return detection_loss(model(x), targets, num_classes, stride, size_weight)

    return loss_fn


def segmentation_step(dataset):
    """``loss_fn(model, (indices, flips))`` for :func:`sslbook.supervised.fit` on scene masks."""

    def loss_fn(model: DenseModel, batch) -> torch.Tensor:
        index, flips = batch
        x, _ = _batch(model, dataset, index, flips)
        masks = dataset.masks[index]
        masks = torch.where(flips.view(-1, 1, 1), masks.flip(-1), masks).to(x.device)
        return segmentation_loss(model(x), masks)

    return loss_fn


@torch.no_grad()
def predict(model: DenseModel, dataset, task: str, batch_size: int = 128, **decode_kwargs):
    """The model's predictions on every scene, in eval mode (flags restored): for ``"detection"`` a
    list of ``{"boxes", "scores", "labels"}`` (:func:`decode_detections`), for ``"segmentation"``
    a uint8 ``[N, H, W]`` tensor of classes (the argmax of the upsampled logits)."""
    _check_task(task)
    outputs = []
    size = tuple(dataset.images.shape[-2:])
    with eval_mode(model):
        for start in range(0, len(dataset), batch_size):
            x = model.standardise(dataset.images[start : start + batch_size])
            out = model(x)
            if task == "detection":
                num_classes = out.shape[1] - 4
                outputs += decode_detections(out, num_classes, size[1] / out.shape[-1], size, **decode_kwargs)
            else:
                logits = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
                outputs.append(logits.argmax(1).to(torch.uint8).cpu())
    return outputs if task == "detection" else torch.cat(outputs)


def evaluate(model: DenseModel, dataset, task: str, batch_size: int = 128) -> dict:
    """AP50 (``{"map50", "ap50"}``, :func:`detection_map`) or mean IoU (``{"miou", "iou",
    "pixel_accuracy"}``, :func:`mean_iou`) of ``model`` on ``dataset``, in %."""
    predictions = predict(model, dataset, task, batch_size)
    if task == "detection":
        return detection_map(predictions, dataset.targets)
    return mean_iou(predictions, dataset.masks, dataset.num_classes + 1)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def transfer_arm(
    encoder: nn.Module,
    task: str,
    train,
    test,
    *,
    frozen: bool = False,
    fraction: float = 1.0,
    seed: int = 0,
    epochs: int = 10,
    steps: Optional[int] = None,
    max_minutes: Optional[float] = None,
    lr: float = 0.05,
    encoder_lr_scale: float = 1.0,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    hidden: int = 64,
    warmup: float = 0.1,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    device="cpu",
    precision: str = "fp32",
    log=None,
) -> dict:
    """One arm of the transfer comparison: train a head on ``encoder`` for ``task`` and score it.

    - ``task``: ``"detection"`` (:func:`detection_model`, scored by AP50) or ``"segmentation"``
      (:func:`segmentation_model`, scored by mean IoU), on :class:`~sslbook.scenes.SceneDataset` s.
    - ``frozen``: train the decoder only (the encoder as a fixed feature extractor), else everything.
    - ``fraction``: train on that random fraction of ``train``'s scenes (``SceneDataset.fraction``,
      drawn with ``seed``), the labelled part of a learning curve.
    - Budget: ``epochs`` over the (reduced) training set, or ``steps`` optimiser steps (the same
      compute whatever the fraction; as many epochs as they need), and optionally ``max_minutes``
      of wall clock (:func:`sslbook.supervised.fit` re-plans the run to fit it).
    - Optimisation: SGD (momentum 0.9, ``weight_decay``), a linear warm-up over the first ``warmup``
      fraction of the planned steps to the peak ``lr``, then cosine to 0; horizontal flips;
      ``encoder_lr_scale`` multiplies the encoder's peak lr when it is fine-tuned (e.g. 0.1: the
      pre-trained layers move slowly while the new head, starting from random, learns at ``lr``);
      ``batch_size`` scenes per step; ``precision`` as :func:`~sslbook.supervised.fit` (for these small
      heads bf16 autocast was slower than fp32 on the book's 2-core CPU). The encoder is copied, never changed.

    ``seed`` fixes the fraction, the head's initialisation, the order and the flips. Returns
    ``{"task", "frozen", "fraction", "seed", "metric": "map50" or "miou", "value": % on test,
    "train_scenes", "epochs", "steps", "minutes" (training only), "losses", "model"}``.
    """
    _check_task(task)
    if not encoder_lr_scale >= 0:
        raise ValueError(f"encoder_lr_scale must be >= 0 (a factor of lr), got {encoder_lr_scale}")
    labelled = train.fraction(fraction, seed) if fraction < 1 else train
    num_classes = train.num_classes
    with fork_rng(device):
        torch.manual_seed(seed)
        build = detection_model if task == "detection" else segmentation_model
        model = build(encoder, num_classes, hidden=hidden, frozen=frozen, mean=mean, std=std).to(device)
    stride = output_stride(model, train.images.shape[-1])
    loss_fn = detection_step(labelled, num_classes, stride) if task == "detection" else segmentation_step(labelled)
    per_epoch = math.ceil(len(labelled) / batch_size)
    if steps is not None:
        epochs = math.ceil(steps / per_epoch)
    planned = steps if steps is not None else epochs * per_epoch
    param_groups = None
    if not frozen and encoder_lr_scale != 1:
        encoder_ids = {id(p) for p in model.encoder.parameters()}
        head = [p for p in model.parameters() if id(p) not in encoder_ids]
        param_groups = [{"params": head}, {"params": list(model.encoder.parameters()), "lr": lr * encoder_lr_scale}]
    result = fit(
        model,
        scene_batches(labelled, batch_size, seed),
        loss_fn,
        epochs=epochs,
        lr=lr,
        param_groups=param_groups,
        weight_decay=weight_decay,
        warmup_epochs=warmup * planned / per_epoch,
        max_minutes=max_minutes,
        device=device,
        seed=seed,
        max_steps=steps,
        precision=precision,
        log=log,
    )
    scores = evaluate(model, test, task)
    metric = "map50" if task == "detection" else "miou"
    return {
        "task": task,
        "frozen": frozen,
        "fraction": fraction,
        "seed": seed,
        "metric": metric,
        "value": scores[metric],
        "scores": scores,
        "train_scenes": len(labelled),
        "epochs": result["epochs"],
        "steps": result["steps"],
        "minutes": result["seconds"] / 60,
        "losses": result["losses"],
        "model": model,
    }


# --------------------------------------------------------------------------- pictures
def mask_colours(mask: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A class mask ``[H, W]`` as an RGB float image ``[H, W, 3]``: class c >= 1 in matplotlib's
    tab10 colour ``c - 1`` (the colour of its boxes), background black; over ``image`` (uint8 ``[3, H, W]``)
    the colours are blended 65/35 and the background is the image darkened."""
    import matplotlib.pyplot as plt

    palette = torch.tensor([(0.0, 0.0, 0.0)] + [plt.get_cmap("tab10")(i % 10)[:3] for i in range(255)])
    colours = palette[mask.long().clamp(max=255)]
    if image is None:
        return colours
    base = image.permute(1, 2, 0).float() / 255
    return torch.where(mask[..., None] > 0, 0.35 * base + 0.65 * colours, 0.35 * base)


def show_scene_predictions(
    dataset,
    indices: Sequence[int],
    detections: Optional[Sequence[dict]] = None,
    masks: Optional[torch.Tensor] = None,
    score_threshold: float = 0.3,
    size: float = 1.9,
    title: Optional[str] = None,
):
    """Scenes (one column each) with the ground truth and a model's predictions, one row each:
    the true boxes, the true mask, then (if given) the predicted boxes of ``detections[i]`` (score
    above ``score_threshold``, with class and score) and the predicted ``masks[i]`` (indexed like
    ``dataset``). Classes are coloured alike in boxes and masks. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [("truth: boxes", "boxes", dataset.targets), ("truth: mask", "mask", dataset.masks)]
    if detections is not None:
        rows.append(("predicted boxes", "boxes", detections))
    if masks is not None:
        rows.append(("predicted mask", "mask", masks))
    fig, axes = plt.subplots(len(rows), len(indices), figsize=(len(indices) * size, len(rows) * size), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for col, i in enumerate(indices):
        image = dataset.images[i]
        for row, (name, kind, source) in enumerate(rows):
            ax = axes[row, col]
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
            if kind == "mask":
                ax.imshow(mask_colours(source[i], image).numpy())
                continue
            ax.imshow(image.permute(1, 2, 0).numpy())
            item = source[i]
            scores = item.get("scores", torch.ones(len(item["labels"])))
            for box, score, label in zip(item["boxes"].tolist(), scores.tolist(), item["labels"].tolist()):
                if score < score_threshold:
                    continue
                x1, y1, x2, y2 = box
                colour = cmap((int(label) - 1) % 10)
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.8))
                text = dataset.classes[int(label)] + (f" {score:.2f}" if "scores" in item else "")
                ax.text(
                    x1,
                    y1,
                    text,
                    color="white",
                    fontsize=6,
                    va="bottom",
                    bbox=dict(facecolor=colour, alpha=0.85, pad=1, lw=0),
                )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the full-scale protocol
@dataclass
class SegmentationConfig:
    """MoCo's PASCAL VOC semantic segmentation protocol (He et al. 2020, Appendix A "Semantic
    segmentation"; BYOL, Grill et al. 2020, Appendix D.4, uses the same network), for GPU readers.
    Not run in this book.

    The network (FCN-16s, Long et al. 2015): the convolutional layers of a ResNet-50 whose last
    stage (conv5) has 3x3 convs with dilation 2 and stride 1 (total stride 16), then two 3x3 convs of
    256 channels with dilation 6 (DeepLab's large field of view), each with BN and ReLU, and a 1x1
    conv for per-pixel classification; per-pixel softmax cross-entropy. Data: VOC 2012
    ``train_aug`` (the 10,582 images with the extra annotations of Hariharan et al. 2011, SBD),
    evaluated on ``val`` (1,449 images) by mean IoU over the 21 classes (background included, the
    object borders labelled 255 ignored). Training: random scaling by [0.5, 2.0], 513 px crops and
    horizontal flips, batch 16, weight decay 1e-4, learning rate 0.003 multiplied by 0.1 at 70% and
    90% of 30k iterations; results are the mean of 5 trials. Momentum (not stated in the paper) is
    detectron2's default 0.9; inference is on the original image size.

    MoCo reports this as its one negative case: on VOC semantic segmentation MoCo trails supervised
    ImageNet pre-training (by at least 0.8 mIoU, Sec. 4.2). Load with
    :func:`load_segmentation_config` to change fields with ``key=value`` overrides.
    """

    paper: str = "He et al. 2020 (MoCo), Appendix A, semantic segmentation; BYOL (Grill et al. 2020) Appendix D.4"
    # data: VOC 2012 under <root>/VOCdevkit/VOC2012; train_aug needs the SBD masks (SegmentationClassAug)
    root: Optional[str] = None  # default $SSLBOOK_DATA
    year: str = "2012"
    train_set: str = "train_aug"  # 10,582 images
    val_set: str = "val"  # 1,449 images
    num_classes: int = 21  # 20 object classes + background
    ignore_index: int = 255  # VOC's object borders
    # network: FCN-16s on a dilated ResNet-50
    encoder: str = "resnet50"
    stem: str = "imagenet"
    width: int = 64
    last_stage_dilation: int = 2  # conv5: dilation 2, stride 1 -> output stride 16
    head_channels: int = 256
    head_convs: int = 2
    head_dilation: int = 6
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    # augmentation
    scale_range: tuple = (0.5, 2.0)
    crop_size: int = 513
    hflip: bool = True
    # solver
    batch_size: int = 16
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0001
    max_iter: int = 30000
    steps: tuple = (21000, 27000)  # lr x 0.1 at 70% and 90% of training
    trials: int = 5


SEGMENTATION_CONFIGS = SHIPPED / "segmentation"


def segmentation_config_path(path) -> Path:
    """A YAML file on disk, or a shipped segmentation config's name (``"segmentation/voc"`` or ``"voc"``)."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    name = str(path).removesuffix(".yaml").removeprefix("segmentation/")
    shipped = SEGMENTATION_CONFIGS / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    valid = ", ".join(f"segmentation/{p.stem}" for p in sorted(SEGMENTATION_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"segmentation config {path} does not exist; shipped segmentation configs: {valid}")


def load_segmentation_config(path=None, overrides: Sequence[str] = ()) -> SegmentationConfig:
    """:class:`SegmentationConfig` defaults <- a YAML file of its keys (a path, or a shipped name such
    as ``"segmentation/voc"``) <- ``key=value`` overrides, checked like
    :func:`sslbook.config.load_config` (unknown keys and wrong types fail with the key's name)."""
    path = segmentation_config_path(path) if path is not None else None
    return configure(SegmentationConfig(), path, overrides, "segmentation config")

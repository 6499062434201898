"""Object detection on top of a (self-supervised) encoder: the transfer test of MoCo & co.

MoCo (He et al. 2020, Sec. 4.2) made detection the headline downstream task: fine-tune a
Faster R-CNN (Ren et al. 2015) whose backbone is the pre-trained ResNet on PASCAL VOC, and
compare AP50 with the same detector started from supervised ImageNet weights. This module has
both scales of that experiment:

* **small, on a CPU**: :func:`pasted_objects_dataset` pastes CIFAR images onto 96 px canvases
  (boxes known by construction), :func:`fasterrcnn_from_encoder` puts torchvision's Faster R-CNN
  on our ResNet, :func:`train_detector` fine-tunes everything, :func:`evaluate_detector` scores
  AP50 with our own :func:`mean_average_precision` (the VOC matching rule, written out);
* **full, on GPUs**: :mod:`sslbook.voc` holds MoCo's VOC protocol as a config (R50-C4, 24k
  iterations on VOC07+12 trainval, test on VOC07 test) and turns it into this module's model and
  torchvision ``VOCDetection`` data (not run in this book).

Conventions (torchvision's): an image is a float ``[3, H, W]`` tensor in [0, 1]; a target is
``{"boxes": float [n, 4] as (x1, y1, x2, y2) in pixels, "labels": int64 [n]}`` with labels
1..C -- label 0 is the background class, so ``classes[0] == "__background__"``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from copy import deepcopy
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .augment import gaussian_blur
from .data import CIFAR10_MEAN, CIFAR10_STD, labelled_images
from .supervised import fit
from .utils import eval_mode

BACKGROUND = "__background__"


# --------------------------------------------------------------------------- data
@dataclass
class DetectionDataset:
    """Images in memory (uint8 ``[N, 3, H, W]``) with one target dict per image; ``classes[0]`` is
    the background. ``dataset[i]`` is ``(float image in [0, 1], target)`` as torchvision's detectors take it."""

    images: torch.Tensor
    targets: list
    classes: list

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255, {k: v.clone() for k, v in self.targets[i].items()}

    @property
    def num_classes(self) -> int:
        """Object classes, background not counted."""
        return len(self.classes) - 1


def _free_position(canvas: int, side: int, boxes: list, g: torch.Generator):
    """A uniformly random top-left corner (x, y) where a ``side`` square overlaps none of ``boxes``, or None."""
    grid = torch.arange(canvas - side + 1)
    x, y = grid.repeat(len(grid)), grid.repeat_interleave(len(grid))  # every candidate position
    free = torch.ones(len(x), dtype=torch.bool)
    for x1, y1, x2, y2 in boxes:
        free &= (x + side <= x1) | (x >= x2) | (y + side <= y1) | (y >= y2)
    candidates = free.nonzero()[:, 0]
    if len(candidates) == 0:
        return None
    pick = candidates[int(torch.randint(len(candidates), (), generator=g))]
    return int(x[pick]), int(y[pick])


def pasted_objects_dataset(
    images,
    labels=None,
    n: int = 200,
    canvas: int = 96,
    objects=(1, 3),
    size=(0.25, 0.5),
    background: str = "blur",
    classes: Optional[Sequence[str]] = None,
    seed: int = 0,
) -> DetectionDataset:
    """A toy detection set: small images ("objects") pasted onto larger canvases, boxes known.

    ``images`` are uint8 ``[N, 3, h, w]`` (or an :class:`~sslbook.data.ImageTensorDataset`, whose
    labels and classes are then used). Each of the ``n`` canvases (``canvas`` px square) gets:

    * a background -- ``"blur"``: another image of the set, upsampled to the canvas and Gaussian-
      blurred (sigma = canvas / 16), so it has natural colours but no sharp, object-like edges;
      ``"noise"``: smooth colour noise (uniform RGB on a canvas/8 grid, upsampled bilinearly);
    * ``objects`` = (min, max) objects (an int: exactly that many), each a random image of the set
      resized to a random side in ``size`` (fractions of the canvas), at a position drawn uniformly
      among those where it overlaps none of the objects already placed (if there is none, the side
      shrinks until one exists; an object that fits nowhere even at the smallest side is left out).
      Its box is the pasted square, its label its class + 1.

    So a box is the whole pasted square (CIFAR images include their own background): the task is
    to find and classify the squares. Everything is drawn from ``seed``.
    """
    images, labels, classes = labelled_images(images, labels, classes)
    if background not in ("blur", "noise"):
        raise ValueError(f"background must be 'blur' or 'noise', got {background!r}")
    lo_n, hi_n = (objects, objects) if isinstance(objects, int) else objects
    g = torch.Generator().manual_seed(seed)
    if background == "blur":
        picks = torch.randint(len(images), (n,), generator=g)
        bg = F.interpolate(images[picks].float() / 255, size=(canvas, canvas), mode="bilinear", align_corners=False)
        sigma = canvas / 16
        bg = gaussian_blur(bg, torch.full((n,), sigma), 2 * math.ceil(3 * sigma) + 1)
    else:
        grid = max(2, canvas // 8)
        bg = F.interpolate(
            torch.rand(n, 3, grid, grid, generator=g), size=(canvas, canvas), mode="bilinear", align_corners=False
        )
    out = bg.clamp(0, 1)
    lo_s, hi_s = max(2, round(size[0] * canvas)), min(canvas, round(size[1] * canvas))
    targets = []
    for i in range(n):
        count = int(torch.randint(lo_n, hi_n + 1, (), generator=g))
        boxes, box_labels = [], []
        for _ in range(count):
            idx = int(torch.randint(len(images), (), generator=g))
            side = int(torch.randint(lo_s, hi_s + 1, (), generator=g))
            position = None
            while position is None and side >= lo_s:  # shrink the object until it fits
                position = _free_position(canvas, side, boxes, g)
                side = side if position is not None else side - 1
            if position is None:
                continue  # no room left for even the smallest size
            x, y = position
            box = (x, y, x + side, y + side)
            obj = F.interpolate(
                images[idx : idx + 1].float() / 255,
                size=(side, side),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            out[i, :, y : y + side, x : x + side] = obj[0].clamp(0, 1)
            boxes.append(box)
            box_labels.append(int(labels[idx]) + 1)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(box_labels, dtype=torch.int64),
            }
        )
    pixels = (out * 255).round().clamp(0, 255).to(torch.uint8)
    return DetectionDataset(pixels, targets, [BACKGROUND, *classes])


# --------------------------------------------------------------------------- AP50, written out
def average_precision(recall: torch.Tensor, precision: torch.Tensor, use_07_metric: bool = False) -> float:
    """Area under a precision/recall curve (points in detection-score order).

    ``use_07_metric=False``: the VOC2010+ rule -- make precision monotone (each point takes the
    best precision at any higher recall), then sum precision x recall step. ``True``: VOC2007's
    11-point rule, the mean over t in {0, 0.1, ..., 1} of the best precision at recall >= t
    (what detectron2, hence MoCo's tables, use on VOC07 test).
    """
    recall, precision = recall.double(), precision.double()
    if use_07_metric:
        points = []
        for t in torch.linspace(0, 1, 11, dtype=torch.float64):
            reached = precision[recall >= t - 1e-12]
            points.append(reached.max().item() if len(reached) else 0.0)
        return sum(points) / 11
    r = torch.cat([torch.zeros(1, dtype=torch.float64), recall, torch.ones(1, dtype=torch.float64)])
    p = torch.cat([torch.zeros(1, dtype=torch.float64), precision, torch.zeros(1, dtype=torch.float64)])
    p = p.flip(0).cummax(0).values.flip(0)  # the precision envelope
    step = r[1:] != r[:-1]
    return float(((r[1:] - r[:-1]) * p[1:])[step].sum())


def mean_average_precision(
    predictions: Sequence[dict], targets: Sequence[dict], iou_threshold: float = 0.5, use_07_metric: bool = False
) -> dict:
    """mAP at an IoU threshold (0.5: PASCAL VOC's AP50), by the VOC devkit's matching rule.

    ``predictions[i]``: ``{"boxes" [m, 4], "scores" [m], "labels" [m]}`` for image i (a detector's
    output); ``targets[i]``: ``{"boxes" [n, 4], "labels" [n]}`` and optionally ``"difficult"`` [n]
    (bool). For each class, every detection of that class over all images, best score first: it
    is a true positive if its highest-IoU ground-truth box of the same class and image has IoU >
    ``iou_threshold`` and was not matched before, else a false positive (a duplicate detection is
    one); a match to a "difficult" box counts as neither, and difficult boxes are not counted in
    recall. AP per class by :func:`average_precision`; mAP = mean over the classes with at least one
    (non-difficult) ground-truth box. IoU on continuous coordinates (torchvision's ``box_iou``; the
    old devkit added 1 pixel to widths). Returns ``{"map": float in [0, 1], "ap": {label: AP}}``.
    """
    from torchvision.ops import box_iou

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    labels = sorted({int(c) for t in targets for c in t["labels"].tolist()})
    ap = {}
    for c in labels:
        gt, matched, npos, dets = [], [], 0, []
        for i, (p, t) in enumerate(zip(predictions, targets)):
            keep = t["labels"].cpu() == c
            boxes = t["boxes"].cpu().float()[keep]
            difficult = t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool)).cpu().bool()[keep]
            gt.append((boxes, difficult))
            matched.append(torch.zeros(len(boxes), dtype=torch.bool))
            npos += int((~difficult).sum())
            mine = p["labels"].cpu() == c
            dets += [(float(s), i, b) for s, b in zip(p["scores"].cpu()[mine], p["boxes"].cpu().float()[mine])]
        if npos == 0:
            continue
        dets.sort(key=lambda d: -d[0])
        tp, fp = [], []
        for _, i, box in dets:
            boxes, difficult = gt[i]
            if len(boxes):
                iou = box_iou(box[None], boxes)[0]
                best, j = iou.max(0)
                if best > iou_threshold:
                    if difficult[j]:
                        continue  # neither right nor wrong
                    if not matched[i][j]:
                        matched[i][j] = True
                        tp.append(1.0), fp.append(0.0)
                        continue
            tp.append(0.0), fp.append(1.0)
        tp_cum, fp_cum = torch.tensor(tp).cumsum(0), torch.tensor(fp).cumsum(0)
        recall = tp_cum / npos
        precision = tp_cum / (tp_cum + fp_cum).clamp_min(1e-12)
        ap[c] = average_precision(recall, precision, use_07_metric) if len(dets) else 0.0
    return {"map": sum(ap.values()) / len(ap) if ap else 0.0, "ap": ap}


# --------------------------------------------------------------------------- the detector
class _C4Backbone(nn.Module):
    """ResNet stem + layer1-3 ("C4": stride 16 with the ImageNet stem, 4 with the CIFAR one)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
        self.body = nn.Sequential(OrderedDict((name, getattr(encoder, name)) for name in names))
        self.out_channels = encoder.layer4[0].conv1.in_channels  # layer3's output channels

    def forward(self, x):
        return self.body(x)


class _Res5Head(nn.Module):
    """The C4 box head: layer4 on each pooled region, (an extra BN: MoCo's "ExtraNorm"), average pool."""

    def __init__(self, layer4: nn.Module, channels: int, extra_norm: bool):
        super().__init__()
        self.layer4 = layer4
        self.norm = nn.BatchNorm2d(channels) if extra_norm else nn.Identity()

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.norm(self.layer4(x)), 1).flatten(1)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d holding its statistics (torchvision's
    choice for detection fine-tuning with small per-GPU batches); returns the module."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def fasterrcnn_from_encoder(
    encoder: nn.Module,
    num_classes: int,
    min_size=96,
    max_size: Optional[int] = None,
    kind: str = "c4",
    anchor_sizes: Optional[Sequence[int]] = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    roi_size: int = 14,
    fpn_channels: int = 256,
    extra_norm: bool = False,
    freeze_bn: bool = False,
    copy: bool = True,
    **faster_rcnn_kwargs,
) -> nn.Module:
    """torchvision's ``FasterRCNN`` (Ren et al. 2015) with our ResNet as backbone.

    ``num_classes`` object classes (the model scores ``num_classes + 1``, 0 = background).
    ``kind="c4"`` (MoCo's R50-C4, Detectron's design): the backbone is the stem + layer1-3, one
    feature map; regions are RoI-aligned to ``roi_size`` x ``roi_size`` on it and the box head is
    layer4 + average pooling (+ an extra BatchNorm with ``extra_norm``, as MoCo's
    ``Res5ROIHeadsExtraNorm``). ``kind="fpn"``: a feature pyramid (Lin et al. 2017) with
    ``fpn_channels`` channels on layer1-4 plus a max-pooled level, torchvision's two-MLP box head.

    Images are resized so their short side is ``min_size`` (a tuple: one drawn per training batch,
    the last one at test time) and their long side at most ``max_size`` (default 5/3 of it, as
    800/1333), then standardised with ``mean``/``std`` -- pass the normalisation the encoder was
    pre-trained with. ``anchor_sizes`` (pixels at that scale, ratios ``aspect_ratios``) default to
    (16, 32, 64) for C4 and (8, 16, 32, 64, 128), one per level, for FPN: suited to the 20-50 px
    objects of :func:`pasted_objects_dataset`; detectron2's default for VOC is (32, ..., 512).
    BatchNorm is fine-tuned with the rest (MoCo: "BN tuned"), or frozen with ``freeze_bn``.
    ``copy=True`` leaves ``encoder`` untouched. Other keyword arguments go to ``FasterRCNN``.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    if kind not in ("c4", "fpn"):
        raise ValueError(f"kind must be 'c4' or 'fpn', got {kind!r}")
    if not all(hasattr(encoder, f"layer{i}") for i in range(1, 5)):
        raise ValueError(f"{type(encoder).__name__} is not a 4-stage ResNet (needs layer1..layer4)")
    encoder = deepcopy(encoder) if copy else encoder
    if freeze_bn:
        freeze_batchnorm(encoder)
    sizes = tuple(min_size) if isinstance(min_size, (list, tuple)) else (int(min_size),)
    max_size = max_size or math.ceil(max(sizes) * 1333 / 800)
    ratios = tuple(float(r) for r in aspect_ratios)
    common = dict(min_size=sizes, max_size=max_size, image_mean=list(mean), image_std=list(std), **faster_rcnn_kwargs)
    if kind == "c4":
        anchor_sizes = tuple(anchor_sizes or (16, 32, 64))
        backbone = _C4Backbone(encoder)
        head = _Res5Head(encoder.layer4, encoder.feature_dim, extra_norm)
        return FasterRCNN(
            backbone,
            rpn_anchor_generator=AnchorGenerator((anchor_sizes,), (ratios,)),
            box_roi_pool=MultiScaleRoIAlign(["0"], roi_size, sampling_ratio=0),
            box_head=head,
            box_predictor=FastRCNNPredictor(encoder.feature_dim, num_classes + 1),
            **common,
        )
    anchor_sizes = tuple(anchor_sizes or (8, 16, 32, 64, 128))
    if len(anchor_sizes) != 5:
        raise ValueError(f"an FPN has 5 levels (layer1-4 + pool): give 5 anchor sizes, got {anchor_sizes}")
    in_channels = [getattr(encoder, f"layer{i}")[-1].last_bn().num_features for i in range(1, 5)]
    backbone = BackboneWithFPN(encoder, {f"layer{i}": str(i - 1) for i in range(1, 5)}, in_channels, fpn_channels)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), (ratios,) * 5)
    return FasterRCNN(backbone, num_classes=num_classes + 1, rpn_anchor_generator=anchors, **common)


# --------------------------------------------------------------------------- training and evaluation
def _collate(batch):
    return tuple(zip(*batch))


def hflip_with_boxes(image: torch.Tensor, target: dict):
    """``image`` [3, H, W] mirrored left-right, with its ``target["boxes"]`` (x0, y0, x1, y1) mirrored too."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def multistep_lr_factor(step: int, total: int, warmup: int, warmup_factor: float, milestones: Sequence[float]) -> float:
    """detectron2's WarmupMultiStepLR: linear warm-up from ``warmup_factor``, x0.1 at each milestone."""
    decay = 0.1 ** sum(step >= m * total for m in milestones)
    if step < warmup:
        alpha = step / warmup
        return decay * (warmup_factor * (1 - alpha) + alpha)
    return decay


def train_detector(
    model: nn.Module,
    dataset,
    epochs: int = 1,
    steps: Optional[int] = None,
    batch_size: int = 4,
    lr: Optional[float] = None,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    warmup_steps: int = 100,
    warmup_factor: float = 0.001,
    milestones: Sequence[float] = (0.75, 11 / 12),
    hflip: bool = True,
    device=None,
    seed: int = 0,
    max_minutes: Optional[float] = None,
    num_workers: int = 0,
) -> dict:
    """Fine-tune a torchvision detector (all layers) on ``dataset`` ((image, target) pairs).

    MoCo's VOC schedule, scaled: SGD with momentum, weight decay 1e-4, ``lr`` (default 0.02 x
    batch / 16: detectron2's 0.02 for 16 images, linearly scaled), a linear warm-up over
    ``warmup_steps`` (capped at a tenth of the run) and x0.1 steps at ``milestones`` (fractions of
    the run; MoCo: 18k and 22k of 24k iterations). ``steps`` iterations of ``batch_size`` images, or
    ``epochs`` passes if ``steps`` is None; images are flipped horizontally at random (``hflip``),
    and the detector itself draws a training scale per batch when its ``min_size`` is a tuple.
    ``max_minutes`` caps the training time: steps 2-4 are timed and the run (schedule included)
    shortened to what fits, and training stops once the budget is spent. The
    loss is the sum of torchvision's four (RPN objectness and box regression, box classifier and
    regression). Randomness comes from ``seed`` (forked RNG). The loop is the package's one
    supervised loop, :func:`sslbook.supervised.fit`, with this schedule and a per-step log. Trains
    ``model`` in place (on ``device``, default: its own) and returns ``{"model", "history"}``: per
    step ``loss``, the four parts, ``lr`` and ``minutes``. A non-finite loss stops training with a
    ``FloatingPointError`` (lower the learning rate).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batch_size = max(1, min(batch_size, len(dataset)))
    per_epoch = math.ceil(len(dataset) / batch_size)
    total = steps if steps is not None else epochs * per_epoch
    lr = lr if lr is not None else 0.02 * batch_size / 16
    g = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(len(dataset), generator=g).split(batch_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=[b.tolist() for b in order], collate_fn=_collate, num_workers=num_workers
        )
        for images, targets in loader:
            flips = torch.rand(len(images), generator=g) < 0.5 if hflip else torch.zeros(len(images), dtype=torch.bool)
            pairs = [hflip_with_boxes(im, t) if f else (im, t) for im, t, f in zip(images, targets, flips.tolist())]
            yield [im.to(device) for im, _ in pairs], [{k: v.to(device) for k, v in t.items()} for _, t in pairs]

    def loss_fn(model: nn.Module, batch) -> dict:
        losses = model(*batch)  # torchvision's four losses
        return {"loss": sum(losses.values()), **losses}

    def schedule(step: int, total_steps: int) -> float:  # the warm-up is re-sized with the run
        return multistep_lr_factor(step, total_steps, min(warmup_steps, total_steps // 10), warmup_factor, milestones)

    history = []
    fit(
        model,
        batches,
        loss_fn,
        epochs=math.ceil(total / per_epoch),
        max_steps=total,
        steps_per_epoch=per_epoch,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        max_minutes=max_minutes,
        device=device,
        seed=seed,
        log=lambda record: history.append({k: v for k, v in record.items() if k != "epoch"}),
        log_every="step",
    )
    model.eval()
    return {"model": model, "history": history}


@torch.no_grad()
def _detect(model: nn.Module, dataset, batch_size: int, device, min_size: Optional[int], keep_targets: bool):
    device = torch.device(device) if device is not None else next(model.parameters()).device
    old_size = model.transform.min_size
    if min_size is not None:
        model.transform.min_size = (int(min_size),)
    outputs, targets = [], []
    try:
        with eval_mode(model):
            for start in range(0, len(dataset), batch_size):
                items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                outputs += [{k: v.cpu() for k, v in out.items()} for out in model([im.to(device) for im, _ in items])]
                targets += [t for _, t in items] if keep_targets else []
    finally:
        model.transform.min_size = old_size
    return outputs, targets


def predict_detections(
    model: nn.Module, dataset, batch_size: int = 8, device=None, min_size: Optional[int] = None
) -> list:
    """The detector's outputs (``boxes``, ``scores``, ``labels`` on the CPU) for every image of
    ``dataset``, in eval mode (flags restored); ``min_size`` overrides the test scale for this call."""
    return _detect(model, dataset, batch_size, device, min_size, keep_targets=False)[0]


def evaluate_detector(
    model: nn.Module,
    dataset,
    batch_size: int = 8,
    device=None,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    min_size: Optional[int] = None,
) -> dict:
    """AP50 of a detector on ``dataset``: ``{"map50": mAP in %, "ap50": {class name: AP in %}}``.

    Predictions as :func:`predict_detections`, scored by :func:`mean_average_precision` (in %, as
    papers print AP50). ``use_07_metric=True`` for VOC07 test as MoCo reports it.
    """
    predictions, targets = _detect(model, dataset, batch_size, device, min_size, keep_targets=True)
    result = mean_average_precision(predictions, targets, iou_threshold, use_07_metric)
    classes = getattr(dataset, "classes", None)
    return {
        "map50": 100.0 * result["map"],
        "ap50": {(classes[c] if classes else c): 100.0 * v for c, v in result["ap"].items()},
    }


def show_detections(
    images,
    targets=None,
    predictions=None,
    classes=None,
    score_threshold: float = 0.5,
    ncols: int = 4,
    size: float = 2.6,
):
    """Images with ground-truth boxes (dashed white) and predictions above ``score_threshold``
    (coloured, with class and score); ``images`` a list of float [3, H, W] or a dataset. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not isinstance(images, (list, tuple, torch.Tensor)):  # a dataset of (image, target) pairs
        classes = classes or getattr(images, "classes", None)
        data = [images[i] for i in range(len(images))]
        images, targets = [d[0] for d in data], targets if targets is not None else [d[1] for d in data]
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
        for box in targets[i]["boxes"] if targets is not None else []:
            x1, y1, x2, y2 = box.tolist()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", ls="--", lw=1.2))
        if predictions is not None:
            p = predictions[i]
            for box, score, label in zip(p["boxes"], p["scores"], p["labels"]):
                if score < score_threshold:
                    continue
                x1, y1, x2, y2 = box.tolist()
                colour = cmap(int(label) % 10)
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.8))
                name = classes[int(label)] if classes else str(int(label))
                ax.text(
                    x1,
                    y1,
                    f"{name} {score:.2f}",
                    color="white",
                    fontsize=6,
                    va="bottom",
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0),
                )
    fig.tight_layout()
    return fig

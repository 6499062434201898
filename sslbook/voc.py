"""PASCAL VOC detection at full scale: MoCo's protocol as a config (not run in this book).

He et al. 2020 (MoCo), Sec. 4.2, fine-tune a Faster R-CNN R50-C4 on VOC07+12 trainval for 24k
iterations and report AP50 on VOC07 test. :class:`DetectionConfig` holds that recipe (from the
official detectron2 configs), :func:`build_detector` builds it with
:func:`sslbook.detection.fasterrcnn_from_encoder`, :func:`voc_datasets` reads torchvision's
``VOCDetection``; training and evaluation are :func:`sslbook.detection.train_detector` and
:func:`sslbook.detection.evaluate_detector`::

    cfg = load_detection_config(None, ["root=/data"])  # the folder holding VOCdevkit/
    model = build_detector(cfg, method_from_checkpoint("runs/moco/checkpoint.pt")[0].backbone)
    train, test = voc_datasets(cfg)
    train_detector(model, train, device="cuda", num_workers=8, **cfg.train_kwargs())
    evaluate_detector(model, test, min_size=cfg.min_size_test, use_07_metric=cfg.use_07_metric)

The recipe is the dataclass's defaults, written out as the shipped file
``sslbook/configs/detection/voc.yaml`` (``load_detection_config("detection/voc")``): a detection
config, not a pre-training one, so :func:`sslbook.config.load_config` and
:func:`sslbook.config.shipped_configs` leave the ``detection/`` folder alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .config import SHIPPED, ConfigError, configure
from .data import IMAGENET_MEAN, IMAGENET_STD, data_root
from .detection import BACKGROUND, fasterrcnn_from_encoder
from .models import build_encoder

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass
class DetectionConfig:
    """MoCo's PASCAL VOC detection protocol (He et al. 2020, Sec. 4.2 and its appendix), as set in
    the official configs ``detection/configs/pascal_voc_R_50_C4_24k{,_moco}.yaml`` and
    ``Base-RCNN-C4-BN.yaml`` of facebookresearch/moco (detectron2), with detectron2's defaults for
    what they leave unset.

    Paper, Sec. 4.2: Faster R-CNN with an R50-C4 (or R50-dilated-C5) backbone, BN tuned (the
    configs: synchronised BN in the backbone and an extra BN after res5 in the box head), all layers
    fine-tuned end to end; training images at a short side of 480-800 px, 800 at test; fine-tuned
    for 24k iterations (about 23 epochs) on VOC trainval2007+2012, evaluated on VOC test2007 with
    AP50 (the VOC metric) plus COCO-style AP and AP75. MoCo's Table (R50-C4) reports AP50 81.5 for
    MoCo IN-1M vs. 81.3 for supervised ImageNet pre-training (AP 55.9 vs. 53.5, AP75 62.6 vs. 58.8).

    Not reproduced here: synchronised BN across GPUs (``freeze_bn=False`` tunes plain per-device BN),
    detectron2's "precise BN" re-estimation at test time, and COCO-style AP/AP75 (only AP50 is
    computed). Load with :func:`load_detection_config` to change fields with ``key=value`` overrides.
    """

    paper: str = (
        "He et al. 2020 (MoCo), Sec. 4.2; facebookresearch/moco detection/configs/pascal_voc_R_50_C4_24k_moco.yaml"
    )
    # data: torchvision VOCDetection under <root>/VOCdevkit/VOC<year>
    root: Optional[str] = None  # default $SSLBOOK_DATA
    train_sets: list = field(default_factory=lambda: [["2007", "trainval"], ["2012", "trainval"]])
    test_set: list = field(default_factory=lambda: ["2007", "test"])
    num_classes: int = 20
    use_07_metric: bool = True  # detectron2 scores VOC2007 test with the 11-point AP
    # model (MODEL.*)
    encoder: str = "resnet50"
    stem: str = "imagenet"
    width: int = 64
    kind: str = "c4"  # R50-C4
    extra_norm: bool = True  # ROI_HEADS.NAME: Res5ROIHeadsExtraNorm
    freeze_bn: bool = False  # BACKBONE.FREEZE_AT: 0 and (sync) BN tuned
    anchor_sizes: tuple = (32, 64, 128, 256, 512)  # detectron2 default ANCHOR_GENERATOR.SIZES
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    roi_size: int = 14  # detectron2 ROI_BOX_HEAD.POOLER_RESOLUTION for C4
    mean: tuple = IMAGENET_MEAN  # PIXEL_MEAN [123.675, 116.280, 103.530] / 255, RGB
    std: tuple = IMAGENET_STD  # PIXEL_STD [58.395, 57.120, 57.375] / 255
    rpn_pre_nms_top_n_train: int = 12000  # detectron2 defaults for C4
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000  # Base-RCNN-C4-BN.yaml
    rpn_post_nms_top_n_test: int = 1000
    # input (INPUT.*)
    min_size_train: tuple = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    min_size_test: int = 800
    max_size: int = 1333
    # solver (SOLVER.*)
    batch_size: int = 16  # IMS_PER_BATCH
    lr: float = 0.02  # BASE_LR
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iter: int = 24000
    steps: tuple = (18000, 22000)  # lr x0.1 at each
    warmup_iters: int = 100
    warmup_factor: float = 0.001

    def train_kwargs(self) -> dict:
        """Keyword arguments of :func:`sslbook.detection.train_detector` for this config."""
        return dict(
            steps=self.max_iter,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_iters,
            warmup_factor=self.warmup_factor,
            milestones=tuple(s / self.max_iter for s in self.steps),
        )


def detection_config_path(path: str | Path) -> Path:
    """A YAML file on disk, or a shipped detection config's name (``"detection/voc"`` or ``"voc"``)."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    name = str(path).removesuffix(".yaml")
    for shipped in (SHIPPED / f"{name}.yaml", SHIPPED / "detection" / f"{name}.yaml"):
        if shipped.is_file() and shipped.parent.name == "detection":
            return shipped
    valid = ", ".join(f"detection/{p.stem}" for p in sorted((SHIPPED / "detection").glob("*.yaml")))
    raise ConfigError(f"detection config {path} does not exist; shipped detection configs: {valid}")


def load_detection_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> DetectionConfig:
    """:class:`DetectionConfig` defaults <- a YAML file of its keys (a path, or a shipped name such as
    ``"detection/voc"``) <- ``key=value`` overrides (checked like :func:`sslbook.config.load_config`:
    unknown keys and wrong types fail with the key's name)."""
    path = detection_config_path(path) if path is not None else None
    cfg = configure(DetectionConfig(), path, overrides, "detection config")
    if cfg.kind not in ("c4", "fpn"):
        raise ConfigError(f"config key 'kind' must be c4 or fpn, got {cfg.kind!r}")
    return cfg


def build_detector(cfg: DetectionConfig, encoder: Optional[nn.Module] = None) -> nn.Module:
    """The config's Faster R-CNN on ``encoder`` (e.g. ``method_from_checkpoint(path)[0].backbone``;
    default: a randomly initialised ``cfg.encoder``, the "random init" row of MoCo's table).

    The training scales are ``min_size_train``; :func:`sslbook.detection.evaluate_detector` takes
    ``min_size=cfg.min_size_test``.
    """
    if encoder is None:
        encoder = build_encoder(cfg.encoder, stem=cfg.stem, width=cfg.width)
    return fasterrcnn_from_encoder(
        encoder,
        cfg.num_classes,
        min_size=tuple(cfg.min_size_train),
        max_size=cfg.max_size,
        kind=cfg.kind,
        anchor_sizes=cfg.anchor_sizes,
        aspect_ratios=cfg.aspect_ratios,
        mean=cfg.mean,
        std=cfg.std,
        roi_size=cfg.roi_size,
        extra_norm=cfg.extra_norm,
        freeze_bn=cfg.freeze_bn,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
    )


def voc_target(annotation: dict, classes: Sequence[str] = VOC_CLASSES) -> dict:
    """A torchvision ``VOCDetection`` annotation (the parsed XML) -> ``{"boxes", "labels", "difficult"}``.

    VOC's pixel coordinates are 1-based and inclusive; like detectron2 we subtract 1 from xmin and
    ymin to get 0-based continuous boxes. Labels are 1 + the class's index in ``classes``.
    """
    objects = annotation["annotation"].get("object", [])
    objects = objects if isinstance(objects, list) else [objects]
    boxes, labels, difficult = [], [], []
    for obj in objects:
        b = obj["bndbox"]
        boxes.append([float(b["xmin"]) - 1, float(b["ymin"]) - 1, float(b["xmax"]), float(b["ymax"])])
        labels.append(list(classes).index(obj["name"]) + 1)
        difficult.append(str(obj.get("difficult", "0")) == "1")
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
    }


class VOCDataset(torch.utils.data.Dataset):
    """torchvision's ``VOCDetection`` as (float image [3, H, W] in [0, 1], :func:`voc_target`) pairs."""

    classes = [BACKGROUND, *VOC_CLASSES]

    def __init__(self, root=None, year: str = "2007", image_set: str = "trainval", download: bool = False):
        import torchvision.datasets as tvd

        self.voc = tvd.VOCDetection(str(data_root(root)), year=year, image_set=image_set, download=download)

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, i: int):
        import torchvision.transforms.v2.functional as TF

        image, annotation = self.voc[i]
        return TF.pil_to_tensor(image.convert("RGB")).float() / 255, voc_target(annotation)


def voc_datasets(cfg: DetectionConfig, download: bool = False):
    """(train, test) for the config: VOC07+12 trainval (concatenated) and VOC07 test."""
    train = torch.utils.data.ConcatDataset([VOCDataset(cfg.root, y, s, download) for y, s in cfg.train_sets])
    return train, VOCDataset(cfg.root, *cfg.test_set, download=download)

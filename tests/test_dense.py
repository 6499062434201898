"""Dense transfer: mIoU and AP50 by hand, CenterNet targets and decoding, the heads, one arm, the VOC configs."""

from __future__ import annotations

import math
from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from sslbook.config import ConfigError  # noqa: E402
from sslbook.dense import (  # noqa: E402
    SegmentationConfig,
    centernet_targets,
    decode_detections,
    detection_map,
    detection_model,
    flip_target,
    focal_loss,
    load_segmentation_config,
    mean_iou,
    output_stride,
    predict,
    scene_batches,
    segmentation_model,
    show_scene_predictions,
    transfer_arm,
)
from sslbook.models import resnet  # noqa: E402
from sslbook.scenes import make_scenes  # noqa: E402

torch.set_num_threads(1)


# --------------------------------------------------------------------------- mean IoU by hand
def test_miou_perfect_is_100_and_disjoint_is_0():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1]])
    out = mean_iou(target, target, num_classes=3)
    assert out["miou"] == 100.0 and out["iou"] == {0: 100.0, 1: 100.0, 2: 100.0} and out["pixel_accuracy"] == 100.0
    wrong = (target + 1) % 3  # every pixel predicted as another class
    out = mean_iou(wrong, target, num_classes=3)
    assert out["miou"] == 0.0 and out["pixel_accuracy"] == 0.0


def test_miou_partial_case_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    # class 0: TP 3, FP 0, FN 1 -> 3/4; class 1: TP 4, FP 1, FN 0 -> 4/5; class 2 occurs nowhere: no IoU
    out = mean_iou(pred, target, num_classes=3)
    assert out["iou"] == {0: pytest.approx(75.0), 1: pytest.approx(80.0)}
    assert out["miou"] == pytest.approx(77.5) and out["pixel_accuracy"] == pytest.approx(87.5)
    # ignored pixels (255) count for nothing: hiding the one mistake makes it perfect
    assert mean_iou(pred, torch.where(pred != target, 255, target), 3)["miou"] == pytest.approx(100.0)
    # pixels are pooled over images, not averaged per image: image 2 adds TP 1 to class 0 only
    two = mean_iou(torch.stack([pred, torch.zeros_like(pred)]), torch.stack([target, torch.zeros_like(target)]), 3)
    assert two["iou"] == {0: pytest.approx(100 * 11 / 12), 1: pytest.approx(80.0)}
    with pytest.raises(ValueError, match=r"class indices must be in 0..2"):
        mean_iou(pred + 2, target, num_classes=3)


# --------------------------------------------------------------------------- AP50 (in %) by hand
def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_map50_perfect_none_and_a_partial_case_by_hand():
    targets = [
        {"boxes": boxes([0, 0, 10, 10], [20, 20, 40, 40]), "labels": torch.tensor([1, 2])},
        {"boxes": boxes([5, 5, 25, 25]), "labels": torch.tensor([1])},
    ]
    perfect = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    assert detection_map(perfect, targets) == {
        "map50": pytest.approx(100.0),
        "ap50": {1: pytest.approx(100.0), 2: pytest.approx(100.0)},
    }
    far = [{"boxes": t["boxes"] + 50, "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    assert detection_map(far, targets)["map50"] == 0.0
    # class 1, ranked by score: image 1's box (TP, 0.9), a box on nothing (FP, 0.8), image 0's box (TP, 0.7):
    # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3 -> all-point AP = 1/2 x 1 + 1/2 x 2/3 = 5/6.
    # class 2: its box shifted by 6 px in x and y: IoU 14 x 14 / (2 x 400 - 196) = 0.32 < 0.5 -> AP 0.
    partial = [
        {
            "boxes": boxes([60, 60, 70, 70], [0, 0, 10, 10], [26, 26, 46, 46]),
            "scores": torch.tensor([0.8, 0.7, 0.9]),
            "labels": torch.tensor([1, 1, 2]),
        },
        {"boxes": boxes([5, 5, 25, 25]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
    ]
    out = detection_map(partial, targets)
    assert out["ap50"] == {1: pytest.approx(100 * 5 / 6), 2: 0.0} and out["map50"] == pytest.approx(100 * 5 / 12)


# --------------------------------------------------------------------------- CenterNet targets and decoding
def test_centernet_targets_by_hand():
    t = centernet_targets(
        [{"boxes": boxes([8, 8, 24, 24], [32, 0, 40, 12]), "labels": torch.tensor([2, 1])}],
        num_classes=3,
        grid=(8, 12),
        stride=4,
    )
    assert t["heatmap"].shape == (1, 3, 8, 12) and t["size"].shape == (1, 2, 8, 12)
    # box 1: centre (16, 16) px = (4, 4) cells, size 4 x 4 cells, offset 0; sigma = 4 / 6
    assert t["heatmap"][0, 1, 4, 4] == 1
    assert t["heatmap"][0, 1, 4, 5] == pytest.approx(math.exp(-1 / (2 * (4 / 6) ** 2)))
    assert t["size"][0, :, 4, 4].tolist() == [4, 4] and t["offset"][0, :, 4, 4].tolist() == [0, 0]
    # box 2: centre (36, 6) px = (9, 1.5) cells -> cell (9, 1), offset (0, 0.5), size 2 x 3 cells, sigma 0.5 (minimum)
    assert t["heatmap"][0, 0, 1, 9] == 1 and t["offset"][0, :, 1, 9].tolist() == [0, 0.5]
    assert t["size"][0, :, 1, 9].tolist() == [2, 3]
    assert t["centres"].sum() == 2 and t["heatmap"][0, 2].max() == 0  # class 3 has no object
    assert (t["heatmap"] == 1).sum() == 2  # exactly one peak per object


def test_perfect_output_decodes_to_the_boxes():
    targets = [
        {"boxes": boxes([8, 8, 24, 24], [33, 2, 47, 13]), "labels": torch.tensor([2, 1])},
        {"boxes": boxes([0, 16, 20, 32]), "labels": torch.tensor([3])},
    ]
    t = centernet_targets(targets, num_classes=3, grid=(8, 12), stride=4)
    logits = torch.where(t["heatmap"] == 1, 8.0, -8.0)
    out = torch.cat([logits, t["size"], t["offset"]], dim=1)
    decoded = decode_detections(out, num_classes=3, stride=4, image_size=(32, 48))
    for d, target in zip(decoded, targets):
        order = d["labels"].argsort()
        assert torch.equal(d["labels"][order], target["labels"].sort().values)
        assert torch.allclose(d["boxes"][order], target["boxes"][target["labels"].argsort()])
    assert detection_map(decoded, targets)["map50"] == pytest.approx(100.0)


def test_focal_loss_by_hand():
    heatmap = torch.tensor([1.0, 0.5, 0.0])
    # logit 0 -> p = 1/2 everywhere: centre (1 - p)^2 log 2; neighbour (1 - 0.5)^4 p^2 log 2; far p^2 log 2
    expected = 0.25 * math.log(2) + 0.0625 * 0.25 * math.log(2) + 0.25 * math.log(2)
    assert focal_loss(torch.zeros(3), heatmap).item() == pytest.approx(expected)
    assert focal_loss(torch.tensor([20.0, -20.0, -20.0]), heatmap).item() == pytest.approx(0.0, abs=1e-6)


def test_flip_target_mirrors_boxes():
    t = flip_target({"boxes": boxes([2, 3, 10, 7]), "labels": torch.tensor([1])}, width=32)
    assert t["boxes"].tolist() == [[22, 3, 30, 7]]


# --------------------------------------------------------------------------- the heads
def test_models_shapes_frozen_encoder_and_untouched_input():
    encoder = resnet(18, "cifar", width=4)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    det = detection_model(encoder, num_classes=10, hidden=8)
    seg = segmentation_model(encoder, num_classes=10, hidden=8, frozen=True)
    x = torch.randn(2, 3, 64, 64)
    assert det(x).shape == (2, 14, 16, 16) and seg(x).shape == (2, 11, 16, 16)
    assert output_stride(det, 64) == 4.0
    assert det.out.bias[:10].tolist() == pytest.approx([-math.log(9)] * 10)  # prior 0.1 on the heatmap
    seg.train()
    assert not seg.encoder.training and seg.fuse.training  # a frozen encoder stays in eval mode
    assert not any(p.requires_grad for p in seg.encoder.parameters())
    seg(x).sum().backward()
    assert all(p.grad is None for p in seg.encoder.parameters()) and seg.out.weight.grad is not None
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # copied, not changed


def test_scene_batches_are_a_fixed_shuffle_per_epoch():
    batches = scene_batches(list(range(10)), batch_size=4, seed=1)
    first = batches(0)
    assert [len(i) for i, _ in first] == [4, 4, 2]
    assert sorted(torch.cat([i for i, _ in first]).tolist()) == list(range(10))
    assert all(torch.equal(a, b) and torch.equal(f, g) for (a, f), (b, g) in zip(first, batches(0)))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(first, batches(1)))


# --------------------------------------------------------------------------- one arm of the comparison
COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)


@pytest.fixture(scope="module")
def colour_scenes():
    """Pure-colour squares on colour noise: a task a tiny network learns in seconds."""
    images, labels = COLOURS[:, :, None, None].expand(-1, -1, 8, 8).contiguous(), torch.arange(4)
    kw = dict(canvas=32, grid=2, objects=(1, 3), size=(10, 16), background="noise", classes=list("rgby"))
    return make_scenes(images, labels, n=256, seed=0, **kw), make_scenes(images, labels, n=64, seed=1, **kw)


@pytest.mark.parametrize("task, metric, floor", [("detection", "map50", 50.0), ("segmentation", "miou", 25.0)])
def test_transfer_arm_learns_a_toy_task(colour_scenes, task, metric, floor):
    train, test = colour_scenes
    encoder = resnet(18, "cifar", width=4)
    r = transfer_arm(encoder, task, train, test, epochs=8, batch_size=32, lr=0.1, hidden=16, seed=0)
    assert r["metric"] == metric and r["value"] == r["scores"][metric] and r["value"] > floor
    assert (r["epochs"], r["steps"], r["train_scenes"], r["fraction"], r["frozen"]) == (8, 64, 256, 1.0, False)
    assert r["losses"][-1] < r["losses"][0] and r["minutes"] > 0


def test_transfer_arm_fraction_steps_frozen_and_determinism(colour_scenes):
    train, test = colour_scenes
    encoder = resnet(18, "cifar", width=4)
    kw = dict(frozen=True, fraction=0.25, steps=5, batch_size=32, lr=0.05, hidden=8, seed=3)
    a = transfer_arm(encoder, "segmentation", train, test, **kw)
    b = transfer_arm(encoder, "segmentation", train, test, **kw)
    assert a["train_scenes"] == 64 and a["steps"] == 5 and a["epochs"] == 3  # 2 steps per epoch of 64 scenes
    assert a["value"] == b["value"] and a["losses"] == b["losses"]
    masks = predict(a["model"], test, "segmentation")
    assert masks.shape == (64, 32, 32) and masks.dtype == torch.uint8 and int(masks.max()) <= 4
    with pytest.raises(ValueError, match="task must be one of detection, segmentation, got 'depth'"):
        transfer_arm(encoder, "depth", train, test)


def test_transfer_arm_encoder_lr_scale(colour_scenes):
    """The encoder's own peak lr: 0 leaves its weights as pre-trained (its BatchNorm statistics still
    follow the scenes), 1 trains it with the head; a negative factor is refused in one line."""
    train, test = colour_scenes
    encoder = resnet(18, "cifar", width=4)
    kw = dict(steps=3, batch_size=32, lr=0.1, hidden=8, seed=0)
    still = transfer_arm(encoder, "segmentation", train, test, encoder_lr_scale=0.0, **kw)["model"]
    moved = transfer_arm(encoder, "segmentation", train, test, **kw)["model"]
    assert torch.equal(still.encoder.conv1.weight, encoder.conv1.weight)
    assert not torch.equal(moved.encoder.conv1.weight, encoder.conv1.weight)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the arm builds its head from its seed, so this is the head before training
        initial = segmentation_model(encoder, train.num_classes, hidden=8)
    assert not torch.equal(still.out.weight, initial.out.weight)  # the head trains either way
    with pytest.raises(ValueError, match="encoder_lr_scale must be >= 0"):
        transfer_arm(encoder, "segmentation", train, test, encoder_lr_scale=-1.0, **kw)


def test_show_scene_predictions_draws_truth_and_predictions(colour_scenes):
    _, test = colour_scenes
    model = detection_model(resnet(18, "cifar", width=4), num_classes=4, hidden=8)
    detections = predict(model, test, "detection")
    fig = show_scene_predictions(test, [0, 1, 2], detections=detections, masks=test.masks)
    assert len(fig.axes) == 3 * 4  # columns: scenes; rows: truth boxes, truth mask, predicted boxes, predicted mask
    fig = show_scene_predictions(test, [0, 1])
    assert len(fig.axes) == 2 * 2


# --------------------------------------------------------------------------- full-scale configs
def test_segmentation_voc_config_is_mocos_fcn_protocol():
    cfg = load_segmentation_config("segmentation/voc")
    assert asdict(cfg) == asdict(SegmentationConfig())  # the file writes out the defaults, nothing else
    assert "He et al" in cfg.paper and (cfg.year, cfg.train_set, cfg.val_set) == ("2012", "train_aug", "val")
    assert (cfg.num_classes, cfg.ignore_index, cfg.encoder, cfg.last_stage_dilation) == (21, 255, "resnet50", 2)
    assert (cfg.head_channels, cfg.head_convs, cfg.head_dilation, cfg.crop_size) == (256, 2, 6, 513)
    assert (cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.max_iter) == (16, 0.003, 1e-4, 30000)
    assert cfg.steps == (21000, 27000) and cfg.scale_range == (0.5, 2.0)  # x0.1 at 70% and 90%
    assert load_segmentation_config("voc", ["root=/data", "max_iter=10"]).max_iter == 10
    with pytest.raises(ConfigError, match="unknown config key 'max_iters'"):
        load_segmentation_config(None, ["max_iters=3"])
    with pytest.raises(ConfigError, match="must be int"):
        load_segmentation_config(None, ["crop_size=big"])
    with pytest.raises(ConfigError, match="shipped segmentation configs: segmentation/voc"):
        load_segmentation_config("segmentation/cityscapes")


def test_one_detection_step_on_a_tiny_voc_folder(tmp_path):
    """MoCo's VOC detection path end to end on a generated VOCdevkit folder (two images)."""
    from PIL import Image

    from sslbook.detection import train_detector
    from sslbook.voc import VOCDataset, build_detector, load_detection_config

    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name, cls in (("000001", "dog"), ("000002", "cat")):
        pixels = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{name}.jpg")
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>64</width><height>48</height><depth>3</depth>"
            f"</size><object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin>"
            f"<xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>"
        )
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    data = VOCDataset(tmp_path, "2007", "trainval")
    image, target = data[1]
    assert image.shape == (3, 48, 64) and target["boxes"].tolist() == [[4.0, 5.0, 40.0, 30.0]]
    cfg = load_detection_config(
        "detection/voc",
        [
            "encoder=resnet18",
            "width=4",
            "min_size_train=[48]",
            "max_size=64",
            "batch_size=2",
            "max_iter=1",
            "steps=[1]",
        ],
    )
    model = build_detector(cfg)
    history = train_detector(model, data, **cfg.train_kwargs())["history"]
    assert len(history) == 1 and math.isfinite(history[0]["loss"])

"""Detection: the pasted-objects data, our AP50, the Faster R-CNN on our ResNet, and MoCo's VOC config."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from conftest import tiny_dataset  # noqa: E402
from sslbook.config import ConfigError  # noqa: E402
from sslbook.detection import (  # noqa: E402
    BACKGROUND,
    average_precision,
    evaluate_detector,
    fasterrcnn_from_encoder,
    freeze_batchnorm,
    hflip_with_boxes,
    mean_average_precision,
    multistep_lr_factor,
    pasted_objects_dataset,
    predict_detections,
    show_detections,
    train_detector,
)
from sslbook.models import resnet  # noqa: E402
from sslbook.voc import VOC_CLASSES, DetectionConfig, build_detector, load_detection_config, voc_target  # noqa: E402

torch.set_num_threads(1)


def target(boxes, labels, difficult=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult)
    return t


def pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


# --------------------------------------------------------------------------- AP50 by hand
def test_map_perfect_predictions_is_one():
    targets = [target([[0, 0, 10, 10], [20, 20, 40, 30]], [1, 2]), target([[5, 5, 15, 25]], [1])]
    predictions = [pred(t["boxes"].tolist(), [0.9] * len(t["labels"]), t["labels"].tolist()) for t in targets]
    out = mean_average_precision(predictions, targets)
    assert out["map"] == pytest.approx(1.0) and out["ap"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    assert mean_average_precision(predictions, targets, use_07_metric=True)["map"] == pytest.approx(1.0)


def test_map_a_shifted_box_below_iou_half_scores_zero():
    targets = [target([[0, 0, 10, 10]], [1])]
    # shifted by 4 px: intersection 6x10 = 60, union 140 -> IoU 0.43 < 0.5
    assert mean_average_precision([pred([[4, 0, 14, 10]], [0.9], [1])], targets)["map"] == 0.0
    # shifted by 2 px: intersection 80, union 120 -> IoU 0.67 > 0.5
    assert mean_average_precision([pred([[2, 0, 12, 10]], [0.9], [1])], targets)["map"] == pytest.approx(1.0)
    # the right box with the wrong class is no match either
    assert mean_average_precision([pred([[0, 0, 10, 10]], [0.9], [2])], targets)["map"] == 0.0


def test_map_two_classes_one_found():
    targets = [target([[0, 0, 10, 10], [30, 30, 50, 50]], [1, 2])]
    predictions = [pred([[0, 0, 10, 10], [0, 30, 20, 50]], [0.8, 0.9], [1, 2])]  # class 2's box is elsewhere
    out = mean_average_precision(predictions, targets)
    assert out["ap"] == {1: pytest.approx(1.0), 2: 0.0} and out["map"] == pytest.approx(0.5)


def test_map_ranking_duplicates_and_the_11_point_rule():
    targets = [target([[0, 0, 10, 10]], [1]), target([[0, 0, 10, 10]], [1])]
    # image 0: a true positive (0.9) and a duplicate of it (0.8: a false positive); image 1: found at 0.7.
    predictions = [pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1]), pred([[0, 0, 10, 10]], [0.7], [1])]
    # ranked: TP, FP, TP -> recall 0.5, 0.5, 1; precision 1, 1/2, 2/3
    # all-point: envelope 1 up to recall 0.5, then 2/3 -> 0.5 * 1 + 0.5 * 2/3
    assert mean_average_precision(predictions, targets)["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # 11-point: t = 0..0.5 (6 points) -> 1, t = 0.6..1 (5 points) -> 2/3
    voc07 = mean_average_precision(predictions, targets, use_07_metric=True)
    assert voc07["map"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    # a false positive ranked first: precision 0, 1/2 at recall 0, 1/2 ...
    fp_first = [pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.5], [1, 1]), pred([], [], [])]
    assert mean_average_precision(fp_first, targets[:1] + [target([], [])])["map"] == pytest.approx(0.5)


def test_map_difficult_boxes_are_ignored():
    targets = [target([[0, 0, 10, 10], [20, 0, 30, 10]], [1, 1], difficult=[False, True])]
    found_both = [pred([[0, 0, 10, 10], [20, 0, 30, 10]], [0.9, 0.95], [1, 1])]
    found_easy = [pred([[0, 0, 10, 10]], [0.9], [1])]
    assert mean_average_precision(found_both, targets)["map"] == pytest.approx(1.0)  # the difficult hit is no FP
    assert mean_average_precision(found_easy, targets)["map"] == pytest.approx(1.0)  # nor is missing it a miss


def test_average_precision_curve_by_hand():
    recall, precision = torch.tensor([0.25, 0.5, 0.5, 1.0]), torch.tensor([1.0, 1.0, 2 / 3, 0.8])
    # envelope: 1 until recall 0.5, then 0.8 -> 0.5 * 1 + 0.5 * 0.8
    assert average_precision(recall, precision) == pytest.approx(0.9)
    assert average_precision(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 0.8) / 11)


# --------------------------------------------------------------------------- the pasted-objects data
def coloured_set(n_classes=4, side=8):
    """One flat colour per class: a pasted square's colour says which class it is."""
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)[:n_classes]
    images = colours[:, :, None, None].expand(-1, -1, side, side).repeat(3, 1, 1, 1).contiguous()
    labels = torch.arange(n_classes).repeat(3)
    return images, labels, colours


@pytest.mark.parametrize("background", ["blur", "noise"])
def test_pasted_objects_boxes_hold_their_objects(background):
    images, labels, colours = coloured_set()
    ds = pasted_objects_dataset(
        images,
        labels,
        n=10,
        canvas=48,
        objects=(1, 3),
        size=(0.25, 0.4),
        background=background,
        classes=["r", "g", "b", "y"],
        seed=3,
    )
    assert ds.images.shape == (10, 3, 48, 48) and ds.images.dtype == torch.uint8
    assert ds.classes == [BACKGROUND, "r", "g", "b", "y"] and ds.num_classes == 4
    counts = [len(t["labels"]) for t in ds.targets]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    for i, t in enumerate(ds.targets):
        boxes = t["boxes"]
        assert t["labels"].dtype == torch.int64 and boxes.dtype == torch.float32
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        assert torch.equal(sides[:, 0], sides[:, 1]) and (sides[:, 0] >= 12).all() and (sides[:, 0] <= 19).all()
        for a in range(len(boxes)):  # no two objects overlap
            for b in range(a + 1, len(boxes)):
                x1, y1 = torch.maximum(boxes[a, :2], boxes[b, :2])
                x2, y2 = torch.minimum(boxes[a, 2:], boxes[b, 2:])
                assert x2 <= x1 or y2 <= y1
        for box, label in zip(boxes.long(), t["labels"]):
            x1, y1, x2, y2 = box.tolist()
            region = ds.images[i, :, y1:y2, x1:x2].float()
            expected = colours[label - 1].float().view(3, 1, 1)
            assert (region - expected).abs().max() <= 1, "the box must hold exactly the pasted object"
    image, tgt = ds[0]
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    tgt["boxes"] += 1  # a copy: the dataset is unchanged
    assert not torch.equal(tgt["boxes"], ds.targets[0]["boxes"])
    again = pasted_objects_dataset(
        images, labels, n=10, canvas=48, objects=(1, 3), size=(0.25, 0.4), background=background, seed=3
    )
    assert torch.equal(again.images, ds.images)


def test_pasted_objects_from_a_dataset_and_exact_counts():
    src = tiny_dataset(16, 16, classes=4)
    ds = pasted_objects_dataset(src, n=4, canvas=64, objects=2, seed=0)
    assert ds.classes[1:] == src.classes and all(len(t["labels"]) == 2 for t in ds.targets)
    assert all(1 <= int(c) <= 4 for t in ds.targets for c in t["labels"])
    with pytest.raises(ValueError, match="background"):
        pasted_objects_dataset(src, n=1, background="sky")


def test_hflip_moves_boxes_with_the_image():
    image = torch.zeros(3, 10, 20)
    image[:, 2:5, 1:4] = 1
    flipped, t = hflip_with_boxes(image, {"boxes": torch.tensor([[1.0, 2.0, 4.0, 5.0]]), "labels": torch.tensor([1])})
    assert t["boxes"].tolist() == [[16.0, 2.0, 19.0, 5.0]]
    assert flipped[:, 2:5, 16:19].min() == 1 and flipped.sum() == image.sum()


def test_lr_schedule_warmup_and_steps():
    # detectron2's WarmupMultiStepLR: 100 warm-up steps from 0.001, x0.1 at 18k and 22k of 24k
    m = (18000 / 24000, 22000 / 24000)
    assert multistep_lr_factor(0, 24000, 100, 0.001, m) == pytest.approx(0.001)
    assert multistep_lr_factor(50, 24000, 100, 0.001, m) == pytest.approx(0.001 * 0.5 + 0.5)
    assert multistep_lr_factor(100, 24000, 100, 0.001, m) == 1.0
    assert multistep_lr_factor(17999, 24000, 100, 0.001, m) == 1.0
    assert multistep_lr_factor(18000, 24000, 100, 0.001, m) == pytest.approx(0.1)
    assert multistep_lr_factor(22000, 24000, 100, 0.001, m) == pytest.approx(0.01)


# --------------------------------------------------------------------------- the detector
@pytest.fixture(scope="module")
def tiny_detection_set():
    return pasted_objects_dataset(tiny_dataset(32, 16, classes=4), n=4, canvas=48, objects=(1, 2), seed=0)


@pytest.mark.parametrize("kind", ["c4", "fpn"])
def test_fasterrcnn_from_encoder_trains_end_to_end(kind, tiny_detection_set):
    torch.manual_seed(0)
    enc = resnet(18, "cifar", width=4)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    model = fasterrcnn_from_encoder(
        enc, num_classes=4, min_size=48, kind=kind, roi_size=7, fpn_channels=8, extra_norm=True
    )
    assert model.roi_heads.box_predictor.cls_score.out_features == 5  # + background
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    out = train_detector(model, tiny_detection_set, steps=2, batch_size=2, lr=0.01)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert len(out["history"]) == 2 and not model.training
    record = out["history"][-1]
    assert {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr"} <= set(record)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in out["history"])
    changed = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any("layer1" in k for k in changed) and any("rpn" in k for k in changed)  # all layers train
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in state.items())  # the encoder was copied

    model.train()
    result = evaluate_detector(model, tiny_detection_set)
    assert model.training  # flags restored
    assert 0 <= result["map50"] <= 100 and set(result["ap50"]) <= set(tiny_detection_set.classes[1:])
    preds = predict_detections(model, tiny_detection_set, min_size=64)
    assert len(preds) == 4 and set(preds[0]) == {"boxes", "scores", "labels"} and model.transform.min_size == (48,)
    assert (preds[0]["boxes"] <= 48 + 1e-4).all()  # boxes come back in the original image's pixels
    fig = show_detections(tiny_detection_set, predictions=preds, score_threshold=0.0)
    assert len(fig.axes) == 4


def test_train_detector_stops_at_the_time_budget(tiny_detection_set):
    model = fasterrcnn_from_encoder(resnet(18, "cifar", width=4), num_classes=4, min_size=48, roi_size=7)
    out = train_detector(model, tiny_detection_set, steps=50, batch_size=2, max_minutes=1e-9)
    assert len(out["history"]) == 1


def test_freeze_batchnorm_keeps_the_function():
    from torchvision.ops.misc import FrozenBatchNorm2d

    enc = resnet(18, "cifar", width=4)
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = enc.eval()(x)
    frozen = freeze_batchnorm(enc).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    torch.testing.assert_close(frozen(x), expected)  # in train mode too: the statistics are fixed


# --------------------------------------------------------------------------- MoCo's VOC config
def test_voc_config_is_mocos_protocol():
    cfg = DetectionConfig()
    assert "He et al" in cfg.paper
    assert (cfg.encoder, cfg.stem, cfg.kind, cfg.num_classes) == ("resnet50", "imagenet", "c4", 20)
    assert cfg.train_sets == [["2007", "trainval"], ["2012", "trainval"]] and cfg.test_set == ["2007", "test"]
    assert cfg.min_size_train == tuple(range(480, 801, 32)) and cfg.min_size_test == 800
    assert (cfg.max_iter, cfg.steps, cfg.warmup_iters, cfg.batch_size, cfg.lr) == (24000, (18000, 22000), 100, 16, 0.02)
    kw = cfg.train_kwargs()
    assert kw["steps"] == 24000 and kw["milestones"] == pytest.approx((0.75, 22 / 24))
    model = build_detector(cfg)  # full size: a ResNet-50 C4 Faster R-CNN (built, not run)
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert model.backbone.out_channels == 1024 and model.transform.min_size == cfg.min_size_train


def test_load_detection_config_overrides_and_tiny_build(tmp_path, tiny_detection_set):
    path = tmp_path / "tiny.yaml"
    path.write_text("encoder: resnet18\nwidth: 4\nstem: cifar\nnum_classes: 4\n")
    cfg = load_detection_config(
        path,
        [
            "min_size_train=[48]",
            "min_size_test=48",
            "max_size=64",
            "roi_size=7",
            "anchor_sizes=[16,32,64]",
            "batch_size=2",
            "max_iter=2",
            "steps=[1]",
            "lr=0.01",
            "extra_norm=false",
        ],
    )
    assert cfg.min_size_train == (48,) and cfg.steps == (1,) and cfg.width == 4 and cfg.extra_norm is False
    model = build_detector(cfg, resnet(18, "cifar", width=4))
    out = train_detector(model, tiny_detection_set, **cfg.train_kwargs())
    assert [h["lr"] for h in out["history"]] == pytest.approx([0.01, 0.001])  # x0.1 from step 1 on
    assert (
        0
        <= evaluate_detector(model, tiny_detection_set, min_size=cfg.min_size_test, use_07_metric=cfg.use_07_metric)[
            "map50"
        ]
        <= 100
    )
    with pytest.raises(ConfigError, match="unknown config key 'max_iters'"):
        load_detection_config(None, ["max_iters=3"])
    with pytest.raises(ConfigError, match="must be int"):
        load_detection_config(None, ["max_iter=fast"])
    with pytest.raises(ConfigError, match="c4 or fpn"):
        load_detection_config(None, ["kind=c5"])


def test_voc_target_from_a_parsed_annotation():
    from torchvision.datasets import VOCDetection

    xml = """<annotation><filename>000005.jpg</filename><size><width>500</width><height>375</height></size>
      <object><name>chair</name><difficult>0</difficult><bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox></object>
      <object><name>dog</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
    </annotation>"""
    t = voc_target(VOCDetection.parse_voc_xml(ET.fromstring(xml)))
    assert t["boxes"].tolist() == [[262.0, 210.0, 324.0, 339.0], [0.0, 1.0, 10.0, 20.0]]
    assert t["labels"].tolist() == [VOC_CLASSES.index("chair") + 1, VOC_CLASSES.index("dog") + 1]
    assert t["difficult"].tolist() == [False, True]
    one = xml.replace(xml[xml.index("<object><name>dog") : xml.index("</annotation>")], "")
    assert voc_target(VOCDetection.parse_voc_xml(ET.fromstring(one)))["labels"].tolist() == [9]


def test_shipped_voc_yaml_is_the_dataclass_recipe():
    from dataclasses import asdict

    from sslbook.voc import detection_config_path

    shipped = load_detection_config("detection/voc")
    assert asdict(shipped) == asdict(DetectionConfig())  # the file writes out the defaults, nothing else
    assert detection_config_path("voc") == detection_config_path("detection/voc")
    cfg = load_detection_config("detection/voc", ["root=/data", "max_iter=100"])
    assert cfg.root == "/data" and cfg.max_iter == 100
    assert cfg.train_sets == [["2007", "trainval"], ["2012", "trainval"]]
    with pytest.raises(ConfigError, match="shipped detection configs: detection/voc"):
        load_detection_config("detection/coco")

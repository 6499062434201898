"""The synthetic scenes: deterministic, and their boxes and masks are exactly the pasted pixels."""

from __future__ import annotations

import pytest
import torch

from sslbook.detection import BACKGROUND
from sslbook.scenes import SceneDataset, class_mixed_indices, make_scenes, resize_object

torch.set_num_threads(1)

COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)


def flat_objects(side=8):
    """One pure colour per class (two images each): a pasted object's colour says its class."""
    images = COLOURS[:, :, None, None].expand(-1, -1, side, side).repeat(2, 1, 1, 1).contiguous()
    return images, torch.arange(4).repeat(2)


def textured_objects(n=12, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g), torch.arange(n) % 4


def test_same_seed_same_scenes_other_seed_other_scenes():
    images, labels = textured_objects()
    a, b = (make_scenes(images, labels, n=20, canvas=48, grid=2, size=(12, 24), seed=5) for _ in range(2))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert all(
        torch.equal(s["boxes"], t["boxes"]) and torch.equal(s["labels"], t["labels"])
        for s, t in zip(a.targets, b.targets)
    )
    c = make_scenes(images, labels, n=20, canvas=48, grid=2, size=(12, 24), seed=6)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("background", ["blur", "noise", "mixed"])
def test_boxes_and_masks_are_exactly_the_pasted_pixels(background):
    images, labels = textured_objects()
    ds = make_scenes(
        images,
        labels,
        n=30,
        canvas=48,
        grid=3,
        objects=(1, 4),
        size=(6, 16),
        background=background,
        classes=["a", "b", "c", "d"],
        seed=1,
    )
    assert isinstance(ds, SceneDataset) and ds.classes == [BACKGROUND, "a", "b", "c", "d"] and ds.num_classes == 4
    assert ds.images.shape == (30, 3, 48, 48) and ds.images.dtype == torch.uint8
    assert ds.masks.shape == (30, 48, 48) and ds.masks.dtype == torch.uint8
    counts = [len(t["labels"]) for t in ds.targets]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    for image, mask, t in zip(ds.images, ds.masks, ds.targets):
        expected = torch.zeros(48, 48, dtype=torch.uint8)
        for box, label, source in zip(t["boxes"].long().tolist(), t["labels"].tolist(), t["sources"].tolist()):
            x1, y1, x2, y2 = box
            side = x2 - x1
            assert y2 - y1 == side and 6 <= side <= 16 and 0 <= x1 and x2 <= 48 and 0 <= y1 and y2 <= 48
            assert x1 // 16 == (x2 - 1) // 16 and y1 // 16 == (y2 - 1) // 16  # inside one grid cell
            assert label == int(labels[source]) + 1
            pasted = (resize_object(images[source], side) * 255).round().to(torch.uint8)
            assert torch.equal(image[:, y1:y2, x1:x2], pasted)  # the box holds exactly the object
            assert (expected[y1:y2, x1:x2] == 0).all()  # objects never overlap
            expected[y1:y2, x1:x2] = label
        assert torch.equal(mask, expected)  # the mask is the boxes, filled with their labels, 0 elsewhere


def test_mask_marks_exactly_the_object_coloured_pixels():
    # Pure-colour objects on smooth noise (which never hits an exact pure colour): a pixel has an
    # object's colour if and only if the mask says that object's class is there.
    images, labels = flat_objects()
    ds = make_scenes(images, labels, n=25, canvas=32, grid=2, objects=(1, 4), size=(4, 16), background="noise", seed=2)
    pixels = ds.images.permute(0, 2, 3, 1)  # [N, H, W, 3]
    for c, colour in enumerate(COLOURS):
        assert torch.equal((pixels == colour).all(-1), ds.masks == c + 1)


def test_fraction_subset_and_class_mixed_picks():
    images, labels = textured_objects()
    ds = make_scenes(images, labels, n=40, canvas=32, grid=2, size=(8, 16), seed=0)
    tenth = ds.fraction(0.1, seed=3)
    assert len(tenth) == 4 and torch.equal(tenth.fraction(1.0).images, tenth.images)
    assert tenth.targets[0] is ds.targets[[i for i in range(40) if torch.equal(ds.images[i], tenth.images[0])][0]]
    assert torch.equal(ds.fraction(0.1, seed=3).images, tenth.images)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        ds.fraction(0)
    picks = class_mixed_indices(ds, n=6, seed=0)
    assert len(picks) == len(set(picks)) == 6
    assert {int(ds.targets[i]["labels"][0]) for i in picks[:4]} == {1, 2, 3, 4}  # one scene per class first
    assert class_mixed_indices(ds, n=6, seed=0) == picks


def test_bad_arguments_say_what_to_fix():
    images, labels = textured_objects()
    with pytest.raises(ValueError, match="objects must be between 1 and grid \\*\\* 2 = 4, got \\(1, 5\\)"):
        make_scenes(images, labels, n=2, canvas=32, grid=2, objects=(1, 5), size=(8, 16))
    with pytest.raises(ValueError, match="size must be between 1 and the cell side canvas // grid = 16 px"):
        make_scenes(images, labels, n=2, canvas=32, grid=2, size=(8, 20))
    with pytest.raises(ValueError, match="background must be one of blur, noise, mixed, got 'plain'"):
        make_scenes(images, labels, n=2, canvas=32, size=(8, 16), background="plain")
    with pytest.raises(ValueError, match="pass labels"):
        make_scenes(images, n=2)

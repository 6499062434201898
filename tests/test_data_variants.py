"""The data-set variants of the pretext chapter's experiments: rotated and tinted copies."""

import torch

from sslbook.data import TINTS, ImageTensorDataset, channel_stats, rotated_copy, tinted_copy


def dataset(n=40, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    return ImageTensorDataset(images, torch.arange(n) % 10, [str(c) for c in range(10)], "toy")


def test_rotated_copy_turns_each_image_by_a_quarter_multiple_and_keeps_labels():
    ds = dataset()
    rot = rotated_copy(ds, seed=3)
    assert torch.equal(rot.labels, ds.labels) and rot.images.shape == ds.images.shape
    turns = []
    for original, turned in zip(ds.images, rot.images):
        matches = [k for k in range(4) if torch.equal(torch.rot90(original, k, dims=(1, 2)), turned)]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}  # all four occur in 40 images
    assert torch.equal(rotated_copy(ds, seed=3).images, rot.images)  # deterministic
    assert not torch.equal(rotated_copy(ds, seed=4).images, rot.images)


def test_tinted_copy_labels_are_the_tints_and_content_is_the_grayscale_image():
    ds = dataset()
    tinted = tinted_copy(ds, seed=1)
    assert tinted.classes == list(TINTS) and tinted.labels.max() < len(TINTS)
    gray = 0.299 * ds.images[:, 0].float() + 0.587 * ds.images[:, 1].float() + 0.114 * ds.images[:, 2].float()
    colours = torch.tensor(list(TINTS.values()))
    for i in range(len(ds)):
        expected = (gray[i] * colours[tinted.labels[i]][:, None, None]).round().clamp(0, 255)
        assert torch.equal(tinted.images[i].float(), expected)
    # the channel ratios of a tinted pixel identify the tint (colour decides the class)
    assert torch.equal(tinted_copy(ds, seed=1).labels, tinted.labels)


def test_channel_stats_match_a_direct_computation():
    ds = dataset()
    mean, std = channel_stats(ds.images)
    x = ds.images.float() / 255
    assert torch.allclose(torch.tensor(mean), x.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(torch.tensor(std), x.transpose(0, 1).reshape(3, -1).std(1), atol=1e-6)

"""Tests for sslbook.eval: kNN against a brute-force loop, linear probe, retrieval, label subsets,
fine-tuning. Tiny data only: the whole file runs in seconds on two CPU cores."""

import math

import pytest
import torch
from torch import nn

from sslbook.data import ImageTensorDataset
from sslbook.eval import (
    confusion_matrix,
    extract_features,
    fine_tune,
    knn_accuracy,
    knn_predict,
    linear_probe,
    pixel_features,
    retrieval_precision,
    retrieve,
    semi_supervised_subset,
    supervised_baseline,
)
from sslbook.models import resnet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def blobs(n_per_class, num_classes, dim, spread=0.1, seed=0):
    """Gaussian blobs around random unit centres: well separated for small ``spread``."""
    g = gen(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1) * 5
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return x, labels


# --------------------------------------------------------------------------- kNN
def brute_force_knn(train_x, train_y, test_x, num_classes, k, temperature):
    """Weighted kNN written out with Python loops over test and training items."""
    k = min(k, len(train_x))
    scores = torch.zeros(len(test_x), num_classes, dtype=torch.float64)
    for i in range(len(test_x)):
        sims = []
        for j in range(len(train_x)):
            a, b = test_x[i].double(), train_x[j].double()
            sims.append((float(a @ b) / (float(a.norm()) * float(b.norm())), j))
        sims.sort(key=lambda t: -t[0])
        for s, j in sims[:k]:
            scores[i, int(train_y[j])] += math.exp(s / temperature)
    return scores


@pytest.mark.parametrize("k", [1, 5, 30, 1000])
def test_knn_predict_matches_brute_force(k):
    g = gen(1)
    train_x, test_x = torch.randn(40, 8, generator=g), torch.randn(13, 8, generator=g)
    train_y = torch.randint(0, 4, (40,), generator=g)
    expected = brute_force_knn(train_x, train_y, test_x, 4, k, 0.1)  # k=1000 > 40: clamped
    scores = knn_predict(train_x, train_y, test_x, num_classes=4, k=k, temperature=0.1)
    assert scores.shape == (13, 4)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-3)
    assert torch.equal(scores.argmax(1), expected.argmax(1))


def test_knn_predict_chunking_and_clamping():
    g = gen(2)
    train_x, test_x = torch.randn(30, 5, generator=g), torch.randn(17, 5, generator=g)
    train_y = torch.randint(0, 3, (30,), generator=g)
    whole = knn_predict(train_x, train_y, test_x, k=10, chunk_size=1024)
    chunked = knn_predict(train_x, train_y, test_x, k=10, chunk_size=4)  # 17 = 4 + 4 + 4 + 4 + 1
    torch.testing.assert_close(whole, chunked)
    # k beyond the training set counts every training item once: same as k = N.
    torch.testing.assert_close(
        knn_predict(train_x, train_y, test_x, k=500), knn_predict(train_x, train_y, test_x, k=30)
    )
    # num_classes defaults to max label + 1; int32 labels work too.
    assert knn_predict(train_x, train_y.int(), test_x, k=3).shape == (17, 3)


def test_knn_accuracy_separated_and_random():
    x, y = blobs(30, 5, 16, spread=0.1, seed=3)
    x_test, y_test = blobs(10, 5, 16, spread=0.1, seed=3)  # same centres (same seed) ...
    x_test = x_test + 0.1 * torch.randn(x_test.shape, generator=gen(4))  # ... and fresh noise
    assert knn_accuracy(x, y, x_test, y_test, k=20) == 100.0

    g = gen(5)
    train_x, test_x = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    train_y, test_y = torch.randint(0, 4, (600,), generator=g), torch.randint(0, 4, (600,), generator=g)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=20)
    assert 15.0 < acc < 35.0  # chance is 25%


# --------------------------------------------------------------------------- features
def test_pixel_features_center_with_training_mean():
    train = torch.tensor([[0, 255], [255, 255]], dtype=torch.uint8).view(2, 1, 1, 2).expand(2, 3, 1, 2).contiguous()
    test = torch.full((1, 3, 1, 2), 51, dtype=torch.uint8)
    tr, te = pixel_features(train, test, center=True)
    # training mean image, per pixel: (0 + 1) / 2 = 0.5 and (1 + 1) / 2 = 1.0 (in all three channels)
    mean = torch.tensor([0.5, 1.0]).repeat(3)
    torch.testing.assert_close(tr, torch.stack([torch.tensor([0.0, 1.0]).repeat(3), torch.ones(6)]) - mean)
    torch.testing.assert_close(te, torch.full((1, 6), 0.2) - mean)  # the test set's own mean is not used
    tr_raw, te_raw = pixel_features(train, test, center=False)
    assert tr_raw.dtype == torch.float32 and tr_raw.shape == (2, 6)
    torch.testing.assert_close(te_raw, torch.full((1, 6), 0.2))


class Recorder(nn.Module):
    """Mean of each channel, plus a BatchNorm whose mode we can watch."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return x.double().mean((2, 3))  # double on purpose: the output must come back float32


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_extract_features_shape_dtype_mode(mode):
    enc = Recorder()
    enc.train(mode != "eval")
    if mode == "mixed":
        enc.bn.eval()  # a frozen submodule stays frozen
    images = torch.randint(0, 256, (10, 3, 4, 4), generator=gen(6), dtype=torch.uint8)
    feats = extract_features(enc, images, batch_size=4)  # 10 = 4 + 4 + 2
    assert feats.shape == (10, 3) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats, images.float().div(255).mean((2, 3)))
    assert enc.seen_training == [False, False, False]
    assert enc.training == (mode != "eval")
    assert enc.bn.training == (mode == "train")

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    normed = extract_features(enc, images, mean, std, batch_size=3)
    expected = (images.float().div(255).mean((2, 3)) - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(normed, expected)


def test_extract_features_restores_mode_on_error():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    enc = Boom().train()
    with pytest.raises(RuntimeError):
        extract_features(enc, torch.zeros(2, 3, 2, 2, dtype=torch.uint8))
    assert enc.training


# --------------------------------------------------------------------------- linear probe
def test_linear_probe_separable_and_deterministic():
    x, y = blobs(40, 4, 10, spread=0.5, seed=7)
    x_test, y_test = blobs(10, 4, 10, spread=0.5, seed=7)
    x_test = x_test + 0.3 * torch.randn(x_test.shape, generator=gen(8))
    state = torch.random.get_rng_state()
    a = linear_probe(x, y, x_test, y_test, epochs=10, batch_size=64, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    torch.manual_seed(123)  # ... and does not matter
    b = linear_probe(x, y, x_test, y_test, epochs=10, batch_size=64, seed=0)
    assert a["train_top1"] == 100.0 and a["test_top1"] == 100.0
    assert torch.equal(a["layer"].weight, b["layer"].weight) and torch.equal(a["layer"].bias, b["layer"].bias)
    c = linear_probe(x, y, x_test, y_test, epochs=10, batch_size=64, seed=1)
    assert not torch.equal(a["layer"].weight, c["layer"].weight)
    # The returned statistics reproduce the probe's predictions on new features.
    logits = a["layer"]((x_test - a["mean"]) / a["std"])
    assert (logits.argmax(1) == y_test).all()


# --------------------------------------------------------------------------- retrieval
def test_retrieve_matches_argsort():
    g = gen(9)
    query, gallery = torch.randn(6, 7, generator=g), torch.randn(20, 7, generator=g)
    sims, idx = retrieve(query, gallery, k=4)
    cos = torch.nn.functional.cosine_similarity(query[:, None], gallery[None], dim=2)
    expected = cos.argsort(dim=1, descending=True)[:, :4]
    assert torch.equal(idx, expected)
    torch.testing.assert_close(sims, cos.gather(1, expected))
    assert retrieve(query, gallery, k=50)[1].shape == (6, 20)  # k clamped to the gallery


def test_retrieval_precision_by_hand():
    gallery_labels = torch.tensor([0, 0, 1, 1, 2])
    query_labels = torch.tensor([0, 1])
    indices = torch.tensor([[0, 1, 2], [4, 2, 0]])  # query 0: 2 of 3 right, query 1: 1 of 3 right
    assert retrieval_precision(query_labels, gallery_labels, indices) == pytest.approx(100 * 3 / 6)


def test_confusion_matrix():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    expected = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 1, 2]])  # rows: true class
    assert torch.equal(confusion_matrix(pred, labels, 3), expected)
    assert torch.equal(confusion_matrix(pred, labels), expected)
    assert confusion_matrix(pred, labels, 4).shape == (4, 4)


# --------------------------------------------------------------------------- semi-supervised subset
def image_set(n_per_class, num_classes, size=4, seed=0):
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    images = torch.randint(0, 256, (len(labels), 3, size, size), generator=gen(seed), dtype=torch.uint8)
    return ImageTensorDataset(images, labels, [str(c) for c in range(num_classes)], "toy", (0.4,) * 3, (0.2,) * 3)


def test_semi_supervised_subset_counts_and_seed():
    full = image_set(50, 10)  # 500 images
    sub = semi_supervised_subset(full, 0.1, seed=0)
    assert len(sub) == 50
    assert torch.equal(torch.bincount(sub.labels, minlength=10), torch.full((10,), 5))
    assert sub.classes == full.classes and sub.mean == full.mean and sub.std == full.std
    # The images travel with their labels: every (image, label) pair is one of the full set's.
    rows = {(full.images[i].numpy().tobytes(), int(full.labels[i])) for i in range(len(full))}
    assert all((sub.images[i].numpy().tobytes(), int(sub.labels[i])) in rows for i in range(len(sub)))
    assert len({sub.images[i].numpy().tobytes() for i in range(len(sub))}) == 50  # no repeats

    again = semi_supervised_subset(full, 0.1, seed=0)
    assert torch.equal(again.images, sub.images) and torch.equal(again.labels, sub.labels)
    other = semi_supervised_subset(full, 0.1, seed=1)
    assert not torch.equal(other.images, sub.images)

    one_percent = semi_supervised_subset(image_set(100, 10), 0.01)
    assert torch.equal(torch.bincount(one_percent.labels, minlength=10), torch.ones(10, dtype=torch.long))
    with pytest.raises(ValueError):
        semi_supervised_subset(full, 0.01)  # 5 labels for 10 classes
    with pytest.raises(ValueError):
        semi_supervised_subset(full, 0.0)


# --------------------------------------------------------------------------- fine-tuning
def red_blue(n, seed, size=16):
    """Class 0: red images, class 1: blue ones, both with noise."""
    labels = torch.arange(n) % 2
    images = torch.randint(0, 100, (n, 3, size, size), generator=gen(seed), dtype=torch.uint8)
    images[labels == 0, 0] += 150
    images[labels == 1, 2] += 150
    return ImageTensorDataset(images, labels, ["red", "blue"], "red-blue", (0.4, 0.2, 0.4), (0.3, 0.2, 0.3))


def test_fine_tune_learns_and_leaves_encoder_alone():
    train, test = red_blue(64, 0), red_blue(32, 1)
    torch.manual_seed(0)
    encoder = resnet(18, "cifar", width=4).train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = fine_tune(encoder, train, test, epochs=3, batch_size=16, lr=0.05)
    assert result["test_top1"] >= 90.0 and result["train_top1"] >= 90.0
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    assert result["history"][-1]["lr"] < 0.01  # cosine decayed towards 0
    assert set(result) == {"train_top1", "test_top1", "history", "model"}
    # The caller's encoder: same weights, same BatchNorm statistics, same mode.
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert encoder.training
    assert result["model"].encoder is not encoder
    # The returned model classifies normalised images.
    mean, std = torch.tensor(train.mean).view(1, 3, 1, 1), torch.tensor(train.std).view(1, 3, 1, 1)
    x = (test.images.float() / 255 - mean) / std
    with torch.no_grad():
        acc = 100.0 * (result["model"](x).argmax(1) == test.labels).float().mean().item()
    assert acc == pytest.approx(result["test_top1"])


def test_fine_tune_deterministic_and_copy_false():
    train, test = red_blue(24, 2, size=8), red_blue(8, 3, size=8)
    encoder = resnet(18, "cifar", width=4)
    rng = torch.random.get_rng_state()
    a = fine_tune(encoder, train, test, epochs=2, batch_size=10, eval_every=1)  # 24 = 10 + 10 + 4
    assert torch.equal(torch.random.get_rng_state(), rng)  # seeded from `seed`, global RNG untouched
    torch.manual_seed(99)
    b = fine_tune(encoder, train, test, epochs=2, batch_size=10, eval_every=1)

    def without_time(history):
        return [{k: v for k, v in h.items() if k != "minutes"} for h in history]

    assert without_time(a["history"]) == without_time(b["history"])
    assert all("test_top1" in h for h in a["history"])
    assert torch.equal(a["model"].head.weight, b["model"].head.weight)

    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    c = fine_tune(encoder, train, test, epochs=5, batch_size=10, copy=False, augment=False, max_minutes=1e-6)
    assert c["model"].encoder is encoder
    assert not all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())
    assert len(c["history"]) == 1  # the time budget allowed a single epoch


def test_supervised_baseline_is_seeded_fine_tune():
    train, test = red_blue(16, 4, size=8), red_blue(8, 5, size=8)
    make = lambda: resnet(18, "cifar", width=4)  # noqa: E731
    a = supervised_baseline(make, train, test, epochs=1, batch_size=8)
    b = supervised_baseline(make, train, test, epochs=1, batch_size=8)
    assert a["history"][0]["loss"] == b["history"][0]["loss"]
    assert len(a["history"]) == 1


def test_extract_features_of_a_bound_method_evaluates_its_module_in_eval_mode():
    """The trainer's kNN monitor calls ``method.embed``: BatchNorm must use its running statistics."""
    enc = Recorder().train()
    images = torch.randint(0, 256, (6, 3, 4, 4), generator=gen(9), dtype=torch.uint8)
    feats = extract_features(enc.forward, images, batch_size=4)
    assert feats.shape == (6, 3) and enc.seen_training == [False, False]
    assert enc.training and enc.bn.training  # modes put back


def test_fit_epochs_to_budget_replans_after_the_first_epoch_only():
    from sslbook.eval import fit_epochs_to_budget

    assert fit_epochs_to_budget(30, 1, 0.5, None) == (30, False)  # no budget: nothing changes
    assert fit_epochs_to_budget(30, 1, 0.5, 2.0) == (4, False)  # 2 min at 0.5 min/epoch
    assert fit_epochs_to_budget(30, 1, 3.0, 2.0) == (1, True)  # the first epoch overran: stop after it
    assert fit_epochs_to_budget(4, 2, 1.0, 2.0) == (4, False)  # later epochs keep the plan
    assert fit_epochs_to_budget(4, 4, 2.1, 2.0) == (4, True)

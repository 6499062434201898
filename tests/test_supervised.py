"""The one supervised loop: sslbook.supervised.fit."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslbook.supervised import fit, fit_epochs_to_budget, fit_steps_to_budget


def separable(n: int = 64, seed: int = 0):
    """Two Gaussian blobs at (+2, +2) and (-2, -2): linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.5 + (2.0 - 4.0 * y[:, None].float())
    return x, y


def batches_of(x, y, batch_size: int):
    return lambda epoch: [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def cross_entropy(model, batch):
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def noisy_cross_entropy(model, batch):  # draws from the global RNG, as on-device augmentation does
    images, labels = batch
    return F.cross_entropy(model(images + 0.1 * torch.randn_like(images)), labels)


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


def test_fit_loss_decreases_on_a_separable_problem():
    x, y = separable()
    model = linear()
    out = fit(model, batches_of(x, y, 16), cross_entropy, epochs=5, lr=0.1)
    assert (out["epochs"], out["steps"]) == (5, 20) and len(out["losses"]) == 5
    assert out["losses"][-1] < out["losses"][0] / 2
    assert (model(x).argmax(1) == y).all()
    assert model.training and out["seconds"] > 0


def test_fit_is_deterministic_under_a_seed_and_leaves_the_global_rng_alone():
    x, y = separable()
    rng = torch.random.get_rng_state()
    a, b, c = linear(), linear(), linear()
    torch.random.set_rng_state(rng)
    fit(a, batches_of(x, y, 16), noisy_cross_entropy, epochs=2, lr=0.1, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng)
    fit(b, batches_of(x, y, 16), noisy_cross_entropy, epochs=2, lr=0.1, seed=3)
    fit(c, batches_of(x, y, 16), noisy_cross_entropy, epochs=2, lr=0.1, seed=4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)  # another seed, other noise
    fit(linear(), batches_of(x, y, 16), noisy_cross_entropy, epochs=1, lr=0.1, seed=None)
    assert not torch.equal(torch.random.get_rng_state(), rng)  # seed=None draws from the caller's stream


def test_fit_schedule_is_warmup_then_cosine_per_step():
    x, y = separable(n=8)
    records = []
    fit(
        linear(),
        batches_of(x, y, 4),
        cross_entropy,
        epochs=3,
        lr=0.1,
        warmup_epochs=1,
        log=records.append,
        log_every="step",
    )
    # 2 steps per epoch, 6 in all; warm-up over 2 steps, then cosine over the other 4
    expected = [0.05, 0.1, 0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.05 * (1 + math.cos(3 * math.pi / 4))]
    assert [r["lr"] for r in records] == pytest.approx(expected)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in records] == [1, 1, 2, 2, 3, 3]


def test_fit_param_groups_keep_their_own_peak_and_a_custom_schedule():
    x, y = separable(n=8)
    model = linear()
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 1.0, "weight_decay": 0.0}]
    seen = []

    def loss_fn(model, batch):
        return cross_entropy(model, batch)

    def log(record):
        seen.append(record["lr"])

    out = fit(
        model,
        batches_of(x, y, 4),
        loss_fn,
        epochs=2,
        lr=0.1,
        param_groups=groups,
        schedule=lambda step, total: 0.5**step,
        log=log,
        log_every="step",
    )
    assert seen == pytest.approx([0.1, 0.05, 0.025, 0.0125])  # the first group's lr
    assert out["steps"] == 4


def test_fit_averages_the_extra_scalars_of_a_dict_loss():
    x, y = separable(n=8)
    records = []

    def loss_fn(model, batch):
        logits = model(batch[0])
        return {"loss": F.cross_entropy(logits, batch[1]), "images": len(batch[1])}

    fit(linear(), batches_of(x, y, 5), loss_fn, epochs=1, lr=0.1, log=records.append)
    assert records[0]["images"] == pytest.approx(4.0)  # batches of 5 and 3
    assert set(records[0]) == {"epoch", "step", "loss", "images", "lr", "minutes"}


def test_fit_stops_on_a_non_finite_loss():
    x, y = separable(n=8)

    def nan_loss(model, batch):
        return cross_entropy(model, batch) * float("nan")

    message = r"the loss is nan at step 1 \(epoch 1, lr 0.1\); lower the learning rate"
    with pytest.raises(FloatingPointError, match=message):
        fit(linear(), batches_of(x, y, 4), nan_loss, epochs=2, lr=0.1)


def test_fit_rejects_bad_arguments_and_needs_a_length():
    x, y = separable(n=8)
    with pytest.raises(ValueError, match="precision must be one of"):
        fit(linear(), batches_of(x, y, 4), cross_entropy, epochs=1, lr=0.1, precision="fp8")
    generator = lambda epoch: ((x[i : i + 4], y[i : i + 4]) for i in range(0, 8, 4))  # noqa: E731
    with pytest.raises(TypeError, match=r"without len\(\); pass steps_per_epoch="):
        fit(linear(), generator, cross_entropy, epochs=1, lr=0.1)
    assert fit(linear(), generator, cross_entropy, epochs=1, lr=0.1, steps_per_epoch=2)["steps"] == 2


def test_fit_time_budget_in_epochs_and_in_steps():
    x, y = separable(n=8)
    out = fit(linear(), batches_of(x, y, 2), cross_entropy, epochs=5, lr=0.1, max_minutes=1e-9)
    assert (out["epochs"], out["steps"]) == (1, 4)  # planned in epochs: the first epoch runs whole
    out = fit(linear(), batches_of(x, y, 2), cross_entropy, epochs=5, lr=0.1, max_steps=7, max_minutes=1e-9)
    assert (out["epochs"], out["steps"]) == (1, 1)  # planned in steps: stops after the first one
    out = fit(linear(), batches_of(x, y, 2), cross_entropy, epochs=5, lr=0.1, max_steps=7)
    assert (out["epochs"], out["steps"]) == (2, 7)


def test_budget_helpers():
    assert fit_epochs_to_budget(30, 1, 0.5, 2.0) == (4, False)
    assert fit_steps_to_budget(1000, 0.6, 1.0) == 100  # 60 s at 0.6 s per step
    assert fit_steps_to_budget(50, 0.6, 1.0) == 50  # never more than planned
    assert fit_steps_to_budget(1000, 60.0, 0.01) == 4  # never fewer than the steps already run


def test_fit_in_bf16_autocast_still_learns():
    x, y = separable()
    model = linear()
    out = fit(model, batches_of(x, y, 16), cross_entropy, epochs=5, lr=0.1, precision="bf16")
    assert out["losses"][-1] < out["losses"][0] and model.weight.dtype == torch.float32

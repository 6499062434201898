"""The losses-and-training chapter's package code: SimCLR's annealed temperature (the seed notes'
tau0 / (1 + ln t)) and the same-class ("false negative") rate of the hardest in-batch negatives."""

import math

import pytest
import torch

from conftest import tiny_encoder
from sslbook.config import load_config
from sslbook.diagnostics import same_class_neighbour_rate
from sslbook.methods import build_method
from sslbook.methods.simclr import SimCLR
from sslbook.methods.simclr_annealed import AnnealedSimCLR, annealed_temperature
from sslbook.trainer import build_model


def test_annealed_temperature_values():
    assert annealed_temperature(0.5, 1) == pytest.approx(0.5)
    assert annealed_temperature(0.5, math.e) == pytest.approx(0.25)
    assert annealed_temperature(0.5, math.e**2) == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError, match="starts at 1"):
        annealed_temperature(0.5, 0)


def _views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)]


def test_log_schedule_cools_with_steps_and_constant_stays():
    log = AnnealedSimCLR(tiny_encoder(), temperature=0.5)
    const = SimCLR(tiny_encoder(), temperature=0.5)
    taus = []
    for _ in range(3):
        out = log(_views())
        taus.append(float(out["temperature"]))
        log.after_optimizer_step(0.0)
        const.after_optimizer_step(0.0)
    assert taus == pytest.approx([0.5, 0.5 / (1 + math.log(2)), 0.5 / (1 + math.log(3))])
    assert const.current_temperature() == 0.5 and "temperature" not in const(_views())
    assert "steps_done" not in const.state_dict()  # constant-temperature checkpoints are unchanged


def test_log_schedule_step_survives_a_checkpoint_round_trip():
    a = AnnealedSimCLR(tiny_encoder())
    for _ in range(5):
        a.after_optimizer_step(0.0)
    b = AnnealedSimCLR(tiny_encoder())
    b.load_state_dict(a.state_dict())
    assert int(b.steps_done) == 5 and b.current_temperature() == pytest.approx(annealed_temperature(0.5, 6))


def test_the_loss_uses_the_annealed_temperature():
    from sslbook.losses import nt_xent

    torch.manual_seed(0)
    m = AnnealedSimCLR(tiny_encoder(), temperature=0.5).eval()
    for _ in range(9):
        m.after_optimizer_step(0.0)
    views = _views()
    with torch.no_grad():
        z1, z2 = m.projector(m.backbone(torch.cat(views))).chunk(2)
        expected = nt_xent(z1, z2, annealed_temperature(0.5, 10))
        assert float(m(views)["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_unknown_schedule_is_one_line_error():
    with pytest.raises(ValueError, match="temperature_schedule must be one of constant, log, got 'cosine'"):
        build_method("simclr", tiny_encoder(), temperature_schedule="cosine")
    with pytest.raises(ValueError, match="temperature_schedule must be one of constant, log, got 'cosine'"):
        AnnealedSimCLR(tiny_encoder(), temperature_schedule="cosine")


def test_schedule_from_config_override():
    cfg = load_config("cifar10/simclr", ["profile=smoke", "model.width=4", "method_args.temperature_schedule=log"])
    assert build_model(cfg).temperature_schedule == "log"  # the older spelling builds the annealed subclass
    assert isinstance(build_model(cfg), AnnealedSimCLR)
    cfg = load_config("cifar10/simclr", ["profile=smoke", "model.width=4", "method=simclr_annealed"])
    assert type(build_model(cfg)) is AnnealedSimCLR
    cfg = load_config("cifar10/simclr", ["profile=smoke", "model.width=4", "method_args.temperature_schedule=constant"])
    assert type(build_model(cfg)) is SimCLR


def test_same_class_neighbour_rate_by_hand():
    # Two classes on two directions (plus a little noise): every nearest neighbour shares the class.
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    features = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4) + 0.01 * torch.arange(16.0).reshape(8, 2)
    r = same_class_neighbour_rate(features, labels, batch_size=8, k=1, batches=3)
    assert r["nearest"] == pytest.approx(100.0)
    assert r["random"] == pytest.approx(100.0 * 3 / 7)  # 3 of the 7 others share the class
    # Features that pair each image with one of the *other* class: every nearest neighbour is wrong.
    crossed = torch.eye(4).repeat(2, 1)  # image i and image i + 4 share direction i
    r = same_class_neighbour_rate(crossed, labels, batch_size=8, k=1)
    assert r["nearest"] == pytest.approx(0.0)


def test_same_class_neighbour_rate_checks_arguments():
    x, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="batch_size must be in"):
        same_class_neighbour_rate(x, y, batch_size=11)
    with pytest.raises(ValueError, match="k must be in"):
        same_class_neighbour_rate(x, y, batch_size=4, k=4)


def test_alignment_uniformity_of_a_constant_and_an_identity_encoder():
    from sslbook.diagnostics import alignment_uniformity
    from sslbook.losses import uniformity

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    const = alignment_uniformity(lambda x: torch.ones(len(x), 4), images, mean, std, max_images=32)
    assert const["alignment"] == pytest.approx(0.0) and const["uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert const["images"] == 32
    # An encoder that ignores the augmentation's randomness has alignment 0 and the uniformity of its outputs.
    code = torch.randn(256, 8, generator=g)
    fixed = lambda x: code[: len(x)]  # noqa: E731 - same output for both views
    r = alignment_uniformity(fixed, images, mean, std, max_images=32)
    assert r["alignment"] == pytest.approx(0.0)
    assert r["uniformity"] == pytest.approx(float(uniformity(torch.nn.functional.normalize(code[:32], dim=1))))
    # Pixels as features: two random views differ, so alignment > 0; and the caller's RNG is untouched.
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    pixels = alignment_uniformity(lambda x: x.flatten(1), images, mean, std, max_images=32)
    assert pixels["alignment"] > 0.01 and torch.rand(1) == before


def test_layer_trust_ratios_match_the_formula_and_leave_no_gradients():
    from torch import nn

    from sslbook.optim import layer_trust_ratios, trust_ratio

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    rows = layer_trust_ratios(model, model(x).pow(2).mean(), weight_decay=0.01, eta=0.001)
    assert [r["name"] for r in rows] == ["0.weight", "3.weight"]  # biases and BatchNorm excluded
    model(x).pow(2).mean().backward()  # the same gradient again, by hand
    w, g = model[3].weight.detach(), model[3].weight.grad
    assert rows[1]["ratio"] == pytest.approx(trust_ratio(w, g, 0.01, 0.001), rel=1e-5)
    assert rows[1]["ratio"] == pytest.approx(0.001 * float(w.norm() / (g + 0.01 * w).norm()), rel=1e-5)
    assert rows[1]["update_ratio"] == pytest.approx(float((g + 0.01 * w).norm() / w.norm()), rel=1e-5)
    model.zero_grad(set_to_none=True)
    layer_trust_ratios(model, model(x).pow(2).mean())
    assert all(p.grad is None for p in model.parameters())

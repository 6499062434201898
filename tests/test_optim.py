import math

import pytest
import torch
from torch import nn

from sslbook.config import OptimConfig
from sslbook.optim import LARS, build_optimizer, lr_at, parameter_groups, peak_lr, trust_ratio


def test_schedule_warmup_then_cosine():
    peak, total, warm = 1.0, 110, 10
    assert lr_at(0, total, warm, peak) == pytest.approx(0.1)
    assert lr_at(9, total, warm, peak) == pytest.approx(1.0)
    assert lr_at(10, total, warm, peak) == pytest.approx(1.0)
    assert lr_at(60, total, warm, peak) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_at(110, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(110, total, warm, peak, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(50, total, 0, peak, schedule="constant") == 1.0


def test_peak_lr_scaling():
    cfg = OptimConfig(lr=0.3, lr_batch=256)
    assert peak_lr(cfg, 4096) == pytest.approx(4.8)  # SimCLR's 0.3 x batch/256
    cfg.lr_scaling = "sqrt"
    assert peak_lr(cfg, 1024) == pytest.approx(0.6)
    cfg.lr_scaling = "none"
    assert peak_lr(cfg, 1024) == 0.3


def test_bias_and_norm_are_excluded():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias
    assert len(parameter_groups(model, 0.1, exclude_bias_and_norm=False)) == 1


def test_lars_step_matches_formula():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS(
        [{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
        lr=0.5,
        momentum=0.9,
        eta=0.01,
    )
    w.grad, b.grad = torch.tensor([0.0, 1.0]), torch.tensor([2.0])
    g = w.grad + 0.1 * w.detach()  # decayed gradient
    trust = 0.01 * 5.0 / g.norm()
    expected_w = w.detach() - 0.5 * trust * g
    opt.step()
    assert torch.allclose(w.detach(), expected_w)
    assert torch.allclose(b.detach(), torch.tensor([0.0]))  # plain SGD: 1 - 0.5 * 2
    assert trust_ratio(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0]), 0.1, 0.01) == pytest.approx(float(trust))


@pytest.mark.parametrize("eta, expected_rate", [(0.01, 0.05), (1.0, 0.5)])  # trust 0.1 (below lr) / 10 (capped)
def test_lars_clip_is_larc_rate_min_of_trust_and_lr(eta, expected_rate):
    """LARC's clip: the layer's rate is min(eta * |w| / |g|, lr) (apex LARC, solo-learn's clip_lr)."""
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    opt = LARS([{"params": [w]}], lr=0.5, momentum=0.9, eta=eta, clip=True)
    w.grad = torch.tensor([0.0, 1.0])  # |g| = 1, so eta * |w| / |g| = 5 * eta
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0 - expected_rate]))


def test_lars_clip_option_reaches_the_optimizer_and_old_state_still_steps():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(name="lars", lr=0.1, lars_clip=True), batch_size=256)
    assert all(group["clip"] for group in opt.param_groups)
    old = LARS(model.parameters(), lr=0.1)
    state = old.state_dict()
    for group in state["param_groups"]:  # a checkpoint written before the option existed
        del group["clip"]
    old.load_state_dict(state)
    model.weight.grad = torch.ones_like(model.weight)
    old.step()  # no KeyError


def test_lars_second_step_uses_momentum():
    w = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "lars_exclude": True}], lr=1.0, momentum=0.5)
    for _ in range(2):
        w.grad = torch.tensor([1.0])
        opt.step()
    assert w.item() == pytest.approx(1.0 - 1.0 - 1.5)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)])
def test_build_optimizer(name, cls):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.1, lr_batch=256), batch_size=512)
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="sgd, adamw or lars"):
        build_optimizer(model, OptimConfig(name="adam"), 256)


def test_a_method_parameter_group_keeps_its_own_settings():
    from conftest import tiny_encoder
    from sslbook.methods.simsiam import SimSiam
    from sslbook.optim import set_lr

    method = SimSiam(tiny_encoder(), dim=16, pred_dim=4, projector_layers=2, fix_predictor_lr=True)
    opt = build_optimizer(method, OptimConfig(lr=0.1, lr_batch=256, weight_decay=0.5), batch_size=512)
    predictor = {id(p) for p in method.predictor.parameters()}
    fixed = [g for g in opt.param_groups if g.get("fixed_lr")]
    # The predictor's weights (decayed) and its biases/BN parameters (not decayed), both at a fixed lr.
    assert {id(p) for g in fixed for p in g["params"]} == predictor and len(fixed) == 2
    assert sorted(g["weight_decay"] for g in fixed) == [0.0, 0.5]
    assert not predictor & {id(p) for g in opt.param_groups if not g.get("fixed_lr") for p in g["params"]}
    peak, total = 0.2, 100
    for step in (0, 50, 99):
        lr = lr_at(step, total, 0, peak)
        set_lr(opt, lr, peak)
        for g in opt.param_groups:
            assert g["lr"] == (0.2 if g.get("fixed_lr") else lr)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_lr_scale_and_unknown_group_settings():
    from sslbook.optim import set_lr

    class Scaled(nn.Module):
        def __init__(self, settings):
            super().__init__()
            self.a, self.b, self.settings = nn.Linear(2, 2), nn.Linear(2, 2), settings

        def param_groups(self):
            return [{"params": list(self.b.parameters()), **self.settings}]

    opt = build_optimizer(Scaled({"lr_scale": 0.1, "weight_decay": 0.0}), OptimConfig(lr=1.0, lr_batch=256), 256)
    set_lr(opt, 0.5, 1.0)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        (0.5, 5e-4),
        (0.5, 0.0),
        (0.05, 0.0),
        (0.05, 0.0),
    ]
    with pytest.raises(ValueError, match=r"unknown parameter-group settings \['momentum'\]"):
        build_optimizer(Scaled({"momentum": 0.5}), OptimConfig(), 256)

"""SimSiam (Chen & He 2021) and BYOL (Grill et al. 2020): the negative-free Siamese family."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_datasets, tiny_run_config
from sslbook.config import load_config
from sslbook.losses import negative_cosine, output_std
from sslbook.methods import Method
from sslbook.methods.byol import BYOL
from sslbook.methods.simsiam import SimSiam
from sslbook.models import build_encoder, resnet
from sslbook.optim import build_optimizer
from sslbook.trainer import read_checkpoint, train


def views(n=8, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, side, side, generator=g), torch.randn(n, 3, side, side, generator=g)]


def simsiam(stop_gradient=True, seed=0):
    torch.manual_seed(seed)
    return SimSiam(resnet(18, "cifar", width=4), dim=32, pred_dim=8, stop_gradient=stop_gradient, projector_layers=2)


def byol(seed=0, **kw):
    torch.manual_seed(seed)
    return BYOL(resnet(18, "cifar", width=4), dim=16, hidden_dim=32, **kw)


def record_outputs(module):
    """Collect the outputs of every call of ``module`` (in call order)."""
    outputs = []
    module.register_forward_hook(lambda m, inputs, out: outputs.append(out))
    return outputs


def config(tmp_path, *overrides, name="run"):
    return tiny_run_config(tmp_path, "epochs=2", "eval_every=0", "log_every=1", *overrides, name=name)


def data():
    return tiny_datasets()


def full_state(method):
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


# --------------------------------------------------------------------------- SimSiam
def test_simsiam_loss_is_algorithm_1_by_hand():
    m = simsiam()
    z_out, p_out = record_outputs(m.projector), record_outputs(m.predictor)
    out = m(views())
    z1, z2 = z_out
    p1, p2 = p_out
    assert torch.allclose(out["loss"], negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2)
    by_hand = (
        -(F.normalize(p1, dim=1) * F.normalize(z2, dim=1)).sum(1).mean() / 2
        - (F.normalize(p2, dim=1) * F.normalize(z1, dim=1)).sum(1).mean() / 2
    )
    assert torch.allclose(out["loss"], by_hand, atol=1e-6)
    assert torch.equal(out["z"], z1.detach()) and not out["z"].requires_grad
    assert -1 <= out["loss"].item() <= 1


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_blocks_the_target_branch(stop_gradient):
    """dL/dz2 = (through the target z2 in D(p1, z2)) + (through p2 = h(z2) in D(p2, z1)).

    With the stop-gradient the first part is zero, so dL/dz2 is exactly the gradient of the second
    term alone; without it, the target branch adds a non-zero gradient.
    """
    m = simsiam(stop_gradient)
    z_out, p_out = record_outputs(m.projector), record_outputs(m.predictor)
    loss = m(views())["loss"]
    (z1, z2), (p1, p2) = z_out, p_out
    total = torch.autograd.grad(loss, z2, retain_graph=True)[0]
    via_predictor = torch.autograd.grad(negative_cosine(p2, z1) / 2, z2, retain_graph=True)[0]
    via_target = total - via_predictor
    if stop_gradient:
        assert torch.count_nonzero(via_target) == 0
    else:
        expected = torch.autograd.grad(-F.cosine_similarity(p1, z2, dim=1).mean() / 2, z2, retain_graph=True)[0]
        assert via_target.abs().max() > 1e-4
        assert torch.allclose(via_target, expected, atol=1e-6)


class ConstantBackbone(nn.Module):
    """A collapsed encoder: the same feature vector whatever the image."""

    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.feature = nn.Parameter(torch.randn(self.feature_dim))

    def forward(self, x):
        return self.feature.expand(len(x), -1)


def test_collapse_attains_the_minimum_and_output_std_sees_it():
    # A constant network: every z is the same vector. With h = identity (the no-predictor ablation),
    # p = z and every D(p, z) = -1, the smallest value the loss can take.
    torch.manual_seed(0)
    m = SimSiam(ConstantBackbone(), dim=16, pred_dim=4, projector_layers=2).eval()  # eval: BN running stats
    m.predictor = nn.Identity()
    x = views()[0]
    out = m([x, x.clone()])
    assert out["loss"].item() == pytest.approx(-1.0, abs=1e-6)
    assert output_std(out["z"]) == pytest.approx(0.0, abs=1e-7)
    # Any non-collapsed network scores above the minimum, and a healthy output has std ~ 1/sqrt(d).
    assert simsiam()(views())["loss"].item() > -1.0
    d = 256
    assert output_std(torch.randn(4096, d)) == pytest.approx(1 / math.sqrt(d), rel=0.05)


def test_simsiam_step_changes_parameters_and_is_deterministic():
    def one_step():
        m = simsiam(seed=3)
        opt = build_optimizer(m, load_config(None, ["profile=smoke"]).optim, batch_size=8)
        before = [p.detach().clone() for p in m.parameters()]
        m(views())["loss"].backward()
        opt.step()
        return before, [p.detach().clone() for p in m.parameters()]

    before, after = one_step()
    _, again = one_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(a, b) for a, b in zip(after, again))


def test_simsiam_trains_through_the_trainer(tmp_path):
    result = train(config(tmp_path, "augment=simsiam", name="sg"), method=simsiam(), datasets=data())
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert result.results["steps"] == 8 and len(steps) == 8
    assert all(-1 <= r["loss"] <= 1 and r["output_std"] >= 0 for r in steps)
    assert 0 <= result.results["knn200_top1"] <= 100
    # The collapse experiment's arm runs too (method_args.stop_gradient=false in the notebook).
    no_sg = train(
        config(tmp_path, "augment=simsiam", "epochs=1", "final_eval=false", name="nosg"),
        method=simsiam(stop_gradient=False),
        datasets=data(),
    )
    assert no_sg.results["steps"] == 4 and no_sg.method.stop_gradient is False


# --------------------------------------------------------------------------- BYOL
def test_byol_tau_schedule():
    m = byol()
    assert m.momentum_at(0.0) == pytest.approx(0.996, abs=1e-12)
    assert m.momentum_at(0.5) == pytest.approx(0.998, abs=1e-12)
    assert m.momentum_at(1.0) == 1.0
    assert m.momentum_at(0.25) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-12)
    taus = [m.momentum_at(k / 10) for k in range(11)]
    assert taus == sorted(taus)
    constant = byol(base_momentum=0.99, final_momentum=0.99)
    assert all(constant.momentum_at(p) == pytest.approx(0.99) for p in (0, 0.3, 1))


def test_target_starts_as_a_copy_and_gets_no_gradient():
    m = byol()
    for online, target in ((m.backbone, m.target_backbone), (m.projector, m.target_projector)):
        o, t = online.state_dict(), target.state_dict()
        assert o.keys() == t.keys() and all(torch.equal(o[k], t[k]) for k in o)
        assert all(not p.requires_grad for p in target.parameters())
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(online.parameters(), target.parameters()))
    out = m(views())
    out["loss"].backward()
    assert all(p.grad is None for p in m.target_backbone.parameters())
    assert all(p.grad is None for p in m.target_projector.parameters())
    for part in (m.backbone, m.projector, m.predictor):
        assert all(p.grad is not None for p in part.parameters())
    # The optimiser never sees the target.
    opt = build_optimizer(m, load_config(None, ["profile=smoke"]).optim, batch_size=8)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in m.target_backbone.parameters()}
    assert 0 <= out["loss"].item() <= 8 and out["tau"].item() == pytest.approx(0.996)


def test_byol_loss_is_symmetric_normalised_mse():
    m = byol()
    online_z, pred = record_outputs(m.projector), record_outputs(m.predictor)
    target_z = record_outputs(m.target_projector)
    out = m(views())
    p1, p2 = pred
    t1, t2 = target_z
    mse = lambda p, z: ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1).mean()  # noqa: E731
    assert torch.allclose(out["loss"], mse(p1, t2) + mse(p2, t1), atol=1e-5)
    assert torch.equal(out["z"], online_z[0].detach())


def test_target_batchnorm_uses_batch_statistics_and_keeps_its_own_running_stats():
    m = byol()
    bn = m.target_projector[1]
    assert isinstance(bn, nn.BatchNorm1d)
    before = bn.running_mean.clone()
    x = views()[0]
    z_train = m.target(x)
    assert not torch.equal(bn.running_mean, before)  # training-mode BN updated the target's statistics
    # Batch statistics: the projection of a sample depends on the rest of the batch.
    assert not torch.allclose(m.target(x[:4])[0], z_train[0], atol=1e-4)
    assert not z_train.requires_grad


def test_ema_update_is_equation_1():
    m = byol()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # known, different online and target weights
        for p in list(m.backbone.parameters()) + list(m.projector.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    theta = [p.detach().clone() for p in list(m.backbone.parameters()) + list(m.projector.parameters())]
    xi = [p.detach().clone() for p in list(m.target_backbone.parameters()) + list(m.target_projector.parameters())]
    target_bn = m.target_projector[1].running_mean.clone()
    m.after_optimizer_step(0.5)
    new = list(m.target_backbone.parameters()) + list(m.target_projector.parameters())
    for n, t, o in zip(new, xi, theta):
        torch.testing.assert_close(n, 0.998 * t + (1 - 0.998) * o, rtol=1e-6, atol=1e-7)
    assert m.tau.item() == pytest.approx(0.998)
    assert torch.equal(m.target_projector[1].running_mean, target_bn)  # buffers are not averaged
    # tau = 1 freezes the target; tau = 0 copies the online network.
    frozen = [p.detach().clone() for p in new]
    m.after_optimizer_step(1.0)
    assert all(torch.equal(a, b) for a, b in zip(new, frozen))
    copy_all = byol(base_momentum=0.0, final_momentum=0.0)
    with torch.no_grad():
        for p in copy_all.backbone.parameters():
            p.add_(1.0)
    copy_all.after_optimizer_step(0.3)
    assert all(torch.equal(a, b) for a, b in zip(copy_all.backbone.parameters(), copy_all.target_backbone.parameters()))


def test_byol_step_changes_parameters_and_is_deterministic():
    def one_step():
        m = byol(seed=5)
        opt = build_optimizer(m, load_config(None, ["profile=smoke"]).optim, batch_size=8)
        m(views())["loss"].backward()
        opt.step()
        m.after_optimizer_step(0.1)
        return m

    a, b = one_step(), one_step()
    fresh = byol(seed=5)
    assert not torch.equal(a.backbone.conv1.weight, fresh.backbone.conv1.weight)  # online moved
    assert not torch.equal(a.target_backbone.conv1.weight, fresh.target_backbone.conv1.weight)  # target followed
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_byol_trains_logs_tau_and_resumes_mid_epoch_exactly(tmp_path):
    kw = dict(base_momentum=0.9, final_momentum=1.0)  # a schedule that moves in 8 steps
    whole = train(config(tmp_path, "augment=byol", name="whole"), method=byol(**kw), datasets=data())
    steps = [r for r in whole.log() if "loss" in r and "step" in r]
    assert whole.results["steps"] == 8 and "tau" in steps[0] and "output_std" in steps[0]
    # The tau logged at step k is the one used by the EMA update after step k-1 (progress (k-1)/8).
    assert [r["tau"] for r in steps[1:]] == pytest.approx(
        [1 - 0.1 * (math.cos(math.pi * k / 8) + 1) / 2 for k in range(1, 8)], abs=1e-6
    )
    part = train(
        config(tmp_path, "augment=byol", "max_steps=3", "final_eval=false", name="split"),
        method=byol(**kw),
        datasets=data(),
    )
    assert part.results["steps"] == 3  # stopped mid-epoch (4 steps per epoch)
    assert not read_checkpoint(tmp_path / "split" / "checkpoint.pt")["state"]["finished"]
    resumed = train(
        config(tmp_path, "augment=byol", "resume=auto", "final_eval=false", name="split"),
        method=byol(**kw),
        datasets=data(),
    )
    assert resumed.results["steps"] == 8
    a, b = full_state(whole.method), full_state(resumed.method)
    assert a.keys() == b.keys()
    # online AND target parameters, target BN statistics and tau: all bit for bit
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert any(k.startswith("target_backbone.") for k in a) and b["tau"].item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- ImageNet configs
@pytest.mark.parametrize("name,cls", [("imagenet/simsiam", SimSiam), ("imagenet/byol", BYOL)])
def test_imagenet_configs_build(name, cls):
    cfg = load_config(name, ["profile=gpu", "model.width=8"])
    assert cfg.model.encoder == "resnet50" and cfg.model.stem == "imagenet" and cfg.data.dataset == "imagefolder"
    backbone = build_encoder(cfg.model.encoder, width=cfg.model.width, stem=cfg.model.stem)
    method = cls(backbone, **cfg.method_args)
    assert isinstance(method, Method)
    out = method([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    assert torch.isfinite(out["loss"]) and out["z"].shape[0] == 4
    if cls is SimSiam:
        assert cfg.batch_size == 512 and cfg.optim.name == "sgd" and cfg.optim.lr == 0.05
        assert out["z"].shape[1] == 2048 and len([m for m in method.projector if isinstance(m, nn.Linear)]) == 3
    else:
        assert cfg.batch_size == 4096 and cfg.optim.name == "lars" and cfg.optim.weight_decay == 1.5e-6
        assert out["z"].shape[1] == 256 and method.momentum_at(0) == 0.996


def test_cifar_configs_load():
    s = load_config("cifar10/simsiam", ["profile=gpu"])
    assert s.method == "simsiam" and s.method_args["projector_layers"] == 2 and s.augment == "simsiam"
    b = load_config("cifar10/byol", ["profile=gpu"])
    assert b.method == "byol" and b.method_args["hidden_dim"] == 1024
    for cfg in (s, b):
        assert "et al" in cfg.paper and cfg.model.encoder == "resnet18" and cfg.model.stem == "cifar"

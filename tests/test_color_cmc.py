"""Tests for the colour pretext tasks: Lab conversion and Zhang et al.'s colour classes (sslbook.color),
Colorization (sslbook.methods.colorization), CMC (sslbook.methods.cmc) and its loss, gaussian_noise."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import flat_params as params
from conftest import tiny_datasets, tiny_run_config
from conftest import tiny_encoder as encoder
from sslbook import color
from sslbook.augment import CIFAR10_MEAN, CIFAR10_STD, gaussian_noise, normalize
from sslbook.config import load_config
from sslbook.losses import cmc_loss
from sslbook.methods.cmc import CMC
from sslbook.methods.colorization import Colorization, colorize
from sslbook.models import with_input_channels
from sslbook.trainer import build_model, method_from_checkpoint, train

torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared CPU

ONE_VIEW = "augment=[{size: 16, scale: [0.5, 1.0], jitter_p: 0.0, gray_p: 0.0}]"


def rgb_batch(b=4, side=16, seed=0):
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


def views_of(rgb):
    return normalize(rgb, CIFAR10_MEAN, CIFAR10_STD)


def lab_of(r, g, b):
    return color.rgb_to_lab(torch.tensor([r, g, b], dtype=torch.float32).view(3, 1, 1)).flatten()


# --------------------------------------------------------------------------- Lab
def test_lab_of_known_colours():
    assert torch.allclose(lab_of(1, 1, 1), torch.tensor([100.0, 0.0, 0.0]), atol=1e-3)  # white
    assert torch.allclose(lab_of(0, 0, 0), torch.zeros(3), atol=1e-3)  # black
    assert torch.allclose(lab_of(1, 0, 0), torch.tensor([53.24, 80.09, 67.20]), atol=0.02)  # pure red
    assert torch.allclose(lab_of(0, 1, 0), torch.tensor([87.73, -86.18, 83.18]), atol=0.02)  # pure green
    assert torch.allclose(lab_of(0, 0, 1), torch.tensor([32.30, 79.19, -107.86]), atol=0.02)  # pure blue
    grey = lab_of(0.3, 0.3, 0.3)
    assert abs(grey[1]) < 1e-3 and abs(grey[2]) < 1e-3  # every grey has a = b = 0


def test_lab_round_trip_and_shapes():
    rgb = rgb_batch(3, 8)
    lab = color.rgb_to_lab(rgb)
    assert lab.shape == rgb.shape and lab.dtype == torch.float32
    assert (lab[:, 0] >= 0).all() and (lab[:, 0] <= 100).all()
    assert (color.lab_to_rgb(lab) - rgb).abs().max() < 1e-3
    extra = rgb.view(1, 3, 3, 8, 8)  # any leading dimensions, channels at -3
    assert torch.allclose(color.rgb_to_lab(extra).view(3, 3, 8, 8), lab)


def test_lab_matches_scikit_image():
    skimage_color = pytest.importorskip("skimage.color")
    rgb = rgb_batch(2, 6)
    ours = color.rgb_to_lab(rgb)
    theirs = torch.from_numpy(skimage_color.rgb2lab(rgb.permute(0, 2, 3, 1).double().numpy())).permute(0, 3, 1, 2)
    assert (ours - theirs.float()).abs().max() < 0.02  # the sRGB matrices differ in the 5th digit


def test_lab_is_float32_under_bf16_autocast():
    rgb = rgb_batch(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = color.rgb_to_lab(rgb)
    assert lab.dtype == torch.float32 and torch.allclose(lab, color.rgb_to_lab(rgb))


def test_out_of_gamut_lab_is_clipped():
    lab = torch.tensor([50.0, 120.0, -120.0]).view(3, 1, 1)  # no sRGB colour is this saturated
    assert color.lab_to_rgb(lab, clip=False).min() < 0 or color.lab_to_rgb(lab, clip=False).max() > 1
    rgb = color.lab_to_rgb(lab)
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_denormalize_inverts_the_views_normalisation():
    rgb = rgb_batch()
    assert torch.allclose(color.denormalize(views_of(rgb), CIFAR10_MEAN, CIFAR10_STD), rgb, atol=1e-6)


def test_normalize_lab_maps_the_gamut_to_minus_one_one():
    extremes = torch.tensor([[0.0, -86.183, -107.857], [100.0, 98.233, 94.478]]).T.reshape(1, 3, 2, 1)
    scaled = color.normalize_lab(extremes)
    assert torch.allclose(scaled[0, :, 0, 0], -torch.ones(3), atol=1e-5)
    assert torch.allclose(scaled[0, :, 1, 0], torch.ones(3), atol=1e-5)


# --------------------------------------------------------------------------- Zhang et al.'s bins
def test_there_are_313_bins_on_a_grid_of_10():
    bins = color.ab_bins()
    assert bins.shape == (313, 2)
    assert (bins.remainder(10) == 0).all()
    assert len({tuple(b) for b in bins.tolist()}) == 313
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100 and bins[:, 1].min() == -110


def test_the_bins_hold_every_srgb_colour():
    """Every sRGB colour's (a, b) rounds to a kept bin, so its nearest bin is at most a half cell away."""
    v = torch.linspace(0, 1, 33)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(3, -1, 1)  # 35,937 colours
    ab = color.rgb_to_lab(rgb)[1:].reshape(2, -1).T
    kept = {tuple(b) for b in color.ab_bins().int().tolist()}
    rounded = {tuple(c) for c in (torch.round(ab / 10) * 10).int().tolist()}
    assert rounded <= kept
    assert torch.cdist(ab, color.ab_bins()).min(dim=1).values.max() <= 5 * math.sqrt(2) + 1e-4


def test_soft_encoding_sums_to_one_over_five_bins_most_on_the_nearest():
    bins = color.ab_bins()
    ab = torch.tensor([[23.0, -41.0], [3.0, 4.0], [-60.0, 70.0]]).T.reshape(1, 2, 3, 1)
    z = color.soft_encode(ab, bins)
    assert z.shape == (1, 313, 3, 1)
    assert torch.allclose(z.sum(dim=1), torch.ones(1, 3, 1))
    assert ((z > 0).sum(dim=1) == 5).all()
    nearest = torch.cdist(ab[0].reshape(2, -1).T, bins).argmin(dim=1)
    assert torch.equal(z[0, :, :, 0].argmax(dim=0), nearest)


def test_soft_encoding_at_a_bin_centre_by_hand():
    """At a bin's centre its four grid neighbours are 10 away: weights 1 and 4 x exp(-100 / 50), normalised."""
    bins = color.ab_bins()
    z = color.soft_encode(torch.tensor([20.0, 30.0]).view(1, 2, 1, 1), bins)[0, :, 0, 0]
    centre = (bins == torch.tensor([20.0, 30.0])).all(dim=1).nonzero().item()
    expected = 1 / (1 + 4 * math.exp(-100 / (2 * 5**2)))
    assert z[centre].item() == pytest.approx(expected, rel=1e-5)
    assert sorted(z[z > 0].tolist())[:4] == pytest.approx([(1 - expected) / 4] * 4, rel=1e-5)


def test_a_grey_image_falls_in_the_zero_bin():
    grey = torch.full((1, 3, 4, 4), 0.6)
    ab = color.rgb_to_lab(grey)[:, 1:]
    assert ab.abs().max() < 1e-3
    z = color.soft_encode(ab, color.ab_bins())
    zero_bin = (color.ab_bins() == 0).all(dim=1).nonzero().item()
    assert (z.argmax(dim=1) == zero_bin).all()


def test_smoothing_spreads_a_colour_to_its_neighbours():
    bins = color.ab_bins()
    p = torch.zeros(313)
    p[100] = 1.0
    smooth = color.smooth_distribution(p, bins)
    assert smooth.sum().item() == pytest.approx(1.0, rel=1e-6)
    assert smooth.argmax() == 100 and (smooth > 0).sum() > 5
    near = torch.cdist(bins[100:101], bins)[0]
    assert smooth[near == 10].min() > smooth[near > 10].max()  # nearer bins get more


def test_rebalancing_weights():
    bins = color.ab_bins()
    uniform = torch.full((313,), 1 / 313)
    assert torch.allclose(color.rebalancing_weights(uniform), torch.ones(313), atol=1e-5)
    p = color.smooth_distribution(torch.rand(313, generator=torch.Generator().manual_seed(0)) ** 4, bins)
    w = color.rebalancing_weights(p, lam=0.5)
    assert (p * w).sum().item() == pytest.approx(1.0, rel=1e-5)  # E_p[w] = 1
    assert w[p.argmin()] > w[p.argmax()]  # the rarest colour weighs most
    lam, Q = 0.5, 313
    raw = 1 / ((1 - lam) * p + lam / Q)
    assert torch.allclose(w, raw / (p * raw).sum())


def test_annealed_mean_of_a_one_hot_distribution_is_that_bins_centre():
    bins = color.ab_bins()
    logits = torch.full((1, 313, 2, 3), -1e4)
    logits[:, 57] = 0.0  # log of a one-hot distribution (up to a constant)
    ab = color.annealed_mean(logits, bins)
    assert ab.shape == (1, 2, 2, 3)
    assert torch.allclose(ab, bins[57].view(1, 2, 1, 1).expand(1, 2, 2, 3))


def test_annealed_mean_temperature():
    bins = color.ab_bins()
    logits = torch.randn(1, 313, 1, 1, generator=torch.Generator().manual_seed(0))
    mean = (torch.softmax(logits, dim=1)[0, :, 0, 0, None] * bins).sum(0)
    assert torch.allclose(color.annealed_mean(logits, bins, 1.0)[0, :, 0, 0], mean, atol=1e-4)  # T=1: the mean
    mode = bins[logits[0, :, 0, 0].argmax()]
    assert torch.allclose(color.annealed_mean(logits, bins, 1e-3)[0, :, 0, 0], mode, atol=1e-3)  # T->0: the mode


# --------------------------------------------------------------------------- Colorization
def test_input_channel_surgery():
    net = with_input_channels(encoder(), 2)
    assert net.conv1.in_channels == 2 and net(torch.randn(2, 2, 16, 16)).shape == (2, net.feature_dim)
    with pytest.raises(ValueError):
        with_input_channels(torch.nn.Linear(3, 3), 1)


def test_decoder_predicts_q_scores_at_a_quarter_of_the_side():
    method = Colorization(encoder(), decoder_dim=8)
    lab = color.rgb_to_lab(rgb_batch(2, 32))
    scores, h = method.scores(lab)
    assert scores.shape == (2, 313, 8, 8)  # 32 px -> layer4 4x4 -> upsampled x2 = 1/4 of the side
    assert h.shape == (2, method.backbone.feature_dim)
    regression = Colorization(encoder(), loss="regression")
    assert regression.scores(lab)[0].shape == (2, 2, 8, 8)
    assert regression.predict_ab(lab).shape == (2, 2, 8, 8)
    assert math.isfinite(regression([views_of(rgb_batch(2, 32))], None)["loss"].item())


def test_colorization_counts_colours_in_training_only():
    torch.manual_seed(0)
    method = Colorization(encoder())
    out = method([views_of(rgb_batch(4, 16))], None)
    assert math.isfinite(out["loss"].item()) and 0 <= out["accuracy"] <= 100
    assert method.bin_counts.sum() == 4 * 4 * 4  # 16 px -> 4x4 predictions per image
    method.eval()
    method([views_of(rgb_batch(4, 16))], None)
    assert method.bin_counts.sum() == 64
    grey = Colorization(encoder()).train()
    grey([views_of(torch.full((2, 3, 16, 16), 0.4))], None)
    zero_bin = (color.ab_bins() == 0).all(dim=1).nonzero().item()
    assert grey.bin_counts[zero_bin] == grey.bin_counts.sum()


def test_colorization_loss_by_hand_without_rebalancing():
    torch.manual_seed(0)
    method = Colorization(encoder(), rebalance=False).eval()
    views = views_of(rgb_batch(2, 16))
    lab = color.rgb_to_lab(color.denormalize(views, CIFAR10_MEAN, CIFAR10_STD))
    scores, _ = method.scores(lab)
    z = color.soft_encode(F.adaptive_avg_pool2d(lab[:, 1:], 4), color.ab_bins())
    expected = -(z * F.log_softmax(scores, dim=1)).sum(dim=1).mean()
    assert method([views], None)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_evaluation_sees_lightness_only():
    """Two images with the same L and different colours get the same features from embed."""
    torch.manual_seed(0)
    method = Colorization(encoder()).eval()
    rgb = rgb_batch(2, 16)
    lab = color.rgb_to_lab(rgb)
    grey = color.lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))  # same L, no colour
    a, b = method.embed(views_of(rgb)), method.embed(views_of(grey))
    assert a.shape == (2, method.backbone.feature_dim)
    assert torch.allclose(a, b, atol=1e-3)


def test_colorize_keeps_the_lightness_and_adds_the_predicted_colour():
    torch.manual_seed(0)
    method = Colorization(encoder()).train()
    last = method.decoder[-1]
    with torch.no_grad():  # a network that always predicts the (0, 0) bin: colorize must give back greys
        last.weight.zero_()
        last.bias.fill_(-20.0)
        last.bias[(color.ab_bins() == 0).all(dim=1).nonzero().item()] = 20.0
    images = (rgb_batch(2, 16) * 255).round().to(torch.uint8)
    out = colorize(method, images)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    lab = color.rgb_to_lab(images.float() / 255)
    grey = color.lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))
    assert torch.allclose(out, grey, atol=1e-3)
    assert method.training  # put back


def step_changes_parameters(make):
    def one_step(seed):
        torch.manual_seed(seed)
        method = make()
        before = params(method)
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
        loss = method([views_of(rgb_batch(8, 16, seed=1))], torch.arange(8))["loss"]
        loss.backward()
        optimizer.step()
        return before, params(method)

    before, after = one_step(0)
    assert not torch.equal(before, after)
    assert torch.equal(after, one_step(0)[1])  # deterministic under a seed


def test_one_colorization_step_changes_parameters_deterministically():
    step_changes_parameters(lambda: Colorization(encoder()))


def test_colorization_trains_through_the_trainer_and_restores(tmp_path, monkeypatch):
    from sslbook.methods import METHODS

    monkeypatch.setitem(METHODS, "colorization", Colorization)  # the registration sslbook.methods makes
    cfg = tiny_run_config(
        tmp_path, "method=colorization", ONE_VIEW, "optim.name=adamw", "optim.lr=0.001", "eval_every=1"
    )
    result = train(cfg, datasets=tiny_datasets())
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert result.results["steps"] == 8 and all(math.isfinite(r["loss"]) for r in steps)
    assert "accuracy" in steps[-1] and "knn200_top1" in result.results
    assert result.method.bin_counts.sum() == 8 * 16 * 4 * 4  # every training pixel counted once
    restored, _ = method_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert torch.equal(restored.bin_counts, result.method.bin_counts)
    assert torch.allclose(restored.mean, torch.tensor(tiny_datasets()[0].mean))


def test_colorization_config_loads_and_builds(monkeypatch):
    from sslbook.methods import METHODS

    monkeypatch.setitem(METHODS, "colorization", Colorization)
    cfg = load_config("cifar10/colorization", ["profile=smoke", "model.width=4"])
    assert cfg.method == "colorization" and "et al" in cfg.paper
    method = build_model(cfg, num_data=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(method, Colorization) and method.loss == "classification" and method.temperature == 0.38
    assert torch.equal(method.mean, torch.tensor([0.5, 0.5, 0.5])) and method.backbone.conv1.in_channels == 1


# --------------------------------------------------------------------------- CMC
def test_cmc_loss_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [0.6, 0.8]])  # any scale: cosines are 1, 0.6 / 0, 0.8
    T = 0.5
    # View 1 anchors: rows of cos/T = [2, 1.2] (partner first), [0, 1.6] (partner second).
    l12 = (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    ) / 2
    # View 2 anchors: columns [2, 0] (partner first), [1.2, 1.6] (partner second).
    l21 = (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(0))) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    ) / 2
    assert cmc_loss(z1, z2, T).item() == pytest.approx(l12 + l21, rel=1e-6)


def test_cmc_views_are_l_and_ab():
    method = CMC(encoder())
    rgb = rgb_batch(2, 8)
    lightness, ab = method.split(views_of(rgb))
    lab = color.normalize_lab(color.rgb_to_lab(rgb))
    assert lightness.shape == (2, 1, 8, 8) and ab.shape == (2, 2, 8, 8)
    assert torch.allclose(lightness, lab[:, :1], atol=1e-4) and torch.allclose(ab, lab[:, 1:], atol=1e-4)
    grey = color.lab_to_rgb(torch.cat([color.rgb_to_lab(rgb)[:, :1], torch.zeros(2, 2, 8, 8)], dim=1))
    l_grey, ab_grey = method.split(views_of(grey))
    assert torch.allclose(l_grey, lightness, atol=1e-3)  # removing the colour leaves the L view alone
    no_colour = color.normalize_lab(torch.zeros(1, 3, 1, 1))[:, 1:]
    assert torch.allclose(ab_grey, no_colour.expand_as(ab_grey), atol=1e-3)  # and empties the ab view


def test_cmc_has_one_encoder_per_view_and_embeds_both():
    torch.manual_seed(0)
    method = CMC(encoder()).eval()
    assert method.backbone.conv1.in_channels == 1 and method.ab_encoder.conv1.in_channels == 2
    assert not any(p is q for p in method.backbone.parameters() for q in method.ab_encoder.parameters())
    views = views_of(rgb_batch(3, 16))
    features = method.embed(views)
    d = method.backbone.feature_dim
    assert features.shape == (3, d + method.ab_encoder.feature_dim)
    lightness, ab = method.split(views)
    assert torch.allclose(features[:, :d], method.backbone(lightness))
    assert torch.allclose(features[:, d:], method.ab_encoder(ab))


def test_cmc_forward():
    torch.manual_seed(0)
    method = CMC(encoder(), dim=16)
    out = method([views_of(rgb_batch(6, 16))], torch.arange(6))
    assert math.isfinite(out["loss"].item()) and out["z"].shape == (6, 16) and 0 <= out["accuracy"] <= 100
    method.eval()  # BatchNorm from running statistics: the same numbers twice
    views = views_of(rgb_batch(6, 16, seed=2))
    lightness, ab = method.split(views)
    z_l = F.normalize(method.l_head(method.backbone(lightness)), dim=1)
    z_ab = F.normalize(method.ab_head(method.ab_encoder(ab)), dim=1)
    expected = cmc_loss(z_l, z_ab, method.temperature)
    assert method([views], None)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_cmc_step_changes_both_encoders_deterministically():
    step_changes_parameters(lambda: CMC(encoder()))
    torch.manual_seed(0)
    method = CMC(encoder())
    method([views_of(rgb_batch(8, 16))], None)["loss"].backward()
    assert method.backbone.conv1.weight.grad.abs().sum() > 0 and method.ab_encoder.conv1.weight.grad.abs().sum() > 0


def test_cmc_trains_through_the_trainer(tmp_path, monkeypatch):
    from sslbook.methods import METHODS

    monkeypatch.setitem(METHODS, "cmc", CMC)
    cfg = tiny_run_config(tmp_path, "method=cmc", ONE_VIEW, "eval_every=1")
    result = train(cfg, datasets=tiny_datasets())
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert result.results["steps"] == 8 and all(math.isfinite(r["loss"]) for r in steps)
    assert "knn200_top1" in result.results
    restored, _ = method_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for a, b in zip(restored.state_dict().values(), result.method.state_dict().values()):
        assert torch.equal(a, b)


def test_cmc_config_loads_and_builds(monkeypatch):
    from sslbook.methods import METHODS

    monkeypatch.setitem(METHODS, "cmc", CMC)
    cfg = load_config("cifar10/cmc", ["profile=smoke", "model.width=4"])
    assert cfg.method == "cmc" and "et al" in cfg.paper
    method = build_model(cfg, num_data=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(method, CMC) and method.temperature == 0.1
    assert torch.equal(method.std, torch.tensor([0.25, 0.25, 0.25]))


# --------------------------------------------------------------------------- gaussian_noise
def test_gaussian_noise():
    images = torch.full((2, 3, 64, 64), 0.5)
    assert torch.equal(gaussian_noise(images, 0.0), images)
    g = torch.Generator().manual_seed(0)
    noisy = gaussian_noise(images, torch.tensor([0.05, 0.1]), generator=g)
    assert noisy.min() >= 0 and noisy.max() <= 1
    std = (noisy - images).flatten(1).std(dim=1)
    assert std[0].item() == pytest.approx(0.05, rel=0.05) and std[1].item() == pytest.approx(0.1, rel=0.05)
    assert torch.equal(
        gaussian_noise(images, 0.1, torch.Generator().manual_seed(1)),
        gaussian_noise(images, 0.1, torch.Generator().manual_seed(1)),
    )
    assert gaussian_noise(torch.ones(1, 3, 4, 4), 1.0).max() <= 1  # clipped

"""Tests for sslbook.models: encoder shapes, torchvision parity, ViT attention, heads."""

import pytest
import torch
import torch.nn as nn
import torchvision

from sslbook.models import (
    ENCODERS,
    Prototypes,
    ResNet,
    VisionTransformer,
    build_encoder,
    byol_predictor,
    byol_projector,
    linear_projector,
    mlp,
    moco_v2_projector,
    resnet,
    simclr_projector,
    simsiam_predictor,
    simsiam_projector,
    swav_projector,
    vit_tiny,
)


def images(b=2, size=32, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def num_params(module, skip_prefix=None):
    return sum(p.numel() for n, p in module.named_parameters() if not (skip_prefix and n.startswith(skip_prefix)))


# --- ResNet ------------------------------------------------------------------------------------

EXPANSION = {18: 1, 34: 1, 50: 4}


@pytest.mark.parametrize("depth", [18, 34, 50])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet_shapes(depth, stem, width=8):
    model = resnet(depth, stem=stem, width=width)
    assert isinstance(model, ResNet)
    exp = EXPANSION[depth]
    assert model.feature_dim == 8 * width * exp
    x = images()
    maps = model.forward_maps(x)
    assert list(maps) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    # CIFAR stem keeps 32x32 into layer1; ImageNet stem (stride-2 conv + max-pool) gives 8x8.
    side = 32 if stem == "cifar" else 8
    assert maps["stem"].shape == (2, width, side, side)
    for i in range(4):
        s = max(side // 2**i, 1)
        assert maps[f"layer{i + 1}"].shape == (2, width * 2**i * exp, s, s)
    assert model(x).shape == (2, model.feature_dim)


def test_resnet_feature_dims():
    assert resnet(18).feature_dim == 512
    assert resnet(34).feature_dim == 512
    assert resnet(50, stem="imagenet").feature_dim == 2048
    assert resnet(18, width=16).feature_dim == 128  # the `cpu` profile's encoder
    assert resnet(50, width=16).feature_dim == 512


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_torchvision(depth):
    ours = resnet(depth, stem="imagenet", width=64)
    theirs = getattr(torchvision.models, f"resnet{depth}")()
    assert num_params(ours) == num_params(theirs, skip_prefix="fc.")
    # Same layer names and shapes: torchvision's weights load, and the outputs agree.
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    theirs.fc = nn.Identity()
    ours.eval(), theirs.eval()
    x = images(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_resnet_init_follows_torchvision():
    model = resnet(18, stem="cifar", width=16)
    conv = model.layer2[0].conv1  # 3x3, 16 -> 32 channels: fan_out = 32 * 9
    std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() - std) / std < 0.1
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    zero = resnet(50, stem="cifar", width=8, zero_init_residual=True)
    assert torch.all(zero.layer1[0].bn3.weight == 0)
    assert torch.all(zero.layer1[0].bn1.weight == 1)
    assert torch.all(resnet(18, width=8, zero_init_residual=True).layer3[1].bn2.weight == 0)


@pytest.mark.parametrize("stem,kernel,side", [("cifar", 9, 32), ("cifar", 7, 32), ("imagenet", 5, 8)])
def test_resnet_stem_kernel(stem, kernel, side):
    model = resnet(18, stem=stem, width=8, stem_kernel=kernel)
    assert model.conv1.kernel_size == (kernel, kernel)
    assert model.forward_maps(images())["layer1"].shape[-1] == side


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError):
        resnet(19)
    with pytest.raises(ValueError):
        resnet(18, stem="tiny")
    with pytest.raises(ValueError):
        resnet(18, stem_kernel=4)


# --- channels_last and bf16 autocast -------------------------------------------------------------

SMALL_ENCODERS = {
    "resnet18-cifar": lambda: resnet(18, stem="cifar", width=8),
    "resnet50-imagenet": lambda: resnet(50, stem="imagenet", width=8),
    "vit": lambda: vit_tiny(dim=64, depth=2, heads=2),
}


@pytest.mark.parametrize("name", list(SMALL_ENCODERS))
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    # eval(): with batch statistics, BN over a 1x1 map of 4 images amplifies float rounding
    # differences between the two conv algorithms; the layout itself must not change the maths.
    model = SMALL_ENCODERS[name]().eval()
    x = images(4)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18-cifar", "vit"])
def test_bf16_autocast_forward_backward(name):
    torch.manual_seed(0)
    model = SMALL_ENCODERS[name]()
    x = images(4).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (4, model.feature_dim)
    assert torch.isfinite(out.float()).all()
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bottleneck_under_bf16_autocast():
    model = SMALL_ENCODERS["resnet50-imagenet"]()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = model(images(2).to(memory_format=torch.channels_last))
    assert out.shape == (2, 256) and torch.isfinite(out.float()).all()


def test_heads_under_bf16_autocast():
    head, protos = swav_projector(16, 32, 8), Prototypes(8, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = protos(head(torch.randn(4, 16)))
    assert scores.shape == (4, 5) and torch.isfinite(scores.float()).all()


# --- Vision Transformer --------------------------------------------------------------------------


def test_vit_shapes_and_attention_rows():
    model = vit_tiny(depth=3)
    assert isinstance(model, VisionTransformer)
    assert model.feature_dim == 192 and model.num_patches == 64 and model.grid_size == 8
    x = images(2)
    assert model(x).shape == (2, 192)
    attn = model.attention_maps(x)
    assert attn.shape == (2, 3, 3, 65, 65)  # [B, depth, heads, N+1, N+1]
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 3, 65))
    assert (attn >= 0).all()
    last = model.attention_maps(x, layer=-1)
    assert last.shape == (2, 3, 65, 65)
    torch.testing.assert_close(last, attn[:, -1])


def test_vit_attention_does_not_change_forward():
    model = vit_tiny(dim=64, depth=2, heads=2).eval()
    x = images(2)
    with torch.no_grad():
        before = model(x)
        model.attention_maps(x)
        torch.testing.assert_close(model(x), before)


def test_vit_class_token_sees_every_patch():
    model = vit_tiny(dim=64, depth=2, heads=2).eval()
    x = images(1)
    y = x.clone()
    y[:, :, 28:, 28:] += 1.0  # change only the last (bottom-right) 4x4 patch
    with torch.no_grad():
        assert not torch.allclose(model(x), model(y))
        # Patchify is row-major, so exactly the last patch differs.
        diff = (model.patchify(x) - model.patchify(y)).abs().sum(-1)[0]
        assert diff.nonzero().flatten().tolist() == [63]


def test_vit_imagenet_size():
    model = vit_tiny(img_size=224, patch_size=16, dim=64, depth=1, heads=2)
    x = images(1, 224)
    assert model(x).shape == (1, 64)
    assert model.attention_maps(x, layer=0).shape == (1, 2, 197, 197)


def test_vit_rejects_bad_sizes():
    with pytest.raises(ValueError):
        vit_tiny(img_size=30, patch_size=4)
    with pytest.raises(ValueError):
        vit_tiny(dim=64, depth=1, heads=2)(images(1, 64))


# --- build_encoder -------------------------------------------------------------------------------


def test_build_encoder():
    model = build_encoder("resnet18", stem="cifar", width=8)
    assert isinstance(model, ResNet) and model.feature_dim == 64
    assert build_encoder("resnet34", width=8).feature_dim == 64
    assert build_encoder("resnet50", width=8, stem="imagenet").feature_dim == 256
    assert isinstance(build_encoder("vit_tiny", dim=32, depth=1, heads=2), VisionTransformer)


def test_build_encoder_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_encoder("resnet19")
    for name in ("resnet18", "resnet34", "resnet50", "vit_tiny"):
        assert name in str(info.value)
    assert set(ENCODERS) == {"resnet18", "resnet34", "resnet50", "vit_tiny"}


# --- Heads ---------------------------------------------------------------------------------------


def layer_counts(head):
    kinds = [type(m) for m in head]
    return kinds.count(nn.Linear), kinds.count(nn.BatchNorm1d), kinds.count(nn.ReLU)


IN, HID, OUT = 32, 48, 16

# constructor, expected (Linear, BN, ReLU), expected output dim, expected BN affine flags
HEADS = {
    "linear": (lambda: linear_projector(IN, OUT), (1, 0, 0), OUT, []),
    "simclr": (lambda: simclr_projector(IN, HID, OUT), (2, 1, 1), OUT, [True]),
    "simclr_last_bn": (lambda: simclr_projector(IN, HID, OUT, last_bn=True), (2, 2, 1), OUT, [True, True]),
    "moco_v2": (lambda: moco_v2_projector(IN, HID, OUT), (2, 0, 1), OUT, []),
    "byol_projector": (lambda: byol_projector(IN, HID, OUT), (2, 1, 1), OUT, [True]),
    "byol_predictor": (lambda: byol_predictor(OUT, HID), (2, 1, 1), OUT, [True]),
    "simsiam_projector": (lambda: simsiam_projector(IN, OUT, HID), (3, 3, 2), OUT, [True, True, False]),
    "simsiam_predictor": (lambda: simsiam_predictor(OUT, 8), (2, 1, 1), OUT, [True]),
    "swav": (lambda: swav_projector(IN, HID, OUT), (2, 1, 1), OUT, [True]),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_head_structure_and_shape(name):
    build, counts, out_dim, affine = HEADS[name]
    head = build()
    assert isinstance(head, nn.Sequential)
    assert layer_counts(head) == counts
    assert [m.affine for m in head if isinstance(m, nn.BatchNorm1d)] == affine
    assert not isinstance(head[-1], nn.ReLU)  # no head ends in a ReLU
    in_dim = head[0].in_features
    assert head(torch.randn(4, in_dim)).shape == (4, out_dim)


def test_head_order_and_bias():
    head = simclr_projector(IN, HID, OUT)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head[3].bias is not None  # bias only where no BN follows
    assert [type(m) for m in moco_v2_projector(IN, HID, OUT)] == [nn.Linear, nn.ReLU, nn.Linear]
    simsiam = simsiam_projector(IN, OUT, HID)
    assert all(m.bias is None for m in simsiam if isinstance(m, nn.Linear))
    assert isinstance(simsiam[-1], nn.BatchNorm1d) and simsiam[-1].weight is None


def test_default_head_dims():
    assert simclr_projector(512)[-1].out_features == 128
    assert byol_projector(512)[0].out_features == 4096 and byol_projector(512)[-1].out_features == 256
    pred = simsiam_predictor()
    assert (pred[0].in_features, pred[0].out_features, pred[-1].out_features) == (2048, 512, 2048)


def test_mlp_options():
    assert layer_counts(mlp(8, 16, 4, num_layers=1)) == (1, 0, 0)
    assert layer_counts(mlp(8, 16, 4, num_layers=4, hidden_bn=False)) == (4, 0, 3)
    assert all(m.bias is not None for m in mlp(8, 16, 4, bias=True) if isinstance(m, nn.Linear))
    assert all(m.bias is None for m in mlp(8, 16, 4, bias=False, hidden_bn=False) if isinstance(m, nn.Linear))
    with pytest.raises(ValueError):
        mlp(8, 16, 4, num_layers=0)


def test_prototypes_unit_rows():
    protos = Prototypes(16, 10)
    assert protos.weight.shape == (10, 16)
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(10))  # normalised at init
    with torch.no_grad():
        protos.weight.mul_(3.0).add_(0.1)
        protos.normalize_()
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(10))
    scores = protos(torch.randn(4, 16) * 5)
    assert scores.shape == (4, 10)
    assert scores.abs().max() <= 1 + 1e-5  # cosine similarities
    assert not any(n == "bias" for n, _ in protos.named_parameters())


# --- Determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: resnet(18, width=8),
        lambda: vit_tiny(dim=32, depth=1, heads=2),
        lambda: simsiam_projector(16, 8, 12),
        lambda: Prototypes(8, 5),
    ],
)
def test_same_seed_same_init(build):
    torch.manual_seed(123)
    a = build().state_dict()
    torch.manual_seed(123)
    b = build().state_dict()
    torch.manual_seed(124)
    c = build().state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)

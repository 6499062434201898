"""The Encoders chapter's pieces: the ViT SimCLR config, the two ResNet stems on 32 px images,
depth/width from a config, and ``eval.head_features`` (h before vs z after the projection head)."""

import torch

from conftest import tiny_dataset, tiny_encoder
from sslbook.config import load_config
from sslbook.eval import extract_features, head_features
from sslbook.models import VisionTransformer, resnet, simclr_projector
from sslbook.trainer import build_model


def test_simclr_vit_config_builds_a_vit_and_a_step_runs():
    cfg = load_config("cifar10/simclr_vit", ["profile=smoke"])
    assert cfg.model.encoder == "vit_tiny" and cfg.method == "simclr" and "et al" in cfg.paper
    assert cfg.optim.name == "adamw" and cfg.optim.weight_decay == 0.1  # MoCo v3's optimiser
    method = build_model(cfg)
    assert isinstance(method.backbone, VisionTransformer)
    assert method.backbone.grid_size == 8 and method.backbone.feature_dim == 192
    torch.manual_seed(0)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = method(views)
    assert torch.isfinite(out["loss"]) and out["z"].shape == (4, 128)
    out["loss"].backward()
    assert method.backbone.patch_embed.weight.grad is not None
    # the gpu profile keeps the file's recipe
    gpu = load_config("cifar10/simclr_vit", ["profile=gpu"])
    assert gpu.batch_size == 512 and gpu.optim.warmup_epochs == 10 and gpu.method_args["temperature"] == 0.2


def test_stems_feature_map_sizes_on_32px():
    x = torch.randn(2, 3, 32, 32)
    sizes = {}
    for stem in ("cifar", "imagenet"):
        maps = resnet(18, stem, width=4).eval().forward_maps(x)
        sizes[stem] = {name: tuple(m.shape[-2:]) for name, m in maps.items()}
    assert sizes["cifar"] == {
        "stem": (32, 32),
        "layer1": (32, 32),
        "layer2": (16, 16),
        "layer3": (8, 8),
        "layer4": (4, 4),
    }
    # 7x7 stride 2 and a stride-2 max-pool: 32 -> 8 before layer1, a single pixel at layer4
    assert sizes["imagenet"] == {"stem": (8, 8), "layer1": (8, 8), "layer2": (4, 4), "layer3": (2, 2), "layer4": (1, 1)}


def test_depth_width_and_stem_overrides_reach_the_encoder():
    base = build_model(load_config("cifar10/simclr", ["profile=smoke", "model.width=4"])).backbone
    deep = build_model(
        load_config(
            "cifar10/simclr", ["profile=smoke", "model.width=4", "model.encoder=resnet34", "model.stem=imagenet"]
        )
    ).backbone
    assert len(base.layer3) == 2 and len(deep.layer3) == 6  # ResNet-18 vs ResNet-34 blocks
    assert deep.conv1.kernel_size == (7, 7) and deep.conv1.stride == (2, 2)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    wide = resnet(18, "cifar", width=8)
    assert base.feature_dim == 32 and wide.feature_dim == 64
    # conv weights scale with width squared: doubling the width gives ~4x the parameters
    assert 3.9 < n(wide) / n(base) < 4.1 and n(deep) > 1.8 * n(base)


def test_head_features_are_backbone_then_head_in_eval_mode():
    torch.manual_seed(0)
    backbone, head = tiny_encoder(4), simclr_projector(32, 16, 8)
    backbone.train(), head.train()
    data = tiny_dataset(10, 16)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    h, z = head_features(backbone, head, data.images, mean, std, batch_size=4)
    assert h.shape == (10, 32) and z.shape == (10, 8) and h.dtype == z.dtype == torch.float32
    # flags are put back
    assert backbone.training and head.training
    # h is what extract_features gives for the backbone; z is the head applied to h in eval mode
    assert torch.allclose(h, extract_features(backbone, data.images, mean, std, batch_size=3), atol=1e-5)
    head.eval()
    with torch.no_grad():
        assert torch.allclose(z, head(h), atol=1e-5)
    # batch size does not matter in eval mode (BatchNorm uses its running statistics)
    head.train()
    h2, z2 = head_features(backbone, head, data.images, mean, std, batch_size=10)
    assert torch.allclose(h, h2, atol=1e-5) and torch.allclose(z, z2, atol=1e-5)

"""model.stem_kernel: a larger first-layer kernel through the config (to look at learned filters)."""

from __future__ import annotations

import pytest
import torch

from sslbook.config import ConfigError, load_config, shipped_configs
from sslbook.trainer import build_model

torch.set_num_threads(1)

BASE = ["profile=smoke", "model.width=4"]


@pytest.mark.parametrize("kernel", [5, 7])
def test_stem_kernel_override_builds_that_stem(kernel):
    cfg = load_config("cifar10/simclr", [*BASE, f"model.stem_kernel={kernel}"])
    conv = build_model(cfg).backbone.conv1
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (1, 1) and conv.padding == (kernel // 2,) * 2
    # "same" padding: a 32 px image keeps its size through the stem
    assert conv(torch.zeros(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_stem_kernel_default_is_the_stems_own():
    assert load_config("cifar10/simclr", BASE).model.stem_kernel is None
    assert build_model(load_config("cifar10/simclr", BASE)).backbone.conv1.kernel_size == (3, 3)
    imagenet = load_config("cifar10/simclr", [*BASE, "model.stem=imagenet"])
    assert build_model(imagenet).backbone.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("4", "positive odd number"),
        ("0", "positive odd number"),
        ("-3", "positive odd number"),
        ("big", "must be int or null"),
    ],
)
def test_bad_stem_kernel_is_a_one_line_error(bad, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config("cifar10/simclr", [*BASE, f"model.stem_kernel={bad}"])
    assert "stem_kernel" in str(info.value) and "\n" not in str(info.value)


def test_stem_kernel_is_for_resnets_only():
    with pytest.raises(ConfigError, match="stem_kernel.*vit_tiny"):
        load_config("cifar10/simclr", [*BASE, "model.encoder=vit_tiny", "model.stem_kernel=7"])


def test_old_configs_without_the_key_compare_equal():
    """A run saved before stem_kernel existed is still the same config (bench reuses it)."""
    from sslbook.bench import config_differences
    from sslbook.config import to_dict

    cfg = load_config("cifar10/simclr", BASE)
    old = to_dict(cfg)
    del old["model"]["stem_kernel"]
    assert config_differences(old, cfg) == []
    new = load_config("cifar10/simclr", [*BASE, "model.stem_kernel=7"])
    assert any("stem_kernel" in d for d in config_differences(old, new))


def test_detection_configs_are_not_pretraining_configs():
    assert shipped_configs() and not any(name.startswith("detection/") for name in shipped_configs())


def test_a_stem_kernel_run_trains_and_reloads_with_its_kernel(tmp_path):
    from conftest import tiny_datasets, tiny_run_config
    from sslbook.trainer import CHECKPOINT, method_from_checkpoint, train

    cfg = tiny_run_config(tmp_path, "model.stem_kernel=5", "epochs=1")
    run = train(cfg, datasets=tiny_datasets())
    assert run.method.backbone.conv1.kernel_size == (5, 5)
    method, loaded = method_from_checkpoint(run.out_dir / CHECKPOINT)
    assert loaded.model.stem_kernel == 5 and method.backbone.conv1.kernel_size == (5, 5)
    torch.testing.assert_close(method.backbone.conv1.weight, run.method.backbone.conv1.weight.detach())

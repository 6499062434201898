from pathlib import Path

import pytest

from sslbook.config import ConfigError, from_dict, load_config, to_dict

CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "sslbook" / "configs").rglob("*.yaml")
    if p.parent.name not in ("detection", "segmentation")
)  # downstream: sslbook.voc, sslbook.dense


def test_defaults_are_simclr_cifar10():
    cfg = load_config(profile="gpu")
    assert cfg.method == "simclr" and cfg.data.dataset == "cifar10" and cfg.model.stem == "cifar"


def test_overrides_and_types():
    cfg = load_config(
        None,
        [
            "optim.lr=0.3",
            "epochs=7",
            "method_args.temperature=0.2",
            "data.root=/x",
            "precision=bf16",
            "max_minutes=null",
        ],
        profile="gpu",
    )
    assert cfg.optim.lr == 0.3 and cfg.epochs == 7 and cfg.method_args == {"temperature": 0.2}
    assert cfg.data.root == "/x" and cfg.precision == "bf16" and cfg.max_minutes is None


def test_unknown_key_lists_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.lrr' \(did you mean 'lr'\?\); valid keys: name, lr"
    ):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'epoch'.*'epochs'"):
        load_config(None, ["epoch=3"])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: simclr\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'.*batch_size"):
        load_config(path)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"config key 'optim.lr' must be float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"config key 'batch_size' must be int"):
        load_config(None, ["batch_size=1.5"])


def test_bad_choice_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="'precision' must be one of fp32, bf16, fp16"):
        load_config(None, ["precision=fp8"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["epochs"])


def test_detection_and_segmentation_configs_share_the_file_checks(tmp_path):
    from sslbook.dense import load_segmentation_config
    from sslbook.voc import load_detection_config

    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    (tmp_path / "fpn.yaml").write_text("kind: fpn\nmax_iter: 7\n")
    with pytest.raises(ConfigError, match=r"list\.yaml must hold a mapping of detection config keys, not list$"):
        load_detection_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"list\.yaml must hold a mapping of segmentation config keys, not list$"):
        load_segmentation_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML"):
        load_detection_config(tmp_path / "broken.yaml")
    cfg = load_detection_config(tmp_path / "fpn.yaml", ["max_iter=9"])  # the file, then the overrides
    assert cfg.kind == "fpn" and cfg.max_iter == 9


def test_profile_shrinks_but_overrides_win():
    cfg = load_config(None, ["profile=smoke"])
    assert cfg.profile == "smoke" and cfg.model.width == 8 and cfg.data.train_images == 512
    cfg = load_config(None, ["profile=cpu", "model.width=32", "max_minutes=10"])
    assert cfg.model.width == 32 and cfg.max_minutes == 10 and cfg.batch_size == 256
    gpu = load_config(None, profile="gpu")
    assert gpu.model.width == 64 and gpu.max_minutes is None


def test_round_trip():
    cfg = load_config(None, ["optim.betas=[0.8, 0.9]"], profile="cpu")
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_shipped_configs_load_and_name_their_paper(path):
    cfg = load_config(path, profile="gpu")
    assert cfg.paper, f"{path} must name the paper its hyper-parameters come from"
    assert "et al" in cfg.paper, f"{path}: paper should name the authors (e.g. Chen et al. 2020)"


def test_shipped_config_by_name():
    cfg = load_config("cifar10/simclr", profile="gpu")
    assert cfg.method == "simclr" and cfg.batch_size == 512
    with pytest.raises(ConfigError, match="shipped configs: .*cifar10/simclr"):
        load_config("cifar10/simclr_typo")


def test_cpu_profile_picks_fast_cpu_settings(monkeypatch):
    import sslbook.config as config

    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: True)
    cfg = load_config(None, ["profile=cpu"])
    assert cfg.channels_last and cfg.precision == "bf16"
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: False)
    assert load_config(None, ["profile=cpu"]).precision == "fp32"
    assert load_config(None, ["profile=cpu", "precision=fp32", "channels_last=false"]).channels_last is False
    assert load_config(None, ["profile=smoke"]).precision == "fp32"


def test_bf16_only_where_the_cpu_has_it_in_hardware(tmp_path):
    """oneDNN emulates bf16 on AVX-512 CPUs without avx512_bf16 (2.4x slower than fp32 here), so the
    CPU's flags decide; the oneDNN check alone would say yes."""
    import torch

    from sslbook.config import cpu_has_native_bf16

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 on this CPU at all")
    emulated = tmp_path / "emulated"
    emulated.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw avx512_vnni\n")
    native = tmp_path / "native"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw avx512_bf16 amx_tile\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert not cpu_has_native_bf16(emulated)
    assert cpu_has_native_bf16(native) and cpu_has_native_bf16(arm)
    assert cpu_has_native_bf16(tmp_path / "missing")  # no flag list: oneDNN's answer


RECIPES = """\
method: simclr
paper: Chen et al. 2020
method_args: {hidden_dim: 512, temperature: 0.5}
batch_size: 1024
optim: {lr: 0.3, weight_decay: 1.0e-6}
profiles:
  cpu: {batch_size: 128, optim: {lr: 5e-1}, method_args: {temperature: 0.2}, model: {width: 24}}
  smoke: {epochs: 1}
"""


def test_a_profile_recipe_applies_after_the_profile_and_before_overrides(tmp_path):
    import yaml

    from sslbook.config import save_config

    path = tmp_path / "recipes.yaml"
    path.write_text(RECIPES)
    cpu = load_config(path, profile="cpu")
    assert (cpu.batch_size, cpu.optim.lr, cpu.optim.weight_decay, cpu.model.width) == (128, 0.5, 1e-6, 24)
    assert cpu.method_args == {"hidden_dim": 512, "temperature": 0.2}  # merged into the file's
    assert cpu.max_minutes == 5.0  # the rest of the cpu profile's shrinking stays
    assert load_config(path, ["optim.lr=0.1", "model.width=8"], profile="cpu").optim.lr == 0.1  # overrides win
    gpu = load_config(path, profile="gpu")  # no recipe for gpu: the file's own values
    assert (gpu.batch_size, gpu.optim.lr, gpu.model.width, gpu.method_args["temperature"]) == (1024, 0.3, 64, 0.5)
    # The saved config is the resolved one: no profiles key, and it loads back to the same config.
    save_config(cpu, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "profiles" not in saved and to_dict(from_dict(saved)) == to_dict(cpu)
    assert load_config(tmp_path / "config.yaml", profile="gpu").batch_size == 128


@pytest.mark.parametrize(
    "recipes, message",
    [
        (
            "profiles: {cpu: {optim: {lrr: 0.1}}}",
            r"unknown config key 'profiles.cpu.optim.lrr' \(did you mean 'lr'\?\)",
        ),
        ("profiles: {cpu: {batch_size: big}}", r"config key 'profiles.cpu.batch_size' must be int, got 'big'"),
        (
            "profiles: {laptop: {batch_size: 8}}",
            r"'profiles' names unknown profiles \['laptop'\]; valid: smoke, cpu, gpu",
        ),
        ("profiles: {cpu: {profile: gpu}}", r"'profiles.cpu.profile' cannot be set inside a profile's recipe"),
        ("profiles: [cpu]", r"'profiles' must map profile names to mappings"),
    ],
)
def test_profile_recipes_are_checked(tmp_path, recipes, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"method: simclr\n{recipes}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, profile="cpu")

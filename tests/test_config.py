from pathlib import Path

import pytest

from sslbook.config import ConfigError, load_config, from_dict, to_dict

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "sslbook" / "configs").rglob("*.yaml")
                 if p.parent.name != "detection")  # detection configs: sslbook.voc, tests/test_detection.py


def test_defaults_are_simclr_cifar10():
    cfg = load_config(profile="gpu")
    assert cfg.method == "simclr" and cfg.data.dataset == "cifar10" and cfg.model.stem == "cifar"


def test_overrides_and_types():
    cfg = load_config(None, ["optim.lr=0.3", "epochs=7", "method_args.temperature=0.2", "data.root=/x",
                             "precision=bf16", "max_minutes=null"], profile="gpu")
    assert cfg.optim.lr == 0.3 and cfg.epochs == 7 and cfg.method_args == {"temperature": 0.2}
    assert cfg.data.root == "/x" and cfg.precision == "bf16" and cfg.max_minutes is None


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr' \(did you mean 'lr'\?\); valid keys: name, lr"):
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

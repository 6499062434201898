import pytest
import torch

from sslbook.profiles import PROFILES, get_profile


def test_env_var_overrides(monkeypatch):
    for name in PROFILES:
        monkeypatch.setenv("SSLBOOK_PROFILE", name)
        assert get_profile().name == name
    monkeypatch.setenv("SSLBOOK_PROFILE", " CPU ")
    assert get_profile().name == "cpu"


def test_auto_selection(monkeypatch):
    monkeypatch.delenv("SSLBOOK_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_profile().name == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_profile().name == "cpu"


def test_explicit_name_wins(monkeypatch):
    monkeypatch.setenv("SSLBOOK_PROFILE", "gpu")
    assert get_profile("smoke").name == "smoke"


def test_unknown_profile(monkeypatch):
    monkeypatch.setenv("SSLBOOK_PROFILE", "tpu")
    with pytest.raises(ValueError, match="SSLBOOK_PROFILE to one of smoke, cpu, gpu"):
        get_profile()


def test_profiles_scale_up():
    smoke, cpu, gpu = PROFILES["smoke"], PROFILES["cpu"], PROFILES["gpu"]
    assert smoke.encoder_width < cpu.encoder_width < gpu.encoder_width == 64
    assert smoke.train_images is not None and cpu.train_images is None
    assert smoke.subset(50000) == smoke.train_images and cpu.subset(50000) == 50000
    assert smoke.subset(10000, "test") == smoke.test_images


def test_unknown_profile_names_where_it_came_from(monkeypatch):
    monkeypatch.delenv("SSLBOOK_PROFILE", raising=False)
    message = r"^unknown profile 'tpu' \(from profile\): set profile to one of smoke, cpu, gpu$"
    with pytest.raises(ValueError, match=message):
        get_profile("tpu")
    monkeypatch.setenv("SSLBOOK_PROFILE", "tpu")
    with pytest.raises(ValueError, match=r"\(from SSLBOOK_PROFILE\): set SSLBOOK_PROFILE to one of"):
        get_profile()

"""Reliability (issue 17): no code runs from a checkpoint, no non-finite checkpoint is kept, and every
bad input gets one clear line (``error: ...``, exit code 2)."""

import builtins
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_datasets, tiny_encoder, tiny_run_config, write_cifar_fixture
from sslbook.__main__ import main
from sslbook.config import ConfigError
from sslbook.methods.simclr import SimCLR
from sslbook.trainer import TrainingDiverged, read_checkpoint, train, warn_if_chance


class Payload:
    """An object whose unpickling runs code: here it creates ``marker`` (a real attack would do worse)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def crafted_checkpoint(tmp_path):
    """A file that looks like an sslbook checkpoint but carries a payload; and the marker it would create."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "crafted.pt"
    torch.save({"format": "sslbook-checkpoint-1", "config": {}, "method": Payload(marker)}, path)
    return path, marker


def test_eval_refuses_a_crafted_checkpoint_without_running_it(tmp_path):
    path, marker = crafted_checkpoint(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "sslbook", "eval", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and err.startswith(f"error: checkpoint {path} holds io.open, not only tensors")
    assert "could run code" in err
    assert not marker.exists()


def test_train_resume_refuses_a_crafted_checkpoint_without_running_it(tmp_path, capsys):
    path, marker = crafted_checkpoint(tmp_path)
    write_cifar_fixture(tmp_path / "data")
    code = main(
        [
            "train",
            "profile=smoke",
            f"data.root={tmp_path / 'data'}",
            "model.width=4",
            "batch_size=16",
            "progress=false",
            f"out_dir={tmp_path / 'run'}",
            f"resume={path}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: checkpoint {path} holds io.open") and not marker.exists()


def test_own_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    train(tiny_run_config(tmp_path, "max_steps=2"), datasets=tiny_datasets())
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # no allowlist needed
    assert ckpt["rng"]["numpy"]["name"] == "MT19937" and ckpt["rng"]["numpy"]["keys"].shape == (624,)
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]["step"] == 2


# --------------------------------------------------------------------------- 2. the NaN guard
def test_a_diverging_run_keeps_only_finite_checkpoints_and_names_the_step(tmp_path):
    # lr 1e6 blows the BatchNorm statistics up to inf while the (normalised) loss stays finite; log_every=3
    # does not divide the 4 steps of an epoch, so a check at logging points only would save them.
    cfg = tiny_run_config(tmp_path, "optim.lr=1e6", "epochs=3", "log_every=3", "eval_every=1")
    with pytest.raises(
        TrainingDiverged,
        match=r"tensors of the model \(e.g. .*\) are not finite by step 8; "
        r"stopped, the last good checkpoint, of step 4 \(.*\), is kept",
    ):
        train(cfg, datasets=tiny_datasets())
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


class NaNFromStep2(SimCLR):
    def forward(self, views, index=None):
        out = super().forward(views, index)
        self.calls = getattr(self, "calls", 0) + 1
        return {**out, "loss": out["loss"] * float("nan")} if self.calls >= 2 else out


def test_a_nan_before_the_first_checkpoint_says_none_was_kept(tmp_path):
    with pytest.raises(
        TrainingDiverged,
        match="^loss became nan at step 2; stopped, no checkpoint of this run was written before it. Lower optim.lr",
    ):
        train(tiny_run_config(tmp_path), method=NaNFromStep2(tiny_encoder()), datasets=tiny_datasets())
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_knn_monitor_warns_at_chance():
    with pytest.warns(RuntimeWarning, match=r"knn200_top1=10.5% is at chance \(10.0% for 10 classes, \+-0.6 on 10000"):
        warn_if_chance({"knn200_top1": 10.5}, num_classes=10, num_test=10000)  # 2 s.e. = 0.6 points
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_chance({"knn200_top1": 10.5}, num_classes=10, num_test=100000)  # 2 s.e. = 0.19 points


# --------------------------------------------------------------------------- 3. every user error: one line, exit 2
def cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err[len("error: ") :]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", "config key 'optim.lr' must be positive, got -1.0"),
        ("seed=-1", "config key 'seed' must be in [0, 2**32), got -1"),
        ("seed=4294967296", "config key 'seed' must be in [0, 2**32), got 4294967296"),
        ("epochs=0", "config key 'epochs' must be positive, got 0"),
        ("max_minutes=-1", "config key 'max_minutes' must be positive, got -1"),
        ("max_steps=0", "config key 'max_steps' must be positive, got 0"),
        ("batch_size=0", "config key 'batch_size' must be positive, got 0"),
        ("profile=foo", "unknown profile 'foo' (from profile): set profile to one of smoke, cpu, gpu"),
        ("model.encoder=vgg", "config key 'model.encoder' must be one of resnet18, resnet34, resnet50, vit_tiny"),
    ],
)
def test_out_of_range_values_are_one_line(tmp_path, capsys, override, message):
    assert cli_error(capsys, ["train", override, f"out_dir={tmp_path / 'r'}"]).startswith(message)


def test_unknown_profile_in_the_environment_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SSLBOOK_PROFILE", "foo")
    assert (
        cli_error(capsys, ["train", f"out_dir={tmp_path / 'r'}"])
        == "unknown profile 'foo' (from SSLBOOK_PROFILE): set SSLBOOK_PROFILE to one of smoke, cpu, gpu"
    )


def test_bench_refuses_a_negative_budget(capsys):
    assert (
        cli_error(capsys, ["bench", "--configs", "cifar10/simclr", "--minutes", "-1"])
        == "--minutes must be a positive number of minutes per method, got -1"
    )


def smoke_argv(tmp_path, *overrides):
    write_cifar_fixture(tmp_path / "data")  # 100 training images
    return [
        "train",
        "profile=smoke",
        f"data.root={tmp_path / 'data'}",
        "model.width=4",
        "batch_size=16",
        "progress=false",
        "verbose=false",
        "eval_every=0",
        "final_eval=false",
        f"out_dir={tmp_path / 'run'}",
        *overrides,
    ]


def test_a_batch_larger_than_the_data_is_one_line(tmp_path, capsys):
    assert (
        cli_error(capsys, smoke_argv(tmp_path, "batch_size=128"))
        == "batch_size 128 is larger than the 100 training images; lower batch_size or use more images "
        "(data.train_images)"
    )


def test_resume_names_every_network_key_that_differs(tmp_path, capsys):
    assert main(smoke_argv(tmp_path, "max_steps=1")) == 0
    capsys.readouterr()
    err = cli_error(capsys, smoke_argv(tmp_path, "resume=auto", "method_args.out_dim=32", "model.width=8"))
    assert err.startswith(
        f"{tmp_path / 'run' / 'checkpoint.pt'} holds a different network "
        "(method_args.out_dim=(unset) there, 32 here; model.width=4 there, 8 here)"
    )


def test_a_bad_method_argument_value_is_one_line(tmp_path, capsys):
    err = cli_error(capsys, smoke_argv(tmp_path, "method=instdisc", "method_args.loss=hinge"))
    assert err.startswith("instdisc with method_args {'loss': 'hinge'}: ")


def test_a_bad_image_in_a_worker_is_one_line(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "images" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * c, 30 * i, 90)).save(folder / f"{i}.png")
    bad = tmp_path / "images" / "train" / "c1" / "3.png"
    bad.write_bytes(b"not a png")
    err = cli_error(
        capsys,
        [
            "train",
            "cifar10/simclr",
            "data.dataset=imagefolder",
            f"data.root={tmp_path / 'images'}",
            "data.load_size=36",
            "data.crop_size=32",
            "data.num_workers=1",
            "model.width=4",
            "batch_size=8",
            "profile=gpu",
            "progress=false",
            f"out_dir={tmp_path / 'run'}",
            "max_steps=1",
        ],
    )
    assert err.startswith(f"cannot decode {bad} as an image (") and err.endswith("remove or replace that file")


def test_scientific_notation_in_overrides_and_yaml(tmp_path):
    from sslbook.config import load_config

    cfg = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=1.0e6", "max_minutes=2E1"], profile="gpu")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.max_minutes) == (0.001, 1e6, 20.0)
    path = tmp_path / "c.yaml"
    path.write_text("method: simclr\npaper: x et al\noptim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")  # YAML 1.1: strings
    cfg = load_config(path, profile="gpu")
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.001, 0.0005)
    with pytest.raises(ConfigError, match="config key 'optim.lr' must be float, got '1e-3x'"):
        load_config(None, ["optim.lr=1e-3x"])
    # method_args have no types in the config: strings with an exponent are numbers there too
    cfg = load_config(None, ["method_args.temperature=2e-1"], profile="gpu")
    assert cfg.method_args == {"temperature": 0.2}
    from sslbook.config import exponent_floats

    assert exponent_floats({"a": ["1e3", "e5", "1.5"], "b": "-2.5E-2"}) == {"a": [1000.0, "e5", "1.5"], "b": -0.025}
    path.write_text("method: simclr\nmethod_args: {temperature: 1.0e-1}\n")
    assert load_config(path, profile="gpu").method_args == {"temperature": 0.1}


class CrashAtStep7(SimCLR):
    """A run that dies (as a killed process would) after logging steps 5 and 6, past the step-4 checkpoint."""

    def forward(self, views, index=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 7:
            raise KeyboardInterrupt
        return super().forward(views, index)


def test_resume_cuts_the_metrics_back_to_the_checkpoint(tmp_path):
    cfg = tiny_run_config(tmp_path, "epochs=3", "log_every=1")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, method=CrashAtStep7(tiny_encoder()), datasets=tiny_datasets())
    assert [
        r["step"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ] == [1, 2, 3, 4, 5, 6]
    result = train(tiny_run_config(tmp_path, "epochs=3", "log_every=1", "resume=auto"), datasets=tiny_datasets())
    assert [r["step"] for r in result.log() if "loss" in r] == list(range(1, 13))


def test_the_checkpoint_is_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    import sslbook.trainer as trainer

    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        trainer.os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(trainer.os, "replace", lambda a, b: calls.append(("replace", str(b))) or real_replace(a, b))
    train(tiny_run_config(tmp_path, "max_steps=1", "final_eval=false"), datasets=tiny_datasets())
    run = tmp_path / "run"
    i = calls.index(("replace", str(run / "checkpoint.pt")))
    assert calls[i - 1] == ("fsync", str(run / "checkpoint.tmp")) and calls[i + 1] == ("fsync", str(run))


def _mean_worker(rank, world, out_dir):
    from sslbook import distributed

    loss = torch.tensor(float(rank + 1))  # rank 0 sees 1.0, rank 1 sees 2.0
    torch.save(distributed.mean_over_processes(loss), Path(out_dir) / f"mean{rank}.pt")
    assert loss.item() == rank + 1  # not changed in place


def test_the_logged_loss_is_the_mean_over_processes(tmp_path):
    from test_distributed import run_processes

    from sslbook import distributed

    x = torch.tensor(3.0)
    assert distributed.mean_over_processes(x) is x  # one process: the identity
    run_processes(_mean_worker, str(tmp_path))
    assert [torch.load(tmp_path / f"mean{r}.pt").item() for r in range(2)] == [1.5, 1.5]


def test_checkpoints_with_the_first_rng_layout_still_resume(tmp_path, monkeypatch):
    """Checkpoints written before the RNG states became tensors hold numpy's state tuple (with an array)
    and Python's tuple; they load through torch's allowlist for numpy arrays, and resume."""
    import random

    import numpy as np

    import sslbook.trainer as trainer

    def old_layout():
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}

    monkeypatch.setattr(trainer, "rng_state", old_layout)
    train(tiny_run_config(tmp_path, "max_steps=2", "final_eval=false"), datasets=tiny_datasets())
    monkeypatch.undo()
    assert isinstance(read_checkpoint(tmp_path / "run" / "checkpoint.pt")["rng"]["numpy"], tuple)
    resumed = train(
        tiny_run_config(tmp_path, "max_steps=4", "resume=auto", "final_eval=false"), datasets=tiny_datasets()
    )
    assert resumed.results["steps"] == 4


def test_the_gpu_path_of_the_guard_flags_on_device_and_raises_when_read(tmp_path):
    from sslbook.trainer import DivergenceGuard

    guard = DivergenceGuard("cpu", tmp_path / "checkpoint.pt", saved_step=4)
    guard.lazy = True  # what it does on CUDA: no host sync per step
    guard.observe(torch.tensor(1.0), 5)
    guard.observe(torch.tensor(float("inf")), 6)  # not raised here ...
    guard.observe(torch.tensor(float("nan")), 7)
    with pytest.raises(
        TrainingDiverged,
        match=r"^loss became not finite at step 6; stopped, the last good "
        r"checkpoint, of step 4 \(.*checkpoint.pt\), is kept",
    ):
        guard.check()  # ... but before the next log line, evaluation or checkpoint, naming the first bad step


def test_a_checkpoint_that_does_not_fit_its_config_is_one_line(tmp_path, capsys):
    train(tiny_run_config(tmp_path, "max_steps=1", "final_eval=false"), datasets=tiny_datasets())
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["model"]["width"] = 8  # edited by hand: the weights are width 4
    torch.save(ckpt, tmp_path / "edited.pt")
    err = cli_error(capsys, ["eval", str(tmp_path / "edited.pt")])
    assert err.startswith(f"{tmp_path / 'edited.pt'} does not fit the network its config builds (Error(s) in loading")


def test_strided_convolutions_of_1x1_maps_have_correct_gradients_in_bf16_channels_last():
    """The oneDNN bug the NaN guard found (jigsaw/CPC tests on 16 px images, layer4 on 1x1 maps): the
    weight gradient of a strided conv of a 1x1 input in bf16 + channels_last was wrong or non-finite.
    models.Conv2d runs such a conv with stride 1, which is the same function."""
    from torch import nn

    from sslbook.models import Conv2d

    torch.manual_seed(0)
    for _ in range(20):
        conv = Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        x = torch.randn(72, 16, 1, 1)
        reference = nn.functional.conv2d(x, conv.weight, stride=2, padding=1)  # fp32, torch's strided conv
        assert torch.equal(conv(x), reference)
        reference.pow(2).mean().backward()
        expected, conv.weight.grad = conv.weight.grad.clone(), None
        conv = conv.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x.contiguous(memory_format=torch.channels_last))
        out.float().pow(2).mean().backward()
        assert torch.isfinite(conv.weight.grad).all()
        torch.testing.assert_close(conv.weight.grad, expected, rtol=0.05, atol=0.02 * expected.abs().max().item())


def test_divergence_guard_ignores_sentinel_buffers_but_not_running_statistics(tmp_path):
    """InstDisc's log Z is NaN until estimated (a sentinel, not a divergence); a BatchNorm running
    variance that overflowed is a divergence."""
    from sslbook.methods import build_method
    from sslbook.models import build_encoder
    from sslbook.trainer import DivergenceGuard

    method = build_method("instdisc", build_encoder("resnet18", width=4), num_data=8)
    assert torch.isnan(method.log_z)
    guard = DivergenceGuard("cpu", tmp_path / "checkpoint.pt", saved_step=3)
    guard.check(method, step=4)  # no error: log_z is a sentinel
    method.backbone.bn1.running_var.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"backbone.bn1.running_var\) are not finite by step 4"):
        guard.check(method, step=4)

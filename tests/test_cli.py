import json
import subprocess
import sys

import pytest

from conftest import ROOT, write_cifar_fixture
from sslbook.__main__ import main


def test_train_then_eval_from_the_cli(tmp_path, capsys):
    write_cifar_fixture(tmp_path / "data", n_per_batch=40)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "cifar10/simclr",
            "profile=smoke",
            f"data.root={tmp_path / 'data'}",
            "model.width=4",
            "batch_size=32",
            f"out_dir={out}",
            "progress=false",
            "data.train_images=null",
            "data.test_images=null",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "simclr" and results["steps"] == 6 and "knn200_top1" in results
    assert (
        main(
            [
                "eval",
                str(out / "checkpoint.pt"),
                "--linear",
                "--linear-epochs",
                "2",
                "--data-root",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"knn200_top1", "knn20_top1", "linear_top1"} <= set(evaluation)
    assert evaluation["knn200_top1"] == pytest.approx(results["knn200_top1"])  # same features, same protocol


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'optim.lrr'") and "\n" not in err
    assert (
        main(
            ["train", "profile=smoke", f"data.root={tmp_path / 'empty'}", "progress=false", f"out_dir={tmp_path / 'r'}"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "SSLBOOK_DATA" in err and "\n" not in err
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert main(["eval", str(tmp_path / "bad.pt")]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "sslbook", "train", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and "key=value" in proc.stdout


def test_imagenet_config_runs_one_step_on_a_tiny_image_folder(tmp_path):
    """The ImageNet recipe (ResNet-50, LARS, bf16, channels_last) on a generated ImageFolder at low resolution."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "imagenet" / split / f"n0{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (50 + 3 * i, 40), (60 * c, 30 * i, 90)).save(folder / f"{i}.JPEG")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "imagenet/simclr",
            f"data.root={tmp_path / 'imagenet'}",
            "data.load_size=40",
            "data.crop_size=32",
            "data.num_workers=0",
            "model.width=8",
            "batch_size=8",
            "sync_bn=false",
            "profile=gpu",
            f"out_dir={out}",
            "progress=false",
            "max_steps=1",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 1 and results["encoder"] == "resnet50-w8-imagenet"
    assert 0 <= results["knn200_top1"] <= 100


def test_unknown_method_and_method_args_are_config_errors(tmp_path, capsys):
    assert main(["train", "method=simclrr", "profile=smoke", f"out_dir={tmp_path / 'a'}"]) == 2
    assert "unknown method 'simclrr'; valid methods: simclr" in capsys.readouterr().err
    assert main(["train", "method_args.temprature=0.1", "profile=smoke", f"out_dir={tmp_path / 'b'}"]) == 2
    assert (
        "unknown method_args ['temprature'] for simclr; valid keys: hidden_dim, out_dim, temperature"
        in capsys.readouterr().err
    )

"""The model zoo (sslbook.zoo) on a tiny CIFAR-10 in the smoke profile, in a temporary zoo folder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import tiny_encoder, write_cifar_fixture
from sslbook import zoo
from sslbook.config import from_dict
from sslbook.methods.moco import MoCo
from sslbook.methods.supervised import Supervised
from sslbook.models import build_encoder

pytestmark = pytest.mark.filterwarnings("ignore:kNN accuracy")  # tiny random data: chance-level kNN is expected


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo-data")
    write_cifar_fixture(root, n_per_batch=20)  # 100 training and 20 test images
    return root


def settings(data_root, *extra):
    """Overrides that shrink an entry to seconds: 100 images, width 4, batch 16 (6 steps per epoch)."""
    return [
        "profile=smoke",
        f"data.root={data_root}",
        "data.train_images=null",
        "data.test_images=null",
        "model.width=4",
        "batch_size=16",
        "eval_every=1",
        "progress=false",
        "verbose=false",
        *extra,
    ]


def cli(root, data_root, *args, extra=()):
    return zoo.main([*args, "--root", str(root), "--set", *settings(data_root, *extra)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A zoo with a finished one-epoch simclr entry."""
    root = tmp_path_factory.mktemp("zoo")
    assert cli(root, data_root, "simclr", "--epochs", "1") == 0
    return root


def test_entry_has_the_documented_files_and_results(trained):
    folder = trained / "cifar10-smoke" / "simclr"
    assert {p.name for p in folder.iterdir()} == {"config.yaml", "metrics.jsonl", "results.json", "simclr.pt", "run"}
    res = json.loads((folder / "results.json").read_text())
    for key in ("knn200_top1", "knn20_top1", "linear_top1"):
        assert 0 <= res[key] <= 100
    assert res["epochs"] == 1 and res["steps"] == 6 and res["train_minutes"] > 0 and res["images_per_s"] > 0
    assert len(res["load_average"]["start"]) == 3 and len(res["load_average"]["end"]) == 3
    assert res["date"] and res["command"].startswith("python -m sslbook zoo simclr --epochs 1 --set profile=smoke")
    log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"]["epoch"] for r in log if "eval" in r] == []  # 1 epoch: the final evaluation stands in
    assert log[-1]["final"]["knn200_top1"] == res["knn200_top1"]
    assert zoo.results("simclr", trained, profile="smoke") == res


def test_weights_load_into_the_encoder_its_config_builds(trained):
    folder = trained / "cifar10-smoke" / "simclr"
    weights = torch.load(folder / "simclr.pt", map_location="cpu", weights_only=True)
    state = weights["state_dict"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    cfg = from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    encoder = build_encoder(cfg.model.encoder, width=cfg.model.width, stem=cfg.model.stem)
    own = encoder.state_dict()
    backbone = {
        k.removeprefix("backbone."): v.to(own[k.removeprefix("backbone.")].dtype)
        for k, v in state.items()
        if k.startswith("backbone.")
    }
    encoder.load_state_dict(backbone)  # strict: every key of the encoder, and nothing else
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loaded = zoo.load_backbone("simclr", trained, profile="smoke")
    assert torch.equal(encoder.eval()(images), loaded(images))
    # The trained network, rounded to fp16, is what was exported.
    ckpt = torch.load(folder / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    for key, value in ckpt["method"].items():
        if value.is_floating_point():
            assert torch.equal(state[key], value.half()), key


def test_finished_entries_are_reused(trained, data_root, capsys):
    weights = trained / "cifar10-smoke" / "simclr" / "simclr.pt"
    before = weights.stat().st_mtime_ns
    assert cli(trained, data_root, "simclr", "--epochs", "1") == 0
    out = capsys.readouterr().out
    res = zoo.results("simclr", trained, profile="smoke")
    assert f"simclr: finished, {res['train_minutes']:.1f} min, kNN {res['knn200_top1']:.1f}%" in out
    assert "training" not in out and weights.stat().st_mtime_ns == before


def test_refuses_other_settings_unless_forced(tmp_path, data_root, capsys):
    assert cli(tmp_path, data_root, "simclr", "--epochs", "1") == 0
    capsys.readouterr()
    assert cli(tmp_path, data_root, "simclr", "--epochs", "2", extra=["optim.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: zoo entry simclr in ") and "\n" not in err
    assert "other settings (epochs: 1 -> 2; optim.lr: 0.06 -> 0.1); pass --force to retrain it" in err
    assert zoo.results("simclr", tmp_path, profile="smoke")["epochs"] == 1  # untouched
    assert cli(tmp_path, data_root, "simclr", "--epochs", "2", "--force", extra=["optim.lr=0.1"]) == 0
    res = zoo.results("simclr", tmp_path, profile="smoke")
    assert res["epochs"] == 2 and res["steps"] == 12 and len(res["sittings"]) == 1


def test_interrupted_and_resumed_entry_equals_an_uninterrupted_one(tmp_path, data_root, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli(whole, data_root, "simclr", "--epochs", "2") == 0
    assert cli(split, data_root, "simclr", "--epochs", "2", extra=["max_steps=5"]) == 0  # stops mid-epoch 1
    assert "stopped at step 5 of 12" in capsys.readouterr().out
    assert zoo.status("simclr", 2, settings(data_root), split) == "simclr: unfinished, step 5 of 12"
    with pytest.raises(zoo.ZooError, match="not trained"):
        zoo.results("simclr", split, profile="smoke")
    assert cli(split, data_root, "simclr", "--epochs", "2", "--note", "tests ran meanwhile") == 0
    assert "resuming" in capsys.readouterr().out
    a = torch.load(whole / "cifar10-smoke" / "simclr" / "simclr.pt", weights_only=True)["state_dict"]
    b = torch.load(split / "cifar10-smoke" / "simclr" / "simclr.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = zoo.results("simclr", split, profile="smoke")
    assert [s["steps"] for s in res["sittings"]] == [5, 12]
    assert [s.get("note") for s in res["sittings"]] == [None, "tests ran meanwhile"]  # --note: this sitting's
    log = [json.loads(line) for line in (split / "cifar10-smoke" / "simclr" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"]["epoch"] for r in log if "eval" in r] == [1]  # the kNN curve spans both sittings
    assert res["knn200_top1"] == zoo.results("simclr", whole, profile="smoke")["knn200_top1"]


def test_a_second_run_is_refused_while_one_holds_the_lock(tmp_path, data_root, capsys):
    with zoo.zoo_lock(tmp_path):
        assert cli(tmp_path, data_root, "simclr", "--epochs", "1") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: another zoo run holds {tmp_path / '.lock'} (pid ") and "\n" not in err
    assert not (tmp_path / "cifar10-smoke").exists()  # nothing was trained
    with zoo.zoo_lock(tmp_path):  # released: it can be taken again
        pass


def test_supervised_entry_trains_on_the_labels(tmp_path, data_root):
    assert cli(tmp_path, data_root, "supervised", "--epochs", "1") == 0
    method = zoo.load_method("supervised", tmp_path, profile="smoke")
    assert isinstance(method, Supervised) and method.classifier.out_features == 10
    log = (tmp_path / "cifar10-smoke" / "supervised" / "metrics.jsonl").read_text()
    assert '"accuracy"' in log


def test_supervised_loss_is_cross_entropy_on_the_labels_of_the_batch():
    torch.manual_seed(0)
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    method = Supervised(tiny_encoder(), labels=labels)
    x = torch.randn(3, 3, 16, 16)
    index = torch.tensor([5, 0, 2])
    out = method([x], index)
    expected = torch.nn.functional.cross_entropy(method.classifier(method.backbone(x)), torch.tensor([9, 3, 4]))
    assert method.classifier.out_features == 10 and torch.allclose(out["loss"], expected)
    empty = Supervised(tiny_encoder(), num_data=8)  # rebuilt for loading: labels come with the state_dict
    with pytest.raises(RuntimeError, match="built without its training labels"):
        empty([x], index)
    empty.load_state_dict(method.state_dict())
    assert torch.equal(empty.labels, labels) and torch.allclose(empty([x], index)["loss"], expected)
    classifier = method.as_classifier()  # image -> class scores, sharing the method's modules
    assert torch.equal(classifier(x), method.classifier(method.backbone(x)))
    assert classifier.encoder is method.backbone and classifier.head is method.classifier


def test_export_drops_queues_and_keeps_the_networks():
    method = MoCo(tiny_encoder(), queue_size=64, dim=128, shuffle_bn_splits=2)  # queue: 8192 > 4096 elements
    state, dropped = zoo.exported_state(method)
    assert dropped == ["queue"] and "queue_ptr" in state
    assert set(state) | {"queue"} == set(method.state_dict())
    small = MoCo(tiny_encoder(), queue_size=32, dim=128)  # 4096 elements: kept
    assert zoo.exported_state(small)[1] == []


def test_unknown_entry_and_list(tmp_path, capsys):
    assert zoo.main(["simclrr", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown zoo entry 'simclrr'; valid: all, simclr,")
    from sslbook.__main__ import main

    assert main(["zoo", "--list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "supervised: not trained" in out and f"weights: 0.0 MB in {tmp_path}" in out
    assert set(zoo.entries()) == {
        "simclr",
        "instdisc",
        "pirl",
        "moco_v1",
        "moco_v2",
        "swav",
        "simsiam",
        "byol",
        "rotation",
        "jigsaw",
        "relative_patch",
        "colorization",
        "cmc",
        "temporal",
        "cpc",
        "supervised",
        "simclr_k7",
        "supervised_k7",
    }
    assert zoo.entry_config("simclr_k7", root=tmp_path).model.stem_kernel == 7  # the table's overrides apply
    assert zoo.entry_config("simclr", root=tmp_path).model.stem_kernel is None  # the stem's own 3x3


def test_an_entry_as_a_report_row_and_on_a_page(trained, capsys):
    from sslbook import book, report

    row = zoo.row("simclr", trained, profile="smoke")
    assert row["out_dir"] == str(trained / "cifar10-smoke" / "simclr")
    assert row["images_seen"] == row["steps"] * row["batch_size"]
    assert row["published"] == zoo.PUBLISHED["simclr"]
    points = report.metric_history(row, "knn200_top1")  # the curve is read from the entry's metrics.jsonl
    assert points[-1][1:] == (row["steps"], row["knn200_top1"])
    assert zoo.trained("simclr", trained, "smoke") and not zoo.trained("byol", trained, "smoke")
    assert zoo.config("simclr", trained, "smoke").method == "simclr"

    shown = book.show_zoo_run(
        "simclr", live={"knn200_top1": 30.0, "epochs": 0.5}, pixels=41.25, label="SimCLR", root=trained, profile="smoke"
    )
    assert shown == row
    assert book.show_zoo_run("byol", root=trained, profile="smoke") is None
    assert "`python -m sslbook zoo byol` trains it" in capsys.readouterr().out

    rows = book.show_zoo_table(
        {"simclr": "SimCLR", "byol": "BYOL"},
        live={"SimCLR": {"knn200_top1": 30.0}},
        pixels={"knn200_top1": 41.25, "linear_top1": 37.96},
        root=trained,
        profile="smoke",
    )
    assert [r["method"] for r in rows] == ["SimCLR"] and rows[0]["live_knn"] == 30.0
    assert "not in the zoo here yet: byol" in capsys.readouterr().out


def test_knn_curve_in_epochs_and_the_first_epoch_above_a_baseline(trained):
    curve = zoo.knn_curve("simclr", trained, "smoke")
    res = zoo.results("simclr", trained, "smoke")
    assert curve[-1] == (pytest.approx(res["epochs"]), res["knn200_top1"])  # the final value, at the last epoch
    assert [e for e, _ in curve] == sorted(e for e, _ in curve)
    curve = [(2.0, 40.0), (4.0, 41.25), (6.0, 45.5), (8.0, 44.0)]  # by hand: strictly above 41.25 first at 6
    assert zoo.first_epoch_above(curve, 41.25) == 6.0
    assert zoo.first_epoch_above(curve, 50.0) is None


def test_from_zoo_stands_in_only_in_the_smoke_profile(trained, monkeypatch, capsys):
    from sslbook import book

    monkeypatch.setenv(zoo.ZOO_ENV, str(trained))
    monkeypatch.setattr(zoo, "trained", lambda name, root=None, profile="cpu": False)
    assert book.from_zoo("byol", "smoke", lambda: "stand-in") == "stand-in"
    assert "zoo entry 'byol' is not trained here" in capsys.readouterr().out
    with pytest.raises(zoo.ZooError, match="python -m sslbook zoo byol"):
        book.from_zoo("byol", "cpu", lambda: "stand-in")


def test_sigterm_stops_a_sitting_like_ctrl_c(tmp_path, data_root):
    """A zoo run in the background (SIGINT ignored) is stopped with SIGTERM: the sitting is recorded,
    the checkpoint kept, and the same command resumes to the end."""
    command = [sys.executable, "-m", "sslbook", "zoo", "simclr", "--epochs", "200", "--root", str(tmp_path),
               "--set", *settings(data_root, "log_every=1", "eval_every=0")]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    run = tmp_path / "cifar10-smoke" / "simclr" / "run"
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").is_file() and time.time() < deadline:  # wait for the first epoch's checkpoint
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; the same command resumes from the last checkpoint" in err
    sittings = json.loads((run / "sittings.json").read_text())
    assert len(sittings) == 1 and sittings[0]["steps"] > 0 and sittings[0]["load_average_end"] is not None

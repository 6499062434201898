"""Tests for sslbook.bench: the linear probe on frozen features, reusing finished runs, the results
file, the table and the `python -m sslbook bench` command. Tiny data (conftest) only."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT, tiny_dataset, tiny_datasets, write_cifar_fixture
from sslbook import bench
from sslbook.__main__ import main
from sslbook.config import ConfigError, load_config
from sslbook.data import ImageTensorDataset
from sslbook.methods import Method

TINY = [
    "profile=smoke",
    "model.width=4",
    "batch_size=16",
    "epochs=2",
    "eval_every=1",
    "progress=false",
    "verbose=false",
    "log_every=2",
    "max_minutes=null",
]


class PooledPixels(Method):
    """embed = 4x4 average-pooled pixels (48 numbers): a fixed, known representation."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()))
        self.unused = nn.Linear(1, 1)  # a parameter, so the device can be read off the method

    def embed(self, images):
        return self.backbone(images)


def quadrant_dataset(n, seed):
    """Class c (of 4) = noise plus a bright square in quadrant c: linearly separable pooled pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 120, (n, 3, 16, 16), generator=g)
    for c, (r, col) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        images[labels == c, :, r : r + 8, col : col + 8] += 120
    return ImageTensorDataset(images.to(torch.uint8), labels, [f"q{i}" for i in range(4)], "quadrants")


def test_linear_top1_separable_features_give_100_and_random_labels_give_chance():
    method = PooledPixels().train()
    assert bench.linear_top1(method, quadrant_dataset(200, 0), quadrant_dataset(100, 1), epochs=30) == 100.0
    assert method.training and method.backbone.training  # train/eval flags put back
    # Random images whose labels are i % 4: nothing to learn, so a fresh test set is at chance (25%).
    chance = bench.linear_top1(method, tiny_dataset(400, 16, 4, seed=0), tiny_dataset(400, 16, 4, seed=1), epochs=30)
    assert 12 <= chance <= 38


def test_run_twice_reuses_and_a_changed_override_retrains(tmp_path, capsys):
    out = tmp_path / "simclr-smoke"
    first = bench.run("cifar10/simclr", out, TINY, datasets=tiny_datasets())
    assert not first["reused"] and first["steps"] == 8 and first["images_seen"] == 128
    assert first["profile"] == "smoke" and first["method"] == "simclr" and first["config"] == "cifar10/simclr"
    assert 0 <= first["linear_top1"] <= 100 and 0 <= first["knn200_top1"] <= 100 and "knn20_top1" in first
    saved = json.loads((out / "results.json").read_text())
    assert saved["linear_top1"] == first["linear_top1"] and saved["linear_epochs"] == 100
    assert len(saved["loadavg_1min"]) == 2
    mtime = (out / "checkpoint.pt").stat().st_mtime_ns

    # The same settings (keys that cannot change training may differ): no training at all.
    again = bench.run(
        "cifar10/simclr", out, [*TINY, "verbose=true", "eval_every=0", "checkpoint_minutes=5"], datasets=tiny_datasets()
    )
    assert again["reused"] and (out / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert {k: v for k, v in again.items() if k != "reused"} == {k: v for k, v in first.items() if k != "reused"}
    assert "reusing" in capsys.readouterr().out

    changed = bench.run("cifar10/simclr", out, [*TINY, "optim.lr=0.1"], datasets=tiny_datasets())
    assert not changed["reused"] and (out / "checkpoint.pt").stat().st_mtime_ns != mtime
    assert "optim.lr: 0.06 -> 0.1" in capsys.readouterr().out
    # Another number of training images (a notebook may have trained on a subset) also retrains.
    mtime = (out / "checkpoint.pt").stat().st_mtime_ns
    train, test = tiny_datasets()
    fewer = bench.run("cifar10/simclr", out, [*TINY, "optim.lr=0.1"], datasets=(train.subset(48), test))
    assert not fewer["reused"] and (out / "checkpoint.pt").stat().st_mtime_ns != mtime


def test_a_missing_linear_probe_is_added_to_a_reused_run(tmp_path):
    out = tmp_path / "r"
    row = bench.run("cifar10/simclr", out, TINY, linear=False, datasets=tiny_datasets())
    assert row["linear_top1"] is None and "linear_top1" not in json.loads((out / "results.json").read_text())
    row = bench.run("cifar10/simclr", out, TINY, datasets=tiny_datasets())  # from the checkpoint's method
    assert row["reused"] and 0 <= row["linear_top1"] <= 100
    assert json.loads((out / "results.json").read_text())["linear_top1"] == row["linear_top1"]
    assert not list(out.glob(".*.tmp"))  # written atomically, nothing left behind
    method, cfg = bench.load_method(row)
    assert cfg.method == "simclr" and not method.training
    assert bench.linear_top1(method, *tiny_datasets()) == pytest.approx(row["linear_top1"])  # deterministic


def test_pixel_baseline():
    row = bench.pixel_baseline(datasets=(quadrant_dataset(200, 0), quadrant_dataset(100, 1)), epochs=30)
    assert set(row) == {"knn200_top1", "knn20_top1", "linear_top1"}
    assert row["knn20_top1"] > 90 and row["linear_top1"] == 100.0


def load_report():
    """benchmarks/report.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def test_report_renders_bench_files(tmp_path, monkeypatch):
    report = load_report()
    rows = [
        {
            "config": "cifar10/simclr",
            "profile": "cpu",
            "budget_minutes": 5.0,
            "train_minutes": 4.9,
            "epochs": 2.61,
            "images_per_s": 480.4,
            "peak_memory_mb": 1500.2,
            "knn200_top1": 44.123,
            "knn20_top1": 45.5,
            "linear_top1": 50.25,
            "reused": True,
        }
    ]
    bench.save_results(rows, tmp_path / "bench-cpu.json", command="python -m sslbook bench --configs cifar10/simclr")
    bench.save_results([{**rows[0], "profile": "smoke"}], tmp_path / "bench-smoke.json")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = report.bench_sections()
    assert "bench-cpu.json" in text and "bench-smoke.json" not in text  # smoke numbers mean nothing
    assert "| cifar10/simclr | 5 | 4.9 | 2.6 | 480 | 1,500 | 44.12 | 45.50 | 50.25 | yes |" in text


def test_report_holds_zoo_entries_to_their_goals():
    report = load_report()
    pixels = {"linear_top1": 37.96}
    line = report.zoo_target_line
    assert line("simclr", "architecture", {"knn200_top1": 65.87}, pixels) == "kNN >= 65.00: met (65.87)"
    assert line("simclr", "architecture", {"knn200_top1": 64.99}, pixels) == "kNN >= 65.00: missed (64.99)"
    assert line("moco_v1", "architecture", {"knn200_top1": 56.0}, pixels) == "kNN >= 55.00: met (56.00)"
    assert line("rotation", "pretext", {"linear_top1": 37.5}, pixels) == "linear >= 37.96: missed (37.50)"
    assert line("byol", "architecture", None, pixels) == "kNN >= 65.00: not trained yet"
    assert line("supervised", "reference", {"knn200_top1": 85.0}, pixels) == "-"
    assert line("rotation", "pretext", None, {}) == "-"  # no pixel row to compare with


def test_report_has_one_shortcut_table_per_results_file(tmp_path, monkeypatch):
    report = load_report()
    common = {"date": "2026-12-04T21:29:19", "images": "2,000 test images", "boundary_contrast": [1.0] * 31}
    zoo_row = {
        "source": "zoo",
        "arm": "cpc",
        "epochs": 3,
        "knn200_top1": 37.86,
        "method_args": {"patch": 8},
        "accuracy_by_shift": {"0": 2.46, "3": 1.43, "4": 1.97},
    }
    (tmp_path / "shortcut-cpc.json").write_text(json.dumps({**common, "command": "check cpc", "rows": [zoo_row]}))
    (tmp_path / "shortcut-context.json").write_text(json.dumps({**common, "command": "check context", "rows": []}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = report.shortcut_sections()
    assert text.index("(`shortcut-context.json`)") < text.index("(`shortcut-cpc.json`)")  # one table per file
    assert "| zoo | cpc | patch=8 | 3 | 37.86 | 2.5 | - | - | 1.4 | 2.0 | - | - |" in text  # a missing shift is "-"


def test_a_corrupt_results_file_is_never_retrained_over_silently(tmp_path):
    out = tmp_path / "r"
    bench.run("cifar10/simclr", out, TINY, linear=False, datasets=tiny_datasets())
    mtime = (out / "checkpoint.pt").stat().st_mtime_ns
    (out / "results.json").write_text('{"steps": 8, "knn')
    with pytest.raises(bench.BenchError) as e:
        bench.run("cifar10/simclr", out, TINY, linear=False, datasets=tiny_datasets())
    message = str(e.value)
    assert "\n" not in message and str(out / "results.json") in message and "unreadable" in message
    assert "delete" in message and (out / "checkpoint.pt").stat().st_mtime_ns == mtime  # kept
    # Deleting the file, as the message says, retrains.
    (out / "results.json").unlink()
    row = bench.run("cifar10/simclr", out, TINY, linear=False, datasets=tiny_datasets())
    assert not row["reused"] and json.loads((out / "results.json").read_text())["steps"] == 8
    # reuse=False retrains whatever is there.
    assert not bench.run("cifar10/simclr", out, TINY, linear=False, reuse=False, datasets=tiny_datasets())["reused"]


def test_run_all_save_load_table_and_figure(tmp_path):
    rows = bench.run_all(["cifar10/simclr", "simsiam"], tmp_path / "runs", TINY, datasets=tiny_datasets())
    assert [r["config"] for r in rows] == ["cifar10/simclr", "cifar10/simsiam"]
    assert [r["out_dir"] for r in rows] == [str(tmp_path / "runs" / f"{n}-smoke") for n in ("simclr", "simsiam")]
    # A notebook's own run in runs/<name>-<profile> is reused by the closing table.
    again = bench.run_all(["cifar10/simclr"], tmp_path / "runs", TINY, datasets=tiny_datasets())
    assert again[0]["reused"]

    path = bench.save_results(rows, tmp_path / "results" / "bench.json", command="test")
    assert bench.load_results(path) == rows
    data = json.loads(path.read_text())
    env = data["environment"]
    assert data["command"] == "test" and env["profile"] == "smoke" and env["torch"] == torch.__version__
    assert env["cores"] == os.cpu_count() and env["cpu"] and "loadavg_1min_start" in env and "loadavg_1min_end" in env

    table = bench.results_table(rows, baseline={"config": "raw pixels", "knn200_top1": 12.345})
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) + 1 and all(line.startswith("|") for line in lines)
    for row, line in zip(rows, lines[2:]):
        assert row["config"] in line
        for key in ("knn200_top1", "knn20_top1", "linear_top1"):
            assert f"{row[key]:.2f}" in line
        assert f"{row['images_per_s']:,.0f}" in line and f"{row['epochs']:.1f}" in line
    assert "*raw pixels*" in lines[-1] and "*12.35*" in lines[-1]
    short = bench.results_table(rows, columns=["method", "steps", "reused"])
    assert short.splitlines()[0] == "| method | steps | reused |" and "| simclr | 8 | no |" in short

    import matplotlib

    matplotlib.use("Agg")
    for x in ("train_minutes", "images_seen"):
        fig = bench.accuracy_vs_time(rows, x=x, baseline=10.0)
        lines2d = [line for line in fig.axes[0].get_lines() if line.get_label() in ("simclr", "simsiam")]
        assert len(lines2d) == 2 and all(len(line.get_xdata()) == 2 for line in lines2d)  # epoch 1 + final
        assert lines2d[0].get_ydata()[-1] == pytest.approx(rows[0]["knn200_top1"])


def test_config_names_and_load_errors(tmp_path):
    assert bench.expand_configs("all") == [n for n in bench.expand_configs("all") if n.startswith("cifar10/")]
    assert "cifar10/simclr" in bench.expand_configs("all") and "cifar10/moco_v2" in bench.expand_configs("all")
    assert bench.expand_configs("simclr, cifar10/moco_v2,simclr") == ["cifar10/simclr", "cifar10/moco_v2"]
    with pytest.raises(
        ConfigError,
        match="unknown config 'cifar10/simclrr' \\(did you mean cifar10/simclr\\?\\); valid: all, cifar10/byol",
    ):
        bench.expand_configs("cifar10/simclrr")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(bench.BenchError, match="bad.json is not a readable bench results file"):
        bench.load_results(tmp_path / "bad.json")


def test_config_differences_ignore_what_cannot_change_training():
    a = load_config("cifar10/simclr", ["profile=smoke", "out_dir=a", "progress=true", "resume=auto"])
    b = load_config(
        "cifar10/simclr",
        ["profile=smoke", "out_dir=b", "progress=false", "resume=never", "overwrite=true", "data.root=/elsewhere"],
    )
    assert bench.config_differences(a, b) == []
    c = load_config("cifar10/simclr", ["profile=smoke", "method_args.temperature=0.2", "seed=3"])
    assert bench.config_differences(a, c) == ["method_args.temperature: 0.5 -> 0.2", "seed: 0 -> 3"]


def test_cli_bad_config_name_is_one_line(capsys):
    assert main(["bench", "--configs", "cifar10/simclr,cifar10/nope", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config 'cifar10/nope'") and "cifar10/simclr" in err and "\n" not in err


def test_python_dash_m_sslbook_bench_with_a_bad_name_exits_non_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "sslbook", "bench", "--configs", "cifar10/mocov2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("error: unknown config 'cifar10/mocov2' (did you mean cifar10/moco_v2?)")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_bench_trains_writes_and_reuses(tmp_path, capsys):
    write_cifar_fixture(tmp_path / "data", n_per_batch=40)
    argv = [
        "bench",
        "--configs",
        "cifar10/simclr",
        "--profile",
        "smoke",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "bench.json"),
        "--set",
        f"data.root={tmp_path / 'data'}",
        "model.width=4",
        "batch_size=32",
        "data.train_images=null",
        "data.test_images=null",
        "progress=false",
        "verbose=false",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = bench.load_results(tmp_path / "bench.json")
    assert len(rows) == 1 and rows[0]["steps"] == 6 and not rows[0]["reused"] and rows[0]["linear_top1"] is not None
    assert f"{rows[0]['knn200_top1']:.2f}" in out and "| config |" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["command"].startswith("python -m sslbook bench --configs cifar10/simclr")
    pixels = data["pixels"]  # the raw-pixel baseline on the same (fixture) images, also in the table
    assert 0 <= pixels["knn200_top1"] <= 100 and pixels["linear_top1"] is not None
    assert f"*{pixels['knn200_top1']:.2f}*" in out
    assert main(argv + ["--no-linear"]) == 0  # same settings: reused
    assert bench.load_results(tmp_path / "bench.json")[0]["reused"]


def test_overrides_for_one_config_only(tmp_path):
    rows = bench.run_all(
        ["cifar10/simclr", "cifar10/simsiam"],
        tmp_path / "runs",
        [*TINY, "max_steps=2"],
        overrides_for={"simclr": ["method_args.temperature=0.2"]},
        datasets=tiny_datasets(),
        linear=False,
    )
    simclr, simsiam = (load_config(os.path.join(r["out_dir"], "config.yaml")) for r in rows)
    assert simclr.method_args["temperature"] == 0.2 and "temperature" not in simsiam.method_args
    # The same per-config override again: reused; without it: retrained.
    again = bench.run_all(
        ["cifar10/simclr"],
        tmp_path / "runs",
        [*TINY, "max_steps=2"],
        overrides_for={"cifar10/simclr": ["method_args.temperature=0.2"]},
        datasets=tiny_datasets(),
        linear=False,
    )
    assert again[0]["reused"]
    with pytest.raises(ConfigError, match="overrides given for 'byol', which is not among the configs"):
        bench.run_all(["cifar10/simclr"], tmp_path / "runs", TINY, overrides_for={"byol": ["seed=1"]})


def test_cli_set_for_needs_key_value_pairs(capsys):
    assert main(["bench", "--configs", "cifar10/simclr", "--profile", "smoke", "--set-for", "simclr", "seed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --set-for simclr needs KEY=VALUE overrides after the config name, got seed"


def test_a_results_file_draws_its_curves_without_the_run_folders(tmp_path):
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    rows = bench.run_all(["cifar10/simclr"], tmp_path / "runs", TINY, datasets=tiny_datasets(), linear=False)
    path = bench.save_results(rows, tmp_path / "bench.json")
    steps = bench.step_records(rows[0])  # the trainer's log, every log_every (2) steps and the last
    assert [r["step"] for r in steps] == list(range(2, rows[0]["steps"] + 1, 2)) and all("lr" in r for r in steps)
    assert bench.step_records(rows[0]["out_dir"]) == steps
    history = rows[0]["history"]
    assert len(history) == 2 and history[-1][1] == rows[0]["steps"] and history[-1][2] == rows[0]["knn200_top1"]
    shutil.rmtree(tmp_path / "runs")  # a fresh clone has the results file, not the runs
    fig = bench.accuracy_vs_time(bench.load_results(path))
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "simclr"]
    assert list(line.get_ydata()) == [h[2] for h in history]


def test_data_variant_is_the_pretext_chapters_copy_of_the_dataset(tmp_path):
    """data.variant=rotated|tinted: the run's train and test sets are sslbook.data's copies (fixed seeds 0 and 1)."""
    from sslbook.config import ConfigError, load_config
    from sslbook.data import rotated_copy, tinted_copy
    from sslbook.trainer import load_datasets

    write_cifar_fixture(tmp_path, n_per_batch=20)
    base = ["profile=smoke", f"data.root={tmp_path}", "data.train_images=null", "data.test_images=null"]
    train, test = load_datasets(load_config("cifar10/simclr", base))
    for variant, copy in (("rotated", rotated_copy), ("tinted", tinted_copy)):
        v_train, v_test = load_datasets(load_config("cifar10/simclr", [*base, f"data.variant={variant}"]))
        assert torch.equal(v_train.images, copy(train, seed=0).images) and torch.equal(
            v_test.images, copy(test, seed=1).images
        )
        assert torch.equal(v_train.labels, copy(train, seed=0).labels)
    assert torch.equal(v_train.labels, tinted_copy(train, seed=0).labels) and len(v_train.classes) == 10  # tints
    with pytest.raises(ConfigError, match="'data.variant' must be one of null, rotated, tinted, got 'upside'"):
        load_config("cifar10/simclr", [*base, "data.variant=upside"])
    folder = load_config("cifar10/simclr", [*base, "data.dataset=imagefolder", "data.variant=rotated"])
    with pytest.raises(ConfigError, match="data.variant=rotated needs an in-memory dataset"):
        load_datasets(folder)


def test_report_bounds_the_speed_ratio_by_our_network_time():
    report = load_report()
    ours = {"data": 0, "augment": 18, "forward": 140, "backward": 304, "optimizer": 2}
    lightly = {"data": 8, "augment": None, "forward": 370, "backward": 320, "optimizer": 2}
    # lightly's 700 ms per step over our 446 ms of network passes (the 18 ms of augmentation left out)
    assert report.ratio_ceiling(ours, lightly) == pytest.approx(700 / 446)
    assert report.ratio_ceiling(None, lightly) is None and report.ratio_ceiling(ours, {}) is None
    assert report.precision_words("fp32") == "fp32 (no autocast)"
    assert report.precision_words("bf16") == "bf16 autocast"

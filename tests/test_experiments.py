"""The recipe-sweep harness and the book's experiments (benchmarks/sweep_recipes.py,
benchmarks/book_experiments.py) and how a chapter shows their results (sslbook.book.show_sweep)."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_cifar_fixture
from sslbook import book

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import book_experiments  # noqa: E402
import sweep_recipes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:kNN accuracy")


def test_thin_steps_keeps_at_most_the_asked_points_the_last_one_and_numbers_only():
    log = [{"step": i, "epoch": i // 10, "loss": 1.0 / (i + 1), "note": "x", "finished": True} for i in range(1, 251)]
    log.insert(5, {"eval": {"knn200_top1": 30.0}})  # not a step record
    kept = sweep_recipes.thin_steps(log, points=100)
    assert len(kept) <= 100
    assert kept[0]["step"] == 1 and kept[-1]["step"] == 250
    assert [r["step"] for r in kept] == sorted(r["step"] for r in kept)
    assert set(kept[0]) == {"step", "epoch", "loss"}  # strings and booleans dropped
    assert sweep_recipes.thin_steps([]) == []


def test_experiment_arms_name_their_seeds_and_set_them():
    exp = book_experiments.Experiment("simsiam", 3, {"a": [], "b": ["x=1"]}, page="p", seeds=(0, 2))
    assert exp.arm_list() == [("a", []), ("a-s2", ["seed=2"]), ("b", ["x=1"]), ("b-s2", ["x=1", "seed=2"])]
    for name, exp in book_experiments.EXPERIMENTS.items():
        arms = [arm for arm, _ in exp.arm_list()]
        assert len(set(arms)) == len(arms)
        assert all(sweep_recipes.ARM_NAME.match(arm) for arm in arms), name
        assert (Path(__file__).resolve().parents[1] / exp.page).is_file(), exp.page


def test_every_experiment_arm_is_a_valid_config():
    # the sweep checks its arms before training too; this catches a bad arm before anyone starts one
    from sslbook.config import load_config

    for name, exp in book_experiments.EXPERIMENTS.items():
        args = argparse.Namespace(profile="cpu", minutes=None, epochs=exp.epochs, set=["progress=false", *exp.common])
        for arm, overrides in exp.arm_list():
            cfg = load_config(f"cifar10/{exp.config}", sweep_recipes.arm_overrides(args, overrides))
            assert cfg.epochs == exp.epochs and cfg.profile == "cpu", (name, arm)


def test_unknown_experiment_is_one_line_and_exit_2(capsys):
    assert book_experiments.main(["moco-queu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown experiment 'moco-queu'; valid: all, ") and "\n" not in err
    assert book_experiments.main(["--list"]) == 0
    assert "moco-queue" in capsys.readouterr().out


def _sweep(arms):
    return {"config": "cifar10/simsiam", "budget": "3 epochs", "profile": "cpu", "date": "2026-12-03", "arms": arms}


def _arm(name, knn, std=None, minutes=2.0):
    row = {"arm": name, "knn200_top1": knn, "epochs": 3.0, "train_minutes": minutes}
    if std is not None:
        row["step_curve"] = [{"step": 1, "output_std": 0.05}, {"step": 9, "output_std": std}]
    return row


def test_settings_average_seeds_and_report_half_the_range():
    sweep = _sweep(
        [_arm("a", 40.0, minutes=2.0), _arm("b", 30.0), _arm("a-s1", 44.0, minutes=4.0), {"arm": "c", "error": "x"}]
    )
    settings = book.sweep_settings(sweep)
    assert list(settings) == ["a", "b"]  # an arm without a result is left out
    assert settings["a"]["mean"] == pytest.approx(42.0) and settings["a"]["spread"] == pytest.approx(2.0)
    assert settings["a"]["seeds"] == 2 and settings["a"]["train_minutes"] == pytest.approx(3.0)
    assert settings["b"]["spread"] == 0.0 and settings["b"]["seeds"] == 1


def test_show_sweep_reads_the_results_file_and_names_the_command_when_missing(tmp_path, capsys):
    assert book.show_sweep("simsiam-stopgrad", root=tmp_path) is None
    assert "`python benchmarks/book_experiments.py simsiam-stopgrad` makes them" in capsys.readouterr().out
    path = tmp_path / "benchmarks" / "results" / "sweep-simsiam-stopgrad.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_sweep([_arm("stopgrad", 35.0, 0.06), _arm("no-stopgrad", 12.0, 0.001)])))
    shown = book.show_sweep(
        "simsiam-stopgrad", {"no-stopgrad": "without", "stopgrad": "with"}, logged=["output_std"], root=tmp_path
    )
    assert shown["no-stopgrad"]["mean"] == 12.0
    out = capsys.readouterr().out
    assert out.index("without") < out.index("with ")  # the labels' order
    # the last logged output std of each arm, small values to three significant digits
    assert "0.001" in out and "0.06" in out and "0.00 " not in out


def test_sweep_curves_draw_the_seed_0_arm_of_each_setting(tmp_path, capsys):
    assert book.show_sweep_curves("simsiam-stopgrad", ["output_std"], root=tmp_path) is None
    assert "book_experiments.py simsiam-stopgrad` makes them" in capsys.readouterr().out
    path = tmp_path / "benchmarks" / "results" / "sweep-simsiam-stopgrad.json"
    path.parent.mkdir(parents=True)
    arms = [_arm("stopgrad", 35.0, 0.06), _arm("stopgrad-s1", 36.0, 0.07), _arm("no-stopgrad", 12.0, 0.001)]
    path.write_text(json.dumps(_sweep(arms)))
    fig = book.show_sweep_curves("simsiam-stopgrad", ["output_std"], root=tmp_path)
    (ax,) = fig.axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"stopgrad": [0.05, 0.06], "no-stopgrad": [0.05, 0.001]}  # seed 1 is not drawn
    fig = book.show_sweep_curves("simsiam-stopgrad", ["output_std"], {"no-stopgrad": "without"}, root=tmp_path)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["without"]


def _tiny_sweep(tmp_path, monkeypatch, method, epochs, *args):
    """A real sweep on a 100-image CIFAR fixture at width 4 (seconds); ``args``: more --set values, then --arm's."""
    data = tmp_path / "data"
    write_cifar_fixture(data, n_per_batch=20)  # 100 training images
    monkeypatch.setenv("SSLBOOK_DATA", str(data))
    out = tmp_path / "sweep.json"
    argv = [method, "--profile", "smoke", "--epochs", str(epochs), "--runs", str(tmp_path / "runs"), "--out", str(out),
            "--set", "data.train_images=null", "data.test_images=null", "model.width=4", "batch_size=16",
            "verbose=false", *args]  # fmt: skip
    assert sweep_recipes.main(argv) == 0
    return out, argv


def test_a_sweep_trains_writes_curves_and_reuses_finished_arms(tmp_path, monkeypatch, capsys):
    out, argv = _tiny_sweep(tmp_path, monkeypatch, "simsiam", 2, "eval_every=1", "log_every=1",
                            "--arm", "base:", "--arm", "nosg:method_args.stop_gradient=false")  # fmt: skip
    sweep = json.loads(out.read_text())
    assert [a["arm"] for a in sweep["arms"]] == ["base", "nosg"]
    for arm in sweep["arms"]:
        assert arm["finished"] and arm["epochs"] == 2.0 and not arm["reused"]
        assert [e for e, _, _ in arm["knn_curve"]] == [1, 2.0]  # the monitor after epoch 1, then the final evaluation
        assert arm["step_curve"][-1]["step"] == arm["steps"] and "output_std" in arm["step_curve"][-1]
    assert sweep_recipes.main(argv) == 0
    assert all(a["reused"] for a in json.loads(out.read_text())["arms"])
    assert "base: reuse (finished with these settings)" in capsys.readouterr().out


def test_compare_settings_words_follow_the_numbers_and_their_spread():
    settings = book.sweep_settings(
        _sweep(
            [
                _arm("a", 40.0),
                _arm("a-s1", 41.0),
                _arm("b", 35.0),
                _arm("b-s1", 36.0),
                _arm("c", 40.4),
                _arm("c-s1", 41.6),
                _arm("d", 50.0),
            ]
        )
    )  # a: 40.5 ± 0.5, b: 35.5 ± 0.5, c: 41.0 ± 0.6, d: one seed
    assert book.compare_settings(settings, "a", "b", "B") == "5.00 points above B (more than the seed spread, ±1.00)"
    assert book.compare_settings(settings, "b", "a") == "5.00 points below a (more than the seed spread, ±1.00)"
    assert book.compare_settings(settings, "a", "c") == "within the seed spread of c (-0.50 points, ±1.10)"
    assert book.compare_settings(settings, "d", "a") == "9.50 points above a (one seed, so the noise is not measured)"
    assert book.compare_settings(settings, "a", "zzz") == "(not measured here) against zzz"
    assert book.compare_settings(None, "a", "b", "B") == "(not measured here) against B"
    # the verdict a chapter branches on, from the same numbers
    assert [book.settings_verdict(settings, x, y) for x, y in (("a", "b"), ("b", "a"), ("a", "c"))] == [
        "above",
        "below",
        "within",
    ]
    assert book.settings_verdict(settings, "d", "a") is None and book.settings_verdict(settings, "a", "zzz") is None
    assert book.settings_verdict(None, "a", "b") is None


def test_summarize_gives_mean_half_range_and_count():
    assert book.summarize([10.0, 14.0, 12.0]) == {"mean": 12.0, "spread": 2.0, "seeds": 3}
    assert book.summarize([5.0]) == {"mean": 5.0, "spread": 0.0, "seeds": 1}


def test_bank_staleness_is_measured_on_every_finished_arm(tmp_path, monkeypatch):
    out, _ = _tiny_sweep(tmp_path, monkeypatch, "instdisc", 2, "method_args.num_negatives=32", "--arm", "bank-m0.5:")
    book_experiments.add_measures("bank-staleness", out)
    arm = json.loads(out.read_text())["arms"][0]
    measured = arm["bank_staleness"]
    assert measured["steps_per_epoch"] == 100 // 16
    assert sum(b["count"] for b in measured["bins"]) == 100  # every training image is in one age bin
    assert [b["bin"] for b in measured["bins"]] == ["0-0.25", "0.25-0.5", "0.5-0.75", "0.75-1", "1-1.5", ">=1.5"]
    assert all(-1 <= b["cos"] <= 1 for b in measured["bins"] if b["count"])
    before = out.read_text()
    book_experiments.add_measures("bank-staleness", out)  # measured arms are not measured again
    assert out.read_text() == before


def test_object_knn_scores_a_tinted_run_on_the_object_labels(tmp_path, monkeypatch):
    """The tinted run's kNN monitor scores the tints; the measure scores the same frozen features on the
    objects the images show, which equals kNN on the un-tinted copy's labels computed by hand."""
    from sslbook.bench import load_method
    from sslbook.eval import extract_features, knn_accuracy
    from sslbook.trainer import load_datasets

    out, _ = _tiny_sweep(tmp_path, monkeypatch, "simclr", 1, "--arm", "colour:data.variant=tinted")
    book_experiments.add_measures("simclr-tinted", out)
    arm = json.loads(out.read_text())["arms"][0]
    method, cfg = load_method(arm["out_dir"])
    assert cfg.data.variant == "tinted"
    tinted, tinted_test = load_datasets(cfg)
    cfg.data.variant = None
    plain, plain_test = load_datasets(cfg)
    train_x = extract_features(method.embed, tinted.images, tinted.mean, tinted.std)
    test_x = extract_features(method.embed, tinted_test.images, tinted.mean, tinted.std)
    expected = knn_accuracy(train_x, plain.labels, test_x, plain_test.labels)
    assert arm["object_knn"]["knn200_top1"] == pytest.approx(expected)
    assert not torch.equal(tinted.labels, plain.labels)  # the monitor's labels were the tints

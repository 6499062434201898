import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_datasets, tiny_run_config
from sslbook.config import ConfigError
from sslbook.methods.simclr import SimCLR
from sslbook.models import resnet
from sslbook.trainer import (
    CheckpointError,
    SchedulePlanner,
    TrainingDiverged,
    TrainState,
    build_augment,
    prepare_run,
    read_checkpoint,
    scaled_costs,
    steps_that_fit,
    time_sides,
    train,
)


def config(tmp_path, *overrides, name="run"):
    return tiny_run_config(tmp_path, "epochs=3", "eval_every=1", "log_every=2", *overrides, name=name)


def data():
    return tiny_datasets()


def params(method):
    return torch.cat([p.detach().flatten() for p in method.parameters()])


def test_simclr_trains_and_logs(tmp_path):
    result = train(config(tmp_path), datasets=data())
    r = result.results
    assert r["steps"] == 12 and r["epochs"] == 3 and 0 <= r["knn200_top1"] <= 100 and "knn20_top1" in r
    log = result.log()
    steps = [rec for rec in log if "step" in rec and "loss" in rec]
    assert [rec["step"] for rec in steps] == [2, 4, 6, 8, 10, 12]
    assert all(rec["loss"] > 0 and rec["lr"] >= 0 and rec["images_per_s"] > 0 and "output_std" in rec for rec in steps)
    # kNN monitor after epochs 1 and 2; after the last epoch the final evaluation (k=200 and k=20) stands in.
    assert [rec["eval"]["epoch"] for rec in log if "eval" in rec] == [1, 2]
    assert log[-1]["final"]["knn200_top1"] == r["knn200_top1"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 12
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["state"]["finished"] and ckpt["state"]["step"] == 12


def test_same_seed_same_run(tmp_path):
    a = train(config(tmp_path, name="a"), datasets=data()).method
    b = train(config(tmp_path, name="b"), datasets=data()).method
    assert torch.equal(params(a), params(b))


def test_resume_mid_epoch_is_exact(tmp_path):
    whole = train(config(tmp_path, "eval_every=0", name="whole"), datasets=data()).method
    part = train(config(tmp_path, "eval_every=0", "max_steps=5", name="split"), datasets=data())
    assert part.results["steps"] == 5  # stopped mid-epoch (4 steps per epoch)
    assert not read_checkpoint(tmp_path / "split" / "checkpoint.pt")["state"]["finished"]
    resumed = train(config(tmp_path, "eval_every=0", "resume=auto", name="split"), datasets=data())
    assert resumed.results["steps"] == 12
    assert torch.equal(params(whole), params(resumed.method))


def test_refuses_to_overwrite_and_checks_resume(tmp_path):
    train(config(tmp_path, "max_steps=2", name="r"), datasets=data())
    with pytest.raises(CheckpointError, match="already holds a run.*resume=auto.*overwrite=true"):
        train(config(tmp_path, name="r"), datasets=data())
    with pytest.raises(CheckpointError, match=r"holds a different network \(model.width=4 there, 8 here\)"):
        train(config(tmp_path, "resume=auto", "model.width=8", name="r"), datasets=data())
    train(config(tmp_path, "overwrite=true", "max_steps=1", name="r"), datasets=data())


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "c"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable.*delete it"):
        train(config(tmp_path, "resume=auto", name="c"), datasets=data())
    assert (run / "checkpoint.pt").read_bytes() == b"\x00garbage"  # never overwritten
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")


class ExplodingSimCLR(SimCLR):
    """SimCLR whose loss turns NaN from the 6th step on."""

    def forward(self, views, index=None):
        out = super().forward(views, index)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls >= 6:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    method = ExplodingSimCLR(resnet(18, "cifar", width=4))
    with pytest.raises(
        TrainingDiverged,
        match=r"loss became nan at step 6; stopped, the last good checkpoint, of "
        r"step 4 \(.*checkpoint.pt\), is kept",
    ):
        train(config(tmp_path, name="nan"), method=method, datasets=data())
    ckpt = read_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert ckpt["state"]["step"] == 4  # the end of epoch 1, written before things went wrong
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


PATH_RUN = """
import sys
from pathlib import Path

import torch

from conftest import tiny_datasets, tiny_run_config
from sslbook.trainer import train

out, options = Path(sys.argv[1]), sys.argv[2:]
result = train(tiny_run_config(out, "epochs=1", "eval_every=0", "log_every=2", *options), datasets=tiny_datasets())
finite = all(torch.isfinite(p).all() for p in result.method.parameters())
print(f"steps={result.results['steps']} finite={finite}")
"""


def train_in_fresh_process(tmp_path, *options) -> str:
    """Train the tiny run with ``options`` in a new Python process (torch's default threads) and return its output.

    On a CPU without bf16 instructions (AVX2 only), the channels_last and torch.compile backward passes aborted
    the whole pytest process ("double free or corruption") once the suite had set torch to 1 thread; with 2
    threads, as a real run has, they pass. On that CPU the tiny channels_last run (4 s alone) also hung now and
    then inside ``backward`` with both cores spinning, mostly when another process had taken a core meanwhile
    (4 of 16 single runs beside a training run, 0 of 5 alone; in full suite runs once on a busy machine and once
    with nothing else running): a livelock in torch's CPU threads, not in our code. So an attempt that runs out
    of time is retried, twice."""
    tests = Path(__file__).resolve().parent
    for attempt in range(3):
        try:
            done = subprocess.run(
                [sys.executable, "-c", PATH_RUN, str(tmp_path / f"attempt{attempt}"), *options],
                cwd=tests,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])},
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            continue
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout
    raise AssertionError(f"the tiny run with {options} ran out of 120 s in each of 3 attempts")


@pytest.mark.parametrize("option", ["precision=bf16", "precision=fp16", "channels_last=true"])
def test_precision_and_memory_format_paths(tmp_path, option):
    # fp16 runs with a gradient scaler; on CUDA that is the GPU path, here its CPU equivalent.
    assert "steps=4 finite=True" in train_in_fresh_process(tmp_path, option)


def test_data_on_device_path(tmp_path):
    from sslbook.data import InMemoryLoader

    train_set, _ = data()
    loader = InMemoryLoader(train_set, 16, device="cpu", images_on_device=True)
    images, labels, index = next(loader.epoch(0))
    assert torch.equal(images, train_set.images[index])


@pytest.mark.slow
def test_compile_path(tmp_path):
    assert "steps=2 finite=True" in train_in_fresh_process(tmp_path, "compile=true", "max_steps=2")


class FakeClock:
    """A clock that advances ``tick`` seconds at every reading: the trainer's timing, and so its plan,
    no longer depends on how busy the machine is."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def perf_counter(self):
        self.now += self.tick
        return self.now


def test_time_budget_plans_the_schedule(tmp_path, monkeypatch):
    import sslbook.trainer

    monkeypatch.setattr(sslbook.trainer, "time", FakeClock(tick=0.05))
    cfg = config(tmp_path, "epochs=100000", "eval_every=0", "max_minutes=0.05", "log_every=100")
    result = train(cfg, datasets=data())
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]
    assert state["finished"]
    # fixed from the timed steps, not epochs x steps per epoch = 400000
    assert 13 < state["total_steps"] < 100000 * 4
    assert state["step"] == state["total_steps"]  # the cosine ends when the time does
    per_step = state["train_seconds"] / state["step"]
    assert 0.8 * 3.0 <= state["train_seconds"] <= 3.0 + 2 * per_step  # most of the 3-second budget, not more
    assert result.results["train_minutes"] == pytest.approx(state["train_seconds"] / 60)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (plan,) = [r["plan"] for r in log if "plan" in r]  # logged; too short a plan to be made again
    assert plan["step"] == 13 and plan["total_steps"] == state["total_steps"] < 10 * (13 + 10)


def run_planner(planner, state, seconds_per_step, steps, time_sides=None):
    """Advance ``state`` by ``steps`` steps of ``seconds_per_step(step)`` each; the (step, plan) pairs."""
    plans = []
    for _ in range(steps):
        state.step += 1
        state.train_seconds += seconds_per_step(state.step)
        if planner.after_step(time_sides):
            plans.append((state.step, state.total_steps))
    return plans


def test_a_time_budget_is_planned_again_from_later_steps(tmp_path):
    # A 2-minute budget; the first 13 steps take 0.5 s each, the rest 0.125 s.
    cfg = config(tmp_path, "epochs=1000", "max_minutes=2", "optim.warmup_epochs=1")
    state = TrainState()
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    assert state.total_steps == 1000 * 100  # no plan before the timed steps
    plans = run_planner(planner, state, lambda step: 0.5 if step <= 13 else 0.125, 24)
    # First plan, from steps 3..13 at 0.5 s: 13 + (120 - 6.5) / 0.5 = 240 steps, a warm-up of 24.
    # Second, from steps 13..24 (a tenth of 240) at 0.125 s: 24 + (120 - 7.875) / 0.125 = 921 steps.
    assert plans == [(13, 240), (24, 921)]
    assert state.warmup_steps == 24  # kept: a new warm-up of 92 would drop the learning rate again
    assert planner.lr() == 1.0  # the warm-up has just ended: the peak, before and after the new plan
    assert state.train_seconds + (921 - 24) * 0.125 == 120.0  # the cosine ends when the budget does
    assert run_planner(planner, state, lambda step: 0.125, 500) == []  # planned once more, not again


def test_a_run_resumed_before_its_plans_times_its_next_steps(tmp_path):
    cfg = config(tmp_path, "epochs=1000", "max_minutes=2", "optim.warmup_epochs=1")
    # Interrupted at step 5, before any plan: the resumed run (a new planner on the restored state)
    # times steps 8..18 at 0.25 s: 18 + (120 - 4.5) / 0.25 = 480 steps, a warm-up of 48; then steps
    # 18..48 (a tenth of 480) at 0.125 s: 48 + (120 - 8.25) / 0.125 = 942.
    state = TrainState()
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    assert run_planner(planner, state, lambda step: 0.25, 5) == [] and state.plans_made == 0
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    plans = run_planner(planner, state, lambda step: 0.25 if step <= 18 else 0.125, 60)
    assert plans == [(18, 480), (48, 942)] and state.warmup_steps == 48 and state.plans_made == 2
    # Interrupted between the two plans (0.125 s a step: 960 steps planned at step 13), resumed at
    # step 40 on a machine half as fast: steps 43..96 are timed, 96 + (120 - 19) / 0.25 = 500 steps.
    state = TrainState()
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    assert run_planner(planner, state, lambda step: 0.125, 40) == [(13, 960)] and state.plans_made == 1
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    assert planner.window == (43, 96)
    assert run_planner(planner, state, lambda step: 0.25, 100) == [(96, 500)] and state.plans_made == 2
    # Resumed after both plans: nothing is timed again.
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    assert planner.window is None and run_planner(planner, state, lambda step: 0.5, 100) == []


def test_a_time_budgeted_run_interrupted_before_its_plan_is_planned_when_resumed(tmp_path, monkeypatch):
    import sslbook.trainer

    monkeypatch.setattr(sslbook.trainer, "time", FakeClock(tick=0.05))
    budget = ("epochs=100000", "eval_every=0", "max_minutes=0.05", "log_every=100")
    train(config(tmp_path, *budget, "max_steps=5"), datasets=data())
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]
    assert state["step"] == 5 and state["plans_made"] == 0 and not state["finished"]
    train(config(tmp_path, *budget, "resume=auto"), datasets=data())
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]
    assert state["finished"] and state["plans_made"] >= 1
    assert state["step"] == state["total_steps"] < 100000 * 4  # the cosine ran to its end, in the budget
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["plan"]["step"] for r in log if "plan" in r][0] == 5 + 13  # timed after the restart


def test_a_short_plan_or_an_early_side_change_leaves_no_second_window(tmp_path):
    # 0.5 s a step in a 15-second budget: the first plan (13 + 17 = 30 steps) is too short to time again.
    cfg = config(tmp_path, "epochs=1000", "max_minutes=0.25")
    state = TrainState()
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    assert run_planner(planner, state, lambda step: 0.5, 30) == [(13, 30)]
    # Progressive resizing: the second window stays at the first side, and the sides are timed once.
    cfg = config(tmp_path, "epochs=1000", "max_minutes=2", "data.crop_schedule=[[0, 8], [0.04, 16]]")
    state, calls = TrainState(), []
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    sides = lambda: calls.append(1) or {8: 1.0, 16: 2.0}  # noqa: E731
    (first,) = run_planner(planner, state, lambda step: 0.125, 60, sides)
    assert 0.04 * first[1] < 13 + 10 and planner.window is None and calls == [1]
    cfg = config(tmp_path, "epochs=1000", "max_minutes=2", "data.crop_schedule=[[0, 8], [0.5, 16]]")
    state, calls = TrainState(), []
    planner = SchedulePlanner(cfg, state, steps_per_epoch=100, peak=1.0, device=torch.device("cpu"))
    assert len(run_planner(planner, state, lambda step: 0.125, 200, sides)) == 2 and calls == [1]


def test_simsiam_predictor_keeps_a_fixed_lr_while_the_rest_follows_the_cosine(tmp_path):
    cfg = config(
        tmp_path,
        "method=simsiam",
        "augment=simsiam",
        "method_args={dim: 16, pred_dim: 4, projector_layers: 2, fix_predictor_lr: true}",
        "optim.lr=0.5",
        "optim.lr_batch=16",
        "epochs=2",
        "eval_every=0",
        "final_eval=false",
    )
    result = train(cfg, datasets=data())
    groups = read_checkpoint(tmp_path / "run" / "checkpoint.pt")["optimizer"]["param_groups"]
    # 8 steps, no warm-up (a tenth of 8 steps rounds to 0); the last step ran at lr_at(7).
    cosine = 0.5 * 0.5 * (1 + math.cos(math.pi * 7 / 8))
    assert [(g.get("fixed_lr", False), round(g["lr"], 12)) for g in groups] == [(False, round(cosine, 12))] * 2 + [
        (True, 0.5)
    ] * 2
    assert [r["lr"] for r in result.log() if "lr" in r][-1] == pytest.approx(cosine)


def test_zero_init_residual_starts_every_block_as_the_identity(tmp_path):
    from sslbook.models import BasicBlock
    from sslbook.trainer import build_model

    method = build_model(config(tmp_path, "model.zero_init_residual=true"))
    blocks = [m for m in method.backbone.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(torch.equal(b.bn2.weight, torch.zeros_like(b.bn2.weight)) for b in blocks)
    assert all(torch.equal(b.bn1.weight, torch.ones_like(b.bn1.weight)) for b in blocks)
    default = build_model(config(tmp_path))
    assert all((m.bn2.weight == 1).all() for m in default.backbone.modules() if isinstance(m, BasicBlock))


def test_the_simsiam_configs_follow_the_paper():
    from sslbook.config import load_config

    for name in ("cifar10/simsiam", "imagenet/simsiam"):
        cfg = load_config(name, profile="gpu")
        assert cfg.model.zero_init_residual and cfg.method_args["fix_predictor_lr"] is True


def test_methods_get_what_they_declare_they_need_from_the_data(tmp_path):
    from sslbook.methods import METHODS
    from sslbook.trainer import build_model, method_from_checkpoint

    train_set, test_set = data()
    result = train(
        config(tmp_path, "method=supervised", "augment=simclr", "epochs=1", "eval_every=0"),
        datasets=(train_set, test_set),
    )
    assert METHODS["supervised"].data_needs == ("labels",)
    assert torch.equal(result.method.labels, train_set.labels)  # the training labels, by dataset index
    restored, _ = method_from_checkpoint(tmp_path / "run" / "checkpoint.pt")  # rebuilt with num_data
    assert torch.equal(restored.labels, train_set.labels)
    bank = build_model(config(tmp_path, "method=instdisc"), num_data=64)
    assert bank.bank.num_data == 64
    colour = build_model(config(tmp_path, "method=colorization"), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert colour.mean.flatten().tolist() == [0.5] * 3 and colour.std.flatten().tolist() == [0.25] * 3
    with pytest.raises(ConfigError, match=r"instdisc needs num_data from the training data"):
        build_model(config(tmp_path, "method=instdisc"))


class SideRecordingSimCLR(SimCLR):
    """SimCLR that records the side of the views of every step."""

    def forward(self, views, index=None):
        self.sides = getattr(self, "sides", []) + [views[0].shape[-1]]
        return super().forward(views, index)


def side_recording_simclr():
    torch.manual_seed(0)  # the same initial weights for every run of the test
    return SideRecordingSimCLR(resnet(18, "cifar", width=4))


def test_progressive_resizing_follows_the_crop_schedule_and_resumes_exactly(tmp_path):
    schedule = "data.crop_schedule=[[0, 8], [0.5, 12], [0.75, 16]]"
    whole = side_recording_simclr()
    train(config(tmp_path, schedule, "epochs=4", "eval_every=2", name="whole"), method=whole, datasets=data())
    # 4 epochs of 4 steps: epochs 0-1 start before half-way (8 px), epoch 2 at 0.5 (12 px), epoch 3 at 0.75.
    assert whole.sides == [8] * 8 + [12] * 4 + [16] * 4
    part = side_recording_simclr()
    train(
        config(tmp_path, schedule, "epochs=4", "eval_every=2", "max_steps=10", name="split"),
        method=part,
        datasets=data(),
    )
    resumed = side_recording_simclr()
    train(
        config(tmp_path, schedule, "epochs=4", "eval_every=2", "resume=auto", name="split"),
        method=resumed,
        datasets=data(),
    )
    assert part.sides + resumed.sides == whole.sides
    assert torch.equal(params(whole), params(resumed))


def test_a_bad_crop_schedule_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="must start at fraction 0 and increase"):
        config(tmp_path, "data.crop_schedule=[[0.5, 8], [0, 16]]")
    with pytest.raises(ConfigError, match=r"must be a list of \[fraction, side\] pairs"):
        config(tmp_path, "data.crop_schedule=[[0, -8]]")


def test_local_crops_set_the_multi_crop_views_and_follow_progressive_resizing(tmp_path):
    cfg = config(tmp_path, "augment=swav", "data.local_crops=2", "data.crop_schedule=[[0, 16], [0.5, 32]]")
    mean, std = (0.5,) * 3, (0.25,) * 3
    assert [v.size for v in build_augment(cfg, mean, std, 32).views] == [32, 32, 18, 18]
    assert [v.size for v in build_augment(cfg, mean, std, 16).views] == [16, 16, 9, 9]  # local side 18/32
    with pytest.raises(ConfigError, match="'data.local_crops' must be a whole number >= 0"):
        config(tmp_path, "augment=swav", "data.local_crops=-1")
    with pytest.raises(ConfigError, match="'data.local_crops' needs a multi-crop augment recipe"):
        config(tmp_path, "data.local_crops=2")  # the tiny run's SimCLR views have no local crops


def test_a_time_budgeted_progressive_run_changes_side_at_the_step(tmp_path):
    schedule = "data.crop_schedule=[[0, 8], [0.3, 12], [0.6, 16]]"
    by_epoch = side_recording_simclr()  # 4 epochs of 4 steps: the side is the epoch start's
    train(config(tmp_path, schedule, "epochs=4", name="epochs"), method=by_epoch, datasets=data())
    assert by_epoch.sides == [8] * 8 + [12] * 4 + [16] * 4  # epoch starts at 0, 0.25, 0.5, 0.75
    by_step = side_recording_simclr()  # a budget that does not bind: the plan keeps all 16 steps
    result = train(
        config(tmp_path, schedule, "epochs=4", "max_minutes=30", name="minutes"), method=by_step, datasets=data()
    )
    assert by_step.sides == [8] * 5 + [12] * 5 + [16] * 6  # step t at t / 16: 5/16 >= 0.3, 10/16 >= 0.6
    assert result.results["steps"] == 16


def test_planning_a_progressive_run_prices_each_side(tmp_path):
    schedule = [[0, 16], [0.5, 32]]
    # T/2 steps at 1 s and T/2 at 4 s fit 50 s for T = 20 (T = 21: 10 + 11 x 4 = 54 s)
    assert steps_that_fit(schedule, 0, 50.0, {16: 1.0, 32: 4.0}, most=1000) == 20
    # 10 steps done: only what is left counts (T = 20: 10 steps at 4 s)
    assert steps_that_fit(schedule, 10, 40.0, {16: 1.0, 32: 4.0}, most=1000) == 20
    assert steps_that_fit(schedule, 0, 1e9, {16: 1.0, 32: 4.0}, most=1000) == 1000  # capped by the epochs
    cfg = config(tmp_path, "data.crop_schedule=[[0, 16], [0.5, 32]]")
    assert scaled_costs(0.2, {16: 0.1, 32: 0.3}, cfg) == pytest.approx({16: 0.2, 32: 0.6})  # measured ratio 3
    assert scaled_costs(0.2, {}, cfg) == pytest.approx({16: 0.2, 32: 0.8})  # pixel count: 4x


def test_timing_the_sides_leaves_the_run_unchanged(tmp_path):
    cfg = config(tmp_path, "data.crop_schedule=[[0, 8], [0.5, 16]]")
    run = prepare_run(cfg, side_recording_simclr(), data())
    images, _, index = next(iter(run.loader.epoch(0)))
    weights, rng = params(run.method), torch.get_rng_state()
    costs = time_sides(run, images, index)
    assert sorted(costs) == [8, 16] and all(c > 0 for c in costs.values())
    assert torch.equal(params(run.method), weights) and torch.equal(torch.get_rng_state(), rng)
    assert not hasattr(run.method, "sides")  # the copy took the steps


def test_timing_the_sides_skips_the_warm_up_and_takes_the_fastest_step(tmp_path, monkeypatch):
    import sslbook.trainer as trainer

    cfg = config(tmp_path, "data.crop_schedule=[[0, 8], [0.5, 16]]")
    run = prepare_run(cfg, side_recording_simclr(), data())
    images, _, index = next(iter(run.loader.epoch(0)))
    clock = [0.0]
    # per side: two slow warm-up steps (fresh memory, kernel choices), then 0.3, 0.2 and 0.4 s
    durations = iter([9.0, 5.0, 0.3, 0.2, 0.4] + [9.0, 5.0, 1.2, 0.8, 1.0])
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])

    def fake_step(*args, **kwargs):
        clock[0] += next(durations)

    monkeypatch.setattr(trainer, "train_step", fake_step)
    assert time_sides(run, images, index) == pytest.approx({8: 0.2, 16: 0.8})

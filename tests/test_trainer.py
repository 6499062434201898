import json

import pytest
import torch

from conftest import tiny_datasets, tiny_run_config
from sslbook.methods.simclr import SimCLR
from sslbook.models import resnet
from sslbook.trainer import CheckpointError, TrainingDiverged, read_checkpoint, train


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
    with pytest.raises(CheckpointError, match="model="):
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
    with pytest.raises(TrainingDiverged, match="loss became nan by step 6.*last good checkpoint"):
        train(config(tmp_path, name="nan"), method=method, datasets=data())
    ckpt = read_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert ckpt["state"]["step"] == 4  # the end of epoch 1, written before things went wrong
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


@pytest.mark.parametrize("option", ["precision=bf16", "precision=fp16", "channels_last=true"])
def test_precision_and_memory_format_paths(tmp_path, option):
    # fp16 runs with a gradient scaler; on CUDA that is the GPU path, here its CPU equivalent.
    result = train(config(tmp_path, option, "epochs=1", "eval_every=0"), datasets=data())
    assert result.results["steps"] == 4
    assert torch.isfinite(params(result.method)).all()


def test_data_on_device_path(tmp_path):
    from sslbook.data import InMemoryLoader

    train_set, _ = data()
    loader = InMemoryLoader(train_set, 16, device="cpu", images_on_device=True)
    images, labels, index = next(loader.epoch(0))
    assert torch.equal(images, train_set.images[index])


@pytest.mark.slow
def test_compile_path(tmp_path):
    result = train(config(tmp_path, "compile=true", "epochs=1", "eval_every=0", "max_steps=2"), datasets=data())
    assert result.results["steps"] == 2 and torch.isfinite(params(result.method)).all()


def test_time_budget_plans_the_schedule(tmp_path):
    cfg = config(tmp_path, "epochs=100000", "eval_every=0", "max_minutes=0.05", "log_every=100")
    result = train(cfg, datasets=data())
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["state"]["finished"]
    assert 13 <= ckpt["state"]["total_steps"] < 100000 * 4  # fixed from the timed steps, not 400000
    assert result.results["train_minutes"] <= 0.05 * 1.5 + 0.05

"""Tests for DDP (sslbook.distributed and the trainer under several processes).

Two CPU processes on the loopback interface, gloo backend, started with
``torch.multiprocessing`` and given the environment ``torchrun`` would give them (MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK), so ``sslbook.distributed.init_from_env()`` is the
code path under test. Every multi-process test compares against the same computation done in this
(pytest) process, which never joins a process group.

The design under test: every process computes the *same* global loss from gathered embeddings;
``gather_with_grad``'s backward sums the W copies of each row's gradient; DDP averages parameter
gradients over the W processes; so the parameter gradients equal the one-process gradient of the
global loss.
"""

from __future__ import annotations

import json
import os
import socket
import time
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from conftest import tiny_dataset
from sslbook import distributed
from sslbook.config import ConfigError, load_config
from sslbook.data import EpochOrder
from sslbook.methods.simclr import SimCLR
from sslbook.models import mlp
from sslbook.trainer import read_checkpoint, train

torch.set_num_threads(1)

WORLD = 2
TIMEOUT = 50  # seconds for one multi-process run (start-up included), well under the 60 s per test


# --------------------------------------------------------------------------- launching processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    """What ``torchrun`` would set up, then ``fn(rank, world, *args)`` inside the process group."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        device = distributed.init_from_env()
        assert device.type == "cpu" and distributed.is_distributed()
        assert distributed.world_size() == world and distributed.rank() == rank
        fn(rank, world, *args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_processes(fn, *args, world: int = WORLD, timeout: float = TIMEOUT) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes; re-raise the first failure.

    ``fn`` must be a module-level function (it is pickled by name into spawned processes).
    A run that has not finished after ``timeout`` seconds (a deadlock: processes disagreeing on
    the collectives they call) is killed and fails the test.
    """
    context = mp.start_processes(
        _entry, args=(world, _free_port(), fn, args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):  # raises ProcessRaisedException if a process failed
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{world}-process run still going after {timeout} s (deadlock?)")


# --------------------------------------------------------------------------- 1. gather_with_grad
ROWS = 3  # rows per process


def _global_rows() -> torch.Tensor:
    return torch.randn(WORLD * ROWS, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _global_loss(g: torch.Tensor) -> torch.Tensor:
    """A loss that mixes all rows and depends on their order (so a mis-ordered gather shows)."""
    weights = torch.arange(1, len(g) + 1, dtype=g.dtype)
    return ((g @ g.T).logsumexp(dim=1) * weights).sum() + (g[:, 0] * weights).pow(2).sum()


def _linear() -> nn.Linear:
    torch.manual_seed(2)
    return nn.Linear(5, 4).double()


def _gather_worker(rank, world, out_dir):
    rows = slice(rank * ROWS, (rank + 1) * ROWS)
    x = _global_rows()[rows].clone().requires_grad_()
    gathered = distributed.gather_with_grad(x)
    no_grad = distributed.gather(x)
    loss = _global_loss(gathered)
    loss.backward()

    lin = _linear()
    model = DDP(lin)
    param_loss = _global_loss(distributed.gather_with_grad(model(x.detach())))
    param_loss.backward()
    torch.save(
        {
            "gathered": gathered.detach(),
            "no_grad": no_grad,
            "no_grad_requires_grad": no_grad.requires_grad,
            "loss": loss.detach(),
            "x_grad": x.grad,
            "param_loss": param_loss.detach(),
            "weight_grad": lin.weight.grad,
            "bias_grad": lin.bias.grad,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_gather_with_grad_two_processes(tmp_path):
    run_processes(_gather_worker, str(tmp_path))
    # The one-process computation of the same global loss.
    x = _global_rows().requires_grad_()
    loss = _global_loss(x)
    loss.backward()
    lin = _linear()
    param_loss = _global_loss(lin(x.detach()))
    param_loss.backward()

    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        # Forward: the concatenation of every process's rows, in rank order (bit for bit).
        assert torch.equal(out["gathered"], x.detach()) and torch.equal(out["no_grad"], x.detach())
        assert not out["no_grad_requires_grad"]
        # Every process computes the same global loss.
        torch.testing.assert_close(out["loss"], loss.detach(), rtol=0, atol=1e-12)
        # Backward: a process's rows receive the gradient of all W copies of the loss, i.e.
        # W times the one-process gradient of the global loss with respect to those rows ...
        torch.testing.assert_close(out["x_grad"], WORLD * x.grad[rows], rtol=1e-12, atol=1e-12)
        # ... so that after DDP's average over the W processes a parameter's gradient is exactly
        # the one-process gradient of the global loss.
        torch.testing.assert_close(out["param_loss"], param_loss.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(out["weight_grad"], lin.weight.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["bias_grad"], lin.bias.grad, rtol=1e-12, atol=1e-12)


def test_gather_helpers_are_identity_on_one_process():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x and torch.equal(distributed.gather(x), x)
    assert distributed.all_reduce_sum(x.detach()) is not None


# --------------------------------------------------------------------------- 2. SimCLR: 2 processes == 1
GLOBAL_BATCH = 16


class TinyEncoder(nn.Sequential):
    """A BN-free conv encoder with the ``feature_dim`` every method expects."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 16


def _bn_free_simclr() -> SimCLR:
    """SimCLR with no BatchNorm anywhere.

    With BN, each process normalises with the statistics of its own B views while one process
    uses all W*B, so the two computations are different functions and cannot agree. The cure on
    GPUs is SyncBatchNorm (the trainer's ``sync_bn``), but torch's SyncBatchNorm only runs on
    CUDA/XPU/HPU devices: on the CPU its forward raises "SyncBatchNorm expected input tensor to be
    on GPU" (see test_sync_bn_on_cpu_is_a_config_error). So this test uses a BN-free encoder and a
    BN-free projector (Linear-ReLU-Linear) and checks the part DDP is responsible for: the gathered
    negatives and the gradient path.
    """
    method = SimCLR(TinyEncoder(), hidden_dim=16, out_dim=8, temperature=0.5)
    method.projector = mlp(16, 16, 8, num_layers=2, hidden_bn=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in method.modules())
    return method


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g)
    return x1, x1 + 0.3 * torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g)  # correlated, like two views


def _simclr_worker(rank, world, out_dir):
    torch.manual_seed(100 + rank)  # deliberately different initial weights: DDP must broadcast rank 0's
    method = _bn_free_simclr()
    if rank == 0:
        method.load_state_dict(torch.load(Path(out_dir) / "init.pt"))
    model = DDP(method)
    x1, x2 = _views()
    n = GLOBAL_BATCH // world
    rows = slice(rank * n, (rank + 1) * n)
    out = model([x1[rows], x2[rows]], torch.arange(GLOBAL_BATCH)[rows])
    out["loss"].backward()
    torch.save(
        {"loss": out["loss"].detach(), "z": out["z"], "grads": {k: p.grad for k, p in method.named_parameters()}},
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_simclr_two_processes_equal_one_process(tmp_path):
    torch.manual_seed(0)
    method = _bn_free_simclr()
    torch.save(method.state_dict(), tmp_path / "init.pt")
    run_processes(_simclr_worker, str(tmp_path))

    x1, x2 = _views()
    out = method([x1, x2], torch.arange(GLOBAL_BATCH))
    out["loss"].backward()
    grads = {k: p.grad for k, p in method.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        # The loss over the global batch (all 2*16 views as negatives), on every process.
        torch.testing.assert_close(got["loss"], out["loss"].detach(), rtol=1e-5, atol=1e-5)
        # The trainer's collapse monitor sees the global batch's first views.
        torch.testing.assert_close(got["z"], out["z"], rtol=1e-5, atol=1e-5)
        assert got["grads"].keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------- 3. EpochOrder sharding
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_order_shards_the_one_process_batches(drop_last, shuffle):
    n, b, w, seed = 50, 4, 2, 7
    single = EpochOrder(n, b * w, seed=seed, shuffle=shuffle, drop_last=drop_last)
    shards = [EpochOrder(n, b, seed=seed, rank=r, world_size=w, shuffle=shuffle, drop_last=drop_last) for r in range(w)]
    assert all(len(s) == len(single) for s in shards)
    assert len(single) == (6 if drop_last else 7)
    for epoch in (0, 1):
        for start in (0, 2):
            expected = list(single.batches(epoch, start))
            per_rank = [list(s.batches(epoch, start)) for s in shards]
            assert len(expected) == len(single) - start and all(len(p) == len(expected) for p in per_rank)
            for i, batch in enumerate(expected):
                parts = [p[i] for p in per_rank]
                assert torch.equal(torch.cat(parts), batch)  # rank order
                if drop_last:
                    assert all(len(part) == b for part in parts)
            seen = torch.cat([torch.cat(p) for p in per_rank])
            assert len(seen.unique()) == len(seen)  # no image twice in an epoch
    if shuffle:  # epochs differ, and the same (seed, epoch) always gives the same order
        assert not torch.equal(torch.cat(list(single.batches(0))), torch.cat(list(single.batches(1))))
        assert torch.equal(torch.cat(list(shards[1].batches(1))), torch.cat(list(shards[1].batches(1))))


# --------------------------------------------------------------------------- 4. train() on 2 processes
TRAIN_IMAGES = 96  # 6 global batches of 16 per epoch: max_steps=4 interrupts mid-epoch


def _train_config(out_dir, *overrides):
    return load_config(
        None,
        [
            "profile=smoke",
            "model.width=4",
            "batch_size=16",
            "epochs=3",
            "eval_every=0",
            "progress=false",
            "verbose=false",
            "log_every=1",
            "max_minutes=null",
            f"out_dir={out_dir}",
            *overrides,
        ],
    )


def _train_data():
    return tiny_dataset(TRAIN_IMAGES, 16, seed=0), tiny_dataset(32, 16, seed=1)


def _train_worker(rank, world, out_dir):
    result = train(_train_config(out_dir, "max_steps=4", "resume=never", "overwrite=true"), datasets=_train_data())
    torch.save(
        {"results": result.results, "params": {k: p.detach() for k, p in result.method.named_parameters()}},
        Path(out_dir).parent / f"rank{rank}.pt",
    )


def _records(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def _step_records(metrics: Path) -> list[int]:
    return [r["step"] for r in _records(metrics) if "loss" in r]


def _final_records(metrics: Path) -> list[int]:
    return [r["final"]["steps"] for r in _records(metrics) if "final" in r]


@pytest.mark.slow
def test_two_process_run_resumes_on_one_process(tmp_path):
    out_dir = tmp_path / "run"
    run_processes(_train_worker, str(out_dir))

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in ranks:
        assert r["results"]["steps"] == 4 and r["results"]["world_size"] == WORLD
    # DDP kept the replicas identical (same initial weights, same averaged gradients, same steps).
    for name, p in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], p, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")

    ckpt = read_checkpoint(out_dir / "checkpoint.pt")
    state = ckpt["state"]
    assert (state["step"], state["epoch"], state["batch"], state["finished"]) == (4, 0, 4, False)
    assert state["images_seen"] == 4 * 16  # counted over both processes
    for name, p in ranks[0]["params"].items():
        assert torch.equal(ckpt["method"][name], p)
    # Only rank 0 writes: one metrics line per step, one results.json.
    assert _step_records(out_dir / "metrics.jsonl") == [1, 2, 3, 4]
    assert _final_records(out_dir / "metrics.jsonl") == [4]
    assert json.loads((out_dir / "results.json").read_text())["world_size"] == WORLD
    assert not list(out_dir.glob("*.tmp"))

    # Resume in this single process: mid-epoch, from step 4 to step 6 (the schedule planned by the
    # two-process run is kept).
    assert "WORLD_SIZE" not in os.environ
    result = train(_train_config(out_dir, "max_steps=6", "resume=auto"), datasets=_train_data())
    assert result.results["steps"] == 6 and result.results["world_size"] == 1
    assert _step_records(out_dir / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]
    assert _final_records(out_dir / "metrics.jsonl") == [4, 6]
    results = json.loads((out_dir / "results.json").read_text())
    assert results["steps"] == 6 and results["world_size"] == 1
    state = read_checkpoint(out_dir / "checkpoint.pt")["state"]
    assert (state["step"], state["epoch"], state["batch"]) == (6, 1, 0)
    assert state["total_steps"] == ckpt["state"]["total_steps"] == 3 * TRAIN_IMAGES // 16
    assert state["images_seen"] == 6 * 16


# --------------------------------------------------------------------------- 5. the time budget under DDP
def _budget_worker(rank, world, out_dir):
    import sslbook.trainer as trainer

    if rank == 0:  # rank 0's clock runs 1000x fast: its budget runs out at once, rank 1's much later
        trainer.time = types.SimpleNamespace(perf_counter=lambda: 1000 * time.perf_counter())
    result = train(
        _train_config(out_dir, "epochs=20", "max_minutes=0.05", "log_every=2", "resume=never", "overwrite=true"),
        datasets=(tiny_dataset(64, 16, seed=0), None),
    )
    torch.save(result.results["steps"], Path(out_dir).parent / f"steps{rank}.pt")


@pytest.mark.slow
def test_time_budget_stops_every_process_at_the_same_step(tmp_path):
    """A time budget read by each process from its own clock would stop them at different steps,
    leaving the others blocked in a collective for ever; the decision must be taken together."""
    run_processes(_budget_worker, str(tmp_path / "run"))
    steps = [torch.load(tmp_path / f"steps{r}.pt") for r in range(WORLD)]
    assert steps == [2, 2]  # the first logging point after rank 0 ran out of time
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]
    assert state["step"] == 2 and state["finished"]


# --------------------------------------------------------------------------- 6. configs DDP cannot run
def _config_error_worker(rank, world, out_dir):
    messages = []
    for override in ("sync_bn=true", "batch_size=15"):
        with pytest.raises(ConfigError) as error:
            train(_train_config(out_dir, override, "max_steps=1", "resume=never"), datasets=_train_data())
        messages.append(str(error.value))
    torch.save(messages, Path(out_dir).parent / f"errors{rank}.pt")


@pytest.mark.slow
def test_sync_bn_on_cpu_is_a_config_error(tmp_path):
    """torch's SyncBatchNorm runs only on GPUs (on the CPU, DDP refuses it: "SyncBatchNorm layers
    only work with GPU modules"); the trainer says so in terms of the config key, on every process."""
    run_processes(_config_error_worker, str(tmp_path / "run"))
    for rank in range(WORLD):
        sync_bn, batch = torch.load(tmp_path / f"errors{rank}.pt")
        assert "sync_bn" in sync_bn and "GPU" in sync_bn
        assert "batch_size 15" in batch and "2 processes" in batch
    assert not (tmp_path / "run").exists()  # refused before writing anything

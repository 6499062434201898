"""SwAV (sslbook.methods.swav): codes, swapped prediction, multi-crop, frozen prototypes, queue."""

import copy
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import sslbook.methods.swav as swav_module
from conftest import tiny_dataset
from sslbook import distributed
from sslbook.augment import Augment, recipe
from sslbook.config import load_config
from sslbook.losses import sinkhorn
from sslbook.methods.swav import SwAV
from sslbook.models import build_encoder, resnet
from sslbook.trainer import read_checkpoint, train


class TinyNet(nn.Module):
    """A one-conv encoder that takes any image size (the multi-crop tests need 32 and 18 px)."""

    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))


def tiny_swav(**kwargs):
    args = dict(dim=6, hidden_dim=16, num_prototypes=8)
    return SwAV(TinyNet(), **{**args, **kwargs})


def views_of(batch=16, sizes=(32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in sizes]


class SinkhornSpy:
    """Records what the method hands to Sinkhorn and what it gets back."""

    def __init__(self):
        self.calls = []

    def __call__(self, scores, *args, **kwargs):
        codes = sinkhorn(scores, *args, **kwargs)
        self.calls.append((scores, codes))
        return codes


# --------------------------------------------------------------------------- codes
def test_codes_are_equipartitioned_through_forward(monkeypatch):
    spy = SinkhornSpy()
    monkeypatch.setattr(swav_module, "sinkhorn", spy)
    batch, k = 32, 8
    torch.manual_seed(0)
    method = tiny_swav(num_prototypes=k, sinkhorn_iterations=100)
    method(views_of(batch), None)
    assert len(spy.calls) == 2  # one Sinkhorn per global crop
    for scores, codes in spy.calls:
        assert codes.shape == (batch, k) and (codes >= 0).all()
        torch.testing.assert_close(codes.sum(1), torch.ones(batch))  # each sample: a distribution
        torch.testing.assert_close(codes.sum(0), torch.full((k,), batch / k), rtol=1e-3, atol=0)  # B/K each
        assert not scores.requires_grad and not codes.requires_grad  # targets carry no gradient

    # With SwAV's 3 iterations the balance is approximate, but far better than the plain softmax's.
    spy.calls.clear()
    method.sinkhorn_iterations = 3
    method(views_of(batch), None)
    scores, codes = spy.calls[0]
    softmax_usage = F.softmax(scores / method.epsilon, dim=1).sum(0)
    assert (codes.sum(0) - batch / k).abs().max() < (softmax_usage - batch / k).abs().max()


def test_scores_and_codes_stay_float32_under_bf16_autocast(monkeypatch):
    spy = SinkhornSpy()
    monkeypatch.setattr(swav_module, "sinkhorn", spy)
    torch.manual_seed(0)
    method = tiny_swav(queue_length=32, queue_start_epoch=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method(views_of(), None)
        out = method(views_of(seed=1), None)  # now with the queue
    assert torch.isfinite(out["loss"]) and method.queue.dtype == torch.float32
    assert all(scores.dtype == codes.dtype == torch.float32 for scores, codes in spy.calls)
    torch.testing.assert_close(spy.calls[-1][1].sum(1), torch.ones(32))


def test_assign_has_no_gradient_and_prototypes_are_unit_after_forward():
    torch.manual_seed(0)
    method = tiny_swav()
    with torch.no_grad():
        method.prototypes.weight.mul_(torch.rand(8, 1) * 3 + 0.5)  # rows of all lengths
    out = method(views_of(), None)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(8))
    scores = torch.randn(4, 8, requires_grad=True)
    assert not method.assign(scores).requires_grad
    assert out["loss"].requires_grad and not out["z"].requires_grad
    torch.testing.assert_close(out["z"].norm(dim=1), torch.ones(16))
    assert 0 < out["code_max"] <= 1


def test_swapped_prediction_matches_hand_computation():
    torch.manual_seed(0)
    method = tiny_swav(temperature=0.1)
    x1, x2 = views_of(batch=8)
    out = method([x1, x2], None)
    # By hand: both crops (same size) pass the backbone together, then the head and the prototypes.
    z = F.normalize(method.projector(method.backbone(torch.cat([x1, x2]))), dim=1)
    s1, s2 = (z @ F.normalize(method.prototypes.weight, dim=1).T).chunk(2)
    q1, q2 = sinkhorn(s1.detach(), 0.05, 3), sinkhorn(s2.detach(), 0.05, 3)
    # the code of crop 1 is predicted from crop 2's scores, and the code of crop 2 from crop 1's
    l12 = -(q1 * F.log_softmax(s2 / 0.1, dim=1)).sum(1).mean()
    l21 = -(q2 * F.log_softmax(s1 / 0.1, dim=1)).sum(1).mean()
    torch.testing.assert_close(out["loss"], (l12 + l21) / 2)
    torch.testing.assert_close(out["z"], z[:8].detach())


def test_multicrop_of_two_sizes_goes_through_the_backbone_by_size():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    views = Augment(recipe("swav"))(images)
    assert [v.shape[-1] for v in views] == [32, 32] + [18] * 6
    method = SwAV(resnet(18, "cifar", width=4), hidden_dim=32, num_prototypes=10)
    batches = []
    method.backbone.register_forward_hook(lambda m, inp, out: batches.append(tuple(inp[0].shape)))
    out = method(views, None)
    assert batches == [(8, 3, 32, 32), (24, 3, 18, 18)]  # one pass per resolution
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="at least 2 views"):
        method(views[:1], None)


# --------------------------------------------------------------------------- frozen prototypes
def test_prototypes_are_frozen_during_the_first_epoch():
    torch.manual_seed(0)
    method = tiny_swav(freeze_prototypes_epochs=1)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9)

    def step(epoch):
        optimizer.zero_grad()
        method(views_of(seed=epoch), None)["loss"].backward()
        method.before_optimizer_step(epoch)
        before = method.prototypes.weight.detach().clone()
        grad = method.prototypes.weight.grad
        optimizer.step()
        return before, grad

    before, grad = step(0)
    assert grad is None
    # normalize_() at the next forward is the only change: no optimiser update in epoch 0
    torch.testing.assert_close(method.prototypes.weight.detach(), before)
    before, grad = step(1)
    assert grad is not None and grad.abs().sum() > 0
    assert not torch.allclose(method.prototypes.weight.detach(), before)


# --------------------------------------------------------------------------- queue
def test_queue_is_fifo_and_filled_after_the_codes(monkeypatch):
    torch.manual_seed(0)
    method = tiny_swav(queue_length=12, queue_start_epoch=0)
    assert method.queue.shape == (2, 12, 6) and int(method.queue_filled) == 0
    z = [torch.full((4, 6), float(i)) for i in range(4)]
    for i in range(4):
        method._enqueue([z[i], -z[i]])
    # newest first; the first batch has fallen off the end of a 12-row queue
    torch.testing.assert_close(method.queue[0], torch.cat([z[3], z[2], z[1]]))
    torch.testing.assert_close(method.queue[1], -torch.cat([z[3], z[2], z[1]]))
    assert int(method.queue_filled) == 12

    # Through forward: the codes are computed before the batch joins the queue.
    method = tiny_swav(queue_length=12, queue_start_epoch=0)
    spy = SinkhornSpy()
    monkeypatch.setattr(swav_module, "sinkhorn", spy)
    out = method(views_of(batch=4), None)
    assert [s.shape[0] for s, _ in spy.calls] == [4, 4]  # empty queue: the batch alone
    torch.testing.assert_close(method.queue[0, :4], out["z"])
    assert int(method.queue_filled) == 4
    spy.calls.clear()
    method(views_of(batch=4, seed=1), None)
    assert [s.shape[0] for s, _ in spy.calls] == [8, 8]  # 4 queued + 4 new
    method.eval()
    method(views_of(batch=4, seed=2), None)
    assert int(method.queue_filled) == 8  # evaluation forwards do not enqueue


def test_sinkhorn_over_queue_and_batch_returns_batch_rows():
    torch.manual_seed(0)
    method = tiny_swav(queue_length=24, queue_start_epoch=3)
    queued = F.normalize(torch.randn(24, 6), dim=1)
    method._enqueue([queued, queued])
    scores = F.normalize(torch.randn(5, 6), dim=1) @ method.prototypes.weight.T
    # before queue_start_epoch: the batch alone
    assert not method.queue_active()
    torch.testing.assert_close(method.assign(scores), sinkhorn(scores))
    method.before_optimizer_step(3)
    assert method.queue_active()
    codes = method.assign(scores, crop=1)
    expected = sinkhorn(torch.cat([queued @ method.prototypes.weight.T, scores]))[-5:]
    assert codes.shape == (5, 8)
    torch.testing.assert_close(codes, expected)
    assert not torch.allclose(codes, sinkhorn(scores))
    torch.testing.assert_close(codes.sum(1), torch.ones(5))


def test_small_batch_codes_are_capped_and_the_queue_sharpens_them():
    # With B samples and K prototypes each prototype takes B/K samples' worth of mass in total, so
    # no code entry can exceed B/K once Sinkhorn has converged (SwAV's 3 iterations get close):
    # small batches give blurry codes, the queue lifts the cap.
    torch.manual_seed(0)
    method = tiny_swav(num_prototypes=64, queue_length=512, queue_start_epoch=0, sinkhorn_iterations=100)
    z = F.normalize(torch.randn(16, 6), dim=1)
    scores = z @ method.prototypes.weight.T
    alone = method.assign(scores)
    assert alone.max() <= 16 / 64 * 1.01
    method._enqueue([F.normalize(torch.randn(512, 6), dim=1)] * 2)
    assert method.assign(scores).max(1).values.mean() > alone.max(1).values.mean()


# --------------------------------------------------------------------------- faster code, same numbers
# sinkhorn and swav_loss as they were before the speed-up (sinkhorn divided Q twice per half-step;
# swav_loss recomputed log_softmax for every (target, crop) pair). Kept to check the new code against.
@torch.no_grad()
def old_sinkhorn(scores, epsilon=0.05, iterations=3, world_size=1, all_reduce=None):
    input_dtype, scores = scores.dtype, scores.double()
    q = torch.exp((scores - scores.max()) / epsilon).T
    num_prototypes, batch_size = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / num_prototypes
        q = q / q.sum(dim=0, keepdim=True) / batch_size
    return (q * batch_size).T.to(input_dtype)


def old_swav_loss(scores, codes, temperature=0.1):
    pair_losses = []
    for t, q_t in enumerate(codes):
        for v, scores_v in enumerate(scores):
            if v != t:
                pair_losses.append(-(q_t.detach() * F.log_softmax(scores_v / temperature, dim=1)).sum(dim=1).mean())
    return torch.stack(pair_losses).mean()


def test_sinkhorn_and_loss_equal_the_old_code_at_cifar_sizes():
    # The CIFAR recipe: B = 256, K = 3000 prototypes, 2 global + 6 local crops, epsilon 0.05, tau 0.1.
    g = torch.Generator().manual_seed(0)
    prototypes = F.normalize(torch.randn(3000, 128, generator=g), dim=1)
    scores = [
        (F.normalize(torch.randn(256, 128, generator=g), dim=1) @ prototypes.T).requires_grad_() for _ in range(8)
    ]
    codes = [sinkhorn(s, 0.05, 3) for s in scores[:2]]
    old_codes = [old_sinkhorn(s, 0.05, 3) for s in scores[:2]]
    for new, old in zip(codes, old_codes):
        torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-9)
    loss = swav_module.swav_loss(scores, codes, 0.1)
    new_grads = torch.autograd.grad(loss, scores)
    old_loss = old_swav_loss(scores, codes, 0.1)
    old_grads = torch.autograd.grad(old_loss, scores)
    torch.testing.assert_close(loss, old_loss, rtol=1e-6, atol=1e-6)
    for new, old in zip(new_grads, old_grads):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-9)


def test_training_steps_equal_the_old_code_with_multicrop_and_queue(monkeypatch):
    # Each step is taken twice from the same state, with the new and with the old sinkhorn and
    # swav_loss: same loss, codes, gradients and queue. (Two separate trajectories would drift apart
    # by float32 rounding alone: Sinkhorn's exp(s / 0.05) magnifies every difference.)
    def step(method, views, old):
        with monkeypatch.context() as patch:
            if old:
                patch.setattr(swav_module, "sinkhorn", old_sinkhorn)
                patch.setattr(swav_module, "swav_loss", old_swav_loss)
            method.zero_grad()
            out = method(views, None)
            out["loss"].backward()
        method.before_optimizer_step(0)
        grads = torch.cat([p.grad.flatten() for p in method.parameters()])
        return out["loss"].detach(), out["code_max"], grads, method.queue.clone()

    torch.manual_seed(0)
    method = tiny_swav(num_prototypes=30, queue_length=32, queue_start_epoch=0, freeze_prototypes_epochs=0)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    for seed in range(3):  # the queue joins Sinkhorn from the second step on
        views = views_of(batch=16, sizes=(32, 32, 18, 18, 18), seed=seed)
        twin = copy.deepcopy(method)
        loss, code_max, grads, queue = step(method, views, old=False)
        old_loss, old_code_max, old_grads, old_queue = step(twin, views, old=True)
        torch.testing.assert_close(loss, old_loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(code_max, old_code_max, rtol=1e-6, atol=1e-6)
        # float32 gradients summed in another order: equal to about a hundred-thousandth of the largest one
        # (one thread on an AVX2-only CPU: 1 of 666 entries differed by 1.1e-5 of it)
        torch.testing.assert_close(grads, old_grads, rtol=0, atol=2e-5 * float(old_grads.abs().max()))
        torch.testing.assert_close(queue, old_queue, rtol=0, atol=1e-6)
        optimizer.step()


# --------------------------------------------------------------------------- training
def params(method):
    return torch.cat([p.detach().flatten() for p in method.parameters()])


def test_one_step_changes_parameters_and_is_deterministic():
    def run():
        torch.manual_seed(0)
        method = tiny_swav(freeze_prototypes_epochs=0)
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
        before = params(method).clone()
        method(views_of(sizes=(32, 32, 18, 18)), None)["loss"].backward()
        method.before_optimizer_step(0)
        optimizer.step()
        return before, params(method)

    before, after = run()
    assert not torch.equal(before, after)
    assert torch.equal(after, run()[1])


def config(tmp_path, *overrides, name="run"):
    return load_config(
        None,
        [
            "profile=smoke",
            "model.width=4",
            "batch_size=8",
            "epochs=2",
            "eval_every=0",
            "progress=false",
            "verbose=false",
            "log_every=2",
            "max_minutes=null",
            "method=swav",
            "augment=swav",
            f"out_dir={tmp_path / name}",
            "resume=never",
            "method_args={hidden_dim: 16, num_prototypes: 20, queue_length: 16, queue_start_epoch: 1}",
            *overrides,
        ],
    )


def swav_for(cfg):
    torch.manual_seed(cfg.seed)
    return SwAV(resnet(18, "cifar", width=cfg.model.width), **cfg.method_args)


def test_train_with_multicrop_and_resume_mid_epoch_with_the_queue(tmp_path):
    train_set, test_set = tiny_dataset(24, 16, seed=0), tiny_dataset(16, 16, seed=1)
    cfg = config(tmp_path, name="whole")
    result = train(cfg, method=swav_for(cfg), datasets=(train_set, test_set))
    whole = result.method
    assert result.results["steps"] == 6 and 0 <= result.results["knn200_top1"] <= 100
    logged = [rec for rec in result.log() if "loss" in rec]
    assert logged and all(rec["loss"] > 0 and 0 < rec["code_max"] <= 1 and "output_std" in rec for rec in logged)
    assert int(whole.queue_filled) == 16 and whole.queue_active()

    cfg = config(tmp_path, "max_steps=4", name="split")
    part = train(cfg, method=swav_for(cfg), datasets=(train_set, None))
    assert part.results["steps"] == 4  # stopped in the middle of epoch 2, where the queue is in use
    saved = read_checkpoint(tmp_path / "split" / "checkpoint.pt")["method"]
    assert int(saved["queue_filled"]) == 16 and saved["queue"].abs().sum() > 0 and int(saved["epoch"]) == 1
    cfg = config(tmp_path, "resume=auto", name="split")
    resumed = train(cfg, method=swav_for(cfg), datasets=(train_set, None)).method
    assert torch.equal(params(whole), params(resumed))
    assert torch.equal(whole.queue, resumed.queue)


def test_configs_build():
    cfg = load_config("imagenet/swav", ["profile=gpu", "model.width=8"])
    assert "et al" in cfg.paper and cfg.data.dataset == "imagefolder" and cfg.model.stem == "imagenet"
    assert cfg.batch_size == 4096 and cfg.epochs == 800 and cfg.optim.name == "lars"
    backbone = build_encoder(cfg.model.encoder, width=cfg.model.width, stem=cfg.model.stem)
    method = SwAV(backbone, **cfg.method_args)
    assert method.prototypes.weight.shape == (3000, 128) and method.queue.shape[1] == 0
    views = [torch.randn(2, 3, 64, 64)] * 2 + [torch.randn(2, 3, 32, 32)] * 2  # small stand-ins for 224/96
    assert torch.isfinite(method(views, None)["loss"])

    cifar = load_config("cifar10/swav", ["profile=gpu"])
    assert "et al" in cifar.paper and cifar.augment == "swav"
    method = SwAV(resnet(18, "cifar", width=4), **cifar.method_args)
    assert method.queue.shape == (2, 3840, 128) and method.queue_start_epoch == 50


# --------------------------------------------------------------------------- two processes
def _ddp_entry(rank, world, port, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        distributed.init_from_env()
        torch.save(_queue_and_codes(rank, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _queue_and_codes(rank=0, world=1):
    """Enqueue 3 global batches of 4, then the codes of a global batch of 4, split over the processes."""
    torch.manual_seed(0)
    method = tiny_swav(queue_length=10, queue_start_epoch=0)  # 10 rows: the oldest 2 fall off
    g = torch.Generator().manual_seed(1)
    batches = [F.normalize(torch.randn(4, 6, generator=g), dim=1) for _ in range(3)]
    scores = F.normalize(torch.randn(4, 6, generator=g), dim=1) @ method.prototypes.weight.T
    local = slice(rank * 4 // world, (rank + 1) * 4 // world)
    for z in batches:
        method._enqueue([z[local], -z[local]])
    return {
        "queue": method.queue.clone(),
        "filled": int(method.queue_filled),
        "codes": method.assign(scores[local], crop=1),
    }


@pytest.mark.slow
def test_two_processes_share_the_queue_and_match_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_ddp_entry, args=(2, port, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180  # generous: a busy machine slows spawned processes, a deadlock never ends
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("two-process run still going after 180 s (deadlock?)")
    single = _queue_and_codes()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for out in ranks:  # every process holds the whole (gathered) queue, in the one-process order
        assert out["filled"] == single["filled"] == 10
        torch.testing.assert_close(out["queue"], single["queue"])
    # Sinkhorn over [each process's share of the queue; its half of the batch], with global sums,
    # gives the codes one process computes over [whole queue; whole batch].
    torch.testing.assert_close(torch.cat([out["codes"] for out in ranks]), single["codes"])


def test_prototype_coverage_sees_features_in_a_direction_no_prototype_covers():
    from sslbook.methods.swav import prototype_coverage

    torch.manual_seed(0)
    prototypes = torch.randn(6, 4)
    prototypes[:, 3] = 0  # no prototype points along e4
    z = torch.zeros(5, 4)
    z[:, 3] = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])  # every feature on the line of e4
    report = prototype_coverage(z, prototypes, directions=1)
    assert report["prototype_svals"][0] == pytest.approx(0.0, abs=1e-6)
    assert report["share_in_empty"] == pytest.approx(1.0, abs=1e-6)
    assert report["max_score"] == pytest.approx(0.0, abs=1e-6)
    assert report["feature_energy"]["top1"] == pytest.approx(1.0, abs=1e-6)


def test_prototype_coverage_counts_the_directions_fewer_prototypes_than_dimensions_leave_out():
    from sslbook.methods.swav import prototype_coverage

    prototypes = torch.eye(4)[:2] * 3  # 2 prototypes in 4 dimensions: e3 and e4 are covered by none
    z = torch.stack([torch.eye(4)[2], torch.eye(4)[3], -torch.eye(4)[2]])  # features in the uncovered plane
    report = prototype_coverage(z, prototypes, directions=1)  # the share counts both uncovered directions
    assert report["prototype_svals"] == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)  # unit prototypes: sval 1
    assert report["share_in_empty"] == pytest.approx(1.0, abs=1e-6)
    assert report["max_score"] == pytest.approx(0.0, abs=1e-6)


def test_prototype_coverage_energy_and_random_prototypes_by_hand():
    from sslbook.methods.swav import prototype_coverage

    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    z = torch.stack([e1, -e1, e2, -e2, e2, -e2])  # mean 0, z^T z = diag(2, 4, 0, 0)
    prototypes = torch.eye(4)  # unit, every direction covered once: all singular values 1
    report = prototype_coverage(z, prototypes, directions=2)
    assert report["feature_energy"] == pytest.approx({"top1": 4 / 6, "top2": 1.0, "top10": 1.0})
    assert report["prototype_svals"] == pytest.approx([1.0, 1.0, 1.0])
    assert report["max_score"] == pytest.approx(1.0)

"""MoCo v1/v2 (sslbook.methods.moco): InfoNCE wiring, the queue, the momentum encoder, Shuffle BN,
the trainer (determinism, exact mid-epoch resume with a queue), the configs, and 2-process DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_distributed import run_processes
from torch import nn

from conftest import tiny_dataset
from sslbook.config import load_config
from sslbook.losses import info_nce, info_nce_logits
from sslbook.methods.moco import MoCo, SplitBatchNorm, shuffle_batch, split_batchnorm, unshuffle_batch
from sslbook.models import resnet
from sslbook.trainer import read_checkpoint, train


class TinyEncoder(nn.Sequential):
    """conv-BN-ReLU-pool: small, but with the BatchNorm that Shuffle BN is about."""

    def __init__(self, width: int = 8):
        super().__init__(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = width


def tiny_moco(**kwargs) -> MoCo:
    args = dict(version=2, dim=4, hidden_dim=8, queue_size=12, momentum=0.9, temperature=0.2, shuffle_bn_splits=2)
    return MoCo(TinyEncoder(), **{**args, **kwargs})


def views(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    return [x, x + 0.5 * torch.randn(n, 3, 6, 6, generator=g)]


# --------------------------------------------------------------------------- the loss
def test_logits_put_the_positive_first_and_the_loss_is_cross_entropy_against_zeros():
    torch.manual_seed(0)
    method = tiny_moco()
    x_q, x_k = views()
    queue, ptr = method.queue.clone(), int(method.queue_ptr)
    torch.manual_seed(1)
    out = method([x_q, x_k], None)

    # Recompute the step by hand: same parameters, same key permutation (same seed).
    torch.manual_seed(1)
    q = F.normalize(method.projector(method.backbone(x_q)), dim=1)
    k = method.encode_keys(x_k)
    logits = info_nce_logits(q, k, queue, method.temperature)
    assert logits.shape == (8, 1 + 12)
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1) / 0.2)  # l_pos
    torch.testing.assert_close(logits[:, 1:], q @ queue.T / 0.2)  # l_neg against the queue
    expected = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(info_nce(q, k, queue, 0.2), expected)
    torch.testing.assert_close(out["loss"], expected)
    assert 0 <= float(out["contrast_acc"]) <= 100 and out["z"].shape == (8, 4) and not out["z"].requires_grad
    # ... and the keys went into the queue after the loss was computed.
    assert torch.allclose(method.queue[ptr : ptr + 8], k) and int(method.queue_ptr) == ptr + 8


def test_symmetric_loss_adds_the_swapped_pair_and_enqueues_both():
    torch.manual_seed(0)
    method = tiny_moco(symmetric=True, queue_size=16)
    x1, x2 = views()
    queue = method.queue.clone()
    torch.manual_seed(1)
    out = method([x1, x2], None)
    torch.manual_seed(1)
    k2, k1 = method.encode_keys(x2), method.encode_keys(x1)
    q1, q2 = method.encode_queries(x1), method.encode_queries(x2)
    torch.testing.assert_close(out["loss"], info_nce(q1, k2, queue, 0.2) + info_nce(q2, k1, queue, 0.2))
    assert int(method.queue_ptr) == 16 % 16 and torch.allclose(method.queue, torch.cat([k2, k1]))


def test_versions_choose_head_and_temperature():
    v1, v2 = MoCo(TinyEncoder(), version=1, shuffle_bn_splits=1), MoCo(TinyEncoder(), shuffle_bn_splits=1)
    assert v1.temperature == 0.07 and len(v1.projector) == 1 and isinstance(v1.projector[0], nn.Linear)
    assert v2.temperature == 0.2 and [type(m) for m in v2.projector] == [nn.Linear, nn.ReLU, nn.Linear]
    assert v2.projector[0].out_features == 8  # hidden = the encoder's feature width by default
    assert MoCo(TinyEncoder(), temperature=0.1).temperature == 0.1
    assert v2.queue.shape == (65536, 128) and torch.allclose(v2.queue.norm(dim=1), torch.ones(65536))
    with pytest.raises(ValueError, match="version"):
        MoCo(TinyEncoder(), version=3)


# --------------------------------------------------------------------------- the queue
@pytest.mark.parametrize("size,batch", [(12, 4), (10, 4), (5, 7)])  # divisible, wrapping around, batch > K
def test_queue_is_fifo_with_exactly_k_keys(size, batch):
    method = tiny_moco(queue_size=size)
    initial = method.queue.clone()
    stream = [initial]  # the random initial keys count as the oldest entries
    for step in range(7):
        keys = F.normalize(torch.randn(batch, 4), dim=1)
        method.dequeue_and_enqueue(keys)
        stream.append(keys)
        assert method.queue.shape == (size, 4)
        assert int(method.queue_ptr) == (step + 1) * batch % size
        oldest_first = method.queue.roll(-int(method.queue_ptr), dims=0)
        assert torch.equal(oldest_first, torch.cat(stream)[-size:])  # the last K keys, in order


# --------------------------------------------------------------------------- the momentum encoder
def test_momentum_update_is_eq_2_and_the_key_encoder_gets_no_gradient():
    torch.manual_seed(0)
    method = tiny_moco(momentum=0.9)
    query = list(method.backbone.parameters()) + list(method.projector.parameters())
    key = list(method.key_backbone.parameters()) + list(method.key_projector.parameters())
    assert len(query) == len(key) > 0
    assert all(torch.equal(q, k) for q, k in zip(query, key))  # f_k.params = f_q.params at the start
    assert all(not k.requires_grad for k in key) and all(q.requires_grad for q in query)

    out = method(views(), None)
    out["loss"].backward()
    assert all(k.grad is None for k in key) and all(q.grad is not None for q in query)

    with torch.no_grad():  # known, different values on both sides
        for i, (q, k) in enumerate(zip(query, key)):
            q.copy_(torch.randn_like(q) + i)
            k.copy_(torch.randn_like(k) - i)
    before_q, before_k = [q.detach().clone() for q in query], [k.clone() for k in key]
    method.after_optimizer_step(0.5)
    for q0, k0, q, k in zip(before_q, before_k, query, key):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q0, rtol=1e-6, atol=1e-6)
        assert torch.equal(q, q0)  # the query encoder is the optimiser's business


def test_momentum_zero_makes_the_key_encoder_a_copy():
    torch.manual_seed(0)
    method = tiny_moco(momentum=0.0)
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p))
    method.after_optimizer_step(0.1)
    pairs = list(zip(method._query_parameters(), method._key_parameters()))
    assert pairs and all(torch.equal(q, k) for q, k in pairs)


# --------------------------------------------------------------------------- Shuffle BN
def test_split_batchnorm_normalises_each_split_with_its_own_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    split = split_batchnorm(bn, 3)
    assert isinstance(split, SplitBatchNorm) and split.num_splits == 3
    x = torch.randn(12, 3, 4, 4) * 3 + 1
    y = split(x)
    # Reference: ordinary BN on each contiguous third of the batch.
    refs = [nn.BatchNorm2d(3) for _ in range(3)]
    outs = []
    for ref, chunk in zip(refs, x.chunk(3)):
        ref.load_state_dict(bn.state_dict())
        outs.append(ref(chunk))
    torch.testing.assert_close(y, torch.cat(outs))
    assert not torch.allclose(y, bn(x))  # the whole-batch statistics give something else
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in refs]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in refs]).mean(0))
    assert int(split.num_batches_tracked) == 1

    # Eval mode: plain BN with the running statistics.
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(split.state_dict())
    split.eval(), plain.eval()
    torch.testing.assert_close(split(x), plain(x))
    # [N, C] inputs (BatchNorm1d) work too, and a batch that does not divide evenly.
    bn1d = split_batchnorm(nn.BatchNorm1d(5), 2)
    z = torch.randn(7, 5)
    ref = torch.cat([F.batch_norm(c, None, None, training=True) for c in z.tensor_split(2)])
    torch.testing.assert_close(bn1d(z), ref)


@pytest.mark.parametrize(
    "shape, momentum, channels_last",
    [
        ((16, 3, 5, 5), 0.1, False),
        ((16, 3, 5, 5), None, False),
        ((24, 4, 3, 3), 0.1, True),
        ((16, 6), 0.1, False),
        ((18, 3, 5, 5), 0.1, True),
    ],
)  # 18 = 5 + 5 + 4 + 4: sub-batches of unequal size
def test_fused_split_batchnorm_equals_the_loop_over_splits(shape, momentum, channels_last):
    """SplitBatchNormFunction = F.batch_norm on each contiguous sub-batch and torch.cat: outputs, running
    statistics (two steps, so the averaging compounds) and gradients of input, weight and bias, to 1e-6."""
    layers = []
    for _ in range(2):
        torch.manual_seed(0)
        layer = SplitBatchNorm(shape[1], 4, momentum=momentum).double()
        with torch.no_grad():
            layer.weight.uniform_(0.5, 2)
            layer.bias.uniform_(-1, 1)
        layers.append(layer)
    fused, loop = layers
    loop.forward_fused = loop.forward_loop  # the reference: S F.batch_norm calls and a torch.cat
    for _ in range(2):
        x = torch.randn(*shape, dtype=torch.float64) * 3 + torch.arange(shape[1]).view(1, -1, *[1] * (len(shape) - 2))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grad = torch.randn(*shape, dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = fused(xa), loop(xb)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)
        if channels_last:  # the output keeps the input's memory format
            assert ya.is_contiguous(memory_format=torch.channels_last)
        ga = torch.autograd.grad(ya, (xa, fused.weight, fused.bias), grad)
        gb = torch.autograd.grad(yb, (xb, loop.weight, loop.bias), grad)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(fused, name), getattr(loop, name), rtol=0, atol=1e-6)
    assert not torch.equal(fused.running_mean, torch.zeros(shape[1], dtype=torch.float64))


def test_conversion_reaches_every_bn_and_keeps_eval_outputs():
    torch.manual_seed(0)
    net = resnet(18, "cifar", width=4).eval()
    x = torch.randn(4, 3, 16, 16)
    before = net(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    split_batchnorm(net, 4)
    assert sum(isinstance(m, SplitBatchNorm) for m in net.modules()) == n_bn > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(net(x), before)
    method = MoCo(resnet(18, "cifar", width=4), shuffle_bn_splits=8)
    assert all(m.num_splits == 8 for m in method.modules() if isinstance(m, SplitBatchNorm))
    assert not any(
        isinstance(m, SplitBatchNorm) for m in MoCo(resnet(18, "cifar", width=4), shuffle_bn_splits=1).modules()
    )


def test_shuffle_unshuffle_round_trip():
    torch.manual_seed(0)
    x = torch.arange(16.0).view(8, 2)
    shuffled, perm = shuffle_batch(x)
    assert sorted(perm.tolist()) == list(range(8)) and not torch.equal(shuffled, x)
    assert torch.equal(shuffled, x[perm])
    assert torch.equal(unshuffle_batch(shuffled, perm), x)
    assert torch.equal(unshuffle_batch(shuffled * 10, perm), x * 10)  # row i's output returns to row i


def test_keys_are_encoded_shuffled_in_split_bn_and_returned_in_order():
    torch.manual_seed(0)
    method = tiny_moco(shuffle_bn_splits=4)
    x = views(16)[1]
    torch.manual_seed(5)
    k = method.encode_keys(x)
    torch.manual_seed(5)
    perm = torch.randperm(16)
    by_hand = F.normalize(method.key_projector(method.key_backbone(x[perm])), dim=1)[perm.argsort()]
    torch.testing.assert_close(k, by_hand)
    # Without the shuffle each key would share its sub-batch with the same images as its query.
    unshuffled = F.normalize(method.key_projector(method.key_backbone(x)), dim=1)
    assert not torch.allclose(k, unshuffled, atol=1e-4)


# --------------------------------------------------------------------------- through the trainer
def config(tmp_path, *overrides, name="run"):
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
            "log_every=2",
            "max_minutes=null",
            f"out_dir={tmp_path / name}",
            "resume=never",
            "augment=moco_v2",
            *overrides,
        ],
    )


def data():
    return tiny_dataset(64, 16, seed=0), tiny_dataset(32, 16, seed=1)


def trainer_moco():
    torch.manual_seed(0)  # the same initial weights and queue for every run of a test
    return MoCo(
        resnet(18, "cifar", width=4),
        dim=16,
        queue_size=40,
        momentum=0.99,
        temperature=0.1,
        shuffle_bn_splits=4,
        symmetric=True,
    )


def state(method):
    """Every parameter (both encoders) and every buffer (the queue and its pointer included)."""
    return method.state_dict()


def test_training_changes_parameters_deterministically_and_logs(tmp_path):
    initial = {k: v.clone() for k, v in trainer_moco().state_dict().items()}
    a = train(config(tmp_path, "epochs=1", name="a"), method=trainer_moco(), datasets=data())
    b = train(config(tmp_path, "epochs=1", name="b"), method=trainer_moco(), datasets=data())
    sa, sb = state(a.method), state(b.method)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same run
    for name in ("backbone.conv1.weight", "projector.0.weight", "key_backbone.conv1.weight", "queue"):
        assert not torch.equal(sa[name], initial[name]), name
    assert int(sa["queue_ptr"]) == 4 * 32 % 40  # 4 steps of 2 x 16 keys (symmetric)
    records = [r for r in a.log() if "loss" in r]
    assert records and all("contrast_acc" in r and "output_std" in r for r in records)
    assert 0 <= a.results["knn200_top1"] <= 100


def test_resume_mid_epoch_reproduces_the_queue_and_both_encoders(tmp_path):
    whole = train(config(tmp_path, name="whole"), method=trainer_moco(), datasets=data()).method
    part = train(config(tmp_path, "max_steps=5", name="split"), method=trainer_moco(), datasets=data())
    assert part.results["steps"] == 5 and not read_checkpoint(tmp_path / "split" / "checkpoint.pt")["state"]["finished"]
    resumed = train(config(tmp_path, "resume=auto", name="split"), method=trainer_moco(), datasets=data())
    assert resumed.results["steps"] == 12
    s_whole, s_resumed = state(whole), state(resumed.method)
    assert s_whole.keys() == s_resumed.keys() and {"queue", "queue_ptr"} <= s_whole.keys()
    for name in s_whole:
        assert torch.equal(s_whole[name], s_resumed[name]), name


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["cifar10/moco_v1", "cifar10/moco_v2", "imagenet/moco_v1", "imagenet/moco_v2"])
def test_configs_build(name):
    cfg = load_config(name, ["profile=gpu", "model.width=8"])
    assert cfg.method == "moco" and "et al" in cfg.paper
    imagenet = name.startswith("imagenet")
    encoder = resnet(50 if imagenet else 18, cfg.model.stem, width=cfg.model.width)
    method = MoCo(encoder, **cfg.method_args)
    version = int(name[-1])
    assert method.version == version
    if imagenet:
        assert cfg.data.dataset == "imagefolder" and cfg.model.encoder == "resnet50" and cfg.model.stem == "imagenet"
        assert (cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay, cfg.epochs) == (256, 0.03, 1e-4, 200)
        assert len(method.queue) == 65536 and method.momentum == 0.999
        assert method.temperature == {1: 0.07, 2: 0.2}[version]
    else:
        assert len(method.queue) == 4096 and method.momentum == 0.99 and cfg.batch_size == 512


# --------------------------------------------------------------------------- DDP: the real Shuffle BN
GLOBAL_BATCH = 16


def _ddp_moco(splits: int) -> MoCo:
    return MoCo(
        TinyEncoder(), dim=4, hidden_dim=8, queue_size=40, momentum=0.9, temperature=0.2, shuffle_bn_splits=splits
    )


def _step(method, model, x_q, x_k, seed=7):
    """One training step as the trainer takes it; returns the loss and this step's keys."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(seed)  # draws the permutation of the keys; under DDP rank 0's is broadcast
    keys = method.encode_keys(x_k)
    torch.manual_seed(seed)
    out = model([x_q, x_k], None)
    out["loss"].backward()
    optimizer.step()
    method.after_optimizer_step(1.0)
    return out["loss"].detach(), keys


def _ddp_worker(rank, world, out_dir):
    from torch.nn.parallel import DistributedDataParallel as DDP

    method = _ddp_moco(splits=2)  # 2 processes x 2 splits = the 4 BN groups of the 1-process run
    method.load_state_dict(torch.load(Path(out_dir) / "init.pt"))
    x_q, x_k = views(GLOBAL_BATCH)
    n = GLOBAL_BATCH // world
    rows = slice(rank * n, (rank + 1) * n)
    # shuffle + unshuffle preserve row identity across processes
    tagged = torch.arange(GLOBAL_BATCH)[rows, None].float()  # each row carries its global index
    shuffled, perm = shuffle_batch(tagged)
    back = unshuffle_batch(shuffled, perm)
    # Rank 1 draws a different permutation from rank 0's, which must be ignored.
    loss, keys = _step(method, DDP(method), x_q[rows], x_k[rows], seed=7 + 100 * rank)
    torch.save(
        {
            "loss": loss,
            "keys": keys,
            "state": method.state_dict(),
            "back": back,
            "tagged": tagged,
            "shuffled": shuffled,
            "perm": perm,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_processes_with_shuffle_bn_equal_one_process(tmp_path):
    torch.manual_seed(0)
    single = _ddp_moco(splits=4)
    torch.save(single.state_dict(), tmp_path / "init.pt")
    run_processes(_ddp_worker, str(tmp_path))

    x_q, x_k = views(GLOBAL_BATCH)
    loss, keys = _step(single, single, x_q, x_k)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(got[0]["perm"], got[1]["perm"])  # rank 0's permutation, broadcast
    for rank, g in enumerate(got):
        assert torch.equal(g["back"], g["tagged"])  # every row came back to where it started
        mine = g["perm"].view(2, -1)[rank]
        assert torch.equal(g["shuffled"][:, 0], mine.float())  # and this process encoded those rows
        rows = slice(rank * 8, (rank + 1) * 8)
        # The keys: same global batch, same permutation, same BN groups -> the 1-process keys.
        torch.testing.assert_close(g["keys"], keys[rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((got[0]["loss"] + got[1]["loss"]) / 2, loss, rtol=1e-5, atol=1e-5)
    expected = single.state_dict()
    for g in got:  # parameters of both encoders after the SGD + momentum step, and the queue
        for name, value in expected.items():
            if "running" in name or "num_batches" in name:
                continue  # BN running statistics are per process under DDP
            torch.testing.assert_close(g["state"][name], value, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert int(got[0]["state"]["queue_ptr"]) == GLOBAL_BATCH  # the global batch's keys were enqueued

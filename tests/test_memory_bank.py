"""Tests for the memory-bank methods (sslbook.methods.memory_bank) and the jigsaw transform (sslbook.pretext)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import flat_params as params
from conftest import tiny_datasets, tiny_run_config
from conftest import tiny_encoder as encoder
from sslbook import losses
from sslbook.config import load_config
from sslbook.methods import memory_bank
from sslbook.methods.memory_bank import PIRL, InstDisc, MemoryBank, bank_staleness, staleness_by_age
from sslbook.models import build_encoder
from sslbook.pretext import default_tile, jigsaw_tiles
from sslbook.trainer import build_augment, read_checkpoint, train

torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared CPU

TWO_VIEWS = "augment=[{size: 16, scale: [0.2, 1.0]}, {size: 16, scale: [0.6, 1.0]}]"


def batch(b=8, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, side, side, generator=g)


# --------------------------------------------------------------------------- the bank
def test_bank_starts_with_seeded_unit_vectors():
    a, b = MemoryBank(50, 8), MemoryBank(50, 8)
    assert torch.allclose(a.vectors.norm(dim=1), torch.ones(50), atol=1e-6)
    assert torch.equal(a.vectors, b.vectors)  # same on every DDP process, global RNG untouched
    assert not torch.equal(a.vectors, MemoryBank(50, 8, seed=1).vectors)
    assert a.vectors.dtype == torch.float32 and int(a.num_updates) == 0 and (a.age() == 0).all()
    assert set(dict(a.named_buffers())) == {"vectors", "written_at", "num_updates"}


def test_bank_update_is_the_momentum_formula():
    bank = MemoryBank(4, 2)
    bank.vectors.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]))
    before = bank.vectors.clone()
    # v_i <- normalise(0.5 v_i + 0.5 f_i): rows 0 and 2 written with f = (0, 1) and (0.8, -0.6).
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.8, -0.6]]), momentum=0.5)
    s = 1 / math.sqrt(2)
    assert torch.allclose(bank.vectors[0], torch.tensor([s, s]), atol=1e-6)  # (0.5, 0.5) / |.|
    assert torch.allclose(bank.vectors[2], torch.tensor([1.4, 0.2]) / math.sqrt(2.0), atol=1e-6)
    assert torch.equal(bank.vectors[[1, 3]], before[[1, 3]])  # other rows untouched
    assert torch.allclose(bank.vectors.norm(dim=1), torch.ones(4), atol=1e-6)
    assert bank.age().tolist() == [0, 1, 0, 1] and int(bank.num_updates) == 1
    # momentum 0: the row is replaced by the normalised feature; momentum 0.9 barely moves it.
    bank.update(torch.tensor([3]), torch.tensor([[3.0, 4.0]]), momentum=0.0)
    assert torch.allclose(bank.vectors[3], torch.tensor([0.6, 0.8]), atol=1e-6)
    bank.update(torch.tensor([1]), torch.tensor([[1.0, 0.0]]), momentum=0.9)
    assert torch.allclose(bank.vectors[1], F.normalize(torch.tensor([0.1, 0.9]), dim=0), atol=1e-6)
    assert bank.age().tolist() == [2, 0, 2, 1]


def test_negatives_are_uniform_over_the_allowed_rows_and_seeded():
    bank = MemoryBank(20, 4)
    exclude = torch.tensor([3, 7, 7, 19])  # repeats are fine
    torch.manual_seed(0)
    draws = bank.sample_negatives(36_000, exclude=exclude)
    counts = torch.bincount(draws, minlength=20).float()
    assert counts[[3, 7, 19]].sum() == 0
    allowed = counts[[i for i in range(20) if i not in (3, 7, 19)]]
    expected = 36_000 / 17
    chi2 = ((allowed - expected) ** 2 / expected).sum()
    assert chi2 < 40.8  # 99.9% quantile of chi-square with 16 degrees of freedom is 39.25
    # Without exclusions every row can be drawn, uniformly too.
    counts = torch.bincount(bank.sample_negatives(40_000), minlength=20).float()
    assert (((counts - 2000) ** 2) / 2000).sum() < 43.8  # 99.9% quantile, 19 d.o.f.
    torch.manual_seed(5)
    a = bank.sample_negatives(64, exclude=exclude)
    torch.manual_seed(5)
    assert torch.equal(a, bank.sample_negatives(64, exclude=exclude))
    with pytest.raises(ValueError, match="every row"):
        bank.sample_negatives(3, exclude=torch.arange(20))


# --------------------------------------------------------------------------- InstDisc
def test_nce_path_equals_losses_nce_loss_on_hand_scores():
    method = InstDisc(encoder(), num_data=3, dim=2, temperature=0.5)
    method.bank.vectors.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    method.log_z.fill_(2.0)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    index, negatives = torch.tensor([0, 1]), torch.tensor([1, 2])
    # Scores m . v / tau by hand: image 0 -> positive 2, noise (0, -2); image 1 -> positive 2, noise (2, 0).
    expected = losses.nce_loss(torch.tensor([2.0, 2.0]), torch.tensor([[0.0, -2.0], [2.0, 0.0]]), 2.0, 3)
    assert torch.allclose(method.contrast(v, index, negatives), expected, atol=1e-6)
    # The softmax variant is InfoNCE over [positive, negatives].
    method.loss = "softmax"
    expected = F.cross_entropy(torch.tensor([[2.0, 0.0, -2.0], [2.0, 2.0, 0.0]]), torch.zeros(2, dtype=torch.long))
    assert torch.allclose(method.contrast(v, index, negatives), expected, atol=1e-6)


def test_exact_softmax_scores_every_bank_row():
    method = InstDisc(encoder(), num_data=3, dim=2, temperature=0.5, num_negatives=None, loss="softmax")
    method.bank.vectors.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert method.sample_negatives(torch.tensor([0, 1])) is None
    # Eq. 2 of the paper: an n-way softmax whose class weights are the bank rows, target = own row.
    expected = F.cross_entropy(torch.tensor([[2.0, 0.0, -2.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 1]))
    assert torch.allclose(method.contrast(v, torch.tensor([0, 1]), None), expected, atol=1e-6)
    # Through forward and backward, with the bank written in place after the loss.
    torch.manual_seed(0)
    method = InstDisc(encoder(), num_data=16, num_negatives=None, loss="softmax")
    out = method([batch()], torch.arange(8))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and abs(out["loss"].detach().item() - math.log(16)) < 1.0
    with pytest.raises(ValueError, match="needs loss='softmax'"):
        InstDisc(encoder(), num_data=16, num_negatives=None, loss="nce")


def test_log_z_is_estimated_once_then_fixed_and_checkpointed(monkeypatch):
    calls = []

    def spy(negative_logits, num_data):
        calls.append(negative_logits.clone())
        return losses.estimate_log_normaliser(negative_logits, num_data)

    monkeypatch.setattr(memory_bank, "estimate_log_normaliser", spy)
    torch.manual_seed(0)
    method = InstDisc(encoder(), num_data=64, num_negatives=32)
    assert torch.isnan(method.log_z)
    for step in range(3):
        method([batch(seed=step)], torch.arange(8) + 8 * step)
    assert len(calls) == 1 and calls[0].shape == (8, 32)
    assert float(method.log_z) == pytest.approx(losses.estimate_log_normaliser(calls[0], 64), rel=1e-6)
    state = method.state_dict()
    assert "log_z" in state
    fresh = InstDisc(encoder(), num_data=64, num_negatives=32)
    fresh.load_state_dict(state)
    fresh([batch(seed=9)], torch.arange(8))
    assert len(calls) == 1 and float(fresh.log_z) == float(method.log_z)


def test_instdisc_forward_writes_only_the_batch_rows():
    torch.manual_seed(0)
    method = InstDisc(encoder(), num_data=64, num_negatives=32)
    before = method.bank.vectors.clone()
    index = torch.tensor([5, 9, 12, 40, 41, 42, 60, 63])
    out = method([batch()], index)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    assert out["z"].shape == (8, 128) and not out["z"].requires_grad
    assert -1 <= float(out["positive_cos"]) <= 1
    changed = (method.bank.vectors != before).any(dim=1).nonzero().flatten()
    assert changed.tolist() == index.tolist()
    # The written rows are the momentum update with this step's features.
    expected = F.normalize(0.5 * before[index] + 0.5 * out["z"], dim=1)
    assert torch.allclose(method.bank.vectors[index], expected, atol=1e-6)


def test_memory_methods_need_num_data_and_a_known_loss():
    with pytest.raises(ValueError, match="num_data"):
        InstDisc(encoder(), num_data=None)
    with pytest.raises(ValueError, match="loss must be one of"):
        PIRL(encoder(), num_data=10, loss="hinge")


def _ddp_worker(rank, world, out_dir):
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)  # the same weights on every process (DDP would broadcast them anyway)
    method = InstDisc(encoder(), num_data=64, num_negatives=16)
    model = DDP(method)
    assert {"bank.vectors", "bank.written_at", "bank.num_updates"} <= model.parameters_to_ignore
    torch.manual_seed(10 + rank)  # each process: its own images and negatives
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        index = torch.arange(4) + 4 * rank + 8 * step  # process 0: 0-3, 8-11; process 1: 4-7, 12-15
        out = model([batch(b=4, seed=10 * step + rank)], index)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    torch.save(
        {k: v for k, v in method.state_dict().items() if k.startswith("bank") or k == "log_z"},
        f"{out_dir}/rank{rank}.pt",
    )


@pytest.mark.slow
def test_every_process_keeps_the_same_bank_under_ddp(tmp_path):
    from test_distributed import run_processes

    run_processes(_ddp_worker, str(tmp_path))
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for name in a:
        assert torch.equal(a[name], b[name]), name  # identical writes everywhere; one log Z
    assert torch.isfinite(a["log_z"]) and int(a["bank.num_updates"]) == 2
    written = (a["bank.written_at"] > 0).nonzero().flatten().tolist()
    assert written == list(range(16))  # both processes' indices were written on both
    assert a["bank.written_at"][:8].tolist() == [1] * 8 and a["bank.written_at"][8:16].tolist() == [2] * 8


def test_bank_is_kept_out_of_ddp_broadcasts():
    method = PIRL(encoder(), num_data=10)
    names = set(method._ddp_params_and_buffers_to_ignore)
    assert names == {"bank.vectors", "bank.written_at", "bank.num_updates"}
    assert names <= set(dict(method.named_buffers()))


# --------------------------------------------------------------------------- jigsaw
def test_jigsaw_tiles_reassemble_to_the_grid_without_jitter():
    images = torch.arange(2 * 3 * 9 * 9, dtype=torch.float32).reshape(2, 3, 9, 9)
    tiles, perm = jigsaw_tiles(images, grid=3, tile=3)
    assert tiles.shape == (18, 3, 3, 3) and perm.shape == (2, 9)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(9).expand(2, 9))
    tiles = tiles.view(2, 9, 3, 3, 3)
    inverse = perm.argsort(dim=1)  # cell c sits in slot inverse[c]
    for b in range(2):
        cells = tiles[b, inverse[b]]  # back in row-major cell order
        grid = cells.view(3, 3, 3, 3, 3).permute(2, 0, 3, 1, 4).reshape(3, 9, 9)
        assert torch.equal(grid, images[b])


def test_jigsaw_tiles_come_from_inside_their_cells():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    tiles, perm = jigsaw_tiles(images)  # cells of 10 px, tiles of 8 px at random offsets
    assert default_tile(10) == 8 and default_tile(85) == 64
    tiles = tiles.view(4, 9, 3, 8, 8)
    for b in range(4):
        for k in range(9):
            r, c = divmod(int(perm[b, k]), 3)
            cell = images[b, :, 10 * r : 10 * r + 10, 10 * c : 10 * c + 10]
            windows = cell.unfold(1, 8, 1).unfold(2, 8, 1)  # [3, 3, 3, 8, 8]: every 8x8 window
            assert any(torch.equal(windows[:, i, j], tiles[b, k]) for i in range(3) for j in range(3))
    # Given permutations are used as they are; a non-permutation is refused.
    fixed = torch.tensor([[8, 7, 6, 5, 4, 3, 2, 1, 0]] * 4)
    assert torch.equal(jigsaw_tiles(images, permutations=fixed)[1], fixed)
    with pytest.raises(ValueError, match="permute"):
        jigsaw_tiles(images, permutations=torch.zeros(4, 9, dtype=torch.long))
    torch.manual_seed(3)
    a = jigsaw_tiles(images)
    torch.manual_seed(3)
    b = jigsaw_tiles(images)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------- PIRL
def test_pirl_loss_is_the_convex_combination_of_its_two_nce_terms():
    torch.manual_seed(0)
    method = PIRL(encoder(), num_data=64, num_negatives=32, loss_weight=0.3)
    twin = copy.deepcopy(method)
    image, puzzle, index = batch(seed=1), batch(seed=2, side=32), torch.arange(8)
    torch.manual_seed(7)
    out = method([image, puzzle], index)
    assert torch.allclose(out["loss"], 0.3 * out["loss_jigsaw"] + 0.7 * out["loss_image"], atol=1e-6)
    # Recompute both terms by hand, replaying the same random draws (tiles, then negatives).
    torch.manual_seed(7)
    v = twin.project(image)
    tiles, _ = jigsaw_tiles(puzzle)  # 32 px -> 10 px cells -> 8 px tiles
    v_t = twin.project_tiles(tiles)
    negatives = twin.bank.sample_negatives(32, exclude=index)
    jig_pos, jig_neg = twin.scores(v_t, index, negatives)
    img_pos, img_neg = twin.scores(v, index, negatives)
    log_z = losses.estimate_log_normaliser(jig_neg, 64)  # the first NCE call fixes log Z
    assert math.isclose(float(method.log_z), log_z, rel_tol=1e-6)
    assert torch.allclose(out["loss_jigsaw"], losses.nce_loss(jig_pos, jig_neg, log_z, 64), atol=1e-5)
    assert torch.allclose(out["loss_image"], losses.nce_loss(img_pos, img_neg, log_z, 64), atol=1e-5)
    # The bank stores f(v_I), the image's feature, never the puzzle's.
    assert torch.allclose(
        method.bank.vectors[index], F.normalize(0.5 * twin.bank.vectors[index] + 0.5 * v, dim=1), atol=1e-5
    )


def test_pirl_with_one_view_cuts_the_puzzle_from_it():
    torch.manual_seed(0)
    method = PIRL(encoder(), num_data=16, num_negatives=8, loss="softmax")
    out = method([batch(b=4, side=32)], torch.arange(4))
    assert torch.isfinite(out["loss"]) and torch.isnan(method.log_z)  # softmax needs no Z


# The score code before 1/tau was moved onto the [B, d] features (kept to check that the faster
# code computes the same losses, gradients and bank writes).
def old_scores(method, v, index, negatives):
    with torch.autocast(v.device.type, enabled=False):
        v = v.float()
        positive = (v * method.bank(index)).sum(dim=1) / method.temperature
        negative = v @ method.bank(negatives).T / method.temperature
    return positive, negative


def old_contrast(method, v, index, negatives):
    if method.loss == "softmax":
        with torch.autocast(v.device.type, enabled=False):
            if negatives is None:
                logits = v.float() @ method.bank.vectors.clone().T / method.temperature
                return F.cross_entropy(logits, index)
            return losses.info_nce(v.float(), method.bank(index), method.bank(negatives), method.temperature)
    positive, negative = old_scores(method, v, index, negatives)
    method.estimate_log_z(negative)
    return losses.nce_loss(positive, negative, method.log_z.float(), method.bank.num_data)


@pytest.mark.parametrize("cls", [InstDisc, PIRL])
@pytest.mark.parametrize("loss, num_negatives", [("softmax", None), ("softmax", 64), ("nce", 64)])
def test_scaled_features_give_the_old_losses_gradients_and_bank(monkeypatch, cls, loss, num_negatives):
    def step(contrast):
        torch.manual_seed(0)
        method = cls(encoder(), num_data=1000, num_negatives=num_negatives, loss=loss, temperature=0.07)
        if contrast is not None:
            monkeypatch.setattr(method, "contrast", contrast.__get__(method))
        torch.manual_seed(3)
        out = method([batch(b=16), batch(b=16, seed=1, side=32)], torch.randperm(1000)[:16])
        out["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
        return out["loss"].detach(), grads, method.bank.vectors.clone(), method.log_z.clone()

    loss_new, grads_new, bank_new, log_z_new = step(None)
    loss_old, grads_old, bank_old, log_z_old = step(old_contrast)
    assert torch.allclose(loss_new, loss_old, rtol=1e-6, atol=1e-6)
    # float32 sums of gradients up to ~1.5 in another order differ by up to ~1.3e-6 (torch 2.14): the absolute
    # tolerance is 2e-6 of the largest gradient (about 16 float32 steps at that size)
    assert torch.allclose(grads_new, grads_old, rtol=1e-5, atol=2e-6 * float(grads_old.abs().max()))
    assert torch.allclose(bank_new, bank_old, atol=1e-6)
    assert torch.allclose(log_z_new, log_z_old, rtol=1e-6, equal_nan=True)
    # The scores themselves, at the paper's sizes (tau = 0.07 gives scores up to ~14).
    method = InstDisc(encoder(), num_data=5000, temperature=0.07)
    g = torch.Generator().manual_seed(0)
    v, index = F.normalize(torch.randn(256, 128, generator=g), dim=1), torch.randperm(5000, generator=g)[:256]
    negatives = method.bank.sample_negatives(4096, exclude=index)
    for new, old in zip(method.scores(v, index, negatives), old_scores(method, v, index, negatives)):
        assert torch.allclose(new, old, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", [InstDisc, PIRL])
def test_one_step_changes_parameters_and_is_seeded(cls):
    def step():
        torch.manual_seed(0)
        method = cls(encoder(), num_data=32, num_negatives=16)
        start = params(method).clone()
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
        out = method([batch(), batch(seed=1)], torch.arange(8))
        out["loss"].backward()
        optimizer.step()
        return start, params(method), method.bank.vectors.clone()

    start, after, bank = step()
    assert not torch.equal(start, after)
    _, again, bank_again = step()
    assert torch.equal(after, again) and torch.equal(bank, bank_again)


# --------------------------------------------------------------------------- through the trainer
def config(tmp_path, *overrides, name="run"):
    return tiny_run_config(tmp_path, "epochs=2", "eval_every=1", "log_every=2", *overrides, name=name)


def data():
    return tiny_datasets()


def test_instdisc_and_pirl_train(tmp_path):
    result = train(
        config(tmp_path, "augment=instdisc", name="instdisc"),
        method=InstDisc(encoder(), num_data=64, num_negatives=32),
        datasets=data(),
    )
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert result.results["steps"] == 8 and "knn200_top1" in result.results
    assert all(math.isfinite(r["loss"]) and "positive_cos" in r and "output_std" in r for r in steps)
    assert int(result.method.bank.num_updates) == 8 and (result.method.bank.age() <= 4).all()

    result = train(
        config(tmp_path, TWO_VIEWS, name="pirl"), method=PIRL(encoder(), num_data=64, num_negatives=32), datasets=data()
    )
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert result.results["steps"] == 8
    assert all(math.isfinite(r["loss_jigsaw"]) and math.isfinite(r["loss_image"]) for r in steps)


def test_trainer_sizes_the_bank_from_the_data(tmp_path, monkeypatch):
    from sslbook.methods import METHODS
    from sslbook.trainer import method_from_checkpoint

    monkeypatch.setitem(METHODS, "pirl", PIRL)  # the registration sslbook.methods makes
    cfg = config(tmp_path, "method=pirl", TWO_VIEWS, "epochs=1", "eval_every=0", "method_args.num_negatives=16")
    result = train(cfg, datasets=data())
    assert result.method.bank.num_data == 64  # num_data = len(train_set), passed by the trainer
    restored, _ = method_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert torch.equal(restored.bank.vectors, result.method.bank.vectors)


@pytest.mark.parametrize(
    "cls, augment, loss",
    [(InstDisc, "augment=instdisc", "nce"), (PIRL, TWO_VIEWS, "softmax")],
)
def test_bf16_and_channels_last_keep_the_bank_float32(tmp_path, cls, augment, loss):
    # PIRL's 4 px jigsaw tiles reach layer4 at 1x1; its loss used to become NaN here with one thread,
    # from oneDNN's bf16 stride-2 convolution on 1x1 inputs, which models.py now runs with stride 1.
    torch.manual_seed(0)
    method = cls(encoder(), num_data=64, num_negatives=None if loss == "softmax" else 32, loss=loss)
    result = train(
        config(tmp_path, augment, "precision=bf16", "channels_last=true", "epochs=1", "eval_every=0"),
        method=method,
        datasets=data(),
    )
    bank = result.method.bank.vectors
    assert bank.dtype == torch.float32 and torch.allclose(bank.norm(dim=1), torch.ones(64), atol=1e-5)
    assert all(math.isfinite(r["loss"]) for r in result.log() if "loss" in r)


@pytest.mark.parametrize("cls, augment", [(InstDisc, "augment=instdisc"), (PIRL, TWO_VIEWS)])
def test_resume_mid_epoch_restores_the_bank_exactly(tmp_path, cls, augment):
    def method():
        torch.manual_seed(123)  # same initial weights for both runs (train() reseeds only afterwards)
        return cls(encoder(), num_data=64, num_negatives=32)

    whole = train(config(tmp_path, augment, "eval_every=0", name="whole"), method=method(), datasets=data()).method
    part = train(
        config(tmp_path, augment, "eval_every=0", "max_steps=5", name="split"), method=method(), datasets=data()
    )
    assert part.results["steps"] == 5  # stopped mid-epoch (4 steps per epoch)
    saved = read_checkpoint(tmp_path / "split" / "checkpoint.pt")["method"]
    assert int(saved["bank.num_updates"]) == 5 and torch.isfinite(saved["log_z"])
    resumed = train(
        config(tmp_path, augment, "eval_every=0", "resume=auto", name="split"), method=method(), datasets=data()
    ).method
    assert torch.equal(params(whole), params(resumed))
    for name, buffer in whole.state_dict().items():
        assert torch.equal(buffer, resumed.state_dict()[name]), name  # bank, write times, log Z, BN stats


def test_bank_staleness_is_one_for_rows_just_written_by_the_current_encoder():
    torch.manual_seed(0)
    method = InstDisc(encoder(), num_data=32, num_negatives=8).eval()
    images, index = batch(b=6), torch.tensor([1, 4, 7, 8, 20, 31])
    with torch.no_grad():
        method.bank.update(index, method.project(images), momentum=0.0)
    method.train()
    report = bank_staleness(method, images, index, batch_size=4)
    assert torch.allclose(report["cos"], torch.ones(6), atol=1e-5) and report["age"].tolist() == [0] * 6
    assert method.training  # modes restored
    report = bank_staleness(method, batch(b=3, seed=5), torch.tensor([0, 2, 3]))
    assert (report["cos"].abs() <= 1 + 1e-6).all() and report["age"].tolist() == [1, 1, 1]


def test_staleness_by_age_groups_rows_by_epochs():
    report = {"cos": torch.tensor([0.9, 0.7, 0.5, 0.1, 0.3]), "age": torch.tensor([0, 3, 10, 40, 45])}
    rows = staleness_by_age(report, steps_per_epoch=10, edges=(0.5, 1.0))
    assert [r["bin"] for r in rows] == ["0-0.5", "0.5-1", ">=1"]
    assert [r["count"] for r in rows] == [2, 0, 3]
    assert rows[0]["cos"] == pytest.approx(0.8) and math.isnan(rows[1]["cos"]) and rows[2]["cos"] == pytest.approx(0.3)


# --------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize(
    "name, cls",
    [("cifar10/instdisc", InstDisc), ("cifar10/pirl", PIRL), ("imagenet/instdisc", InstDisc), ("imagenet/pirl", PIRL)],
)
def test_shipped_configs_build(name, cls):
    cfg = load_config(name, ["profile=gpu", "model.width=8"])
    assert "et al" in cfg.paper and cfg.method == cls.__name__.lower()
    imagenet = name.startswith("imagenet")
    assert (cfg.model.encoder, cfg.model.stem, cfg.data.dataset) == (
        ("resnet50", "imagenet", "imagefolder") if imagenet else ("resnet18", "cifar", "cifar10")
    )
    backbone = build_encoder(cfg.model.encoder, width=cfg.model.width, stem=cfg.model.stem)
    method = cls(backbone, num_data=100, **cfg.method_args)  # the trainer passes num_data=len(train_set)
    assert method.bank.vectors.shape == (100, 128)
    size, side = (224, 256) if imagenet else (32, 32)
    images = torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8)
    views = build_augment(cfg, (0.5,) * 3, (0.25,) * 3, size)(images)
    assert len(views) == (2 if cls is PIRL else 1) and views[0].shape[-1] == size
    if cls is PIRL and imagenet:  # the paper's puzzle: 255 px crop, 85 px cells, 64 px tiles
        assert views[1].shape[-1] == 255 and jigsaw_tiles(views[1], tile=method.tile)[0].shape[-1] == 64
    out = method(views, torch.tensor([0, 1]))
    assert torch.isfinite(out["loss"])

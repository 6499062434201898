"""Context-based pretext tasks: RotNet, Jigsaw, relative patch position (sslbook.pretext + their methods)."""

import math

import pytest
import torch

from conftest import random_batch as batch
from conftest import seeded_sgd_step, tiny_datasets, tiny_run_config
from conftest import tiny_encoder as encoder
from sslbook import pretext
from sslbook.config import load_config
from sslbook.methods.jigsaw import Jigsaw
from sslbook.methods.relative_patch import RelativePatch
from sslbook.methods.rotation import RotNet
from sslbook.pretext import (
    CENTRE,
    NEIGHBOUR_CELLS,
    NEIGHBOURS,
    cell_pairs,
    hamming_distances,
    hamming_permutation_set,
    jigsaw_puzzle,
    jigsaw_tiles,
    patch_grid,
    relative_patch_pairs,
    rotate_batch,
    standardize_tiles,
)
from sslbook.trainer import build_augment, build_model, train

torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared CPU


def min_offdiagonal(d):
    return int(d[~torch.eye(len(d), dtype=torch.bool)].min())


def mean_offdiagonal(d):
    return float(d[~torch.eye(len(d), dtype=torch.bool)].float().mean())


# --------------------------------------------------------------------------- rotation
def test_rotation_label_k_is_k_quarter_turns_counter_clockwise():
    x = batch(6, side=8)
    k = torch.tensor([0, 1, 2, 3, 1, 2])
    rotated, labels = rotate_batch(x, k)
    assert torch.equal(labels, k)
    for i in range(6):
        assert torch.equal(rotated[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
        assert torch.equal(torch.rot90(rotated[i], -int(k[i]), dims=(-2, -1)), x[i])  # the inverse recovers it
    # Counter-clockwise as displayed: a mark in the top-right corner moves to the top-left with k = 1.
    mark = torch.zeros(1, 1, 3, 3)
    mark[0, 0, 0, 2] = 1
    assert rotate_batch(mark, [1])[0][0, 0, 0, 0] == 1
    assert rotate_batch(mark, [2])[0][0, 0, 2, 0] == 1 and rotate_batch(mark, [3])[0][0, 0, 2, 2] == 1


def test_rotation_all_gives_four_copies_grouped_by_rotation():
    x = batch(5, side=8)
    rotated, labels = rotate_batch(x, "all")
    assert rotated.shape == (20, 3, 8, 8) and labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for j in range(20):
        assert torch.equal(rotated[j], torch.rot90(x[j % 5], int(labels[j]), dims=(-2, -1)))


def test_random_rotations_are_uniform_seeded_and_need_square_images():
    torch.manual_seed(0)
    rotated, labels = rotate_batch(torch.zeros(4000, 1, 2, 2))
    counts = torch.bincount(labels, minlength=4).float()
    assert ((counts - 1000) ** 2 / 1000).sum() < 16.3  # chi-square, 3 d.o.f., 99.9%
    x = batch(8, side=8)
    torch.manual_seed(3)
    a = rotate_batch(x)
    torch.manual_seed(3)
    b = rotate_batch(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for i in range(8):  # each random label is the rotation actually applied
        assert torch.equal(a[0][i], torch.rot90(x[i], int(a[1][i]), dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(2, 3, 8, 10))
    with pytest.raises(ValueError, match="quarter-turn"):
        rotate_batch(x, [4] * 8)


# --------------------------------------------------------------------------- permutation sets
@pytest.mark.parametrize("selection", ["mean", "min"])
def test_permutation_set_rows_are_distinct_permutations_and_seeded(selection):
    p = hamming_permutation_set(100, seed=0, selection=selection)
    assert p.shape == (100, 9) and p.dtype == torch.long
    assert torch.equal(p.sort(dim=1).values, torch.arange(9).expand(100, 9))  # every row permutes 0..8
    assert len({tuple(r) for r in p.tolist()}) == 100  # distinct rows
    assert torch.equal(p, hamming_permutation_set(100, seed=0, selection=selection))  # deterministic
    assert not torch.equal(p, hamming_permutation_set(100, seed=1, selection=selection))
    p[0, 0] = -1  # a copy: the cached set is not changed
    assert hamming_permutation_set(100, seed=0, selection=selection)[0, 0] != -1


def test_permutation_sets_are_farther_apart_than_random_ones():
    g = torch.Generator().manual_seed(0)
    random_sets = [torch.stack([torch.randperm(9, generator=g) for _ in range(100)]) for _ in range(5)]
    random_min = max(min_offdiagonal(hamming_distances(r)) for r in random_sets)
    random_mean = max(mean_offdiagonal(hamming_distances(r)) for r in random_sets)
    paper = hamming_distances(hamming_permutation_set(100, selection="mean"))
    farthest = hamming_distances(hamming_permutation_set(100, selection="min"))
    assert mean_offdiagonal(paper) > random_mean  # the paper's criterion: the average distance
    assert min_offdiagonal(farthest) > random_min  # the farthest-point rule: the minimum distance
    assert mean_offdiagonal(farthest) == pytest.approx(mean_offdiagonal(paper), abs=0.01)


def test_permutation_set_follows_the_greedy_rule():
    """On a 2x2 grid (24 candidates), check every pick against Algorithm 1 by brute force."""
    import itertools

    candidates = torch.tensor(list(itertools.permutations(range(4))))
    for selection in ("mean", "min"):
        p = hamming_permutation_set(12, grid=2, seed=5, selection=selection)
        for i in range(1, 12):
            rest = [c for c in candidates.tolist() if c not in p[:i].tolist()]
            d = hamming_distances(torch.cat([p[:i], torch.tensor(rest)]))[i:, :i]  # [remaining, chosen]
            score = d.sum(1) if selection == "mean" else d.min(1).values * 1000 + d.sum(1)
            assert p[i].tolist() == rest[int(score.argmax())]
    assert len({tuple(r) for r in hamming_permutation_set(24, grid=2).tolist()}) == 24
    with pytest.raises(ValueError):
        hamming_permutation_set(25, grid=2)
    with pytest.raises(ValueError):
        hamming_permutation_set(10, grid=4)


# --------------------------------------------------------------------------- jigsaw
def test_jigsaw_label_is_the_index_of_its_permutation_and_unpermuting_recovers_the_cells():
    perm_set = hamming_permutation_set(10, selection="min")
    x = batch(4, side=30)
    labels = torch.tensor([3, 0, 9, 3])
    tiles, out_labels = jigsaw_puzzle(x, perm_set, tile=10, labels=labels)  # tile = cell: no jitter
    assert torch.equal(out_labels, labels)
    tiles = tiles.reshape(4, 9, 3, 10, 10)
    for b in range(4):
        order = perm_set[labels[b]]
        for slot in range(9):  # slot k holds cell order[k]
            r, c = divmod(int(order[slot]), 3)
            assert torch.equal(tiles[b, slot], x[b, :, 10 * r : 10 * r + 10, 10 * c : 10 * c + 10])
        cells = tiles[b][order.argsort()]  # un-permute: back to cell order
        image = cells.reshape(3, 3, 3, 10, 10).permute(2, 0, 3, 1, 4).reshape(3, 30, 30)
        assert torch.equal(image, x[b])
    torch.manual_seed(0)  # drawn labels are uniform over the set and index it
    _, drawn = jigsaw_puzzle(torch.zeros(2000, 1, 9, 9), perm_set)
    assert drawn.min() >= 0 and drawn.max() <= 9 and torch.bincount(drawn, minlength=10).min() > 150


def test_standardized_tiles_have_zero_mean_unit_std_and_flat_tiles_stay_finite():
    tiles = torch.randn(6, 3, 8, 8) * 5 + 2
    tiles[5] = 0.7  # flat
    out = standardize_tiles(tiles)
    assert torch.allclose(out[:5].mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-5)
    assert torch.allclose(out[:5].std(dim=(1, 2, 3), unbiased=False), torch.ones(5), atol=1e-4)
    assert out[5].abs().max() < 1e-3  # a flat tile: finite, about 0 everywhere


# --------------------------------------------------------------------------- relative patch
def coordinate_image(b, side):
    """Pixel (y, x) holds y in channel 0 and x in channel 1: a patch tells where it was cut."""
    y = torch.arange(side, dtype=torch.float32)[:, None].expand(side, side)
    x = torch.arange(side, dtype=torch.float32)[None, :].expand(side, side)
    return torch.stack([y, x, torch.zeros(side, side)])[None].repeat(b, 1, 1, 1)


@pytest.mark.parametrize(
    "patch, gap, jitter, side, grid",
    [(8, 3, 1, 32, 3), (4, 2, 0, 20, 3), (5, 6, 3, 40, 3), (14, 2, 1, 32, 2), (6, 2, 0, 14, 2)],
)
def test_neighbour_is_cut_at_the_labelled_position(patch, gap, jitter, side, grid):
    torch.manual_seed(0)
    images = coordinate_image(64, side)
    centre, neighbour, labels = relative_patch_pairs(images, patch, gap, jitter, grid=grid)
    assert centre.shape == neighbour.shape == (64, 3, patch, patch) and labels.shape == (64,)
    steps = torch.arange(patch, dtype=torch.float32)
    for b in range(64):
        for p in (centre[b], neighbour[b]):  # each patch is a contiguous patch x patch window of the image
            assert torch.equal(p[0], (p[0, 0, 0] + steps)[:, None].expand(patch, patch))
            assert torch.equal(p[1], (p[1, 0, 0] + steps)[None, :].expand(patch, patch))
        r, c = NEIGHBOURS[int(labels[b])]
        dy = neighbour[b, 0, 0, 0] - centre[b, 0, 0, 0]
        dx = neighbour[b, 1, 0, 0] - centre[b, 1, 0, 0]
        # Row r, column c of the grid, up to the two patches' jitter.
        assert abs(dy - (r - 1) * (patch + gap)) <= 2 * jitter and abs(dx - (c - 1) * (patch + gap)) <= 2 * jitter
        if jitter == 0:
            assert dy == (r - 1) * (patch + gap) and dx == (c - 1) * (patch + gap)
    assert set(labels.tolist()) == set(range(8))
    if grid == 2 and side == 2 * patch + gap:  # the grid fills the image: a patch's corner gives its cell
        row, col = (centre[:, 0, 0, 0] / (patch + gap)).long(), (centre[:, 1, 0, 0] / (patch + gap)).long()
        # "Right of" (label 4): the first patch in the left column, of either row; "below" (6): the top row.
        assert set(col[labels == 4].tolist()) == {0} and set(row[labels == 4].tolist()) == {0, 1}
        assert set(row[labels == 6].tolist()) == {0} and set(col[labels == 6].tolist()) == {0, 1}


def test_two_by_two_pairs_cover_every_ordered_pair_of_cells():
    firsts, seconds, labels = cell_pairs(2)
    assert len(labels) == 12 and len(set(zip(firsts, seconds))) == 12 and set(labels) == set(range(8))
    for a, b, y in zip(firsts, seconds, labels):  # the label is b's direction from a
        r, c = NEIGHBOURS[y]
        assert (b // 2 - a // 2, b % 2 - a % 2) == (r - 1, c - 1)
    assert sorted(labels.count(y) for y in range(8)) == [1, 1, 1, 1, 2, 2, 2, 2]  # diagonals once, sides twice
    assert cell_pairs(3) == ((CENTRE,) * 8, NEIGHBOUR_CELLS, tuple(range(8)))
    with pytest.raises(ValueError, match="3x3 or a 2x2 grid, got grid=4"):
        cell_pairs(4)


def test_patch_grid_keeps_gaps_inside_the_image_and_is_seeded():
    torch.manual_seed(1)
    patches, corners = patch_grid(coordinate_image(200, 32), patch=8, gap=3, jitter=1)
    assert patches.shape == (200, 9, 3, 8, 8)
    assert torch.equal(patches[:, :, 0, 0, 0].long(), corners[..., 0])  # corners are where patches were cut
    assert corners.min() >= 0 and (corners + 8).max() <= 32
    grid = corners.reshape(200, 3, 3, 2)
    gap_down = grid[:, 1:, :, 0] - (grid[:, :-1, :, 0] + 8)  # rows between vertically adjacent patches
    gap_right = grid[:, :, 1:, 1] - (grid[:, :, :-1, 1] + 8)
    assert gap_down.min() >= 1 and gap_right.min() >= 1 and gap_down.max() <= 5  # 3 +- 2 px of jitter
    assert len({tuple(c) for c in (corners[:, :, :] - corners[:, :1, :]).reshape(200, -1).tolist()}) > 1  # jitter
    torch.manual_seed(1)
    assert torch.equal(patch_grid(coordinate_image(200, 32), 8, 3, 1)[1], corners)
    with pytest.raises(ValueError, match="needs 34 px"):
        patch_grid(torch.zeros(1, 3, 32, 32), patch=8, gap=4, jitter=1)
    with pytest.raises(ValueError, match="gap >= 2"):
        patch_grid(torch.zeros(1, 3, 32, 32), patch=8, gap=1, jitter=1)
    patches, corners = patch_grid(coordinate_image(50, 32), patch=14, gap=2, jitter=1, grid=2)
    assert patches.shape == (50, 4, 3, 14, 14) and corners.min() >= 0 and (corners + 14).max() <= 32
    with pytest.raises(ValueError, match="a grid of 2 x 15 px patches with 2 px gaps and 1 px jitter needs 34 px"):
        patch_grid(torch.zeros(1, 3, 32, 32), patch=15, gap=2, jitter=1, grid=2)
    # The pair labels pick the cells of NEIGHBOUR_CELLS, around the centre cell.
    assert [divmod(c, 3) for c in NEIGHBOUR_CELLS] == list(NEIGHBOURS) and CENTRE == 4


def test_gray_patches_are_the_luma_of_the_pixels_renormalised():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    pixels = torch.rand(4, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.manual_seed(0)
    centre, _, _ = relative_patch_pairs((pixels - m) / s, gray_p=1.0, mean=mean, std=std)
    back = centre * s + m  # the pixels of the patch
    assert torch.allclose(back[:, 0], back[:, 1], atol=1e-5) and torch.allclose(back[:, 1], back[:, 2], atol=1e-5)
    torch.manual_seed(0)
    plain, _, _ = relative_patch_pairs(pixels, gray_p=0.0)  # the same draws: same grid
    luma = 0.299 * plain[:, 0] + 0.587 * plain[:, 1] + 0.114 * plain[:, 2]
    assert torch.allclose(back[:, 0], luma, atol=1e-5)
    uint8 = (pixels * 255).round().to(torch.uint8)
    torch.manual_seed(0)
    gray_uint8, _, _ = relative_patch_pairs(uint8, gray_p=1.0)
    assert gray_uint8.dtype == torch.uint8 and torch.equal(gray_uint8[:, 0], gray_uint8[:, 2])


# --------------------------------------------------------------------------- the methods
def make(cls, width=4):
    kwargs = {
        RotNet: {},
        Jigsaw: dict(num_permutations=24, selection="min", hidden_dim=32),
        RelativePatch: dict(hidden_dim=32, patch=3, gap=2, jitter=1),
    }[cls]
    return cls(encoder(width), **kwargs)


@pytest.mark.parametrize("cls", [RotNet, Jigsaw, RelativePatch])
def test_forward_returns_loss_accuracy_and_features(cls):
    torch.manual_seed(0)
    method = make(cls)
    out = method([batch(8, side=16)], torch.arange(8))
    assert out["loss"].requires_grad and math.isfinite(out["loss"].item())
    assert not out["accuracy"].requires_grad and 0 <= out["accuracy"].item() <= 100
    assert not out["z"].requires_grad and out["z"].shape[1] == method.backbone.feature_dim
    rows = {RotNet: 32, Jigsaw: 72, RelativePatch: 16}[cls]  # 4 rotations, 9 tiles, 2 patches per image
    assert out["z"].shape[0] == rows
    # The untrained classifier is near chance: log(number of classes).
    classes = {RotNet: 4, Jigsaw: 24, RelativePatch: 8}[cls]
    assert abs(out["loss"].item() - math.log(classes)) < 1.5


@pytest.mark.parametrize("cls", [RotNet, Jigsaw, RelativePatch])
def test_one_step_changes_parameters_and_is_seeded(cls):
    start, after = seeded_sgd_step(lambda: make(cls), [batch(8, side=16)])
    assert not torch.equal(start, after)
    _, again = seeded_sgd_step(lambda: make(cls), [batch(8, side=16)])
    assert torch.equal(after, again)


def test_method_options():
    torch.manual_seed(0)
    one = RotNet(encoder(), all_rotations=False, head_layers=2, hidden_dim=16)
    assert one([batch(8, side=16)], None)["z"].shape[0] == 8 and len(one.classifier) == 4
    pairs = RelativePatch(encoder(), hidden_dim=32, patch=3, gap=2, jitter=1, all_neighbours=True, gray_p=0.5)
    features, labels, h = pairs.pairs(batch(3, side=16))
    assert features.shape == (24, 2 * pairs.backbone.feature_dim) and labels.tolist() == list(range(8)) * 3
    assert h.shape == (27, pairs.backbone.feature_dim)
    # Each pair is (centre, neighbour of its label): the centre half repeats, the neighbour halves differ.
    d = pairs.backbone.feature_dim
    assert torch.equal(features[:8, :d], features[:1, :d].expand(8, d))
    # On a 2x2 grid: 4 patches per image, 12 labelled pairs (every ordered pair of cells).
    two = RelativePatch(encoder(), hidden_dim=32, patch=7, gap=2, jitter=0, all_neighbours=True, grid=2)
    features, labels, h = two.pairs(batch(3, side=16))
    assert features.shape == (36, 2 * d) and h.shape == (12, d) and labels.tolist() == list(cell_pairs(2)[2]) * 3
    assert torch.equal(features[0, d:], features[3, :d])  # pair 0's second cell (1) is pair 3's first
    assert math.isfinite(two([batch(3, side=16)])["loss"].item())
    assert RelativePatch(encoder(), patch=7, gap=2, jitter=0, grid=2)([batch(4, side=16)])["z"].shape[0] == 8
    with pytest.raises(ValueError, match="grid=5"):
        RelativePatch(encoder(), grid=5)
    jig = Jigsaw(encoder(), num_permutations=24, selection="min", hidden_dim=32)
    assert torch.equal(jig.state_dict()["permutations"], hamming_permutation_set(24, selection="min"))
    assert set(pairs.state_dict()) >= {"mean", "std"}


# --------------------------------------------------------------------------- through the trainer
ONE_VIEW = "augment=[{size: 16, scale: [0.7, 1.0], jitter_p: 0.0, gray_p: 0.0}]"


@pytest.mark.parametrize("cls", [RotNet, Jigsaw, RelativePatch])
def test_train_through_the_trainer(tmp_path, cls):
    result = train(tiny_run_config(tmp_path, ONE_VIEW, "eval_every=1"), method=make(cls), datasets=tiny_datasets())
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert result.results["steps"] == 8 and "knn200_top1" in result.results
    assert all(math.isfinite(r["loss"]) and "accuracy" in r and "output_std" in r for r in steps)


@pytest.mark.parametrize("cls", [RotNet, Jigsaw, RelativePatch])
def test_bf16_and_channels_last(tmp_path, cls):
    torch.manual_seed(0)
    cfg = tiny_run_config(tmp_path, ONE_VIEW, "precision=bf16", "channels_last=true", "epochs=1")
    result = train(cfg, method=make(cls), datasets=tiny_datasets())
    assert all(math.isfinite(r["loss"]) for r in result.log() if "loss" in r and "step" in r)


# --------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("name, cls", [("rotation", RotNet), ("jigsaw", Jigsaw), ("relative_patch", RelativePatch)])
def test_shipped_configs_build(name, cls, monkeypatch):
    from sslbook.methods import METHODS

    monkeypatch.setitem(METHODS, name, cls)  # the registration sslbook.methods makes
    cfg = load_config(f"cifar10/{name}", ["profile=smoke", "model.width=4"])
    assert "et al" in cfg.paper and cfg.method == name
    assert (cfg.model.encoder, cfg.model.stem, cfg.data.dataset) == ("resnet18", "cifar", "cifar10")
    assert load_config(f"cifar10/{name}", ["profile=gpu"]).model.width == 64
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    method = build_model(cfg, num_data=100, mean=mean, std=std)
    assert type(method) is cls
    if cls is RelativePatch:  # the trainer hands over the views' normalisation
        assert torch.allclose(method.mean, torch.tensor(mean)) and torch.allclose(method.std, torch.tensor(std))
    if cls is Jigsaw:
        d = hamming_distances(method.permutations)
        assert method.permutations.shape == (24, 4) and min_offdiagonal(d) == 2  # all 4! orders of a 2x2 grid
    views = build_augment(cfg, mean, std, 32)(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert len(views) == 1 and views[0].shape == (4, 3, 32, 32)
    torch.manual_seed(0)
    out = method(views, torch.arange(4))
    assert torch.isfinite(out["loss"])
    if cls is Jigsaw:  # 32 px -> 16 px cells -> 12 px tiles (a 3x3 grid: 10 px cells, 8 px tiles)
        assert jigsaw_tiles(views[0], method.grid)[0].shape[-1] == 12 and jigsaw_tiles(views[0])[0].shape[-1] == 8


# ----------------------------------------------------------------- the JPEG block grid (shortcut)
def _coordinate_images(n: int = 64, side: int = 32) -> torch.Tensor:
    """Channel 0 holds each pixel's column, channel 1 its row: a piece's top-left value is where it was cut."""
    cols = torch.arange(side, dtype=torch.float32).expand(side, side)
    return torch.stack([cols, cols.T, torch.zeros(side, side)]).expand(n, 3, side, side).clone()


def _jigsaw_offsets(grid: int, tile=None, draws: int = 20) -> list[set]:
    """For each cell: the set of column offsets (mod 16) from the JPEG block grid its tiles start at."""
    torch.manual_seed(0)
    n = grid * grid
    offsets = [set() for _ in range(n)]
    for _ in range(draws):
        images = _coordinate_images()
        identity = torch.arange(n).expand(len(images), n)
        tiles, _ = pretext.jigsaw_tiles(images, grid, tile, permutations=identity)
        starts = tiles[:, 0, 0, 0].reshape(len(images), n)
        for cell in range(n):
            offsets[cell] |= {int(v) % 16 for v in starts[:, cell]}
    return offsets


def test_shipped_jigsaw_tiles_do_not_tell_their_cell_by_the_block_grid():
    args = load_config("cifar10/jigsaw").method_args
    offsets = _jigsaw_offsets(args["grid"], args.get("tile"))
    assert all(o == offsets[0] for o in offsets)  # every cell: the same offsets from the 8/16 px blocks
    assert offsets[0] == {0, 1, 2, 3, 4}  # 12 px tiles anywhere in a 16 px cell
    first = _jigsaw_offsets(3)  # the first recipe: 10 px cells, whose offsets give the column away
    assert first[0] == {0, 1, 2} and first[1] == {10, 11, 12} and first[2] == {4, 5, 6}


def _pair_offsets(grid: int, patch: int, gap: int, jitter: int, draws: int = 20) -> dict:
    """For each label: the offsets (mod 8) of its second patch's corner from its first's, as (dy, dx) pairs."""
    torch.manual_seed(0)
    firsts, seconds, labels = pretext.cell_pairs(grid)
    out = {label: set() for label in labels}
    for _ in range(draws):
        _, corners = pretext.patch_grid(_coordinate_images(), patch, gap, jitter, grid=grid)  # [B, grid**2, 2]
        for a, b, label in zip(firsts, seconds, labels):
            out[label] |= {(int(dy) % 8, int(dx) % 8) for dy, dx in (corners[:, b] - corners[:, a]).tolist()}
    return out


def test_shipped_relative_patch_grid_does_not_tell_a_direction_by_the_block_grid():
    args = load_config("cifar10/relative_patch").method_args
    assert (args["patch"] + args["gap"]) % 8 == 0  # cells a whole number of 8 px JPEG blocks apart
    jittered = {6, 7, 0, 1, 2}  # two patches' jitter of +-1 px each
    everywhere = {(dy, dx) for dy in jittered for dx in jittered}
    offsets = _pair_offsets(args.get("grid", 3), args["patch"], args["gap"], args["jitter"])
    assert sorted(offsets) == list(range(8)) and all(o == everywhere for o in offsets.values())  # the same for all 8
    previous = _pair_offsets(3, 6, 2, 1)  # the 3x3 grid of 6 px patches 8 px apart (the previous recipe)
    assert all(o == everywhere for o in previous.values())
    first = _pair_offsets(3, 8, 3, 1)  # the first recipe: 11 px apart, so the offset names the side
    left, right = pretext.NEIGHBOURS.index((1, 0)), pretext.NEIGHBOURS.index((1, 2))
    assert {dx for _, dx in first[left]} == {3, 4, 5, 6, 7} and {dx for _, dx in first[right]} == {1, 2, 3, 4, 5}

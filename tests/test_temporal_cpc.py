"""Frame-based contrast (sslbook.video, TemporalContrast) and future prediction (CPC)."""

import math

import pytest
import torch

from conftest import flat_params as params
from conftest import random_batch as batch
from conftest import seeded_sgd_step, tiny_datasets, tiny_run_config
from conftest import tiny_encoder as encoder
from sslbook.augment import resized_crop
from sslbook.config import load_config
from sslbook.data import DatasetFormatError, DatasetNotFoundError
from sslbook.losses import mutual_information_bound
from sslbook.methods.cpc import CPC, CausalContext, overlapping_patches
from sslbook.methods.temporal import TemporalContrast, frame_matching
from sslbook.trainer import build_augment, build_model, train
from sslbook.video import ClipFolder, camera_clips, camera_paths, train_on_clips

torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared CPU


def coordinate_image(b, side):
    """Pixel (y, x) holds y in channel 0 and x in channel 1."""
    y = torch.arange(side, dtype=torch.float32)[:, None].expand(side, side)
    x = torch.arange(side, dtype=torch.float32)[None, :].expand(side, side)
    return torch.stack([y, x, torch.zeros(side, side)])[None].repeat(b, 1, 1, 1)


# --------------------------------------------------------------------------- camera clips
def test_camera_clips_shapes_and_dtypes():
    images = torch.randint(0, 256, (5, 3, 32, 24), dtype=torch.uint8)
    clips = camera_clips(images, frames=4)
    assert clips.shape == (5, 4, 3, 24, 24) and clips.dtype == torch.float32
    assert 0 <= clips.min() and clips.max() <= 1  # uint8 is scaled to [0, 1]
    clips, boxes = camera_clips(batch(2), frames=1, size=16, return_boxes=True)
    assert clips.shape == (2, 1, 3, 16, 16) and boxes.shape == (2, 1, 4)


def test_camera_clips_are_seeded():
    x = batch(6)
    torch.manual_seed(3)
    a = camera_clips(x, 4)
    torch.manual_seed(3)
    b = camera_clips(x, 4)
    assert torch.equal(a, b)
    torch.manual_seed(4)
    assert not torch.equal(a, camera_clips(x, 4))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(camera_clips(x, 4, generator=g1), camera_clips(x, 4, generator=g2))


def test_frames_of_a_clip_are_crops_of_their_own_image():
    colours = torch.linspace(-2, 2, 6)
    images = colours.view(6, 1, 1, 1).expand(6, 3, 32, 32).contiguous()  # image b is constant colours[b]
    torch.manual_seed(0)
    clips = camera_clips(images, frames=5, zoom=2.0, pan=1.0)
    assert torch.allclose(clips, colours.view(6, 1, 1, 1, 1).expand_as(clips), atol=1e-6)
    # Each frame is resized_crop of its image at its box.
    x = batch(3)
    torch.manual_seed(1)
    clips, boxes = camera_clips(x, frames=4, return_boxes=True)
    for b in range(3):
        for t in range(4):
            assert torch.allclose(clips[b, t], resized_crop(x[b : b + 1], boxes[b, t : t + 1], 32)[0], atol=1e-6)


def test_a_still_camera_repeats_the_frame():
    torch.manual_seed(0)
    clips = camera_clips(batch(4), frames=6, scale=(0.5, 0.5), zoom=1.0, pan=0.0)
    assert torch.equal(clips, clips[:, :1].expand_as(clips))
    assert not torch.equal(clips[0, 0], clips[1, 0])


def test_camera_paths_are_smooth_square_and_inside():
    torch.manual_seed(0)
    boxes = camera_paths(500, 40, 30, frames=6, scale=(0.2, 0.9), zoom=1.5, pan=0.6)
    top, left, h, w = boxes.unbind(-1)
    assert torch.equal(h, w)  # square crops
    assert top.min() >= 0 and left.min() >= 0 and (top + h).max() <= 40 + 1e-4 and (left + w).max() <= 30 + 1e-4
    second_difference = boxes[:, 2:] - 2 * boxes[:, 1:-1] + boxes[:, :-2]
    assert second_difference.abs().max() < 1e-4  # a steady pan and zoom: linear in time
    ratio = h[:, -1] / h[:, 0]
    assert ratio.min() >= 1 / 1.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    area = (h[:, 0] / 30) ** 2
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 0.9 + 1e-5
    centre = boxes[..., :2] + boxes[..., 2:] / 2
    travel = (centre[:, -1] - centre[:, 0]).norm(dim=1)
    assert travel.max() <= 0.6 * 30 + 1e-4 and travel.mean() > 1.0  # the camera does move
    with pytest.raises(ValueError, match="zoom >= 1"):
        camera_paths(1, 8, 8, zoom=0.5)


def test_frames_follow_the_path():
    # On a ramp image the mean of a bilinear crop is its centre (minus half a pixel): the content moves
    # with the camera.
    torch.manual_seed(2)
    clips, boxes = camera_clips(coordinate_image(20, 32), frames=4, pan=1.0, return_boxes=True)
    centre = boxes[..., :2] + boxes[..., 2:] / 2 - 0.5  # [B, T, (y, x)]
    assert torch.allclose(clips[:, :, 0].mean(dim=(2, 3)), centre[..., 0], atol=1e-3)
    assert torch.allclose(clips[:, :, 1].mean(dim=(2, 3)), centre[..., 1], atol=1e-3)


# --------------------------------------------------------------------------- ClipFolder
def write_video(folder, colours, size=(20, 16), ext="png", names=None):
    from PIL import Image

    folder.mkdir(parents=True)
    for n, colour in enumerate(colours):
        name = names[n] if names else f"frame_{n + 1:04d}.{ext}"
        Image.new("RGB", size, (colour, colour, 255 - colour)).save(folder / name)


def frame_values(clip):
    """The red value of each (constant) frame of a clip [T, 3, s, s]."""
    assert (clip == clip[:, :, :1, :1]).all()
    return clip[:, 0, 0, 0].tolist()


def test_clip_folder_reads_class_layout_in_frame_order(tmp_path):
    # Unpadded numbers: frame_10 must come after frame_9, not after frame_1.
    names = [f"frame_{n}.png" for n in range(1, 13)]
    write_video(tmp_path / "walk" / "v_walk_01", list(range(10, 130, 10)), names=names)
    write_video(tmp_path / "walk" / "v_walk_02", [1, 2, 3, 4, 5])
    write_video(tmp_path / "run" / "v_run_01", [200, 201, 202, 203, 204])
    (tmp_path / "walk" / ".DS_Store").write_text("ignored")
    folder = ClipFolder(tmp_path, frames=3, size=8, step=2)
    assert len(folder) == 3 and folder.classes == ["run", "walk"]
    assert folder.labels.tolist() == [0, 1, 1]
    walk = [i for i, v in enumerate(folder.videos) if v.name == "v_walk_01"][0]
    clip = folder.clip(walk, 7)
    assert clip.shape == (3, 3, 8, 8) and clip.dtype == torch.uint8
    assert frame_values(clip) == [80, 100, 120]  # files frame_8, frame_10, frame_12
    assert folder.num_starts(walk) == 12 - 4
    torch.manual_seed(0)
    clip, label = folder[walk]
    values = frame_values(clip)
    assert values[1] - values[0] == 20 and values[2] - values[1] == 20 and label == 1  # consecutive-ish: step 2
    with pytest.raises(IndexError):
        folder.clip(walk, 8 + 1)


def test_clip_folder_flat_layout_and_sampling(tmp_path):
    for v in range(4):
        write_video(tmp_path / f"video{v}", [40 * v + n for n in range(6)], ext="jpg")
    folder = ClipFolder(tmp_path, frames=2, size=12)
    assert folder.classes == [] and folder.labels.tolist() == [-1] * 4
    clips, labels, index = folder.sample(3, clips_per_video=2, generator=torch.Generator().manual_seed(0))
    assert len(clips) == 2 and clips[0].shape == (3, 2, 3, 12, 12) and len(set(index.tolist())) == 3
    again = folder.sample(3, 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(clips, again[0])) and torch.equal(index, again[2])
    assert "videos=4" in repr(folder)


def test_clip_folder_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        ClipFolder(tmp_path / "missing")
    write_video(tmp_path / "a" / "v1", [1, 2, 3, 4])
    (tmp_path / "a" / "v1" / "notes.txt").write_text("not a frame")
    with pytest.raises(DatasetFormatError, match=r"v1/notes\.txt is not an image file.*move it out"):
        ClipFolder(tmp_path / "a", frames=2)
    (tmp_path / "a" / "v1" / "notes.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"v1 has 4 frames, a clip of 5 frames 1 apart needs 5; lower"):
        ClipFolder(tmp_path / "a", frames=5)
    with pytest.raises(DatasetFormatError, match=r"v1 has 4 frames, a clip of 3 frames 2 apart needs 5"):
        ClipFolder(tmp_path / "a", frames=3, step=2)
    (tmp_path / "a" / "v1" / "frame_0002.png").write_bytes(b"this is not a png")
    folder = ClipFolder(tmp_path / "a", frames=2, size=8)
    with pytest.raises(DatasetFormatError, match=r"cannot read frame .*frame_0002\.png.*re-extract it or delete it"):
        folder.clip(0, 0)
    (tmp_path / "a" / "stray.jpg").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"stray\.jpg is a file directly under root"):
        ClipFolder(tmp_path / "a")
    write_video(tmp_path / "b" / "cls" / "v1", [1, 2])
    write_video(tmp_path / "b" / "v2", [1, 2])
    with pytest.raises(DatasetFormatError, match="mixes class folders and video folders"):
        ClipFolder(tmp_path / "b", frames=2)
    (tmp_path / "c").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no videos"):
        ClipFolder(tmp_path / "c")


def test_train_on_a_tiny_frame_folder(tmp_path):
    for v in range(6):
        write_video(
            tmp_path / ("odd" if v % 2 else "even") / f"v{v}", [30 * v + 3 * n for n in range(5)], size=(18, 14)
        )
    folder = ClipFolder(tmp_path, frames=2, size=12)
    torch.manual_seed(0)
    method = TemporalContrast(encoder(), frames=2, out_dim=16)
    start = params(method).clone()
    records = train_on_clips(method, folder, steps=3, batch_size=4, lr=0.05)
    assert len(records) == 3 and all(math.isfinite(r["loss"]) and "accuracy" in r for r in records)
    assert not torch.equal(start, params(method))
    # Real clips as views: 2 clips x 2 frames per video, all four frames of a video are positives.
    out = method([torch.randn(4, 2, 3, 12, 12), torch.randn(4, 2, 3, 12, 12)], None)
    assert out["z"].shape == (16, 16)


# --------------------------------------------------------------------------- temporal contrast
def test_temporal_contrast_groups_the_frames_of_each_video():
    torch.manual_seed(0)
    method = TemporalContrast(encoder(), frames=3, out_dim=16)
    x = batch(4, side=16)
    out = method([x, x], None)
    assert out["z"].shape == (4 * 6, 16) and not out["z"].requires_grad  # 2 clips x 3 frames per image
    assert out["loss"].requires_grad and math.isfinite(out["loss"].item())
    assert 0 <= out["accuracy"] <= 100
    clips = method.clips([x])
    assert clips.shape == (4, 3, 3, 16, 16)
    with pytest.raises(ValueError, match="at least two frames"):
        TemporalContrast(encoder(), frames=1)([x], None)


def test_frame_matching_accuracy():
    video = torch.tensor([0, 0, 1, 1])
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    accuracy, positive_cos = frame_matching(z, video)
    assert accuracy == 100 and positive_cos > 0.99
    accuracy, _ = frame_matching(z[[0, 2, 1, 3]], video)  # frames matched with the other video
    assert accuracy == 0


# --------------------------------------------------------------------------- CPC
@pytest.mark.parametrize("side, patch, stride, rows", [(32, 8, 4, 7), (30, 8, 4, 6), (16, 4, 2, 7), (12, 12, 5, 1)])
def test_overlapping_patch_grid_geometry(side, patch, stride, rows):
    images = coordinate_image(2, side)
    grid = overlapping_patches(images, patch, stride)
    assert grid.shape == (2, rows, rows, 3, patch, patch)
    steps = torch.arange(patch, dtype=torch.float32)
    for r in range(rows):
        for c in range(rows):
            # patch (r, c) starts at pixel (r * stride, c * stride) and is a contiguous window
            assert torch.equal(grid[0, r, c, 0], (r * stride + steps)[:, None].expand(patch, patch))
            assert torch.equal(grid[0, r, c, 1], (c * stride + steps)[None, :].expand(patch, patch))
    with pytest.raises(ValueError, match="patch"):
        overlapping_patches(images, side + 1, 1)


def test_context_network_is_causal():
    torch.manual_seed(0)
    context = CausalContext(dim=6, hidden=8, layers=3)
    z = torch.randn(2, 6, 7, 7)
    changed = z.clone()
    changed[:, :, 4:] = torch.randn(2, 6, 3, 7)  # rows 4..6 only
    c, c2 = context(z), context(changed)
    assert torch.equal(c[:, :, :4], c2[:, :, :4])  # rows above are untouched
    assert not torch.allclose(c[:, :, 4], c2[:, :, 4])  # row 4 does see itself
    # And row 4 depends on rows above it (the receptive field covers 3 rows up).
    above = z.clone()
    above[:, :, 1] += 1.0
    assert not torch.allclose(context(above)[:, :, 4], c[:, :, 4])


def test_cpc_context_ignores_the_image_below_its_row():
    torch.manual_seed(0)
    method = CPC(encoder(), context_dim=8, context_layers=2).eval()  # eval: BN does not mix the patches
    x = batch(2)
    lower = x.clone()
    lower[:, :, 20:] = torch.randn(2, 3, 12, 32)  # pixels 20..31 lie in patch rows >= 4 (rows r cover 4r..4r+7)
    with torch.no_grad():
        c, c2 = method.context(method.latents(x)), method.context(method.latents(lower))
    assert torch.equal(c[:, :, :4], c2[:, :, :4]) and not torch.allclose(c[:, :, 4], c2[:, :, 4])


def test_cpc_loss_matches_a_loop_over_predictions():
    torch.manual_seed(0)
    method = CPC(
        encoder(),
        patch=4,
        stride=2,
        context_dim=8,
        context_layers=2,
        target_dim=5,
        steps_to_ignore=1,
        steps_to_predict=3,
    )  # predict 2 and 3 rows ahead
    assert method.offsets == [2, 3]
    x = batch(2, side=12)  # 5 x 5 grid
    out = method([x], None)
    with torch.no_grad():  # train mode: the same batch gives the same BatchNorm statistics
        z = method.latents(x)
        c = method.context(z)
        targets = method.to_target(z)  # [2, 5, 5, 5]
        candidates = [(b, r, col) for b in range(2) for r in range(5) for col in range(5)]
        total = 0.0
        for k, predictor in zip(method.offsets, method.predictors):
            pred = predictor(c) * method.emb_scale
            terms = []
            for b in range(2):
                for r in range(5 - k):
                    for col in range(5):
                        scores = torch.stack([pred[b, :, r, col] @ targets[bb, :, rr, cc] for bb, rr, cc in candidates])
                        positive = candidates.index((b, r + k, col))
                        terms.append(-(scores[positive] - torch.logsumexp(scores, 0)))
            total += torch.stack(terms).mean()
    assert out["loss"].item() == pytest.approx(float(total), rel=1e-4)
    n = 2 * 25
    assert out["log_n"].item() == pytest.approx(math.log(n))
    assert out["mi_bound"].item() == pytest.approx(mutual_information_bound(out["loss"].item() / 2, n - 1), rel=1e-5)
    assert 0 <= out["accuracy"] <= 100


def test_cpc_embed_is_the_mean_patch_feature():
    torch.manual_seed(0)
    method = CPC(encoder(), context_dim=8).eval()
    x = batch(3)
    patches = overlapping_patches(x, 8, 4).flatten(0, 2)
    with torch.no_grad():
        expected = method.backbone(patches).reshape(3, 49, -1).mean(dim=1)
    assert torch.allclose(method.embed(x), expected, atol=1e-5)
    assert method.embed(x).shape == (3, method.backbone.feature_dim)
    with pytest.raises(ValueError, match="cannot predict 3 rows ahead"):
        CPC(encoder(), patch=8, stride=12)([x], None)  # 3 x 3 grid


# --------------------------------------------------------------------------- both methods
def make(cls):
    if cls is CPC:
        return CPC(encoder(), patch=4, stride=2, context_dim=16, context_layers=2)  # 16 px -> 7 x 7
    return TemporalContrast(encoder(), frames=2, out_dim=16)


@pytest.mark.parametrize("cls", [TemporalContrast, CPC])
def test_one_step_changes_parameters_and_is_seeded(cls):
    views = [batch(8, side=16), batch(8, side=16, seed=1)]
    start, after = seeded_sgd_step(lambda: make(cls), views)
    assert not torch.equal(start, after)
    assert torch.equal(after, seeded_sgd_step(lambda: make(cls), views)[1])


FULL_VIEW = "{size: 16, scale: [1.0, 1.0], ratio: [1.0, 1.0]}"
TWO_VIEWS = f"augment=[{FULL_VIEW}, {FULL_VIEW}]"


@pytest.mark.parametrize("cls", [TemporalContrast, CPC])
def test_train_through_the_trainer(tmp_path, cls):
    result = train(
        tiny_run_config(tmp_path, TWO_VIEWS, "epochs=1", "eval_every=1"), method=make(cls), datasets=tiny_datasets()
    )
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert result.results["steps"] == 4 and "knn200_top1" in result.results
    assert all(math.isfinite(r["loss"]) and "accuracy" in r and "output_std" in r for r in steps)
    if cls is CPC:
        assert all(r["mi_bound"] <= r["log_n"] for r in steps) and steps[0]["log_n"] == pytest.approx(math.log(16 * 49))


@pytest.mark.parametrize("name, cls", [("temporal", TemporalContrast), ("cpc", CPC)])
def test_shipped_configs_build(name, cls, monkeypatch):
    from sslbook.methods import METHODS

    monkeypatch.setitem(METHODS, name, cls)  # the registration sslbook.methods makes
    cfg = load_config(f"cifar10/{name}", ["profile=smoke", "model.width=4"])
    assert "et al" in cfg.paper and cfg.method == name
    assert (cfg.model.encoder, cfg.model.stem, cfg.data.dataset) == ("resnet18", "cifar", "cifar10")
    method = build_model(cfg, num_data=100)
    assert type(method) is cls
    views = build_augment(cfg, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32)(
        torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    )
    assert all(v.shape == (4, 3, 32, 32) for v in views)
    torch.manual_seed(0)
    out = method(views, torch.arange(4))
    assert torch.isfinite(out["loss"])
    if cls is CPC:  # 32 px, 8 px patches every 4 px: a 7 x 7 grid
        assert overlapping_patches(views[0], method.patch, method.stride).shape[1:3] == (7, 7)
    else:
        assert len(views) == 2 and out["z"].shape[0] == 4 * 2 * method.frames


@pytest.mark.parametrize("cls", [TemporalContrast, CPC])
def test_bf16_and_channels_last(tmp_path, cls):
    torch.manual_seed(0)
    cfg = tiny_run_config(tmp_path, TWO_VIEWS, "precision=bf16", "channels_last=true", "epochs=1")
    result = train(cfg, method=make(cls), datasets=tiny_datasets())
    steps = [r for r in result.log() if "loss" in r and "step" in r]
    assert steps and all(math.isfinite(r["loss"]) for r in steps)

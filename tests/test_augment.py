"""sslbook.augment against torchvision, op by op, plus distributions, determinism, errors.

Tolerances: every op is compared with torchvision's *tensor* functional op on float images
in [0, 1]. Our implementations compute the same function in float32 (resize: the same
tent-filter weights as torch's antialiased bilinear interpolate, borders included), so the
only differences are float rounding: we require max |diff| <= 1e-5 everywhere, borders
included (hue: 1e-5 too; it is ~1e-6 in practice). Against PIL (the classic DataLoader
pipeline, which rounds to uint8 after every op) we only require the crop to agree within
2/255.
"""

import itertools
import math

import pytest
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from sslbook import augment as A

TOL = 1e-5


def _images(B=6, H=32, W=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=g)


def _float(x8):
    return x8.float() / 255.0


def _maxdiff(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------- crop + resize


@pytest.mark.parametrize(
    "H,W,size,box",
    [
        (32, 32, 32, (3, 4, 20, 15)),  # upsample, non-square crop
        (32, 32, 32, (0, 0, 32, 32)),  # identity
        (32, 32, 18, (10, 2, 9, 12)),  # SwAV-style local crop
        (40, 36, 12, (5, 2, 30, 30)),  # downsample: antialiasing matters
        (40, 36, 24, (0, 0, 40, 36)),  # whole non-square image, anisotropic
        (32, 32, 32, (31, 31, 1, 1)),  # a single pixel in the corner
    ],
)
def test_resized_crop_matches_torchvision(H, W, size, box):
    x8 = _images(4, H, W)
    boxes = torch.tensor([box] * 4)
    ref = TF.resized_crop(_float(x8), *box, [size, size], antialias=True)
    assert _maxdiff(A.resized_crop(x8, boxes, size), ref) <= TOL  # uint8 in
    assert _maxdiff(A.resized_crop(_float(x8), boxes, size), ref) <= TOL  # float in


def test_resized_crop_per_sample_boxes_and_flip():
    torch.manual_seed(1)
    x8 = _images(16, 32, 32)
    boxes = A.sample_crop_boxes(16, 32, 32)
    flip = torch.rand(16) < 0.5
    out = A.resized_crop(x8, boxes, 32, flip=flip)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    for b in range(16):
        ref = TF.resized_crop(_float(x8[b]), *boxes[b].tolist(), [32, 32], antialias=True)
        if flip[b]:
            ref = TF.horizontal_flip(ref)
        assert _maxdiff(out[b], ref) <= TOL


def test_resized_crop_close_to_pil():
    # The classic pipeline resizes uint8 PIL images; same filter, uint8 rounding.
    x8 = _images(3, 32, 32)
    box = (2, 5, 17, 21)
    out = A.resized_crop(x8, torch.tensor([box] * 3), 32)
    for b in range(3):
        pil = TF.resized_crop(TF.to_pil_image(x8[b]), *box, [32, 32])
        assert _maxdiff(out[b], _float(TF.pil_to_tensor(pil))) <= 2 / 255


def test_hflip():
    x = _float(_images(4))
    mask = torch.tensor([True, False, True, False])
    out = A.hflip(x, mask)
    assert torch.equal(out[0], TF.horizontal_flip(x[0])) and torch.equal(out[1], x[1])


# ---------------------------------------------------------------------------- colour ops


@pytest.mark.parametrize(
    "ours,theirs,factors",
    [
        (A.adjust_brightness, TF.adjust_brightness, [0.0, 0.6, 1.0, 1.4]),
        (A.adjust_contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.8]),
        (A.adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.8]),
        (A.adjust_hue, TF.adjust_hue, [-0.5, -0.1, 0.0, 0.37]),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, factors):
    x = _float(_images(len(factors), 16, 16))
    out = ours(x, torch.tensor(factors))  # one factor per sample
    for b, f in enumerate(factors):
        assert _maxdiff(out[b], theirs(x[b], f)) <= TOL, (ours.__name__, f)


def test_hue_on_greys_and_ties():
    # Grey pixels (R = G = B) and ties for the max channel are where HSV code can go wrong.
    x = torch.rand(4, 3, 8, 8)
    x[0] = x[0, :1]  # all grey
    x[1, 1] = x[1, 0]  # R == G everywhere
    x[2, 2] = x[2, 1]  # G == B
    x[3] = torch.tensor([0.0, 1.0]).repeat(96)[:192].view(3, 8, 8)  # pure 0/1 colours
    for h in (-0.5, -0.25, 0.2, 0.5):
        out = A.adjust_hue(x, torch.full((4,), h))
        assert _maxdiff(out, TF.adjust_hue(x, h)) <= TOL


def test_grayscale_solarize_normalize():
    x = _float(_images(4))
    assert _maxdiff(A.rgb_to_grayscale(x), TF.rgb_to_grayscale(x)) <= TOL
    mask = torch.tensor([True, False, True, True])
    g = A.random_grayscale(x, mask)
    assert _maxdiff(g[0], TF.rgb_to_grayscale(x[0], num_output_channels=3)) <= TOL and torch.equal(g[1], x[1])
    s = A.solarize(x, mask, 0.5)
    assert torch.equal(s[2], TF.solarize(x[2], 0.5)) and torch.equal(s[1], x[1])
    mean, std = A.CIFAR10_MEAN, A.CIFAR10_STD
    assert _maxdiff(A.normalize(x, mean, std), TF.normalize(x, list(mean), list(std))) <= TOL


@pytest.mark.parametrize("sigmas,k", [([0.1, 0.7, 1.3, 2.0], 3), ([0.5, 2.0, 1.0, 0.3], 9), ([1.5, 0.2, 2.0, 1.0], 23)])
def test_gaussian_blur_matches_torchvision(sigmas, k):
    x = torch.rand(4, 3, 32, 32)
    out = A.gaussian_blur(x, torch.tensor(sigmas), k)
    for b, s in enumerate(sigmas):
        assert _maxdiff(out[b], TF.gaussian_blur(x[b], [k, k], [s, s])) <= TOL
    assert A.blur_kernel_size(224) == 23 and A.blur_kernel_size(32) == 3 and A.blur_kernel_size(96) == 9


def test_color_jitter_follows_each_samples_order():
    torch.manual_seed(2)
    B = 24
    x = _float(_images(B, 16, 16))
    p = A.sample_jitter_params(B, 0.4, 0.4, 0.4, 0.1, p=0.8)
    out = A.apply_color_jitter(x, **p)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for b in range(B):
        ref = x[b]
        if p["apply"][b]:
            for op in p["order"][b].tolist():  # torchvision's ColorJitter.transform loop
                ref = fns[op](ref, p["factors"][b, op].item())
        assert _maxdiff(out[b], ref) <= TOL
    assert torch.equal(x, _float(_images(B, 16, 16)))  # input untouched


def test_render_view_matches_torchvision_pipeline():
    # A whole SimCLR view with drawn parameters == torchvision ops applied one by one.
    torch.manual_seed(3)
    x8 = _images(32, 32, 32)
    spec = A.recipe("simclr")[0]
    p = A.sample_view_params(x8, spec)
    out = A.render_view(x8, p, spec)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for b in range(32):
        ref = TF.resized_crop(_float(x8[b]), *p["boxes"][b].tolist(), [32, 32], antialias=True)
        if p["flip"][b]:
            ref = TF.horizontal_flip(ref)
        if p["jitter"][b]:
            for op in p["jitter_order"][b].tolist():
                ref = fns[op](ref, p["jitter_factors"][b, op].item())
        if p["gray"][b]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        ref = TF.normalize(ref, list(spec.mean), list(spec.std))
        assert _maxdiff(out[b], ref) <= 1e-4  # normalised scale: 1e-5 / std


# ---------------------------------------------------------------------------- distributions


def test_crop_box_distribution_matches_torchvision():
    B, H, W = 20000, 32, 32
    torch.manual_seed(4)
    ours = A.sample_crop_boxes(B, H, W, (0.08, 1.0), (3 / 4, 4 / 3)).double()
    top, left, h, w = ours.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert (h >= 1).all() and (w >= 1).all()
    # Integer rounding of w and h lets area and ratio stray slightly outside the ranges.
    area = h * w / (H * W)
    assert area.min() >= 0.08 * 0.8 and area.max() <= 1.0
    assert (w / h).min() >= 3 / 4 * 0.85 and (w / h).max() <= 4 / 3 / 0.85
    # Same distribution as torchvision's own sampler (incl. its rejection of boxes that
    # don't fit): compare means with a large sample from it.
    rrc = T.RandomResizedCrop(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    dummy = torch.zeros(3, H, W)
    ref = torch.tensor(
        [[p["top"], p["left"], p["height"], p["width"]] for p in (rrc.make_params([dummy]) for _ in range(5000))],
        dtype=torch.float64,
    )
    for col in range(4):
        se = math.sqrt(ours[:, col].var() / B + ref[:, col].var() / len(ref))
        assert abs(ours[:, col].mean() - ref[:, col].mean()) < 4 * se, col
    # Expected area fraction without rejection would be 0.54; torchvision rejects the
    # boxes too wide/tall for the image, which lowers it: both samplers agree on that.
    assert abs(area.mean() - (ref[:, 2] * ref[:, 3]).mean() / (H * W)) < 0.01


def test_crop_box_fallback_is_torchvision_centre_crop():
    # Aspect ratios 3..4 at 90-100% area never fit a square: all 10 tries fail.
    boxes = A.sample_crop_boxes(50, 32, 32, (0.9, 1.0), (3.0, 4.0))
    torch.manual_seed(0)
    ref = T.RandomResizedCrop(32, scale=(0.9, 1.0), ratio=(3.0, 4.0)).make_params([torch.zeros(3, 32, 32)])
    assert (boxes == torch.tensor([ref["top"], ref["left"], ref["height"], ref["width"]])).all()
    # Wide images with narrow ratios: fallback width = height * max(ratio).
    boxes = A.sample_crop_boxes(8, 10, 40, (0.95, 1.0), (0.5, 1.0))
    assert (boxes == torch.tensor([0, 15, 10, 10])).all()


def test_probabilities_and_jitter_ranges():
    torch.manual_seed(5)
    B = 20000
    spec = A.ViewSpec(flip_p=0.5, jitter=(0.4, 0.3, 0.2, 0.1), jitter_p=0.8, gray_p=0.2, solarize_p=0.3)
    p = A.sample_view_params(torch.zeros(B, 3, 8, 8, dtype=torch.uint8), spec)
    tol = 4 * math.sqrt(0.25 / B)
    for key, target in [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("solarize", 0.3), ("blur", 0.0)]:
        assert abs(p[key].float().mean().item() - target) < tol, key
    f = p["jitter_factors"]
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        assert f[:, col].min() >= lo and f[:, col].max() <= hi
        assert abs(f[:, col].mean().item() - (lo + hi) / 2) < 0.01
    assert (p["sigma"] >= 0.1).all() and (p["sigma"] <= 2.0).all()


def test_jitter_order_is_a_uniform_random_permutation():
    torch.manual_seed(6)
    order = A.sample_jitter_params(24000)["order"]
    assert (order.sort(dim=1).values == torch.arange(4)).all()  # each row a permutation
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in order.tolist():
        counts[tuple(row)] += 1
    assert min(counts.values()) > 800 and max(counts.values()) < 1200  # all 24, ~1000 each


# ---------------------------------------------------------------------------- the module


def test_augment_shapes_dtypes_device_and_independent_views():
    torch.manual_seed(7)
    x8 = _images(8, 32, 32)
    views = A.Augment(A.recipe("simclr"))(x8)
    assert len(views) == 2
    for v in views:
        assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32 and v.device == x8.device
        assert torch.isfinite(v).all()
    # Two views of the same image are different random views.
    assert all(_maxdiff(views[0][b], views[1][b]) > 0.1 for b in range(8))


def test_determinism_and_chunking():
    x8 = _images(20, 32, 32)
    aug = A.Augment(A.recipe("simclr"))
    torch.manual_seed(8)
    a = aug(x8)
    torch.manual_seed(8)
    b = aug(x8)
    torch.manual_seed(8)
    c = A.Augment(A.recipe("simclr"), chunk=7, workers=1)(x8)  # chunks in turn...
    torch.manual_seed(8)
    c2 = A.Augment(A.recipe("simclr"), chunk=6, workers=2)(x8)  # ...or on 2 threads: same result
    c_state = torch.get_rng_state()
    for u, v, w, w2 in zip(a, b, c, c2):
        assert torch.equal(u, v) and torch.equal(u, w) and torch.equal(u, w2)
    d = aug(x8)
    assert not torch.equal(a[0], d[0])
    # The RNG state after a call is a resumable checkpoint.
    e = aug(x8)
    torch.set_rng_state(c_state)
    aug(x8)
    assert torch.equal(aug(x8)[0], e[0])


def test_worker_threads_leave_torch_thread_settings_alone():
    import threading

    before = torch.get_num_threads()
    A.Augment(A.recipe("simclr"), chunk=4, workers=2)(_images(16))
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == before and seen == [before]


@pytest.mark.parametrize("name", sorted(A.RECIPES))
@pytest.mark.parametrize("size,H", [(32, 32), (96, 112)])
def test_every_recipe_runs(name, size, H):
    torch.manual_seed(9)
    x8 = _images(3, H, H)
    specs = A.recipe(name, size=size)
    views = A.Augment(specs)(x8)
    expected = {"swav": 8, "instdisc": 1, "eval": 1}.get(name, 2)
    assert len(views) == expected
    for spec, v in zip(specs, views):
        assert v.shape == (3, 3, spec.size, spec.size) and torch.isfinite(v).all()
    if size >= A.BLUR_MIN_SIZE and name in ("simclr", "moco_v2", "simsiam", "byol", "swav"):
        assert any(s.blur_p > 0 for s in specs)
    if size < A.BLUR_MIN_SIZE:
        assert all(s.blur_p == 0 for s in specs)


def test_recipe_details():
    simclr = A.recipe("simclr")
    assert simclr[0].jitter == pytest.approx((0.4, 0.4, 0.4, 0.1)) and simclr[0].scale == (0.08, 1.0)
    assert A.recipe("simclr", size=224)[0].jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
    byol = A.recipe("byol", size=224)
    assert (byol[0].blur_p, byol[0].solarize_p, byol[1].blur_p, byol[1].solarize_p) == (1.0, 0.0, 0.1, 0.2)
    swav = A.recipe("swav", size=224, mean=A.IMAGENET_MEAN, std=A.IMAGENET_STD)
    assert [s.size for s in swav] == [224] * 2 + [96] * 6 and swav[2].scale == (0.05, 0.14)
    assert [s.size for s in A.recipe("swav")] == [32] * 2 + [18] * 6
    assert [s.size for s in A.recipe("swav", local_crops=2)] == [32, 32, 18, 18]
    assert [s.size for s in A.recipe("swav", size=16, local_crops=0)] == [16, 16]
    with pytest.raises(ValueError, match="'simclr' has no local crops"):
        A.recipe("simclr", local_crops=2)
    assert A.recipe("moco_v1")[0].jitter_p == 1.0 and A.recipe("moco_v1")[0].gray_before_jitter
    assert A.recipe("simsiam") == A.recipe("moco_v2")


def test_eval_recipe_has_no_randomness():
    x8 = _images(4, 32, 32)
    aug = A.Augment(A.recipe("eval"))
    (a,), (b,) = aug(x8), aug(x8)
    assert torch.equal(a, b)
    assert _maxdiff(a, TF.normalize(_float(x8), list(A.CIFAR10_MEAN), list(A.CIFAR10_STD))) <= 1e-4
    (c,) = A.Augment(A.recipe("eval", size=24))(x8)  # resize when needed
    ref = TF.normalize(TF.resize(_float(x8), [24, 24], antialias=True), list(A.CIFAR10_MEAN), list(A.CIFAR10_STD))
    assert _maxdiff(c, ref) <= 1e-4


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad,words",
    [
        (torch.rand(2, 3, 32, 32), "uint8"),
        (torch.zeros(3, 32, 32, dtype=torch.uint8), "[B, 3, H, W]"),
        (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "[B, 3, H, W]"),
        ([[0]], "torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error(bad, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        A.Augment(A.recipe("simclr"))(bad)


def test_unknown_recipe_lists_valid_names():
    with pytest.raises(ValueError) as err:
        A.recipe("simclrr")
    for name in A.RECIPES:
        assert name in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    x8 = _images(16, 32, 32)
    spec = A.recipe("byol", size=32)[1]
    p = A.sample_view_params(x8, spec)
    cpu = A.render_view(x8, p, spec)
    gpu = A.render_view(x8.cuda(), {k: v.cuda() for k, v in p.items()}, spec)
    assert gpu.device.type == "cuda" and _maxdiff(cpu, gpu.cpu()) <= 1e-4

"""Downstream-task tools: the pictures of sslbook.viz, S4L (sslbook.semi), transfer to digits (sslbook.transfer)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from conftest import tiny_dataset  # noqa: E402
from sslbook import viz  # noqa: E402
from sslbook.data import ImageTensorDataset  # noqa: E402
from sslbook.eval import knn_accuracy, retrieve  # noqa: E402
from sslbook.models import resnet, vit_tiny  # noqa: E402
from sslbook.semi import S4L, exemplar_identities, rotation_views, s4l_train  # noqa: E402
from sslbook.transfer import transfer_digits, transfer_eval  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def uint8_images(n, side=16, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen(seed))


def no_hooks(module: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in module.modules())


def mixed_modes(model: nn.Module) -> list:
    """Put the model in train mode with one BatchNorm frozen; return the flags to compare with later."""
    model.train()
    next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eval()
    return [m.training for m in model.modules()]


# --------------------------------------------------------------------------- first-layer filters
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_stem_filters_are_min_max_scaled_rgb_tiles(kernel):
    enc = resnet(18, "cifar", width=8, stem_kernel=kernel)
    tiles = viz.stem_filters(enc)
    assert tiles.shape == (8, kernel, kernel, 3)
    flat = tiles.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(8))
    torch.testing.assert_close(flat.max(1).values, torch.ones(8))
    # tile[f, i, j, c] is the conv weight [f, c, i, j], scaled
    w = enc.conv1.weight.detach()[3].permute(1, 2, 0)
    torch.testing.assert_close(tiles[3], (w - w.min()) / (w.max() - w.min()))


def test_stem_filters_of_a_vit_and_figures():
    vit = vit_tiny(img_size=16, patch_size=4, dim=12, depth=1, heads=3)
    assert viz.stem_filters(vit).shape == (12, 4, 4, 3)
    fig = viz.first_layer_filters(resnet(18, "imagenet", width=8))
    assert len(fig.axes) == 1 and "7x7" in fig.axes[0].get_title()
    fig = viz.filters_side_by_side(
        {"random": resnet(18, "cifar", width=8, stem_kernel=5), "other": resnet(18, "cifar", width=8, stem_kernel=5)}
    )
    assert [ax.get_title() for ax in fig.axes] == ["random", "other"]
    with pytest.raises(ValueError, match="no RGB conv"):
        viz.stem_filters(nn.Linear(3, 3))


# --------------------------------------------------------------------------- feature maps
def test_capture_activations_shapes_hooks_removed_modes_restored():
    enc = resnet(18, "cifar", width=4)
    flags = mixed_modes(enc)
    images = uint8_images(3)
    layers = ["layer1", "layer2", "layer3", "layer4"]
    acts = viz.capture_activations(enc, images, layers, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "layer1": (3, 4, 16, 16),
        "layer2": (3, 8, 8, 8),
        "layer3": (3, 16, 4, 4),
        "layer4": (3, 32, 2, 2),
    }
    assert no_hooks(enc) and [m.training for m in enc.modules()] == flags
    # the hooked outputs are the ones forward_maps computes, in eval mode
    enc.eval()
    with torch.no_grad():
        x = (images.float() / 255 - 0.5) / 0.25
        torch.testing.assert_close(acts["layer3"], enc.forward_maps(x)["layer3"])

    with pytest.raises(ValueError, match="no module named 'layer9'"):
        viz.capture_activations(enc, images, ["layer9"])
    assert no_hooks(enc)


def test_capture_activations_cleans_up_after_an_error():
    enc = resnet(18, "cifar", width=4)
    flags = mixed_modes(enc)
    with pytest.raises(RuntimeError):
        viz.capture_activations(enc, torch.zeros(2, 5, 8, 8, dtype=torch.uint8), ["layer1"])  # 5 channels: conv fails
    assert no_hooks(enc) and [m.training for m in enc.modules()] == flags


def test_feature_maps_figure():
    enc = resnet(18, "cifar", width=4)
    enc.train()
    fig = viz.feature_maps(enc, uint8_images(2), channels=2)
    assert len(fig.axes) == 2 * (1 + 2 * 4)
    assert enc.training and no_hooks(enc)


# --------------------------------------------------------------------------- ViT attention
def test_cls_attention_is_the_models_attention():
    vit = vit_tiny(img_size=16, patch_size=4, dim=12, depth=2, heads=3).train()
    images = uint8_images(2)
    maps = viz.cls_attention(vit, images, upsample=False)
    assert maps.shape == (2, 3, 4, 4) and vit.training
    vit.eval()
    with torch.no_grad():
        attn = vit.attention_maps(images.float() / 255, layer=-1)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 17))  # every attention row sums to 1
    # over the patch grid CLS's weights sum to 1 minus its attention to itself
    torch.testing.assert_close(maps.sum((2, 3)) + attn[:, :, 0, 0], torch.ones(2, 3))
    up = viz.cls_attention(vit, images)
    assert up.shape == (2, 3, 16, 16)
    torch.testing.assert_close(up[:, :, ::4, ::4], maps)  # nearest: one 4x4 block per patch
    fig = viz.vit_attention_maps(vit, images)
    assert len(fig.axes) == 2 * (3 + 2)


# --------------------------------------------------------------------------- Grad-CAM
class LeftHalfNet(nn.Module):
    """Sees only the left half of the image: a fixed mask, then 1x1 conv features, pool, linear.

    Weights are made positive so every class score grows with every feature (alpha_k > 0)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), nn.ReLU())
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            self.features[0].weight.abs_()
            self.head.weight.abs_()

    def forward(self, x):
        mask = torch.zeros_like(x)
        mask[..., : x.shape[-1] // 2] = 1
        return self.head(self.features(x * mask).mean((2, 3)))


class ColourNet(nn.Module):
    """Class 0 = how red the image is, class 1 = how blue: 1x1 conv colour detectors, pool, identity head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]).view(2, 3, 1, 1))
        self.relu = nn.ReLU(inplace=True)  # in place on purpose: Grad-CAM must still see A

    def forward(self, x):
        return self.relu(self.features(x)).mean((2, 3))


def test_grad_cam_of_a_left_half_network_is_on_the_left():
    torch.manual_seed(0)
    model = LeftHalfNet()
    images = uint8_images(4, side=16, seed=3)
    cams = viz.grad_cam(model, images, "features")
    assert cams.shape == (4, 16, 16) and cams.min() >= 0 and cams.max() <= 1
    left, right = cams[..., :8].sum((1, 2)), cams[..., 8:].sum((1, 2))
    assert (left > 10).all() and (right == 0).all()  # all the heatmap's mass is on the left
    assert torch.allclose(cams.flatten(1).max(1).values, torch.ones(4))


def test_grad_cam_follows_the_class():
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    images[0, 0, 4:12, 1:7] = 255  # a red square on the left
    images[0, 2, 4:12, 9:15] = 255  # a blue square on the right
    model = ColourNet()
    red, blue = viz.grad_cam(model, images, model.relu, class_idx=0), viz.grad_cam(model, images, "relu", class_idx=1)
    assert red[0, 4:12, 1:7].mean() > 0.9 and red[0, :, 8:].max() < 0.1 + 1e-6
    assert blue[0, 4:12, 9:15].mean() > 0.9 and blue[0, :, :8].max() < 0.1 + 1e-6
    # one class index per image
    both = viz.grad_cam(model, images.expand(2, -1, -1, -1), "relu", class_idx=[0, 1])
    torch.testing.assert_close(both, torch.cat([red, blue]))


def test_grad_cam_on_a_resnet_leaves_the_model_as_it_was():
    enc = resnet(18, "cifar", width=4)
    model = nn.Sequential()
    model.add_module("encoder", enc)
    model.add_module("head", nn.Linear(enc.feature_dim, 5))
    flags = mixed_modes(model)
    images = uint8_images(3)
    cams = viz.grad_cam(model, images, "encoder.layer4", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert cams.shape == (3, 16, 16) and 0 <= cams.min() and cams.max() <= 1
    peaks = cams.flatten(1).max(1).values
    assert ((peaks - 1).abs() < 1e-5).logical_or(peaks == 0).all()  # each map scaled to max 1 (or all 0)
    assert [m.training for m in model.modules()] == flags and no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    fig = viz.grad_cam_figure(model, images, "encoder.layer4", classes=[f"c{i}" for i in range(5)])
    assert len(fig.axes) == 6 and [m.training for m in model.modules()] == flags


# --------------------------------------------------------------------------- retrieval and embeddings
def test_retrieval_grid_shows_the_brute_force_neighbours():
    g = gen(4)
    gallery_x, query_x = torch.randn(12, 5, generator=g), torch.randn(3, 5, generator=g)
    gallery_images, query_images = uint8_images(12, 8, seed=5), uint8_images(3, 8, seed=6)
    gallery_y, query_y = torch.arange(12) % 3, torch.tensor([0, 1, 2])
    k = 4
    # brute force: cosine similarity by loops, sorted
    cos = [[float(F.cosine_similarity(q, v, dim=0)) for v in gallery_x] for q in query_x]
    brute = torch.tensor([sorted(range(12), key=lambda j: -row[j])[:k] for row in cos])
    _, idx = retrieve(query_x, gallery_x, k)
    assert torch.equal(idx, brute)
    fig = viz.retrieval_grid(query_images, gallery_images, idx, query_y, gallery_y, ["a", "b", "c"])
    axes = [ax for ax in fig.axes]
    assert len(axes) == 3 * (k + 1)
    for r in range(3):
        for j in range(k):
            ax = axes[r * (k + 1) + j + 1]
            shown = torch.as_tensor(ax.images[0].get_array())
            torch.testing.assert_close(shown, gallery_images[brute[r, j]].permute(1, 2, 0).float() / 255)
            wrong = gallery_y[brute[r, j]] != query_y[r]
            colour = matplotlib.colors.to_hex(ax.spines["top"].get_edgecolor())
            assert colour == matplotlib.colors.to_hex("tab:red" if wrong else "tab:green")


def test_retrieval_picker_constructs_and_updates():
    pytest.importorskip("ipywidgets")
    g = gen(7)
    feats = {
        "A": (torch.randn(4, 6, generator=g), torch.randn(10, 6, generator=g)),
        "B": (torch.randn(4, 3, generator=g), torch.randn(10, 3, generator=g)),
    }
    widget = viz.retrieval_picker(
        uint8_images(4, 8), uint8_images(10, 8, 1), feats, torch.arange(4) % 2, torch.arange(10) % 2, ["x", "y"], k=3
    )
    slider = widget.children[0]
    assert slider.max == 3
    slider.value = 2  # redraws without error


def blobs(n_per_class, classes=3, dim=64, seed=0):
    g = gen(seed)
    centres = 10 * torch.randn(classes, dim, generator=g)
    x = torch.cat([c + torch.randn(n_per_class, dim, generator=g) for c in centres])
    return x, torch.arange(classes).repeat_interleave(n_per_class)


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_embed_2d_keeps_clusters_and_is_seeded(method):
    x, y = blobs(25)
    coords, index = viz.embed_2d(x, method, seed=0, max_points=60)
    assert coords.shape == (60, 2) and index.shape == (60,) and len(index.unique()) == 60
    assert knn_accuracy(coords, y[index], coords, y[index], k=5) == 100.0  # separated blobs stay separated
    again, index2 = viz.embed_2d(x, method, seed=0, max_points=60)
    assert torch.equal(index, index2) and torch.allclose(coords, again)
    fig = viz.embedding_map(x, y, ["a", "b", "c"], method=method, max_points=60)
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="tsne"):
        viz.embed_2d(x, "umap")


# --------------------------------------------------------------------------- S4L
def test_rotation_views_labels():
    images = uint8_images(3, 8)
    labels = torch.tensor([7, 2, 5])
    rotated, rotation, classes = rotation_views(images, labels)
    assert rotated.shape == (12, 3, 8, 8)
    for k in range(4):
        for i in range(3):
            row = k * 3 + i
            assert torch.equal(rotated[row], torch.rot90(images[i], k, dims=(1, 2)))
            assert rotation[row] == k and classes[row] == labels[i]
    assert rotation_views(images)[2] is None
    assert exemplar_identities(3, 2).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("task", ["rotation", "exemplar"])
def test_s4l_one_step_changes_the_parameters(task):
    torch.manual_seed(0)
    model = S4L(resnet(18, "cifar", width=4), num_classes=4, self_supervised=task, weight=0.5, embed_dim=8)
    g = gen(1)
    shape = (6, 3, 3, 8, 8) if task == "exemplar" else (6, 3, 8, 8)
    labelled, unlabelled = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    labels = torch.arange(6) % 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.loss(labelled, labels, unlabelled)
    torch.testing.assert_close(out["loss"].detach(), out["supervised"] + 0.5 * out["self_supervised"])
    assert 0 <= out["accuracy"] <= 1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out["loss"].backward()
    assert model.aux_head.weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0
    opt.step()
    after = model.state_dict()
    for name in ("encoder.conv1.weight", "head.weight", "aux_head.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_s4l_weight_zero_ignores_the_self_supervised_head():
    model = S4L(resnet(18, "cifar", width=4), num_classes=2, weight=0.0)
    x = torch.randn(4, 3, 8, 8, generator=gen(2))
    model.loss(x, torch.tensor([0, 1, 0, 1]), x)["loss"].backward()
    assert model.aux_head.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("task", ["rotation", "exemplar"])
def test_s4l_train_runs_seeded_and_leaves_the_encoder_alone(task):
    enc = resnet(18, "cifar", width=4)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    labelled, unlabelled = tiny_dataset(16, 16, seed=0), tiny_dataset(32, 16, seed=2)
    test = tiny_dataset(16, 16, seed=1)
    rng = torch.random.get_rng_state()
    kw = dict(self_supervised=task, epochs=2, batch_size=8, copies=2, eval_every=1)
    a = s4l_train(enc, labelled, unlabelled, test, **kw)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in state.items())
    assert len(a["history"]) == 2 and 0 <= a["test_top1"] <= 100 and "test_top1" in a["history"][-1]
    assert a["history"][0]["self_supervised"] > 0 and not a["model"].training
    b = s4l_train(enc, labelled, unlabelled, test, **kw)
    assert a["test_top1"] == b["test_top1"] and a["history"][-1]["loss"] == b["history"][-1]["loss"]


# --------------------------------------------------------------------------- transfer to digits
def test_transfer_digits_shapes_labels_and_split():
    train, test = transfer_digits(size=32, test_fraction=0.3, seed=0)
    assert isinstance(train, ImageTensorDataset) and len(train) + len(test) == 1797
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 1]) and torch.equal(train.images[:, 0], train.images[:, 2])
    assert sorted(train.labels.unique().tolist()) == list(range(10)) == sorted(test.labels.unique().tolist())
    assert train.classes == [str(d) for d in range(10)]
    assert abs(len(test) / 1797 - 0.3) < 0.01
    # stratified: every digit has ~30% of its images in the test split
    counts = (
        torch.bincount(test.labels, minlength=10).float()
        / (torch.bincount(test.labels, minlength=10) + torch.bincount(train.labels, minlength=10)).float()
    )
    assert ((counts - 0.3).abs() < 0.02).all()
    assert train.images.max() == 255 and train.images.min() == 0
    # no image in both splits; the same split for the same seed
    both = torch.cat([train.images, test.images]).flatten(1)
    assert len(torch.unique(both, dim=0)) > 0.95 * 1797  # a few digits are pixel-identical in the source
    again, _ = transfer_digits(size=32, test_fraction=0.3, seed=0)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    small, _ = transfer_digits(size=16, seed=1)
    assert small.images.shape[-1] == 16


def test_transfer_eval_with_a_frozen_encoder():
    train, test = transfer_digits(size=16)
    train, test = train.subset(200, seed=0), test.subset(100, seed=0)
    enc = resnet(18, "cifar", width=4).train()
    out = transfer_eval(enc, train, test, linear_epochs=3)
    assert set(out) == {"knn_top1", "linear_top1"} and all(0 <= v <= 100 for v in out.values())
    assert enc.training


def test_resize_images_and_transfer_datasets(tmp_path):
    from sslbook.data import DatasetNotFoundError
    from sslbook.transfer import resize_images, transfer_available, transfer_datasets

    ds = tiny_dataset(6, side=12)
    ds.images[:] = 77  # a flat image stays flat at any size
    big = resize_images(ds, 24)
    assert big.images.shape == (6, 3, 24, 24) and big.images.dtype == torch.uint8 and (big.images == 77).all()
    assert torch.equal(big.labels, ds.labels) and big.classes == ds.classes and big.mean == ds.mean
    assert resize_images(ds, 12) is ds

    train, test = transfer_datasets("digits", size=16)
    assert train.images.shape[1:] == (3, 16, 16) and len(train) + len(test) == 1797
    assert transfer_available("digits")
    for name in ("cifar100", "stl10"):  # not on disk under an empty root: no silent download
        assert not transfer_available(name, root=tmp_path)
        with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
            transfer_datasets(name, root=tmp_path)
    with pytest.raises(ValueError, match="cifar100, stl10"):
        transfer_datasets("imagenet")

"""Figures the chapters share: image grids, training curves, and what a network has learned.

Kept here so that notebooks stay short and every chapter draws the same thing the same way.

* :func:`image_grid`, :func:`training_curves` -- data and runs;
* :func:`first_layer_filters`, :func:`filters_side_by_side`, :func:`feature_maps` -- inside a CNN;
* :func:`vit_attention_maps` (:func:`cls_attention`) -- where a ViT's class token looks;
* :func:`grad_cam`, :func:`grad_cam_figure` -- which pixels a classifier's decision rests on;
* :func:`retrieval_grid`, :func:`retrieval_picker`, :func:`embedding_map` -- the feature space.

Every function that runs a model puts its train/eval flags back and removes any hook it added.
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from .eval import normalize_images
from .utils import eval_mode


def to_display(images: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """uint8 or (normalised) float [B,3,H,W] -> float [B,H,W,3] in [0,1] for imshow."""
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif mean is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def image_grid(
    images: torch.Tensor,
    titles: Optional[Sequence[str]] = None,
    ncols: int = 8,
    size: float = 1.3,
    mean=None,
    std=None,
    suptitle: Optional[str] = None,
):
    """Show a batch of images in a grid; returns the figure."""
    x = to_display(images, mean, std)
    nrows = -(-len(x) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * size, nrows * size * (1.15 if titles else 1)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(x):
            ax.imshow(x[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def training_curves(runs: dict, baseline: Optional[float] = None, metric: str = "knn200_top1"):
    """Loss per step and kNN top-1 per evaluation for one or more runs ({label: RunResult}); returns the figure."""
    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(11, 3.6))
    for label, run in runs.items():
        log = run.log()
        steps = [r for r in log if "loss" in r and "step" in r]
        ax_loss.plot([r["train_minutes"] for r in steps], [r["loss"] for r in steps], label=label)
        evals = [r["eval"] for r in log if "eval" in r] + [r["final"] for r in log if "final" in r]
        points = [(e["train_minutes"], e[metric]) for e in evals if metric in e]
        if points:
            ax_knn.plot(*zip(*points), marker="o", label=label)
    if baseline is not None:
        ax_knn.axhline(baseline, color="gray", linestyle="--", label="raw pixels")
    ax_loss.set(xlabel="training minutes", ylabel="loss", title="training loss")
    ax_knn.set(xlabel="training minutes", ylabel="kNN top-1 (%)", title="kNN monitor (test set)")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- helpers
def _module_of(model):
    """The nn.Module behind ``model`` (itself, or the owner of a bound method such as ``method.embed``)."""
    module = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    return module if isinstance(module, nn.Module) else None


def _as_input(images: torch.Tensor, mean=None, std=None, device=None) -> torch.Tensor:
    """uint8 images -> float network input (standardised with mean/std when given, else in [0, 1]);
    float images are taken to be the network's input already."""
    x = images.to(device) if device is not None else images
    if x.dtype == torch.uint8:
        return normalize_images(x, mean, std) if mean is not None else x.float() / 255
    return x.float()


def _device_of(module) -> torch.device:
    params = list(module.parameters()) if module is not None else []
    return params[0].device if params else torch.device("cpu")


def _resolve_layer(model: nn.Module, layer) -> nn.Module:
    """``layer`` as a module: a module already, or the name of one in ``model.named_modules()``."""
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n in modules if n and "." not in n]
        raise ValueError(f"no module named {layer!r} in {type(model).__name__}; top-level modules: {', '.join(names)}")
    return modules[layer]


def _mosaic(tiles: torch.Tensor, ncols: int, pad: int = 1, fill: float = 1.0) -> torch.Tensor:
    """[N, h, w, 3] tiles -> one [H, W, 3] image, ``ncols`` per row, ``pad`` pixels of ``fill`` between."""
    n, h, w, c = tiles.shape
    nrows = -(-n // ncols)
    out = torch.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), fill)
    for i in range(n):
        r, col = divmod(i, ncols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = tiles[i]
    return out


# --------------------------------------------------------------------------- first-layer filters
def stem_filters(encoder: nn.Module) -> torch.Tensor:
    """The first layer's filters as RGB pictures ``[F, k, k, 3]``, each min-max scaled to [0, 1].

    The first layer is ``encoder.conv1`` (our ResNet's stem), else the first ``nn.Conv2d`` with
    3 input channels, else a ViT's linear patch embedding (one ``patch x patch x 3`` filter per
    output dimension, unpacked in :meth:`VisionTransformer.patchify`'s order). Each filter is
    scaled on its own, ``(w - min) / (max - min)``, so a filter's colours and contrast pattern
    show, not its norm relative to the others.
    """
    conv = getattr(encoder, "conv1", None)
    if not isinstance(conv, nn.Conv2d):
        conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if conv is not None:
        w = conv.weight.detach().float().cpu()  # [F, 3, k, k]
        if w.shape[1] != 3:
            raise ValueError(f"the first conv has {w.shape[1]} input channels, expected 3 (RGB)")
        w = w.permute(0, 2, 3, 1)
    elif hasattr(encoder, "patch_embed") and hasattr(encoder, "patch_size"):
        p = encoder.patch_size
        w = encoder.patch_embed.weight.detach().float().cpu().reshape(-1, p, p, 3)  # "(p1 p2 c)" order
    else:
        raise ValueError(f"{type(encoder).__name__} has no RGB conv layer or patch embedding to show")
    flat = w.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (w - lo) / (hi - lo).clamp_min(1e-12)


def first_layer_filters(
    encoder: nn.Module, max_filters: int = 64, ncols: Optional[int] = None, title: Optional[str] = None, ax=None
):
    """The first layer's filters as a grid of small RGB images (:func:`stem_filters`); returns the figure.

    Why the kernel size matters: a filter can only show a pattern as large as itself. A 3x3 filter
    (the CIFAR stem) is nine pixels -- at most a colour and a gradient direction, hard to read. A
    7x7 filter (the ImageNet stem, or ``resnet(stem_kernel=7)``) has room for the oriented edges,
    colour blobs and Gabor-like stripes that trained networks famously grow in their first layer
    (Krizhevsky et al. 2012 show them for AlexNet's 11x11 filters); ``stem_kernel=5`` on CIFAR is a
    compromise that keeps the receptive field small for 32 px images. A random initialisation gives
    noise, so comparing before and after training (:func:`filters_side_by_side`) shows what learning did.
    """
    tiles = stem_filters(encoder)[:max_filters]
    ncols = ncols or min(len(tiles), 16)
    fig = None
    if ax is None:
        nrows = -(-len(tiles) // ncols)
        fig, ax = plt.subplots(figsize=(min(12, 0.6 * ncols + 1), 0.6 * nrows + 0.6))
    ax.imshow(_mosaic(tiles, ncols).numpy(), interpolation="nearest")
    ax.axis("off")
    k = tiles.shape[1]
    ax.set_title(title or f"first-layer filters ({len(tiles)} of {k}x{k})", fontsize=9)
    return fig if fig is not None else ax.figure


def filters_side_by_side(encoders: dict, max_filters: int = 32, ncols: int = 8):
    """:func:`first_layer_filters` of several encoders ({label: encoder}), one panel each; returns the figure."""
    fig, axes = plt.subplots(1, len(encoders), figsize=(3.2 * len(encoders), 3.0), squeeze=False)
    for ax, (label, encoder) in zip(axes[0], encoders.items()):
        first_layer_filters(encoder, max_filters=max_filters, ncols=ncols, title=label, ax=ax)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- feature maps
def _first(output):
    """A module's output tensor (the first item if it returns a tuple, as a ViT block does)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def capture_activations(model, images: torch.Tensor, layers: Sequence[str], mean=None, std=None) -> dict:
    """Outputs ``{name: [B, ...]}`` of the named submodules for ``images``, read with forward hooks.

    The model runs in eval mode; every hook is removed and every submodule's train/eval flag put
    back afterwards, even if the forward pass fails. uint8 images are standardised with
    ``mean``/``std`` (scaled to [0, 1] without them).
    """
    module = _module_of(model)
    targets = {name: _resolve_layer(module, name) for name in layers}
    out, handles = {}, []
    with eval_mode(module):
        try:
            for name, layer in targets.items():
                handles.append(
                    layer.register_forward_hook(
                        lambda _m, _inp, output, name=name: out.__setitem__(name, _first(output).detach().float().cpu())
                    )
                )
            model(_as_input(images, mean, std, _device_of(module)))
        finally:
            for h in handles:
                h.remove()
    return out


def feature_maps(
    encoder,
    images: torch.Tensor,
    layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
    channels: int = 4,
    mean=None,
    std=None,
    size: float = 1.2,
):
    """What each stage of an encoder responds to: per image, the input and ``channels`` feature maps per layer.

    The maps come from forward hooks (:func:`capture_activations`: hooks removed, modes restored).
    Shown per layer: the ``channels`` channels with the largest mean activation over the batch (the
    most active, so the picture is not of dead channels), each map scaled to its own range. Early
    layers keep the image's layout (edges, colour regions); deeper ones are coarser (a 32 px CIFAR
    image reaches ``layer4`` at 4x4) and respond to larger, more abstract parts. Returns the figure.
    """
    acts = capture_activations(encoder, images, layers, mean, std)
    x = to_display(images, mean, std).numpy()
    ncols = 1 + channels * len(layers)
    fig, axes = plt.subplots(len(x), ncols, figsize=(ncols * size * 0.8, len(x) * size * 0.85), squeeze=False)
    for i in range(len(x)):
        axes[i, 0].imshow(x[i])
        for j, name in enumerate(layers):
            maps = acts[name]
            top = maps.mean((0, 2, 3)).topk(min(channels, maps.shape[1])).indices
            for c_i, c in enumerate(top.tolist()):
                ax = axes[i, 1 + j * channels + c_i]
                ax.imshow(maps[i, c].numpy(), cmap="viridis", interpolation="nearest")
                if i == 0:
                    ax.set_title(f"{name}\nch {c}" if c_i == 0 else f"ch {c}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- ViT attention
@torch.no_grad()
def cls_attention(
    vit: nn.Module, images: torch.Tensor, mean=None, std=None, layer: int = -1, upsample: bool = True
) -> torch.Tensor:
    """Where the class token looks: attention of CLS to every patch in block ``layer``, per head.

    Read from the model's own ``attention_maps`` (the softmax weights its forward pass used), row 0
    (the CLS query), columns 1: (the patches), reshaped to the patch grid: ``[B, heads, g, g]``; with
    ``upsample`` resized (nearest: one block per patch) to the image, ``[B, heads, H, W]``. The values
    are the attention weights themselves: over the grid they sum to 1 minus CLS's attention to itself.
    The model runs in eval mode and its flags are put back.
    """
    with eval_mode(vit):
        attn = vit.attention_maps(_as_input(images, mean, std, _device_of(vit)), layer=layer).cpu()
    g = vit.grid_size
    maps = attn[:, :, 0, 1:].reshape(attn.shape[0], attn.shape[1], g, g)
    if upsample:
        maps = F.interpolate(maps, size=images.shape[-2:], mode="nearest")
    return maps


def vit_attention_maps(vit: nn.Module, images: torch.Tensor, mean=None, std=None, layer: int = -1, size: float = 1.4):
    """DINO-style picture of a ViT's last-block attention: per image, the input, the class token's
    attention to the patches for each head, and their average, upsampled to the image (Caron et al.
    2021 show that self-supervised ViTs' CLS attention outlines the object). Each map is shown on its
    own colour range. Returns the figure.
    """
    maps = cls_attention(vit, images, mean, std, layer)
    x = to_display(images, mean, std).numpy()
    heads = maps.shape[1]
    ncols = heads + 2
    fig, axes = plt.subplots(len(x), ncols, figsize=(ncols * size, len(x) * size), squeeze=False)
    for i in range(len(x)):
        axes[i, 0].imshow(x[i])
        for h in range(heads):
            axes[i, 1 + h].imshow(maps[i, h].numpy(), cmap="inferno")
        axes[i, -1].imshow(x[i])
        axes[i, -1].imshow(maps[i].mean(0).numpy(), cmap="inferno", alpha=0.6)
    titles = ["input"] + [f"head {h}" for h in range(heads)] + ["mean of heads"]
    for ax, t in zip(axes[0], titles):
        ax.set_title(t, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- Grad-CAM
def grad_cam(model: nn.Module, images: torch.Tensor, target_layer, class_idx=None, mean=None, std=None) -> torch.Tensor:
    """Grad-CAM heatmaps ``[B, H, W]`` in [0, 1] (Selvaraju et al. 2017, "Grad-CAM: Visual
    Explanations from Deep Networks via Gradient-based Localization").

    ``model`` maps images to class scores (e.g. :func:`sslbook.eval.fine_tune`'s encoder + head);
    ``target_layer`` is a submodule or its name (``"encoder.layer4"``) with activations A^k [h, w].
    For the class c (``class_idx``: an int, one per image, or None = the predicted class):

        alpha_k^c = (1 / (h w)) sum_ij d y^c / d A^k_ij       (spatially averaged gradients)
        L^c      = ReLU(sum_k alpha_k^c A^k)                  (weighted sum, positive part)

    then bilinearly upsampled to the image and scaled to [0, 1] per image (divided by its max; an
    all-zero map stays 0). The model runs in eval mode (BatchNorm with its running statistics, so
    each image's map depends on that image only); gradients are taken with ``torch.autograd.grad``,
    so no parameter's ``.grad`` is touched; the hook is removed and the modes restored afterwards.
    """
    module = _module_of(model)
    layer = _resolve_layer(module, target_layer)
    stash = {}

    def keep(_m, _inp, output):
        stash["a"] = output
        return output.clone()  # later in-place ops (ReLU(inplace=True)) change the clone, not A

    handle = layer.register_forward_hook(keep)
    try:
        with eval_mode(module), torch.enable_grad():
            x = _as_input(images, mean, std, _device_of(module)).requires_grad_(True)
            scores = model(x)
            if class_idx is None:
                target = scores.argmax(1)
            else:
                target = torch.as_tensor(class_idx, device=scores.device).long().expand(len(scores))
            chosen = scores.gather(1, target[:, None]).sum()
            acts = stash["a"]
            (grads,) = torch.autograd.grad(chosen, acts)
    finally:
        handle.remove()
    weights = grads.mean((2, 3), keepdim=True)  # alpha_k^c
    cam = F.relu((weights * acts).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.view(-1, 1, 1)
    return (cam / peak.clamp_min(1e-12)).clamp(0, 1).cpu()


def grad_cam_figure(
    model: nn.Module,
    images: torch.Tensor,
    target_layer,
    class_idx=None,
    mean=None,
    std=None,
    classes: Optional[Sequence[str]] = None,
    size: float = 1.5,
):
    """Images (top row) and their Grad-CAM heatmaps over them (bottom row), titled with the class
    explained (the predicted one unless ``class_idx`` is given). Returns the figure."""
    maps = grad_cam(model, images, target_layer, class_idx, mean, std)
    module = _module_of(model)
    if class_idx is None:
        with eval_mode(module), torch.no_grad():
            explained = model(_as_input(images, mean, std, _device_of(module))).argmax(1).cpu()
    else:
        explained = torch.as_tensor(class_idx).long().expand(len(images))
    x = to_display(images, mean, std).numpy()
    fig, axes = plt.subplots(2, len(x), figsize=(len(x) * size, 2 * size + 0.3), squeeze=False)
    for i in range(len(x)):
        axes[0, i].imshow(x[i])
        axes[1, i].imshow(x[i])
        axes[1, i].imshow(maps[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        c = int(explained[i])
        axes[0, i].set_title(classes[c] if classes else f"class {c}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- retrieval
def _frame(ax, color: str, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def retrieval_grid(
    query_images: torch.Tensor,
    gallery_images: torch.Tensor,
    indices: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    classes: Sequence[str],
    row_labels: Optional[Sequence[str]] = None,
    size: float = 1.2,
):
    """One row per query: the query, then its K nearest gallery images (``indices`` [Q, K], e.g. from
    :func:`sslbook.eval.retrieve`), most similar first. A neighbour of the query's class is framed
    green, one of another class red and titled with its class. Returns the figure.
    """
    indices = torch.as_tensor(indices).cpu().long()
    if indices.ndim == 1:
        indices = indices[None]
    q, k = indices.shape
    queries = to_display(query_images).numpy()
    fig, axes = plt.subplots(q, k + 1, figsize=((k + 1) * size, q * size * 1.15), squeeze=False)
    for r in range(q):
        ax = axes[r, 0]
        ax.imshow(queries[r])
        _frame(ax, "black")
        title = classes[int(query_labels[r])]
        ax.set_title(f"{row_labels[r]}\n{title}" if row_labels else f"query: {title}", fontsize=7)
        neighbours = to_display(gallery_images[indices[r]]).numpy()
        for j in range(k):
            ax = axes[r, j + 1]
            ax.imshow(neighbours[j])
            label = int(gallery_labels[indices[r, j]])
            right = label == int(query_labels[r])
            _frame(ax, "tab:green" if right else "tab:red")
            ax.set_title(classes[label] if not right else "", fontsize=7, color="tab:red")
    fig.tight_layout()
    return fig


def retrieval_picker(
    query_images: torch.Tensor,
    gallery_images: torch.Tensor,
    features: dict,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    classes: Sequence[str],
    k: int = 8,
):
    """An ipywidgets picker: choose a query (slider) and see its ``k`` nearest gallery images under
    each representation in ``features`` ({label: (query_features, gallery_features)}), one row per
    representation (cosine similarity, :func:`sslbook.eval.retrieve`). Returns the widget (display it
    as a cell's last expression); it works in a live notebook, a static page shows the first query.
    """
    import ipywidgets as widgets
    from IPython.display import display

    from .eval import retrieve

    neighbours = {name: retrieve(q, g, k)[1].cpu() for name, (q, g) in features.items()}
    slider = widgets.IntSlider(value=0, min=0, max=len(query_images) - 1, description="query")
    out = widgets.Output()

    def show(i: int) -> None:
        names = list(neighbours)
        index = torch.stack([neighbours[n][i] for n in names])
        fig = retrieval_grid(
            query_images[[i] * len(names)],
            gallery_images,
            index,
            query_labels[[i] * len(names)],
            gallery_labels,
            classes,
            row_labels=[f"{n}: {classes[int(query_labels[i])]}" for n in names],
        )
        out.clear_output(wait=True)
        with out:
            display(fig)
        plt.close(fig)

    slider.observe(lambda change: show(change["new"]), names="value")
    show(0)
    return widgets.VBox([slider, out])


# --------------------------------------------------------------------------- embedding maps
def embed_2d(
    features: torch.Tensor, method: str = "tsne", seed: int = 0, max_points: int = 2000, perplexity: float = 30.0
):
    """2-D coordinates of (a seeded subsample of at most ``max_points``) features: ``(coords [n, 2], index [n])``.

    ``method="tsne"``: scikit-learn's t-SNE (van der Maaten & Hinton 2008) after a PCA to 50
    dimensions (the usual de-noising and speed-up), PCA initialisation, ``random_state=seed``;
    ``method="pca"``: the first two principal components. ``index`` says which rows were kept.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    x = features.detach().float().cpu()
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
    x = x[index].numpy()
    if method == "pca":
        return torch.from_numpy(PCA(2, random_state=seed).fit_transform(x)).float(), index
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    tsne = TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed)
    return torch.from_numpy(tsne.fit_transform(x)).float(), index


def embedding_map(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    method: str = "tsne",
    seed: int = 0,
    max_points: int = 2000,
    title: Optional[str] = None,
    ax=None,
):
    """Features in 2-D (:func:`embed_2d`), one colour per class; returns the figure.

    A picture, not a measurement: t-SNE keeps neighbourhoods but not distances between clusters or
    their sizes, so read it together with kNN / linear-probe numbers.
    """
    coords, index = embed_2d(features, method, seed, max_points)
    labels = torch.as_tensor(labels).cpu()[index]
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        keep = labels == c
        if keep.any():
            ax.scatter(coords[keep, 0], coords[keep, 1], s=4, color=cmap(c % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{method.upper() if method == 'pca' else 't-SNE'} of {len(coords)} features", fontsize=9)
    ax.legend(fontsize=7, markerscale=3, loc="best", frameon=False)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure

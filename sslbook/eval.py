"""How we know a representation is good: kNN, linear probe, fine-tuning, semi-supervised, retrieval.

All protocols but one start from frozen features extracted once (:func:`extract_features`):

* :func:`knn_accuracy` -- weighted k-nearest-neighbour vote (Wu et al. 2018), no training at all;
* :func:`linear_probe` -- a linear classifier on frozen features (the standard SSL benchmark);
* :func:`retrieve` / :func:`retrieval_precision` -- nearest images by cosine similarity.

:func:`fine_tune` trains the whole network (encoder + a new linear head) on labels. Run on a
1% or 10% label subset (:func:`semi_supervised_subset`) it is the semi-supervised protocol of
SimCLR and SwAV; :func:`supervised_baseline` runs it from a fresh random initialisation, the
number pre-training has to beat. Its training loop is the package's one supervised loop,
:func:`sslbook.supervised.fit`. :func:`head_features` compares the features before and after a
projection head; the loss chapter's diagnostics are in :mod:`sslbook.diagnostics`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from copy import deepcopy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augment, ViewSpec, recipe
from .data import ImageTensorDataset, balanced_indices
from .diagnostics import alignment_uniformity, same_class_neighbour_rate  # noqa: F401 (moved; old import path)
from .supervised import fit, fit_epochs_to_budget  # noqa: F401 (fit_epochs_to_budget: the old import path)
from .utils import eval_mode, feature_dim, fork_rng, module_device, top1


# --------------------------------------------------------------------------- features
def normalize_images(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float, scaled to [0,1] and standardised per channel."""
    x = images.to(torch.float32) / 255  # never in place: a float input must not be changed
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract_features(
    encoder: Callable, images: torch.Tensor, mean=None, std=None, batch_size: int = 512, device=None
) -> torch.Tensor:
    """Features of ``images`` (uint8 [N,3,H,W]) under ``encoder`` in eval mode, as float32 [N, d] on the CPU.

    With ``mean``/``std`` the images are standardised first (the encoder's training normalisation),
    otherwise only scaled to [0, 1]. The train/eval mode of every submodule is put back afterwards.
    """
    # A bound method such as ``method.embed`` is evaluated with its module in eval mode too.
    module = encoder if isinstance(encoder, nn.Module) else getattr(encoder, "__self__", None)
    device = module_device(module) if device is None else device
    out = []
    with eval_mode(module):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            x = normalize_images(x, mean, std) if mean is not None else x.to(torch.float32) / 255
            out.append(encoder(x).float().flatten(1).cpu())
    return torch.cat(out)


def pixel_features(train_images: torch.Tensor, test_images: torch.Tensor, center: bool = True):
    """Raw pixels as features: the baseline every method must beat.

    Returns (train, test) float features [N, 3*H*W] in [0, 1]. ``center=True`` subtracts the
    *training* set's mean image from both (the test set's own mean would leak test statistics),
    so cosine similarity compares how images *deviate* from the average image rather than their
    overall brightness.
    """
    train = train_images.flatten(1).to(torch.float32) / 255
    test = test_images.flatten(1).to(torch.float32) / 255
    if center:
        mean = train.mean(0, keepdim=True)
        train, test = train - mean, test - mean
    return train, test


# --------------------------------------------------------------------------- kNN
@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: Optional[int] = None,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted cosine kNN (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination"; the monitor of the MoCo CIFAR demo).

    For each test feature: cosine similarity s_i to every training feature, the k most similar
    neighbours vote for their class with weight exp(s_i / T); the prediction is the class with
    the largest total. ``k`` is clamped to the training set's size; test features are processed
    ``chunk_size`` at a time so the [chunk, N_train] similarity matrix fits in memory.
    Returns the class scores [N_test, C] (argmax = prediction) on the training features' device.
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_features))
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device).long()
    scores = [torch.zeros(0, num_classes, device=train.device)]  # so an empty test set gives [0, C]
    for start in range(0, len(test_features), chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float().to(train.device), dim=1)
        sim = test @ train.T  # [n, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(test), num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: Optional[int] = None,
) -> float:
    """Top-1 accuracy (in %) of :func:`knn_predict`."""
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return 100.0 * (scores.argmax(1).cpu() == test_labels.cpu()).float().mean().item()


# --------------------------------------------------------------------------- linear probe
def _feature_stats(train: torch.Tensor, eps: float = 1e-6):
    """Per-feature mean and std (+ eps) of the training features, each [1, d]."""
    return train.mean(0, keepdim=True), train.std(0, keepdim=True) + eps


def standardize(train: torch.Tensor, test: torch.Tensor, eps: float = 1e-6):
    """Scale each feature to zero mean and unit variance on the training set (for the linear probe)."""
    mean, std = _feature_stats(train, eps)
    return (train - mean) / std, (test - mean) / std


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-5,
    batch_size: int = 1024,
    seed: int = 0,
    num_classes: Optional[int] = None,
) -> dict:
    """Linear classification on frozen features (the standard SSL protocol; Zhang et al. 2016,
    Oord et al. 2018, used by MoCo, He et al. 2020, and SimCLR, Chen et al. 2020).

    The features are extracted once and standardised with the training set's statistics, so a few
    seconds of SGD with momentum 0.9 and a cosine schedule on a single linear layer suffice. The
    layer's initialisation and the batch order both come from ``seed`` (the global RNG is left
    alone), so a call is deterministic. Returns train and test top-1 (%), the layer, and the
    ``mean``/``std`` it expects its inputs standardised with: ``layer((x - mean) / std)``.
    """
    g = torch.Generator().manual_seed(seed)
    num_classes = num_classes or int(train_labels.max()) + 1
    train_x = train_features.float()
    mean, std = _feature_stats(train_x)  # as standardize() does
    x, x_test = (train_x - mean) / std, (test_features.float().to(train_x.device) - mean) / std
    y = train_labels.to(x.device).long()
    with fork_rng("cpu"):
        torch.manual_seed(seed)
        layer = nn.Linear(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(x.device)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(layer(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = 100.0 * (layer(x).argmax(1) == y).float().mean().item()
        test_acc = 100.0 * (layer(x_test).argmax(1).cpu() == test_labels.cpu().long()).float().mean().item()
    return {"train_top1": train_acc, "test_top1": test_acc, "layer": layer, "mean": mean, "std": std}


# --------------------------------------------------------------------------- semi-supervised labels
def semi_supervised_subset(dataset: ImageTensorDataset, fraction: float, seed: int = 0) -> ImageTensorDataset:
    """The labelled part of the semi-supervised protocol: a class-balanced ``fraction`` of ``dataset``.

    SimCLR (Chen et al. 2020) and SwAV (Caron et al. 2020) fine-tune on 1%
    and 10% of the ImageNet labels, sampled class-balanced (about 13 and 128 images per class).
    Here: ``round(fraction * len(dataset))`` images with (as nearly as possible) the same number
    per class, chosen by :func:`sslbook.data.balanced_indices` from ``seed``. Pre-training still
    sees every image; only fine-tuning is restricted to this subset. The normalisation statistics
    are kept from the full set.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction} (1% of the labels is 0.01)")
    if (dataset.labels < 0).any():
        raise ValueError(
            f"{dataset.name or 'dataset'} has unlabelled images (label -1); take the label fraction of a labelled split"
        )
    n = round(fraction * len(dataset))
    num_classes = len(dataset.labels.unique())
    if n < num_classes:
        raise ValueError(
            f"{fraction:g} of {len(dataset)} images is {n} labels, fewer than the {num_classes} "
            "classes: use a larger fraction or a larger dataset"
        )
    index = balanced_indices(dataset.labels, n, seed)
    name = f"{dataset.name}-{fraction:g}labels" if dataset.name else f"{fraction:g}labels"
    return ImageTensorDataset(
        dataset.images[index], dataset.labels[index], dataset.classes, name, dataset.mean, dataset.std
    )


# --------------------------------------------------------------------------- fine-tuning
@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: ImageTensorDataset,
    batch_size: int = 512,
    device=None,
    mean=None,
    std=None,
    size: Optional[int] = None,
) -> torch.Tensor:
    """Predicted classes [N] (on the CPU) of a classifier on ``dataset``, in eval mode, without
    augmentation: the images are resized to ``size`` (default: kept as they are) and standardised
    with ``mean``/``std`` (default: the dataset's own statistics; :func:`fine_tune` passes the
    *training* set's). The model's train/eval flags are put back afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mean, std = dataset.mean if mean is None else mean, dataset.std if std is None else std
    to_input = Augment(recipe("eval", size=size or dataset.images.shape[-1], mean=mean, std=std))
    with eval_mode(model), fork_rng(device):  # Augment draws (unused) random parameters even for eval views
        preds = [
            model(to_input(dataset.images[i : i + batch_size].to(device))[0]).argmax(1).cpu()
            for i in range(0, len(dataset), batch_size)
        ]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def fine_tune(
    encoder: nn.Module,
    train: ImageTensorDataset,
    test: ImageTensorDataset,
    epochs: int = 30,
    lr: float = 0.05,
    batch_size: int = 256,
    weight_decay: float = 5e-4,
    augment: bool = True,
    device=None,
    seed: int = 0,
    max_minutes: Optional[float] = None,
    copy: bool = True,
    eval_every: Optional[int] = None,
) -> dict:
    """Fine-tune the whole network, encoder and a new linear head, with labels (cross-entropy).

    The protocol of SimCLR's semi-supervised evaluation (Chen et al. 2020, appendix) and of
    SwAV's (Caron et al. 2020): start from the pre-trained encoder, put a freshly initialised
    linear layer on top, and train *everything* on the labelled images. Here:

    * SGD with momentum 0.9, ``lr`` (SimCLR's rule is 0.05 x batch / 256) decayed to 0 by a
      per-step cosine schedule, no warm-up, weight decay ``weight_decay`` on every parameter
      (the package's one supervised loop, :func:`sslbook.supervised.fit`);
    * light augmentation (``augment=True``): a random resized crop covering 50-100% of the
      image, resized back to its size, and a horizontal flip -- no colour changes (SimCLR too
      fine-tunes with random crops and flips only);
    * evaluation on ``test`` with normalisation only (the *training* set's mean and std).

    ``copy=True`` (default) trains a deep copy, so the caller's encoder is left untouched;
    ``copy=False`` trains (and moves to ``device``) the encoder itself. ``device`` defaults to
    the encoder's. All randomness (head init, batch order, augmentation) comes from ``seed``
    through a forked RNG, so the caller's global RNG state is not changed. ``max_minutes`` caps
    the training time (evaluation not counted): the first epoch is timed and the number of
    epochs shrunk to what fits, so the cosine schedule still ends near 0; training also stops
    once the budget is spent. ``len(history)`` is the number of epochs that ran.
    ``eval_every=n`` also records the test accuracy every n epochs in ``history``.

    Returns ``{"train_top1", "test_top1", "history", "model"}``: clean (unaugmented) top-1 in %
    on the training and test sets, one dict per epoch (``epoch``, ``loss`` (mean over its
    images), ``train_top1`` on the augmented batches, ``lr`` of its last step, ``minutes`` so far,
    and ``test_top1`` when evaluated), and the fine-tuned ``nn.Sequential(encoder=..., head=...)``
    in eval mode.
    """
    device = torch.device(device) if device is not None else module_device(encoder)
    size = train.images.shape[-1]
    mean, std = tuple(train.mean), tuple(train.std)
    if augment:
        train_spec = ViewSpec(size=size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0, mean=mean, std=std)
    else:
        train_spec = recipe("eval", size=size, mean=mean, std=std)[0]
    augmentation = Augment([train_spec])
    batch_size = max(1, min(batch_size, len(train)))

    def evaluate(model: nn.Module, dataset: ImageTensorDataset) -> float:
        return top1(predict(model, dataset, device=device, mean=mean, std=std, size=size), dataset.labels)

    with fork_rng(device):
        torch.manual_seed(seed)
        backbone = deepcopy(encoder) if copy else encoder
        backbone.to(device)
        head = nn.Linear(feature_dim(backbone, size, device), train.num_classes).to(device)
        model = nn.Sequential(OrderedDict(encoder=backbone, head=head))
        order = torch.Generator().manual_seed(seed)

        def batches(epoch: int):
            for b, idx in enumerate(torch.randperm(len(train), generator=order).split(batch_size)):
                if len(idx) > 1 or b == 0:  # a lone last image: BatchNorm cannot train on a batch of 1
                    yield train.images[idx].to(device), train.labels[idx].to(device)

        history, epoch_sums = [], {}  # per epoch: summed loss x images, correct predictions, images

        def loss_fn(model: nn.Module, batch) -> torch.Tensor:
            images, labels = batch
            logits = model(augmentation(images)[0])
            loss = F.cross_entropy(logits, labels)
            for key, value in (
                ("loss", loss.detach() * len(labels)),
                ("correct", (logits.argmax(1) == labels).sum()),
                ("images", len(labels)),
            ):
                epoch_sums[key] = epoch_sums.get(key, 0) + value
            return loss

        def log(record: dict) -> None:
            seen = epoch_sums.pop("images")
            entry = {
                "epoch": record["epoch"],
                "loss": (epoch_sums.pop("loss") / seen).item(),
                "train_top1": 100.0 * epoch_sums.pop("correct").item() / seen,
                "lr": record["lr"],
                "minutes": record["minutes"],
            }
            if eval_every and record["epoch"] % eval_every == 0:
                entry["test_top1"] = evaluate(model, test)
            history.append(entry)

        fit(
            model,
            batches,
            loss_fn,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            momentum=0.9,
            max_minutes=max_minutes,
            device=device,
            seed=None,
            log=log,
            steps_per_epoch=math.ceil(len(train) / batch_size),
        )

    model.eval()
    return {
        "train_top1": evaluate(model, train),
        "test_top1": evaluate(model, test),
        "history": history,
        "model": model,
    }


def supervised_baseline(
    make_encoder: Callable[[], nn.Module], train: ImageTensorDataset, test: ImageTensorDataset, seed: int = 0, **kwargs
) -> dict:
    """Training from scratch on the same labels: :func:`fine_tune` of a freshly initialised encoder.

    This is the number a pre-trained encoder must beat in the semi-supervised tables of SimCLR
    and SwAV ("supervised baseline" trained on 1% / 10% of the labels). ``make_encoder`` builds
    the untrained network, e.g. ``lambda: resnet(18, "cifar", width=16)``; it is called under
    ``seed`` so the initialisation is reproducible. ``kwargs`` go to :func:`fine_tune` (a
    longer schedule or a larger ``lr`` is fair here: a random network has more to learn). Same
    as ``fine_tune(make_encoder(), train, test, copy=False, ...)``.
    """
    with fork_rng("cpu"):
        torch.manual_seed(seed)
        encoder = make_encoder()
    return fine_tune(encoder, train, test, seed=seed, copy=False, **kwargs)


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None) -> torch.Tensor:
    """[C, C] int64 counts: row = true class, column = predicted class (scikit-learn's convention)."""
    pred, labels = pred.cpu().long().flatten(), labels.cpu().long().flatten()
    if len(pred) != len(labels):
        raise ValueError(f"{len(pred)} predictions but {len(labels)} labels")
    if num_classes is None:
        num_classes = int(max(pred.max(), labels.max())) + 1 if len(pred) else 0
    return torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


# --------------------------------------------------------------------------- retrieval
@torch.no_grad()
def retrieve(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int = 5):
    """The ``k`` most cosine-similar gallery items of each query: (similarities [Q, k], indices [Q, k]),
    most similar first. ``k`` is clamped to the gallery's size. When the queries are themselves in
    the gallery, each one's first hit is itself: ask for ``k + 1`` and drop column 0."""
    q = F.normalize(query_features.float(), dim=1)
    g = F.normalize(gallery_features.float(), dim=1).to(q.device)
    return (q @ g.T).topk(min(k, len(g)), dim=1)


def retrieval_precision(query_labels: torch.Tensor, gallery_labels: torch.Tensor, indices: torch.Tensor) -> float:
    """Mean fraction (in %) of retrieved items that share the query's label (precision@k)."""
    gallery_labels = gallery_labels.to(indices.device)
    return 100.0 * (gallery_labels[indices] == query_labels.to(indices.device)[:, None]).float().mean().item()


# --------------------------------------------------------------------------- where to take the features
@torch.no_grad()
def head_features(
    backbone: nn.Module, head: nn.Module, images: torch.Tensor, mean=None, std=None, batch_size: int = 512, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The representation before and after a projection head, from one pass: ``(h, z)``.

    ``h = backbone(x)`` (what :func:`extract_features` gives for the backbone) and ``z = head(h)``
    (e.g. SimCLR's ``method.projector``), each float32 ``[N, d]`` on the CPU, for uint8 ``images``
    standardised with ``mean``/``std`` as in :func:`extract_features`. SimCLR (Chen et al. 2020,
    "A Simple Framework for Contrastive Learning of Visual Representations", Sec. 4.2 and Fig. 8)
    probes both and finds the layer *before* the head the better representation by more than 10%
    in linear evaluation: the loss makes ``z`` invariant to the augmentations, so ``z`` loses
    information (colour, orientation) that the downstream task can use and ``h`` still holds.
    Both modules run in eval mode (BatchNorm with its running statistics); their train/eval flags
    are put back afterwards.
    """
    device = module_device(backbone) if device is None else device
    h_dim = []

    def both(x):  # one pass: [h | head(h)], split below
        h = backbone(x).flatten(1)
        h_dim[:] = [h.shape[1]]
        return torch.cat([h, head(h).flatten(1)], dim=1)

    with eval_mode(backbone, head):
        hz = extract_features(both, images, mean, std, batch_size, device)
    return hz[:, : h_dim[0]], hz[:, h_dim[0] :]

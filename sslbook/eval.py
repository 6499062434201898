"""How we know a representation is good: kNN, linear probe, fine-tuning, semi-supervised, retrieval.

All protocols but one start from frozen features extracted once (:func:`extract_features`):

* :func:`knn_accuracy` -- weighted k-nearest-neighbour vote (Wu et al. 2018), no training at all;
* :func:`linear_probe` -- a linear classifier on frozen features (the standard SSL benchmark);
* :func:`retrieve` / :func:`retrieval_precision` -- nearest images by cosine similarity.

:func:`fine_tune` trains the whole network (encoder + a new linear head) on labels. Run on a
1% or 10% label subset (:func:`semi_supervised_subset`) it is the semi-supervised protocol of
SimCLR and SwAV; :func:`supervised_baseline` runs it from a fresh random initialisation, the
number pre-training has to beat.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from copy import deepcopy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augment, ViewSpec, recipe
from .data import ImageTensorDataset, balanced_indices


# --------------------------------------------------------------------------- features
def normalize_images(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float, scaled to [0,1] and standardised per channel."""
    x = images.to(torch.float32) / 255  # never in place: a float input must not be changed
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _training_flags(module) -> list:
    """Each submodule's train/eval flag, so they can be put back exactly (some may be frozen in eval)."""
    return [(m, m.training) for m in module.modules()] if isinstance(module, nn.Module) else []


def _restore_flags(flags: list) -> None:
    for m, training in flags:
        m.training = training


@torch.no_grad()
def extract_features(encoder: Callable, images: torch.Tensor, mean=None, std=None, batch_size: int = 512,
                     device=None) -> torch.Tensor:
    """Features of ``images`` (uint8 [N,3,H,W]) under ``encoder`` in eval mode, as float32 [N, d] on the CPU.

    With ``mean``/``std`` the images are standardised first (the encoder's training normalisation),
    otherwise only scaled to [0, 1]. The train/eval mode of every submodule is put back afterwards.
    """
    # A bound method such as ``method.embed`` is evaluated with its module in eval mode too.
    module = encoder if isinstance(encoder, nn.Module) else getattr(encoder, "__self__", None)
    module = module if isinstance(module, nn.Module) else None
    flags = _training_flags(module) if module is not None else []
    if module is not None:
        module.eval()
    if device is None:
        params = list(module.parameters()) if module is not None else []
        device = params[0].device if params else torch.device("cpu")
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            x = normalize_images(x, mean, std) if mean is not None else x.to(torch.float32) / 255
            out.append(encoder(x).float().flatten(1).cpu())
    finally:
        _restore_flags(flags)
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
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: Optional[int] = None, k: int = 200, temperature: float = 0.1,
                chunk_size: int = 1024) -> torch.Tensor:
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
        test = F.normalize(test_features[start:start + chunk_size].float().to(train.device), dim=1)
        sim = test @ train.T  # [n, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(test), num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k: int = 200,
                 temperature: float = 0.1, num_classes: Optional[int] = None) -> float:
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


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, epochs: int = 100, lr: float = 0.1, weight_decay: float = 1e-5,
                 batch_size: int = 1024, seed: int = 0, num_classes: Optional[int] = None) -> dict:
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(x.device)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
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
        raise ValueError(f"{dataset.name or 'dataset'} has unlabelled images (label -1); "
                         "take the label fraction of a labelled split")
    n = round(fraction * len(dataset))
    num_classes = len(dataset.labels.unique())
    if n < num_classes:
        raise ValueError(f"{fraction:g} of {len(dataset)} images is {n} labels, fewer than the {num_classes} "
                         "classes: use a larger fraction or a larger dataset")
    index = balanced_indices(dataset.labels, n, seed)
    name = f"{dataset.name}-{fraction:g}labels" if dataset.name else f"{fraction:g}labels"
    return ImageTensorDataset(dataset.images[index], dataset.labels[index], dataset.classes, name,
                              dataset.mean, dataset.std)


# --------------------------------------------------------------------------- fine-tuning
def _num_classes(dataset: ImageTensorDataset) -> int:
    return max(len(dataset.classes or []), int(dataset.labels.max()) + 1)


@torch.no_grad()
def _feature_dim(encoder: nn.Module, size: int, device) -> int:
    """``encoder.feature_dim``, or the width of its output on one blank image."""
    if hasattr(encoder, "feature_dim"):
        return int(encoder.feature_dim)
    flags = _training_flags(encoder)
    encoder.eval()  # so BatchNorm's running statistics are not touched
    try:
        return encoder(torch.zeros(1, 3, size, size, device=device)).flatten(1).shape[1]
    finally:
        _restore_flags(flags)


def _private_rng(device: torch.device):
    """A forked RNG for ``device``: what runs inside may reseed or draw, the caller's state comes back."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index])
    return torch.random.fork_rng(devices=[])


@torch.no_grad()
def predict(model: nn.Module, dataset: ImageTensorDataset, batch_size: int = 512, device=None,
            mean=None, std=None, size: Optional[int] = None) -> torch.Tensor:
    """Predicted classes [N] (on the CPU) of a classifier on ``dataset``, in eval mode, without
    augmentation: the images are resized to ``size`` (default: kept as they are) and standardised
    with ``mean``/``std`` (default: the dataset's own statistics; :func:`fine_tune` passes the
    *training* set's). The model's train/eval flags are put back afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    to_input = Augment(recipe("eval", size=size or dataset.images.shape[-1], mean=dataset.mean if mean is None else mean,
                              std=dataset.std if std is None else std))
    flags = _training_flags(model)
    model.eval()
    try:
        with _private_rng(device):  # Augment draws (unused) random parameters even for eval views
            preds = [model(to_input(dataset.images[i:i + batch_size].to(device))[0]).argmax(1).cpu()
                     for i in range(0, len(dataset), batch_size)]
    finally:
        _restore_flags(flags)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (pred == labels.cpu()).float().mean().item()


def fit_epochs_to_budget(total_epochs: int, epoch: int, minutes: float,
                         max_minutes: Optional[float]) -> tuple[int, bool]:
    """After ``epoch`` epochs and ``minutes`` of training: (epochs to plan for, whether time is up).

    After the first epoch the plan shrinks to what fits in ``max_minutes`` (at least that one
    epoch), so a cosine schedule still ends at its minimum; ``None`` means no budget.
    """
    if max_minutes is None:
        return total_epochs, False
    if epoch == 1 and total_epochs > 1:
        total_epochs = max(1, min(total_epochs, int(max_minutes / max(minutes, 1e-9))))
    return total_epochs, minutes >= max_minutes


def fine_tune(encoder: nn.Module, train: ImageTensorDataset, test: ImageTensorDataset, epochs: int = 30,
              lr: float = 0.05, batch_size: int = 256, weight_decay: float = 5e-4, augment: bool = True,
              device=None, seed: int = 0, max_minutes: Optional[float] = None, copy: bool = True,
              eval_every: Optional[int] = None) -> dict:
    """Fine-tune the whole network, encoder and a new linear head, with labels (cross-entropy).

    The protocol of SimCLR's semi-supervised evaluation (Chen et al. 2020, appendix) and of
    SwAV's (Caron et al. 2020): start from the pre-trained encoder, put a freshly initialised
    linear layer on top, and train *everything* on the labelled images. Here:

    * SGD with momentum 0.9, ``lr`` (SimCLR's rule is 0.05 x batch / 256) decayed to 0 by a
      per-step cosine schedule, no warm-up, weight decay ``weight_decay`` on every parameter;
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
    on the training and test sets, one dict per epoch (``epoch``, ``loss``, ``train_top1`` on
    the augmented batches, ``lr`` of its last step, ``minutes`` so far, and ``test_top1``
    when evaluated), and the fine-tuned ``nn.Sequential(encoder=..., head=...)`` in eval mode.
    """
    if device is None:
        params = list(encoder.parameters())
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    size = train.images.shape[-1]
    mean, std = tuple(train.mean), tuple(train.std)
    if augment:
        train_spec = ViewSpec(size=size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0, mean=mean, std=std)
    else:
        train_spec = recipe("eval", size=size, mean=mean, std=std)[0]
    augmentation = Augment([train_spec])
    batch_size = max(1, min(batch_size, len(train)))
    steps_per_epoch = math.ceil(len(train) / batch_size)

    with _private_rng(device):
        torch.manual_seed(seed)
        backbone = deepcopy(encoder) if copy else encoder
        backbone.to(device)
        head = nn.Linear(_feature_dim(backbone, size, device), _num_classes(train)).to(device)
        model = nn.Sequential(OrderedDict(encoder=backbone, head=head))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        order = torch.Generator().manual_seed(seed)

        def evaluate(dataset: ImageTensorDataset) -> float:
            return _top1(predict(model, dataset, device=device, mean=mean, std=std, size=size), dataset.labels)

        history, total_epochs, train_seconds = [], epochs, 0.0
        epoch = 0
        while epoch < total_epochs:
            epoch_start = time.perf_counter()
            model.train()
            total_steps = total_epochs * steps_per_epoch
            loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
            for b, idx in enumerate(torch.randperm(len(train), generator=order).split(batch_size)):
                if len(idx) < 2 and seen:  # a lone last image: BatchNorm cannot train on a batch of 1
                    continue
                step = epoch * steps_per_epoch + b
                for group in opt.param_groups:  # cosine from lr to 0 over the planned steps
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total_steps))
                images, labels = train.images[idx].to(device), train.labels[idx].to(device)
                logits = model(augmentation(images)[0])
                loss = F.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == labels).sum()
                seen += len(idx)
            epoch += 1
            train_seconds += time.perf_counter() - epoch_start
            minutes = train_seconds / 60
            record = {"epoch": epoch, "loss": (loss_sum / seen).item(), "train_top1": 100.0 * correct.item() / seen,
                      "lr": opt.param_groups[0]["lr"], "minutes": minutes}
            if eval_every and epoch % eval_every == 0:
                record["test_top1"] = evaluate(test)
            history.append(record)
            total_epochs, out_of_time = fit_epochs_to_budget(total_epochs, epoch, minutes, max_minutes)
            if out_of_time:
                break

    model.eval()
    return {"train_top1": evaluate(train), "test_top1": evaluate(test), "history": history, "model": model}


def supervised_baseline(make_encoder: Callable[[], nn.Module], train: ImageTensorDataset,
                        test: ImageTensorDataset, seed: int = 0, **kwargs) -> dict:
    """Training from scratch on the same labels: :func:`fine_tune` of a freshly initialised encoder.

    This is the number a pre-trained encoder must beat in the semi-supervised tables of SimCLR
    and SwAV ("supervised baseline" trained on 1% / 10% of the labels). ``make_encoder`` builds
    the untrained network, e.g. ``lambda: resnet(18, "cifar", width=16)``; it is called under
    ``seed`` so the initialisation is reproducible. ``kwargs`` go to :func:`fine_tune` (a
    longer schedule or a larger ``lr`` is fair here: a random network has more to learn). Same
    as ``fine_tune(make_encoder(), train, test, copy=False, ...)``.
    """
    with torch.random.fork_rng(devices=[]):
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
def head_features(backbone: nn.Module, head: nn.Module, images: torch.Tensor, mean=None, std=None,
                  batch_size: int = 512, device=None) -> tuple[torch.Tensor, torch.Tensor]:
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
    flags = _training_flags(backbone) + _training_flags(head)
    backbone.eval()
    head.eval()
    if device is None:
        params = list(backbone.parameters())
        device = params[0].device if params else torch.device("cpu")
    h_dim = []

    def both(x):  # one pass: [h | head(h)], split below
        h = backbone(x).flatten(1)
        h_dim[:] = [h.shape[1]]
        return torch.cat([h, head(h).flatten(1)], dim=1)

    try:
        hz = extract_features(both, images, mean, std, batch_size, device)
    finally:
        _restore_flags(flags)
    return hz[:, :h_dim[0]], hz[:, h_dim[0]:]


def same_class_neighbour_rate(features: torch.Tensor, labels: torch.Tensor, batch_size: int, k: int = 1,
                              batches: int = 20, seed: int = 0) -> dict:
    """How often the hardest "negatives" of an anchor in a random batch share its class (in %).

    Instance discrimination treats every other image of the batch as a negative, so the images of
    the anchor's own class are **false negatives** (the survey's cat-vs-cat example; Chuang et al.
    2020, "Debiased Contrastive Learning"). The hard negatives, the ones that dominate the softmax,
    are the most similar ones, and those are the likeliest to be false. For ``batches`` random batches
    of ``batch_size`` images (without replacement within a batch), every image is an anchor; its
    ``k`` nearest other images by cosine similarity of ``features`` are its hardest negatives.

    Returns ``{"nearest": % of those k neighbours with the anchor's class, "random": % of all other
    images of the batch with the anchor's class (what a random negative gives; about
    (N/C - 1) / (N - 1) for C balanced classes), "batch_size": N, "k": k}``.
    """
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"need features [N, d] and N labels, got {tuple(features.shape)} and {len(labels)}")
    if not 2 <= batch_size <= len(features):
        raise ValueError(f"batch_size must be in [2, {len(features)}], got {batch_size}")
    if not 1 <= k < batch_size:
        raise ValueError(f"k must be in [1, batch_size - 1], got {k}")
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(features.float(), dim=1)
    labels = torch.as_tensor(labels)
    nearest_hits = random_hits = anchors = 0
    for _ in range(batches):
        pick = torch.randperm(len(z), generator=g)[:batch_size]
        zb, yb = z[pick], labels[pick]
        sim = zb @ zb.T
        sim.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
        top = sim.topk(k, dim=1).indices
        nearest_hits += (yb[top] == yb[:, None]).sum().item()
        same = (yb[:, None] == yb[None, :]).sum(dim=1) - 1  # others of the anchor's class
        random_hits += same.sum().item()
        anchors += batch_size
    return {"nearest": 100.0 * nearest_hits / (anchors * k),
            "random": 100.0 * random_hits / (anchors * (batch_size - 1)), "batch_size": batch_size, "k": k}


@torch.no_grad()
def alignment_uniformity(encoder: Callable, images: torch.Tensor, mean, std, views: str = "simclr",
                         max_images: int = 2000, seed: int = 0, batch_size: int = 512) -> dict:
    """Wang & Isola's (2020) two properties of a representation, measured on ``images`` (uint8).

    Two augmented views of each image (the recipe ``views`` of :mod:`sslbook.augment`, normalised
    with ``mean``/``std``) go through ``encoder`` (e.g. ``method.embed``); the outputs are
    L2-normalised and scored with :func:`sslbook.losses.alignment` (mean ||f(x) - f(x')||^2 over
    positive pairs: lower = views closer) and :func:`sslbook.losses.uniformity` (log of the mean
    Gaussian potential over all pairs of the first views: lower = more evenly spread on the sphere).
    ``max_images`` (a fixed random subset, ``seed``) keeps the all-pairs uniformity cheap. The
    augmentation draws from a private generator state, so calling this does not change the caller's
    random stream.
    """
    from .losses import alignment, uniformity

    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:max_images]
    augment = Augment(recipe(views, size=images.shape[-1], mean=mean, std=std))
    module = getattr(encoder, "__self__", encoder)
    flags = _training_flags(module)
    if isinstance(module, nn.Module):
        module.eval()
    try:
        with _private_rng(images.device):
            torch.manual_seed(seed)
            z1s, z2s = [], []
            for start in range(0, len(pick), batch_size):
                v1, v2 = augment(images[pick[start:start + batch_size]])[:2]
                z1s.append(F.normalize(encoder(v1).float().flatten(1), dim=1))
                z2s.append(F.normalize(encoder(v2).float().flatten(1), dim=1))
    finally:
        _restore_flags(flags)
    z1, z2 = torch.cat(z1s), torch.cat(z2s)
    return {"alignment": float(alignment(z1, z2)), "uniformity": float(uniformity(z1)), "images": len(z1)}

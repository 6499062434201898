"""How we know a representation is good: kNN, linear probe, fine-tuning, semi-supervised, retrieval.

All protocols start from frozen features extracted once (:func:`extract_features`), except
fine-tuning, which trains the whole network.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------- features
def normalize_images(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float, scaled to [0,1] and standardised per channel."""
    x = images.float().div_(255)
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract_features(encoder: Callable, images: torch.Tensor, mean=None, std=None, batch_size: int = 512,
                     device=None) -> torch.Tensor:
    """Features of ``images`` (uint8 [N,3,H,W]) under ``encoder`` in eval mode, as float32 [N, d] on the CPU.

    With ``mean``/``std`` the images are standardised first (the encoder's training normalisation).
    """
    was_training = getattr(encoder, "training", False)
    if hasattr(encoder, "eval"):
        encoder.eval()
    if device is None:
        params = list(encoder.parameters()) if hasattr(encoder, "parameters") else []
        device = params[0].device if params else torch.device("cpu")
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x = normalize_images(x, mean, std) if mean is not None else x.float().div_(255)
        out.append(encoder(x).float().flatten(1).cpu())
    if was_training:
        encoder.train()
    return torch.cat(out)


def pixel_features(train_images: torch.Tensor, test_images: torch.Tensor, center: bool = True):
    """Raw pixels as features: the baseline every method must beat.

    Returns (train, test) float features [N, 3*H*W] in [0, 1]. ``center=True`` subtracts the
    training set's mean image from both, so cosine similarity compares how images *deviate*
    from the average image rather than their overall brightness.
    """
    train = train_images.flatten(1).float().div_(255)
    test = test_images.flatten(1).float().div_(255)
    if center:
        mean = train.mean(0, keepdim=True)
        train, test = train - mean, test - mean
    return train, test


# --------------------------------------------------------------------------- kNN
@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: Optional[int] = None, k: int = 200, temperature: float = 0.1,
                chunk_size: int = 1024) -> torch.Tensor:
    """Weighted cosine kNN (Wu et al. 2018; the MoCo CIFAR demo's monitor).

    For each test feature: cosine similarity s_i to every training feature, the k most similar
    neighbours vote for their class with weight exp(s_i / T); the prediction is the class with
    the largest total. Returns the class scores [N_test, C] (argmax = prediction).
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_features))
    train = F.normalize(train_features.float(), dim=1)
    scores = []
    for start in range(0, len(test_features), chunk_size):
        test = F.normalize(test_features[start:start + chunk_size].float().to(train.device), dim=1)
        sim = test @ train.T  # [n, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(test), num_classes, device=train.device)
        votes.scatter_add_(1, train_labels.to(train.device)[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k: int = 200,
                 temperature: float = 0.1, num_classes: Optional[int] = None) -> float:
    """Top-1 accuracy (in %) of :func:`knn_predict`."""
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return 100.0 * (scores.argmax(1).cpu() == test_labels.cpu()).float().mean().item()


# --------------------------------------------------------------------------- linear probe
def standardize(train: torch.Tensor, test: torch.Tensor, eps: float = 1e-6):
    """Scale each feature to zero mean and unit variance on the training set (for the linear probe)."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True) + eps
    return (train - mean) / std, (test - mean) / std


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, epochs: int = 100, lr: float = 0.1, weight_decay: float = 1e-5,
                 batch_size: int = 1024, seed: int = 0, num_classes: Optional[int] = None) -> dict:
    """Linear classification on frozen features (the standard SSL protocol; He et al. 2020).

    The features are extracted once and standardised, so a few seconds of SGD with momentum and a
    cosine schedule on a single linear layer suffice. Returns train and test top-1 (%) and the layer.
    """
    g = torch.Generator().manual_seed(seed)
    num_classes = num_classes or int(train_labels.max()) + 1
    x, x_test = standardize(train_features.float(), test_features.float())
    y = train_labels.long()
    layer = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(layer(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = 100.0 * (layer(x).argmax(1) == y).float().mean().item()
        test_acc = 100.0 * (layer(x_test).argmax(1) == test_labels.long()).float().mean().item()
    return {"train_top1": train_acc, "test_top1": test_acc, "layer": layer}


# --------------------------------------------------------------------------- retrieval
@torch.no_grad()
def retrieve(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int = 5):
    """The ``k`` most cosine-similar gallery items of each query: (similarities [Q, k], indices [Q, k])."""
    q = F.normalize(query_features.float(), dim=1)
    g = F.normalize(gallery_features.float(), dim=1)
    return (q @ g.T).topk(min(k, len(g)), dim=1)


def retrieval_precision(query_labels: torch.Tensor, gallery_labels: torch.Tensor, indices: torch.Tensor) -> float:
    """Mean fraction (in %) of retrieved items that share the query's label (precision@k)."""
    return 100.0 * (gallery_labels[indices] == query_labels[:, None]).float().mean().item()

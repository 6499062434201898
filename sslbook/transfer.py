"""Transfer to another data set, offline: scikit-learn's handwritten digits.

A representation learned on CIFAR-10 should be useful beyond CIFAR-10's ten classes. The standard
test (the survey's transfer experiments; SimCLR's and BYOL's 12-dataset tables) evaluates a frozen
encoder on other data sets with a linear probe. Those need downloads; the 1,797 8x8 digits of
``sklearn.datasets.load_digits`` (the UCI optical-recognition digits) ship inside scikit-learn, so
the book can run a transfer experiment with no network: far from CIFAR's natural images (grey
strokes, no texture, no colour), with a different label set.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .data import CIFAR10_MEAN, CIFAR10_STD, ImageTensorDataset, channel_stats
from .eval import extract_features, knn_accuracy, linear_probe

DIGIT_CLASSES = [str(d) for d in range(10)]


def transfer_digits(size: int = 32, test_fraction: float = 0.3, seed: int = 0):
    """``(train, test)`` :class:`~sslbook.data.ImageTensorDataset` s of scikit-learn's digits as RGB images.

    Each 8x8 image (values 0..16, ink bright on a dark ground) is scaled to 0..255, resized to
    ``size`` x ``size`` (bilinear) and copied into the three channels, so a CIFAR encoder takes it
    as is. The split is stratified (the same fraction of every digit in the test set), fixed by
    ``seed``. Labels are the digits 0-9; ``mean``/``std`` are the training split's own statistics
    (a frozen encoder is usually fed with its *pre-training* normalisation instead: see
    :func:`transfer_eval`).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] * (255.0 / 16.0)  # [N, 1, 8, 8] in 0..255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_fraction, stratify=labels.numpy(), random_state=seed
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    mean, std = channel_stats(images[train_idx])
    return (
        ImageTensorDataset(images[train_idx], labels[train_idx], DIGIT_CLASSES, "digits-train", mean, std),
        ImageTensorDataset(images[test_idx], labels[test_idx], DIGIT_CLASSES, "digits-test", mean, std),
    )


def transfer_eval(
    encoder: Callable,
    train: ImageTensorDataset,
    test: ImageTensorDataset,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    k: int = 20,
    linear_epochs: int = 100,
    seed: int = 0,
    device: Optional[torch.device] = None,
) -> dict:
    """A frozen encoder on another data set: ``{"knn_top1", "linear_top1"}`` (%).

    Features are extracted once (eval mode, no augmentation) with the images standardised by
    ``mean``/``std`` -- by default CIFAR-10's, the normalisation a CIFAR-pretrained encoder was
    trained with -- then scored by the weighted kNN (``k`` neighbours; the digits' training split is
    small) and by a linear probe (:func:`sslbook.eval.linear_probe`). ``encoder`` may be an encoder or
    a method's ``embed``.
    """
    train_x = extract_features(encoder, train.images, mean, std, device=device)
    test_x = extract_features(encoder, test.images, mean, std, device=device)
    num_classes = max(int(train.labels.max()), int(test.labels.max())) + 1
    knn = knn_accuracy(train_x, train.labels, test_x, test.labels, k=k, num_classes=num_classes)
    linear = linear_probe(
        train_x, train.labels, test_x, test.labels, epochs=linear_epochs, seed=seed, num_classes=num_classes
    )["test_top1"]
    return {"knn_top1": knn, "linear_top1": linear}


# --------------------------------------------------------------------------- data sets that need a download
TRANSFER_SETS = ("digits", "cifar100", "stl10")


def resize_images(dataset: ImageTensorDataset, size: int) -> ImageTensorDataset:
    """``dataset`` with its images resized to ``size`` x ``size`` (bilinear, antialiased; uint8 kept).

    STL-10's 96 px images become 32 px ones for a CIFAR encoder, like for like with its pre-training
    resolution. Labels, classes, name and normalisation statistics are kept; an image already
    ``size`` px is returned unchanged (the same object).
    """
    if dataset.images.shape[-1] == size and dataset.images.shape[-2] == size:
        return dataset
    x = F.interpolate(dataset.images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ImageTensorDataset(
        x.round().clamp(0, 255).to(torch.uint8),
        dataset.labels,
        dataset.classes,
        dataset.name,
        dataset.mean,
        dataset.std,
    )


def transfer_datasets(name: str, size: int = 32, root=None, download: bool = False):
    """``(train, test)`` of a transfer data set, resized to ``size`` px: ``"digits"`` (ships with
    scikit-learn, :func:`transfer_digits`), ``"cifar100"`` (Krizhevsky 2009; 100 classes, 32 px) or
    ``"stl10"`` (Coates et al. 2011; its labelled 5,000 train / 8,000 test images, 96 px resized).

    CIFAR-100 and STL-10 are read from ``root`` (default ``$SSLBOOK_DATA``) and downloaded only with
    ``download=True``; otherwise a missing set raises :class:`sslbook.data.DatasetNotFoundError`
    saying where it was looked for (check first with :func:`transfer_available`).
    """
    from .data import load_cifar, load_stl10

    if name not in TRANSFER_SETS:
        raise ValueError(f"unknown transfer data set {name!r}: use one of {', '.join(TRANSFER_SETS)}")
    if name == "digits":
        return transfer_digits(size)
    if name == "cifar100":
        train, test = load_cifar("cifar100", "train", root, download), load_cifar("cifar100", "test", root, download)
    else:
        train, test = load_stl10("train", root, download), load_stl10("test", root, download)
    return resize_images(train, size), resize_images(test, size)


def transfer_available(name: str, root=None) -> bool:
    """Whether :func:`transfer_datasets` can load ``name`` without a download (the files are on disk)."""
    from .data import data_root

    if name not in TRANSFER_SETS:
        raise ValueError(f"unknown transfer data set {name!r}: use one of {', '.join(TRANSFER_SETS)}")
    folder = {"digits": None, "cifar100": "cifar-100-python", "stl10": "stl10_binary"}[name]
    if folder is None:
        return True
    path = data_root(root) / folder
    required = {"cifar100": ("train", "test", "meta"), "stl10": ("train_X.bin", "test_X.bin")}[name]
    return all((path / f).is_file() for f in required)

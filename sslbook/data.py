"""Datasets, held where the augmentations can reach them.

Small-image datasets (CIFAR-10/100, STL-10) live in memory as one uint8 tensor ``[N, 3, H, W]``:
a batch is then a slice of that tensor, moved to the device and augmented there as a whole
(see :mod:`sslbook.augment`). Large datasets (ImageNet, any ImageFolder tree) are decoded by
DataLoader workers into fixed-size uint8 tensors and augmented on the device the same way.

Where data comes from: an explicit ``root`` argument, else ``$SSLBOOK_DATA``, else
``~/.cache/sslbook/data``. CIFAR is read from the official "python version" pickle batches by
our own reader; when the folder is missing, torchvision downloads it (if the network is there).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

ENV_VAR = "SSLBOOK_DATA"
DEFAULT_ROOT = Path("~/.cache/sslbook/data")

# Per-channel statistics used to normalise inputs (computed on the training splits).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetNotFoundError(FileNotFoundError):
    """The data are not on disk and could not be downloaded."""


class DatasetFormatError(ValueError):
    """A file is there but is not what the reader expects (truncated, wrong format)."""


def data_root(root: Optional[str | os.PathLike] = None) -> Path:
    """The folder datasets live in: ``root``, else ``$SSLBOOK_DATA``, else ~/.cache/sslbook/data."""
    chosen = root if root is not None else os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser()


@dataclass
class ImageTensorDataset:
    """A labelled image set in memory: ``images`` uint8 [N, 3, H, W], ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    mean: tuple = CIFAR10_MEAN
    std: tuple = CIFAR10_STD

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def num_classes(self) -> int:
        """Classes a classifier for this set needs: the named classes, or the largest label + 1."""
        return max(len(self.classes or []), int(self.labels.max()) + 1 if len(self.labels) else 0)

    def subset(self, n: Optional[int], seed: int = 0, balanced: bool = True) -> "ImageTensorDataset":
        """The first ``n`` images of a fixed random order (class-balanced when ``balanced``)."""
        if n is None or n >= len(self):
            return self
        index = (
            balanced_indices(self.labels, n, seed)
            if balanced
            else torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        )
        return ImageTensorDataset(self.images[index], self.labels[index], self.classes, self.name, self.mean, self.std)


def labelled_images(images, labels=None, classes=None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images, labels, class names)`` from uint8 ``images`` ``[N, 3, h, w]`` and their ``labels``,
    or from an :class:`ImageTensorDataset` (its labels and classes fill in what is not given).
    Class names default to "0", "1", ... up to the largest label."""
    if hasattr(images, "images"):
        labels = images.labels if labels is None else labels
        classes = images.classes if classes is None else classes
        images = images.images
    if labels is None:
        raise ValueError("pass labels (or an ImageTensorDataset)")
    classes = list(classes) if classes is not None else [str(c) for c in range(int(labels.max()) + 1)]
    return images, labels, classes


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` indices with (as nearly as possible) the same number per class, in a seeded order.

    Used for the profiles' data subsets and for the 1% / 10% label subsets of semi-supervised
    evaluation (the SimCLR and SwAV protocol).
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    classes = labels.unique()
    per_class = [order[labels[order] == c] for c in classes]
    take = n // len(classes)
    chosen = [idx[:take] for idx in per_class]
    leftover = n - take * len(classes)  # spread the remainder over the first classes
    chosen += [idx[take : take + 1] for idx in per_class[:leftover]]
    index = torch.cat(chosen)
    return index[torch.randperm(len(index), generator=g)]


# --------------------------------------------------------------------------- variants for experiments
def channel_stats(images: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and std (in [0, 1] units) of a uint8 ``[N, 3, H, W]`` set."""
    x = images.float().div_(255).transpose(0, 1).reshape(3, -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def rotated_copy(dataset: ImageTensorDataset, seed: int = 0) -> ImageTensorDataset:
    """Every image turned by its own random multiple of 90 degrees; labels unchanged.

    A stand-in for imagery without an upright orientation (top-down photographs, microscopy,
    textures): the class does not depend on the rotation, so a rotation label carries no
    information about the content. The pretext chapter uses it to show where rotation prediction
    (Gidaris et al. 2018) fails. The turn of image i is ``turns[i]`` (counter-clockwise quarters),
    drawn once from ``seed``, so the copy is the same every time.
    """
    turns = torch.randint(0, 4, (len(dataset),), generator=torch.Generator().manual_seed(seed))
    images = dataset.images.clone()
    for k in range(1, 4):
        picked = turns == k
        images[picked] = torch.rot90(dataset.images[picked], k, dims=(2, 3))
    mean, std = channel_stats(images)
    return ImageTensorDataset(images, dataset.labels.clone(), dataset.classes, f"{dataset.name}-rotated", mean, std)


TINTS = {  # name -> RGB multiplier; ten hues around the colour wheel
    "red": (1.0, 0.25, 0.25),
    "orange": (1.0, 0.6, 0.2),
    "yellow": (1.0, 1.0, 0.25),
    "lime": (0.6, 1.0, 0.2),
    "green": (0.25, 1.0, 0.25),
    "teal": (0.2, 1.0, 0.8),
    "cyan": (0.25, 0.9, 1.0),
    "blue": (0.3, 0.4, 1.0),
    "purple": (0.7, 0.3, 1.0),
    "magenta": (1.0, 0.25, 0.9),
}


def tinted_copy(dataset: ImageTensorDataset, seed: int = 0) -> ImageTensorDataset:
    """Grayscale versions of the images, each tinted with one of ten colours; the tint is the label.

    A data set where colour, and only colour, decides the class: the grayscale content is the
    original image's, and the label is which of :data:`TINTS` multiplies it (a per-image random
    choice from ``seed``). The original object labels stay in ``dataset.labels`` (same order). The
    pretext chapter uses it to show an augmentation (colour jitter, grayscale) removing exactly the
    information a downstream task needs.
    """
    tint = torch.randint(0, len(TINTS), (len(dataset),), generator=torch.Generator().manual_seed(seed))
    gray = (
        0.299 * dataset.images[:, 0].float()
        + 0.587 * dataset.images[:, 1].float()
        + 0.114 * dataset.images[:, 2].float()
    )  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
    colours = torch.tensor(list(TINTS.values()))  # [10, 3]
    images = (gray[:, None] * colours[tint][:, :, None, None]).round().clamp_(0, 255).to(torch.uint8)
    mean, std = channel_stats(images)
    return ImageTensorDataset(images, tint, list(TINTS), f"{dataset.name}-tinted", mean, std)


# --------------------------------------------------------------------------- CIFAR
_CIFAR = {
    # name: (folder, train files, test files, meta file, label key, class-name key, torchvision class)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
        "CIFAR10",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names", "CIFAR100"),
}


def _bytes_from_latin1(text: str, encoding: str) -> bytes:
    """How Python 3 pickles ``bytes`` at protocol 2: as ``_codecs.encode(text, "latin1")``."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, where a pickle writes 'latin1'")
    return text.encode("latin1")


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's array constructor, wherever this numpy keeps it

# Every global the official CIFAR-10/100 batches (Python 2, numpy 1) and their Python 3 re-pickles
# (numpy 2, protocol 2 to 4) name: the array constructor, its class and dtype, and the bytes codec.
# Dicts, lists, bytes, str and ints need no global.
CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _bytes_from_latin1,
}


class RefusedPickleGlobal(pickle.UnpicklingError):
    """A pickle names a global that a CIFAR batch never holds (and that could run code)."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR batch holds: plain containers and numpy arrays.

    ``pickle.load`` calls whatever function the file names, so a crafted "batch" could run any code
    while it is read. This one looks every global up in :data:`CIFAR_PICKLE_GLOBALS` and refuses the
    rest before anything is called.
    """

    def find_class(self, module: str, name: str):
        try:
            return CIFAR_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickleGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise RefusedPickleGlobal(f"persistent id {pid!r}")


def read_cifar_pickle(path: Path) -> dict:
    """One official CIFAR pickle file (a batch or the meta file), read without running any code."""
    try:
        with open(path, "rb") as f:
            # The official batches were pickled by Python 2: bytes keys, latin-1 strings.
            return _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} is missing: delete its folder and download the dataset again") from None
    except RefusedPickleGlobal as e:
        raise DatasetFormatError(
            f"{path} is not a CIFAR batch: it asks to call {e}, which could run code, and CIFAR batches hold "
            "only dicts, lists, bytes, numbers and numpy arrays; delete the folder and download it again"
        ) from None
    except Exception as e:  # truncated files raise EOFError, UnpicklingError, ValueError...
        raise DatasetFormatError(
            f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e}); delete the folder and download it again"
        ) from None


def read_cifar_batches(folder: Path, files: Sequence[str], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Read official CIFAR pickle batches into uint8 images [N, 3, 32, 32] and int64 labels."""
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = read_cifar_pickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise DatasetFormatError(
                f"{path} is not a CIFAR batch (expected a dict with b'data' and {label_key!r}); "
                "delete the folder and download it again"
            )
        data = np.asarray(batch[b"data"])
        well_formed = data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
        if not well_formed or len(batch[label_key]) != len(data):
            raise DatasetFormatError(
                f"{path} holds data of shape {data.shape} and dtype {data.dtype}, expected uint8 [N, 3072] "
                "with one label per row; delete the folder and download it again"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))  # rows are CHW already
        labels.append(torch.tensor(batch[label_key], dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def _download_cifar(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    dataset_class = getattr(tvd, _CIFAR[name][6])
    try:
        dataset_class(str(root), train=True, download=True)
    except Exception as e:
        raise DatasetNotFoundError(
            f"{name} is not under {root / _CIFAR[name][0]} and the download failed ({type(e).__name__}: {e}); "
            f"set {ENV_VAR} to a folder that holds {_CIFAR[name][0]}/, or connect to the internet "
            "so torchvision can download it"
        ) from None


def load_cifar(
    name: str = "cifar10", split: str = "train", root: Optional[str | os.PathLike] = None, download: bool = True
) -> ImageTensorDataset:
    """CIFAR-10 or CIFAR-100 (``split`` = "train" or "test") as an in-memory uint8 dataset."""
    if name not in _CIFAR:
        raise ValueError(f"unknown CIFAR dataset {name!r}: use one of {', '.join(_CIFAR)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
    folder_name, train_files, test_files, meta_file, label_key, names_key, _ = _CIFAR[name]
    root = data_root(root)
    folder = root / folder_name
    if not folder.is_dir():
        if not download:
            raise DatasetNotFoundError(
                f"{name} is not under {folder}; set {ENV_VAR} to a folder that holds {folder_name}/ "
                "or pass download=True"
            )
        _download_cifar(name, root)
    images, labels = read_cifar_batches(folder, train_files if split == "train" else test_files, label_key)
    meta = read_cifar_pickle(folder / meta_file)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return ImageTensorDataset(images, labels, classes, f"{name}-{split}", mean, std)


# --------------------------------------------------------------------------- STL-10 and ImageFolder
def load_stl10(
    split: str = "unlabeled", root: Optional[str | os.PathLike] = None, download: bool = True
) -> ImageTensorDataset:
    """STL-10 (96 px; splits "unlabeled", "train", "test", "train+unlabeled") in memory, via torchvision."""
    import torchvision.datasets as tvd

    root = data_root(root)
    try:
        ds = tvd.STL10(str(root), split=split, download=download)
    except Exception as e:
        raise DatasetNotFoundError(
            f"STL-10 is not under {root / 'stl10_binary'} and could not be downloaded ({type(e).__name__}: {e}); "
            f"set {ENV_VAR} to a folder that holds stl10_binary/, or connect to the internet"
        ) from None
    labels = torch.as_tensor(ds.labels, dtype=torch.int64)  # -1 for the unlabeled split
    return ImageTensorDataset(
        torch.from_numpy(ds.data),
        labels,
        list(ds.classes),
        f"stl10-{split}",
        (0.4467, 0.4398, 0.4066),
        (0.2603, 0.2566, 0.2713),
    )


class DecodeToTensor:
    """Decode an image file to uint8 [3, size, size]: shorter side to ``size``, centre crop.

    Workers do only this (cheap, deterministic); the random augmentations run on the batch, on
    the device. ``size`` is the *load* size (e.g. 256 for 224 px crops at ImageNet scale).
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image):
        import torchvision.transforms.v2.functional as TF

        image = TF.pil_to_tensor(image.convert("RGB"))
        image = TF.resize(image, self.size, antialias=True)
        return TF.center_crop(image, [self.size, self.size])


def _safe_loader(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetFormatError(f"cannot decode {path} as an image ({e}); remove or replace that file") from None


def load_image_folder(path: str | os.PathLike, load_size: int = 256):
    """Any ``class/image.jpg`` tree (ImageNet's train/ and val/ folders) as a torchvision ImageFolder
    whose items are uint8 [3, load_size, load_size] tensors."""
    import torchvision.datasets as tvd

    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"image folder {path} does not exist; point data.root (or {ENV_VAR}) at a folder of class sub-folders"
        )
    try:
        return tvd.ImageFolder(str(path), transform=DecodeToTensor(load_size), loader=_safe_loader)
    except FileNotFoundError as e:  # raised when there are no class folders / no images
        raise DatasetNotFoundError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- batching
class EpochOrder:
    """The order of one epoch, reproducible from (seed, epoch) and shardable over processes.

    Every process draws the same permutation; global batch ``b`` is rows ``b*B*W .. (b+1)*B*W`` of
    it and process ``rank`` takes its ``rank``-th slice of ``B`` rows. So a run on W processes sees
    exactly the global batches of a run on one process with batch ``B*W`` (tested), and resuming
    at batch ``b`` needs only (seed, epoch, b).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        global_batch = batch_size * world_size
        if drop_last and num_items < global_batch:
            raise ValueError(f"{num_items} images are fewer than one global batch of {global_batch}; lower batch_size")
        self.num_batches = num_items // global_batch if drop_last else -(-num_items // global_batch)

    def __len__(self) -> int:
        return self.num_batches

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Index tensors of this process's batches in ``epoch``, from batch ``start`` on."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.num_items, generator=g)
        else:
            order = torch.arange(self.num_items)
        global_batch = self.batch_size * self.world_size
        for b in range(start, self.num_batches):
            rows = order[b * global_batch : (b + 1) * global_batch]
            yield rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


class InMemoryLoader:
    """Batches of an in-memory uint8 dataset, moved to ``device`` as they are needed.

    With ``device`` a GPU and ``images_on_device=True`` the whole dataset sits on the GPU
    (CIFAR-10 is 150 MB) and a batch never crosses the PCIe bus.
    Yields ``(images uint8 [B,3,H,W], labels [B], indices [B])``.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        device="cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        images_on_device: bool = False,
    ):
        self.dataset, self.device = dataset, torch.device(device)
        self.order = EpochOrder(len(dataset), batch_size, seed, rank, world_size, shuffle, drop_last)
        self.images = dataset.images.to(self.device) if images_on_device else dataset.images
        self.labels = dataset.labels.to(self.device) if images_on_device else dataset.labels
        self.pin = self.device.type == "cuda" and not images_on_device

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, epoch: int, start: int = 0):
        for index in self.order.batches(epoch, start):
            idx = index.to(self.images.device)
            images, labels = self.images[idx], self.labels[idx]
            if self.pin:
                images = images.pin_memory()
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
                index.to(self.device, non_blocking=True),
            )


class FolderLoader:
    """Batches of an on-disk ImageFolder, decoded by DataLoader workers, same interface as InMemoryLoader."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        device="cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        num_workers: int = 4,
    ):
        self.dataset, self.device, self.num_workers = dataset, torch.device(device), num_workers
        self.order = EpochOrder(len(dataset), batch_size, seed, rank, world_size, shuffle, drop_last)

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, epoch: int, start: int = 0):
        batches = list(self.order.batches(epoch, start))
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for index, (images, labels) in zip(batches, loader):
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
                index.to(self.device),
            )

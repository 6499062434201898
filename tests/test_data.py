import pickle

import numpy as np
import pytest
import torch

from conftest import real_cifar_root
from sslbook import data
from sslbook.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    EpochOrder,
    InMemoryLoader,
    balanced_indices,
    load_cifar,
    load_image_folder,
)


def test_reads_official_layout(cifar_root):
    train = load_cifar("cifar10", "train", root=cifar_root, download=False)
    test = load_cifar("cifar10", "test", root=cifar_root, download=False)
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 3, 32, 32)
    assert train.classes == [f"class{i}" for i in range(10)]
    # Rows are stored CHW: the first 1024 bytes are the red plane of image 0.
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(raw[b"data"][0, :1024]))
    assert train.labels[:20].tolist() == raw[b"labels"]


def test_data_root_from_env(cifar_root, monkeypatch):
    monkeypatch.setenv("SSLBOOK_DATA", str(cifar_root))
    assert data.data_root() == cifar_root
    assert len(load_cifar("cifar10", "test", download=False)) == 20
    assert data.data_root("/elsewhere") == data.Path("/elsewhere")


def test_default_root(monkeypatch):
    monkeypatch.delenv("SSLBOOK_DATA", raising=False)
    assert str(data.data_root()).endswith(".cache/sslbook/data")


def test_missing_data_names_variable_and_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="SSLBOOK_DATA"):
        load_cifar("cifar10", "train", root=tmp_path, download=False)


def test_missing_data_with_failed_download(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    with pytest.raises(DatasetNotFoundError, match="download failed.*SSLBOOK_DATA"):
        load_cifar("cifar10", "train", root=tmp_path)


def test_truncated_batch_is_a_clear_error(cifar_root):
    path = cifar_root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetFormatError, match="data_batch_3.*download it again"):
        load_cifar("cifar10", "train", root=cifar_root, download=False)


def test_wrong_format_batch_is_a_clear_error(cifar_root):
    path = cifar_root / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), dtype=np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DatasetFormatError, match=r"expected uint8 \[N, 3072\]"):
        load_cifar("cifar10", "test", root=cifar_root, download=False)
    path.write_text("not a pickle at all")
    with pytest.raises(DatasetFormatError, match="not a readable CIFAR batch"):
        load_cifar("cifar10", "test", root=cifar_root, download=False)


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a stand-in for any code a crafted pickle could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_batch_that_would_run_code_is_refused_before_it_runs(cifar_root, tmp_path, capsys):
    from sslbook.__main__ import main

    marker = tmp_path / "payload_ran"
    path = cifar_root / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "wb") as f:
        pickle.dump({b"data": _CreatesFile(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DatasetFormatError, match=r"data_batch_2 is not a CIFAR batch: it asks to call io\.open"):
        load_cifar("cifar10", "train", root=cifar_root, download=False)
    assert not marker.exists()
    # Through the CLI: one line on stderr, exit code 2, and still no payload.
    code = main(
        [
            "train",
            "profile=smoke",
            f"data.root={cifar_root}",
            f"out_dir={tmp_path / 'run'}",
            "resume=never",
            "progress=false",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {path} is not a CIFAR batch: it asks to call io.open, which could run code")
    assert err.endswith("delete the folder and download it again")
    assert not marker.exists()
    # The control: the payload is real, plain pickle.load runs it.
    with open(path, "rb") as f:
        pickle.load(f, encoding="bytes")
    assert marker.exists()


def _same_pickle_contents(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def test_restricted_reader_matches_plain_pickle(cifar_root):
    folder = cifar_root / "cifar-10-batches-py"
    for name in ("batches.meta", "test_batch"):
        with open(folder / name, "rb") as f:
            plain = pickle.load(f, encoding="bytes")
        assert _same_pickle_contents(data.read_cifar_pickle(folder / name), plain)
    # Re-pickled by Python 3 at protocols 3 and 4 (native bytes, numpy 2 arrays) it still reads.
    for protocol in (3, 4):
        (folder / "test_batch").write_bytes(pickle.dumps(plain, protocol=protocol))
        assert _same_pickle_contents(data.read_cifar_pickle(folder / "test_batch"), plain)


def test_unknown_dataset_and_split(cifar_root):
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        load_cifar("cifar11", root=cifar_root)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_cifar("cifar10", "val", root=cifar_root)


def test_labelled_images_from_tensors_or_a_dataset():
    images, labels = torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 2, 1])
    assert data.labelled_images(images, labels)[2] == ["0", "1", "2"]  # names up to the largest label
    dataset = data.ImageTensorDataset(images, labels, ["cat", "dog", "elk"])
    got_images, got_labels, classes = data.labelled_images(dataset)
    assert got_images is images and got_labels is labels and classes == ["cat", "dog", "elk"]
    assert data.labelled_images(dataset, classes=("a", "b", "c"))[2] == ["a", "b", "c"]  # given values win
    with pytest.raises(ValueError, match="pass labels"):
        data.labelled_images(images)


def test_balanced_indices():
    labels = torch.arange(1000) % 10
    idx = balanced_indices(labels, 105, seed=1)
    counts = torch.bincount(labels[idx], minlength=10)
    assert len(idx) == 105 and len(set(idx.tolist())) == 105
    assert counts.max() - counts.min() <= 1
    assert torch.equal(idx, balanced_indices(labels, 105, seed=1))
    assert not torch.equal(idx, balanced_indices(labels, 105, seed=2))


def test_subset_is_balanced_and_keeps_stats(cifar_root):
    train = load_cifar("cifar10", "train", root=cifar_root, download=False)
    sub = train.subset(30)
    assert len(sub) == 30 and sub.mean == train.mean and sub.classes == train.classes
    assert train.subset(None) is train


def test_epoch_order_is_reproducible_and_resumable():
    order = EpochOrder(100, 16, seed=3)
    assert len(order) == 6
    first = list(order.batches(epoch=2))
    assert all(torch.equal(a, b) for a, b in zip(first, order.batches(epoch=2)))
    assert not torch.equal(first[0], next(order.batches(epoch=3)))
    resumed = list(order.batches(epoch=2, start=4))
    assert all(torch.equal(a, b) for a, b in zip(first[4:], resumed))
    seen = torch.cat(first)
    assert len(set(seen.tolist())) == 96  # each image at most once per epoch


def test_in_memory_loader_batches(cifar_root):
    train = load_cifar("cifar10", "train", root=cifar_root, download=False)
    loader = InMemoryLoader(train, batch_size=32)
    images, labels, index = next(loader.epoch(0))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, train.images[index]) and torch.equal(labels, train.labels[index])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        InMemoryLoader(train, batch_size=1000)


def test_image_folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (40 + i, 30), (i * 40, 100, 200)).save(tmp_path / c / f"{i}.jpg")
    ds = load_image_folder(tmp_path, load_size=24)
    image, label = ds[4]
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8 and label == 1
    (tmp_path / "dog" / "broken.jpg").write_text("this is not an image")
    ds = load_image_folder(tmp_path, load_size=24)
    with pytest.raises(DatasetFormatError, match="broken.jpg.*remove or replace"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")


@pytest.mark.data
def test_real_cifar10_copy():
    root = real_cifar_root()
    if root is None:
        pytest.skip("set SSLBOOK_DATA to a folder holding cifar-10-batches-py")
    train, test = load_cifar("cifar10", "train", root=root), load_cifar("cifar10", "test", root=root)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    # The restricted reader returns what plain pickle.load does on the real files.
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        plain = pickle.load(f, encoding="bytes")
    assert torch.equal(test.images.flatten(1), torch.from_numpy(plain[b"data"]))
    assert test.labels.tolist() == plain[b"labels"]
    mean = train.images.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(train.mean), atol=0.01)  # the statistics we normalise with

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def write_cifar_fixture(root: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the official pickle layout (5 train batches, 1 test batch, meta)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * n_per_batch,
                },
                f,
                protocol=2,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)
    return folder


@pytest.fixture
def cifar_root(tmp_path):
    write_cifar_fixture(tmp_path)
    return tmp_path


def real_cifar_root():
    """The real (offline) CIFAR-10 copy if $SSLBOOK_DATA holds it, else None."""
    root = os.environ.get("SSLBOOK_DATA")
    if root and (Path(root) / "cifar-10-batches-py" / "data_batch_1").exists():
        return Path(root)
    return None


def tiny_dataset(n=64, side=16, classes=4, seed=0):
    from sslbook.data import ImageTensorDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    return ImageTensorDataset(images, labels, [f"c{i}" for i in range(classes)], "tiny")


def tiny_run_config(tmp_path, *overrides, name="run"):
    """A seconds-long training config on tiny data: width-4 ResNet-18, batch 16, a fresh out_dir.

    Later overrides win, so a test file passes its own defaults first and each test its changes after.
    """
    from sslbook.config import load_config

    return load_config(
        None,
        [
            "profile=smoke",
            "model.width=4",
            "batch_size=16",
            "epochs=2",
            "eval_every=0",
            "progress=false",
            "verbose=false",
            "log_every=2",
            "max_minutes=null",
            f"out_dir={tmp_path / name}",
            "resume=never",
            *overrides,
        ],
    )


def tiny_datasets():
    """(train, test): 64 and 32 random 16 px images in 4 classes."""
    return tiny_dataset(64, 16, seed=0), tiny_dataset(32, 16, seed=1)


# --------------------------------------------------------------------------- method tests share these
def tiny_encoder(width: int = 4):
    """ResNet-18 with the CIFAR stem at a tiny width: fast enough for a training step in a test."""
    from sslbook.models import resnet

    return resnet(18, "cifar", width=width)


def flat_params(module) -> torch.Tensor:
    """All parameters of a module as one detached vector (to see whether a step changed them)."""
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def random_batch(b: int = 8, side: int = 32, seed: int = 0) -> torch.Tensor:
    """A seeded float batch [b, 3, side, side] standing in for normalised views."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, side, side, generator=g)


def seeded_sgd_step(make_method, views, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Build a method under ``seed``, take one SGD step on ``views``: (parameters before, after)."""
    torch.manual_seed(seed)
    method = make_method()
    start = flat_params(method).clone()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    method(views, torch.arange(len(views[0])))["loss"].backward()
    optimizer.step()
    return start, flat_params(method)


def glue_records(cells) -> list[tuple[str, str]]:
    """(name, stored record) of every value the notebook cells glued with ``book.glue``, in order."""
    records = []
    for cell in cells:
        for out in cell.get("outputs", []):
            meta = out.get("metadata", {}).get("scrapbook")
            if meta:
                text = out["data"][meta.get("mime_prefix", "") + "text/plain"]
                records.append((meta["name"], "".join(text) if isinstance(text, list) else text))
    return records

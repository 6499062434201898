"""Run profiles: how big a run is, decided in one place.

The same notebook must run in seconds on CI, in minutes on a laptop CPU and as the papers'
CIFAR recipe on a Colab GPU. A *profile* names those three scales:

- ``smoke``: CI. A few hundred images, a tiny encoder, a handful of steps. Numbers mean nothing;
  the point is that every line of the notebook runs.
- ``cpu``: what the book's stored outputs show. ResNet-18 at width 16 on all of CIFAR-10 for a
  few minutes of wall clock on two cores: small, but real and honestly measured.
- ``gpu``: the full CIFAR-10 recipe (ResNet-18 at width 64, batch 512, hundreds of epochs).

The profile is chosen automatically (CUDA present -> ``gpu``, otherwise ``cpu``) and the
environment variable ``SSLBOOK_PROFILE`` overrides it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import torch

ENV_VAR = "SSLBOOK_PROFILE"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    encoder_width: int  # channels of ResNet-18's first stage (64 = the standard network)
    batch_size: int  # images per step (each gives two or more views)
    epochs: int  # upper bound on pre-training epochs
    train_minutes: Optional[float]  # wall-clock cap on one pre-training run (None = no cap)
    train_images: Optional[int]  # None = the whole training split
    test_images: Optional[int]  # None = the whole test split
    eval_every: int  # kNN monitor every this many epochs
    num_workers: int  # DataLoader workers for on-disk data (in-memory CIFAR needs none)

    def subset(self, n_available: int, split: str = "train") -> int:
        """How many images of a split this profile uses."""
        cap = self.train_images if split == "train" else self.test_images
        return n_available if cap is None else min(cap, n_available)


PROFILES = {
    "smoke": Profile(
        name="smoke",
        description="CI: seconds per notebook, tiny data and encoder; numbers mean nothing",
        encoder_width=8,
        batch_size=64,
        epochs=1,
        train_minutes=0.25,
        train_images=512,
        test_images=256,
        eval_every=1,
        num_workers=0,
    ),
    "cpu": Profile(
        name="cpu",
        description="2 CPU cores: minutes per notebook, ResNet-18 width 16, all of CIFAR-10",
        encoder_width=16,
        batch_size=256,
        epochs=200,
        train_minutes=5.0,
        train_images=None,
        test_images=None,
        eval_every=2,
        num_workers=2,
    ),
    "gpu": Profile(
        name="gpu",
        description="one GPU (Colab): the full CIFAR-10 recipes, ResNet-18 width 64",
        encoder_width=64,
        batch_size=512,
        epochs=200,
        train_minutes=None,
        train_images=None,
        test_images=None,
        eval_every=10,
        num_workers=2,
    ),
}


def get_profile(name: Optional[str] = None) -> Profile:
    """The profile named by ``name``, else by ``$SSLBOOK_PROFILE``, else ``gpu`` if CUDA is there."""
    source = "profile" if name else ENV_VAR
    name = name or os.environ.get(ENV_VAR) or ("gpu" if torch.cuda.is_available() else "cpu")
    if name.strip().lower() not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from {source}): set {source} to one of {', '.join(PROFILES)}")
    return PROFILES[name.strip().lower()]


def with_overrides(profile: Profile, **changes) -> Profile:
    """A copy of ``profile`` with some fields changed (e.g. a longer ``train_minutes``)."""
    return dataclasses.replace(profile, **changes)


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

"""One trainer for every method.

    result = train(load_config("configs/cifar10/simclr.yaml"))

A method (:mod:`sslbook.methods`) only turns views into a loss. Everything else lives here, once:
data and on-device augmentation, the optimiser and its warm-up + cosine schedule, mixed precision,
``channels_last``, ``torch.compile``, DDP under ``torchrun``, a JSON-lines metrics log, the kNN
monitor, and checkpoints that resume exactly (mid-epoch included).

The loop (:func:`train`) reads top to bottom; its pieces are named: :func:`prepare_run` (data,
method, optimiser), :func:`train_step` (one SSL step: augment, forward, backward, optimiser step,
momentum updates), :class:`SchedulePlanner` (the schedule's length, fitted to a time budget),
:class:`MetricsLogger` (``metrics.jsonl`` and the progress bar), :func:`resume_point`/:func:`restore`
and :class:`Checkpointer` (atomic, fsynced checkpoints), :class:`DivergenceGuard` (no checkpoint
after a non-finite loss) and :func:`stop_vote` (DDP processes stop together).

Host syncs: the loop never calls ``.item()`` on a step's results except every ``log_every`` steps,
so a GPU is never made to wait on the Python side between logging points (on a GPU the loss is
checked on the device and read there too).

Checkpoints hold only tensors and plain values and are read with ``weights_only=True``: loading
one never runs code from it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pickle
import random
import re
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import distributed as dist
from .augment import Augment, ViewSpec, recipe
from .config import Config, ConfigError, from_dict, save_config, to_dict
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FolderLoader,
    ImageTensorDataset,
    InMemoryLoader,
    load_cifar,
    load_image_folder,
    load_stl10,
    rotated_copy,
    tinted_copy,
)
from .eval import extract_features, knn_accuracy
from .losses import output_std
from .methods import METHODS, Method, build_method
from .models import build_encoder
from .optim import build_optimizer, lr_at, peak_lr, set_lr
from .utils import fork_rng

CHECKPOINT = "checkpoint.pt"
CALIBRATION_STEPS = (3, 13)  # with a time budget: time steps 3..13 to plan the schedule's length,
REPLAN_FRACTION = 0.1  # then time the steps from 13 to a tenth of that plan and plan again (SchedulePlanner)
REPLAN_MIN_STEPS = 10  # unless that window is shorter than this


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


def trained_tensors(method: nn.Module):
    """(name, tensor) of what training changes and a divergence spoils: the parameters and the
    normalisation layers' running statistics. Other buffers (queues, banks, an NCE constant that is
    NaN until estimated) follow from these or hold sentinels, so they are not checked."""
    yield from method.named_parameters()
    for prefix, module in method.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point():
                    yield f"{prefix}.{name}", buffer


class DivergenceGuard:
    """Stops a run as soon as its loss is not finite, so that no checkpoint is written after that.

    On the CPU every step's loss is checked at once. On a GPU that would be one host sync per step,
    so each step writes the first bad step into a device-side flag instead, and :meth:`check` reads
    it before every log line, evaluation and checkpoint.
    """

    def __init__(self, device, checkpoint_path: Path, saved_step: Optional[int] = None):
        self.lazy = torch.device(device).type == "cuda"
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: every loss so far is finite
        self.checkpoint_path = checkpoint_path
        self.saved_step = saved_step  # the step of the last checkpoint this run wrote (or resumed from)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record the loss of optimiser step ``step`` (counted from 1)."""
        if self.lazy:
            bad = ~torch.isfinite(loss.detach()) & (self.first_bad == 0)
            self.first_bad = torch.where(bad, step, self.first_bad)
        elif not torch.isfinite(loss.detach()):
            raise self.diverged(step, float(loss.detach()))

    def check(self, method: Optional[nn.Module] = None, step: int = 0) -> None:
        """Raise TrainingDiverged if a loss so far was not finite, or (given ``method``, before a
        checkpoint) if one of its parameters or buffers is not."""
        if self.lazy and int(self.first_bad):  # the host sync
            raise self.diverged(int(self.first_bad), float("nan"))
        if method is not None:
            bad = [name for name, v in trained_tensors(method) if not torch.isfinite(v).all()]
            if bad:
                raise self.diverged(
                    step, float("nan"), f"{len(bad)} tensors of the model (e.g. {bad[0]}) are not finite"
                )

    def diverged(self, step: int, value: float, what: str = "") -> TrainingDiverged:
        """The error naming the step and the checkpoint kept; ``what`` replaces "loss became <value> at"."""
        if what:
            what = f"{what} by step {step}"
        else:  # on a GPU the flag holds the step, not the value
            what = f"loss became {'not finite' if self.lazy else value} at step {step}"
        kept = (
            "no checkpoint of this run was written before it"
            if self.saved_step is None
            else f"the last good checkpoint, of step {self.saved_step} ({self.checkpoint_path}), is kept"
        )
        return TrainingDiverged(f"{what}; stopped, {kept}. Lower optim.lr, or use precision=fp32")


# --------------------------------------------------------------------------- data
def load_datasets(cfg: Config):
    """(train, test) for the config's dataset; test may be None (no kNN monitor)."""
    d = cfg.data
    if d.dataset in ("cifar10", "cifar100"):
        train, test = load_cifar(d.dataset, "train", d.root), load_cifar(d.dataset, "test", d.root)
    elif d.dataset == "stl10":
        train, test = load_stl10("train+unlabeled", d.root), load_stl10("test", d.root)
    elif d.dataset == "imagefolder":
        if d.root is None:
            raise ConfigError("data.dataset=imagefolder needs data.root: the folder holding train/ and val/")
        root = Path(d.root).expanduser()
        if d.variant is not None:
            raise ConfigError(f"data.variant={d.variant} needs an in-memory dataset (cifar10, cifar100, stl10)")
        train = load_image_folder(root / "train", d.load_size)
        test = load_image_folder(root / "val", d.load_size) if (root / "val").is_dir() else None
        return train, test
    else:
        raise ConfigError(f"unknown data.dataset {d.dataset!r}")
    train, test = train.subset(d.train_images, seed=cfg.seed), test.subset(d.test_images, seed=cfg.seed)
    if d.variant is not None:  # the same copy for every run: fixed seeds, not the run's
        copy = {"rotated": rotated_copy, "tinted": tinted_copy}[d.variant]
        train, test = copy(train, seed=0), copy(test, seed=1)
    return train, test


def dataset_stats(dataset, crop_size: Optional[int] = None) -> tuple[tuple, tuple, int]:
    """(mean, std, evaluation image side) of a dataset; ImageFolder trees use ImageNet's statistics."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.mean, dataset.std, crop_size or dataset.images.shape[-1]
    return IMAGENET_MEAN, IMAGENET_STD, crop_size or 224


def make_loader(dataset, cfg: Config, device, batch_size: int, shuffle: bool = True, drop_last: bool = True):
    args = dict(
        batch_size=batch_size,
        device=device,
        seed=cfg.seed,
        rank=dist.rank(),
        world_size=dist.world_size(),
        shuffle=shuffle,
        drop_last=drop_last,
    )
    if isinstance(dataset, ImageTensorDataset):
        return InMemoryLoader(
            dataset, images_on_device=cfg.data.on_device and torch.device(device).type == "cuda", **args
        )
    return FolderLoader(dataset, num_workers=cfg.data.num_workers, **args)


def build_augment(cfg: Config, mean, std, size: int) -> Augment:
    if isinstance(cfg.augment, str):
        return Augment(recipe(cfg.augment, size=size, mean=mean, std=std, local_crops=cfg.data.local_crops))
    try:
        return Augment([ViewSpec(**{"mean": mean, "std": std, **view}) for view in cfg.augment])
    except TypeError as e:
        raise ConfigError(f"config key 'augment': {e}; see sslbook.augment.ViewSpec for the view keys") from None


# --------------------------------------------------------------------------- evaluation inside training
@torch.no_grad()
def features_of(
    method: Method, dataset, mean, std, size: int, device, batch_size: int = 512, num_workers: int = 2
) -> tuple:
    """The evaluated features (``method.embed``: the backbone's, unless the method says otherwise) and labels
    of a whole dataset (no augmentation), for kNN."""
    if isinstance(dataset, ImageTensorDataset):
        images = dataset.images
        if images.shape[-1] != size:
            images = (
                torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        return extract_features(method.embed, images, mean, std, batch_size, device), dataset.labels
    feats, labels = [], []
    loader = FolderLoader(dataset, batch_size, device, shuffle=False, drop_last=False, num_workers=num_workers)
    for images, y, _ in loader.epoch(0):
        if images.shape[-1] > size:  # the standard evaluation view: resize to load_size, centre crop
            offset = (images.shape[-1] - size) // 2
            images = images[..., offset : offset + size, offset : offset + size]
        feats.append(extract_features(method.embed, images, mean, std, batch_size, device))
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def knn_eval(method: Method, train_set, test_set, cfg: Config, device, ks=(200,)) -> dict:
    mean, std, size = dataset_stats(train_set, cfg.data.crop_size)
    train_x, train_y = features_of(method, train_set, mean, std, size, device, num_workers=cfg.data.num_workers)
    test_x, test_y = features_of(method, test_set, mean, std, size, device, num_workers=cfg.data.num_workers)
    record = {
        f"knn{k}_top1": knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=cfg.knn_temperature) for k in ks
    }
    warn_if_chance(record, num_classes=int(train_y.unique().numel()), num_test=len(test_y))
    return record


def warn_if_chance(record: dict, num_classes: int, num_test: int) -> None:
    """Warn when a kNN accuracy is indistinguishable from guessing: within two binomial standard errors
    of 100/num_classes on this many test images (a collapsed or not yet trained representation)."""
    chance = 100.0 / num_classes
    margin = 2 * 100.0 * math.sqrt(chance / 100 * (1 - chance / 100) / max(1, num_test))
    at_chance = {k: v for k, v in record.items() if v <= chance + margin}
    if at_chance:
        warnings.warn(
            f"kNN accuracy {', '.join(f'{k}={v:.1f}%' for k, v in at_chance.items())} is at chance "
            f"({chance:.1f}% for {num_classes} classes, +-{margin:.1f} on {num_test} test images): the "
            "representation has collapsed or not learned yet",
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- state and checkpoints
@dataclass
class TrainState:
    epoch: int = 0  # current epoch
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimiser steps taken
    total_steps: Optional[int] = None  # planned length of the schedule (None until known)
    warmup_steps: int = 0
    plans_made: int = 0  # with a time budget: how many of the planner's two plans are made
    train_seconds: float = 0.0  # wall clock spent training (evaluation excluded)
    images_seen: int = 0  # over all processes
    finished: bool = False
    history: list = field(default_factory=list)  # evaluation records


def rng_state() -> dict:
    """Every random generator's state as tensors and plain values, so that a checkpoint loads with
    ``torch.load(weights_only=True)`` (numpy's state is a tuple holding an array; Python's a tuple)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)  # a tuple: a checkpoint of the first format
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    cfg: Config,
    method: Method,
    optimizer,
    scaler,
    state: TrainState,
    num_data: Optional[int] = None,
    labels: Optional[torch.Tensor] = None,
) -> None:
    """Write atomically: a temporary file, then a rename, so a crash never leaves half a checkpoint."""
    payload = {
        "format": "sslbook-checkpoint-1",
        "config": to_dict(cfg),
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": state.__dict__,
        "rng": rng_state(),
        "num_data": num_data,
        "labels": labels,  # the training labels, for a method whose data_needs include them
    }
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _legacy_numpy_globals() -> list:
    """What the numpy RNG state of older checkpoints needs to load with ``weights_only=True``: numpy's
    array reconstructor and dtypes, which build arrays and run no other code (torch's documented allowlist)."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint onto the CPU, with a one-line error when it is missing, damaged or unsafe.

    Only tensors and plain values are unpickled (``weights_only=True``): a file that holds anything
    else (an object whose unpickling would run code) is refused before anything in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or train first")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe is None:
            raise _unreadable(path, e) from None
        raise CheckpointError(
            f"checkpoint {path} holds {unsafe.group(1)}, not only "
            "tensors and plain values; refused, because loading it could run code. Load only "
            "checkpoints written by `python -m sslbook train`"
        ) from None
    except Exception as e:
        raise _unreadable(path, e) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "sslbook-checkpoint-1":
        raise CheckpointError(
            f"{path} is not an sslbook checkpoint; point resume at a checkpoint.pt written by `python -m sslbook train`"
        )
    return ckpt


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    text = str(error).split("WeightsUnpickler error:")[-1]  # torch's own reason, without its advice
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")[:120]
    return CheckpointError(
        f"checkpoint {path} is unreadable ({type(error).__name__}: {first_line}); it is "
        "damaged or not an sslbook checkpoint: delete it, or set resume=never with another out_dir"
    )


NETWORK_KEYS = ("method", "method_args", "model")  # what shapes the network a checkpoint holds
INIT_ONLY = ("model.zero_init_residual",)


def _flatten(d, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_network(saved: dict, cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint into a differently shaped network, naming every key that differs."""
    saved, now = to_dict(from_dict(saved)), to_dict(cfg)  # from_dict: keys added since then get their defaults
    before = _flatten({k: saved[k] for k in NETWORK_KEYS})
    after = _flatten({k: now[k] for k in NETWORK_KEYS})
    for key in INIT_ONLY:  # the checkpoint's weights replace the initialisation
        before.pop(key, None), after.pop(key, None)
    differ = [
        f"{k}={before.get(k, '(unset)')} there, {after.get(k, '(unset)')} here"
        for k in sorted(set(before) | set(after))
        if before.get(k, "(unset)") != after.get(k, "(unset)")
    ]
    if differ:
        raise CheckpointError(
            f"{path} holds a different network ({'; '.join(differ)}); resume with the same "
            "settings, or use another out_dir, or resume=never overwrite=true"
        )


def method_from_checkpoint(path: str | Path, device="cpu") -> tuple[Method, Config]:
    """Rebuild the trained method (and its config) from a checkpoint, for evaluation."""
    ckpt = read_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    method = build_model(cfg, num_data=ckpt.get("num_data"), labels=ckpt.get("labels"))
    load_weights(method, ckpt["method"], path)
    return method.to(device).eval(), cfg


def load_weights(method: Method, state_dict: dict, path) -> None:
    """``method.load_state_dict``, with a one-line CheckpointError when the shapes or names do not fit."""
    try:
        method.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} does not fit the network its config builds ({detail})") from None


DATA_NEEDS = ("num_data", "labels", "mean", "std")  # what a method may declare in Method.data_needs


def build_model(
    cfg: Config, num_data: Optional[int] = None, mean=None, std=None, labels: Optional[torch.Tensor] = None
) -> Method:
    """The config's encoder wrapped in its method, given what the method declares it needs from the
    training data (``Method.data_needs``): ``num_data`` (a memory bank's size), ``labels`` (the training
    labels), ``mean`` and ``std`` (the normalisation the augmentation applies, for methods that need the
    pixel values back; optional, the method's defaults otherwise).

    A method that needs ``labels`` but is built without them gets ``num_data`` instead (to be filled by
    ``load_state_dict``; checkpoints before the labels were stored in them).
    """
    m = cfg.model
    kwargs = (
        {"width": m.width, "stem": m.stem, "zero_init_residual": m.zero_init_residual}
        if m.encoder.startswith("resnet")
        else {}
    )
    if m.stem_kernel is not None:  # a larger first-layer kernel (e.g. 7 on CIFAR, to look at its filters)
        kwargs["stem_kernel"] = m.stem_kernel
    data = {
        "num_data": num_data,
        "labels": labels,
        "mean": None if mean is None else tuple(float(v) for v in mean),
        "std": None if std is None else tuple(float(v) for v in std),
    }
    needs = getattr(METHODS.get(cfg.method), "data_needs", ())
    unknown = [need for need in needs if need not in DATA_NEEDS]
    if unknown:
        raise ConfigError(f"{cfg.method}: unknown data_needs {unknown}; a method may need {', '.join(DATA_NEEDS)}")
    method_args = dict(cfg.method_args)
    for need in needs:
        if data[need] is not None:
            method_args.setdefault(need, data[need])
        elif need == "labels" and num_data is not None:
            method_args.setdefault("num_data", num_data)
        elif need in ("num_data", "labels") and need not in method_args:
            raise ConfigError(f"{cfg.method} needs {need} from the training data; pass build_model(cfg, {need}=...)")
    encoder = build_encoder(m.encoder, **kwargs)
    try:
        return build_method(cfg.method, encoder, **method_args)
    except (TypeError, ValueError) as e:  # a method_args value the constructor refuses
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{cfg.method} with method_args {cfg.method_args}: {e}") from None


def dataset_labels(dataset) -> torch.Tensor:
    """The class of every image of a dataset (in-memory or ImageFolder), as an int64 tensor."""
    labels = dataset.labels if hasattr(dataset, "labels") else dataset.targets
    return torch.as_tensor(labels, dtype=torch.long)


# --------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    out_dir: Path
    method: Method
    config: Config
    results: dict
    history: list
    metrics_path: Path

    def log(self) -> list[dict]:
        """Every record of the run's metrics log."""
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]


def record_step(record: dict) -> Optional[int]:
    """The optimiser step a metrics record belongs to (a step record, an evaluation, a plan, the final results)."""
    if "step" in record:
        return record["step"]
    inner = record.get("eval") or record.get("final") or record.get("plan") or {}
    return inner.get("step", inner.get("steps"))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records after ``step`` (logged after the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if (record_step(json.loads(line)) or 0) <= step]
    if len(keep) < len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)


def reset_peak_memory(device) -> None:
    """Restart the peak-memory count, so a run reports its own peak, not the whole process's.

    On the CPU the peak is the process's resident-set high-water mark, which Linux resets through
    /proc/self/clear_refs; elsewhere the count keeps earlier runs' peaks (an upper bound).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device) -> float:
    """The peak memory since :func:`reset_peak_memory`: allocated on a GPU, resident on the CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # VmHWM: the high-water mark since the last reset_peak_memory (Linux)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return kb / 1024


def autocast(cfg: Config, device):
    """The config's mixed precision (``precision``: fp32 = off, bf16, fp16) as an autocast context."""
    if cfg.precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- the pieces of a run
@dataclass
class Run:
    """What a training run works with, built once by :func:`prepare_run`."""

    cfg: Config
    device: torch.device
    out_dir: Path
    train_set: Any
    test_set: Any
    loader: Any  # InMemoryLoader or FolderLoader: .epoch(epoch, start) yields (images, labels, index)
    augment: Augment
    method: Method  # the module whose weights are saved and evaluated
    model: nn.Module  # what a step calls: the method, wrapped in DDP and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    peak_lr: float
    labels: Optional[torch.Tensor] = None  # the training labels, for a method whose data_needs include them
    mean: tuple = ()  # the normalisation of the views
    std: tuple = ()
    full_side: int = 0  # the side of the training views (data.crop_size), and of evaluation
    view_side: int = 0  # the side of the training views now (data.crop_schedule changes it)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def set_view_side(self, side: int) -> None:
        """Make the training views ``side`` pixels wide (progressive resizing): a new augmentation."""
        if side != self.view_side:
            self.augment, self.view_side = build_augment(self.cfg, self.mean, self.std, side), side


def scheduled_side(cfg: Config, state: TrainState, steps_per_epoch: int, full: int) -> int:
    """The side of the next step's views. A run with an epoch budget changes side at epoch starts (a
    whole epoch at one size); a run with a time budget, which may last only an epoch or two, changes
    it at the step where the schedule's fraction is reached."""
    step = state.step if cfg.max_minutes is not None else state.epoch * steps_per_epoch
    return view_side(cfg.data.crop_schedule, step / state.total_steps, full)


def view_side(schedule: Optional[list], fraction: float, full: int) -> int:
    """The side of the training views at ``fraction`` of the training steps, by ``data.crop_schedule``
    (the last entry whose fraction has been reached); without a schedule, ``full``."""
    side = full
    for start, entry_side in schedule or ():
        if fraction >= start:
            side = int(entry_side)
    return side


def prepare_run(cfg: Config, method: Optional[Method] = None, datasets: Optional[tuple] = None) -> Run:
    """Join DDP if launched by torchrun, seed, load the data, and build the method and its optimiser."""
    device = dist.init_from_env()
    world = dist.world_size()
    reset_peak_memory(device)
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    if cfg.sync_bn and world > 1 and device.type == "cpu":
        raise ConfigError("sync_bn=true needs GPUs (torch's SyncBatchNorm does not run on the CPU); set sync_bn=false")
    torch.manual_seed(cfg.seed + dist.rank())
    np.random.seed(cfg.seed + dist.rank())
    random.seed(cfg.seed + dist.rank())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    out_dir = Path(cfg.out_dir or f"runs/{cfg.method}-{cfg.data.dataset}-{cfg.profile}")
    train_set, test_set = datasets if datasets is not None else load_datasets(cfg)
    if cfg.batch_size > len(train_set):
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the {len(train_set)} training images; lower "
            "batch_size or use more images (data.train_images)"
        )
    mean, std, crop = dataset_stats(train_set, cfg.data.crop_size)  # crop: side of the training views
    loader = make_loader(train_set, cfg, device, cfg.batch_size // world)
    augment = build_augment(cfg, mean, std, crop)

    needs = getattr(method if method is not None else METHODS.get(cfg.method), "data_needs", ())
    labels = dataset_labels(train_set) if "labels" in needs else None  # kept in checkpoints, for rebuilding
    if method is None:
        method = build_model(cfg, num_data=len(train_set), mean=mean, std=std, labels=labels)
    method = method.to(device)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    model = (
        nn.parallel.DistributedDataParallel(method, device_ids=[device] if device.type == "cuda" else None)
        if world > 1
        else method
    )
    return Run(
        cfg,
        device,
        out_dir,
        train_set,
        test_set,
        loader,
        augment,
        method,
        model=torch.compile(model) if cfg.compile else model,
        optimizer=build_optimizer(method, cfg.optim, cfg.batch_size),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
        peak_lr=peak_lr(cfg.optim, cfg.batch_size),
        labels=labels,
        mean=mean,
        std=std,
        full_side=crop,
        view_side=crop,
    )


def train_step(run: Run, images: torch.Tensor, index: torch.Tensor, epoch: int, progress: float) -> dict:
    """One step of self-supervised training on a batch of images; returns the method's outputs.

    ``progress`` (in [0, 1], after this step) drives the method's own updates, such as a momentum
    encoder's; the learning rate was set by the caller.
    """
    with torch.no_grad():
        views = run.augment(images)  # two (or more) random views of every image, made on the device
        if run.cfg.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with autocast(run.cfg, run.device):
        out = run.model(views, index)  # the method: encoders, heads, and the loss
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(out["loss"]).backward()  # the scaler multiplies by 1 unless precision=fp16
    run.method.before_optimizer_step(epoch)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.method.after_optimizer_step(progress)  # e.g. the momentum encoder follows the online one
    return out


class SchedulePlanner:
    """How many steps the learning-rate schedule spans, and whether the time budget is spent.

    Without a time budget: ``epochs`` x steps per epoch. With one (``max_minutes``), the schedule
    is fixed at as many steps as fit the budget (capped at ``epochs``), so the cosine ends when the
    time does. The plan is made twice. Steps ``CALIBRATION_STEPS`` give a first one, but a run's
    first steps are often slower than the rest (memory is allocated, kernels are chosen, the loader
    fills up), so a plan from them alone ends the run early. The steps from there to a tenth of that
    plan (``REPLAN_FRACTION``) are timed again and the plan is made again from them, once, while
    the learning rate is still at its peak; the warm-up keeps its first length. A run resumed before
    both plans were made times its next steps (after the slow ones that follow a restart) and plans then.
    """

    def __init__(self, cfg: Config, state: TrainState, steps_per_epoch: int, peak: float, device):
        self.cfg, self.state, self.steps_per_epoch, self.peak, self.device = cfg, state, steps_per_epoch, peak, device
        self.budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        self.window = None  # (first step, last step) of the steps being timed for the next plan
        self.window_start = None  # training seconds at the window's first step
        self.side_costs = None  # seconds per step at each side of a progressive-resizing run, timed once
        self.record = None  # the last plan, for the log
        if state.total_steps is None:  # a fresh run: all the epochs, until timed steps tell otherwise
            self.plan(cfg.epochs * steps_per_epoch)
        if self.budget is not None:
            self.window = self.first_window()

    def plan(self, total: int, warmup_steps: Optional[int] = None) -> None:
        self.state.total_steps = max(1, total)
        # A short run cannot afford a long warm-up: cap it at a tenth of the run.
        self.state.warmup_steps = (
            int(min(self.cfg.optim.warmup_epochs * self.steps_per_epoch, 0.1 * self.state.total_steps))
            if warmup_steps is None
            else warmup_steps
        )

    def lr(self) -> float:
        """The learning rate of the next step (the schedule is a pure function of the step)."""
        state, optim = self.state, self.cfg.optim
        return lr_at(state.step, state.total_steps, state.warmup_steps, self.peak, optim.schedule, optim.min_lr)

    def after_step(self, time_sides=None) -> bool:
        """Time the planning windows; True when the schedule's length has just been fixed.

        With progressive resizing the timed steps run at the first side only, so ``time_sides`` (a
        function returning seconds per step at each side of the schedule) tells what the later,
        larger views will cost."""
        state = self.state
        if self.window is None or state.step not in self.window:
            return False
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        first, last = self.window
        if state.step == first:
            self.window_start = state.train_seconds
            return False
        per_step = (state.train_seconds - self.window_start) / (last - first)
        if self.side_costs is None and self.cfg.data.crop_schedule:
            self.side_costs = time_sides() if time_sides else {}
        first_plan = state.plans_made == 0
        fit = torch.tensor(self.steps_in_budget(per_step))
        if dist.world_size() > 1:
            torch.distributed.broadcast(fit, 0)  # every process follows rank 0's plan
        self.plan(int(fit), warmup_steps=None if first_plan else state.warmup_steps)
        state.plans_made += 1
        self.record = {"step": state.step, "total_steps": state.total_steps, "seconds_per_step": per_step}
        if self.side_costs:
            self.record["seconds_per_step_at_side"] = self.side_costs
        self.window = self.replan_window(state.step) if first_plan else None
        self.window_start = state.train_seconds  # the second window starts at this step
        return True

    def steps_in_budget(self, per_step: float) -> int:
        """The schedule's length when the steps from now cost ``per_step`` seconds each (at the first side)."""
        state, cfg = self.state, self.cfg
        most = cfg.epochs * self.steps_per_epoch
        seconds_left = self.budget - state.train_seconds
        if not cfg.data.crop_schedule:
            return min(most, state.step + int(seconds_left / per_step))
        costs = scaled_costs(per_step, self.side_costs, cfg)
        return steps_that_fit(cfg.data.crop_schedule, state.step, seconds_left, costs, most)

    def first_window(self) -> Optional[tuple]:
        """The steps to time first: ``CALIBRATION_STEPS`` counted from the step the run starts at (0, or
        the step it resumes from), for the plans not made yet; None when there is nothing left to plan."""
        state, (skip, last) = self.state, CALIBRATION_STEPS
        if state.plans_made == 0:
            return (state.step + skip, state.step + last) if state.total_steps > state.step + last else None
        if state.plans_made == 1:
            return self.replan_window(state.step + skip)
        return None

    def replan_window(self, first: int) -> Optional[tuple]:
        """The steps timed for the second plan: from ``first`` to a tenth of the first plan, all at the first
        side of a progressive-resizing schedule; None when that leaves fewer than ``REPLAN_MIN_STEPS``."""
        end = int(REPLAN_FRACTION * self.state.total_steps)
        schedule = self.cfg.data.crop_schedule
        if schedule and len(schedule) > 1:
            end = min(end, math.ceil(schedule[1][0] * self.state.total_steps) - 1)
        return (first, end) if end - first >= REPLAN_MIN_STEPS else None

    def over_budget(self) -> bool:
        """Whether the time budget is spent: the DDP stop vote (see :func:`stop_vote`)."""
        if self.budget is None:
            return False
        return stop_vote(self.state.train_seconds >= self.budget, self.state.step, self.cfg.log_every, self.device)


def scaled_costs(per_step: float, measured: dict, cfg: Config) -> dict:
    """Seconds per step at every side of ``cfg.data.crop_schedule``: ``per_step`` (timed at the first
    side) scaled by the ``measured`` ratios between sides, or by the views' pixel count when a side was
    not measured (the convolutions' cost grows with it; small views run a little slower than that)."""
    first = int(cfg.data.crop_schedule[0][1])
    costs = {}
    for _, side in cfg.data.crop_schedule:
        side = int(side)
        if first in measured and side in measured:
            costs[side] = per_step * measured[side] / measured[first]
        else:
            costs[side] = per_step * (side / first) ** 2
    return costs


def steps_that_fit(schedule: list, done: int, seconds_left: float, costs: dict, most: int) -> int:
    """The largest schedule length T (at most ``most``) whose steps after ``done`` fit in ``seconds_left``,
    when step t runs at the side ``schedule`` gives for t / T and costs ``costs[side]`` seconds."""

    def seconds(total: int) -> float:
        edges = [min(max(round(f * total), done), total) for f, _ in schedule] + [total]
        return sum((edges[i + 1] - edges[i]) * costs[int(side)] for i, (_, side) in enumerate(schedule))

    low, high = done, most  # seconds() grows with T: bisect
    if seconds(high) <= seconds_left:
        return high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if seconds(middle) <= seconds_left else (low, middle)
    return low


def time_sides(run: Run, images: torch.Tensor, index: torch.Tensor, steps: int = 3, warmup: int = 2) -> dict:
    """Seconds per training step at every side of ``data.crop_schedule``, timed on a throw-away copy of
    the method with a throw-away optimiser and a private RNG, so the run itself is unchanged. Empty under
    DDP (collectives on a copy are not safe) or if the method cannot be copied; the planner then scales
    by pixel count.

    Each side takes ``warmup`` untimed steps, then the fastest of ``steps`` timed ones: the first steps
    at a new size pay for fresh memory and kernel choices, and a single slow one had made the 32 px
    steps of SimCLR's 2-minute run look over 40% dearer than they were, so the run ended at 1.4 minutes.
    The timing is not training time, so it costs the budget nothing."""
    if dist.world_size() > 1:
        return {}
    try:
        method = copy.deepcopy(run.method)
    except Exception:  # noqa: BLE001 (e.g. a compiled or hooked module): fall back to pixel counts
        return {}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0, momentum=0.9)
    costs = {}
    with fork_rng(run.device):
        for side in sorted({int(side) for _, side in run.cfg.data.crop_schedule}):
            probe = dataclasses.replace(
                run,
                method=method,
                model=method,
                optimizer=optimizer,
                scaler=torch.amp.GradScaler(enabled=False),
                augment=build_augment(run.cfg, run.mean, run.std, side),
            )
            times = []
            for _ in range(warmup + steps):
                start = time.perf_counter()
                train_step(probe, images, index, epoch=0, progress=0.0)
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            costs[side] = min(times[warmup:])
    return costs


def reached_max_steps(cfg: Config, state: TrainState) -> bool:
    """``max_steps`` interrupts a run without changing its schedule (as a crash would); it can be resumed."""
    return cfg.max_steps is not None and state.step >= cfg.max_steps


def stop_vote(spent: bool, step: int, log_every: int, device) -> bool:
    """Stop on a time budget, all processes at the same step.

    Each process reads its own clock, but if one stopped alone the others would wait in a collective
    for ever: under DDP the processes decide together (any one out of time stops all), at logging points.
    """
    if dist.world_size() == 1:
        return spent
    return step % log_every == 0 and dist.any_process(spent, device)


class MetricsLogger:
    """The run's ``metrics.jsonl`` (one JSON record a line, written by rank 0), the mean loss between
    logging points (the only host sync of the loop), and the progress bar."""

    def __init__(self, run: Run, state: TrainState, resumed: bool):
        self.cfg, self.state, self.steps_per_epoch = run.cfg, state, run.steps_per_epoch
        self.path = run.out_dir / "metrics.jsonl"
        if dist.is_main():
            run.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(run.cfg, run.out_dir / "config.yaml")
            if resumed:
                truncate_metrics(self.path, state.step)  # records after the checkpoint are logged again
            else:
                self.path.write_text("")
        self.running_loss, self.count = torch.zeros((), device=run.device), 0
        self.last_time, self.last_images = time.perf_counter(), state.images_seen
        self.progress = None
        if run.cfg.progress and dist.is_main():
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=state.total_steps, initial=state.step, desc=run.cfg.method, dynamic_ncols=True, file=sys.stdout
            )

    def write(self, record: dict) -> None:
        if dist.is_main():
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def add(self, loss: torch.Tensor) -> None:
        self.running_loss += loss.detach().float()
        self.count += 1

    def log_step(self, lr: float, out: dict) -> None:
        """One record: the mean loss over the processes and the steps since the last one, and the rest."""
        state = self.state
        mean_loss = (dist.mean_over_processes(self.running_loss) / self.count).item()  # the host sync
        images_per_s = (state.images_seen - self.last_images) / max(1e-9, time.perf_counter() - self.last_time)
        record = {
            "step": state.step,
            "epoch": state.epoch + state.batch / self.steps_per_epoch,
            "loss": mean_loss,
            "lr": lr,
            "images_per_s": images_per_s,
            "train_minutes": state.train_seconds / 60,
        }
        if "z" in out:
            record["output_std"] = output_std(out["z"].float())
        record.update({k: float(v) for k, v in out.items() if k not in ("loss", "z")})
        self.write(record)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}")
        self.running_loss.zero_()
        self.count = 0
        self.last_time, self.last_images = time.perf_counter(), state.images_seen

    def step_done(self, total_steps_changed: bool = False) -> None:
        if self.progress is not None:
            if total_steps_changed:
                self.progress.total = self.state.total_steps
                self.progress.refresh()
            self.progress.update(1)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def resume_point(cfg: Config, checkpoint_path: Path) -> Optional[Path]:
    """The checkpoint to continue from (None: a fresh run); refuses to overwrite finished work."""
    if cfg.resume == "auto":
        return checkpoint_path if checkpoint_path.exists() else None
    if cfg.resume != "never":
        return Path(cfg.resume)
    if checkpoint_path.exists() and not cfg.overwrite:
        raise CheckpointError(
            f"{checkpoint_path.parent} already holds a run; set resume=auto to continue it, "
            "overwrite=true to replace it, or out_dir=<another folder>"
        )
    return None


def restore(run: Run, path: Path) -> TrainState:
    """Load a checkpoint of the same network into the run: weights, optimiser, scaler, RNGs, counters."""
    ckpt = read_checkpoint(path)
    check_same_network(ckpt["config"], run.cfg, path)
    load_weights(run.method, ckpt["method"], path)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state = TrainState(**{"plans_made": 2, **ckpt["state"]})  # checkpoints older than plans_made kept their plan
    if dist.world_size() > 1:  # a checkpoint of one process may resume on several: re-seed per rank
        torch.manual_seed(run.cfg.seed + 1000 * state.step + dist.rank())
    return state


class Checkpointer:
    """Writes the run's checkpoint (rank 0), only after the divergence guard has found everything finite."""

    def __init__(self, run: Run, guard: DivergenceGuard):
        self.run, self.guard = run, guard
        self.last = time.perf_counter()

    def save(self, state: TrainState) -> None:
        run = self.run
        self.guard.check(run.method, state.step)
        if dist.is_main():
            save_checkpoint(
                run.checkpoint_path,
                run.cfg,
                run.method,
                run.optimizer,
                run.scaler,
                state,
                num_data=len(run.train_set),
                labels=run.labels,
            )
        self.guard.saved_step = state.step
        self.last = time.perf_counter()

    def due(self) -> bool:
        """Whether ``checkpoint_minutes`` have passed since the last checkpoint (checked at logging points)."""
        return time.perf_counter() - self.last > self.run.cfg.checkpoint_minutes * 60


def evaluate(run: Run, state: TrainState, guard: DivergenceGuard, final: bool = False) -> dict:
    """The kNN monitor (k = knn_k), or at the end k = 200 and 20; the method is left in eval mode."""
    guard.check(run.method, state.step)
    record = {"epoch": state.epoch, "step": state.step, "train_minutes": state.train_seconds / 60}
    if run.test_set is not None and (run.cfg.final_eval or not final):
        ks = (200, 20) if final else (run.cfg.knn_k,)
        record.update(knn_eval(run.method, run.train_set, run.test_set, run.cfg, run.device, ks))
    return record


def run_results(run: Run, state: TrainState, final: dict) -> dict:
    cfg = run.cfg
    return {
        "method": cfg.method,
        "profile": cfg.profile,
        "dataset": cfg.data.dataset,
        "encoder": f"{cfg.model.encoder}-w{cfg.model.width}-{cfg.model.stem}",
        "epochs": state.epoch + state.batch / run.steps_per_epoch,
        "steps": state.step,
        "batch_size": cfg.batch_size,
        "train_minutes": state.train_seconds / 60,
        "images_per_s": state.images_seen / max(1e-9, state.train_seconds),
        "peak_memory_mb": peak_memory_mb(run.device),
        "device": run.device.type,
        "world_size": dist.world_size(),
        "train_images": len(run.train_set),
        **{k: v for k, v in final.items() if k.startswith("knn")},
    }


# --------------------------------------------------------------------------- the training loop
def train(cfg: Config, method: Optional[Method] = None, datasets: Optional[tuple] = None) -> RunResult:
    """Pre-train ``cfg.method`` (or the given ``method``) and return its result.

    ``datasets`` = (train, test) replaces the config's dataset (the notebooks pass subsets).
    """
    run = prepare_run(cfg, method, datasets)
    resume_from = resume_point(cfg, run.checkpoint_path)
    state = restore(run, resume_from) if resume_from is not None else TrainState()
    schedule = SchedulePlanner(cfg, state, run.steps_per_epoch, run.peak_lr, run.device)
    log = MetricsLogger(run, state, resumed=resume_from is not None)
    guard = DivergenceGuard(run.device, run.checkpoint_path, state.step if resume_from is not None else None)
    checkpoint = Checkpointer(run, guard)

    stop = state.finished or reached_max_steps(cfg, state)
    run.method.train()
    while not stop and state.epoch < cfg.epochs:
        tick = time.perf_counter()
        for images, _, index in run.loader.epoch(state.epoch, start=state.batch):
            if cfg.data.crop_schedule:  # progressive resizing
                run.set_view_side(scheduled_side(cfg, state, run.steps_per_epoch, run.full_side))
            lr = schedule.lr()  # warm-up, then cosine decay
            set_lr(run.optimizer, lr, run.peak_lr)
            out = train_step(run, images, index, state.epoch, progress=(state.step + 1) / state.total_steps)
            guard.observe(out["loss"], state.step + 1)
            state.step, state.batch = state.step + 1, state.batch + 1
            state.images_seen += len(images) * dist.world_size()
            log.add(out["loss"])
            now = time.perf_counter()
            state.train_seconds, tick = state.train_seconds + now - tick, now
            replanned = schedule.after_step(lambda: time_sides(run, images, index))  # time budgets: plan
            if replanned:
                log.write({"plan": schedule.record})
                tick = time.perf_counter()  # planning is not training time

            finished = state.step >= state.total_steps or schedule.over_budget()
            done = finished or reached_max_steps(cfg, state)
            if state.step % cfg.log_every == 0 or done:
                guard.check()
                log.log_step(lr, out)
                if checkpoint.due():
                    checkpoint.save(state)
            log.step_done(replanned)
            if done:
                stop, state.finished = True, finished
                break
        if not stop or state.batch >= run.steps_per_epoch:  # the epoch ran to its end
            state.epoch, state.batch = state.epoch + 1, 0
            if cfg.eval_every and state.epoch % cfg.eval_every == 0 and not stop:
                record = evaluate(run, state, guard)
                state.history.append(record)
                log.write({"eval": record})
                run.method.train()
                if cfg.verbose and dist.is_main():
                    _print_eval(record, cfg)
            checkpoint.save(state)
    log.close()

    state.finished = state.finished or not stop  # all epochs ran
    checkpoint.save(state)  # before the final evaluation, so a resumed run continues from exactly here
    final = evaluate(run, state, guard, final=True)
    state.history.append(final)
    results = run_results(run, state, final)
    log.write({"final": results})
    if dist.is_main():
        (run.out_dir / "results.json").write_text(json.dumps(results, indent=2))
        if cfg.verbose:
            _print_eval(final, cfg, final=True)
    return RunResult(run.out_dir, run.method, cfg, results, state.history, log.path)


def _print_eval(record: dict, cfg: Config, final: bool = False) -> None:
    knn = " ".join(f"{k.replace('_top1', '')} {v:.2f}%" for k, v in record.items() if k.startswith("knn"))
    label = "final" if final else f"epoch {record['epoch']}"
    print(
        f"[{cfg.method}] {label}: step {record['step']}, {record['train_minutes']:.1f} min training, {knn}", flush=True
    )

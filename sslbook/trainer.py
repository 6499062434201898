"""One trainer for every method.

    result = train(load_config("configs/cifar10/simclr.yaml"))

A method (:mod:`sslbook.methods`) only turns views into a loss. Everything else lives here, once:
data and on-device augmentation, the optimiser and its warm-up + cosine schedule, mixed precision,
``channels_last``, ``torch.compile``, DDP under ``torchrun``, a JSON-lines metrics log, the kNN
monitor, and checkpoints that resume exactly (mid-epoch included).

Host syncs: the loop never calls ``.item()`` on a step's results except every ``log_every`` steps,
so a GPU is never made to wait on the Python side between logging points.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import distributed as dist
from .augment import Augment, ViewSpec, recipe
from .config import Config, ConfigError, from_dict, save_config, to_dict
from .data import (IMAGENET_MEAN, IMAGENET_STD, FolderLoader, ImageTensorDataset, InMemoryLoader,
                   load_cifar, load_image_folder, load_stl10)
from .eval import extract_features, knn_accuracy
from .losses import output_std
from .methods import METHODS, Method, build_method
from .models import build_encoder
from .optim import build_optimizer, lr_at, peak_lr

CHECKPOINT = "checkpoint.pt"
CALIBRATION_STEPS = (3, 13)  # with a time budget: time steps 3..13 to plan the schedule's length


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


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
        train = load_image_folder(root / "train", d.load_size)
        test = load_image_folder(root / "val", d.load_size) if (root / "val").is_dir() else None
        return train, test
    else:
        raise ConfigError(f"unknown data.dataset {d.dataset!r}")
    return train.subset(d.train_images, seed=cfg.seed), test.subset(d.test_images, seed=cfg.seed)


def dataset_stats(dataset, crop_size: Optional[int] = None) -> tuple[tuple, tuple, int]:
    """(mean, std, evaluation image side) of a dataset; ImageFolder trees use ImageNet's statistics."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.mean, dataset.std, crop_size or dataset.images.shape[-1]
    return IMAGENET_MEAN, IMAGENET_STD, crop_size or 224


def make_loader(dataset, cfg: Config, device, batch_size: int, shuffle: bool = True, drop_last: bool = True):
    args = dict(batch_size=batch_size, device=device, seed=cfg.seed, rank=dist.rank(),
                world_size=dist.world_size(), shuffle=shuffle, drop_last=drop_last)
    if isinstance(dataset, ImageTensorDataset):
        return InMemoryLoader(dataset, images_on_device=cfg.data.on_device and torch.device(device).type == "cuda",
                              **args)
    return FolderLoader(dataset, num_workers=cfg.data.num_workers, **args)


def build_augment(cfg: Config, mean, std, size: int) -> Augment:
    if isinstance(cfg.augment, str):
        return Augment(recipe(cfg.augment, size=size, mean=mean, std=std))
    try:
        return Augment([ViewSpec(**{"mean": mean, "std": std, **view}) for view in cfg.augment])
    except TypeError as e:
        raise ConfigError(f"config key 'augment': {e}; see sslbook.augment.ViewSpec for the view keys") from None


# --------------------------------------------------------------------------- evaluation inside training
@torch.no_grad()
def features_of(method: Method, dataset, mean, std, size: int, device, batch_size: int = 512,
                num_workers: int = 2) -> tuple:
    """The evaluated features (``method.embed``: the backbone's, unless the method says otherwise) and labels
    of a whole dataset (no augmentation), for kNN."""
    if isinstance(dataset, ImageTensorDataset):
        images = dataset.images
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear",
                                                     antialias=True).round().clamp(0, 255).to(torch.uint8)
        return extract_features(method.embed, images, mean, std, batch_size, device), dataset.labels
    feats, labels = [], []
    loader = FolderLoader(dataset, batch_size, device, shuffle=False, drop_last=False, num_workers=num_workers)
    for images, y, _ in loader.epoch(0):
        if images.shape[-1] > size:  # the standard evaluation view: resize to load_size, centre crop
            offset = (images.shape[-1] - size) // 2
            images = images[..., offset:offset + size, offset:offset + size]
        feats.append(extract_features(method.embed, images, mean, std, batch_size, device))
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def knn_eval(method: Method, train_set, test_set, cfg: Config, device, ks=(200,)) -> dict:
    mean, std, size = dataset_stats(train_set, cfg.data.crop_size)
    train_x, train_y = features_of(method, train_set, mean, std, size, device, num_workers=cfg.data.num_workers)
    test_x, test_y = features_of(method, test_set, mean, std, size, device, num_workers=cfg.data.num_workers)
    return {f"knn{k}_top1": knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=cfg.knn_temperature)
            for k in ks}


# --------------------------------------------------------------------------- state and checkpoints
@dataclass
class TrainState:
    epoch: int = 0  # current epoch
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimiser steps taken
    total_steps: Optional[int] = None  # planned length of the schedule (None until known)
    warmup_steps: int = 0
    train_seconds: float = 0.0  # wall clock spent training (evaluation excluded)
    images_seen: int = 0  # over all processes
    finished: bool = False
    history: list = field(default_factory=list)  # evaluation records


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, cfg: Config, method: Method, optimizer, scaler, state: TrainState,
                    num_data: Optional[int] = None) -> None:
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
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint onto the CPU, with a one-line error when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or train first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); "
                              "it is damaged or not an sslbook checkpoint: delete it, or set resume=never "
                              "with another out_dir") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "sslbook-checkpoint-1":
        raise CheckpointError(f"{path} is not an sslbook checkpoint; point resume at a checkpoint.pt "
                              "written by `python -m sslbook train`")
    return ckpt


def method_from_checkpoint(path: str | Path, device="cpu") -> tuple[Method, Config]:
    """Rebuild the trained method (and its config) from a checkpoint, for evaluation."""
    ckpt = read_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    method = build_model(cfg, num_data=ckpt.get("num_data"))
    method.load_state_dict(ckpt["method"])
    return method.to(device).eval(), cfg


def build_model(cfg: Config, num_data: Optional[int] = None, mean=None, std=None) -> Method:
    """The config's encoder wrapped in its method.

    Methods with a memory bank also get ``num_data``; methods that need the views' pixel values back
    (colour pretext tasks) take ``mean`` and ``std``, the normalisation the augmentation applied.
    """
    m = cfg.model
    kwargs = {"width": m.width, "stem": m.stem} if m.encoder.startswith("resnet") else {}
    if m.stem_kernel is not None:  # a larger first-layer kernel (e.g. 7 on CIFAR, to look at its filters)
        kwargs["stem_kernel"] = m.stem_kernel
    method_args = dict(cfg.method_args)
    cls = METHODS.get(cfg.method)
    takes = inspect.signature(cls.__init__).parameters if cls is not None else {}
    if "num_data" in takes:
        method_args.setdefault("num_data", num_data)
    for key, value in (("mean", mean), ("std", std)):
        if key in takes and value is not None:
            method_args.setdefault(key, tuple(float(v) for v in value))
    return build_method(cfg.method, build_encoder(m.encoder, **kwargs), **method_args)


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


def _peak_memory_mb(device) -> float:
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


def _autocast(cfg: Config, device):
    if cfg.precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(cfg: Config, method: Optional[Method] = None, datasets: Optional[tuple] = None) -> RunResult:
    """Pre-train ``cfg.method`` (or the given ``method``) and return its result.

    ``datasets`` = (train, test) replaces the config's dataset (the notebooks pass subsets).
    """
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
    ckpt_path = out_dir / CHECKPOINT
    train_set, test_set = datasets if datasets is not None else load_datasets(cfg)
    mean, std, crop = dataset_stats(train_set, cfg.data.crop_size)  # crop: side of the training views
    loader = make_loader(train_set, cfg, device, cfg.batch_size // world)
    augment = build_augment(cfg, mean, std, crop)

    method = method if method is not None else build_model(cfg, num_data=len(train_set), mean=mean, std=std)
    method = method.to(device)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    model = nn.parallel.DistributedDataParallel(method, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else method
    forward = torch.compile(model) if cfg.compile else model
    optimizer = build_optimizer(method, cfg.optim, cfg.batch_size)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    peak = peak_lr(cfg.optim, cfg.batch_size)
    steps_per_epoch = len(loader)
    state = TrainState()

    # ---- resume, or refuse to overwrite finished work
    resume_from = None
    if cfg.resume == "auto" and ckpt_path.exists():
        resume_from = ckpt_path
    elif cfg.resume not in ("auto", "never"):
        resume_from = Path(cfg.resume)
    elif cfg.resume == "never" and ckpt_path.exists() and not cfg.overwrite:
        raise CheckpointError(f"{out_dir} already holds a run; set resume=auto to continue it, overwrite=true to "
                              "replace it, or out_dir=<another folder>")
    if resume_from is not None:
        ckpt = read_checkpoint(resume_from)
        old = ckpt["config"]
        for key in ("method", "model"):
            if old[key] != to_dict(cfg)[key]:
                raise CheckpointError(f"{resume_from} was trained with {key}={old[key]}, this run asks for "
                                      f"{to_dict(cfg)[key]}; use another out_dir or resume=never overwrite=true")
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        if dist.world_size() > 1:  # a checkpoint of one process may resume on several: re-seed per rank
            torch.manual_seed(cfg.seed + 1000 * state.step + dist.rank())

    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    metrics_path = out_dir / "metrics.jsonl"
    if resume_from is None and dist.is_main():
        metrics_path.write_text("")

    def log(record: dict) -> None:
        if dist.is_main():
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint() -> None:
        if dist.is_main():
            save_checkpoint(ckpt_path, cfg, method, optimizer, scaler, state, num_data=len(train_set))

    def plan(total: int) -> None:
        state.total_steps = max(1, total)
        # A short run cannot afford a long warm-up: cap it at a tenth of the run.
        state.warmup_steps = int(min(cfg.optim.warmup_epochs * steps_per_epoch, 0.1 * state.total_steps))

    budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    if state.total_steps is None:
        plan(cfg.epochs * steps_per_epoch)
        planned = budget is None or state.total_steps <= CALIBRATION_STEPS[1]
    else:
        planned = True

    def evaluate(final: bool = False) -> dict:
        record = {"epoch": state.epoch, "step": state.step, "train_minutes": state.train_seconds / 60}
        if test_set is not None and (cfg.final_eval or not final):
            ks = (200, 20) if final else (cfg.knn_k,)
            record.update(knn_eval(method, train_set, test_set, cfg, device, ks))
        return record

    progress = None
    if cfg.progress and dist.is_main():
        from tqdm.auto import tqdm
        progress = tqdm(total=state.total_steps, initial=state.step, desc=cfg.method, dynamic_ncols=True,
                        file=sys.stdout)

    running_loss = torch.zeros((), device=device)
    running_count = 0
    last_log_time, last_log_images = time.perf_counter(), state.images_seen
    last_checkpoint = time.perf_counter()
    calibration_start = None
    stop = state.finished or (cfg.max_steps is not None and state.step >= cfg.max_steps)
    method.train()
    while not stop and state.epoch < cfg.epochs:
        tick = time.perf_counter()
        for images, _, index in loader.epoch(state.epoch, start=state.batch):
            lr = lr_at(state.step, state.total_steps, state.warmup_steps, peak, cfg.optim.schedule, cfg.optim.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.no_grad():
                views = augment(images)
                if cfg.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with _autocast(cfg, device):
                out = forward(views, index)
            loss = out["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            method.before_optimizer_step(state.epoch)
            scaler.step(optimizer)
            scaler.update()
            state.step += 1
            state.batch += 1
            state.images_seen += len(images) * world
            method.after_optimizer_step(state.step / state.total_steps)
            running_loss += loss.detach().float()
            running_count += 1

            now = time.perf_counter()
            state.train_seconds += now - tick
            tick = now
            # With a time budget, time a few steps and fix the schedule's length from them.
            if not planned and state.step == CALIBRATION_STEPS[0]:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                calibration_start = (time.perf_counter(), state.train_seconds)
            if not planned and state.step == CALIBRATION_STEPS[1] and calibration_start is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                per_step = (state.train_seconds - calibration_start[1]) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
                fit = state.step + int((budget - state.train_seconds) / per_step)
                fit = torch.tensor(min(fit, cfg.epochs * steps_per_epoch))
                if world > 1:
                    torch.distributed.broadcast(fit, 0)
                plan(int(fit))
                planned = True
                if progress is not None:
                    progress.total = state.total_steps
                    progress.refresh()

            over_budget = budget is not None and state.train_seconds >= budget
            if budget is not None and world > 1:  # each process has its own clock, but all must stop at
                # the same step (or the others wait in a collective for ever): decide together, when logging
                over_budget = state.step % cfg.log_every == 0 and dist.any_process(over_budget, device)
            finished = state.step >= state.total_steps or over_budget
            # max_steps interrupts a run without changing its schedule (as a crash would); it can be resumed.
            done = finished or (cfg.max_steps is not None and state.step >= cfg.max_steps)
            if state.step % cfg.log_every == 0 or done:
                mean_loss = (running_loss / running_count).item()  # the host sync of a logging point
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"loss became {mean_loss} by step {state.step}; stopped, the last good checkpoint "
                        f"({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept. Lower optim.lr, or use "
                        "precision=fp32")
                images_per_s = (state.images_seen - last_log_images) / max(1e-9, time.perf_counter() - last_log_time)
                record = {"step": state.step, "epoch": state.epoch + state.batch / steps_per_epoch, "loss": mean_loss,
                          "lr": lr, "images_per_s": images_per_s, "train_minutes": state.train_seconds / 60}
                if "z" in out:
                    record["output_std"] = output_std(out["z"].float())
                record.update({k: float(v) for k, v in out.items() if k not in ("loss", "z")})
                log(record)
                if progress is not None:
                    progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}")
                running_loss.zero_()
                running_count = 0
                last_log_time, last_log_images = time.perf_counter(), state.images_seen
                if time.perf_counter() - last_checkpoint > cfg.checkpoint_minutes * 60:
                    checkpoint()
                    last_checkpoint = time.perf_counter()
            if progress is not None:
                progress.update(1)
            if done:
                stop = True
                state.finished = finished
                break
        if not stop or state.batch >= steps_per_epoch:  # the epoch ran to its end
            state.epoch += 1
            state.batch = 0
            if cfg.eval_every and state.epoch % cfg.eval_every == 0 and not stop:
                record = evaluate()
                state.history.append(record)
                log({"eval": record})
                method.train()
                if cfg.verbose and dist.is_main():
                    _print_eval(record, cfg)
            checkpoint()
            last_checkpoint = time.perf_counter()
    if progress is not None:
        progress.close()

    if not stop:  # all epochs ran
        state.finished = True
    checkpoint()  # before the final evaluation, so a resumed run continues from exactly here
    final = evaluate(final=True)
    state.history.append(final)
    results = {
        "method": cfg.method, "profile": cfg.profile, "dataset": cfg.data.dataset,
        "encoder": f"{cfg.model.encoder}-w{cfg.model.width}-{cfg.model.stem}",
        "epochs": state.epoch + state.batch / steps_per_epoch, "steps": state.step,
        "batch_size": cfg.batch_size, "train_minutes": state.train_seconds / 60,
        "images_per_s": state.images_seen / max(1e-9, state.train_seconds),
        "peak_memory_mb": _peak_memory_mb(device), "device": device.type, "world_size": world,
        "train_images": len(train_set), **{k: v for k, v in final.items() if k.startswith("knn")},
    }
    log({"final": results})
    if dist.is_main():
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        if cfg.verbose:
            _print_eval(final, cfg, final=True)
    return RunResult(out_dir, method, cfg, results, state.history, metrics_path)


def _print_eval(record: dict, cfg: Config, final: bool = False) -> None:
    knn = " ".join(f"{k.replace('_top1', '')} {v:.2f}%" for k, v in record.items() if k.startswith("knn"))
    label = "final" if final else f"epoch {record['epoch']}"
    print(f"[{cfg.method}] {label}: step {record['step']}, {record['train_minutes']:.1f} min training, {knn}",
          flush=True)

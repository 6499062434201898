"""sslbook vs lightly: SimCLR, MoCo v2, BYOL, SimSiam and SwAV side by side: same cores, data, encoder, budget.

    python benchmarks/vs_lightly.py                         # cpu profile, 2 minutes per arm (~16 min)
    python benchmarks/vs_lightly.py --minutes 5 --methods simclr,byol
    python benchmarks/vs_lightly.py --smoke                 # a few steps on 512 images (< 1 min)

Needs the benchmark extra (``pip install -e .[bench]`` or ``-r requirements-bench.txt``: lightly,
kornia). Nothing in the package or its tests imports lightly.

For each method two *arms* run one after the other, each in a fresh process (so its peak memory is its
own and neither inherits the other's threads or allocator state):

``ours``
    ``sslbook.trainer.train`` with the shipped ``cifar10/<method>`` config in the ``cpu`` profile
    (ResNet-18 width 16, CIFAR stem, the profile's batch, bf16 autocast + channels_last where the CPU
    has native bf16), ``max_minutes=M``, at 32 px throughout (``data.crop_schedule=null``: the cpu
    recipes' progressive resizing is switched off, since lightly's transforms crop at one size): the
    whole CIFAR-10 train split as uint8 in memory, batched augmentation in the main process.
``lightly``
    the same method written with lightly's building blocks, the way lightly's own examples
    (``examples/pytorch/{simclr,moco,byol,simsiam}.py``) and its CIFAR-10 benchmark write it: lightly's
    transforms (``SimCLRTransform``, ``MoCoV2Transform``, ``BYOLTransform``, ``SimSiamTransform``: PIL +
    torchvision per image) in a ``LightlyDataset`` read by a ``DataLoader`` with 2 workers, lightly's
    heads (``SimCLRProjectionHead``, ``MoCoProjectionHead``, ``BYOLProjectionHead``/``BYOLPredictionHead``,
    ``SimSiamPredictionHead`` and, for the CIFAR recipe's 2-layer projector, lightly's ``ProjectionHead``
    with the blocks of its ``SimSiamProjectionHead`` less one hidden layer), losses (``NTXentLoss``, with a
    4096-key memory bank for MoCo; ``NegativeCosineSimilarity``) and utilities (``update_momentum``,
    ``deactivate_requires_grad``, ``batch_shuffle``); for SwAV, ``SwaVTransform`` (2 global + N local
    crops), ``SwaVProjectionHead``, ``SwaVPrototypes`` (frozen for the config's first epochs, as ours)
    and ``SwaVLoss``, every crop through the network on its own as in lightly's example.

What is held equal: the data (the same uint8 CIFAR-10 tensors; lightly gets them as PIL images), the
encoder module (``sslbook.models.resnet(18, "cifar", width)``, with the config's ``zero_init_residual``;
for MoCo both sides split its BatchNorm into 8 sub-batches, the Shuffle-BN emulation of both recipes),
batch size, head sizes, the augmentation recipe (CIFAR SimCLR: crop scale 0.08-1, flip, jitter
0.4/0.4/0.4/0.1 p=0.8, grey p=0.2, no blur; SimSiam: the same with crop scale 0.2-1; SwAV: 2 x 32 px + N
x 18 px crops; lightly's transforms are configured to it), the optimiser and learning-rate schedule
(``sslbook.optim``: the config's optimiser, SGD or LARS for SwAV, its lr/momentum/weight decay, cosine
decay over the number of steps that fit the budget, planned from steps 3..13 as the trainer does), the
loss scale where the two differ (BYOL: lightly's 0.5 * (-cos - cos) gets lightly's lr and weight decay,
which is the update of our config; MoCo: the two symmetric terms are added on both sides; SimSiam: both
halve the two terms; lightly's example lets the predictor's lr follow the schedule, ours keeps it fixed,
as the config says), the precision and memory format (the config's bf16 autocast and channels_last on
both sides), the budget, and the evaluation.

Measured per arm: images/s over the whole loop including data loading (all steps, and after the
first ``log_every`` warm-up steps), where the lightly loop's time goes (waiting for the DataLoader,
forward, backward, optimiser), peak resident memory of the training process (VmHWM, reset at the
start as the trainer does; the DataLoader workers' own memory is reported separately: the largest
sampled sum of their private pages, and the sum of their VmHWM, an upper bound that also counts the
pages they share with the main process), and kNN top-1
(k = 200, T = 0.1, ``sslbook.eval``) of the backbone's features on the 10,000 test images against the
50,000 training images after the budget; the 1-minute load average before and after each arm. For
our side a short step breakdown (loader, augmentation, forward, backward, optimiser) is timed after
training. Results: ``benchmarks/results/vs_lightly-<profile>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslbook.bench import environment  # noqa: E402
from sslbook.config import load_config  # noqa: E402
from sslbook.data import load_cifar  # noqa: E402
from sslbook.eval import extract_features, knn_accuracy  # noqa: E402
from sslbook.methods.moco import split_batchnorm  # noqa: E402
from sslbook.models import resnet  # noqa: E402
from sslbook.optim import build_optimizer, lr_at, peak_lr  # noqa: E402
from sslbook.trainer import CALIBRATION_STEPS, autocast, peak_memory_mb, reset_peak_memory, train  # noqa: E402

METHODS = {
    "simclr": "cifar10/simclr",
    "moco_v2": "cifar10/moco_v2",
    "byol": "cifar10/byol",
    "simsiam": "cifar10/simsiam",
    "swav": "cifar10/swav",
}
RESULTS = ROOT / "benchmarks" / "results"
SMOKE = {"train_images": 512, "test_images": 256, "batch_size": 64, "width": 8, "max_steps": 6, "log_every": 2}


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def arm_config(method: str, minutes: float, smoke: bool, out_dir: Path):
    """The cpu-profile config of ``method`` that both arms follow."""
    overrides = [
        "profile=cpu",
        f"max_minutes={minutes}",
        "eval_every=0",
        "final_eval=false",
        "progress=false",
        "verbose=false",
        f"out_dir={out_dir}",
        "resume=never",
        "overwrite=true",
        "checkpoint_minutes=1000",
        "data.crop_schedule=null",  # 32 px throughout, as lightly's transforms crop
    ]
    if smoke:
        overrides += [
            f"data.train_images={SMOKE['train_images']}",
            f"data.test_images={SMOKE['test_images']}",
            f"batch_size={SMOKE['batch_size']}",
            f"model.width={SMOKE['width']}",
            "max_minutes=null",
            f"max_steps={SMOKE['max_steps']}",
            f"log_every={SMOKE['log_every']}",
        ]
    return load_config(METHODS[method], overrides), overrides


def datasets(cfg):
    train_set = load_cifar(cfg.data.dataset, "train").subset(cfg.data.train_images, seed=cfg.seed)
    test_set = load_cifar(cfg.data.dataset, "test").subset(cfg.data.test_images, seed=cfg.seed)
    return train_set, test_set


def knn_top1(backbone, train_set, test_set, cfg) -> tuple[float, float]:
    """kNN top-1 (k=200, T=0.1) of ``backbone``'s features, the same code for both arms; and its seconds."""
    t0 = time.perf_counter()
    mean, std = train_set.mean, train_set.std
    train_x = extract_features(backbone, train_set.images, mean, std, 512)
    test_x = extract_features(backbone, test_set.images, mean, std, 512)
    acc = knn_accuracy(train_x, train_set.labels, test_x, test_set.labels, k=200, temperature=cfg.knn_temperature)
    return acc, time.perf_counter() - t0


def rate_after_warmup(points: list[tuple[int, float]], batch: int) -> float | None:
    """Images/s between the first and the last (step, seconds) point."""
    if len(points) < 2 or points[-1][1] <= points[0][1]:
        return None
    return (points[-1][0] - points[0][0]) * batch / (points[-1][1] - points[0][1])


# --------------------------------------------------------------------------- our arm
def run_ours(method: str, minutes: float, smoke: bool, breakdown_steps: int) -> dict:
    out_dir = ROOT / "runs" / "vs_lightly" / f"ours-{method}{'-smoke' if smoke else ''}"
    cfg, overrides = arm_config(method, minutes, smoke, out_dir)
    train_set, test_set = datasets(cfg)
    load0 = loadavg()
    result = train(cfg, datasets=(train_set, test_set))  # resets the peak-memory count itself
    load1 = loadavg()
    r = result.results
    points = [
        (rec["step"], rec["train_minutes"] * 60)
        for rec in result.log()
        if "step" in rec and "train_minutes" in rec and "eval" not in rec and "final" not in rec
    ]
    knn, knn_seconds = knn_top1(result.method.embed, train_set, test_set, cfg)
    row = dict(
        method=method,
        side="ours",
        config=METHODS[method],
        overrides=overrides,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        batch_size=cfg.batch_size,
        width=cfg.model.width,
        train_images=len(train_set),
        test_images=len(test_set),
        steps=r["steps"],
        epochs=r["epochs"],
        train_seconds=r["train_minutes"] * 60,
        images_per_s=r["images_per_s"],
        images_per_s_after_warmup=rate_after_warmup(points, cfg.batch_size),
        warmup_steps=points[0][0] if points else None,
        peak_memory_mb=r["peak_memory_mb"],
        workers_peak_memory_mb=0.0,
        knn200_top1=knn,
        knn_seconds=knn_seconds,
        loadavg_1min_before_after=[load0, load1],
    )
    if breakdown_steps:
        row["breakdown_ms_per_step"] = breakdown_ours(result.method, cfg, train_set, breakdown_steps)
    return row


def breakdown_ours(method, cfg, train_set, steps: int) -> dict:
    """Mean ms per step of each part of our loop, timed on a few extra steps (CPU: no async)."""
    from sslbook.trainer import build_augment, dataset_stats, make_loader

    mean, std, crop = dataset_stats(train_set, cfg.data.crop_size)
    loader = make_loader(train_set, cfg, "cpu", cfg.batch_size)
    augment = build_augment(cfg, mean, std, crop)
    optimizer = build_optimizer(method, cfg.optim, cfg.batch_size)
    device = torch.device("cpu")
    parts = dict(data=0.0, augment=0.0, forward=0.0, backward=0.0, optimizer=0.0)
    method.train()
    it = loader.epoch(1)
    n = 0
    for i in range(steps + 2):
        t0 = time.perf_counter()
        images, _, index = next(it)
        t1 = time.perf_counter()
        with torch.no_grad():
            views = augment(images)
            if cfg.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        t2 = time.perf_counter()
        with autocast(cfg, device):
            loss = method(views, index)["loss"]
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        method.before_optimizer_step(0)
        optimizer.step()
        method.after_optimizer_step(0.5)
        t5 = time.perf_counter()
        if i >= 2:  # two warm-up steps
            n += 1
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                parts[key] += dt
    return {k: round(1000 * v / n, 1) for k, v in parts.items()}


# --------------------------------------------------------------------------- lightly's arm
class PILImages(torch.utils.data.Dataset):
    """Our uint8 CIFAR tensors as (transformed PIL image, label) pairs, as torchvision's CIFAR10 yields
    them (``LightlyDataset.from_torch_dataset`` sets ``transform``)."""

    def __init__(self, dataset, transform=None):
        self.images = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC for PIL
        self.labels = dataset.labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        image = Image.fromarray(self.images[i])
        return (self.transform(image) if self.transform is not None else image), self.labels[i]


def lightly_transform(method: str, mean, std, local_crops=None):
    """lightly's transform of each method, set to the CIFAR SimCLR recipe our configs use."""
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        MoCoV2Transform,
        SimCLRTransform,
        SimSiamTransform,
        SwaVTransform,
    )

    normalize = {"mean": list(mean), "std": list(std)}
    common = dict(input_size=32, gaussian_blur=0.0, min_scale=0.08, normalize=normalize)
    if method == "simclr":  # cj_strength 0.5: 0.8 * 0.5 = 0.4 brightness/contrast/saturation, hue 0.1
        return SimCLRTransform(cj_strength=0.5, **common)
    if method == "moco_v2":  # jitter 0.4/0.4/0.4/0.1 is MoCoV2Transform's default
        return MoCoV2Transform(**common)
    if method == "simsiam":  # our simsiam recipe is MoCo v2's: crop scale 0.2-1, SimSiamTransform's defaults
        return SimSiamTransform(**{**common, "min_scale": 0.2})
    if method == "swav":  # 2 x 32 px crops of scale 0.14-1 and N x 18 px of 0.05-0.14; jitter 0.8/0.8/0.8/0.2
        local = local_crops if local_crops is not None else 6
        return SwaVTransform(
            crop_sizes=(32, 18), crop_counts=(2, local), gaussian_blur=0.0, normalize=common["normalize"]
        )
    view = dict(cj_sat=0.4, solarization_prob=0.0, **common)  # our byol config uses SimCLR's views
    return BYOLTransform(BYOLView1Transform(**view), BYOLView2Transform(**view))


class LightlyModel(torch.nn.Module):
    """The method as lightly's examples write it, around our encoder."""

    def __init__(self, method: str, backbone, cfg, steps_per_epoch: int):
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
        from lightly.models.modules import (
            BYOLPredictionHead,
            BYOLProjectionHead,
            MoCoProjectionHead,
            SimCLRProjectionHead,
            SimSiamPredictionHead,
            SimSiamProjectionHead,
            SwaVProjectionHead,
            SwaVPrototypes,
        )
        from lightly.models.modules.heads import ProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.method, args, d = method, cfg.method_args, backbone.feature_dim
        self.backbone = backbone
        if method == "simclr":
            self.projection_head = SimCLRProjectionHead(d, args.get("hidden_dim") or d, args.get("out_dim", 128))
            self.criterion = NTXentLoss(temperature=args.get("temperature", 0.5))
        elif method == "moco_v2":
            split_batchnorm(self.backbone, args["shuffle_bn_splits"])  # both sides: 8 BN sub-batches
            self.projection_head = MoCoProjectionHead(d, args.get("hidden_dim") or d, args["dim"])
            self.criterion = NTXentLoss(
                temperature=args["temperature"], memory_bank_size=(args["queue_size"], args["dim"])
            )
        elif method == "swav":  # prototypes frozen for the config's first epochs, as ours
            self.projection_head = SwaVProjectionHead(d, args["hidden_dim"], args["dim"])
            frozen = args.get("freeze_prototypes_epochs", 0) * steps_per_epoch
            self.prototypes = SwaVPrototypes(args["dim"], args["num_prototypes"], n_steps_frozen_prototypes=frozen)
            self.criterion = SwaVLoss(
                temperature=args["temperature"],
                sinkhorn_iterations=args["sinkhorn_iterations"],
                sinkhorn_epsilon=args["epsilon"],
            )
        elif method == "simsiam":
            dim, layers = args["dim"], args.get("projector_layers", 3)
            if layers == 3:
                self.projection_head = SimSiamProjectionHead(d, dim, dim)
            else:  # SimSiamProjectionHead's blocks with one hidden layer fewer (the paper's CIFAR projector)
                hidden = [
                    (d if i == 0 else dim, dim, torch.nn.BatchNorm1d(dim), torch.nn.ReLU()) for i in range(layers - 1)
                ]
                self.projection_head = ProjectionHead(
                    hidden + [(dim, dim, torch.nn.BatchNorm1d(dim, affine=False), None)]
                )
            self.prediction_head = SimSiamPredictionHead(dim, args["pred_dim"], dim)
            self.criterion = NegativeCosineSimilarity()
        else:
            self.projection_head = BYOLProjectionHead(d, args["hidden_dim"], args["dim"])
            self.prediction_head = BYOLPredictionHead(args["dim"], args["hidden_dim"], args["dim"])
            self.criterion = NegativeCosineSimilarity()
        if method in ("moco_v2", "byol"):
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)
            self.momentum = args.get("momentum", args.get("base_momentum"))

    def trainable(self) -> torch.nn.Module:
        parts = [self.backbone, self.projection_head]
        parts += [self.prediction_head] if self.method in ("byol", "simsiam") else []
        parts += [self.prototypes] if self.method == "swav" else []
        return torch.nn.ModuleList(parts)

    def forward_momentum(self, x):
        from lightly.models.utils import batch_shuffle, batch_unshuffle

        with torch.no_grad():
            if self.method == "moco_v2":
                x, shuffle = batch_shuffle(x)
                return batch_unshuffle(self.projection_head_momentum(self.backbone_momentum(x).flatten(1)), shuffle)
            return self.projection_head_momentum(self.backbone_momentum(x).flatten(1))

    def forward(self, views, step: int):
        from lightly.models.utils import update_momentum

        x0, x1 = views[:2]
        if self.method == "swav":  # lightly's example: every crop on its own through the network
            self.prototypes.normalize()
            scores = [
                self.prototypes(torch.nn.functional.normalize(self.projection_head(self.backbone(x).flatten(1))), step)
                for x in views
            ]
            return self.criterion(scores[:2], scores[2:])
        if self.method == "simclr":
            z0 = self.projection_head(self.backbone(x0).flatten(1))
            z1 = self.projection_head(self.backbone(x1).flatten(1))
            return self.criterion(z0, z1)
        if self.method == "simsiam":
            z0 = self.projection_head(self.backbone(x0).flatten(1))
            z1 = self.projection_head(self.backbone(x1).flatten(1))
            p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
            return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        update_momentum(self.backbone, self.backbone_momentum, m=self.momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.momentum)
        if self.method == "moco_v2":
            q0 = self.projection_head(self.backbone(x0).flatten(1))
            q1 = self.projection_head(self.backbone(x1).flatten(1))
            k0, k1 = self.forward_momentum(x0), self.forward_momentum(x1)
            return self.criterion(q0, k1) + self.criterion(q1, k0)  # symmetric, summed as in our config
        p0 = self.prediction_head(self.projection_head(self.backbone(x0).flatten(1)))
        p1 = self.prediction_head(self.projection_head(self.backbone(x1).flatten(1)))
        z0, z1 = self.forward_momentum(x0), self.forward_momentum(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _private_mb(pid: int) -> float:
    """Memory only this process holds (Private_Clean + Private_Dirty): a forked DataLoader worker's own
    memory, without the pages it still shares with the main process (which VmHWM would count again)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Private_")) / 1024


def run_lightly(method: str, minutes: float, smoke: bool, workers: int) -> dict:
    from lightly.data import LightlyDataset

    cfg, _ = arm_config(method, minutes, smoke, ROOT / "runs" / "vs_lightly" / "unused")
    torch.manual_seed(cfg.seed)
    train_set, test_set = datasets(cfg)
    device = torch.device("cpu")
    reset_peak_memory(device)
    load0 = loadavg()
    dataset = LightlyDataset.from_torch_dataset(
        PILImages(train_set),
        transform=lightly_transform(method, train_set.mean, train_set.std, cfg.data.local_crops),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    backbone = resnet(18, "cifar", width=cfg.model.width, zero_init_residual=cfg.model.zero_init_residual)
    model = LightlyModel(method, backbone, cfg, steps_per_epoch=len(train_set) // cfg.batch_size)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optim_cfg = copy.deepcopy(cfg.optim)
    if method == "byol":  # lightly's loss is 1/4 of ours: lightly's lr and weight decay give our update
        optim_cfg.lr, optim_cfg.weight_decay = optim_cfg.lr * 4, optim_cfg.weight_decay / 4
    optimizer = build_optimizer(model.trainable(), optim_cfg, cfg.batch_size)
    peak = peak_lr(optim_cfg, cfg.batch_size)
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    warmup = int(min(optim_cfg.warmup_epochs * steps_per_epoch, 0.1 * total))
    budget = None if cfg.max_minutes is None else cfg.max_minutes * 60
    planned = budget is None or total <= CALIBRATION_STEPS[1]

    parts = dict(data=0.0, forward=0.0, backward=0.0, optimizer=0.0)
    step, seconds, points, calib = 0, 0.0, [], None
    worker_peaks: dict[int, float] = {}  # VmHWM per worker (counts shared pages too: an upper bound)
    worker_private = 0.0  # the largest sampled sum of the workers' private memory
    it = None

    def sample_workers(iterator):
        """Record the memory of the DataLoader workers of ``iterator`` (none before the first epoch)."""
        nonlocal worker_private
        pids = [w.pid for w in getattr(iterator, "_workers", [])]
        for pid in pids:
            worker_peaks[pid] = max(worker_peaks.get(pid, 0.0), _vm_hwm_mb(pid))
        worker_private = max(worker_private, sum(_private_mb(pid) for pid in pids))

    model.train()
    start = time.perf_counter()
    done = False
    for epoch in range(cfg.epochs):
        it = iter(loader)  # starts the workers on the first epoch: part of the loop's time
        while True:
            t0 = time.perf_counter()
            try:
                views, _, _ = next(it)
            except StopIteration:
                break
            if cfg.channels_last:
                views = [x.contiguous(memory_format=torch.channels_last) for x in views]
            t1 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, peak, optim_cfg.schedule, optim_cfg.min_lr)
            with autocast(cfg, device):
                loss = model(views, step)
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key] += dt
            step += 1
            seconds = time.perf_counter() - start
            if step % cfg.log_every == 0:
                points.append((step, seconds))
                if not torch.isfinite(loss):
                    raise RuntimeError(f"lightly {method}: loss {loss.item()} at step {step}")
                sample_workers(it)
            if not planned and step == CALIBRATION_STEPS[0]:
                calib = seconds
            if not planned and step == CALIBRATION_STEPS[1] and calib is not None:
                per_step = (seconds - calib) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
                total = min(step + int((budget - seconds) / per_step), total)
                warmup = int(min(optim_cfg.warmup_epochs * steps_per_epoch, 0.1 * total))
                planned = True
            if (
                step >= total
                or (budget is not None and seconds >= budget)
                or (cfg.max_steps is not None and step >= cfg.max_steps)
            ):
                done = True
                break
        if done:
            break
    if not points or points[-1][0] != step:
        points.append((step, seconds))
    sample_workers(it)
    peak_mb = peak_memory_mb(device)
    load1 = loadavg()
    del it, loader
    knn, knn_seconds = knn_top1(model.backbone, train_set, test_set, cfg)
    import lightly

    return dict(
        method=method,
        side="lightly",
        lightly=lightly.__version__,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        batch_size=cfg.batch_size,
        width=cfg.model.width,
        dataloader_workers=workers,
        train_images=len(train_set),
        test_images=len(test_set),
        steps=step,
        epochs=step / steps_per_epoch,
        train_seconds=seconds,
        images_per_s=step * cfg.batch_size / max(seconds, 1e-9),
        images_per_s_after_warmup=rate_after_warmup(points, cfg.batch_size),
        warmup_steps=points[0][0],
        peak_memory_mb=peak_mb,
        workers_peak_memory_mb=round(worker_private, 1),
        workers_vmhwm_sum_mb=round(sum(worker_peaks.values()), 1),
        knn200_top1=knn,
        knn_seconds=knn_seconds,
        loadavg_1min_before_after=[load0, load1],
        seconds_per_part={k: round(v, 2) for k, v in parts.items()},
        breakdown_ms_per_step={k: round(1000 * v / max(step, 1), 1) for k, v in parts.items()},
        optimizer=dict(
            lr=optim_cfg.lr,
            lr_batch=optim_cfg.lr_batch,
            weight_decay=optim_cfg.weight_decay,
            momentum=optim_cfg.momentum,
            exclude_bias_and_norm=optim_cfg.exclude_bias_and_norm,
        ),
    )


# --------------------------------------------------------------------------- driver
def run_arm_process(side: str, method: str, args) -> dict:
    """One arm in a fresh process; its JSON row (or an error row). ``--smoke`` runs it in this process
    (quicker; its memory numbers then mean nothing, like the rest of a smoke run)."""
    if args.smoke:
        t0 = time.perf_counter()
        row = (
            run_ours(method, args.minutes, True, args.breakdown_steps)
            if side == "ours"
            else run_lightly(method, args.minutes, True, args.workers)
        )
        row["process_seconds"] = round(time.perf_counter() - t0, 1)
        return row
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arm.json"
        cmd = [
            sys.executable,
            __file__,
            "--arm",
            side,
            "--methods",
            method,
            "--minutes",
            str(args.minutes),
            "--workers",
            str(args.workers),
            "--breakdown-steps",
            str(args.breakdown_steps),
            "--arm-out",
            str(out),
        ]
        if args.smoke:
            cmd.append("--smoke")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return dict(method=method, side=side, error=(proc.stderr.strip().splitlines() or ["?"])[-1][:300])
        row = json.loads(out.read_text())
        row["process_seconds"] = round(time.perf_counter() - t0, 1)
        return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget of each arm (wall clock)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--smoke", action="store_true", help="a few steps on 512 images, width 8: checks the script")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of lightly's arm")
    ap.add_argument(
        "--breakdown-steps", type=int, default=None, help="extra timed steps of our loop (default 10; smoke 2)"
    )
    ap.add_argument("--out", default=None, help="results file (default results/vs_lightly-<profile>.json)")
    ap.add_argument("--arm", choices=["ours", "lightly"], help=argparse.SUPPRESS)
    ap.add_argument("--arm-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.breakdown_steps is None:
        args.breakdown_steps = 2 if args.smoke else 10

    if args.arm:  # child process: one arm
        method = methods[0]
        row = (
            run_ours(method, args.minutes, args.smoke, args.breakdown_steps)
            if args.arm == "ours"
            else run_lightly(method, args.minutes, args.smoke, args.workers)
        )
        Path(args.arm_out).write_text(json.dumps(row, indent=2))
        return

    import lightly

    profile = "smoke" if args.smoke else "cpu"
    env = environment()
    env.update(lightly=lightly.__version__, torchvision=__import__("torchvision").__version__)
    rows = []
    for method in methods:
        for side in ("ours", "lightly"):
            print(f"[vs_lightly] {method} / {side} ...", file=sys.stderr, flush=True)
            row = run_arm_process(side, method, args)
            rows.append(row)
            if "error" in row:
                print(f"[vs_lightly]   failed: {row['error']}", file=sys.stderr, flush=True)
            else:
                print(
                    f"[vs_lightly]   {row['steps']} steps, {row['images_per_s']:.0f} img/s, "
                    f"kNN {row['knn200_top1']:.2f}%, peak {row['peak_memory_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
    env["loadavg_1min_end"] = loadavg()
    report = dict(
        benchmark="sslbook vs lightly: whole training loop, same cores, data, encoder, batch and budget",
        command="python benchmarks/vs_lightly.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        profile=profile,
        minutes_per_arm=None if args.smoke else args.minutes,
        environment=env,
        rows=rows,
        ratios=ratios(rows),
    )
    out = Path(args.out or RESULTS / f"vs_lightly-{profile}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwrote {out}")


def ratios(rows: list[dict]) -> dict:
    """Per method: ours / lightly for speed (all steps and after warm-up) and memory; kNN difference."""
    out = {}
    by = {(r["method"], r["side"]): r for r in rows if "error" not in r}
    for method in dict.fromkeys(r["method"] for r in rows):
        a, b = by.get((method, "ours")), by.get((method, "lightly"))
        if not (a and b):
            continue
        warm = (
            a["images_per_s_after_warmup"] / b["images_per_s_after_warmup"]
            if a.get("images_per_s_after_warmup") and b.get("images_per_s_after_warmup")
            else None
        )
        out[method] = dict(
            speed=round(a["images_per_s"] / b["images_per_s"], 2),
            speed_after_warmup=round(warm, 2) if warm else None,
            memory=round(a["peak_memory_mb"] / (b["peak_memory_mb"] + b["workers_peak_memory_mb"]), 2),
            knn_difference=round(a["knn200_top1"] - b["knn200_top1"], 2),
        )
    return out


def table(report: dict) -> str:
    lines = [
        "| method | side | steps | images/s (whole loop) | after warm-up | peak MB (main + workers) | kNN top-1 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['side']} | failed: {r['error']} | | | | |")
            continue
        warm = f"{r['images_per_s_after_warmup']:.0f}" if r.get("images_per_s_after_warmup") else "-"
        lines.append(
            f"| {r['method']} | {r['side']} | {r['steps']} | {r['images_per_s']:.0f} | {warm} | "
            f"{r['peak_memory_mb']:.0f} + {r['workers_peak_memory_mb']:.0f} | {r['knn200_top1']:.2f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

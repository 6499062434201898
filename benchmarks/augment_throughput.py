"""Two-view SimCLR augmentation throughput at 32 px: sslbook vs torchvision vs kornia.

    python benchmarks/augment_throughput.py            # default, ~1-2 minutes
    python benchmarks/augment_throughput.py --quick    # a smoke run, ~20 s
    python benchmarks/augment_throughput.py --batches 50

What is measured, on CIFAR-like uint8 data (real CIFAR-10 if $SSLBOOK_DATA holds
``cifar-10-batches-py``, otherwise random uint8 images of the same shape):

1. ``sslbook``: ``Augment(recipe("simclr"))`` on batches of 512 uint8 images, in the main
   process (the way the trainer uses it).
2. ``torchvision (PIL)``: the classic pipeline, RandomResizedCrop(32), flip,
   RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8), RandomGrayscale(0.2), ToTensor,
   Normalize, applied twice per PIL image, through a DataLoader with 2 workers, batch 512.
3. ``lightly``: lightly's ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0)``
   (a torchvision PIL pipeline with the same parameters) in the same 2-worker DataLoader, if
   lightly imports (``pip install -e .[bench]``).
4. ``kornia``: the equivalent ``AugmentationSequential`` on the same batches, if kornia
   imports.
5. ``sslbook`` again in a child process whose glibc malloc keeps freed memory
   (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``): by default glibc hands big
   freed blocks back to the OS and every new temporary tensor page-faults its memory in
   again, which on a small VM costs as much as the arithmetic. Skip with ``--no-malloc-row``.

Throughput counts source images per second (each gives 2 views), over a fixed number of
batches after warm-up. Each method is timed in ``--repeats`` windows and the best window
is reported (other processes on a shared machine only ever slow a window down); the
median is recorded too, and so is the CPU time each method burns per 1000 images (all
threads, DataLoader workers included), which hardly depends on the machine's load. Results go
to benchmarks/results/augment_throughput.json and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslbook.augment import CIFAR10_MEAN, CIFAR10_STD, Augment, recipe  # noqa: E402

BATCH = 512
MAX_SECONDS_PER_METHOD = 30.0  # stop adding windows after this (the first one always runs)


def load_data(n: int) -> tuple[torch.Tensor, str]:
    """uint8 [n, 3, 32, 32]: real CIFAR-10 train images if available, else random."""
    root = os.environ.get("SSLBOOK_DATA")
    if root:
        for d in (Path(root) / "cifar-10-batches-py", Path(root) / "cifar10" / "cifar-10-batches-py"):
            files = sorted(d.glob("data_batch_*"))
            if files:
                arrays = []
                for f in files:
                    with open(f, "rb") as fh:
                        arrays.append(pickle.load(fh, encoding="bytes")[b"data"])
                x = torch.from_numpy(np.concatenate(arrays)).view(-1, 3, 32, 32)[:n].clone()
                return x, f"CIFAR-10 train ({d})"
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), "random uint8"


def time_windows(step, batches: int, warmup: int, repeats: int, cpu_seconds=time.process_time) -> list[dict]:
    """Per window: images/s of ``step()`` (one batch of BATCH images) and the CPU time it
    used (``cpu_seconds()``: all threads of this process, plus workers where there are),
    in ms per 1000 source images. CPU time barely depends on what else the machine runs,
    so it is the fairer comparison on a shared machine."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    windows = []
    for _ in range(repeats):
        if windows and time.perf_counter() - start > MAX_SECONDS_PER_METHOD:
            break  # a very busy machine: keep the run short, fewer windows
        t0, c0 = time.perf_counter(), cpu_seconds()
        for _ in range(batches):
            step()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        windows.append(dict(rate=batches * BATCH / wall, cpu_ms_per_1k=1e6 * cpu / (batches * BATCH)))
    return windows


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def bench_sslbook(data: torch.Tensor, batches: int, warmup: int, repeats: int) -> list[dict]:
    aug = Augment(recipe("simclr", size=32))
    n = data.shape[0]
    perm = torch.randperm(n)
    pos = [0]

    def step():
        i = pos[0] % (n - BATCH)
        pos[0] += BATCH
        v1, v2 = aug(data[perm[i : i + BATCH]])
        return v1.shape[0]

    return time_windows(step, batches, warmup, repeats)


class _PILTwoViews(torch.utils.data.Dataset):
    def __init__(self, data: torch.Tensor):
        from torchvision import transforms as T

        self.data = data.permute(0, 2, 3, 1).numpy()  # HWC for PIL
        self.t = T.Compose(
            [
                T.RandomResizedCrop(32),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.ToTensor(),
                T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
        )

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        return self.t(img), self.t(img)


def bench_torchvision(
    data: torch.Tensor, batches: int, warmup: int, repeats: int, workers: int, dataset=None
) -> list[dict]:
    loader = torch.utils.data.DataLoader(
        dataset if dataset is not None else _PILTwoViews(data),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    it = iter(loader)

    def cpu_seconds():  # this process (collation) + the workers (the augmentation)
        return time.process_time() + sum(_proc_cpu_seconds(w.pid) for w in getattr(it, "_workers", []))

    def step():
        nonlocal it
        try:
            v1, v2 = next(it)
        except StopIteration:
            it = iter(loader)
            v1, v2 = next(it)
        return v1.shape[0]

    return time_windows(step, batches, warmup, repeats, cpu_seconds)


class _LightlyTwoViews(_PILTwoViews):
    """lightly's SimCLRTransform set to the CIFAR recipe (input 32, colour strength 0.5, no blur): the
    data path of a lightly training loop (it is a torchvision PIL pipeline underneath)."""

    def __init__(self, data: torch.Tensor):
        from lightly.transforms import SimCLRTransform

        self.data = data.permute(0, 2, 3, 1).numpy()
        self.t = SimCLRTransform(
            input_size=32,
            cj_strength=0.5,
            gaussian_blur=0.0,
            min_scale=0.08,
            normalize={"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)},
        )

    def __getitem__(self, i):
        from PIL import Image

        return tuple(self.t(Image.fromarray(self.data[i])))


def bench_lightly(data: torch.Tensor, batches: int, warmup: int, repeats: int, workers: int) -> list[dict] | None:
    try:
        dataset = _LightlyTwoViews(data)
    except Exception:  # lightly not installed (it is a benchmark extra)
        return None
    return bench_torchvision(data, batches, warmup, repeats, workers, dataset=dataset)


def bench_kornia(data: torch.Tensor, batches: int, warmup: int, repeats: int) -> list[dict] | None:
    try:
        import kornia.augmentation as K
    except Exception:
        return None
    mean = torch.tensor(CIFAR10_MEAN)
    std = torch.tensor(CIFAR10_STD)
    aug = K.AugmentationSequential(
        K.RandomResizedCrop((32, 32), scale=(0.08, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.Normalize(mean, std),
    )
    n = data.shape[0]
    pos = [0]

    def step():
        i = pos[0] % (n - BATCH)
        pos[0] += BATCH
        x = data[i : i + BATCH].float().div_(255.0)
        v1, _ = aug(x), aug(x)  # two views, as in the other pipelines
        return v1.shape[0]

    return time_windows(step, batches, warmup, repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=20, help="timed batches of 512 per window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per method (best is reported)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 batches, 1 window")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the torchvision pipeline")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for sslbook/kornia")
    ap.add_argument("--skip", nargs="*", default=[], choices=["sslbook", "torchvision", "lightly", "kornia"])
    ap.add_argument("--no-malloc-row", action="store_true", help="skip the tuned-malloc sslbook run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "augment_throughput.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.repeats = 4, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = 3

    data, source = load_data(50000)
    load0 = os.getloadavg()[0]
    results = {}
    if "sslbook" not in args.skip:
        results["sslbook Augment (main process)"] = bench_sslbook(data, args.batches, warmup, args.repeats)
    if "torchvision" not in args.skip:
        label = f"torchvision PIL + DataLoader ({args.workers} workers)"
        results[label] = bench_torchvision(data, args.batches, warmup, args.repeats, args.workers)
    if "lightly" not in args.skip:
        k = bench_lightly(data, args.batches, warmup, args.repeats, args.workers)
        if k is not None:
            results[f"lightly SimCLRTransform + DataLoader ({args.workers} workers)"] = k
    if "kornia" not in args.skip:
        k = bench_kornia(data, args.batches, warmup, args.repeats)
        if k is not None:
            results["kornia AugmentationSequential (main process)"] = k

    if "sslbook" not in args.skip and not args.no_malloc_row and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        tuned = _run_tuned_malloc(args)
        if tuned:
            results["sslbook Augment, malloc keeps freed memory (env)"] = tuned

    rows = []
    for name, windows in results.items():
        rates = [w["rate"] for w in windows]
        cpu = [w["cpu_ms_per_1k"] for w in windows]
        rows.append(
            dict(
                method=name,
                images_per_s=round(max(rates)),
                median_images_per_s=round(statistics.median(rates)),
                cpu_ms_per_1000_images=round(min(cpu), 1),
                windows=[
                    dict(images_per_s=round(w["rate"]), cpu_ms_per_1k=round(w["cpu_ms_per_1k"], 1)) for w in windows
                ],
            )
        )
    tv = next((r for r in rows if r["method"].startswith("torchvision")), None)
    for r in rows:
        r["speedup_vs_torchvision"] = round(r["images_per_s"] / tv["images_per_s"], 2) if tv else None
        r["cpu_efficiency_vs_torchvision"] = (
            round(tv["cpu_ms_per_1000_images"] / r["cpu_ms_per_1000_images"], 2) if tv else None
        )
    report = dict(
        benchmark="two-view SimCLR augmentation, 32 px, no blur",
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        torch=torch.__version__,
        torchvision=__import__("torchvision").__version__,
        kornia=_version("kornia"),
        lightly=_version("lightly"),
        environment=_environment(),
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        batch_size=BATCH,
        batches_per_window=args.batches,
        windows=args.repeats,
        data=source,
        loadavg_1min_before_after=[round(load0, 2), round(os.getloadavg()[0], 2)],
        results=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\ntwo-view SimCLR augmentation, 32 px, batch {BATCH}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, data: {source}\n"
    )
    print(
        "| method | images/s (best window) | median | CPU ms / 1000 images | speed vs torchvision "
        "| CPU efficiency vs torchvision |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        sp = f"{r['speedup_vs_torchvision']:.2f}x" if r["speedup_vs_torchvision"] else "-"
        ce = f"{r['cpu_efficiency_vs_torchvision']:.2f}x" if r["cpu_efficiency_vs_torchvision"] else "-"
        print(
            f"| {r['method']} | {r['images_per_s']:,} | {r['median_images_per_s']:,} | "
            f"{r['cpu_ms_per_1000_images']:,} | {sp} | {ce} |"
        )
    print(f"\nload average (1 min) before/after: {report['loadavg_1min_before_after']}")
    print(f"\nwrote {out}")


# 32 MiB is the largest mmap threshold glibc accepts; tensors below it come from the heap,
# and a huge trim threshold keeps freed heap memory for the next batch.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def _run_tuned_malloc(args) -> list[dict] | None:
    """The sslbook measurement again, in a child process with MALLOC_ENV set."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tuned.json"
        cmd = [
            sys.executable,
            __file__,
            "--skip",
            "torchvision",
            "lightly",
            "kornia",
            "--no-malloc-row",
            "--batches",
            str(args.batches),
            "--repeats",
            str(args.repeats),
            "--out",
            str(out),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            print("tuned-malloc run failed:\n" + done.stderr[-2000:], file=sys.stderr)
            return None
        w = json.loads(out.read_text())["results"][0]["windows"]
        return [dict(rate=x["images_per_s"], cpu_ms_per_1k=x["cpu_ms_per_1k"]) for x in w]


def _environment():
    try:
        from sslbook.bench import environment

        return environment()
    except Exception:
        return None


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()

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
3. ``kornia``: the equivalent ``AugmentationSequential`` on the same batches, if kornia
   imports.
4. ``sslbook`` again in a child process whose glibc malloc keeps freed memory
   (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``): by default glibc hands big
   freed blocks back to the OS and every new temporary tensor page-faults its memory in
   again, which on a small VM costs as much as the arithmetic. Skip with ``--no-malloc-row``.

Throughput counts source images per second (each gives 2 views), over a fixed number of
batches after warm-up. Each method is timed in ``--repeats`` windows and the best window
is reported (other processes on a shared machine only ever slow a window down); the
median is recorded too. Results go to benchmarks/results/augment_throughput.json and a
markdown table is printed.
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


def time_windows(step, batches: int, warmup: int, repeats: int) -> list[float]:
    """Images/s of ``step()`` (one batch of BATCH images) over ``repeats`` windows."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            step()
        rates.append(batches * BATCH / (time.perf_counter() - t0))
    return rates


def bench_sslbook(data: torch.Tensor, batches: int, warmup: int, repeats: int) -> list[float]:
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


def bench_torchvision(data: torch.Tensor, batches: int, warmup: int, repeats: int, workers: int) -> list[float]:
    loader = torch.utils.data.DataLoader(
        _PILTwoViews(data), batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0,
    )
    it = iter(loader)

    def step():
        nonlocal it
        try:
            v1, v2 = next(it)
        except StopIteration:
            it = iter(loader)
            v1, v2 = next(it)
        return v1.shape[0]

    rates = time_windows(step, batches, warmup, repeats)
    del it, loader
    return rates


def bench_kornia(data: torch.Tensor, batches: int, warmup: int, repeats: int) -> list[float] | None:
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
        v1, v2 = aug(x), aug(x)
        return v1.shape[0]

    return time_windows(step, batches, warmup, repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=20, help="timed batches of 512 per window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per method (best is reported)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 batches, 1 window")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the torchvision pipeline")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for sslbook/kornia")
    ap.add_argument("--skip", nargs="*", default=[], choices=["sslbook", "torchvision", "kornia"])
    ap.add_argument("--no-malloc-row", action="store_true", help="skip the tuned-malloc sslbook run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "augment_throughput.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.repeats = 4, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = 2

    data, source = load_data(50000)
    load0 = os.getloadavg()[0]
    results = {}
    if "sslbook" not in args.skip:
        results["sslbook Augment (main process)"] = bench_sslbook(data, args.batches, warmup, args.repeats)
    if "torchvision" not in args.skip:
        label = f"torchvision PIL + DataLoader ({args.workers} workers)"
        results[label] = bench_torchvision(data, args.batches, warmup, args.repeats, args.workers)
    if "kornia" not in args.skip:
        k = bench_kornia(data, args.batches, warmup, args.repeats)
        if k is not None:
            results["kornia AugmentationSequential (main process)"] = k

    if "sslbook" not in args.skip and not args.no_malloc_row and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        tuned = _run_tuned_malloc(args)
        if tuned:
            results["sslbook Augment, malloc keeps freed memory (env)"] = tuned

    tv = next((max(r) for name, r in results.items() if name.startswith("torchvision")), None)
    rows = []
    for name, rates in results.items():
        rows.append(
            dict(
                method=name,
                images_per_s=round(max(rates)),
                median_images_per_s=round(statistics.median(rates)),
                windows=[round(r) for r in rates],
                speedup_vs_torchvision=round(max(rates) / tv, 2) if tv else None,
            )
        )
    report = dict(
        benchmark="two-view SimCLR augmentation, 32 px, no blur",
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        torch=torch.__version__,
        torchvision=__import__("torchvision").__version__,
        kornia=_version("kornia"),
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

    print(f"\ntwo-view SimCLR augmentation, 32 px, batch {BATCH}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, data: {source}\n")
    print("| method | images/s (best window) | median | vs torchvision |")
    print("|---|---:|---:|---:|")
    for r in rows:
        sp = f"{r['speedup_vs_torchvision']:.2f}x" if r["speedup_vs_torchvision"] else "-"
        print(f"| {r['method']} | {r['images_per_s']:,} | {r['median_images_per_s']:,} | {sp} |")
    print(f"\nwrote {out}")


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def _run_tuned_malloc(args) -> list[float] | None:
    """The sslbook measurement again, in a child process with MALLOC_ENV set."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tuned.json"
        cmd = [sys.executable, __file__, "--skip", "torchvision", "kornia", "--no-malloc-row",
               "--batches", str(args.batches), "--repeats", str(args.repeats), "--out", str(out)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            print("tuned-malloc run failed:\n" + done.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(out.read_text())["results"][0]["windows"]


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()

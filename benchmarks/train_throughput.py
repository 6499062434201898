"""Training throughput of the SimCLR step: fp32 vs channels_last vs bf16 vs torch.compile.

    python benchmarks/train_throughput.py [--steps 30] [--width 16] [--batch 256] [--quick]

Each variant runs the real training loop (`python -m sslbook train`: batched augmentation on the
device, forward, backward, optimiser) in its own process, so its peak memory is its own. Images/s
counts source images (each gives two views) over the steps after the first logging interval
(warm-up excluded). Writes benchmarks/results/train_throughput.json and prints a markdown table.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sslbook.config import cpu_has_native_bf16
from sslbook.report import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_throughput.json"

VARIANTS = {
    "fp32": [],
    "channels_last": ["channels_last=true"],
    "bf16": ["precision=bf16"],
    "channels_last + bf16": ["channels_last=true", "precision=bf16"],
    "compile + channels_last": ["compile=true", "channels_last=true"],
}


def run(name, extra, args, tmp):
    out = Path(tmp) / name.replace(" ", "").replace("+", "_")
    cmd = [
        sys.executable,
        "-m",
        "sslbook",
        "train",
        "profile=cpu",
        f"model.width={args.width}",
        f"batch_size={args.batch}",
        f"max_steps={args.steps}",
        "max_minutes=null",
        "eval_every=0",
        "final_eval=false",
        f"log_every={args.log_every}",
        "progress=false",
        "verbose=false",
        f"out_dir={out}",
        "resume=never",
        "overwrite=true",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"variant": name, "error": proc.stderr.strip().splitlines()[-1][:200]}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "images_per_s" in r and "final" not in r]
    timed = steps[1:] or steps  # the first interval holds warm-up (and compilation)
    final = next(r["final"] for r in records if "final" in r)
    return {
        "variant": name,
        "images_per_s": sum(r["images_per_s"] for r in timed) / len(timed),
        "peak_memory_mb": final["peak_memory_mb"],
        "steps": final["steps"],
        "overrides": extra,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="10 steps, no compile")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    if args.quick:
        args.steps, args.log_every = 10, 2
        variants.pop("compile + channels_last")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in variants.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(run(name, extra, args, tmp))
    report = {
        "benchmark": "SimCLR training step on CIFAR-10 (32 px), ResNet-18 CIFAR stem",
        "width": args.width,
        "batch_size": args.batch,
        "steps": args.steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "processor": cpu_model(),
        "native_bf16": cpu_has_native_bf16(),  # False: oneDNN emulates bf16, which is slower than fp32
        "date": datetime.date.today().isoformat(),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print("| variant | images/s | peak memory (MB) |\n|---|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error']} | |")
        else:
            print(f"| {r['variant']} | {r['images_per_s']:.0f} | {r['peak_memory_mb']:.0f} |")


if __name__ == "__main__":
    main()

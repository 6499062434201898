"""SimCLR on CIFAR-10 in the `cpu` profile: kNN top-1 after a fixed wall-clock budget.

    python benchmarks/simclr_cpu.py [--minutes 10] [key=value overrides ...]

Trains `cifar10/simclr` with the `cpu` profile (ResNet-18 width 16, all 50,000 training images) for
the budget (training time only; the kNN monitor is off and the final kNN on the 10,000 test images is
not counted), then writes benchmarks/results/simclr_cpu.json with the result, the command, the
machine, and the centred raw-pixel kNN baseline measured on the same data.
"""

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

from sslbook.config import load_config
from sslbook.eval import knn_accuracy, pixel_features
from sslbook.trainer import load_datasets, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "simclr_cpu.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [
        "profile=cpu",
        f"max_minutes={args.minutes}",
        "eval_every=0",
        "progress=false",
        "out_dir=runs/bench-simclr-cpu",
        "resume=never",
        "overwrite=true",
        *args.overrides,
    ]
    cfg = load_config("cifar10/simclr", overrides)
    train_set, test_set = load_datasets(cfg)
    result = train(cfg, datasets=(train_set, test_set))
    train_px, test_px = pixel_features(train_set.images, test_set.images)
    report = {
        "benchmark": "SimCLR, CIFAR-10, cpu profile, fixed wall-clock budget",
        "command": "python benchmarks/simclr_cpu.py " + " ".join(sys.argv[1:]),
        "overrides": overrides,
        "results": result.results,
        "raw_pixels_knn200_top1": knn_accuracy(train_px, train_set.labels, test_px, test_set.labels),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
        },
        "date": datetime.date.today().isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("results", "raw_pixels_knn200_top1")}, indent=2))


if __name__ == "__main__":
    main()

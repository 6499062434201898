"""Where SwAV's features and prototypes sit: the measurements behind its collapse in our sweeps.

    python benchmarks/swav_collapse.py swav-2ep swav-lc2-2ep       # the arms of two sweeps
    python benchmarks/swav_collapse.py swav-lc2-2ep --zoo swav      # and the zoo entry

SwAV's trivial solution is scores that are all zero: uniform predictions and codes, loss log K, no
gradient. For each arm of the named sweeps (``benchmarks/results/sweep-<name>.json``, trained by
``benchmarks/sweep_recipes.py``; their checkpoints stay in ``runs/sweeps/``) and each named zoo entry,
:func:`sslbook.methods.swav.prototype_coverage` on 512 class-balanced CIFAR-10 test images gives how
many directions the features use, whether the prototypes left some direction empty, how much of the
features lies there and the largest score. ``benchmarks/results/swav-collapse.json`` (``--out``) gets
them with the arm's settings and kNN. The numbers do not depend on machine load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = 512


def held_out(n: int = IMAGES) -> torch.Tensor:
    from sslbook.data import balanced_indices, load_cifar
    from sslbook.eval import normalize_images

    test = load_cifar("cifar10", "test")
    return normalize_images(test.images[balanced_indices(test.labels, n, seed=0)], test.mean, test.std)


def measure(method, images: torch.Tensor) -> dict:
    from sslbook.methods.swav import prototype_coverage

    method.eval()
    return prototype_coverage(method.features(images), method.prototypes.weight)


def settings(cfg) -> dict:
    args = cfg.method_args
    return {
        "freeze_prototypes_epochs": args.get("freeze_prototypes_epochs"),
        "queue_length": args.get("queue_length"),
        "queue_start_epoch": args.get("queue_start_epoch"),
        "local_crops": cfg.data.local_crops,
    }


def check_sweep(name: str, images: torch.Tensor) -> list[dict]:
    from sslbook.trainer import CHECKPOINT, method_from_checkpoint

    path = RESULTS / f"sweep-{name}.json"
    if not path.is_file():
        sys.exit(f"swav_collapse: {path} does not exist; run benchmarks/sweep_recipes.py swav --name {name} first")
    rows = []
    for arm in json.loads(path.read_text())["arms"]:
        ckpt = Path(arm["out_dir"]) / CHECKPOINT
        if not ckpt.is_file():
            print(f"[swav] {name}/{arm['arm']}: no checkpoint at {ckpt} (runs/ is not kept); skipped")
            continue
        method, cfg = method_from_checkpoint(ckpt)
        row = {
            "source": f"sweep {name}",
            "arm": arm["arm"],
            **settings(cfg),
            "epochs": arm.get("epochs"),
            "knn200_top1": arm.get("knn200_top1"),
            **measure(method, images),
        }
        print(f"[swav] {name}/{arm['arm']}: {row}", flush=True)
        rows.append(row)
    return rows


def check_zoo(name: str, images: torch.Tensor) -> dict:
    from sslbook import zoo

    res = zoo.results(name)
    row = {
        "source": "zoo",
        "arm": name,
        **settings(zoo.config(name)),
        "epochs": res.get("epochs"),
        "knn200_top1": res.get("knn200_top1"),
        **measure(zoo.load_method(name), images),
    }
    print(f"[swav] zoo {name}: {row}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", help="sweep names, e.g. swav-lc2-2ep")
    parser.add_argument("--zoo", nargs="*", default=[], help="zoo entries, e.g. swav")
    parser.add_argument("--out", default=str(RESULTS / "swav-collapse.json"))
    args = parser.parse_args(argv)
    if not args.sweeps and not args.zoo:
        parser.error("name at least one sweep or --zoo entry")
    torch.manual_seed(0)
    images = held_out()
    rows = [row for name in args.sweeps for row in check_sweep(name, images)]
    rows += [check_zoo(name, images) for name in args.zoo]
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/swav_collapse.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "images": f"{IMAGES} class-balanced CIFAR-10 test images (seed 0)",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

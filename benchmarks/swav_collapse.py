"""Where SwAV's features and prototypes sit: the measurements behind its collapse in our sweeps.

    python benchmarks/swav_collapse.py swav-2ep swav-lc2-2ep       # the arms of two sweeps
    python benchmarks/swav_collapse.py swav-lc2-2ep --zoo swav      # and the zoo entry
    python benchmarks/swav_collapse.py swav-fixed-2ep --out benchmarks/results/swav-collapse-fixed.json

SwAV's trivial solution is scores that are all zero: uniform predictions and codes, loss log K, no
gradient. For each arm of the named sweeps (``benchmarks/results/sweep-<name>.json``, trained by
``benchmarks/sweep_recipes.py``; their checkpoints stay in ``runs/sweeps/``) and each named zoo entry,
:func:`sslbook.methods.swav.prototype_coverage` on 512 class-balanced CIFAR-10 test images gives how
many directions the features use, whether the prototypes left some direction empty, how much of the
features lies there and the largest score. ``benchmarks/results/swav-collapse.json`` (``--out``) gets
them with the arm's settings and kNN; ``benchmarks/report.py`` shows every ``swav-collapse*.json`` (a
checkpoint's measurements cannot be repeated once ``runs/`` is gone, so a later check gets its own file).
The numbers do not depend on machine load.
"""

from __future__ import annotations

import sys

import torch
from checkpoint_rows import arguments, held_out, sweep_arms, write_results

IMAGES = 512


def measure(method, images: torch.Tensor) -> dict:
    from sslbook.methods.swav import prototype_coverage

    method.eval()
    return prototype_coverage(method.features(images), method.prototypes.weight)


def settings(cfg) -> dict:
    args = cfg.method_args
    return {
        "num_prototypes": args.get("num_prototypes"),
        "epsilon": args.get("epsilon"),
        "freeze_prototypes_epochs": args.get("freeze_prototypes_epochs"),
        "queue_length": args.get("queue_length"),
        "queue_start_epoch": args.get("queue_start_epoch"),
        "local_crops": cfg.data.local_crops,
    }


def check_sweep(name: str, images: torch.Tensor) -> list[dict]:
    rows = []
    for arm, method, cfg in sweep_arms(name, "swav"):
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
    args = arguments(__doc__, "swav-lc2-2ep", "swav", "swav-collapse.json", argv)
    images = held_out(IMAGES)
    rows = [row for name in args.sweeps for row in check_sweep(name, images)]
    rows += [check_zoo(name, images) for name in args.zoo]
    write_results(
        args.out, "swav_collapse.py", argv, images=f"{IMAGES} class-balanced CIFAR-10 test images (seed 0)", rows=rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

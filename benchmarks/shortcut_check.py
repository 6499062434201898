"""Does a context task read the picture, or where its pieces sit in the frame?

    python benchmarks/shortcut_check.py jigsaw-grid relative_patch-grid     # the arms of two sweeps
    python benchmarks/shortcut_check.py jigsaw-grid --zoo jigsaw relative_patch

Our offline CIFAR-10 copy went through JPEG (8 x 8 px blocks for brightness, 16 x 16 px for colour).
Block boundaries leave a faint grid at fixed positions of every image, and a small tile or patch
shows where it was cut relative to that grid: the analogue of the chromatic aberration Doersch et
al. (2015) found, which also tells a patch where it lies in the frame. A network that solves its
puzzle from the grid, not from the content, learns nothing about objects.

The test: the pretext task's own accuracy (:func:`sslbook.diagnostics.shifted_accuracy`) on 2,000
class-balanced test images whose content is moved by 0 to 8 and 16 px before the pieces are cut.
Content hardly changes under a shift of a few pixels; the grid phase of every piece does. For each
arm of the named sweeps (``benchmarks/results/sweep-<name>.json``, trained by
``benchmarks/sweep_recipes.py``; their checkpoints stay in ``runs/sweeps/``) and each named zoo entry,
``benchmarks/results/shortcut-context.json`` (``--out``) gets the accuracy by shift, the arm's kNN,
and the training images' boundary contrast (:func:`sslbook.diagnostics.boundary_contrast`, the grid
itself). The numbers do not depend on machine load.
"""

from __future__ import annotations

import sys

import torch
from checkpoint_rows import arguments, held_out, sweep_arms, write_results

SHIFTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 16]


def check_sweep(name: str, images: torch.Tensor) -> list[dict]:
    from sslbook.diagnostics import shifted_accuracy

    rows = []
    for arm, method, _ in sweep_arms(name, "shortcut"):
        acc = shifted_accuracy(method, images, SHIFTS)
        print(f"[shortcut] {name}/{arm['arm']}: " + ", ".join(f"{s} px {a:.1f}%" for s, a in acc.items()), flush=True)
        rows.append(
            {
                "source": f"sweep {name}",
                "arm": arm["arm"],
                "overrides": arm["overrides"],
                "epochs": arm.get("epochs"),
                "knn200_top1": arm.get("knn200_top1"),
                "accuracy_by_shift": acc,
            }
        )
    return rows


def check_zoo(name: str, images: torch.Tensor) -> dict:
    from sslbook import zoo
    from sslbook.diagnostics import shifted_accuracy

    acc = shifted_accuracy(zoo.load_method(name), images, SHIFTS)
    res = zoo.results(name)
    print(f"[shortcut] zoo {name}: " + ", ".join(f"{s} px {a:.1f}%" for s, a in acc.items()), flush=True)
    cfg = zoo.config(name)  # the recipe it was trained with (an entry retrained later may differ)
    return {
        "source": "zoo",
        "arm": name,
        "epochs": res.get("epochs"),
        "knn200_top1": res.get("knn200_top1"),
        "linear_top1": res.get("linear_top1"),
        "method_args": dict(cfg.method_args),
        "augment": cfg.augment,
        "accuracy_by_shift": acc,
    }


def main(argv=None) -> int:
    args = arguments(__doc__, "jigsaw-grid", "jigsaw relative_patch", "shortcut-context.json", argv)
    from sslbook.data import load_cifar
    from sslbook.diagnostics import boundary_contrast

    images = held_out(2000)
    rows = [row for name in args.sweeps for row in check_sweep(name, images)]
    rows += [check_zoo(name, images) for name in args.zoo]
    train = load_cifar("cifar10", "train").images[:10000]
    write_results(
        args.out,
        "shortcut_check.py",
        argv,
        shifts=SHIFTS,
        images="2,000 class-balanced CIFAR-10 test images (seed 0)",
        boundary_contrast=[round(v, 4) for v in boundary_contrast(train).tolist()],
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

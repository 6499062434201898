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

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHIFTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 16]


def held_out(n: int = 2000):
    from sslbook.data import balanced_indices, load_cifar
    from sslbook.eval import normalize_images

    test = load_cifar("cifar10", "test")
    images = test.images[balanced_indices(test.labels, n, seed=0)]
    return normalize_images(images, test.mean, test.std)


def check_sweep(name: str, images: torch.Tensor) -> list[dict]:
    from sslbook.diagnostics import shifted_accuracy
    from sslbook.trainer import CHECKPOINT, method_from_checkpoint

    path = RESULTS / f"sweep-{name}.json"
    if not path.is_file():
        sys.exit(
            f"shortcut_check: {path} does not exist; "
            f"run benchmarks/sweep_recipes.py {name.split('-')[0]} --name {name} first"
        )
    sweep = json.loads(path.read_text())
    rows = []
    for arm in sweep["arms"]:
        ckpt = Path(arm["out_dir"]) / CHECKPOINT
        if not ckpt.is_file():
            print(f"[shortcut] {name}/{arm['arm']}: no checkpoint at {ckpt} (runs/ is not kept); skipped")
            continue
        method, _ = method_from_checkpoint(ckpt)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", help="sweep names, e.g. jigsaw-grid")
    parser.add_argument("--zoo", nargs="*", default=[], help="zoo entries, e.g. jigsaw relative_patch")
    parser.add_argument("--out", default=str(RESULTS / "shortcut-context.json"))
    args = parser.parse_args(argv)
    if not args.sweeps and not args.zoo:
        parser.error("name at least one sweep or --zoo entry")
    from sslbook.data import load_cifar
    from sslbook.diagnostics import boundary_contrast

    images = held_out()
    rows = [row for name in args.sweeps for row in check_sweep(name, images)]
    rows += [check_zoo(name, images) for name in args.zoo]
    train = load_cifar("cifar10", "train").images[:10000]
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/shortcut_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "shifts": SHIFTS,
        "images": "2,000 class-balanced CIFAR-10 test images (seed 0)",
        "boundary_contrast": [round(v, 4) for v in boundary_contrast(train).tolist()],
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

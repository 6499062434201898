"""What the scripts that measure trained checkpoints share (``shortcut_check.py``, ``swav_collapse.py``):
held-out test images, the checkpoints of a sweep's arms, and the results file they write."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def held_out(n: int) -> torch.Tensor:
    """``n`` class-balanced CIFAR-10 test images (seed 0), normalised."""
    from sslbook.data import balanced_indices, load_cifar
    from sslbook.eval import normalize_images

    test = load_cifar("cifar10", "test")
    return normalize_images(test.images[balanced_indices(test.labels, n, seed=0)], test.mean, test.std)


def arguments(doc: str, sweep_example: str, zoo_example: str, out: str, argv=None) -> argparse.Namespace:
    """The command line the scripts share: sweep names, ``--zoo`` entries (at least one of the two), ``--out``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", help=f"sweep names, e.g. {sweep_example}")
    parser.add_argument("--zoo", nargs="*", default=[], help=f"zoo entries, e.g. {zoo_example}")
    parser.add_argument("--out", default=str(RESULTS / out))
    args = parser.parse_args(argv)
    if not args.sweeps and not args.zoo:
        parser.error("name at least one sweep or --zoo entry")
    return args


def sweep_arms(name: str, tag: str):
    """(arm record, method, config) for each arm of ``results/sweep-<name>.json`` whose checkpoint is still in
    ``runs/sweeps/`` (an arm without one is skipped with a line saying so). A missing sweep ends the script
    with the command that makes it."""
    from sslbook.trainer import CHECKPOINT, method_from_checkpoint

    path = RESULTS / f"sweep-{name}.json"
    if not path.is_file():
        sys.exit(
            f"{tag}: {path} does not exist; run benchmarks/sweep_recipes.py {name.split('-')[0]} --name {name} first"
        )
    for arm in json.loads(path.read_text())["arms"]:
        ckpt = Path(arm["out_dir"]) / CHECKPOINT
        if not ckpt.is_file():
            print(f"[{tag}] {name}/{arm['arm']}: no checkpoint at {ckpt} (runs/ is not kept); skipped")
            continue
        method, cfg = method_from_checkpoint(ckpt)
        yield arm, method, cfg


def write_results(out: str | Path, script: str, argv, **fields) -> None:
    """Write a results file: the date, the command that made it (``script`` and its arguments), then ``fields``."""
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
        **fields,
    }
    Path(out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")

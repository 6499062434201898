"""Command line: ``python -m sslbook train|eval|bench ...``.

python -m sslbook train                                   # SimCLR on CIFAR-10, auto profile
python -m sslbook train configs/cifar10/simclr.yaml optim.lr=0.3 epochs=100
torchrun --nproc_per_node=8 -m sslbook train configs/imagenet/simclr.yaml data.root=/data/imagenet
python -m sslbook eval runs/simclr-cifar10-cpu/checkpoint.pt --linear
python -m sslbook bench --configs cifar10/simclr,cifar10/moco_v2 --profile cpu --minutes 5
python -m sslbook zoo simclr moco_v2                      # the model zoo (sslbook.zoo)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args) -> int:
    from .config import load_config
    from .trainer import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    print(json.dumps(result.results, indent=2))
    return 0


def _eval(args) -> int:
    from . import eval as ev
    from .config import ConfigError
    from .profiles import default_device
    from .trainer import dataset_stats, features_of, load_datasets, method_from_checkpoint

    device = default_device()
    method, cfg = method_from_checkpoint(args.checkpoint, device)
    if args.data_root:
        cfg.data.root = args.data_root
    cfg.data.train_images, cfg.data.test_images = args.train_images, args.test_images
    train_set, test_set = load_datasets(cfg)
    if test_set is None:
        raise ConfigError(
            f"{cfg.data.dataset} at {cfg.data.root} has no test/val split to evaluate on; give the "
            "folder a val/ split of class folders"
        )
    mean, std, size = dataset_stats(train_set, cfg.data.crop_size)
    train_x, train_y = features_of(method, train_set, mean, std, size, device, num_workers=cfg.data.num_workers)
    test_x, test_y = features_of(method, test_set, mean, std, size, device, num_workers=cfg.data.num_workers)
    results = {"checkpoint": str(args.checkpoint), "train_images": len(train_y), "test_images": len(test_y)}
    for k in args.knn_k:
        results[f"knn{k}_top1"] = ev.knn_accuracy(
            train_x, train_y, test_x, test_y, k=k, temperature=cfg.knn_temperature
        )
    if args.linear:
        probe = ev.linear_probe(train_x, train_y, test_x, test_y, epochs=args.linear_epochs)
        results["linear_top1"] = probe["test_top1"]
    print(json.dumps(results, indent=2))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval.json")
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _bench(args) -> int:
    from .bench import expand_configs, pixel_baseline, results_table, run_all, save_results
    from .config import ConfigError, load_config
    from .trainer import load_datasets

    if args.minutes is not None and not args.minutes > 0:
        raise ConfigError(f"--minutes must be a positive number of minutes per method, got {args.minutes:g}")
    names = expand_configs(args.configs)
    overrides = (
        ([f"profile={args.profile}"] if args.profile else [])
        + ([f"max_minutes={args.minutes}"] if args.minutes is not None else [])
        + list(args.set)
    )
    profile = load_config(names[0], overrides).profile
    out = Path(args.out or f"benchmarks/results/bench-{profile}.json")
    overrides_for: dict = {}
    for name, *values in args.set_for:
        bad = [v for v in values if "=" not in v]
        if not values or bad:
            raise ConfigError(
                f"--set-for {name} needs KEY=VALUE overrides after the config name, got {' '.join(values) or 'none'}"
            )
        overrides_for.setdefault(name, []).extend(values)
    rows = run_all(
        names, args.runs, overrides, overrides_for=overrides_for, reuse=not args.no_reuse, linear=not args.no_linear
    )
    # The raw-pixel baseline on the same images (the first config's data), stored with the rows.
    pixels = pixel_baseline(datasets=load_datasets(load_config(names[0], overrides)), linear=not args.no_linear)
    save_results(
        rows,
        out,
        command="python -m sslbook " + " ".join(args.argv),
        overrides=overrides,
        overrides_for=overrides_for,
        pixels=pixels,
    )
    print(results_table(rows, baseline={**pixels, "config": "raw pixels"}))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _zoo(args) -> int:
    from .zoo import main as zoo_main

    return zoo_main(args.zoo_args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sslbook", description="Contrastive self-supervised learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="pre-train a method",
        description="Pre-train a method. Overrides are "
        "key=value pairs, e.g. optim.lr=0.3 epochs=100 method_args.temperature=0.2 profile=cpu",
    )
    p.add_argument("config", nargs="?", default=None, help="a YAML config (default: SimCLR on CIFAR-10)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(run=_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint with kNN and a linear probe")
    p.add_argument("checkpoint")
    p.add_argument("--knn-k", type=int, nargs="+", default=[200, 20])
    p.add_argument("--linear", action="store_true", help="also train a linear probe on frozen features")
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--data-root", default=None)
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--out", default=None, help="results file (default: eval.json beside the checkpoint)")
    p.set_defaults(run=_eval)

    p = sub.add_parser(
        "bench",
        help="train several methods under one budget and tabulate them",
        description="Train each config with the same profile, budget and overrides into "
        "RUNS/<name>-<profile> (a finished run there with the same settings is reused), add a "
        "linear probe, write a JSON results file and print a Markdown table.",
    )
    p.add_argument(
        "--configs",
        required=True,
        help="comma-separated config names, e.g. "
        "cifar10/simclr,cifar10/moco_v2, or 'all' (every shipped CIFAR-10 config)",
    )
    p.add_argument(
        "--profile",
        choices=("smoke", "cpu", "gpu"),
        default=None,
        help="run profile (default: $SSLBOOK_PROFILE, else gpu with CUDA, else cpu)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget per method in minutes (default: the profile's; same as --set max_minutes=M)",
    )
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/bench-<profile>.json)")
    p.add_argument("--runs", default="runs/bench", help="folder of the runs (default: runs/bench)")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every method, e.g. --set optim.lr=0.1 seed=1",
    )
    p.add_argument(
        "--set-for",
        nargs="+",
        action="append",
        default=[],
        metavar=("CONFIG", "KEY=VALUE"),
        help="overrides for one config only, after the common ones, e.g. --set-for swav "
        "method_args.queue_start_epoch=0 (repeatable)",
    )
    p.add_argument("--no-linear", action="store_true", help="skip the linear probe (kNN only)")
    p.add_argument(
        "--no-reuse", action="store_true", help="retrain even when a finished run with the same settings is there"
    )
    p.set_defaults(run=_bench)

    p = sub.add_parser("zoo", help="train, resume or reuse model-zoo entries (see: zoo --help)", add_help=False)
    p.add_argument("zoo_args", nargs=argparse.REMAINDER)
    p.set_defaults(run=_zoo)

    if list(sys.argv[1:] if argv is None else argv)[:1] == ["zoo"]:  # the zoo parses its own options
        return _zoo(argparse.Namespace(zoo_args=list(sys.argv[2:] if argv is None else argv[1:])))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # A config file given without overrides may have been mistaken for an override, and vice versa.
    if getattr(args, "config", None) and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    from .bench import BenchError
    from .config import ConfigError
    from .data import DatasetFormatError, DatasetNotFoundError
    from .trainer import CheckpointError, TrainingDiverged

    try:
        return args.run(args)
    except (ConfigError, DatasetNotFoundError, DatasetFormatError, CheckpointError, TrainingDiverged, BenchError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(error: Exception) -> str:
    """The error's own message on one line. An error raised in a DataLoader worker arrives wrapped in
    "Caught X in DataLoader worker process 0. Original Traceback ...": keep only the original message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        text = last.split(prefix, 1)[-1] if prefix in last else last.split(": ", 1)[-1]
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())

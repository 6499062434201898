"""Recipe sweeps: which settings make a method learn fastest in a short run on this machine.

    python benchmarks/sweep_recipes.py simclr --epochs 2 --arm base: --arm t02:method_args.temperature=0.2 \\
        --arm b128:batch_size=128
    python benchmarks/sweep_recipes.py moco_v2 --name moco_v2-queue --epochs 4 \\
        --arm k4096: --arm k16384:method_args.queue_size=16384 --arm m0.9:method_args.momentum=0.9
    python benchmarks/sweep_recipes.py swav --minutes 10 --arm base: --arm lr2:optim.lr=0.6 optim.warmup_epochs=0
    python benchmarks/sweep_recipes.py --table benchmarks/results/sweep-simclr.json   # Markdown table

An *arm* is ``NAME:`` followed by config overrides (``KEY=VALUE``; more may follow as separate words).
Every arm trains the shipped config ``cifar10/<config>`` in the ``cpu`` profile (``--profile``), with
the common ``--set`` overrides, then the arm's, for ``--epochs`` epochs (the schedule is planned over
them; no wall-clock budget) or, with ``--minutes``, for that wall-clock budget (the trainer plans the
schedule from timed steps; ``--epochs`` then caps it). Each arm runs ``python -m sslbook train`` in its
own process, into ``runs/sweeps/<name>/<arm>/`` (``--runs``):

- a finished arm whose checkpoint has the same effective settings is reused (not retrained);
- an unfinished one (a stopped sweep) resumes exactly from its checkpoint;
- one trained with other settings is retrained from scratch, with a line saying why.

After each arm, ``benchmarks/results/sweep-<name>.json`` (``--out``) is rewritten with every arm so far:
kNN top-1 at the end (k=200 and k=20, T=0.1, the whole test set), the kNN-monitor curve (epoch,
training minutes, kNN k=200: every ``eval_every`` epochs, the profile's unless ``--set eval_every=N``),
epochs, steps, training minutes, images/s, up to 100 of the trainer's step records (loss, the method's
own metrics such as SimSiam's output std), the load average (1/5/15 min) before and after, and the
exact command. Only run it alone on the machine: images/s and a ``--minutes`` budget depend on load
(``--lock /tmp/sslbook-run.lock`` makes each arm wait for, and hold, a lock that other runs share).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARM_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class SweepError(ValueError):
    """A sweep that cannot run as given."""


def parse_arm(words: list[str]) -> tuple[str, list[str]]:
    """``["t02:method_args.temperature=0.2", "optim.lr=0.1"]`` -> ("t02", [both overrides])."""
    head, *rest = words
    if ":" not in head:
        raise SweepError(
            f"arm {head!r} must be NAME: followed by KEY=VALUE overrides, e.g. "
            "t02:method_args.temperature=0.2 (or base: for no overrides)"
        )
    name, first = head.split(":", 1)
    if not ARM_NAME.match(name):
        raise SweepError(f"arm name {name!r} must be letters, digits and _.+- only (it names a folder)")
    overrides = ([first] if first else []) + rest
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise SweepError(f"arm {name}: {bad[0]!r} is not KEY=VALUE")
    return name, overrides


def arm_overrides(args, overrides: list[str]) -> list[str]:
    budget = [f"max_minutes={args.minutes}"] if args.minutes is not None else ["max_minutes=null"]
    epochs = [f"epochs={args.epochs}"] if args.epochs is not None else []
    return [f"profile={args.profile}", *budget, *epochs, *args.set, *overrides]


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plan_resume(out_dir: Path, cfg) -> tuple[str, str]:
    """(what to do, why): "reuse" a finished run with these settings, "resume" an unfinished one, or
    "train" afresh (nothing there, or a run with other settings)."""
    from sslbook.bench import config_differences
    from sslbook.trainer import CHECKPOINT, CheckpointError, read_checkpoint

    path = out_dir / CHECKPOINT
    if not path.is_file():
        return "train", "new"
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as e:
        return "train", f"its checkpoint is unusable ({e})"
    diffs = [d for d in config_differences(ckpt["config"], cfg) if not d.startswith("max_steps:")]
    if diffs:
        return "train", "it was trained with other settings (" + "; ".join(diffs[:3]) + ")"
    if ckpt["state"].get("finished") and (out_dir / "results.json").is_file():
        return "reuse", "finished with these settings"
    return "resume", f"unfinished, step {ckpt['state'].get('step')} of {ckpt['state'].get('total_steps')}"


@contextlib.contextmanager
def machine_lock(path):
    """Hold ``path`` (``fcntl.flock``, waiting for it if another run holds it), or nothing if None."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[sweep] waiting for {path} (another run holds it)", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_arm(config: str, name: str, overrides: list[str], out_dir: Path, reuse: bool = True, lock=None) -> dict:
    """Train one arm in its own process (or reuse / resume it) and return its results row; with ``lock``
    (a file path) the training holds that lock, so runs that share it never overlap."""
    from sslbook.config import load_config
    from sslbook.trainer import CHECKPOINT, read_checkpoint

    cfg = load_config(config, [*overrides, f"out_dir={out_dir}"])
    action, why = plan_resume(out_dir, cfg) if reuse else ("train", "--no-reuse")
    print(f"[sweep] {name}: {action} ({why}) in {out_dir}", flush=True)
    row = {"arm": name, "overrides": overrides, "out_dir": str(out_dir), "reused": action == "reuse"}
    if action != "reuse":
        resume = ["resume=auto"] if action == "resume" else ["resume=never", "overwrite=true"]
        command = [
            sys.executable,
            "-m",
            "sslbook",
            "train",
            config,
            *overrides,
            f"out_dir={out_dir}",
            "progress=false",
            *resume,
        ]
        with machine_lock(lock):
            before, start = _loadavg(), time.perf_counter()
            proc = subprocess.run(command, cwd=ROOT)
        row.update(
            load_average=[before, _loadavg()],
            wall_minutes=(time.perf_counter() - start) / 60,
            command=shlex.join(["python", *command[1:]]),
        )
        if proc.returncode != 0:
            row["error"] = f"exit code {proc.returncode}"
            return row
        sitting = {k: row[k] for k in ("load_average", "wall_minutes", "command")}
        (out_dir / "sweep_arm.json").write_text(json.dumps(sitting, indent=2))
    elif (out_dir / "sweep_arm.json").is_file():  # reused: how and under what load it was trained
        row.update(json.loads((out_dir / "sweep_arm.json").read_text()))
    results = json.loads((out_dir / "results.json").read_text())
    log = _records(out_dir / "metrics.jsonl")
    curve = [
        [r["eval"]["epoch"], round(r["eval"]["train_minutes"], 2), r["eval"]["knn200_top1"]]
        for r in log
        if "eval" in r and "knn200_top1" in r["eval"]
    ]
    row.update(
        {
            k: results.get(k)
            for k in (
                "knn200_top1",
                "knn20_top1",
                "epochs",
                "steps",
                "train_minutes",
                "images_per_s",
                "batch_size",
                "encoder",
                "train_images",
            )
        }
    )
    if results.get("knn200_top1") is not None:  # the final evaluation ends the curve
        curve.append([results["epochs"], round(results["train_minutes"], 2), results["knn200_top1"]])
    row["knn_curve"] = curve  # [epoch, training minutes, kNN k=200 %]
    row["step_curve"] = thin_steps(log)  # what the trainer logged (loss, output_std, ...), at most 100 records
    row["finished"] = read_checkpoint(out_dir / CHECKPOINT)["state"].get("finished", False)
    return row


def thin_steps(log: list[dict], points: int = 100) -> list[dict]:
    """At most ``points`` of the training-step records of a metrics log, evenly spaced and always
    including the last, with their numeric fields only (step, epoch, loss, lr, the method's metrics)."""
    steps = [r for r in log if "step" in r and "loss" in r]
    keep = steps[:: max(1, -(-len(steps) // points))]
    if steps and keep[-1] is not steps[-1]:
        keep = keep[: points - 1] + [steps[-1]]
    return [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for r in keep]


def write(path: Path, sweep: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(sweep, indent=2))
    os.replace(tmp, path)


def markdown_table(sweep: dict) -> str:
    """A Markdown table of a sweep results file: one row per arm, best kNN first marked in bold."""
    rows = [r for r in sweep["arms"] if r.get("knn200_top1") is not None]
    best = max((r["knn200_top1"] for r in rows), default=None)
    lines = [
        f"`{sweep['command']}` ({sweep['date']}, {sweep['profile']} profile, budget: {sweep['budget']})",
        "",
        "| arm | overrides | epochs | train min | images/s | kNN k=200 | kNN k=20 | kNN curve (epoch: %) "
        "| load avg before / after |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in sweep["arms"]:
        if r.get("knn200_top1") is None:
            lines.append(f"| {r['arm']} | {' '.join(r['overrides_arm']) or '-'} | {r.get('error', 'not run')} |||||||")
            continue
        knn = f"{r['knn200_top1']:.2f}%"
        knn = f"**{knn}**" if r["knn200_top1"] == best else knn
        knn = knn if r.get("finished", True) else f"{knn} (stopped early)"
        curve = ", ".join(f"{e:g}: {k:.1f}" for e, _, k in r["knn_curve"]) or "-"
        load = r.get("load_average")
        load = " / ".join(str(v[0]) if v else "?" for v in load) if load else "?"
        lines.append(
            f"| {r['arm']} | {' '.join(r['overrides_arm']) or '-'} | {r['epochs']:.1f} | "
            f"{r['train_minutes']:.1f} | {r['images_per_s']:.0f} | {knn} | {r.get('knn20_top1', 0):.2f}% | "
            f"{curve} | {load} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="a CIFAR-10 config name (simclr, moco_v2, ...) or a YAML path")
    parser.add_argument(
        "--arm",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME:[KEY=VALUE]",
        help="an arm: NAME: then its overrides (repeatable)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per arm (the schedule's length)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget per arm instead")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for every arm, before the arm's own",
    )
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "gpu"))
    parser.add_argument(
        "--name",
        default=None,
        help="sweep name (default: the config's): runs/sweeps/<name>, benchmarks/results/sweep-<name>.json",
    )
    parser.add_argument("--runs", default=str(ROOT / "runs" / "sweeps"), help="folder of the sweeps' runs")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/sweep-<name>.json)")
    parser.add_argument("--no-reuse", action="store_true", help="retrain finished arms")
    parser.add_argument(
        "--lock",
        default=None,
        metavar="FILE",
        help="hold this lock file while an arm trains "
        "(waiting for it if taken), e.g. /tmp/sslbook-run.lock, so runs sharing it never overlap",
    )
    parser.add_argument("--table", metavar="RESULTS", help="print the Markdown table of a results file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return 0
    from sslbook.bench import config_name
    from sslbook.config import ConfigError, load_config

    try:
        if not args.config or not args.arm:
            raise SweepError(
                "give a config and at least one --arm, e.g. simclr --epochs 2 --arm base: "
                "--arm t02:method_args.temperature=0.2"
            )
        if args.epochs is None and args.minutes is None:
            raise SweepError("give a budget: --epochs N (deterministic) or --minutes M (wall clock)")
        config = config_name(args.config)
        arms = [parse_arm(words) for words in args.arm]
        names = [n for n, _ in arms]
        if len(set(names)) != len(names):
            raise SweepError(f"arm names must differ, got {', '.join(names)}")
        name = args.name or Path(config).stem
        for arm, overrides in arms:  # every arm's config is checked before anything trains
            load_config(config, arm_overrides(args, overrides))
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else RESULTS / f"sweep-{name}.json"
    sweep = {
        "sweep": name,
        "config": config,
        "profile": args.profile,
        "budget": f"{args.minutes:g} min" if args.minutes is not None else f"{args.epochs} epochs",
        "common_overrides": args.set,
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "benchmarks/sweep_recipes.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "arms": [],
    }
    for arm, overrides in arms:
        row = run_arm(
            config,
            arm,
            arm_overrides(args, overrides),
            Path(args.runs) / name / arm,
            reuse=not args.no_reuse,
            lock=args.lock,
        )
        row["overrides_arm"] = overrides
        sweep["arms"].append(row)
        write(out, sweep)
    print(markdown_table(sweep))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

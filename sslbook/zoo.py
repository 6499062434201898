"""The model zoo: one trained network per method, made by the book's own trainer.

    python -m sslbook zoo simclr moco_v2          # train (or resume, or reuse) two entries
    python -m sslbook zoo --list                  # what is there, and how far each entry got
    backbone = load_backbone("simclr")            # in a chapter: the trained encoder, ready to use

Layout (``zoo/`` beside the package, or ``$SSLBOOK_ZOO``)::

    zoo/cifar10-cpu/<name>/
        config.yaml      the effective config the entry was trained with
        metrics.jsonl    the trainer's log: losses, images/s and the kNN curve (``{"eval": ...}`` records)
        results.json     knn200_top1, knn20_top1, linear_top1 (%), epochs, train_minutes, images_per_s,
                         load_average, date, command, ...
        <name>.pt        the weights: a dict of plain tensors, ``torch.load(..., weights_only=True)``
        run/             the trainer's work folder (checkpoint.pt, git-ignored): a run that is stopped
                         resumes exactly from here the next time the same command runs

Every entry is trained by :func:`sslbook.trainer.train` in the ``cpu`` profile for a budget in
*epochs* (no wall-clock budget), so what it learns does not depend on how busy the machine was; only
``train_minutes``, ``images_per_s`` and ``load_average`` do, and they are stored with it.

The weights are the method's ``state_dict`` (backbone, heads, momentum copies) without its big
non-parameter buffers -- queues, memory banks, label lists: more than :data:`BIG_BUFFER` elements,
which only training needs -- with floating-point tensors stored as fp16 (the SimCLR entry, a
ResNet-18 at width 16 with its head, is 1.5 MB; all eighteen stay far under the 80 MB the zoo may
take). :func:`load_method` rebuilds the method from ``config.yaml`` and loads them (the dropped
buffers keep their fresh values).

The entries, their configs and epoch budgets are the table :data:`ENTRIES`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml
from torch import nn

from .config import Config, ConfigError, from_dict, load_config
from .data import DatasetFormatError, DatasetNotFoundError
from .trainer import (
    CHECKPOINT,
    CheckpointError,
    TrainingDiverged,
    build_model,
    dataset_stats,
    load_datasets,
    read_checkpoint,
    train,
)

ZOO_ENV = "SSLBOOK_ZOO"
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "zoo"
WEIGHTS_FORMAT = "sslbook-zoo-weights-1"
BIG_BUFFER = 4096  # non-parameter buffers with more elements than this (queues, banks, labels) are not exported
# Keys that may differ between the sittings of one entry without changing what it trains.
SITTING_KEYS = ("max_steps",)


@dataclass(frozen=True)
class Entry:
    config: str  # a shipped config name
    epochs: int  # the training budget
    family: str  # architecture | pretext | reference | visualisation
    overrides: tuple = ()  # config overrides on top of the config's cpu-profile recipe


ENTRIES = {
    # the eight architecture methods
    "simclr": Entry("cifar10/simclr", 40, "architecture"),
    "instdisc": Entry("cifar10/instdisc", 50, "architecture"),
    "pirl": Entry("cifar10/pirl", 50, "architecture"),  # InstDisc's budget: PIRL is InstDisc plus the jigsaw term
    "moco_v1": Entry("cifar10/moco_v1", 40, "architecture"),
    "moco_v2": Entry("cifar10/moco_v2", 40, "architecture"),
    # fixed prototypes; 20, not SimSiam's 30: in fp32 on a CPU without bf16 an epoch takes 5 min (2.4 in bf16),
    # and 30 would not fit one sitting of the machine that trained it (zoo/README.md)
    "swav": Entry("cifar10/swav", 20, "architecture"),
    "simsiam": Entry("cifar10/simsiam", 30, "architecture"),
    "byol": Entry("cifar10/byol", 40, "architecture"),
    # the seven pretext tasks, at equal compute: about 30 minutes of 2 cores each, as epochs (so the run
    # stays deterministic): 30 min x the task's images/s in the 2-minute comparison (bench-cpu.json) /
    # 50,000 images. Their per-image costs differ 12-fold (CPC 73 images/s, jigsaw 917, in the file of 2026-11-22).
    "rotation": Entry("cifar10/rotation", 8, "pretext"),
    "jigsaw": Entry("cifar10/jigsaw", 32, "pretext"),
    "relative_patch": Entry("cifar10/relative_patch", 30, "pretext"),
    "colorization": Entry("cifar10/colorization", 20, "pretext"),
    "cmc": Entry("cifar10/cmc", 24, "pretext"),
    "temporal": Entry("cifar10/temporal", 8, "pretext"),
    "cpc": Entry("cifar10/cpc", 3, "pretext"),
    # the same encoder trained with the labels
    "supervised": Entry("cifar10/supervised", 30, "reference"),
    # for the pictures of first-layer filters: the same networks with a 7x7 stem (at stride 1), whose
    # filters are big enough to show an edge or a colour blob (a 3x3 filter is nine pixels)
    "simclr_k7": Entry("cifar10/simclr", 10, "visualisation", ("model.stem_kernel=7",)),
    "supervised_k7": Entry("cifar10/supervised", 10, "visualisation", ("model.stem_kernel=7",)),
}


class ZooError(RuntimeError):
    """A zoo entry or command that cannot be used as it is."""


def _say(message: str) -> None:
    print(f"[zoo] {message}", flush=True)


# --------------------------------------------------------------------------- names and folders
def entries() -> list[str]:
    """The names of the zoo's entries, in the order of :data:`ENTRIES`."""
    return list(ENTRIES)


def entry_spec(name: str) -> Entry:
    if name not in ENTRIES:
        raise ZooError(f"unknown zoo entry {name!r}; valid: all, {', '.join(ENTRIES)}")
    return ENTRIES[name]


def zoo_root(root: Optional[str | Path] = None) -> Path:
    """``root``, else ``$SSLBOOK_ZOO``, else the ``zoo/`` folder beside the package."""
    return Path(root or os.environ.get(ZOO_ENV) or DEFAULT_ROOT).expanduser()


def entry_dir(name: str, root: Optional[str | Path] = None, profile: str = "cpu", dataset: str = "cifar10") -> Path:
    """``<root>/<dataset>-<profile>/<name>``: where an entry lives."""
    entry_spec(name)
    return zoo_root(root) / f"{dataset}-{profile}" / name


def entry_config(
    name: str, epochs: Optional[int] = None, overrides: Sequence[str] = (), root: Optional[str | Path] = None
) -> Config:
    """The config an entry is trained with: its shipped config in the ``cpu`` profile, no time budget,
    ``epochs`` (default the table's), the table's overrides, then ``overrides`` (which may even change the
    profile: the tests use ``profile=smoke``); ``out_dir`` is the entry's ``run/`` folder, resumed."""
    spec = entry_spec(name)
    epochs = spec.epochs if epochs is None else epochs
    cfg = load_config(
        spec.config, ["profile=cpu", "max_minutes=null", f"epochs={epochs}", *spec.overrides, *overrides, "resume=auto"]
    )
    cfg.out_dir = str(entry_dir(name, root, cfg.profile, cfg.data.dataset) / "run")
    return cfg


def _command(name: str, epochs: Optional[int], overrides: Sequence[str]) -> str:
    parts = ["python", "-m", "sslbook", "zoo", name]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    if overrides:
        parts += ["--set", *overrides]
    return shlex.join(parts)


@contextlib.contextmanager
def stop_on_sigterm():
    """Treat SIGTERM (``kill``, a job scheduler, a closing terminal's session) like Ctrl-C: the sitting is
    recorded and the last checkpoint kept. Background jobs of a shell ignore SIGINT, so SIGTERM is how
    a long zoo run in the background is stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def zoo_lock(root: Optional[str | Path] = None):
    """Hold ``<root>/.lock`` (``fcntl.flock``) for the duration: two zoo runs never train at once, because
    the numbers an entry stores are only honest when it had the machine to itself."""
    root = zoo_root(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ZooError(
                f"another zoo run holds {path} (pid {holder}); wait for it to finish, entries must "
                "train alone on the machine"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield path
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- settings
def _stored_config(folder: Path) -> Optional[dict]:
    """The config an entry (finished: its config.yaml; unfinished: its checkpoint) was made with."""
    if (folder / "results.json").is_file() and (folder / "config.yaml").is_file():
        return yaml.safe_load((folder / "config.yaml").read_text())
    ckpt = folder / "run" / CHECKPOINT
    if ckpt.is_file():
        try:
            return read_checkpoint(ckpt)["config"]
        except CheckpointError:
            return None
    return None


def settings_differences(folder: Path, cfg: Config) -> list[str]:
    """``["epochs: 30 -> 40", ...]``: how ``cfg`` differs from what the entry in ``folder`` was made with
    (keys that cannot change the trained network, and ``max_steps``, are not compared)."""
    from .bench import config_differences

    stored = _stored_config(folder)
    if stored is None:
        return []
    try:
        diffs = config_differences(stored, cfg)
    except ConfigError as e:
        return [f"its config no longer loads ({e})"]
    return [d for d in diffs if d.split(":", 1)[0] not in SITTING_KEYS]


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# --------------------------------------------------------------------------- weights
def exported_state(method: nn.Module, dtype: torch.dtype = torch.float16) -> tuple[dict, list[str]]:
    """(state, dropped): the method's state_dict without buffers of more than :data:`BIG_BUFFER` elements,
    floating-point tensors cast to ``dtype``, contiguous on the CPU; and the names of the dropped buffers."""
    parameters = {name for name, _ in method.named_parameters()}
    state, dropped = {}, []
    for key, value in method.state_dict().items():
        if key not in parameters and value.numel() > BIG_BUFFER:
            dropped.append(key)
            continue
        value = value.detach().cpu().contiguous()
        state[key] = value.to(dtype) if value.is_floating_point() else value.clone()
    return state, dropped


def save_weights(
    method: nn.Module, path: str | Path, cfg: Config, num_data: int, mean, std, dtype: torch.dtype = torch.float16
) -> Path:
    """Write an entry's weights file (atomically): plain tensors, strings and numbers only."""
    state, dropped = exported_state(method, dtype)
    payload = {
        "format": WEIGHTS_FORMAT,
        "method": cfg.method,
        "state_dict": state,
        "dropped": dropped,
        "num_data": int(num_data),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_weights(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path} does not exist; train the entry first (python -m sslbook zoo {path.stem})")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ZooError(f"{path} is not a zoo weights file ({WEIGHTS_FORMAT})")
    return payload


def _finished_folder(name: str, root, profile: str) -> Path:
    folder = entry_dir(name, root, profile)
    if not (folder / "results.json").is_file():
        raise ZooError(
            f"zoo entry {name} is not trained in {folder}; run: python -m sslbook zoo {name} "
            f"(or set ${ZOO_ENV} to a copy of the book repository's zoo/ folder)"
        )
    return folder


def config(name: str, root: Optional[str | Path] = None, profile: str = "cpu") -> Config:
    """The config an entry was trained with (its config.yaml)."""
    return from_dict(yaml.safe_load((_finished_folder(name, root, profile) / "config.yaml").read_text()))


def load_method(name: str, root: Optional[str | Path] = None, profile: str = "cpu", device="cpu") -> nn.Module:
    """An entry's trained method (backbone and heads), rebuilt from its config.yaml, in eval mode.

    The buffers that were not exported (queues, memory banks, labels) are freshly initialised: the
    method is for evaluation and visualisation, not for continuing its training (``run/`` is for that).
    """
    folder = _finished_folder(name, root, profile)
    cfg = config(name, root, profile)
    weights = read_weights(folder / f"{name}.pt")
    method = build_model(cfg, num_data=weights["num_data"], mean=weights["mean"], std=weights["std"])
    own = method.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in weights["state_dict"].items()}
    missing, unexpected = method.load_state_dict(state, strict=False)
    if unexpected or set(missing) != set(weights["dropped"]):
        raise ZooError(
            f"{folder / f'{name}.pt'} does not fit the method its config.yaml builds "
            f"(missing {sorted(set(missing) - set(weights['dropped']))[:3]}, unexpected {unexpected[:3]}); "
            f"retrain it: python -m sslbook zoo {name} --force"
        )
    return method.to(device).eval()


def load_backbone(name: str, zoo_root: Optional[str | Path] = None, profile: str = "cpu", device="cpu") -> nn.Module:
    """The trained encoder of an entry (the network the book evaluates), in eval mode.

    It is the method's ``backbone`` as the entry's config builds it: a ResNet-18 at the config's width
    and stem (CMC's and colorization's read the channels their method feeds them).
    """
    return load_method(name, zoo_root, profile, device).backbone


def results(name: str, root: Optional[str | Path] = None, profile: str = "cpu") -> dict:
    """An entry's results.json."""
    return json.loads((_finished_folder(name, root, profile) / "results.json").read_text())


def trained(name: str, root: Optional[str | Path] = None, profile: str = "cpu") -> bool:
    """Whether the entry is finished (its results.json and weights are there)."""
    folder = entry_dir(name, root, profile)
    return (folder / "results.json").is_file() and (folder / f"{name}.pt").is_file()


# What the papers and reference implementations report for each entry's recipe on CIFAR-10 (ResNet-18
# at full width, hundreds of epochs), with the source; where no CIFAR-10 number exists, the ImageNet one.
PUBLISHED = {
    "simclr": "84.8% kNN, 200 ep. (lightly benchmark)",
    "instdisc": "80.8% kNN (Wu et al. 2018, Table 1)",
    "pirl": "ImageNet: 63.6% linear, R-50 (Misra & van der Maaten 2020)",
    "moco_v1": "82.6% kNN, 200 ep., demo's v1-like setting (facebookresearch/moco CIFAR demo)",
    "moco_v2": "85.3% kNN, 200 ep., symmetric loss (facebookresearch/moco CIFAR demo)",
    "swav": "89.17% linear, 1000 ep. (solo-learn)",
    "simsiam": "91.8% linear, 800 ep. (Chen & He 2021, App. D)",
    "byol": "86.8% kNN, 200 ep. (lightly benchmark)",
}


def row(name: str, root: Optional[str | Path] = None, profile: str = "cpu") -> dict:
    """An entry as a row of :mod:`sslbook.report`'s tables and figures: its results.json, plus
    ``out_dir`` (the entry's folder, whose metrics.jsonl holds the kNN curve), ``config``,
    ``images_seen`` and ``published`` (:data:`PUBLISHED`, where there is a number)."""
    res = results(name, root, profile)
    return {
        **res,
        "config": name,
        "images_seen": res["steps"] * res["batch_size"],
        "published": PUBLISHED.get(name),
        "out_dir": str(entry_dir(name, root, profile)),
    }


def knn_curve(name: str, root: Optional[str | Path] = None, profile: str = "cpu") -> list[tuple[float, float]]:
    """The entry's kNN curve (k=200) as (epoch, top-1 %) pairs, from its metrics.jsonl, final value last."""
    from .report import metric_history

    entry = row(name, root, profile)
    per_step = entry["epochs"] / max(1, entry["steps"])
    return [(step * per_step, knn) for _, step, knn in metric_history(entry, "knn200_top1")]


def first_epoch_above(curve: Sequence[tuple[float, float]], value: float) -> Optional[float]:
    """The first epoch of a :func:`knn_curve` at which the kNN is above ``value`` (e.g. raw pixels), or
    None if it never is."""
    return next((epoch for epoch, knn in curve if knn > value), None)


def weights_megabytes(root: Optional[str | Path] = None) -> float:
    """The size of every weights file of the zoo (the part that is committed), in MB."""
    return sum(p.stat().st_size for p in zoo_root(root).glob("*/*/*.pt")) / 1e6


# --------------------------------------------------------------------------- training an entry
def _finished_line(name: str, res: dict) -> str:
    return f"{name}: finished, {res['train_minutes']:.1f} min, kNN {res['knn200_top1']:.1f}%"


def train_entry(
    name: str,
    epochs: Optional[int] = None,
    force: bool = False,
    overrides: Sequence[str] = (),
    root: Optional[str | Path] = None,
    note: Optional[str] = None,
) -> Optional[dict]:
    """Train, resume or reuse one zoo entry; returns its results, or None if the run stopped before
    its end (``max_steps``; run the same command again to resume). ``note`` is kept with this sitting
    (e.g. what else ran on the machine meanwhile).

    A finished entry with the same settings is reused. An entry made with other settings is refused
    (:class:`ZooError` naming the keys) unless ``force``, which deletes it and trains afresh; ``force``
    also retrains an entry whose settings are the same.
    """
    cfg = entry_config(name, epochs, overrides, root)
    folder = Path(cfg.out_dir).parent
    run_dir = Path(cfg.out_dir)
    if force and folder.exists():
        _say(f"{name}: --force, deleting {folder}")
        shutil.rmtree(folder)
    diffs = settings_differences(folder, cfg)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ZooError(
            f"zoo entry {name} in {folder} was made with other settings ({shown}); pass --force to retrain it"
        )
    if (folder / "results.json").is_file() and (folder / f"{name}.pt").is_file():
        res = json.loads((folder / "results.json").read_text())
        _say(_finished_line(name, res))
        return res

    folder.mkdir(parents=True, exist_ok=True)
    sittings_path = run_dir / "sittings.json"
    sittings = json.loads(sittings_path.read_text()) if sittings_path.is_file() else []
    if (run_dir / CHECKPOINT).is_file():
        state = read_checkpoint(run_dir / CHECKPOINT)["state"]
        _say(f"{name}: resuming {run_dir} at step {state['step']} of {state['total_steps']}")
    else:
        _say(f"{name}: training {cfg.epochs} epochs into {run_dir} ({cfg.profile} profile)")
    datasets = load_datasets(cfg)
    train_set, test_set = datasets
    mean, std, _ = dataset_stats(train_set, cfg.data.crop_size)

    sitting = {"date": _now(), "load_average_start": _loadavg(), **({"note": note} if note else {})}
    wall = time.perf_counter()
    try:
        result = train(cfg, datasets=datasets)
    finally:  # a sitting ended by Ctrl-C or an error is recorded too (up to its last checkpoint)
        state = read_checkpoint(run_dir / CHECKPOINT)["state"] if (run_dir / CHECKPOINT).is_file() else {}
        sitting.update(
            load_average_end=_loadavg(), wall_minutes=(time.perf_counter() - wall) / 60, steps=state.get("step", 0)
        )
        sittings.append(sitting)
        if run_dir.is_dir():
            sittings_path.write_text(json.dumps(sittings, indent=2))
    if not state["finished"]:
        _say(
            f"{name}: stopped at step {state['step']} of {state['total_steps']} "
            f"({sitting['wall_minutes']:.1f} min); run the same command again to resume"
        )
        return None

    from .bench import LINEAR_EPOCHS, linear_top1

    res = dict(result.results)
    if test_set is not None:
        res["linear_top1"] = linear_top1(result.method, train_set, test_set, epochs=LINEAR_EPOCHS)
        res["linear_epochs"] = LINEAR_EPOCHS
    res.update(
        entry=name,
        config=entry_spec(name).config,
        load_average={"start": sittings[0]["load_average_start"], "end": sittings[-1]["load_average_end"]},
        sittings=sittings,
        date=_now(),
        command=_command(name, epochs, overrides),
    )
    shutil.copyfile(run_dir / "config.yaml", folder / "config.yaml")
    shutil.copyfile(run_dir / "metrics.jsonl", folder / "metrics.jsonl")
    save_weights(result.method, folder / f"{name}.pt", cfg, len(train_set), mean, std)
    tmp = folder / ".results.json.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, folder / "results.json")  # written last: its presence marks a finished entry
    _say(
        f"{name}: trained in {res['train_minutes']:.1f} min over {len(sittings)} sitting(s) "
        f"(this one {sitting['wall_minutes']:.1f} min wall), kNN {res['knn200_top1']:.1f}%, "
        f"linear {res.get('linear_top1', float('nan')):.1f}%"
    )
    return res


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def status(
    name: str, epochs: Optional[int] = None, overrides: Sequence[str] = (), root: Optional[str | Path] = None
) -> str:
    """One line: finished (minutes, kNN), unfinished (step of steps) or not trained."""
    folder = Path(entry_config(name, epochs, overrides, root).out_dir).parent
    if (folder / "results.json").is_file():
        return _finished_line(name, json.loads((folder / "results.json").read_text()))
    if (folder / "run" / CHECKPOINT).is_file():
        try:
            state = read_checkpoint(folder / "run" / CHECKPOINT)["state"]
            return f"{name}: unfinished, step {state['step']} of {state['total_steps']}"
        except CheckpointError:
            return f"{name}: unreadable checkpoint in {folder / 'run'}"
    return f"{name}: not trained"


# --------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m sslbook zoo") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train, resume or reuse entries of the model zoo "
        "(zoo/cifar10-cpu/<name>/): each is trained in the cpu profile for a "
        "budget in epochs, alone on the machine (a lock refuses a second run).",
    )
    parser.add_argument("names", nargs="*", help=f"entries, or 'all': {', '.join(ENTRIES)}")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget (default: the entry table's)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="delete the entry and train it afresh, even when it was made with other settings",
    )
    parser.add_argument("--list", action="store_true", help="list the entries and their state")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides (changing them changes the entry's settings)",
    )
    parser.add_argument("--root", default=None, help=f"zoo folder (default: ${ZOO_ENV} or {DEFAULT_ROOT})")
    parser.add_argument("--note", default=None, help="a note kept with this sitting (e.g. what else ran meanwhile)")
    args = parser.parse_args(argv)
    try:
        if args.list or not args.names:
            for name, spec in ENTRIES.items():
                print(f"{status(name, args.epochs, args.set, args.root):60s} {spec.config}, {spec.epochs} epochs")
            print(f"weights: {weights_megabytes(args.root):.1f} MB in {zoo_root(args.root)}")
            return 0
        names = list(ENTRIES) if args.names == ["all"] else args.names
        for name in names:
            entry_spec(name)
        with zoo_lock(args.root), stop_on_sigterm():
            for name in names:
                start = time.perf_counter()
                train_entry(name, args.epochs, args.force, args.set, args.root, args.note)
                _say(f"{name}: {(time.perf_counter() - start) / 60:.1f} min in this command")
    except (ZooError, ConfigError, CheckpointError, DatasetNotFoundError, DatasetFormatError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the same command resumes from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Several methods, one budget, one table: the only place that compares methods.

    rows = run_all(["cifar10/simclr", "cifar10/moco_v2"], "runs", overrides=["max_minutes=3"])
    display(Markdown(results_table(rows)))

or from a shell (``--configs all`` = every shipped CIFAR-10 config)::

    python -m sslbook bench --configs cifar10/simclr,cifar10/moco_v2 --profile cpu --minutes 5

Each method is trained by the one trainer (:func:`sslbook.trainer.train`) from its shipped config,
with the same profile, budget and overrides, into ``<out_root>/<name>-<profile>`` -- the folder a
chapter's notebook trains into, so a closing table reuses the chapter's own runs instead of training
them again. A run is reused only when its checkpoint is finished and was trained with the same
effective config (keys that cannot change the trained network, :data:`IGNORED_KEYS`, are not
compared); anything else is retrained, with a line saying why. Every row gets two numbers measured
the same way for every method: the trainer's final kNN top-1 (k=200 and k=20, Wu et al. 2018) and a
linear probe on frozen features (:func:`linear_top1`), both on the test set.

This module trains and caches; the table, the figure and the results files are :mod:`sslbook.report`'s
(their names are importable from here too).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import SHIPPED, Config, ConfigError, from_dict, load_config, shipped_configs, to_dict
from .eval import linear_probe
from .report import (  # noqa: F401 (the presentation names stay importable from here: bench.results_table, ...)
    COLUMNS,
    DEFAULT_COLUMNS,
    BenchError,
    accuracy_vs_time,
    cpu_model,
    environment,
    load_average,
    load_environment,
    load_results,
    metric_history,
    metrics_records,
    results_table,
    save_results,
    step_records,
    write_json,
)
from .trainer import (
    CHECKPOINT,
    CheckpointError,
    dataset_stats,
    features_of,
    load_datasets,
    method_from_checkpoint,
    read_checkpoint,
    train,
)

RESULTS = "results.json"
LINEAR_EPOCHS = 100

# Config keys that cannot change the trained network or its test numbers: where the run is written,
# whether it resumes or may overwrite, what it prints, how often it checkpoints, the kNN *monitor*
# during training (the final kNN is always k=200 and k=20), and where the data are read from.
IGNORED_KEYS = (
    "out_dir",
    "resume",
    "overwrite",
    "progress",
    "verbose",
    "checkpoint_minutes",
    "eval_every",
    "knn_k",
    "data.root",
    "data.num_workers",
)


def _say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# --------------------------------------------------------------------------- config names
def cifar10_configs() -> list[str]:
    """Every shipped CIFAR-10 config, e.g. ["cifar10/byol", ..., "cifar10/swav"]: what ``all`` means."""
    return [name for name in shipped_configs() if name.startswith("cifar10/")]


def config_name(config: str) -> str:
    """A shipped config name ("cifar10/simclr"; a bare "simclr" means CIFAR-10's) or a YAML file's path.

    An unknown name is a one-line :class:`ConfigError` listing the valid names.
    """
    config = str(config).strip()
    if Path(config).expanduser().is_file():
        return config
    for candidate in (config.removesuffix(".yaml"), f"cifar10/{config.removesuffix('.yaml')}"):
        if (SHIPPED / f"{candidate}.yaml").is_file():
            return candidate
    valid = shipped_configs()
    stem, folder = Path(config).stem, str(Path(config).parent)
    same_folder = [v for v in valid if str(Path(v).parent) == (folder if folder != "." else "cifar10")]
    close = difflib.get_close_matches(stem, [Path(v).name for v in same_folder], n=1)
    hint = f" (did you mean {Path(same_folder[0]).parent / close[0]}?)" if close else ""
    raise ConfigError(f"unknown config {config!r}{hint}; valid: all, {', '.join(valid)}, or a YAML file's path")


def expand_configs(configs: str | Sequence[str]) -> list[str]:
    """``"all"`` or ``"a,b"`` or ``["a", "b"]`` -> checked config names, in order, without repeats."""
    items = configs.split(",") if isinstance(configs, str) else list(configs)
    names: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        for name in cifar10_configs() if item == "all" else [config_name(item)]:
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError("no configs given; e.g. --configs cifar10/simclr,cifar10/moco_v2 or --configs all")
    return names


# --------------------------------------------------------------------------- linear probe
def linear_top1(method, train_set, test_set, epochs: int = LINEAR_EPOCHS, device=None) -> float:
    """Test top-1 (%) of a linear classifier on the frozen features ``method.embed`` gives.

    The standard protocol (Zhang et al. 2016; MoCo, He et al. 2020; SimCLR, Chen et al. 2020): the
    images of both sets, without augmentation, standardised with the training set's mean and std
    (:func:`sslbook.trainer.dataset_stats`), go once through ``method.embed`` in eval mode (the
    method's train/eval flags are put back afterwards); :func:`sslbook.eval.linear_probe` then trains
    one linear layer on the training features for ``epochs`` epochs and scores the test features.
    """
    if device is None:
        device = next(iter(method.parameters()), torch.zeros(0)).device
    mean, std, size = dataset_stats(train_set)
    train_x, train_y = features_of(method, train_set, mean, std, size, device)
    test_x, test_y = features_of(method, test_set, mean, std, size, device)
    return linear_probe(train_x, train_y, test_x, test_y, epochs=epochs)["test_top1"]


# --------------------------------------------------------------------------- reuse
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _comparable(cfg: Config | dict) -> dict:
    d = to_dict(cfg) if isinstance(cfg, Config) else to_dict(from_dict(cfg))
    flat = _flatten(json.loads(json.dumps(d)))  # tuples -> lists, as a YAML round trip gives them
    return {k: v for k, v in flat.items() if k not in IGNORED_KEYS}


def config_differences(old: Config | dict, new: Config | dict) -> list[str]:
    """``["optim.lr: 0.06 -> 0.1", ...]``: the keys (but :data:`IGNORED_KEYS`) where two configs differ."""
    a, b = _comparable(old), _comparable(new)

    def shown(d, k):
        return repr(d[k]) if k in d else "unset"

    return [
        f"{k}: {shown(a, k)} -> {shown(b, k)}"
        for k in sorted(set(a) | set(b))
        if k not in a or k not in b or a[k] != b[k]
    ]


def _read_results(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(results, dict):
        raise BenchError(f"{path} holds a {type(results).__name__}, not a results mapping")
    return results


def finished_results(out_dir: str | Path, cfg: Config, train_images: Optional[int] = None) -> Optional[dict]:
    """The results of the run in ``out_dir`` if it can stand for training ``cfg`` now, else None.

    Reusable = ``checkpoint.pt`` is readable, finished (or stopped at ``max_steps``), trained with the
    same config up to :data:`IGNORED_KEYS`, ``results.json`` belongs to it (same step count) and, when
    ``train_images`` is given, the run saw that many training images (a notebook may pass a subset).
    Otherwise the reason is printed and None returned (the caller retrains). A *finished* run with
    these very settings whose ``results.json`` is damaged is never retrained silently: that is a
    :class:`BenchError` saying which file to delete.
    """
    out_dir = Path(out_dir)
    ckpt_path, results_path = out_dir / CHECKPOINT, out_dir / RESULTS
    if not ckpt_path.exists():
        return None
    try:
        ckpt = read_checkpoint(ckpt_path)
    except CheckpointError:
        _say(f"{ckpt_path} is unreadable; training afresh into {out_dir}")
        return None
    try:
        diffs = config_differences(ckpt["config"], cfg)
    except ConfigError as e:  # a checkpoint of an older sslbook whose config keys no longer exist
        diffs = [f"its config no longer loads: {e}"]
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        _say(f"{out_dir} was trained with other settings ({shown}); retraining it")
        return None
    state = ckpt["state"]
    if not (state.get("finished") or (cfg.max_steps is not None and state.get("step", 0) >= cfg.max_steps)):
        _say(
            f"{out_dir} holds an unfinished run (step {state.get('step')} of {state.get('total_steps')}); retraining it"
        )
        return None
    if not results_path.exists():
        _say(f"{ckpt_path} is finished but {results_path.name} is missing; retraining {out_dir}")
        return None
    try:
        results = _read_results(results_path)
        if results.get("steps") != state.get("step"):
            raise BenchError(
                f"{results_path} is for {results.get('steps')} steps but {ckpt_path} took {state.get('step')}"
            )
    except BenchError as e:
        raise BenchError(
            f"{e}; the finished run in {ckpt_path} is not retrained silently: delete "
            f"{results_path} to retrain {out_dir} (replacing that checkpoint), or move "
            f"{out_dir} away to keep it"
        ) from None
    if train_images is not None and results.get("train_images") not in (None, train_images):
        _say(f"{out_dir} was trained on {results['train_images']} images, this run uses {train_images}; retraining it")
        return None
    return results


# --------------------------------------------------------------------------- one method, several
def _row(name: str, cfg: Config, results: dict, reused: bool, out_dir: Path) -> dict:
    steps, batch = results.get("steps"), results.get("batch_size", cfg.batch_size)
    row = {
        "method": results.get("method", cfg.method),
        "config": name,
        "profile": cfg.profile,
        "budget_minutes": cfg.max_minutes,
        "encoder": results.get("encoder"),
        "batch_size": batch,
        "train_minutes": results.get("train_minutes"),
        "epochs": results.get("epochs"),
        "steps": steps,
        "images_seen": steps * batch if steps is not None else None,  # batch_size is over all processes
        "images_per_s": results.get("images_per_s"),
        "peak_memory_mb": results.get("peak_memory_mb"),
        "knn200_top1": results.get("knn200_top1"),
    }
    if "knn20_top1" in results:
        row["knn20_top1"] = results["knn20_top1"]
    row["linear_top1"] = results.get("linear_top1")
    pretext = _last_logged(out_dir / "metrics.jsonl", "accuracy")
    if pretext is not None:
        row["pretext_accuracy"] = pretext
    if "loadavg_1min" in results:
        row["loadavg_1min"] = results["loadavg_1min"]
    # The kNN-monitor curve travels with the row, so a results file draws it without the run folder.
    row["history"] = [list(p) for p in metric_history({"out_dir": str(out_dir)}, "knn200_top1")]
    row.update(reused=reused, out_dir=str(out_dir))
    return row


def _last_logged(path: Path, key: str) -> Optional[float]:
    """The value of ``key`` at the run's last logging point that has it (pretext methods log their
    task's ``accuracy`` on the training batches), or None."""
    values = [r[key] for r in metrics_records(path) if "step" in r and isinstance(r.get(key), (int, float))]
    return float(values[-1]) if values else None


def _datasets_for(cfg: Config, cache: Optional[dict]):
    if cache is None:
        return load_datasets(cfg)
    data = {k: v for k, v in to_dict(cfg)["data"].items() if k != "num_workers"}
    key = json.dumps([data, cfg.seed], sort_keys=True)
    if key not in cache:
        cache[key] = load_datasets(cfg)
    return cache[key]


def run(
    config: str,
    out_dir,
    overrides: Sequence[str] = (),
    reuse: bool = True,
    linear: bool = True,
    datasets=None,
    *,
    _data_cache: Optional[dict] = None,
) -> dict:
    """Train one config (or reuse its finished run in ``out_dir``) and return its results row.

    The config is ``load_config(config, [*overrides, out_dir=..., resume=never, overwrite=true])``.
    With ``reuse`` a finished run with the same effective config is taken as it is
    (:func:`finished_results`); otherwise the trainer trains it afresh, replacing what was there.
    With ``linear`` a missing ``linear_top1`` is computed (:func:`linear_top1`, from the run's
    method or its checkpoint) and written back into ``out_dir/results.json`` atomically.
    ``datasets`` = (train, test) replaces the config's dataset, as in :func:`sslbook.trainer.train`.
    """
    name = config_name(config)
    out_dir = Path(out_dir)
    cfg = load_config(name, [*overrides, f"out_dir={out_dir}", "resume=never", "overwrite=true"])
    # A notebook may have trained this folder on other images than the config's (a subset, a rotated
    # copy): the config does not say so, the number of training images can. In-memory datasets load in
    # seconds, so they are loaded to check; an ImageFolder tree is not scanned just for this.
    if datasets is None and reuse and cfg.data.dataset != "imagefolder" and (out_dir / CHECKPOINT).exists():
        datasets = _datasets_for(cfg, _data_cache)
    results = finished_results(out_dir, cfg, len(datasets[0]) if datasets is not None else None) if reuse else None
    reused, method, changed = results is not None, None, False
    if reused:
        _say(f"{name}: reusing the finished run in {out_dir}")
    else:
        datasets = datasets if datasets is not None else _datasets_for(cfg, _data_cache)
        budget = f"{cfg.max_minutes:g} min" if cfg.max_minutes is not None else "no time limit"
        _say(f"{name}: training into {out_dir} ({cfg.profile} profile, {budget})")
        before = load_average()
        result = train(cfg, datasets=datasets)
        results, method, changed = dict(result.results), result.method, True
        results["loadavg_1min"] = [before, load_average()]  # machine load before and after the training
    if linear and results.get("linear_top1") is None:
        train_set, test_set = datasets if datasets is not None else _datasets_for(cfg, _data_cache)
        if test_set is None:
            _say(f"{name}: no test set, so no linear probe")
        else:
            if method is None:
                method, _ = method_from_checkpoint(out_dir / CHECKPOINT, _device())
            results["linear_top1"] = linear_top1(method, train_set, test_set, epochs=LINEAR_EPOCHS)
            results["linear_epochs"] = LINEAR_EPOCHS
            changed = True
    if changed:
        write_json(out_dir / RESULTS, results)
    return _row(name, cfg, results, reused, out_dir)


def _device():
    from .profiles import default_device

    return default_device()


def run_all(
    configs: list[str], out_root, overrides: Sequence[str] = (), overrides_for: Optional[dict] = None, **kw
) -> list[dict]:
    """:func:`run` for each config into ``out_root/<name>-<profile>`` (``name`` = the config's basename,
    e.g. ``moco_v2``): the folder a chapter trains ``cifar10/moco_v2`` into, so its run is reused when
    the settings match. ``overrides`` apply to every config; ``overrides_for`` maps a config name
    (``swav`` or ``cifar10/swav``) to overrides of that config only, applied after the common ones
    (e.g. SwAV's short-run settings). Every config and override is checked before anything trains; the
    datasets are loaded once for all configs that read the same data. Keyword arguments go to :func:`run`.
    """
    names = expand_configs(configs)
    extra = {}
    for key, values in (overrides_for or {}).items():
        (full,) = expand_configs(key)
        if full not in names:
            raise ConfigError(
                f"overrides given for {key!r}, which is not among the configs being run ({', '.join(names)})"
            )
        extra[full] = [*extra.get(full, []), *values]
    plans, seen = [], {}
    for name in names:
        own = [*overrides, *extra.get(name, [])]
        cfg = load_config(name, own)
        out_dir = Path(out_root) / f"{Path(name).stem}-{cfg.profile}"
        if out_dir in seen:
            raise ConfigError(
                f"{seen[out_dir]} and {name} would both train into {out_dir}; bench them with different --runs folders"
            )
        seen[out_dir] = name
        plans.append((name, out_dir, own))
    cache: dict = {}
    return [run(name, out_dir, own, _data_cache=cache, **kw) for name, out_dir, own in plans]


def load_method(row: dict | str | Path, device=None):
    """(method, config) of a row's run (or of a run folder), rebuilt from its checkpoint in eval mode."""
    out_dir = Path(row["out_dir"] if isinstance(row, dict) else row)
    return method_from_checkpoint(out_dir / CHECKPOINT, device if device is not None else _device())


def pixel_baseline(profile=None, linear: bool = True, datasets=None, epochs: int = LINEAR_EPOCHS) -> dict:
    """The raw-pixel row: kNN (k=200 and k=20) and the same linear probe on centred pixels.

    The number every method has to beat (:func:`sslbook.eval.pixel_features`: the training set's mean
    image subtracted from both sets), on the profile's CIFAR-10 images (``profile``: a
    :class:`~sslbook.profiles.Profile`, its name, or None for the current one) or on ``datasets``.
    """
    from .eval import knn_accuracy, pixel_features

    if datasets is None:
        name = getattr(profile, "name", profile)
        datasets = load_datasets(load_config("cifar10/simclr", profile=name))
    train_set, test_set = datasets
    train_x, test_x = pixel_features(train_set.images, test_set.images)
    row = {f"knn{k}_top1": knn_accuracy(train_x, train_set.labels, test_x, test_set.labels, k=k) for k in (200, 20)}
    if linear:
        row["linear_top1"] = linear_probe(train_x, train_set.labels, test_x, test_set.labels, epochs=epochs)[
            "test_top1"
        ]
    return row

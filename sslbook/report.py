"""Presenting benchmark results: run logs read back, results files, the Markdown table and the figure.

:mod:`sslbook.bench` trains and caches the runs; this module only reads and shows what they left:

- a run's logs: :func:`metrics_records`, :func:`step_records`, :func:`metric_history`;
- results files: :func:`save_results` (with the :func:`environment` the numbers were measured in),
  :func:`load_results`, :func:`load_environment`;
- :func:`results_table` (Markdown) and :func:`accuracy_vs_time` (a matplotlib figure).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Optional, Sequence

import torch


class BenchError(RuntimeError):
    """A run folder or results file that cannot be used as it is."""


# --------------------------------------------------------------------------- JSON and run logs
def write_json(path: Path, data) -> None:
    """Write atomically: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def metrics_records(path: Path) -> list[dict]:
    """The records of a metrics log (lines that do not parse are skipped)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def step_records(row: dict | str | Path) -> list[dict]:
    """The training-step records of a row's run (or of a run folder) in order: what the trainer logs
    every ``log_every`` steps (step, epoch, loss, lr, images/s and the method's own metrics)."""
    out_dir = Path(row["out_dir"] if isinstance(row, dict) else row)
    return [r for r in metrics_records(out_dir / "metrics.jsonl") if "step" in r and "loss" in r]


def metric_history(row: dict, metric: str) -> list[tuple[float, int, float]]:
    """(training minutes, step, metric) of each evaluation in the row's metrics log, final one last.

    Read from the run folder ``row["out_dir"]``; a row from a results file whose runs are gone falls
    back on the kNN-monitor curve it carries (``row["history"]``)."""
    points = []
    if row.get("out_dir"):
        for record in metrics_records(Path(row["out_dir"]) / "metrics.jsonl"):
            e = record.get("eval") or record.get("final")
            step = e.get("step", e.get("steps")) if isinstance(e, dict) else None  # the final record has "steps"
            if step is not None and e.get(metric) is not None and "train_minutes" in e:
                points.append((e["train_minutes"], step, e[metric]))
    if not points and metric == "knn200_top1" and row.get("history"):  # a results file without its runs
        points = [tuple(p) for p in row["history"]]
    if (
        row.get(metric) is not None
        and row.get("steps") is not None
        and not (points and points[-1][1] == row["steps"] and points[-1][2] == row[metric])
    ):
        points.append((row.get("train_minutes") or 0.0, row["steps"], row[metric]))
    return points


# --------------------------------------------------------------------------- results files
def load_average() -> Optional[float]:
    """The 1-minute load average of the machine (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Where and when numbers were measured: date, torch, CPU model, cores, threads, GPU, load."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1min": load_average(),
    }


def save_results(rows: list[dict], path, **info) -> Path:
    """Write ``{"environment": ..., **info, "rows": rows}`` as JSON (atomically); returns the path.

    The environment block gives the date, torch version, CPU model, cores, the profile(s) of the
    rows, and the 1-minute load average at the start (before the first run this bench trained;
    now if every row was reused) and at the end (now).
    """
    env = environment()
    starts = [r["loadavg_1min"][0] for r in rows if not r.get("reused") and r.get("loadavg_1min")]
    env["loadavg_1min_start"] = starts[0] if starts else env["loadavg_1min"]
    env["loadavg_1min_end"] = env.pop("loadavg_1min")
    profiles = sorted({str(r.get("profile")) for r in rows})
    env["profile"] = profiles[0] if len(profiles) == 1 else profiles
    path = Path(path)
    write_json(path, {"benchmark": "python -m sslbook bench", "environment": env, **info, "rows": list(rows)})
    return path


def load_results(path) -> list[dict]:
    """The rows of a file written by :func:`save_results` (one-line :class:`BenchError` if it is not one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(
            f"{path} is not a readable bench results file ({type(e).__name__}: {str(e)[:80]}); "
            "write it again with python -m sslbook bench --out " + str(path)
        ) from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BenchError(f"{path} has no list of result rows; write it with python -m sslbook bench --out {path}")
    return rows


def load_environment(path) -> dict:
    """The environment block of a results file ({} if it has none)."""
    data = json.loads(Path(path).read_text())
    return data.get("environment", {}) if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- table and figure
COLUMNS = {  # key: (header, format, numeric)
    "config": ("config", "{}", False),
    "method": ("method", "{}", False),
    "profile": ("profile", "{}", False),
    "encoder": ("encoder", "{}", False),
    "budget_minutes": ("budget (min)", "{:g}", True),
    "batch_size": ("batch", "{:,}", True),
    "train_minutes": ("training (min)", "{:.1f}", True),
    "epochs": ("epochs", "{:.1f}", True),
    "steps": ("steps", "{:,}", True),
    "images_seen": ("images seen", "{:,}", True),
    "images_per_s": ("images/s", "{:,.0f}", True),
    "peak_memory_mb": ("peak memory (MB)", "{:,.0f}", True),
    "knn200_top1": ("kNN top-1 k=200 (%)", "{:.2f}", True),
    "knn20_top1": ("kNN top-1 k=20 (%)", "{:.2f}", True),
    "linear_top1": ("linear top-1 (%)", "{:.2f}", True),
    "pretext_accuracy": ("pretext accuracy", "{:.3g}", True),
    "reused": ("reused", "{}", False),
    "out_dir": ("run folder", "{}", False),
}
DEFAULT_COLUMNS = (
    "config",
    "train_minutes",
    "epochs",
    "images_per_s",
    "peak_memory_mb",
    "knn200_top1",
    "knn20_top1",
    "linear_top1",
)


def _cell(key: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    _, fmt, _ = COLUMNS.get(key, (key, "{}", False))
    try:
        text = fmt.format(value)
    except (ValueError, TypeError):
        text = str(value)
    return text.replace("|", "\\|")


def results_table(rows: list[dict], columns: Optional[Sequence[str]] = None, baseline: Optional[dict] = None) -> str:
    """A Markdown table of ``rows`` (show it with ``IPython.display.Markdown``).

    ``columns`` are row keys (default :data:`DEFAULT_COLUMNS`, minus those no row has); a missing
    value shows as "—". ``baseline``, e.g. ``{"config": "raw pixels", "knn200_top1": 41.3}``, is
    added as a last row in italics.
    """
    everything = list(rows) + ([baseline] if baseline else [])
    if columns is None:
        columns = [c for c in DEFAULT_COLUMNS if c == "config" or any(r.get(c) is not None for r in everything)]
    header = [COLUMNS.get(c, (c, "{}", False))[0] for c in columns]

    def numeric(c):
        if c in COLUMNS:
            return COLUMNS[c][2]
        values = [r.get(c) for r in everything if r.get(c) is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    align = ["---:" if numeric(c) else "---" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |")
    if baseline:
        cells = [_cell(c, baseline.get(c)) for c in columns]
        lines.append("| " + " | ".join(f"*{x}*" if x != "—" else x for x in cells) + " |")
    return "\n".join(lines)


def accuracy_vs_time(
    rows: list[dict],
    x: str = "train_minutes",
    metric: str = "knn200_top1",
    baseline: Optional[float] = None,
    labels: Optional[Sequence[str]] = None,
):
    """kNN top-1 (or ``metric``) against training minutes (``x="train_minutes"``), images seen
    (``x="images_seen"``) or epochs (``x="epochs"``): one line per row through its kNN-monitor
    evaluations (from its run's ``metrics.jsonl``), the final value marked. ``labels`` name the
    lines (default: the configs' basenames); ``baseline`` draws a dashed line (raw pixels). Returns the figure."""
    import matplotlib.pyplot as plt

    if x not in ("train_minutes", "images_seen", "epochs"):
        raise ValueError(f"x must be 'train_minutes', 'images_seen' or 'epochs', got {x!r}")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    for i, row in enumerate(rows):
        points = metric_history(row, metric)
        if not points:
            continue
        per_step = (row.get("images_seen" if x == "images_seen" else "epochs") or 0) / max(1, row.get("steps") or 1)
        xs = [m if x == "train_minutes" else s * per_step for m, s, _ in points]
        ys = [v for _, _, v in points]
        label = labels[i] if labels is not None else Path(str(row.get("config") or row.get("method"))).name
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.plot(xs[-1], ys[-1], marker="o", markersize=8, color=line.get_color())
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="raw pixels")
    label = dict(
        knn200_top1="kNN top-1, k=200 (%)", knn20_top1="kNN top-1, k=20 (%)", linear_top1="linear top-1 (%)"
    ).get(metric, metric)
    ax.set(
        xlabel={"train_minutes": "training minutes", "images_seen": "images seen", "epochs": "epochs"}[x],
        ylabel=label,
        title="accuracy on the test set during training",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

"""Re-run notebooks top to bottom and store their outputs (what the book shows).

    SSLBOOK_PROFILE=cpu python scripts/execute_notebooks.py chapters [more paths...]

    python scripts/execute_notebooks.py --notes-only chapters   # rewrite the run-time notes only
    python scripts/execute_notebooks.py --promote drafts/03_architectures/moco.ipynb  # execute, then replace
                                                                # chapters/03_architectures/moco.ipynb with it

Each notebook runs in a fresh python3 kernel from its own folder. A notebook that raises keeps
its previous stored version (nothing finished is lost) and the script exits non-zero. The profile,
the run's wall-clock time, the machine's cores and its load average before and after are recorded
in the notebook's metadata under ``sslbook``; in the ``cpu`` profile (the one the book shows) the
script then writes the page's run-time note, a Markdown cell tagged ``sslbook-run-time`` below the
title, from that metadata and the notebook's run plan (``book.plan``, the Colab GPU estimate).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from sslbook import book


def notebooks(paths):
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            yield p


def chapter_path(path: Path) -> Path | None:
    """Where a draft goes once executed: ``drafts/<part>/<page>.ipynb`` -> ``chapters/<part>/<page>.ipynb``
    (the first ``drafts`` folder of the path replaced); None for a path that is not under ``drafts/``."""
    parts = list(path.parts)
    if "drafts" not in parts:
        return None
    parts[parts.index("drafts")] = "chapters"
    return Path(*parts)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def write_run_time_note(nb) -> None:
    """Put the run-time note (written from the metadata) below the title cell, replacing an older one."""
    plan = book.notebook_plan(nb)
    text = book.run_time_note(nb.metadata, plan.gpu_minutes if plan is not None else None)
    cells = [c for c in nb.cells if book.RUN_TIME_TAG in c.get("metadata", {}).get("tags", [])]
    if cells:
        cells[0].source = text
        for extra in cells[1:]:
            nb.cells.remove(extra)
    else:
        cell = nbformat.v4.new_markdown_cell(text, metadata={"tags": [book.RUN_TIME_TAG]})
        cell.id = "run-time"
        nb.cells.insert(1, cell)


def save(nb, path: Path) -> None:
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a notebook


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # start clean: no output may survive from an earlier run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    load_start = load_average()
    start = time.time()
    # Cells tagged nbval-skip (interactive widgets) wait for a reader; CI skips them too.
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        skip_cells_with_tag="nbval-skip",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    seconds = time.time() - start
    nb.metadata["sslbook"] = {
        "profile": os.environ.get("SSLBOOK_PROFILE", "cpu"),
        "executed": datetime.date.today().isoformat(),
        "seconds": round(seconds, 1),
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "machine": platform.processor() or platform.machine(),
    }
    if nb.metadata["sslbook"]["profile"] == "cpu":
        write_run_time_note(nb)
    save(nb, path)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument(
        "--notes-only",
        action="store_true",
        help="do not execute: rewrite each notebook's run-time note from its stored metadata",
    )
    parser.add_argument(
        "--promote",
        action="store_true",
        help="after a draft (drafts/...) runs without error, move it over its chapter (chapters/..., same path)",
    )
    args = parser.parse_args()
    if args.notes_only:
        for path in notebooks(args.paths):
            nb = nbformat.read(path, as_version=4)
            write_run_time_note(nb)
            save(nb, path)
            print(f"{path}: {nb.cells[1].source.splitlines()[0]}")
        return
    os.environ.setdefault("SSLBOOK_PROFILE", "cpu")
    if args.promote and os.environ["SSLBOOK_PROFILE"] != "cpu":
        sys.exit(
            f"error: --promote makes a draft a chapter, whose stored outputs come from the cpu profile; "
            f"SSLBOOK_PROFILE is {os.environ['SSLBOOK_PROFILE']!r}: unset it or set it to cpu"
        )
    failed = []
    for path in notebooks(args.paths):
        print(f"executing {path} ({os.environ['SSLBOOK_PROFILE']} profile) ...", flush=True)
        try:
            print(f"  done in {execute(path, args.timeout):.0f} s", flush=True)
            target = chapter_path(path) if args.promote else None
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)  # the executed draft is now the chapter (git shows the difference)
                print(f"  moved to {target} (a new page also needs its line in _toc.yml)", flush=True)
        except CellExecutionError as e:
            failed.append(path)
            print(f"  FAILED, previous version kept:\n{str(e)[-2000:]}", flush=True)
    if failed:
        sys.exit(f"{len(failed)} notebook(s) failed: {', '.join(map(str, failed))}")


if __name__ == "__main__":
    main()

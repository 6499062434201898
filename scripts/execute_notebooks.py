"""Re-run notebooks top to bottom and store their outputs (what the book shows).

    SSLBOOK_PROFILE=cpu python scripts/execute_notebooks.py chapters [more paths...]

Each notebook runs in a fresh python3 kernel from its own folder. A notebook that raises keeps
its previous stored version (nothing finished is lost) and the script exits non-zero. The profile
and the run's wall-clock time are recorded in the notebook's metadata under ``sslbook``.
"""
import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def notebooks(paths):
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            yield p


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # start clean: no output may survive from an earlier run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.time()
    # Cells tagged nbval-skip (interactive widgets) wait for a reader; CI skips them too.
    NotebookClient(nb, timeout=timeout, kernel_name="python3", skip_cells_with_tag="nbval-skip",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.time() - start
    nb.metadata["sslbook"] = {
        "profile": os.environ.get("SSLBOOK_PROFILE", "cpu"),
        "executed": datetime.date.today().isoformat(),
        "seconds": round(seconds, 1),
    }
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a notebook
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    os.environ.setdefault("SSLBOOK_PROFILE", "cpu")
    failed = []
    for path in notebooks(args.paths):
        print(f"executing {path} ({os.environ['SSLBOOK_PROFILE']} profile) ...", flush=True)
        try:
            print(f"  done in {execute(path, args.timeout):.0f} s", flush=True)
        except CellExecutionError as e:
            failed.append(path)
            print(f"  FAILED, previous version kept:\n{str(e)[-2000:]}", flush=True)
    if failed:
        sys.exit(f"{len(failed)} notebook(s) failed: {', '.join(map(str, failed))}")


if __name__ == "__main__":
    main()

"""Notebook health: the stored outputs are the book, so they must come from one clean run."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
TOC = (ROOT / "_toc.yml").read_text()


def test_there_are_notebooks():
    assert NOTEBOOKS, "chapters/ holds no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_are_one_cpu_run(path):
    nb = json.loads(path.read_text())
    # Cells tagged nbval-skip (interactive widgets that wait for a reader) are skipped by
    # scripts/execute_notebooks.py and by nbval alike; every other cell must have run, in order.
    code = [c for c in nb["cells"] if c["cell_type"] == "code"
            and "nbval-skip" not in c.get("metadata", {}).get("tags", [])]
    counts = [c.get("execution_count") for c in code]
    assert all(n is not None for n in counts), f"{path.name}: some code cells have no stored output"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts} are not one top-to-bottom run"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored error output {errors[0].get('ename')}"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"].get("sslbook", {}).get("profile") == "cpu", \
        f"{path.name}: outputs must come from the cpu profile (run `make execute`)"
    stderr = [o for c in code for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not any("Traceback" in "".join(o.get("text", "")) for o in stderr)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_in_the_book(path):
    assert str(path.relative_to(ROOT).with_suffix("")) in TOC, f"{path} is not listed in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_reimplementation_in_notebooks(path):
    """Chapters import sslbook; they must not define losses, models or training loops themselves."""
    nb = json.loads(path.read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "import sslbook" in source or "from sslbook" in source
    for pattern in (r"^\s*class\s+\w+", r"nn\.Module\b", r"\.backward\(", r"optimizer\.step\(", r"def \w*loss\w*\("):
        match = re.search(pattern, source, re.M)
        assert match is None, f"{path.name} defines {match.group(0)!r}: move it into the sslbook package"

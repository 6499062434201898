"""Notebook health: the stored outputs are the book, so they must come from one clean run."""

import ast
import json
import re
from pathlib import Path

import pytest

from conftest import glue_records

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
# drafts/: pages written but not yet executed in the cpu profile; their source follows the same rules
DRAFTS = sorted(p for p in (ROOT / "drafts").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
SOURCES = NOTEBOOKS + DRAFTS
SOURCE_IDS = [str(p.relative_to(ROOT).with_suffix("")) for p in SOURCES]
TOC = (ROOT / "_toc.yml").read_text()


def test_there_are_notebooks():
    assert NOTEBOOKS, "chapters/ holds no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_are_one_cpu_run(path):
    nb = json.loads(path.read_text())
    # Cells tagged nbval-skip (interactive widgets that wait for a reader) are skipped by
    # scripts/execute_notebooks.py and by nbval alike; every other cell must have run, in order.
    code = [
        c for c in nb["cells"] if c["cell_type"] == "code" and "nbval-skip" not in c.get("metadata", {}).get("tags", [])
    ]
    counts = [c.get("execution_count") for c in code]
    assert all(n is not None for n in counts), f"{path.name}: some code cells have no stored output"
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts} are not one top-to-bottom run"
    )
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored error output {errors[0].get('ename')}"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"].get("sslbook", {}).get("profile") == "cpu", (
        f"{path.name}: outputs must come from the cpu profile (run `make execute`)"
    )
    stderr = [o for c in code for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not any("Traceback" in "".join(o.get("text", "")) for o in stderr)
    # a value glued for the prose is not echoed under the cell as well (book.glue returns nothing)
    echoed = [c for c in code if _ends_with_glue(c) and any(o["output_type"] == "execute_result" for o in c["outputs"])]
    assert not echoed, f"{path.name}: a cell ending in book.glue shows the glued value as a stray output"
    # myst-nb reads a glued record with ast.literal_eval: only a string literal reaches the prose as
    # it was computed (a bare 24,576 would render as the tuple (24, 576), +1.60 as 1.6)
    bare = [record for _, record in glue_records(code) if not _is_str_literal(record)]
    assert not bare, f"{path.name}: glued records {bare[:3]} are not string literals; re-run the page"


def _is_str_literal(text: str) -> bool:
    try:
        return isinstance(ast.literal_eval(text), str)
    except (SyntaxError, ValueError):
        return False


def _ends_with_glue(cell) -> bool:
    try:
        body = ast.parse("".join(cell["source"])).body
    except SyntaxError:  # IPython magics
        return False
    last = body[-1] if body else None
    return (
        isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and ast.unparse(last.value.func) == "book.glue"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_in_the_book(path):
    assert str(path.relative_to(ROOT).with_suffix("")) in TOC, f"{path} is not listed in _toc.yml"


@pytest.mark.parametrize("path", SOURCES, ids=SOURCE_IDS)
def test_no_reimplementation_in_notebooks(path):
    """Chapters import sslbook; they must not define losses, models or training loops themselves."""
    nb = json.loads(path.read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "import sslbook" in source or "from sslbook" in source
    for pattern in (r"^\s*class\s+\w+", r"nn\.Module\b", r"\.backward\(", r"optimizer\.step\(", r"def \w*loss\w*\("):
        match = re.search(pattern, source, re.M)
        assert match is None, f"{path.name} defines {match.group(0)!r}: move it into the sslbook package"


def _code(path):
    nb = json.loads(path.read_text())
    return nb, "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", SOURCES, ids=SOURCE_IDS)
def test_gpu_plan_fits_a_colab_session(path):
    """Every notebook declares its training runs; in the gpu profile they fit one Colab session."""
    from sslbook import book

    nb, source = _code(path)
    plan = book.notebook_plan(nb)
    assert plan is not None, (
        f"{path.name} declares no run plan: add `PLAN = book.plan(runs=..., "
        "gpu_minutes_per_run=...)` to its first code cell"
    )
    assert plan.gpu_minutes <= book.COLAB_SESSION_MINUTES, (
        f"{path.name}: {plan.gpu_minutes:.0f} planned gpu minutes, over a {book.COLAB_SESSION_MINUTES:g}-minute session"
    )
    if plan.runs:  # the runs take their overrides (and the gpu cap) from the plan
        assert "PLAN.overrides(" in source or "PLAN.minutes()" in source, f"{path.name} plans runs but never uses PLAN"
    uncapped = re.search(r"max_minutes=\{?[^}\"']*null|train_minutes and min\(", source)
    assert uncapped is None or "PLAN.overrides(" in source, f"{path.name}: an uncapped gpu run ({uncapped.group(0)!r})"


@pytest.mark.parametrize("path", SOURCES, ids=SOURCE_IDS)
def test_notebook_source_follows_the_book_conventions(path):
    """Issue 15/18 regressions: examples never the first N of a split, code shown highlighted, runs found by
    name, the override list from book.LIVE_RUN, progress never captured."""
    _, source = _code(path)
    checks = {
        r"\.(images|labels)\[:\s*\w+\]": "pick examples with book.sample_examples, not the first N of a split",
        r"inspect\.getsource|print\([\w.]*__doc__\)": "show code with book.show_code / show_doc / show_pseudocode",
        r"\.\./0\d_\w+/runs": "locate another chapter's run with book.run_dir(name)",
        r"\"resume=never\", \"overwrite=true\"": "use PLAN.overrides(...) (book.LIVE_RUN) for a notebook's runs",
        r"capture_output=True": "long work must show progress: book.run_command streams a command's output",
        r"display\(Markdown\(": "show tables with book.show_table (a table in the book and on Colab)",
    }
    for pattern, fix in checks.items():
        match = re.search(pattern, source)
        assert match is None, f"{path.name}: {match.group(0)!r}: {fix}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_run_time_note_below_the_title(path):
    from sslbook import book

    nb = json.loads(path.read_text())
    tagged = [i for i, c in enumerate(nb["cells"]) if book.RUN_TIME_TAG in c.get("metadata", {}).get("tags", [])]
    assert tagged == [1], f"{path.name}: run `python scripts/execute_notebooks.py --notes-only {path}`"
    text = "".join(nb["cells"][1]["source"])
    plan = book.notebook_plan(nb)
    assert text == book.run_time_note(nb["metadata"], plan.gpu_minutes if plan else None), (
        f"{path.name}: the run-time note is out of date: run `python scripts/execute_notebooks.py --notes-only {path}`"
    )

"""scripts/execute_notebooks.py: a draft that runs is stored with its outputs and replaces its chapter."""

import json
import os
import subprocess
import sys

import nbformat

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "execute_notebooks.py"


def _draft(path, source):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A page"), nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _run(*args, profile="cpu"):
    env = {**os.environ, "SSLBOOK_PROFILE": profile}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_promote_executes_a_draft_and_moves_it_over_its_chapter(tmp_path):
    draft, chapter = tmp_path / "drafts" / "part" / "page.ipynb", tmp_path / "chapters" / "part" / "page.ipynb"
    _draft(chapter, "print('old')")
    _draft(draft, "print(6 * 7)")
    result = _run("--promote", str(draft))
    assert result.returncode == 0, result.stderr
    assert not draft.exists() and f"moved to {chapter}" in result.stdout
    nb = json.loads(chapter.read_text())
    assert "".join(nb["cells"][-1]["outputs"][0]["text"]) == "42\n" and nb["cells"][-1]["execution_count"] == 1
    assert nb["metadata"]["sslbook"]["profile"] == "cpu" and "Ran in" in "".join(nb["cells"][1]["source"])


def test_a_failing_draft_stays_where_it_is_and_the_chapter_is_untouched(tmp_path):
    draft, chapter = tmp_path / "drafts" / "page.ipynb", tmp_path / "chapters" / "page.ipynb"
    _draft(chapter, "print('old')")
    _draft(draft, "raise ValueError('broken')")
    before = chapter.read_text(), draft.read_text()
    result = _run("--promote", str(draft))
    assert result.returncode != 0 and "FAILED, previous version kept" in result.stdout
    assert (chapter.read_text(), draft.read_text()) == before


def test_promote_refuses_another_profile_in_one_line(tmp_path):
    draft = tmp_path / "drafts" / "page.ipynb"
    _draft(draft, "print(1)")
    result = _run("--promote", str(draft), profile="smoke")
    assert result.returncode != 0 and not (tmp_path / "chapters").exists()
    assert result.stderr.strip().splitlines() == [
        "error: --promote makes a draft a chapter, whose stored outputs come from the cpu profile; "
        "SSLBOOK_PROFILE is 'smoke': unset it or set it to cpu"
    ]

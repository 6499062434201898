"""sslbook.book: the helpers chapters use to show tables, code, examples, glued numbers and run plans."""

import pytest
import torch

from sslbook import book
from sslbook.losses import nt_xent


# ------------------------------------------------------------------------------------------- examples
def test_sample_examples_is_class_balanced_whatever_the_split_order():
    labels = torch.arange(10).repeat_interleave(50)  # sorted by class, like the old offline copy
    picked = book.sample_examples(labels, 20, seed=0)
    assert torch.bincount(labels[picked], minlength=10).tolist() == [2] * 10
    assert len(set(picked.tolist())) == 20
    first8 = labels[book.sample_examples(labels, 8, seed=3)]
    assert len(set(first8.tolist())) == 8  # 8 examples from 8 different classes


def test_sample_examples_per_class_groups_rows_by_class():
    labels = torch.tensor([0, 1, 2] * 7)
    picked = book.sample_examples(labels, per_class=3, seed=1)
    assert labels[picked].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_sample_examples_is_deterministic_and_seeds_differ():
    labels = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0))
    a = book.sample_examples(labels, 30, seed=0)
    assert torch.equal(a, book.sample_examples(labels, 30, seed=0))
    assert not torch.equal(a, book.sample_examples(labels, 30, seed=1))
    state = torch.get_rng_state()
    book.sample_examples(labels, 30, seed=2)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_sample_examples_unlabelled_and_errors():
    idx = book.sample_examples(100, 10, seed=0)
    assert len(set(idx.tolist())) == 10 and idx.max() < 100
    with pytest.raises(ValueError, match="give n or per_class, not both"):
        book.sample_examples(torch.tensor([0, 1]), 4, per_class=1)
    with pytest.raises(ValueError, match=r"classes \[1\] have fewer than per_class=2"):
        book.sample_examples(torch.tensor([0, 0, 1]), per_class=2)


# ---------------------------------------------------------------------------------------------- tables
MARKDOWN = "| method | kNN top-1 (%) |\n|---|---:|\n| **SimCLR** | 41.3 |\n| `a\\|b` | 9.0 |"


def test_glue_records_the_text_for_the_prose_and_returns_nothing(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw, metadata: shown.append((data, metadata)))
    assert book.glue("gap", 1.23456, "{:.2f}") is None  # nothing for the cell to echo
    assert book.glue("words", "above") is None
    record = "application/papermill.record/"  # hidden from the page, read by {glue:text}
    assert shown == [
        ({record + "text/plain": "'1.23'"}, {"scrapbook": {"name": "gap", "mime_prefix": record}}),
        ({record + "text/plain": "'above'"}, {"scrapbook": {"name": "words", "mime_prefix": record}}),
    ]


@pytest.mark.parametrize("text", ["24,576", "+1.60", "38.00", "1.50, 1.50, 1.00", "it's 10", "None", "[1, 2]"])
def test_glued_text_reaches_the_prose_unchanged(monkeypatch, text):
    # myst-nb's {glue:text} passes the record through ast.literal_eval: bare text such as 24,576
    # would come out as the tuple (24, 576), +1.60 as 1.6
    format_plain_text = pytest.importorskip("myst_nb.core.variables").format_plain_text
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw, metadata: shown.append(data))
    book.glue("x", text)
    (stored,) = shown[0].values()
    assert format_plain_text(stored, "") == text


def test_markdown_table_becomes_html_table():
    t = book.table(MARKDOWN)
    assert t.header == ["method", "kNN top-1 (%)"] and t.align == ["left", "right"]
    html = t._repr_html_()
    assert html.startswith('<table class="table sslbook-table">') and html.count("<tr>") == 3
    assert '<td style="text-align:left"><strong>SimCLR</strong></td>' in html
    assert '<td style="text-align:right">41.3</td>' in html
    assert "|---" not in html and "<code>a|b</code>" in html  # an escaped pipe stays in its cell


@pytest.mark.parametrize(
    "cell, html",
    [
        ("*raw pixels*", "<em>raw pixels</em>"),
        ("*41.25*", "<em>41.25</em>"),
        ("**SimCLR** and *x*", "<strong>SimCLR</strong> and <em>x</em>"),
        ("2*3*4", "2*3*4"),  # multiplication, not emphasis
        ("a * b * c", "a * b * c"),
        ("`*args*`", "<code>*args*</code>"),
    ],
)
def test_table_cell_markdown(cell, html):
    assert book.table(f"| h |\n|---|\n| {cell} |").rows[0][0] == cell
    assert f">{html}</td>" in book.table(f"| h |\n|---|\n| {cell} |")._repr_html_()


def test_table_from_dicts_and_lists():
    t = book.table([{"k": 1, "top-1": 43.216}, {"k": 2000, "top-1": 7.0}])
    assert t.rows == [["1", "43.22"], ["2,000", "7.00"]] and t.align == ["right", "right"]
    assert t._repr_markdown_().splitlines()[1] == "|---:|---:|"
    t = book.table([["a", None]], headers=["x", "y"])
    assert t.rows == [["a", ""]]
    with pytest.raises(ValueError, match="need headers"):
        book.table([[1, 2]])
    with pytest.raises(ValueError, match="not a Markdown pipe table"):
        book.table("just text")


# ------------------------------------------------------------------------------------------------ code
def test_code_text_fits_the_column_and_the_line_budget():
    text = book.code_text(nt_xent)
    assert text.startswith("def nt_xent(") and '"""' not in text  # docstring left out
    assert all(len(line) <= book.COLUMN for line in text.splitlines())
    assert len(text.splitlines()) <= book.MAX_LINES
    short = book.code_text("sslbook.losses.nt_xent", max_lines=5)
    assert len(short.splitlines()) == 5 and short.splitlines()[-1].startswith("# ... ")
    assert short.splitlines()[-1].endswith("more lines in sslbook/losses.py")


def test_wrap_line_breaks_after_commas_and_keeps_indentation():
    line = "    result = function(" + ", ".join(f"argument_{i}" for i in range(12)) + ")"
    pieces = book.wrap_line(line, 40)
    assert all(len(p) <= 40 for p in pieces)
    assert pieces[1].startswith(" " * 12)
    assert " ".join(p.strip() for p in pieces).replace(", ", ",").replace(" ", "") == line.replace(" ", "")


def test_a_wrapped_comment_stays_a_comment():
    pieces = book.wrap_line("    x = f(a)  # " + "word " * 20, 40)
    assert pieces[0].startswith("    x = f(a)  # word")
    assert all(p.startswith(" " * 12 + "# word") for p in pieces[1:]) and all(len(p) <= 40 for p in pieces)
    line = "    travel = torch.stack([distance * theta.sin(), distance * theta.cos()], dim=1)  # [B, 2] (dy, dx)"
    assert book.wrap_line(line) == [line.split("  #")[0], " " * 12 + "# [B, 2] (dy, dx)"]  # no bare "#" left


def test_strip_docstring_keeps_the_code():
    src = 'def f(x):\n    """Doc\n    more."""\n    return x\n'
    assert book.strip_docstring(src) == "def f(x):\n    return x"


# ------------------------------------------------------------------------------------------------- plans
def test_plan_counts_runs_and_caps_gpu(monkeypatch):
    monkeypatch.setenv("SSLBOOK_PROFILE", "gpu")
    p = book.plan(runs=2, gpu_minutes_per_run=5)
    assert p.overrides("log_every=5") == [*book.LIVE_RUN, "log_every=5", "max_minutes=5"]
    assert p.minutes() == 5
    assert p.overrides("max_minutes=2") == [*book.LIVE_RUN, "max_minutes=2"]  # a smaller budget is kept
    with pytest.raises(RuntimeError, match="more training runs than its plan declares"):
        p.overrides("max_minutes=null")
    p = book.plan(runs=2, gpu_minutes_per_run=5)
    assert p.overrides("max_minutes=null", "x=1") == [*book.LIVE_RUN, "x=1", "max_minutes=5"]  # null is capped
    p.overrides()
    with pytest.raises(RuntimeError, match="more training runs than its plan declares"):
        p.overrides()
    monkeypatch.setenv("SSLBOOK_PROFILE", "cpu")
    assert book.plan(runs=1, gpu_minutes_per_run=5).overrides() == book.LIVE_RUN and p.minutes() is None
    assert p.gpu_minutes == 2 * (5 + book.GPU_OVERHEAD_PER_RUN) + book.GPU_OVERHEAD_PER_NOTEBOOK
    with pytest.raises(ValueError, match="over the 45-minute session"):
        book.plan(runs=10, gpu_minutes_per_run=5)


def test_notebook_plan_is_read_statically():
    source = ["%pip install x\n", "PLAN = book.plan(runs=3, gpu_minutes_per_run=4)"]
    nb = {"cells": [{"cell_type": "code", "source": source}]}
    assert book.notebook_plan(nb) == book.Plan(3, 4)
    assert book.notebook_plan({"cells": [{"cell_type": "markdown", "source": "book.plan(1, 1)"}]}) is None


def test_run_time_note():
    note = book.run_time_note(
        {
            "sslbook": {
                "profile": "cpu",
                "seconds": 1260,
                "cores": 2,
                "load_average_start": 1.42,
                "load_average_end": 2.8,
                "executed": "2026-12-03",
            }
        },
        30.2,
    )
    assert note.startswith(
        "**Run time.** Ran in 21 min in the `cpu` profile on 2026-12-03 on 2 CPU cores (load "
        "average 1.4 at the start, 2.8 at the end). On a Colab T4 GPU expect about 30 min "
        "(an estimate"
    )
    old = book.run_time_note({"sslbook": {"profile": "cpu", "seconds": 15.1, "executed": "2026-11-22"}}, None)
    assert old.startswith(
        "**Run time.** Ran in under a minute in the `cpu` profile on 2026-11-22 (cores and load not recorded).\n"
    )
    assert "not recorded yet" in book.run_time_note({}, None)


def test_run_dir_by_name():
    assert book.run_dir("simclr", "cpu").parts[-3:] == ("03_architectures", "runs", "simclr-cpu")
    assert book.run_dir("compare-moco_v2", "gpu").parts[-3:] == ("03_architectures", "runs", "compare-moco_v2-gpu")
    assert book.run_dir("simclr_vit", "cpu").parts[-3:] == ("04_encoders", "runs", "simclr_vit-cpu")
    assert str(book.run_dir("rotation", "cpu")) == "runs/rotation-cpu"


def test_run_command_streams_and_fails_loudly(capsys):
    import sys

    book.run_command([sys.executable, "-c", "print('one'); print('two')"])
    assert capsys.readouterr().out == "one\ntwo\n"
    with pytest.raises(RuntimeError, match=r"exited with status 3; its last lines:\nbad\n"):
        book.run_command([sys.executable, "-c", "print('bad'); raise SystemExit(3)"])


def test_pseudocode_rows_pair_each_line_with_its_code():
    doc = """Title.

    The paper's algorithm:

        for x in loader:
            z = f(x)                 -> self.backbone
            L = loss(z)              -> losses.nt_xent

    Prose after.
    """
    before, rows, after = book.pseudocode_rows(doc)
    assert before == ["Title.", "", "The paper's algorithm:", ""]
    assert rows == [("for x in loader:", ""), ("    z = f(x)", "self.backbone"), ("    L = loss(z)", "losses.nt_xent")]
    assert after == ["Prose after."]


def test_pseudocode_rows_keep_a_wrapped_code_line_in_the_code_column():
    doc = """Title.

    The paper's algorithm:

        for x in loader:
            z = f(x)                 -> the backbone, per resolution
                                        group, then the projector
            L = loss(z)
        update(params)               -> the trainer
    """
    _, rows, _ = book.pseudocode_rows(doc)
    assert rows == [
        ("for x in loader:", ""),
        ("    z = f(x)", "the backbone, per resolution"),
        ("", "group, then the projector"),  # not a pseudocode line indented by 40 spaces
        ("    L = loss(z)", ""),  # indented less than the arrow: pseudocode again
        ("update(params)", "the trainer"),
    ]


def test_method_docstrings_give_pseudocode_rows_that_fit_a_page_column():
    import importlib
    import inspect
    import pkgutil

    import sslbook.methods

    widths = {}
    for info in pkgutil.iter_modules(sslbook.methods.__path__):
        module = importlib.import_module(f"sslbook.methods.{info.name}")
        _, rows, _ = book.pseudocode_rows(inspect.getdoc(module) or "")
        widths[info.name] = max((len(p) - len(p.lstrip()) for p, _ in rows if p), default=-1)
    assert widths["swav"] >= 0 and widths["moco"] >= 0
    # a wrapped code line read as pseudocode would be indented by some 50 spaces (the SwAV page's table
    # once overflowed its column so); the pseudocode itself nests a few levels deep at most
    assert max(widths.values()) <= 16, widths


def test_highlighted_code_wraps_in_the_browser_and_reads_as_text():
    code = book.HighlightedCode("x = 1", title="sslbook.losses.nt_xent")
    html = code._repr_html_()
    assert 'class="highlight sslbook-code"' in html and "white-space:pre-wrap" in html
    assert html.startswith("<p><code>sslbook.losses.nt_xent</code></p>")
    assert repr(code) == "x = 1" and code._repr_markdown_() == "```python\nx = 1\n```"


def test_results_file_reads_benchmarks_results_or_gives_none(tmp_path):
    from sslbook import book

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "shortcut-context.json").write_text('{"rows": [1, 2]}')
    (tmp_path / "benchmarks" / "results" / "sweep-a.json").write_text('{"arms": []}')
    assert book.results_file("shortcut-context", root=tmp_path) == {"rows": [1, 2]}
    assert book.sweep_results("a", root=tmp_path) == {"arms": []}
    assert book.results_file("missing", root=tmp_path) is None


def test_sphinx_roles_become_plain_code_in_docstring_prose():
    text = "see :func:`sslbook.eval.knn` and :meth:`~sslbook.methods.SimCLR.forward`, :class:`Foo`; `x` stays"
    assert (
        book.sphinx_roles_as_code(text)
        == "see `sslbook.eval.knn` and `sslbook.methods.SimCLR.forward`, `Foo`; `x` stays"
    )

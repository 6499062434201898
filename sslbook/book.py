"""What the chapters use to show things: tables, code, examples, glued numbers, runs and run plans.

Every chapter is a notebook read in two places: the built book (Jupyter Book, from stored outputs)
and a live kernel (Colab or a laptop). These helpers produce output that reads well in both:

- :func:`show_table` shows rows as a real table (HTML, with a Markdown copy for text frontends);
- :func:`show_code` shows a function's source highlighted, at most 40 lines, none wider than the column;
- :func:`sample_examples` picks example images class-balanced with a seed, never "the first N";
- :func:`glue` stores a computed number so the prose can quote it (``{glue:text}`name```);
- :func:`plan` declares a notebook's training runs and caps each one in the ``gpu`` profile, so a
  Colab session finishes (``tests/test_notebooks.py`` reads every plan);
- :data:`LIVE_RUN` and :func:`run_dir`: the overrides of a notebook's own runs, and where a run named
  in another chapter lives.
"""

from __future__ import annotations

import ast
import html
import inspect
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

# The overrides of every run a notebook starts: train afresh, replace an older folder, no progress bar
# (each evaluation still prints one line, so long work shows progress in the stored output too).
LIVE_RUN = ["resume=never", "overwrite=true", "progress=false"]

# The widest line, in characters, that fits the book's column in a code block without scrolling.
COLUMN = 88
MAX_LINES = 40


# ----------------------------------------------------------------------------------------------- tables
def _inline_html(text: str) -> str:
    """A table cell's Markdown (``**bold**``, ``*italic*``, ```code```) as HTML; everything else is
    escaped. A ``*`` between words or next to a space (``2*3``, ``a * b``) stays a star."""
    out = []
    for part in re.split(r"(`[^`]+`)", text):  # code spans keep their stars
        if len(part) > 1 and part[0] == part[-1] == "`":
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        part = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html.escape(part))
        out.append(re.sub(r"(?<![*\w])\*(?=[^*\s])([^*]*?)(?<=[^*\s])\*(?![*\w])", r"<em>\1</em>", part))
    return "".join(out)


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def parse_markdown_table(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, alignments) of a pipe table such as ``bench.results_table`` returns."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not re.fullmatch(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?", lines[1].strip()):
        raise ValueError("not a Markdown pipe table: the second line must be the |---|---| separator")
    header = _split_row(lines[0])
    aligns = []
    for cell in _split_row(lines[1]):
        aligns.append(
            "right"
            if cell.endswith(":") and not cell.startswith(":")
            else "center"
            if cell.startswith(":") and cell.endswith(":")
            else "left"
        )
    rows = [_split_row(ln) for ln in lines[2:]]
    return header, rows, aligns


class Table:
    """A table that renders as a table everywhere: HTML in the book and Colab, Markdown elsewhere."""

    def __init__(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        align: Optional[Sequence[str]] = None,
        caption: Optional[str] = None,
    ):
        self.header = [str(h) for h in header]
        self.rows = [["" if v is None else str(v) for v in row] for row in rows]
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"a row has {len(row)} cells but the header has {len(self.header)}: {row}")
        self.align = list(align) if align is not None else ["left"] * len(self.header)
        self.caption = caption

    def _repr_html_(self) -> str:
        def cells(values, tag):
            return "".join(
                f'<{tag} style="text-align:{a}">{_inline_html(v)}</{tag}>' for v, a in zip(values, self.align)
            )

        body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in self.rows)
        caption = f"<caption>{_inline_html(self.caption)}</caption>" if self.caption else ""
        return (
            f'<table class="table sslbook-table">{caption}<thead><tr>{cells(self.header, "th")}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )

    def _repr_markdown_(self) -> str:
        rule = {"left": "---", "right": "---:", "center": ":---:"}
        lines = ["| " + " | ".join(self.header) + " |", "|" + "|".join(rule[a] for a in self.align) + "|"]
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in self.rows]
        return ("" if not self.caption else f"{self.caption}\n\n") + "\n".join(lines)

    def __repr__(self) -> str:
        widths = [max(len(x) for x in col) for col in zip(self.header, *self.rows)]
        fmt = "  ".join(f"{{:{'>' if a == 'right' else '<'}{w}}}" for a, w in zip(self.align, widths))
        return "\n".join(fmt.format(*r) for r in [self.header, *self.rows])


def _number(value: Any, digits: int) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, str):
        return re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?\s*[%x]?", value.strip()) is not None
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(
    rows: Any,
    columns: Optional[Sequence[str]] = None,
    headers: Optional[Sequence[str]] = None,
    digits: int = 2,
    caption: Optional[str] = None,
) -> Table:
    """A :class:`Table` from a Markdown pipe table, a list of dicts, a list of lists (with ``headers``)
    or a DataFrame-like object (anything with ``.columns`` and ``.values``)."""
    if isinstance(rows, str):
        header, body, align = parse_markdown_table(rows)
        return Table(header, body, align, caption)
    if hasattr(rows, "columns") and hasattr(rows, "values"):  # a pandas DataFrame, without importing pandas
        headers = headers or [str(c) for c in rows.columns]
        rows = [list(r) for r in rows.values]
    rows = list(rows)
    if rows and isinstance(rows[0], dict):
        columns = list(columns or rows[0].keys())
        headers = headers or columns
        rows = [[r.get(c) for c in columns] for r in rows]
    if headers is None:
        raise ValueError("rows given as lists need headers=[...] naming the columns")
    numeric = [all(_is_number(r[i]) for r in rows if r[i] is not None) for i in range(len(headers))]
    align = ["right" if n and rows else "left" for n in numeric]
    return Table(headers, [[_number(v, digits) for v in r] for r in rows], align, caption)


def show_sentences(lines: Sequence[str]) -> None:
    """Show sentences a notebook generated from its own numbers as one Markdown block (a bullet list
    when each line starts with ``- ``); tables go through :func:`show_table` instead."""
    from IPython.display import Markdown, display

    display(Markdown("\n".join(lines)))


def show_table(
    rows: Any,
    columns: Optional[Sequence[str]] = None,
    headers: Optional[Sequence[str]] = None,
    digits: int = 2,
    caption: Optional[str] = None,
) -> None:
    """Display a table (see :func:`table` for what ``rows`` may be), e.g.
    ``show_table(bench.results_table(rows))`` or ``show_table([{"k": 1, "top-1": 43.2}])``."""
    from IPython.display import display

    display(table(rows, columns, headers, digits, caption))


# ------------------------------------------------------------------------------------------------- code
class HighlightedCode:
    """Python source, highlighted by Pygments; long lines wrap instead of running past the column."""

    def __init__(self, source: str, title: Optional[str] = None, language: str = "python"):
        self.source, self.title, self.language = source, title, language

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name

        formatter = HtmlFormatter(cssclass="highlight sslbook-code")
        style = (
            f"<style>{formatter.get_style_defs('.sslbook-code')}"
            ".sslbook-code pre{white-space:pre-wrap;overflow-wrap:anywhere}</style>"
        )
        title = f"<p><code>{html.escape(self.title)}</code></p>" if self.title else ""
        return title + style + highlight(self.source, get_lexer_by_name(self.language), formatter)

    def _repr_markdown_(self) -> str:
        return f"```{self.language}\n{self.source}\n```"

    def __repr__(self) -> str:
        return self.source


def resolve(name: str) -> Any:
    """``"sslbook.losses.nt_xent"`` or ``"sslbook.methods.simclr.SimCLR.forward"`` -> the object."""
    import importlib

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"cannot import {name!r}: give an object or a dotted name such as 'sslbook.losses.nt_xent'")


def strip_docstring(source: str) -> str:
    """The source of a function, class or module without its (first) docstring."""
    tree = ast.parse(source)
    nodes = [tree] + [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))][:1]
    lines = source.splitlines()
    for node in reversed(nodes):
        body = getattr(node, "body", [])
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            del lines[body[0].lineno - 1 : body[0].end_lineno]
    return "\n".join(lines)


def wrap_line(line: str, width: int = COLUMN) -> list[str]:
    """Break a line longer than ``width`` after a comma or space, continuing 8 spaces deeper; a
    comment that is broken goes on as a comment."""
    indent = len(line) - len(line.lstrip())
    comment = line.find("  # ") + 2 if "  # " in line else (indent if line.lstrip().startswith("#") else -1)
    out, rest, first, done, in_comment = [], line, True, 0, False
    while len(rest) > width:
        lead = indent + (0 if first else 8)
        cut = max(rest.rfind(", ", 0, width - 1) + 1, rest.rfind(" ", lead + 1, width))
        if cut <= lead:
            cut = width  # no space to break at: break the token itself
        if rest[:cut].rstrip().endswith("#") and rest.rfind("  #", 0, cut) > lead:
            cut = rest.rfind("  #", 0, cut)  # never leave a bare "#": the comment moves down whole
        out.append(rest[:cut].rstrip())
        done += cut - (0 if first else lead + (2 if in_comment else 0))
        in_comment = 0 <= comment < done
        rest = " " * (indent + 8) + ("# " if in_comment else "") + rest[cut:].lstrip()
        first = False
    return out + [rest]


def code_text(
    obj: Any,
    lines: Optional[tuple[int, int]] = None,
    max_lines: int = MAX_LINES,
    docstring: bool = False,
    width: int = COLUMN,
) -> str:
    """The text :func:`show_code` shows: the dedented source, without the docstring unless asked for,
    restricted to ``lines`` (1-based, inclusive, counted in what remains), lines wrapped at ``width``,
    and cut to ``max_lines`` with a last line saying where the rest is."""
    if isinstance(obj, str):
        obj = resolve(obj)
    source = textwrap.dedent(inspect.getsource(obj)).rstrip()
    if not docstring:
        source = strip_docstring(source)
    shown = source.splitlines()
    if lines is not None:
        start, end = lines
        if not 1 <= start <= end:
            raise ValueError(f"lines must be (first, last) with 1 <= first <= last, got {lines}")
        shown = shown[start - 1 : end]
    wrapped = [piece for line in shown for piece in wrap_line(line, width)]
    if len(wrapped) > max_lines:
        path, package = Path(inspect.getsourcefile(obj)).resolve(), Path(__file__).resolve().parent
        where = f"sslbook/{path.relative_to(package)}" if package in path.parents else path.name
        wrapped = wrapped[: max_lines - 1] + [f"# ... {len(wrapped) - max_lines + 1} more lines in {where}"]
    return "\n".join(wrapped)


def show_code(
    obj: Any,
    lines: Optional[tuple[int, int]] = None,
    max_lines: int = MAX_LINES,
    docstring: bool = False,
    width: int = COLUMN,
) -> None:
    """Show the source of ``obj`` (a function, class, method or a dotted name) highlighted: at most
    ``max_lines`` lines, none wider than ``width``; the docstring is left out (show it with
    :func:`show_doc`) unless ``docstring=True``. ``lines=(a, b)`` picks a piece of a long definition."""
    from IPython.display import display

    name = obj if isinstance(obj, str) else f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    display(HighlightedCode(code_text(obj, lines, max_lines, docstring, width), title=name.strip(".")))


def show_doc(obj: Any, width: int = COLUMN, max_lines: int = MAX_LINES) -> None:
    """Show the docstring of ``obj`` (often a formula or the paper's pseudocode) as a plain text block."""
    from IPython.display import display

    if isinstance(obj, str):
        obj = resolve(obj)
    doc = sphinx_roles_as_code(inspect.getdoc(obj) or "")
    wrapped = [piece for line in doc.splitlines() for piece in wrap_line(line, width)]
    if len(wrapped) > max_lines:
        wrapped = wrapped[: max_lines - 1] + [f"... ({len(wrapped) - max_lines + 1} more lines)"]
    display(HighlightedCode("\n".join(wrapped), language="text"))


def pseudocode_rows(doc: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Split a docstring that lays a paper's pseudocode beside the code into (prose before, rows of
    (pseudocode line, the code that implements it), prose after). The pseudocode is the first indented
    block; a line's code is what follows its ``->``. A line without ``->`` indented more than 8 spaces
    beyond a line with one (deeper than pseudocode nests) continues that line's code, wrapped: it becomes
    a row of its own with an empty pseudocode cell, so neither column grows wider than the docstring's."""
    lines = inspect.cleandoc(doc).splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("    ") and ln.strip()), None)
    if start is None:
        return lines, [], []
    end = start
    while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
        end += 1
    rows, coded_indent = [], None  # the indentation of the last line with code (None: it had none)
    for line in lines[start:end]:
        if not line.strip():
            continue
        text = line[4:]
        indent = len(text) - len(text.lstrip())
        pseudo, arrow, code = text.partition(" -> ")
        if not arrow and coded_indent is not None and indent > coded_indent + 8:
            rows.append(("", text.strip()))  # the previous line's code, wrapped
            continue
        rows.append((pseudo.rstrip(), code.strip() if arrow else ""))
        coded_indent = indent if arrow else None
    return lines[:start], rows, lines[end:]


def sphinx_roles_as_code(text: str) -> str:
    """A docstring's Sphinx cross-references (``:func:`~a.b```) as plain Markdown code (```a.b```), for
    docstring prose shown on a page, where the role would print literally."""
    return re.sub(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc):`~?([^`]+)`", r"`\1`", text)


def show_pseudocode(obj: Any) -> None:
    """Show a docstring that maps a paper's pseudocode to the code (the method modules' docstrings) as
    prose, and the mapping as a two-column table: each pseudocode line beside what implements it."""
    from IPython.display import Markdown, display

    if isinstance(obj, str):
        obj = resolve(obj)
    before, rows, after = pseudocode_rows(inspect.getdoc(obj) or "")
    before, after = [sphinx_roles_as_code(line) for line in before], [sphinx_roles_as_code(line) for line in after]
    if before:
        display(Markdown("\n".join(before)))
    if rows:
        nbsp = "\u00a0"
        cells = [
            [f"`{nbsp * (len(p) - len(p.lstrip()))}{p.strip()}`" if p.strip() else "", f"`{c}`" if c else ""]
            for p, c in rows
        ]
        display(Table(["the paper's pseudocode", "implemented by"], cells))
    if after:
        display(Markdown("\n".join(after).strip()))


# --------------------------------------------------------------------------------------------- examples
def sample_examples(
    labels: Any, n: Optional[int] = None, seed: int = 0, per_class: Optional[int] = None
) -> torch.Tensor:
    """Indices of example images that do not depend on the order of a split.

    ``labels`` is a split's labels (a tensor, array or list): the examples are class-balanced.
    With ``n``, the classes take turns in a seeded random order (n=8 of 10 classes: 8 different
    classes; n=20: two of each). With ``per_class=k``, k of each class, grouped by class (one grid row
    per class). ``labels`` may also be an int, the size of an unlabelled split: then ``n`` indices
    drawn at random with the seed.
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(labels, int):
        if n is None or not 0 <= n <= labels:
            raise ValueError(f"need 0 <= n <= {labels} examples from an unlabelled split, got n={n}")
        return torch.randperm(labels, generator=g)[:n]
    labels = torch.as_tensor(labels).flatten()
    classes = labels.unique()
    pools = [(labels == c).nonzero().flatten() for c in classes]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    if per_class is not None:
        if n is not None and n != per_class * len(classes):
            raise ValueError(f"give n or per_class, not both (n={n}, per_class={per_class})")
        short = [int(c) for c, p in zip(classes, pools) if len(p) < per_class]
        if short:
            raise ValueError(f"classes {short} have fewer than per_class={per_class} examples")
        return torch.cat([p[:per_class] for p in pools])
    if n is None:
        raise ValueError("give n (how many examples) or per_class")
    if n > len(labels):
        raise ValueError(f"asked for {n} examples of a split of {len(labels)}")
    order = torch.randperm(len(classes), generator=g).tolist()
    taken, depth = [], 0
    while len(taken) < n:
        for c in order:
            if depth < len(pools[c]) and len(taken) < n:
                taken.append(int(pools[c][depth]))
        depth += 1
    return torch.tensor(taken, dtype=torch.long)


# ------------------------------------------------------------------------------------------------- glue
def glue(name: str, value: Any, fmt: Optional[str] = None, display: bool = False) -> None:
    """Store ``value`` under ``name`` for the prose (``{glue:text}`name``` in a Markdown cell), like
    ``myst_nb.glue`` but without needing myst-nb (Colab does not have it). ``fmt`` formats numbers
    (``"{:.1f}"``). Returns nothing, so that a cell ending with a glue shows no stray value.

    The record holds the text as a Python string literal, as IPython shows a ``str``: myst-nb reads a
    glued value with ``ast.literal_eval``, which would turn bare text such as ``24,576`` into a tuple,
    ``+1.60`` into ``1.6`` and ``38.00`` into ``38.0``."""
    from IPython.display import display as ipy_display

    text = value if isinstance(value, str) else (fmt.format(value) if fmt else repr(value))
    prefix = "" if display else "application/papermill.record/"
    record = {prefix + "text/plain": repr(text)}
    ipy_display(record, raw=True, metadata={"scrapbook": {"name": name, "mime_prefix": prefix}})


# ------------------------------------------------------------------------------------------------- zoo
ZOO_COLUMNS = ("method", "epochs", "train_minutes", "images_per_s", "knn200_top1", "knn20_top1", "linear_top1")


def show_zoo_run(
    name: str,
    live: Optional[dict] = None,
    pixels: Any = None,
    label: Optional[str] = None,
    root: Optional[str | Path] = None,
    profile: str = "cpu",
):
    """The long run of the model-zoo entry ``name`` beside the page's short live run.

    Shows a table (the live run's results ``live``, the zoo entry, the raw-pixel baseline ``pixels``
    -- a kNN top-1 or a row with ``knn200_top1``/``linear_top1`` -- and the published number) and the
    entry's kNN curve over its epochs (``root``/``profile``: another zoo, as in tests). Returns the
    entry's row (:func:`sslbook.zoo.row`), or None with one line saying how to make the entry if it is
    not trained here.
    """
    from . import zoo
    from .report import accuracy_vs_time

    if not zoo.trained(name, root, profile):
        print(f"the zoo entry {name!r} is not trained here; `python -m sslbook zoo {name}` trains it")
        return None
    label = label or name
    entry = zoo.row(name, root, profile)
    rows = [{**live, "method": f"{label}, this page's run"}] if live is not None else []
    rows.append({**entry, "method": f"{label}, zoo ({entry['epochs']:.0f} epochs)"})
    baseline = _show_zoo_rows(rows, pixels)
    fig = accuracy_vs_time([entry], x="epochs", baseline=baseline, labels=[f"{label} (zoo)"])
    fig.axes[0].set_title(f"{label}: kNN top-1 on the test set over the zoo run")
    return entry


def show_zoo_table(
    labels: dict,
    live: Optional[dict] = None,
    pixels: Any = None,
    root: Optional[str | Path] = None,
    profile: str = "cpu",
) -> list[dict]:
    """One row per trained zoo entry (``labels``: entry name -> the name shown), with the page's short
    live run of the same method beside it (``live``: shown name -> results, its kNN as a column), the
    raw-pixel baseline ``pixels`` and the published number; entries not trained here are named in one
    line. Returns the entries' rows (:func:`sslbook.zoo.row`) for :func:`sslbook.report.accuracy_vs_time`."""
    from . import zoo

    entries, missing = [], []
    for name, label in labels.items():
        if not zoo.trained(name, root, profile):
            missing.append(name)
            continue
        row = {**zoo.row(name, root, profile), "method": label}
        row["live_knn"] = (live or {}).get(label, {}).get("knn200_top1")
        entries.append(row)
    _show_zoo_rows(entries, pixels)
    if missing:
        print(f"not in the zoo here yet: {', '.join(missing)} (`python -m sslbook zoo NAME` trains one)")
    return entries


def _show_zoo_rows(rows: list[dict], pixels: Any) -> Optional[float]:
    """Show zoo (and live-run) rows with a last raw-pixel row (``pixels``: a kNN top-1 or a row), in the
    columns some row has (:data:`ZOO_COLUMNS`, the live run's kNN, the published number). Returns the
    pixels' kNN top-1 (None without ``pixels``)."""
    rows = list(rows)
    if pixels is not None:
        rows.append({**(pixels if isinstance(pixels, dict) else {"knn200_top1": pixels}), "method": "raw pixels"})
    columns = [c for c in (*ZOO_COLUMNS, "live_knn") if any(r.get(c) is not None for r in rows)]
    show_table(rows, columns + ["published"], [_ZOO_HEADERS[c] for c in columns] + ["published"], digits=1)
    return rows[-1].get("knn200_top1") if pixels is not None else None


def from_zoo(name: str, profile: Any, stand_in: Callable[[], Any], part: str = "backbone") -> Any:
    """The trained backbone of the zoo entry ``name`` (``part="method"``: the whole method, eval mode).

    In the ``smoke`` profile, which CI runs before every entry of a fresh zoo is trained, a missing
    entry is replaced by ``stand_in()``, with one line saying so; in every other profile a missing
    entry is the zoo's one-line error (a page's stored outputs always use the trained entry).
    """
    from . import zoo

    if getattr(profile, "name", profile) == "smoke" and not zoo.trained(name):
        print(f"zoo entry {name!r} is not trained here: a stand-in takes its place (smoke profile)")
        return stand_in()
    return zoo.load_method(name) if part == "method" else zoo.load_backbone(name)


_ZOO_HEADERS = {
    "method": "run",
    "epochs": "epochs",
    "train_minutes": "training (min)",
    "images_per_s": "images/s",
    "knn200_top1": "kNN k=200 (%)",
    "knn20_top1": "kNN k=20 (%)",
    "linear_top1": "linear (%)",
    "live_knn": "short live run: kNN (%)",
}


# ------------------------------------------------------------------------------------------------- experiments
SEED_SUFFIX = re.compile(r"-s(\d+)$")


def results_file(name: str, root: Optional[str | Path] = None) -> Optional[dict]:
    """``benchmarks/results/<name>.json`` of the book's checkout (written by a script in
    ``benchmarks/``), or None if it is not there (e.g. on Colab, where only the package is installed)."""
    base = Path(root) if root is not None else book_root()
    path = base / "benchmarks" / "results" / f"{name}.json" if base is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def sweep_results(name: str, root: Optional[str | Path] = None) -> Optional[dict]:
    """The results file of the book experiment or recipe sweep ``name``
    (``benchmarks/results/sweep-<name>.json``, written by ``benchmarks/book_experiments.py`` or
    ``benchmarks/sweep_recipes.py``), or None if it is not there."""
    return results_file(f"sweep-{name}", root)


def sweep_settings(sweep: dict) -> dict:
    """The arms of a sweep grouped by setting (an arm ``<setting>-s<N>`` is seed N of ``<setting>``):
    setting -> {"arms": rows, "mean": mean kNN k=200, "spread": half the range over seeds, "seeds": n,
    "epochs", "train_minutes" (mean)}, in the order the settings first appear. Arms that did not
    finish are left out."""
    groups: dict = {}
    for arm in sweep["arms"]:
        if arm.get("knn200_top1") is None:
            continue
        groups.setdefault(SEED_SUFFIX.sub("", arm["arm"]), []).append(arm)
    return {
        setting: {
            "arms": arms,
            **summarize([a["knn200_top1"] for a in arms]),
            "epochs": arms[0]["epochs"],
            "train_minutes": sum(a["train_minutes"] for a in arms) / len(arms),
        }
        for setting, arms in groups.items()
    }


def summarize(values: Sequence[float]) -> dict:
    """``{"mean", "spread", "seeds"}`` of one setting's results over seeds: the mean, half the range
    (max - min) / 2, and how many there are; what :func:`compare_settings` compares."""
    values = list(values)
    return {"mean": sum(values) / len(values), "spread": (max(values) - min(values)) / 2, "seeds": len(values)}


def _no_sweep(name: str) -> None:
    print(f"the results of experiment {name!r} are not here; `python benchmarks/book_experiments.py {name}` makes them")


def show_sweep(name: str, labels: Optional[dict] = None, logged: Sequence[str] = (), root=None) -> Optional[dict]:
    """Show a book experiment's results as a table: one row per setting (``labels``: setting -> the
    name shown, in that order; default every setting), with its kNN top-1 as mean ± half the range over
    seeds, the seeds, epochs and minutes, and the last logged value of each key in ``logged`` (e.g.
    ``"output_std"``). Returns :func:`sweep_settings`, or None with one line saying how to make the
    file if it is not there."""
    sweep = sweep_results(name, root)
    if sweep is None:
        return _no_sweep(name)
    settings = sweep_settings(sweep)
    labels = labels or {s: s for s in settings}
    rows = []
    for setting, label in labels.items():
        if setting not in settings:
            continue
        g = settings[setting]
        knn = f"{g['mean']:.2f} ± {g['spread']:.2f}" if g["seeds"] > 1 else f"{g['mean']:.2f}"
        row = {
            "setting": label,
            "kNN k=200 (%)": knn,
            "seeds": g["seeds"],
            "epochs": g["epochs"],
            "training (min)": g["train_minutes"],
        }
        for key in logged:
            values = [a["step_curve"][-1].get(key) for a in g["arms"] if a.get("step_curve")]
            values = [v for v in values if v is not None]
            mean = sum(values) / len(values) if values else None
            # small values keep three significant digits: an output std of 0.0214 against 0.0072 is
            # a collapse, which two decimals (0.02 against 0.01) would hide
            row[f"last {key}"] = None if mean is None else f"{mean:.2f}" if abs(mean) >= 1 else f"{mean:.3g}"
        rows.append(row)
    show_table(
        rows,
        digits=2,
        caption=f"{sweep['config']}, {sweep['budget']} per arm, {sweep['profile']} profile "
        f"({sweep['date']}): `benchmarks/book_experiments.py {name}`",
    )
    return settings


def show_sweep_curves(
    name: str, keys: Sequence[str], labels: Optional[dict] = None, titles: Sequence[str] = (), root=None
):
    """The training curves of a book experiment: one panel per logged key in ``keys`` (e.g. ``"loss"``,
    ``"output_std"``) against the step, one line per setting (``labels``: setting -> the name shown),
    from the seed-0 arm's step records in the results file. Returns the figure, or None (with
    :func:`show_sweep`'s line) if the file is not there."""
    import matplotlib.pyplot as plt

    sweep = sweep_results(name, root)
    if sweep is None:
        return _no_sweep(name)
    arms = {arm["arm"]: arm for arm in sweep["arms"] if arm.get("step_curve")}
    labels = labels or {a: a for a in arms if not SEED_SUFFIX.search(a)}
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.6), squeeze=False)
    for ax, key, title in zip(axes[0], keys, [*titles, *keys[len(titles) :]]):
        for setting, label in labels.items():
            points = [(r["step"], r[key]) for r in arms.get(setting, {}).get("step_curve", []) if key in r]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set(xlabel="step", ylabel=key, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def settings_verdict(settings: Optional[dict], a: str, b: str) -> Optional[str]:
    """Whether setting ``a`` scored "above" or "below" setting ``b`` by more than the seeds' spread (the
    sum of both half-ranges), or "within" it; None when either is missing or has a single seed, so
    that the noise is not measured. For a chapter that branches on a result (see
    :func:`compare_settings` for the words)."""
    if not settings or a not in settings or b not in settings:
        return None
    ga, gb = settings[a], settings[b]
    if ga["seeds"] < 2 or gb["seeds"] < 2:
        return None
    gap = ga["mean"] - gb["mean"]
    if abs(gap) <= ga["spread"] + gb["spread"]:
        return "within"
    return "above" if gap > 0 else "below"


def compare_settings(settings: Optional[dict], a: str, b: str, b_label: Optional[str] = None) -> str:
    """Words for setting ``a`` against setting ``b`` (called ``b_label`` in the text) that their
    numbers support, to glue after "``a`` scored": "3.10 points above the recipe (more than the seed
    spread, ±0.40)", "within the seed spread of the recipe (+0.20 points, ±0.40)", or, with a single
    seed, the bare difference said to be unmeasured against noise. ``settings`` is
    :func:`sweep_settings` or any dict of :func:`summarize` results; the spread is the sum of both
    settings' half-ranges over seeds (:func:`settings_verdict`)."""
    b_label = b_label or b
    if not settings or a not in settings or b not in settings:
        return f"(not measured here) against {b_label}"
    ga, gb = settings[a], settings[b]
    gap, noise = ga["mean"] - gb["mean"], ga["spread"] + gb["spread"]
    verdict = settings_verdict(settings, a, b)
    if verdict is None:
        side = "above" if gap > 0 else "below"
        return f"{abs(gap):.2f} points {side} {b_label} (one seed, so the noise is not measured)"
    if verdict == "within":
        return f"within the seed spread of {b_label} ({gap:+.2f} points, ±{noise:.2f})"
    return f"{abs(gap):.2f} points {verdict} {b_label} (more than the seed spread, ±{noise:.2f})"


# ------------------------------------------------------------------------------------------------- runs
def book_root() -> Optional[Path]:
    """The repository checkout this package was installed from (editable install), if any."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "chapters").is_dir() and (root / "_toc.yml").is_file() else None


# The chapter whose notebook trains a run, by the run's name (the part before "-<profile>").
# Other chapters read those runs (reused when finished with the same settings, trained otherwise).
RUN_HOMES = {
    "simclr": "03_architectures",
    "simclr-t*": "03_architectures",
    "compare-*": "03_architectures",
    "simclr_vit": "04_encoders",
}


def run_dir(name: str, profile: Optional[str] = None) -> Path:
    """The folder of the run ``name`` in ``profile`` (default: the current one), e.g.
    ``run_dir("simclr")`` -> ``<book>/chapters/03_architectures/runs/simclr-cpu``.

    Runs of :data:`RUN_HOMES` live in the chapter that trains them; any other name is the calling
    notebook's own ``runs/<name>-<profile>``. Outside a checkout of the book (Colab), every run is
    ``runs/<name>-<profile>`` beside the notebook."""
    from fnmatch import fnmatch

    from sslbook.profiles import get_profile

    profile = profile or get_profile().name
    folder = f"{name}-{profile}"
    root = book_root()
    home = next((chapter for pattern, chapter in RUN_HOMES.items() if fnmatch(name, pattern)), None)
    if root is None or home is None:
        return Path("runs") / folder
    chapter = next((p for p in (root / "chapters").iterdir() if p.name == home), None)
    if chapter is None:
        raise ValueError(f"run {name!r} belongs to chapter folder {home!r}, which is missing under {root / 'chapters'}")
    return chapter / "runs" / folder


def run_command(command: Sequence[str]) -> None:
    """Run a command (e.g. ``[sys.executable, "-m", "sslbook", "bench", ...]``) and print its output
    line by line as it comes, so long work shows progress in the notebook; raise if it fails."""
    import subprocess

    tail: list[str] = []
    with subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail = (tail + [line])[-20:]
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command[:4]))} ... exited with status {process.returncode}; "
            f"its last lines:\n{''.join(tail)}"
        )


# ------------------------------------------------------------------------------------------- run plans
# Estimates for a Colab T4 (labelled as estimates wherever they are shown): what a notebook costs
# besides its capped training runs. Per run: building the model, the kNN monitor and the final kNN and
# linear evaluation; per notebook: installing the package, loading CIFAR-10, figures.
GPU_OVERHEAD_PER_RUN = 1.5
GPU_OVERHEAD_PER_NOTEBOOK = 3.0
COLAB_SESSION_MINUTES = 45.0


@dataclass
class Plan:
    """A notebook's training runs: how many, and the wall-clock cap of each in the ``gpu`` profile.

    In ``cpu`` and ``smoke`` the profile sets the budget; in ``gpu`` the configs are the papers' full
    recipes (hundreds of epochs), so a notebook caps each run at ``gpu_minutes_per_run`` to finish in
    one Colab session. The full recipe of any config stays one command:
    ``python -m sslbook train configs/cifar10/simclr.yaml profile=gpu``.
    """

    runs: int
    gpu_minutes_per_run: float = 0.0
    other_gpu_minutes: float = 0.0
    started: int = 0

    @property
    def gpu_minutes(self) -> float:
        """Planned minutes of the whole notebook on a T4 (an estimate)."""
        return planned_gpu_minutes(self.runs, self.gpu_minutes_per_run, self.other_gpu_minutes)

    def overrides(self, *extra: str) -> list[str]:
        """:data:`LIVE_RUN` + ``extra``; in the ``gpu`` profile also ``max_minutes=<cap>`` (a smaller
        ``max_minutes`` in ``extra`` is kept, a larger or ``null`` one replaced). Counts the run."""
        from sslbook.profiles import get_profile

        self.started += 1
        if self.started > self.runs:
            raise RuntimeError(
                f"this notebook starts more training runs than its plan declares ({self.runs}): "
                "raise runs= in book.plan(...) and check the gpu budget"
            )
        if get_profile().name != "gpu":
            return [*LIVE_RUN, *extra]
        # gpu: the cap, unless the run asks for less itself
        asked = [e for e in extra if e.startswith("max_minutes=")]
        value = asked[-1].split("=", 1)[1].strip() if asked else "null"
        if value not in ("null", "None", "") and float(value) <= self.gpu_minutes_per_run:
            return [*LIVE_RUN, *extra]
        return [
            *LIVE_RUN,
            *(e for e in extra if not e.startswith("max_minutes=")),
            f"max_minutes={self.gpu_minutes_per_run:g}",
        ]

    def minutes(self) -> Optional[float]:
        """The cap for a run started another way (``sslbook bench --minutes``); None outside ``gpu``."""
        from sslbook.profiles import get_profile

        return self.gpu_minutes_per_run if get_profile().name == "gpu" else None


def planned_gpu_minutes(runs: int, gpu_minutes_per_run: float, other_gpu_minutes: float = 0.0) -> float:
    return runs * (gpu_minutes_per_run + GPU_OVERHEAD_PER_RUN) + other_gpu_minutes + GPU_OVERHEAD_PER_NOTEBOOK


def plan(runs: int, gpu_minutes_per_run: float = 0.0, other_gpu_minutes: float = 0.0) -> Plan:
    """Declare the notebook's training runs (see :class:`Plan`). Refuses a plan that does not fit a
    Colab session of :data:`COLAB_SESSION_MINUTES`."""
    p = Plan(runs, gpu_minutes_per_run, other_gpu_minutes)
    if p.gpu_minutes > COLAB_SESSION_MINUTES:
        raise ValueError(
            f"planned {p.gpu_minutes:.0f} min on a Colab GPU, over the {COLAB_SESSION_MINUTES:g}-minute "
            "session: fewer runs or a smaller gpu_minutes_per_run"
        )
    return p


def notebook_plan(notebook: dict) -> Optional[Plan]:
    """The plan a notebook declares (``PLAN = book.plan(runs=..., gpu_minutes_per_run=...)`` in a code
    cell, literal numbers), read from its JSON without running it; None if it declares none."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        source = "\n".join(ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "plan":
                names = ("runs", "gpu_minutes_per_run", "other_gpu_minutes")
                values = dict(zip(names, (ast.literal_eval(a) for a in node.args)))
                values.update({k.arg: ast.literal_eval(k.value) for k in node.keywords})
                return Plan(**values)
    return None


# ------------------------------------------------------------------------------------------- run times
RUN_TIME_TAG = "sslbook-run-time"


def run_time_note(metadata: dict, gpu_minutes: Optional[float]) -> str:
    """The Markdown line near the top of each chapter page: the measured ``cpu``-profile run time (from
    the metadata ``scripts/execute_notebooks.py`` records) and the estimated Colab GPU time."""
    info = metadata.get("sslbook", {})
    if info.get("profile") == "cpu" and info.get("seconds") is not None:
        minutes = info["seconds"] / 60
        took = f"{minutes:.0f} min" if minutes >= 1 else "under a minute"
        when = f" on {info['executed']}" if info.get("executed") else ""
        if info.get("cores") and info.get("load_average_start") is not None:
            where = (
                f" on {info['cores']} CPU cores (load average {info['load_average_start']:.1f} at the start, "
                f"{info['load_average_end']:.1f} at the end)"
            )
        else:
            where = " (cores and load not recorded)"
        cpu = f"Ran in {took} in the `cpu` profile{when}{where}."
    else:
        cpu = "The `cpu`-profile run time is not recorded yet."
    gpu = (
        f" On a Colab T4 GPU expect about {gpu_minutes:.0f} min (an estimate from the notebook's run plan)."
        if gpu_minutes is not None
        else ""
    )
    return (
        f"**Run time.** {cpu}{gpu}\n\n"
        "<small>This note is written by <code>scripts/execute_notebooks.py</code> when it executes the notebook."
        "</small>"
    )

"""Open the built book in headless Chromium and check what a reader sees.

`make test` builds the book first and sets SSLBOOK_REQUIRE_BOOK=1, so there a missing build or a
missing browser fails; a bare `pytest tests` without a build skips these tests.
"""

import ast
import html as html_module
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import glue_records

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
INTRO = HTML / "chapters" / "01_introduction" / "introduction.html"
REQUIRED = os.environ.get("SSLBOOK_REQUIRE_BOOK") == "1"


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if REQUIRED:
            pytest.fail("chromium is not installed (apt-get install chromium); .ci/run installs it")
        pytest.skip("no chromium")
    if not INTRO.exists():
        if REQUIRED:
            pytest.fail(f"{INTRO} is missing: `make book` did not build the introduction")
        pytest.skip("book not built")
    return exe


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def run_chromium(exe, tmp_path, *args):
    cmd = [exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_introduction_renders(tmp_path):
    exe = chromium()
    dom = run_chromium(exe, tmp_path, "--virtual-time-budget=5000", "--dump-dom", INTRO.as_uri()).stdout
    assert (
        "<h1>Introduction: learning from images without labels" in dom.replace("\n", "")
        or "Introduction: learning from images without labels" in dom
    )
    assert 'class="cell docutils container"' in dom or "cell_input" in dom  # code cells are there
    assert "cell_output" in dom and "kNN top-1" in dom  # and so are their stored outputs
    colab = "colab.research.google.com/github/sslbook/sslbook/blob/main/chapters/01_introduction/introduction.ipynb"
    assert colab in dom
    assert "<img" in dom  # the figures


def test_screenshot(tmp_path):
    exe = chromium()
    shot = ROOT / "_build" / "introduction.png"
    run_chromium(exe, tmp_path, "--window-size=1280,2000", f"--screenshot={shot}", INTRO.as_uri())
    assert shot.exists() and shot.stat().st_size > 20_000


# ------------------------------------------------------------------------------------ every chapter page
def chapter_pages() -> list[str]:
    """The chapter notebooks of the table of contents, e.g. "chapters/03_architectures/simclr"."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f for f in files if f.startswith("chapters/")]


PAGES = chapter_pages()

# Measured in the page after it loaded, then written into the DOM for --dump-dom to return.
CHECK_SCRIPT = """
<script>
document.addEventListener("DOMContentLoaded", () => {  // not "load": it waits for the CDN (MathJax)
  const article = document.querySelector("article") || document.querySelector("main");
  const right = article.getBoundingClientRect().right;
  const outputs = [...document.querySelectorAll("div.cell_output")];
  const tables = outputs.flatMap(o => [...o.querySelectorAll("table")]).length;
  const prose = [...document.querySelectorAll("article")].map(a => {
    const copy = a.cloneNode(true);
    copy.querySelectorAll(".cell_input, script, style").forEach(e => e.remove());
    return copy.innerText;
  }).join("\\n");
  const overflowing = [];
  for (const o of outputs) {
    const parts = o.querySelectorAll("pre, div.output, div.highlight, table, .pst-scrollable-table-container");
    for (const el of [o, ...parts]) {
      const tooWide = el.scrollWidth > el.clientWidth + 1 || el.getBoundingClientRect().right > right + 1;
      if (tooWide) { overflowing.push((el.innerText || "").slice(0, 80)); break; }
    }
  }
  const report = {tables, rawPipes: /\\|\\s*:?-{3,}:?\\s*\\|/.test(prose), overflowing,
                  runTime: /Run time\\./.test(prose), width: Math.round(article.getBoundingClientRect().width)};
  const pre = document.createElement("pre");
  pre.id = "sslbook-check";
  pre.textContent = JSON.stringify(report);
  document.body.appendChild(pre);
});
</script>
"""


def measure(exe, tmp_path, page: str) -> dict:
    html = HTML / f"{page}.html"
    assert html.exists(), f"{html} is missing: the book build did not produce this chapter"
    probe = html.with_name(html.stem + ".__check__.html")  # beside the page, so its CSS and images load
    probe.write_text(html.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        dom = run_chromium(
            exe, tmp_path, "--window-size=1280,2000", "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()
        ).stdout
    finally:
        probe.unlink()
    found = re.search(r'<pre id="sslbook-check"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, f"{page}: the check script did not run (is chromium working?)"
    return json.loads(html_module.unescape(found.group(1)))


def stored_tables(page: str) -> int:
    """How many computed tables the notebook's stored outputs hold (Markdown pipe tables or HTML tables)."""
    nb = json.loads((ROOT / f"{page}.ipynb").read_text())
    count = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            html, md = "".join(data.get("text/html", "")), "".join(data.get("text/markdown", ""))
            count += html.count("<table") if html else len(re.findall(r"^\|?\s*:?-{3,}", md, re.M))
    return count


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    exe = chromium()
    tmp = tmp_path_factory.mktemp("chromium")
    return {page: measure(exe, tmp, page) for page in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=[p.split("/")[-1] for p in PAGES])
def test_computed_tables_are_tables(pages, page):
    report = pages[page]
    assert not report["rawPipes"], f"{page}: raw |---| text on the page: a Markdown table did not render"
    assert report["tables"] >= stored_tables(page), (
        f"{page}: {stored_tables(page)} tables in the stored outputs, only {report['tables']} <table> elements"
    )


@pytest.mark.parametrize("page", PAGES, ids=[p.split("/")[-1] for p in PAGES])
def test_output_lines_fit_the_column(pages, page):
    assert not pages[page]["overflowing"], f"{page}: output wider than the column: {pages[page]['overflowing'][:3]}"


@pytest.mark.parametrize("page", PAGES, ids=[p.split("/")[-1] for p in PAGES])
def test_run_time_line_is_there(pages, page):
    assert pages[page]["runTime"], f"{page}: no run-time line (scripts/execute_notebooks.py --notes-only writes it)"


def test_screenshot_of_every_chapter(tmp_path):
    exe = chromium()
    folder = ROOT / "_build" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    for page in PAGES:
        shot = folder / f"{page.split('/')[-1]}.png"
        run_chromium(exe, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", (HTML / f"{page}.html").as_uri())
        assert shot.exists() and shot.stat().st_size > 20_000, f"no screenshot of {page}"


# ---------------------------------------------------------------------------------------- glued values
def glued_in_prose(page: str) -> dict[str, str]:
    """name -> text of every value the page's Markdown glues in with {glue:text}`name`."""
    nb = json.loads((ROOT / f"{page}.ipynb").read_text())
    prose = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    used = set(re.findall(r"\{glue:text\}`([^`]+)`", prose))
    return {name: ast.literal_eval(record) for name, record in glue_records(nb["cells"]) if name in used}


@pytest.mark.parametrize("page", PAGES, ids=[p.split("/")[-1] for p in PAGES])
def test_glued_values_reach_the_prose_as_computed(page):
    # myst-nb evaluates a glued record before it prints it: a bare "24,576" came out as "(24, 576)"
    html = HTML / f"{page}.html"
    if not html.exists():
        if REQUIRED:
            pytest.fail(f"{html} is missing: the book build did not produce this chapter")
        pytest.skip("book not built")
    text = _plain(html_module.unescape(re.sub(r"<[^>]+>", "", html.read_text())))
    missing = {name: value for name, value in glued_in_prose(page).items() if _plain(str(value)) not in text}
    assert not missing, f"{page}: glued values not on the page as the notebook computed them: {missing}"


def _plain(text: str) -> str:
    """Text with its whitespace collapsed and Sphinx's smart quotes, dashes and ellipses undone."""
    for smart, plain in (
        ("\u2018", "'"),
        ("\u2019", "'"),
        ("\u201c", '"'),
        ("\u201d", '"'),
        ("\u2014", "---"),
        ("\u2013", "--"),
        ("\u2026", "..."),
    ):
        text = text.replace(smart, plain)
    return " ".join(text.split())

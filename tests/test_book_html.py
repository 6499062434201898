"""Open the built book in headless Chromium and check what a reader sees.

`make test` builds the book first and sets SSLBOOK_REQUIRE_BOOK=1, so there a missing build or a
missing browser fails; a bare `pytest tests` without a build skips these tests.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def run_chromium(exe, tmp_path, *args):
    cmd = [exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_introduction_renders(tmp_path):
    exe = chromium()
    dom = run_chromium(exe, tmp_path, "--virtual-time-budget=5000", "--dump-dom", INTRO.as_uri()).stdout
    assert "<h1>Introduction: learning from images without labels" in dom.replace("\n", "") or \
        "Introduction: learning from images without labels" in dom
    assert 'class="cell docutils container"' in dom or "cell_input" in dom  # code cells are there
    assert "cell_output" in dom and "kNN top-1" in dom  # and so are their stored outputs
    assert "colab.research.google.com/github/sslbook/sslbook/blob/main/chapters/01_introduction/introduction.ipynb" in dom
    assert "<img" in dom  # the figures


def test_screenshot(tmp_path):
    exe = chromium()
    shot = ROOT / "_build" / "introduction.png"
    run_chromium(exe, tmp_path, "--window-size=1280,2000", f"--screenshot={shot}", INTRO.as_uri())
    assert shot.exists() and shot.stat().st_size > 20_000

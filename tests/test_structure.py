"""Issue 18's structural rules, checked by scripts/check_structure.py: no function in the package over
120 lines, no module using another module's ``_private`` names."""

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("check_structure", ROOT / "scripts" / "check_structure.py")
check_structure = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_structure)


def test_package_has_no_long_functions_and_no_private_imports(capsys):
    assert check_structure.main(["sslbook"]) == 0, capsys.readouterr().out


def test_checker_finds_each_kind_of_offender(tmp_path):
    package = tmp_path / "sslbook" / "methods"
    package.mkdir(parents=True)
    lines = [f"    x{i} = {i}\n" for i in range(120)]
    long_body, short_body = "".join(lines), "".join(lines[:-1])  # with the def line: 121 and 120 lines
    (package / "new.py").write_text(
        "from .. import eval as ev\n"
        "from ..config import _set, apply_override\n"
        "from .base import __all__\n"
        "import sslbook.trainer as tr\n"
        f"def long():\n{long_body}"
        f"def short():\n{short_body}"
        "ev._training_flags(None)\n"
        "tr.train(ev.public)\n"
        "tr._autocast('fp32', None)\n"
    )
    found = check_structure.offenders(package / "new.py", tmp_path)
    assert found == [
        "sslbook/methods/new.py:5: function long is 121 lines (over 120)",
        "sslbook/methods/new.py:2: uses another module's private name from sslbook.config import _set",
        "sslbook/methods/new.py:246: uses another module's private name sslbook.eval._training_flags",
        "sslbook/methods/new.py:248: uses another module's private name sslbook.trainer._autocast",
    ]

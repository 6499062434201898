"""List functions over 120 lines and imports of another module's ``_private`` names (issue 18).

    python scripts/check_structure.py                 # sslbook/
    python scripts/check_structure.py sslbook benchmarks --max-lines 90

Prints one line per offender and exits 1 when there is any, 0 otherwise. A function's length runs
from its ``def`` (decorators excluded) to its last line; nested functions count inside their parent
and again on their own. A private use is ``from .x import _name``, or ``alias._name`` where ``alias``
is a module of the package imported into this one. Dunder names (``__version__``) are public.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sslbook"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def long_functions(tree: ast.AST, max_lines: int) -> list[tuple[int, str, int]]:
    """(line, qualified name, length) of every function longer than ``max_lines``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > max_lines:
                    found.append((child.lineno, name, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _module_of(node: ast.ImportFrom, package: list[str]) -> str:
    """The dotted module an ``ImportFrom`` names, relative imports resolved against ``package``."""
    if not node.level:
        return node.module or ""
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(tree: ast.AST, package: list[str]) -> list[tuple[int, str]]:
    """(line, what) of every use of another package module's private name in a module of ``package``
    (e.g. ``["sslbook", "methods"]`` for sslbook/methods/moco.py and sslbook/methods/__init__.py)."""
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _module_of(node, package)
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                if is_private(alias.name):
                    found.append((node.lineno, f"from {source} import {alias.name}"))
                else:  # `from . import eval as ev` binds a module
                    module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    module_aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
        ):
            found.append((node.lineno, f"{module_aliases[node.value.id]}.{node.attr}"))
    return sorted(found)


def offenders(path: Path, root: Path = ROOT, max_lines: int = 120) -> list[str]:
    """One line per long function and per private use in the file at ``path`` (inside ``root``)."""
    where = path.relative_to(root)
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = [
        f"{where}:{line}: function {name} is {length} lines (over {max_lines})"
        for line, name, length in long_functions(tree, max_lines)
    ]
    lines += [
        f"{where}:{line}: uses another module's private name {what}"
        for line, what in private_uses(tree, list(where.parts[:-1]))
    ]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=[PACKAGE], help="folders to check (default: sslbook)")
    parser.add_argument("--max-lines", type=int, default=120, help="longest function allowed (default 120)")
    args = parser.parse_args(argv)
    found = [
        line
        for folder in args.folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line in offenders(path, ROOT, args.max_lines)
    ]
    print("\n".join(found) if found else f"no function over {args.max_lines} lines, no private imports")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

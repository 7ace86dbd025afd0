"""The runtime boundary: engine/ (what the browser wheel ships) imports numpy and the standard library only.

Every engine/*.py is parsed with `ast` (nothing is imported, so an optional dependency cannot hide
a bad import). Allowed, besides numpy, the standard library and engine's own modules:
  - `js` / `pyodide` in engine/bridge.py only, under an `if` (the `IN_PYODIDE` guard);
  - `jinja2` only inside a `try` that catches ImportError (engine/chat.py: templates are optional).
Never: `mote` (CPython tools), `web` (the dev server) or any other third-party package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
ALLOWED = {"engine", "numpy"} | set(sys.stdlib_module_names)
BROWSER_ONLY = {"js", "pyodide"}      # allowed in the BRIDGE modules under an `if`
OPTIONAL = {"jinja2"}                 # allowed inside `try: ... except ImportError`
BRIDGE = ("bridge.py", "buffer.py")  # the worker's side of the boundary (buffer: its stdlib-only part)


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
            return True
    return False


def forbidden_imports(source: str, filename: str) -> list[str]:
    """'file:line module' for every import in `source` that the runtime may not make.

    >>> forbidden_imports("import numpy as np\\nfrom . import quants", "x.py")
    []
    >>> forbidden_imports("from mote.encoders import quantize", "x.py")
    ['x.py:1 mote.encoders']
    """
    bad: list[str] = []

    def visit(node: ast.AST, in_if: bool, in_try: bool) -> None:
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and (
                    (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            modules = [node.args[0].value]                         # importlib.import_module("web.app")
        for module in modules:
            top = module.split(".")[0]
            ok = (top in ALLOWED
                  or (top in BROWSER_ONLY and filename.endswith(BRIDGE) and in_if)
                  or (top in OPTIONAL and in_try))
            if not ok:
                bad.append(f"{filename}:{node.lineno} {module}")
        for child in ast.iter_child_nodes(node):
            visit(child, in_if or isinstance(node, ast.If),
                  in_try or (isinstance(node, ast.Try) and child in node.body and _catches_import_error(node)))

    visit(ast.parse(source, filename), False, False)
    return bad


def test_engine_imports_only_numpy_and_the_standard_library():
    files = sorted(ENGINE.glob("*.py"))
    assert len(files) > 10, f"expected the engine package at {ENGINE}"
    bad = [b for f in files for b in forbidden_imports(f.read_text(), f"engine/{f.name}")]
    assert bad == [], "engine/ must import only numpy + stdlib (tools live in mote/, the server in web/): " \
                      + ", ".join(bad)


@pytest.mark.parametrize("source", [
    "import web",
    "from web.app import serve",
    "from mote import encoders",
    "def f():\n    from mote.pull import resolve_model",      # lazy imports count too
    "import torch",
    "import jinja2",                                          # optional only inside try/except ImportError
    "try:\n    import jinja2\nexcept ValueError:\n    pass",
    "try:\n    pass\nexcept ImportError:\n    import jinja2",  # the handler is not the guarded body
    "import importlib\nimportlib.import_module('mote.cli')",
    "import js",                                              # only engine/bridge.py, under its guard
])
def test_the_check_catches_forbidden_imports(source):
    assert forbidden_imports(source, "engine/x.py") != []


@pytest.mark.parametrize("source, filename", [
    ("try:\n    import jinja2.sandbox\nexcept ImportError:\n    jinja2 = None", "engine/chat.py"),
    ("if IN_PYODIDE:\n    import js\n    from pyodide.ffi import to_js", "engine/bridge.py"),
    ("from .quants import TYPES\nimport numpy as np\nfrom engine import chat\nimport hashlib", "engine/x.py"),
])
def test_the_check_allows_the_runtime_imports(source, filename):
    assert forbidden_imports(source, filename) == []

"""The package's layers (DESIGN.md section 5): imports run one way, with no circle, and a function-level import
only defers a heavy or optional third-party dependency, saying why. An upward import fails here, in CI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tie_lite"


def test_the_import_contracts_hold():
    """import-linter's own command, on the contracts in pyproject.toml (layers, the engine's independence from
    tasks and faces, the bottom modules, no circles among siblings)."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package whose engine imports a face is refused."""
    import shutil

    copy = tmp_path / "tie_lite"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    layout = copy / "engine" / "layout.py"
    layout.write_text(layout.read_text() + "\nfrom tie_lite.faces import options  # noqa: E402,F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(tmp_path / "pyproject.toml")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert done.returncode != 0
    assert "tie_lite.engine.layout -> tie_lite.faces.options" in done.stdout


def function_level_imports(path: Path):
    """(line number, imported module, source lines around it) for every import inside a function."""
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                names = [a.name for a in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                names = [("." * inner.level) + (inner.module or "")]
            else:
                continue
            yield inner.lineno, names, lines[inner.lineno - 2 : inner.end_lineno]


def test_function_level_imports_only_defer_heavy_dependencies_with_a_reason():
    """No import hides inside a function to break a circle: the layers need none. What remains defers a heavy
    or optional dependency (torch for --help, ray, gradio, a plotting library) and says so."""
    stdlib = set(sys.stdlib_module_names)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for lineno, names, around in function_level_imports(path):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            for name in names:
                if name.split(".")[0] in stdlib:
                    found.append(f"{where}: the standard library's {name} belongs at the top of the module")
            if not any("#" in line for line in around):
                found.append(f"{where}: a deferred import needs a one-line reason (a comment on it or above it)")
    assert not found, "\n".join(found)

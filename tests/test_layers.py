"""The package's folders are its layers, and the imports keep them so (read with ``ast``, no
import is run): core is pure, only store/ speaks to the store, only http/ (with the composition
root and the server) speaks HTTP, and nothing at run time needs dev/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sidecar"

HTTP_LIBRARIES = ("aiohttp", "multidict", "yarl")
STORE_LIBRARIES = ("hvac", "requests", "urllib3")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions included), absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).glob("*.py")) if layer else sorted(PACKAGE.glob("*.py"))


def _named(path: Path) -> str:
    try:
        return str(path.relative_to(PACKAGE.parent))
    except ValueError:
        return str(path)


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{_named(path)} imports {name}"
        for path in paths
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def test_core_is_pure():
    """No HTTP, no store client, no metrics library; of our own package, only core itself and
    the store's interface (an allow-list: a new store module is not reachable by accident)."""
    forbidden = (*HTTP_LIBRARIES, *STORE_LIBRARIES, "prometheus_client")
    assert _offending(_modules("core"), forbidden) == []
    own = sorted(
        f"{_named(path)} imports {name}"
        for path in _modules("core")
        for name in _imports(path)
        if name.split(".")[0] == "sidecar" and not _allowed_in_core(name)
    )
    assert own == []


def _allowed_in_core(name: str) -> bool:
    # ``from sidecar.store.interface import X`` is read as both the module and module.X
    return name.startswith(("sidecar.core.", "sidecar.store.interface")) or name in (
        "sidecar.core",
        "sidecar",
    )


def test_only_the_store_client_imports_hvac_and_only_store_speaks_to_the_store():
    everything = [p for p in PACKAGE.rglob("*.py")]
    hvac = sorted(
        _named(p) for p in everything if any(n.split(".")[0] == "hvac" for n in _imports(p))
    )
    assert hvac == ["sidecar/store/client.py"]
    outside = [p for p in everything if p.parent.name != "store"]
    assert _offending(outside, ("requests", "urllib3")) == []


@pytest.mark.parametrize("layer", ["store", "ops"])
def test_store_and_ops_speak_no_http(layer: str):
    forbidden = (*HTTP_LIBRARIES, "sidecar.http", "sidecar.dev", "sidecar.app", "sidecar.server")
    assert _offending(_modules(layer), forbidden) == []


def test_http_lives_in_http_and_the_composition_root():
    allowed = {"app.py", "server.py"}
    elsewhere = [
        p
        for p in PACKAGE.rglob("*.py")
        if p.parent.name not in ("http", "dev", "drill")
        and not (p.parent == PACKAGE and p.name in allowed)
    ]
    assert _offending(elsewhere, ("aiohttp",)) == []


def test_nothing_at_run_time_needs_dev():
    """dev/ (the embedded OpenBao, the demo) ships with the dev extra only; the CLI loads the
    demo lazily, inside its command."""
    runtime = [p for p in PACKAGE.rglob("*.py") if p.parent.name != "dev"]
    offenders = [
        f"{_named(p)} imports {name}"
        for p in runtime
        for node in ast.parse(p.read_text()).body  # module level only
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in _imports_of(node)
        if name.startswith("sidecar.dev")
    ]
    assert offenders == []


def _imports_of(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""]


def test_the_check_itself_sees_imports(tmp_path: Path):
    """A rule that cannot fail proves nothing: the reader finds imports in functions too."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from aiohttp import web\n    import hvac\n")
    assert _offending([probe], ("aiohttp", "hvac")) == [
        f"{probe} imports aiohttp",
        f"{probe} imports aiohttp.web",
        f"{probe} imports hvac",
    ]
    assert not _allowed_in_core("sidecar.store.kv")
    assert not _allowed_in_core("sidecar.store")
    assert _allowed_in_core("sidecar.store.interface.Backend")


def test_wheel_leaves_dev_out_and_the_cli_says_so(tmp_path: Path):
    """The wheel (and so the image) is built without sidecar.dev; `sidecar demo` from such an
    install says what to do instead of a traceback."""
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'exclude = ["sidecar.dev", "sidecar.dev.*"]' in pyproject
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'sidecar.dev' or name.startswith('sidecar.dev.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sidecar.cli import main\n"
        f"sys.exit(main(['demo', '--dir', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "make run" in done.stderr
    assert "Traceback" not in done.stderr


def _undocumented(path: Path) -> list[str]:
    """Public classes, functions and methods of public classes without a docstring."""
    missing: list[str] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name.startswith("_"):
                    continue
                if ast.get_docstring(node) is None:
                    missing.append(f"{_named(path)}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(path.read_text()).body, "")
    return missing


def test_every_public_class_and_function_says_what_it_is_for():
    """A newcomer reads the docstrings first; one line is enough, none is not."""
    missing = [m for p in sorted(PACKAGE.rglob("*.py")) for m in _undocumented(p)]
    assert missing == []


def test_tests_mirror_the_package():
    """Unit tests sit in the folder of the layer they test; behaviour against the real store
    end to end in integration/; the deployment artefacts (chart, manifests) in deploy/; at the
    top only what tests the top-level modules or the layout itself."""
    tests = PACKAGE.parent / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {"core", "store", "http", "ops", "integration", "deploy", "drill"}
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders - {"integration", "deploy"} <= layers
    assert sorted(p.name for p in tests.glob("test_*.py")) == [
        "test_docs.py",
        "test_layers.py",
        "test_packaging.py",
        "test_settings.py",
    ]

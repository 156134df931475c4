"""The proxy side's modules import one another without a circle (``TYPE_CHECKING``
imports included): each concern can be read, and tested, without the ones above it."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
# Where each package of the distribution lives in the repository (setup.cfg's package_dir).
PACKAGES = {"zerocompute.middleware": "middleware", "zerocompute.sandbox": "sandbox",
            "zerocompute": "zerocompute"}


def modules_under(package: str) -> dict[str, str]:
    """Module name -> file, for every module of ``package`` (and its sub-packages)."""
    base = os.path.join(ROOT, PACKAGES[package])
    found = {}
    for directory, _dirs, files in os.walk(base):
        for name in files:
            if not name.endswith(".py"):
                continue
            relative = os.path.relpath(os.path.join(directory, name), base)[:-3]
            parts = [p for p in relative.split(os.sep) if p != "__init__"]
            found[".".join([package, *parts])] = os.path.join(directory, name)
    return found


def imports_of(path: str, module: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions, TYPE_CHECKING blocks)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` (as the modules along it), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[module] = "done"
        return None
    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_proxy_side_has_no_import_circle():
    modules = modules_under("zerocompute.middleware")
    assert "zerocompute.middleware.proxy.runner" in modules
    graph = {name: {other for other in imports_of(path, name)
                    if other in modules and other != name}
             for name, path in modules.items()}
    assert circle(graph) is None, f"import circle: {' -> '.join(circle(graph))}"


def test_the_circle_finder_finds_one():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", ["zerocompute.middleware", "zerocompute.sandbox"])
def test_no_module_of_a_package_imports_the_old_proxy_filter(package):
    for name, path in modules_under(package).items():
        assert "zerocompute.middleware.job" not in imports_of(path, name), name


@pytest.mark.parametrize("module", ["zerocompute.cli", "zerocompute.dev.devcluster",
                                    "zerocompute.client"])
def test_the_command_line_does_not_load_eventlet(module):
    # eventlet warns of its deprecation on stderr at import; a CLI error is one line.
    loaded = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         f"import sys, {module}; print('eventlet' in sys.modules)"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"

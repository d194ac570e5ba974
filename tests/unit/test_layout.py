"""The package's layout keeps its promise: no two modules depend on each other, so each reads in one
direction. Imports for type checking alone count too (they couple modules as much: `_bulk` -> `_client` was
one, `_exceptions` -> `_models` another), and so do absolute imports (`pixverse_async.x`, as
`pixverse_async/testing/` writes them) and `from . import x`."""

from __future__ import annotations

import ast
from pathlib import Path

import pixverse_async

PACKAGE = Path(pixverse_async.__file__).parent
MODULES = {
    ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    for path in PACKAGE.rglob("*.py")
    if (parts := ("pixverse_async", *path.relative_to(PACKAGE).with_suffix("").parts))
}


def _module_name(path: Path) -> str:
    parts = ("pixverse_async", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """The package's modules that `source` (the text of `module`) imports, however written."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                imported = ".".join([*base, node.module] if node.module else base)
            else:
                imported = node.module or ""
            if imported in MODULES:
                # `from . import x` imports the module x when there is one, else a name of the package.
                found.update({f"{imported}.{alias.name}" for alias in node.names} & MODULES or {imported})
    return found


def test_the_import_reader_sees_every_way_of_writing_an_import() -> None:
    source = """
import json
import pixverse_async._clock
from pixverse_async._images import probe_image
from pixverse_async.testing import _tasks
from . import _faults, Simulator
from ._rate_limits import CallRateLimit
from .. import cli
from .._budget import Pacer
if TYPE_CHECKING:
    from .._models import Task
"""
    assert _imports(source, "pixverse_async.testing._example") == {
        "pixverse_async._clock",
        "pixverse_async._images",
        "pixverse_async.testing._tasks",
        "pixverse_async.testing._faults",
        "pixverse_async.testing._rate_limits",
        "pixverse_async.cli",
        "pixverse_async._budget",
        "pixverse_async._models",
    }
    assert _imports("from . import testing, version_of_nothing", "pixverse_async", is_package=True) == {
        "pixverse_async.testing"
    }
    assert _imports("from . import Simulator", "pixverse_async.testing._x") == {"pixverse_async.testing"}


def test_no_two_modules_depend_on_each_other() -> None:
    graph = {
        _module_name(path): _imports(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")
        for path in PACKAGE.rglob("*.py")
    }
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in done:
                visit(imported, [*path, imported])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []
    assert graph["pixverse_async._bulk"] and graph["pixverse_async._client"]  # the walk saw the package
    assert "pixverse_async._clock" in graph["pixverse_async.testing"]  # and testing's absolute imports


def test_no_module_is_over_600_lines() -> None:
    # A module that long has stopped doing one thing (issue 13): split it along the seams it marks.
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert long == {}

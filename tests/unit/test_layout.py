"""The package's layout keeps its promise: no two modules depend on each other, so each reads in one
direction. Imports for type checking alone count too (they couple modules as much, `_bulk` -> `_client` was
one), but for the one edge below."""

from __future__ import annotations

import ast
from pathlib import Path

import pixverse_async

PACKAGE = Path(pixverse_async.__file__).parent
# `SubmissionUncertainError.request` is the `ImageToVideo` it is about: `_exceptions` only names that type,
# under TYPE_CHECKING, while `_models` raises the errors.
TYPE_ONLY_EDGES = {("pixverse_async._exceptions", "pixverse_async._models")}


def _module_name(path: Path) -> str:
    parts = ("pixverse_async", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package's modules that `path` imports (relative imports, as the package uses)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            found.add(".".join([*base, node.module] if node.module else base))
    return found


def test_no_two_modules_depend_on_each_other() -> None:
    graph = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}
    for importer, imported in TYPE_ONLY_EDGES:
        graph[importer].discard(imported)
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


def test_no_module_is_over_700_lines() -> None:
    # A module that long has stopped doing one thing (issue 13): split it along the seams it marks.
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 700
    }
    assert long == {}

"""The public namespace: one sorted `__all__`, and nothing public left out of it."""

from __future__ import annotations

import builtins
import inspect
import re

import pixverse_async
import pixverse_async.testing
import pixverse_async.web
from pixverse_async import (
    APIConnectionError,
    APITimeoutError,
    InvalidRequestError,
    PixVerseError,
    TaskTimeoutError,
)


def _isort_style(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    for module in (pixverse_async, pixverse_async.testing, pixverse_async.web):
        assert module.__all__ == sorted(module.__all__, key=_isort_style), "keep __all__ sorted (ruff RUF022)"
        assert len(set(module.__all__)) == len(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name
        # A package re-exports its private modules' names; a plain module's public names are its own.
        is_package = hasattr(module, "__path__")
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and not inspect.ismodule(value)
            and name not in {"annotations", "TYPE_CHECKING"}
            and (is_package or getattr(value, "__module__", module.__name__) == module.__name__)
        }
        assert public <= set(module.__all__), public - set(module.__all__)


def test_every_exception_is_a_pixverse_error_and_the_matching_builtin() -> None:
    errors = [v for v in vars(pixverse_async).values() if inspect.isclass(v) and issubclass(v, BaseException)]
    assert all(issubclass(error, PixVerseError) for error in errors)
    assert issubclass(InvalidRequestError, ValueError)
    assert issubclass(APITimeoutError, TimeoutError) and issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(TaskTimeoutError, TimeoutError)
    assert issubclass(APIConnectionError, ConnectionError)


def _drawn_tree() -> list[tuple[str, str | None, list[str]]]:
    """The tree drawn at the top of `_exceptions`: (name, parent drawn above it, built-ins it says it also is)."""
    from pixverse_async import _exceptions

    drawn: list[tuple[str, str | None, list[str]]] = []
    parents: list[str] = []  # the latest name drawn at each depth
    for line in (_exceptions.__doc__ or "").split("\n\n")[1].splitlines():
        name_at = line.index("── ") + 3 if "── " in line else len(line) - len(line.lstrip())
        name = line[name_at:].split()[0]
        depth = (name_at - 4) // 4
        del parents[depth:]
        drawn.append((name, parents[-1] if parents else None, re.findall(r"\(also (\w+)\)", line)))
        parents.append(name)
    return drawn


def test_the_exception_tree_drawn_in_the_docstring_is_the_real_one() -> None:
    drawn = _drawn_tree()
    exported = {name for name, v in vars(pixverse_async).items() if inspect.isclass(v) and issubclass(v, BaseException)}
    assert {name for name, _, _ in drawn} == exported
    for name, parent, builtins_named in drawn:
        error = getattr(pixverse_async, name)
        ours = [base for base in error.__mro__[1:] if issubclass(base, PixVerseError)]
        assert (ours[0].__name__ if ours else None) == parent, name
        for builtin in builtins_named:
            assert issubclass(error, getattr(builtins, builtin)), (name, builtin)
        # A built-in the class is (other than through its drawn parent) is named in the tree.
        inherited = set(getattr(pixverse_async, parent).__mro__) if parent else set()
        own = {base.__name__ for base in error.__mro__[1:] if base not in inherited}
        own -= {base.__name__ for base in error.__mro__ if issubclass(base, PixVerseError)}
        own -= {base.__name__ for builtin in builtins_named for base in getattr(builtins, builtin).__mro__[1:]}
        assert own - {"Exception", "BaseException", "object"} <= set(builtins_named), name

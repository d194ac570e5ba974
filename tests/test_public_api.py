"""The public namespace: one sorted `__all__`, and nothing public left out of it."""

from __future__ import annotations

import inspect

import pixverse_async
import pixverse_async.testing
import pixverse_async.web
from pixverse_async import (
    APIConnectionError,
    APIStatusError,
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


def test_exception_tree_docstring_names_every_exception() -> None:
    from pixverse_async import _exceptions

    errors = [name for name, v in vars(pixverse_async).items() if inspect.isclass(v) and issubclass(v, BaseException)]
    for name in errors:
        assert name in (_exceptions.__doc__ or ""), name
    assert APIStatusError(400, "X", "m").status_code == 400

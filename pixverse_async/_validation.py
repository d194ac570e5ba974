"""The checks that every option, policy and clock shares, so that a bad value is refused the same way
everywhere: an `InvalidRequestError` (also a `ValueError`) naming the option and what it accepts, when the
object is built, before anything is sent. Options of the client and its policies raise its subclass
`ConfigurationError` (`error=`; the attrs validators `number` and `count` always do).

Numbers are `int` or `float`, never `bool` (a flag passed where a count goes is a mistake, not 1) and never
`str`; NaN is refused everywhere; infinity only where it says "no limit" better than `None` cannot (nowhere
yet: `None` is the library's one spelling of "no limit").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._exceptions import ConfigurationError, InvalidRequestError

AttrsValidator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

# No router issues keys this short; with one, its every occurrence in a message could not be told from a word.
MIN_API_KEY_CHARS = 6


def check_number(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    none_means: str | None = None,
    error: type[InvalidRequestError] = InvalidRequestError,
) -> None:
    """A finite int or float in range (`above` is exclusive, `at_least`/`at_most` inclusive); `None` is allowed
    only when `none_means` says what it means."""
    if value is None and none_means is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error(name, f"must be {_number_range(above, at_least, at_most, none_means)}, not {value!r}")
    if (
        (above is not None and not value > above)
        or (at_least is not None and not value >= at_least)
        or (at_most is not None and not value <= at_most)
    ):
        raise error(name, f"must be {_number_range(above, at_least, at_most, none_means)}, not {value!r}")


def check_count(
    name: str, value: object, *, at_least: int = 1, error: type[InvalidRequestError] = InvalidRequestError
) -> None:
    """A whole number (an `int`, not a `bool` or a float) of at least `at_least`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise error(name, f"must be a whole number >= {at_least}, not {value!r}")


def check_bool(name: str, value: object, *, error: type[InvalidRequestError] = InvalidRequestError) -> None:
    if not isinstance(value, bool):
        raise error(name, f"must be True or False, not {value!r}")


def check_instance(
    name: str, value: object, expected: type[Any], *, error: type[InvalidRequestError] = InvalidRequestError
) -> None:
    if not isinstance(value, expected):
        raise error(name, f"must be a {expected.__name__}, not {type(value).__name__}")


def check_http_url(
    name: str,
    value: object,
    *,
    credentials_allowed: bool = True,
    origin_only: bool = False,
    error: type[InvalidRequestError] = InvalidRequestError,
) -> str:
    """An `http://` or `https://` URL (scheme in any case) with a host; returned as given. `origin_only`: no
    path (but `/`), query or fragment either, as a base URL that paths are added to."""
    if not isinstance(value, str):
        raise error(name, f"must be an http(s):// URL str, not {type(value).__name__}")
    shown = repr(value[:80])
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as unparsable:
        raise error(name, f"{shown} is not a valid URL ({unparsable})") from None
    del port
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise error(name, f"{shown} has {scheme}; only http:// and https:// URLs are accepted")
    if not parts.hostname:
        raise error(name, f"{shown} has no host")
    if not credentials_allowed and (parts.username is not None or parts.password is not None):
        # Not echoed: the credentials are the point.
        raise error(name, "the URL carries credentials (user:password@), which are not accepted here")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value):
        raise error(name, f"{shown} holds whitespace or a control character")
    if origin_only:
        extra = (
            f"a path ({parts.path[:40]!r})"
            if parts.path not in ("", "/")
            else "a query (?...)"
            if "?" in value
            else "a fragment (#...)"
            if "#" in value
            else None
        )
        if extra is not None:
            raise error(
                name,
                f"{shown} has {extra}; give the scheme and host only (as https://api.myrouter.ai): the API's"
                " paths (/v3/async/...) are added to it",
            )
    return value


# Longer than any id a task API issues (a UUID has 36 characters), short enough to keep out of a URL's way.
MAX_TASK_ID_CHARS = 256


def task_id_problem(task_id: str) -> str | None:
    """Why `task_id` cannot be a task's id (empty, too long, whitespace or a control character), or None."""
    if not task_id:
        return "a task id must not be empty"
    if len(task_id) > MAX_TASK_ID_CHARS:
        return f"a task id has at most {MAX_TASK_ID_CHARS} characters, not {len(task_id)}"
    if task_id.isprintable() and " " not in task_id:  # not printable: controls, separators, format characters
        return None
    position, char = next((i, c) for i, c in enumerate(task_id) if c == " " or not c.isprintable())
    return f"a task id holds no whitespace or control characters; U+{ord(char):04X} at position {position}"


def api_key_problem(key: str) -> str | None:
    """What is wrong with an API key (already stripped of surrounding whitespace), without showing it; None if
    it can go in an `Authorization: Bearer` header. Returned, not raised, so that the caller can drop the key
    from its frame before raising."""
    if len(key) < MIN_API_KEY_CHARS:
        return f"is {len(key)} characters long; an API key has at least {MIN_API_KEY_CHARS}"
    for position, char in enumerate(key):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"holds a control character (U+{ord(char):04X}) at position {position}"
        if char.isspace():
            hint = " (pass the key alone, without 'Bearer ')" if key[:7].lower() == "bearer " else ""
            return f"holds whitespace at position {position}{hint}"
        if not char.isascii() or not char.isprintable():
            return f"holds a character that cannot go in an HTTP header (U+{ord(char):04X}) at position {position}"
    return None


def number(
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    none_means: str | None = None,
) -> AttrsValidator:
    """`check_number` as an attrs validator, naming the field."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check_number(
            attribute.name,
            value,
            above=above,
            at_least=at_least,
            at_most=at_most,
            none_means=none_means,
            error=ConfigurationError,
        )

    return validate


def check_order(low_name: str, low: float | None, high_name: str, high: float | None) -> None:
    """Two fields of one configuration that bound each other from below and above: `ConfigurationError`,
    naming both, when the low one is above the high one (None is no bound)."""
    if low is not None and high is not None and low > high:
        raise ConfigurationError(low_name, f"is {low}, more than {high_name} ({high}); it must be at most {high_name}")


def count(*, at_least: int = 1) -> AttrsValidator:
    """`check_count` as an attrs validator, naming the field."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check_count(attribute.name, value, at_least=at_least, error=ConfigurationError)

    return validate


def _number_range(above: float | None, at_least: float | None, at_most: float | None, none_means: str | None) -> str:
    bounds = []
    if above is not None:
        bounds.append(f"> {above:g}")
    if at_least is not None:
        bounds.append(f">= {at_least:g}")
    if at_most is not None:
        bounds.append(f"<= {at_most:g}")
    text = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
    return f"{text}, or None ({none_means})" if none_means is not None else text


#: Characters of a submission's webhook token (`_lost_answers`): a hex digest of 16 bytes.
SUBMISSION_TOKEN_LENGTH = 32


def submission_token_problem(token: object) -> str | None:
    """Why `token` cannot be a submission's webhook token (one the client made), or None."""
    if not isinstance(token, str):
        return f"a webhook token is a str, not {type(token).__name__}"
    if len(token) != SUBMISSION_TOKEN_LENGTH or token.strip("0123456789abcdef"):
        return f"a webhook token is {SUBMISSION_TOKEN_LENGTH} lowercase hex digits, as the client makes them"
    return None

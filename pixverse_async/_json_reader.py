"""One reader for JSON from outside the library: webhook deliveries (anyone may post them), the API's answers,
requests to the simulator. Bounded in size and in nesting depth, so that a body raises nothing but
`UnreadableJSON` (a `ValueError`): not a `RecursionError` from the parser (a 100,000-deep array), nor later
from code that walks what was parsed (redaction, the converters).

The depth is looked at only when it could matter: a body holding no more brackets and braces than the limit
cannot nest deeper (a task result holds about eight), so a bounded read costs two `count()` calls before the
parse. The API's success answers, read on every poll and read by fixed fields only, leave the depth to the
parser (`max_depth=None`): it raises `RecursionError` before the stack runs out, taken as unreadable too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

# Deeper than any body of the API (a webhook delivery nests 5 levels), and far from Python's recursion limit.
MAX_DEPTH: Final = 64
# A webhook delivery is one task result, a few kilobytes: 1 MiB is aiohttp's own default for a request body.
MAX_WEBHOOK_BYTES: Final = 1 << 20

# A string (skipped whole: brackets in it do not nest), or a bracket.
_TOKENS_IN_BYTES: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_TOKENS_IN_TEXT: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class UnreadableJSON(ValueError):
    """A body that is not JSON, or is bigger or nested deeper than allowed."""


class JSONTooLarge(UnreadableJSON):
    """A body over its size limit, not read."""


def read_json(data: bytes | str, *, max_bytes: int | None = None, max_depth: int | None = MAX_DEPTH) -> Any:
    """The JSON value in `data`, at most `max_bytes` long (bytes, or characters of a str) and nested at most
    `max_depth` levels; `UnreadableJSON` otherwise. `max_depth=None` leaves the depth to the parser, which
    refuses what would exhaust the stack: for a body read by fixed fields only, never walked whole."""
    if max_bytes is not None and len(data) > max_bytes:
        raise JSONTooLarge(f"a body of {len(data)} bytes, over the limit of {max_bytes}")
    if isinstance(data, bytes):
        if max_depth is not None and data.count(b"[") + data.count(b"{") > max_depth:
            _check_depth(_TOKENS_IN_BYTES.finditer(data), (b"[", b"{"), max_depth)
        try:
            text = data.decode()
        except UnicodeDecodeError as error:
            raise UnreadableJSON(f"not UTF-8 text (byte {error.start})") from None
    else:
        text = data
        if max_depth is not None and data.count("[") + data.count("{") > max_depth:
            _check_depth(_TOKENS_IN_TEXT.finditer(data), ("[", "{"), max_depth)
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadableJSON("nested deeper than the parser goes") from None
    except ValueError as error:  # a JSONDecodeError, or an integer of more digits than Python converts
        raise UnreadableJSON(f"not valid JSON ({error})") from None


def _check_depth(tokens: Iterator[re.Match[Any]], openers: tuple[Any, Any], max_depth: int) -> None:
    depth = 0
    for token in tokens:
        bracket = token[0]
        if len(bracket) != 1:
            continue  # a string
        if bracket in openers:
            depth += 1
            if depth > max_depth:
                raise UnreadableJSON(f"nested deeper than {max_depth} levels")
        else:
            depth -= 1

"""The API key never shows: not in a traceback's local variables, not in what a server echoes, not through a
caller's session. And masking it never damages text that does not hold it."""

from __future__ import annotations

import types
import warnings
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from pixverse_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ImageToVideo,
    InvalidRequestError,
    PermissionDeniedError,
    PixVerseClient,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    TaskFailedError,
    Timeouts,
    Video,
)
from pixverse_async._transport import Secret, redact
from pixverse_async.testing._video import mp4_for_task
from tests.helpers import tiny_server

pytestmark = pytest.mark.anyio
KEY = "sk-live-0123456789abcdef"
NO_RETRY = RetryPolicy(max_attempts=1)
URL = "https://example.com/frame.png"


def _strings_in(value: object, depth: int = 0, seen: set[int] | None = None) -> Iterator[str]:
    """What a traceback with locals (pytest -l, Sentry, rich) could show of `value`: its repr, and a few
    levels into containers, attrs and dataclass-like objects, and this library's own objects' attributes.
    A `Secret` shows only its repr: it is the one place the key may live."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    try:
        shown = repr(value)
    except Exception:  # a repr that fails shows nothing
        shown = ""
    yield shown
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes | bytearray | memoryview):
        yield bytes(value).decode("latin-1")
    if depth >= 5 or isinstance(value, Secret | type | types.ModuleType):
        return
    children: list[object] = []
    if isinstance(value, Mapping):
        children = [item for pair in value.items() for item in pair]
    elif isinstance(value, list | tuple | set | frozenset | deque):
        children = list(value)
    elif attrs.has(type(value)):
        children = [getattr(value, field.name, None) for field in attrs.fields(cast(Any, type(value)))]
    elif type(value).__module__.startswith("pixverse_async"):
        children = list(getattr(value, "__dict__", {}).values())
        for cls in type(value).__mro__:
            children.extend(getattr(value, slot, None) for slot in getattr(cls, "__slots__", ()))
    for child in children:
        yield from _strings_in(child, depth + 1, seen)


def _frames_of(error: BaseException) -> Iterator[types.FrameType]:
    """Every frame of the error's traceback and of every error chained to it (cause or context, shown or not)."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            yield tb.tb_frame
            tb = tb.tb_next
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def assert_key_nowhere_in(error: BaseException, key: str = KEY) -> None:
    for frame in _frames_of(error):
        if frame.f_code.co_filename == __file__:
            continue  # this test's own frames hold the key on purpose
        for name, value in frame.f_locals.items():
            for text in _strings_in(value):
                assert key not in text, f"{frame.f_code.co_qualname}: local {name!r} shows the key"
    for text in (str(error), repr(error), repr(vars(error))):
        assert key not in text


async def _hang(request: web.Request) -> web.Response:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.mark.parametrize("call", ["get_task", "submit"])
async def test_a_timeout_in_the_transport_shows_the_key_in_no_frame(call: str) -> None:
    async with (
        tiny_server(_hang) as url,
        PixVerseClient(KEY, base_url=url, retry=NO_RETRY, timeouts=Timeouts(read=0.2)) as client,
    ):
        with pytest.raises(APITimeoutError if call == "get_task" else SubmissionUncertainError) as caught:
            if call == "get_task":
                await client.get_task("t1")
            else:
                await client.submit(ImageToVideo("p", URL))
        assert_key_nowhere_in(caught.value)
        for text in _strings_in(client):
            assert KEY not in text
        assert KEY not in repr(vars(client))


async def test_a_refused_connection_shows_the_key_in_no_frame() -> None:
    async with tiny_server(_hang) as url:
        pass  # closed: nothing listens on its port any more
    async with PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.get_task("t1")
    assert_key_nowhere_in(caught.value)


@pytest.mark.parametrize(
    "problem",
    [{"base_url": "ftp://example.com"}, {"max_concurrency": 0}, {"timeouts": "fast"}],
)
def test_construction_refusing_another_argument_shows_the_key_in_no_frame(problem: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        PixVerseClient(KEY, **problem)
    assert_key_nowhere_in(caught.value)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (KEY + "\n" + "x", "control character (U+000A)"),
        ("sk-live 0123456789", "whitespace at position 7"),
        (f"Bearer {KEY}", "without 'Bearer '"),
        ("sk-live-ключ-0123", "cannot go in an HTTP header"),
        ("sk-live-\x7f-0123", "control character (U+007F)"),
        ("k", "at least 6"),
    ],
)
def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it(key: str, problem: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"^api_key: ") as caught:
        PixVerseClient(key)
    assert problem in str(caught.value)
    if len(key) >= 6:  # a shorter one is a letter of every repr
        assert_key_nowhere_in(caught.value, key)


def test_surrounding_whitespace_of_a_key_is_not_part_of_it() -> None:
    PixVerseClient(f"  {KEY}\n")


def json_echo(status: int, **fields: object) -> web.Response:
    return web.json_response({"code": status, **fields}, status=status)


async def test_every_field_a_server_echoes_is_redacted() -> None:
    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        return json_echo(
            403,
            reason=f"INVALID_API_KEY:{key}",
            message=f"key {key} is not valid",
            metadata={"key": key, key: [f"Bearer {key}", 1], "nested": {"deep": key}},
        )

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            await client.get_task("t1")
    error = caught.value
    assert error.reason == "INVALID_API_KEY:***"
    assert error.message == "key *** is not valid"
    assert error.metadata == {"key": "***", "***": ["Bearer ***", 1], "nested": {"deep": "***"}}
    assert_key_nowhere_in(error)


@pytest.mark.parametrize("offset", range(180, 205, 3))
async def test_a_key_on_the_cut_of_a_long_html_body_leaves_no_head(offset: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        page = "<html><body><p>" + "x" * offset + key + " and more " * 300 + "</p></body></html>"
        return web.Response(status=502, text=page, content_type="text/html")

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(ServerError) as caught:
            await client.get_task("t1")
    message = caught.value.message
    assert len(message) < 300
    # Not even the head of the key: the first 8 characters are what a cut at 200 would have left.
    assert KEY[:8] not in message and "x" * 20 in message
    assert_key_nowhere_in(caught.value)


async def test_a_failed_tasks_reason_echoing_the_key_is_redacted() -> None:
    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        task = {"task_id": "t1", "status": "TASK_STATUS_FAILED", "reason": f"bad key {key}"}
        return web.json_response({"task": task})

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        result = await client.get_task("t1")
        with pytest.raises(TaskFailedError) as caught:
            await client.wait("t1")
    assert result.reason == "bad key ***"
    assert str(caught.value) == "task t1 failed: bad key ***"


@settings(max_examples=500)
@given(key=st.text(min_size=1), text=st.text(), pieces=st.lists(st.sampled_from(["*", "**", "***", "k"]), max_size=4))
def test_redaction_removes_every_occurrence_and_changes_nothing_else(key: str, text: str, pieces: list[str]) -> None:
    secret = Secret(key)
    # Also texts built around the key and the mask's own characters, where a naive mask would re-make it.
    for candidate in (text, key.join([text, *pieces, text]), "".join(pieces) + key + key[:-1] + "".join(pieces)):
        masked = redact(candidate, secret)
        assert key not in masked
        if key not in candidate:
            assert masked == candidate
        else:
            # Only the occurrences changed, each to one three-character mask of a character the key lacks.
            parts = candidate.split(key)
            mask = masked[len(parts[0])] * 3
            assert mask[0] not in key and masked == mask.join(parts)


def test_redaction_masks_a_key_holding_the_usual_mask_characters() -> None:
    key = "*#?~%^"
    assert redact(f"a{key}b", Secret(key)) == f"a{chr(0x2022) * 3}b"


# Keys start "sk-", as real ones do: a bare 6-letter key such as "pixver" is found in this library's own
# module names in any repr, which says nothing about the key.
@given(
    key=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=3, max_size=40).map(
        "sk-".__add__
    )
)
@settings(max_examples=40, deadline=None)
def test_any_valid_key_echoed_anywhere_never_reaches_an_error(key: str) -> None:
    async def scenario() -> None:
        async def handler(request: web.Request) -> web.Response:
            echoed = request.headers["Authorization"].removeprefix("Bearer ")
            return json_echo(400, reason=echoed, message=f"<{echoed}>{echoed}", metadata={echoed: echoed})

        async with tiny_server(handler) as url, PixVerseClient(key, base_url=url, retry=NO_RETRY) as client:
            with pytest.raises(APIStatusError) as caught:
                await client.get_task("t1")
        assert_key_nowhere_in(caught.value, key)

    anyio.run(scenario)


async def test_a_session_with_credentials_in_its_defaults_is_refused() -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as with_header:
        with pytest.raises(InvalidRequestError, match="default header 'Authorization' carries credentials") as caught:
            PixVerseClient(KEY, session=with_header)
        assert_key_nowhere_in(caught.value)
    async with aiohttp.ClientSession(headers={"X-Api-Key": KEY}) as with_key:
        with pytest.raises(InvalidRequestError, match="'X-Api-Key' carries credentials") as caught:
            PixVerseClient(KEY, session=with_key)
        assert_key_nowhere_in(caught.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp 3.14 deprecates auth=; sessions still have it
        async with aiohttp.ClientSession(auth=aiohttp.BasicAuth("user", "pw")) as with_auth:
            with pytest.raises(InvalidRequestError, match="auth=") as caught:
                PixVerseClient(KEY, session=with_auth)
    assert isinstance(caught.value, ValueError)
    async with aiohttp.ClientSession(headers={"User-Agent": "mine"}) as plain:
        PixVerseClient(KEY, session=plain)


async def test_credentials_added_to_a_session_after_construction_are_refused_before_any_download(
    tmp_path: Path,
) -> None:
    seen: list[str | None] = []

    async def video_host(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=mp4_for_task("t1"), content_type="video/mp4")

    async with tiny_server(video_host) as url, aiohttp.ClientSession() as session:
        c = PixVerseClient(KEY, base_url=url, session=session)
        session.headers["Authorization"] = f"Bearer {KEY}"
        with pytest.raises(InvalidRequestError, match=r"^session: "):
            await c.__aenter__()
        del session.headers["Authorization"]
        async with c:
            session.headers["Authorization"] = f"Bearer {KEY}"
            with pytest.raises(InvalidRequestError, match=r"^session: "):
                await c.download(Video(f"{url}/v.mp4"), tmp_path / "v.mp4")
    assert seen == []

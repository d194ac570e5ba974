"""The API key never shows: not in a traceback's local variables, not in what a server echoes, not through a
caller's session. And masking it never damages text that does not hold it."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
import types
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
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
    ClientClosedError,
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
from pixverse_async.testing import ScaledClock
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


# -- the caller's own deadlines and cancellations -----------------------------------------------------------------


async def _caught(call: Callable[[], Awaitable[object]], into: list[BaseException]) -> None:
    """Run `call`, keeping what it raises; a cancellation goes on."""
    try:
        await call()
    except Exception as error:
        into.append(error)
    except BaseException as error:
        into.append(error)
        raise


@attrs.define
class _HangingAPI:
    """A server that holds every request: a submission until `release` is set (then it answers a task id), a
    task-result call for ever. `arrived` lists the paths of the requests received so far."""

    url: str = ""
    arrived: list[str] = attrs.Factory(list)
    release: anyio.Event = attrs.Factory(anyio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append(request.path)
        if request.method == "POST":
            await self.release.wait()
            return web.json_response({"task_id": "t9"})
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def on_the_wire(self, count: int = 1) -> None:
        with anyio.fail_after(10):
            while len(self.arrived) < count:
                await anyio.sleep(0.001)


async def _through_wait_for(client: PixVerseClient, api: _HangingAPI) -> list[BaseException]:
    with pytest.raises(TimeoutError) as caught:
        await asyncio.wait_for(client.get_task("t1"), 2)  # far longer than a request takes to arrive
    assert api.arrived  # cancelled on the wire, not on the way to it
    return [caught.value]


async def _through_fail_after(client: PixVerseClient, api: _HangingAPI) -> list[BaseException]:
    async def expire(scope: anyio.CancelScope) -> None:
        await api.on_the_wire()
        scope.deadline = anyio.current_time()

    with pytest.raises(TimeoutError) as caught:
        with anyio.fail_after(None) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(expire, scope)
                await client.get_task("t1")
    return [caught.value]


async def _through_asyncio_timeout(client: PixVerseClient, api: _HangingAPI) -> list[BaseException]:
    errors: list[BaseException] = []
    for call in (lambda: client.get_task("t1"), lambda: client.submit(ImageToVideo("p", URL))):

        async def expire(deadline: asyncio.Timeout, arrived: int = len(api.arrived) + 1) -> None:
            await api.on_the_wire(arrived)
            deadline.reschedule(asyncio.get_running_loop().time())

        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(None) as deadline:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(expire, deadline)
                    await call()
        errors.append(caught.value)
    api.release.set()  # the abandoned submission gets its answer
    return errors


async def _cancelling_as_completed(client: PixVerseClient, api: _HangingAPI) -> list[BaseException]:
    caught: list[BaseException] = []

    async def run() -> None:
        async with client.as_completed([ImageToVideo("p", URL)]) as results:
            async for _ in results:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(_caught, run, caught)
        await api.on_the_wire()
        tg.cancel_scope.cancel()
        api.release.set()  # the submission on the wire gets its answer, the poll does not
    assert isinstance(caught[0], asyncio.CancelledError)
    return caught


async def release_once_blocked(api: _HangingAPI) -> None:
    await anyio.wait_all_tasks_blocked()
    api.release.set()


CALLERS_CANCELLING = {
    "asyncio.wait_for": _through_wait_for,
    "anyio.fail_after": _through_fail_after,
    "asyncio.timeout": _through_asyncio_timeout,
    "cancelling as_completed": _cancelling_as_completed,
}


def _client_of(api: _HangingAPI) -> PixVerseClient:
    # A scaled clock: the poller's first poll of a task it knows nothing of comes at once. A read timeout far
    # longer than any wait here, but short: a client closing with requests on the wire waits an eighth of it.
    return PixVerseClient(KEY, base_url=api.url, retry=NO_RETRY, clock=ScaledClock(0.001), timeouts=Timeouts(read=8))


@pytest.mark.parametrize("how", list(CALLERS_CANCELLING))
async def test_a_callers_cancellation_on_the_wire_shows_the_key_in_no_frame(how: str) -> None:
    """Cancellations still propagate as cancellations (or the caller's `TimeoutError`), and no frame that a
    traceback of them can show, through `__context__` and `__cause__`, holds the key."""
    api = _HangingAPI()
    async with tiny_server(api.handle) as api.url, _client_of(api) as client:
        errors = await CALLERS_CANCELLING[how](client, api)
    assert errors
    for error in errors:
        assert_key_nowhere_in(error)


async def test_closing_the_client_with_a_submission_and_a_poll_on_the_wire_shows_the_key_in_no_frame() -> None:
    """The calls run in a task group around the client (as an application's tasks would)."""
    api, caught = _HangingAPI(), list[BaseException]()
    async with tiny_server(api.handle) as api.url, anyio.create_task_group() as tg:
        async with _client_of(api) as client:
            tg.start_soon(_caught, functools.partial(client.submit, ImageToVideo("p", URL)), caught)
            tg.start_soon(_caught, functools.partial(client.wait, "t1"), caught)
            await api.on_the_wire(2)
            tg.start_soon(release_once_blocked, api)  # the close waits for the submission's answer
    assert [type(error) for error in caught] == [ClientClosedError]  # wait(); the submission got its answer
    assert_key_nowhere_in(caught[0])


async def test_a_connection_reset_on_the_wire_shows_the_key_in_no_frame() -> None:
    async def reset(request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with an RST
        request.transport.abort()  # type: ignore[union-attr]
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with tiny_server(reset) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        for call in (lambda: client.get_task("t1"), lambda: client.submit(ImageToVideo("p", URL))):
            with pytest.raises((APIConnectionError, SubmissionUncertainError)) as caught:
                await call()
            assert_key_nowhere_in(caught.value)

"""Options, policies and clocks out of range are refused when built, the same way everywhere: an
`InvalidRequestError` (also a `ValueError`) that names the option and what it accepts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from pixverse_async import (
    ConfigurationError,
    ImageToVideo,
    InvalidRequestError,
    NotFoundError,
    PixVerseClient,
    PollPolicy,
    RetryPolicy,
    Task,
    Timeouts,
)
from pixverse_async.testing import InstantClock, ScaledClock, Simulator
from tests.helpers import KEY, SCALE, client_for

pytestmark = pytest.mark.anyio
NOT_NUMBERS: list[object] = ["1", True, False, None, [1], math.nan]

# (what is built, option, values it must refuse)
CASES: list[tuple[Callable[..., object], str, list[object]]] = [
    (RetryPolicy, "max_attempts", [0, -1, 1.5, 2.0, *NOT_NUMBERS, math.inf]),
    (RetryPolicy, "initial_backoff", [0, -0.5, math.inf, *NOT_NUMBERS]),
    (RetryPolicy, "max_backoff", [0, -1, math.inf, *NOT_NUMBERS]),
    (RetryPolicy, "jitter", [-0.1, 1.5, math.inf, *NOT_NUMBERS]),
    (RetryPolicy, "max_retry_after", [-1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "first_poll_after", [-1, math.inf, "1", True, [1], math.nan]),  # None: planned
    (PollPolicy, "min_interval", [0, -1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "max_interval", [0, -1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "delay_cost", [0, -1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "expected_duration", [0, -1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "duration_spread", [0, -1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "webhook_tail", [0, -1, 1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "jitter", [-0.1, 1.01, *NOT_NUMBERS]),
    (PollPolicy, "max_polls_per_second", [0, -5, math.inf, math.nan, "200", True]),
    (PollPolicy, "max_polls_in_flight", [0, -1, 2.0, "64", True, None, math.nan]),
    (PollPolicy, "webhook_fallback", [0, -1, math.inf, *NOT_NUMBERS]),
    (Timeouts, "connect", [0, -1, math.inf, math.nan, "10", True]),
    (Timeouts, "read", [0, -1, math.inf, math.nan, "10", True]),
    (Timeouts, "download_read", [0, -1, math.inf, math.nan, "10", True]),
    (Timeouts, "upload", [0, -1, math.inf, math.nan, "10", True]),
    (ScaledClock, "scale", [0, -0.001, math.inf, *NOT_NUMBERS]),
    (InstantClock, "current", [math.inf, -math.inf, *NOT_NUMBERS]),
]


@pytest.mark.parametrize(
    ("build", "option", "value"),
    [(build, option, value) for build, option, values in CASES for value in values],
    ids=lambda item: getattr(item, "__name__", repr(item)),
)
def test_policies_and_clocks_refuse_values_out_of_range_in_one_way(
    build: Callable[..., object], option: str, value: object
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(**{option: value})
    assert isinstance(caught.value, ValueError) and caught.value.field == option
    assert str(caught.value).startswith(f"{option}: must be ")
    assert repr(value) in str(caught.value)


def test_values_in_range_are_kept() -> None:
    assert RetryPolicy(max_attempts=1, initial_backoff=0.001, jitter=0, max_retry_after=0).max_attempts == 1
    assert PollPolicy(first_poll_after=0, jitter=1, max_polls_per_second=None).max_polls_per_second is None
    assert Timeouts(connect=None, read=0.5).read == 0.5
    assert ScaledClock(1).scale == 1 and InstantClock(-5).current == -5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency: must be a whole number >= 1, not 0"),
        ({"max_concurrency": True}, "max_concurrency: must be a whole number >= 1, not True"),
        ({"max_concurrency": 4.0}, "max_concurrency: must be a whole number >= 1, not 4.0"),
        ({"max_submissions_in_flight": "8"}, "max_submissions_in_flight: must be a whole number >= 1, not '8'"),
        ({"max_upload_bytes_in_flight": 0}, "max_upload_bytes_in_flight: must be a whole number >= 1, not 0"),
        ({"max_upload_bytes_in_flight": 2.0**20}, "max_upload_bytes_in_flight: must be a whole number >= 1, not"),
        ({"webhook_url": "ftp://hooks.example.com/x"}, "webhook_url: 'ftp://hooks.example.com/x' has scheme 'ftp'"),
        ({"webhook_url": "https://"}, "webhook_url: 'https://' has no host"),
        ({"webhook_url": "https://example.com:99999/"}, "webhook_url: 'https://example.com:99999/' is not a valid URL"),
        ({"webhook_url": 5}, "webhook_url: must be an http(s):// URL str, not int"),
        ({"base_url": "https://user:pw@api.example.com"}, "base_url: the URL carries credentials"),
        ({"base_url": "api.example.com"}, "base_url: 'api.example.com' has no scheme"),
        ({"base_url": "https://api.example.com/v3"}, "base_url: 'https://api.example.com/v3' has a path ('/v3');"),
        ({"base_url": "https://api.example.com/v3/async/"}, "base_url: 'https://api.example.com/v3/async' has a path"),
        ({"base_url": "https://api.example.com?key=1"}, "base_url: 'https://api.example.com?key=1' has a query"),
        ({"base_url": "https://api.example.com/?"}, "base_url: 'https://api.example.com/?' has a query"),
        ({"base_url": "https://api.example.com#top"}, "base_url: 'https://api.example.com#top' has a fragment"),
        ({"base_url": "https://user:pw@api.example.com/v3"}, "base_url: the URL carries credentials"),
        ({"timeouts": 5}, "timeouts: must be a Timeouts, not int"),
        ({"retry": {"max_attempts": 1}}, "retry: must be a RetryPolicy, not dict"),
        ({"polling": None}, "polling: must be a PollPolicy, not NoneType"),
        ({"image_as_data_uri": "yes"}, "image_as_data_uri: must be True or False, not 'yes'"),
        ({"clock": 0.001}, "clock: must have now() and sleep(seconds)"),
    ],
)
def test_client_arguments_out_of_range_are_refused_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        PixVerseClient(KEY, **options)
    assert str(caught.value).startswith(message)


async def test_an_upper_case_scheme_is_an_http_url_too() -> None:
    async with Simulator(time_scale=SCALE) as sim:
        upper = sim.base_url.replace("http://", "HTTP://")
        async with PixVerseClient(KEY, base_url=upper, clock=ScaledClock(SCALE)) as client:
            task = await client.submit(ImageToVideo("p", "https://example.com/a.png"))
        assert client.base_url == upper and task.task_id in sim.tasks


@pytest.mark.parametrize("timeout", [-1, math.nan, math.inf, "5", True])
async def test_call_timeouts_out_of_range_are_refused_before_any_request(timeout: object) -> None:
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        with pytest.raises(InvalidRequestError, match=r"^timeout: must be a finite number >= 0, or None"):
            await client.wait("t1", timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match=r"^timeout: "):
            client.as_completed([ImageToVideo("p", "https://example.com/a.png")], timeout=timeout)  # type: ignore[arg-type]
        assert sim.counters.poll_requests == sim.counters.submit_requests == 0


def test_a_base_url_of_a_scheme_and_host_is_taken_with_or_without_a_slash_or_a_port() -> None:
    for url in ("https://api.example.com", "https://api.example.com/", "http://127.0.0.1:8080/"):
        assert PixVerseClient(KEY, base_url=url).base_url == url.rstrip("/")


def test_a_base_url_from_the_environment_is_checked_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXVERSE_BASE_URL", "https://api.example.com/pixverse")
    with pytest.raises(ConfigurationError, match=r"^base_url: 'https://api.example.com/pixverse' has a path"):
        PixVerseClient(KEY)


@pytest.mark.parametrize(
    ("build", "low", "high"),
    [
        (lambda: PollPolicy(min_interval=100, max_interval=1), "min_interval", "max_interval"),
        (lambda: RetryPolicy(initial_backoff=10, max_backoff=1), "initial_backoff", "max_backoff"),
    ],
)
def test_contradictory_pairs_of_a_policy_are_refused_naming_both(
    build: Callable[[], object], low: str, high: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert caught.value.field == low and str(caught.value).startswith(f"{low}: ") and high in str(caught.value)


def test_a_policy_pair_may_be_equal() -> None:
    assert PollPolicy(min_interval=5, max_interval=5).max_interval == 5
    assert RetryPolicy(initial_backoff=2, max_backoff=2).backoff(3, None) <= 2


@pytest.mark.parametrize("timeout", [0, 0.0, -1])
async def test_as_completed_refuses_a_timeout_that_every_job_would_pay_for_and_miss(timeout: float) -> None:
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        with pytest.raises(InvalidRequestError, match=r"^timeout: must be a finite number > 0, or None"):
            client.as_completed([ImageToVideo("p", "https://example.com/a.png")], timeout=timeout)
        assert sim.counters.submit_requests == 0


BAD_TASK_IDS = {
    "empty": ("", "must not be empty"),
    "10 KB long": ("t" * 10_000, "at most 256 characters, not 10000"),
    "a space": ("task 1", "U+0020 at position 4"),
    "a line feed": ("t1\n", "U+000A at position 2"),
    "a NUL": ("\x00t1", "U+0000 at position 0"),
    "a zero-width space": ("t\u200b1", "U+200B at position 1"),
    "a non-breaking space": ("t\u00a01", "U+00A0"),
}


@pytest.mark.parametrize("what", list(BAD_TASK_IDS))
async def test_a_task_id_that_no_task_has_is_refused_before_any_request(what: str) -> None:
    task_id, problem = BAD_TASK_IDS[what]
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        for call in (client.get_task, client.wait):
            with pytest.raises(InvalidRequestError, match=r"^task: ") as caught:
                await call(task_id)
            assert problem in str(caught.value)
        with pytest.raises(InvalidRequestError, match=r"^task: "):
            await anext(aiter(client.watch(task_id)))
        with pytest.raises(InvalidRequestError, match=r"^task: "):
            await client.get_task(Task(task_id=task_id))
        async with client.as_completed([task_id]) as results:
            (result,) = [result async for result in results]
        assert isinstance(result.error, InvalidRequestError) and problem in str(result.error)
    assert sim.counters.poll_requests == 0 and task_id not in sim.tasks


@pytest.mark.parametrize(
    "task_id", ["830d9c90-0b7e-4c4f-9b7f-8f0d2a1c9e11", "task_01HZX3.abc:def~_-", "t" * 256, "tâche-é"]
)
async def test_any_task_id_a_real_api_issues_is_sent(task_id: str) -> None:
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        with pytest.raises(NotFoundError):
            await client.get_task(task_id)
    assert sim.counters.poll_requests == 1

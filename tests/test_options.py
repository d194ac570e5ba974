"""Options, policies and clocks out of range are refused when built, the same way everywhere: an
`InvalidRequestError` (also a `ValueError`) that names the option and what it accepts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from pixverse_async import (
    ImageToVideo,
    InvalidRequestError,
    PixVerseClient,
    PollPolicy,
    RetryPolicy,
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
    (PollPolicy, "max_interval", [0, -1, math.inf, "1", True, False, [1], math.nan]),  # None: no fixed bound
    (PollPolicy, "delay_cost", [0, -1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "expected_duration", [0, -1, math.inf, "1", True, False, [1], math.nan]),  # None: not told
    (PollPolicy, "duration_spread", [0, -1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "webhook_tail", [0, -1, 1, math.inf, *NOT_NUMBERS]),
    (PollPolicy, "jitter", [-0.1, 1.01, *NOT_NUMBERS]),
    (PollPolicy, "max_polls_per_second", [0, -5, math.inf, math.nan, "200", True]),
    (PollPolicy, "max_polls_in_flight", [0, -1, 2.0, "64", True, None, math.nan]),
    (PollPolicy, "webhook_fallback", [0, -1, math.inf, *NOT_NUMBERS]),
    (Timeouts, "connect", [0, -1, math.inf, math.nan, "10", True]),
    (Timeouts, "read", [0, -1, math.inf, math.nan, "10", True]),
    (Timeouts, "download_read", [0, -1, math.inf, math.nan, "10", True]),
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
        ({"webhook_url": "ftp://hooks.example.com/x"}, "webhook_url: 'ftp://hooks.example.com/x' has scheme 'ftp'"),
        ({"webhook_url": "https://"}, "webhook_url: 'https://' has no host"),
        ({"webhook_url": "https://example.com:99999/"}, "webhook_url: 'https://example.com:99999/' is not a valid URL"),
        ({"webhook_url": 5}, "webhook_url: must be an http(s):// URL str, not int"),
        ({"base_url": "https://user:pw@api.example.com"}, "base_url: the URL carries credentials"),
        ({"base_url": "api.example.com"}, "base_url: 'api.example.com' has no scheme"),
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

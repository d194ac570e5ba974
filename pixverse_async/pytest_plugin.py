"""pytest fixtures for testing code that uses `pixverse_async`, loaded automatically once it is installed.

- `pixverse_simulator`: a `Simulator` served from a background thread with its own event loop, so it works
  in plain synchronous tests as well as async ones (any async framework). It has the simulator's
  `base_url`, `api_key`, `time_scale`, `counters` and `tasks`, and thread-safe `inject()`, `clear_faults()`,
  `advance()` and `reset_counters()`. While the test runs it also sets `PIXVERSE_API_KEY` and
  `PIXVERSE_BASE_URL` to its own (restored afterwards), and a `PixVerseClient` built without a clock keeps
  the simulator's time (a `ScaledClock` at its scale, see `pixverse_async._clock.default_clock`), so that
  unchanged application code that builds `PixVerseClient()` from the environment runs against it, fast.
- `pixverse_client`: a `PixVerseClient` bound to it (key, base URL and a `ScaledClock` at the simulator's
  time scale), not yet opened: `async with pixverse_client as client: ...`.
- Options: override the `pixverse_simulator_options` fixture (a dict of `Simulator` keyword arguments), or
  mark a test `@pytest.mark.pixverse_simulator(failure_rate=0.5, ...)`. Defaults: `time_scale=0.001` (a
  40 s job takes 40 ms) and `duration=5.0`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, final

import anyio.from_thread
import pytest

from . import _clock
from ._client import PixVerseClient
from ._clock import ScaledClock
from .testing import Fault, SimCounters, SimTask, Simulator

DEFAULT_OPTIONS: Mapping[str, Any] = {"api_keys": ("sk-test",), "time_scale": 0.001, "duration": 5.0}


@final
class ThreadedSimulator:
    """A running `Simulator` whose event loop is in a background thread; safe to use from the test's thread."""

    def __init__(self, simulator: Simulator, portal: anyio.from_thread.BlockingPortal) -> None:
        self.simulator = simulator
        self._portal = portal

    @property
    def base_url(self) -> str:
        return self.simulator.base_url

    @property
    def video_base_url(self) -> str:
        return self.simulator.video_base_url

    @property
    def api_key(self) -> str:
        return min(self.simulator.api_keys)

    @property
    def time_scale(self) -> float:
        return self.simulator.time_scale

    @property
    def counters(self) -> SimCounters:
        return self.simulator.counters

    @property
    def tasks(self) -> Mapping[str, SimTask]:
        return self.simulator.tasks

    def inject(self, fault: Fault) -> None:
        self._portal.call(self.simulator.inject, fault)

    def clear_faults(self) -> None:
        self._portal.call(self.simulator.clear_faults)

    def advance(self, seconds: float) -> None:
        self._portal.call(self.simulator.advance, seconds)

    def reset_counters(self) -> None:
        self._portal.call(self.simulator.reset_counters)

    def client(self, **options: Any) -> PixVerseClient:
        """A client bound to this simulator (not opened yet); `options` go to `PixVerseClient`."""
        options.setdefault("clock", ScaledClock(self.time_scale))
        return PixVerseClient(self.api_key, base_url=self.base_url, **options)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pixverse_simulator(**options): Simulator options for the pixverse_simulator fixture"
    )


@pytest.fixture
def pixverse_simulator_options() -> dict[str, Any]:
    """Keyword arguments of the `Simulator` behind `pixverse_simulator`; override it to change them."""
    return dict(DEFAULT_OPTIONS)


@pytest.fixture
def pixverse_simulator(
    request: pytest.FixtureRequest, pixverse_simulator_options: dict[str, Any]
) -> Iterator[ThreadedSimulator]:
    options = dict(pixverse_simulator_options)
    marker = request.node.get_closest_marker("pixverse_simulator")
    if marker is not None:
        options.update(marker.kwargs)
    simulator = Simulator(**options)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        # Started and closed by one task of the portal's loop, which holds the simulator's task group.
        portal.wrap_async_context_manager(simulator),
        pytest.MonkeyPatch.context() as patch,
    ):
        threaded = ThreadedSimulator(simulator, portal)
        # Undone when the test ends: application code under test finds the simulator where it looks in
        # production, and keeps its time.
        patch.setenv("PIXVERSE_API_KEY", threaded.api_key)
        patch.setenv("PIXVERSE_BASE_URL", threaded.base_url)
        patch.setattr(_clock, "_testing_default", ScaledClock(threaded.time_scale))
        yield threaded


@pytest.fixture
def pixverse_client(pixverse_simulator: ThreadedSimulator) -> PixVerseClient:
    return pixverse_simulator.client()

"""The simulator's tasks: their plan, lifecycle and the hints a poll shows."""

from __future__ import annotations

import math
import random
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import attrs

from pixverse_async.testing._validation import SubmittedImage

QUEUED: Final = "TASK_STATUS_QUEUED"
PROCESSING: Final = "TASK_STATUS_PROCESSING"
SUCCEED: Final = "TASK_STATUS_SUCCEED"
FAILED: Final = "TASK_STATUS_FAILED"

#: The ``task.reason`` of tasks failed by ``failure_rate``.
DEFAULT_FAIL_REASON: Final = "content moderation: generation failed"

EtaMode = Literal["exact", "noisy", "absent"]
ProgressMode = Literal["linear", "steps", "absent"]


def lognormal_durations(median: float = 40.0, sigma: float = 0.5) -> Callable[[random.Random], float]:
    """A ``duration`` for :class:`Simulator`: log-normal job times with the given median (simulated s)."""
    if median <= 0 or sigma < 0:
        raise ValueError(f"lognormal_durations needs median > 0 and sigma >= 0, got {median=} {sigma=}")
    mu = math.log(median)

    def draw(rng: random.Random) -> float:
        return rng.lognormvariate(mu, sigma)

    return draw


#: The default ``Simulator(duration=...)``: log-normal, median 40 simulated seconds, sigma 0.3.
DEFAULT_DURATION: Final = lognormal_durations(40.0, 0.3)


@attrs.frozen
class TaskPlan:
    """What ``Simulator(plan=...)`` decides for one submission: its duration and how it ends.

    ``duration`` is in simulated seconds from submit to terminal; ``fail_reason`` makes the task end
    ``TASK_STATUS_FAILED`` with that ``task.reason`` (``None``: it succeeds).
    """

    duration: float = attrs.field(validator=attrs.validators.ge(0.0))
    fail_reason: str | None = None


@typing.final
@attrs.define(eq=False)
class SimTask:
    """One task as the simulator holds it. Times are on the simulated clock (see ``Simulator.now``).

    Tests read it through ``sim.tasks``; changing it is not supported.
    """

    task_id: str
    api_key: str
    request: Mapping[str, Any]  # the submitted JSON body without ``image`` (see ``image``)
    image: SubmittedImage
    seed: int
    submitted_at: float
    processing_at: float  # QUEUED before this, PROCESSING from it
    ends_at: float  # terminal from this time on
    fail_reason: str | None  # None: ends SUCCEED
    # Set once a poll has returned this task terminal; later polls count as ``polls_after_terminal``.
    terminal_seen: bool = False
    # ``extra.webhook.url`` of the submission: where the result is POSTed when the task ends (None: nowhere).
    webhook_url: str | None = None
    # ``eta="noisy"``: what this task's eta is multiplied by (1.0: exact).
    eta_factor: float = 1.0

    @property
    def prompt(self) -> str:
        return str(self.request["prompt"])

    def status_at(self, now: float) -> str:
        if now >= self.ends_at:
            return SUCCEED if self.fail_reason is None else FAILED
        return QUEUED if now < self.processing_at else PROCESSING

    def progress_at(self, now: float) -> int:
        """The true progress, whole percents (``Simulator(progress=...)`` decides what a poll shows)."""
        status = self.status_at(now)
        if status == SUCCEED:
            return 100
        if status != PROCESSING:
            return 0
        processing_time = self.ends_at - self.processing_at
        return min(99, int(100 * (now - self.processing_at) / processing_time))

    def remaining_at(self, now: float) -> float:
        """Simulated seconds until the task ends (0 once it has)."""
        return max(0.0, self.ends_at - now)

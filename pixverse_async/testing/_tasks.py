"""The simulator's tasks: when each one runs and how it ends, and what a poll shows of it (the hints).

A task is `TASK_STATUS_QUEUED` for the first `queue_fraction` of its duration, then `TASK_STATUS_PROCESSING`,
then ends `TASK_STATUS_SUCCEED` or `TASK_STATUS_FAILED` (chance `failure_rate`, reason `DEFAULT_FAIL_REASON`).
`duration` is a number of simulated seconds or a function of a `random.Random` (see `lognormal_durations`);
by default log-normal around 40 s (`DEFAULT_DURATION`: median 40, sigma 0.3, so most tasks take 25 to 65 s,
as real PixVerse jobs do). `plan` can decide per submission from its JSON body: return a `TaskPlan` to fix
the duration and outcome, or `None` for the defaults. Task state is computed from timestamps at each request;
no timer or task runs per job, so 100,000 jobs cost only their records.

A busy account (`max_processing_per_key`): at most that many of a key's tasks are PROCESSING at once; a task
submitted beyond that sits `TASK_STATUS_QUEUED` (no progress, its `eta` counting the wait) until an earlier
one ends, first come first served, and then runs for its whole duration.

## Hints: `eta` and `progress_percent`

The real API's hints cannot be trusted to be there or to be right (see `shared/API.md`), so each has modes.
`eta` (0 once terminal, whatever the mode):

- `"exact"` (default): whole simulated seconds left, rounded up;
- `"noisy"`: the same times a per-task factor drawn log-normal with sigma `eta_noise` (default 0.35) when the
  task is created, so one task's estimate is consistently off (it counts down `factor` times too fast or too
  slow); the draws come from their own RNG, so they shift no task ids or durations;
- `"absent"`: always 0, as a router that does not fill the field sends it.

`progress_percent` (100 on success, 0 on failure and while queued, whatever the mode):

- `"linear"` (default): linear in processing time, whole percents, capped at 99;
- `"steps"`: the linear value rounded down to a multiple of `progress_step` (default 25);
- `"absent"`: 0 until the task ends.
"""

from __future__ import annotations

import heapq
import math
import random
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import attrs

from pixverse_async.testing._validation import MAX_SEED, NO_IMAGE, SubmittedImage, webhook_url

TASK_TYPE: Final = "PIXVERSE_V4_5_I2V"
TEXT_TASK_TYPE: Final = "PIXVERSE_V4_5_T2V"

QUEUED: Final = "TASK_STATUS_QUEUED"
PROCESSING: Final = "TASK_STATUS_PROCESSING"
SUCCEED: Final = "TASK_STATUS_SUCCEED"
FAILED: Final = "TASK_STATUS_FAILED"

#: The `task.reason` of tasks failed by `failure_rate`.
DEFAULT_FAIL_REASON: Final = "content moderation: generation failed"

EtaMode = Literal["exact", "noisy", "absent"]
ProgressMode = Literal["linear", "steps", "absent"]


def lognormal_durations(median: float = 40.0, sigma: float = 0.5) -> Callable[[random.Random], float]:
    """A `duration` for `Simulator`: log-normal job times with the given median (simulated s)."""
    if median <= 0 or sigma < 0:
        raise ValueError(f"lognormal_durations needs median > 0 and sigma >= 0, got {median=} {sigma=}")
    mu = math.log(median)

    def draw(rng: random.Random) -> float:
        return rng.lognormvariate(mu, sigma)

    return draw


#: The default `Simulator(duration=...)`: log-normal, median 40 simulated seconds, sigma 0.3.
DEFAULT_DURATION: Final = lognormal_durations(40.0, 0.3)


@attrs.frozen
class TaskPlan:
    """What `Simulator(plan=...)` decides for one submission: its duration and how it ends.

    `duration` is in simulated seconds from submit to terminal; `fail_reason` makes the task end
    `TASK_STATUS_FAILED` with that `task.reason` (`None`: it succeeds).
    """

    duration: float = attrs.field(validator=attrs.validators.ge(0.0))
    fail_reason: str | None = None


@typing.final
@attrs.define(eq=False)
class SimTask:
    """One task as the simulator holds it. Times are on the simulated clock (see `Simulator.now`).

    Tests read it through `sim.tasks`; changing it is not supported.
    """

    task_id: str
    api_key: str
    request: Mapping[str, Any]  # the submitted JSON body without `image` (see `image`)
    image: SubmittedImage  # `NO_IMAGE` for a text-to-video task
    seed: int
    submitted_at: float
    processing_at: float  # QUEUED before this, PROCESSING from it
    ends_at: float  # terminal from this time on
    fail_reason: str | None  # None: ends SUCCEED
    # Set once a poll has returned this task terminal; later polls count as `polls_after_terminal`.
    terminal_seen: bool = False
    # `extra.webhook.url` of the submission: where the result is POSTed when the task ends (None: nowhere).
    webhook_url: str | None = None
    # `eta="noisy"`: what this task's eta is multiplied by (1.0: exact).
    eta_factor: float = 1.0

    @property
    def is_text(self) -> bool:
        """A text-to-video task (submitted to `/v3/async/pixverse-v4.5-t2v`)."""
        return self.image is NO_IMAGE

    @property
    def prompt(self) -> str:
        return str(self.request["prompt"])

    def status_at(self, now: float) -> str:
        if now >= self.ends_at:
            return SUCCEED if self.fail_reason is None else FAILED
        return QUEUED if now < self.processing_at else PROCESSING

    def progress_at(self, now: float) -> int:
        """The true progress, whole percents (`Simulator(progress=...)` decides what a poll shows)."""
        status = self.status_at(now)
        if status == SUCCEED:
            return 100
        if status != PROCESSING:
            return 0
        processing_time = self.ends_at - self.processing_at
        return min(99, int(100 * (now - self.processing_at) / processing_time))


@attrs.frozen
class TaskRules:
    """The `Simulator` options that decide how tasks run and what their hints say (see the module docs)."""

    duration: float | Callable[[random.Random], float]
    queue_fraction: float
    failure_rate: float
    plan: Callable[[Mapping[str, Any]], TaskPlan | None] | None
    eta: EtaMode
    eta_noise: float
    progress: ProgressMode
    progress_step: int
    max_processing_per_key: int | None
    #: The duration of text-to-video tasks; None: as `duration`.
    text_duration: float | Callable[[random.Random], float] | None = None

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.queue_fraction <= 1.0:
            raise ValueError(f"queue_fraction must be in [0, 1], got {self.queue_fraction}")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in [0, 1], got {self.failure_rate}")
        if self.eta not in typing.get_args(EtaMode):
            raise ValueError(f"eta must be one of {typing.get_args(EtaMode)}, got {self.eta!r}")
        if self.progress not in typing.get_args(ProgressMode):
            raise ValueError(f"progress must be one of {typing.get_args(ProgressMode)}, got {self.progress!r}")
        if not self.eta_noise >= 0:
            raise ValueError(f"eta_noise must be >= 0, got {self.eta_noise}")
        step = self.progress_step
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100:
            raise ValueError(f"progress_step must be an int in 1..100, got {step!r}")
        if self.max_processing_per_key is not None and self.max_processing_per_key < 1:
            raise ValueError(f"max_processing_per_key must be >= 1, got {self.max_processing_per_key}")


@typing.final
@attrs.define(eq=False)
class TaskBook:
    """Every task by id: creates them by `TaskRules` and answers what a task-result call shows of them."""

    rules: TaskRules
    # Durations, outcomes, seeds and task ids: a seeded simulator replays them.
    _rng: random.Random
    # Per-task eta factors (eta="noisy"), drawn apart from `_rng` so that they shift no ids or durations.
    _hint_rng: random.Random
    tasks: dict[str, SimTask] = attrs.Factory(dict)
    # Per key, with max_processing_per_key: when each processing place frees up next, as a min-heap.
    _processing_free_at: dict[str, list[float]] = attrs.Factory(dict)

    def create(self, key: str, body: dict[str, Any], image: SubmittedImage, now: float) -> SimTask:
        """A new task of `key` for a checked submission `body` (a text-to-video one when `image` is
        `NO_IMAGE`), submitted at `now`."""
        rules = self.rules
        planned = rules.plan(body) if rules.plan is not None else None
        if planned is not None:
            duration, fail_reason = planned.duration, planned.fail_reason
        else:
            drawn = rules.text_duration if image is NO_IMAGE and rules.text_duration is not None else rules.duration
            duration = drawn(self._rng) if callable(drawn) else drawn
            duration = max(0.0, duration)
            fail_reason = DEFAULT_FAIL_REASON if self._rng.random() < rules.failure_rate else None
        seed = body["seed"] if "seed" in body else self._rng.randint(0, MAX_SEED)
        # Ids come from the seeded RNG, so a seeded simulator replays the same ids.
        task_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        starts_at = self._processing_place(key, now, duration)
        task = SimTask(
            task_id=task_id,
            api_key=key,
            request={name: value for name, value in body.items() if name != "image"},
            image=image,
            seed=seed,
            submitted_at=now,
            processing_at=starts_at + duration * rules.queue_fraction,
            ends_at=starts_at + duration,
            fail_reason=fail_reason,
            webhook_url=webhook_url(body),
            eta_factor=self._hint_rng.lognormvariate(0.0, rules.eta_noise) if rules.eta == "noisy" else 1.0,
        )
        self.tasks[task_id] = task
        return task

    def _processing_place(self, key: str, now: float, duration: float) -> float:
        """When a task of `key` submitted now starts running: now, or (a busy account) when a place frees."""
        limit = self.rules.max_processing_per_key
        if limit is None:
            return now
        places = self._processing_free_at.setdefault(key, [])
        # Full: this task takes the place that frees first (FIFO), from when it does.
        starts_at = now if len(places) < limit else max(now, heapq.heappop(places))
        heapq.heappush(places, starts_at + duration)
        return starts_at

    def eta_at(self, task: SimTask, now: float) -> int:
        if self.rules.eta == "absent" or now >= task.ends_at:
            return 0
        return math.ceil(task.eta_factor * (task.ends_at - now))

    def progress_at(self, task: SimTask, now: float) -> int:
        progress = task.progress_at(now)
        if progress == 100 or self.rules.progress == "linear":
            return progress
        if self.rules.progress == "absent":
            return 0
        return progress - progress % self.rules.progress_step

    def result(self, task: SimTask, now: float, video: Callable[[str, float], dict[str, str]]) -> dict[str, Any]:
        """The JSON body of a task-result answer about `task` at simulated time `now`.

        `video(task_id, now)` is the `videos` entry of a task that succeeded (a freshly signed link).
        """
        status = task.status_at(now)
        terminal = status in (SUCCEED, FAILED)
        return {
            "extra": {
                "seed": str(task.seed),
                "debug_info": {
                    "request_info": "",
                    "submit_time_ms": _epoch_ms(task.submitted_at),
                    "execute_time_ms": _epoch_ms(task.processing_at) if now >= task.processing_at else "",
                    "complete_time_ms": _epoch_ms(task.ends_at) if terminal else "",
                },
            },
            "task": {
                "task_id": task.task_id,
                "status": status,
                "reason": task.fail_reason if status == FAILED and task.fail_reason is not None else "",
                "task_type": TEXT_TASK_TYPE if task.is_text else TASK_TYPE,
                "eta": self.eta_at(task, now),
                "progress_percent": self.progress_at(task, now),
            },
            "images": [],
            "audios": [],
            "videos": [video(task.task_id, now)] if status == SUCCEED else [],
        }


def _epoch_ms(simulated_time: float) -> str:
    return str(int(simulated_time * 1000))

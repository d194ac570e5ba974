"""The poll planner as pure functions (Hypothesis properties), then the poller against every hint mode."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixverse_async import ImageToVideo, PollPolicy
from pixverse_async._forecast import DurationModel, Evidence, Forecaster
from pixverse_async.testing import Simulator, lognormal_durations
from tests.helpers import client_for

URL = "https://example.com/frame.png"
seconds = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)
positive = st.floats(min_value=0.01, max_value=120.0, allow_nan=False)
fractions = st.floats(min_value=0.0, max_value=0.999, allow_nan=False)


def forecaster() -> Forecaster:
    return Forecaster(prior_median=40.0, prior_sigma=0.5)


@st.composite
def readings(draw: st.DrawFn) -> tuple[Evidence, float]:
    """A task's evidence after a few polls that saw it running, and the time of the last one."""
    submitted = draw(seconds)
    evidence = Evidence(submitted)
    now = submitted
    for _ in range(draw(st.integers(0, 4))):
        now += draw(positive)
        eta = draw(st.none() | st.integers(0, 600))
        progress = draw(st.none() | st.integers(0, 100))
        evidence.record(now, eta, progress)
    return evidence, now


@given(readings(), positive, positive, st.floats(0.0, 1.0), fractions, st.floats(0.05, 20.0))
@settings(max_examples=300, deadline=None)
def test_a_poll_is_never_sooner_than_min_interval_nor_later_than_max_interval(
    reading: tuple[Evidence, float], min_interval: float, extra: float, jitter: float, draw: float, cost: float
) -> None:
    evidence, now = reading
    max_interval = min_interval + extra
    due = forecaster().next_poll(
        evidence,
        now,
        delay_cost=cost,
        min_interval=min_interval,
        max_interval=max_interval,
        jitter=jitter,
        random_fraction=draw,
    )
    assert now + min_interval - 1e-9 <= due <= now + max_interval + 1e-9


@given(readings(), st.floats(0.0, 1.0), fractions, st.floats(0.05, 20.0))
@settings(max_examples=300, deadline=None)
def test_jitter_never_delays_a_poll_past_the_predicted_finish(
    reading: tuple[Evidence, float], jitter: float, draw: float, cost: float
) -> None:
    evidence, now = reading
    plan = forecaster()
    window = plan.window(evidence)
    options = {"delay_cost": cost, "min_interval": 0.25, "max_interval": 3600.0}
    jittered = plan.next_poll(evidence, now, jitter=jitter, random_fraction=draw, **options)
    steady = plan.next_poll(evidence, now, jitter=0.0, random_fraction=0.0, **options)
    assert jittered <= steady + 1e-9  # jitter only ever brings a poll earlier
    if window is not None and window[1] >= now + 0.25:
        assert jittered <= window[1] + 1e-9


@given(seconds, positive, st.integers(0, 99))
def test_eta_zero_on_a_running_task_is_no_estimate(submitted: float, age: float, progress: int) -> None:
    plan = forecaster()
    with_zero = Evidence(submitted)
    with_zero.record(submitted + age, 0, progress)
    without = Evidence(submitted)
    without.record(submitted + age, None, progress)
    assert plan.window(with_zero) == plan.window(without)
    if progress == 0:
        assert plan.window(with_zero) is None  # nothing to go on: not "finishing now"


def test_an_exact_eta_puts_the_next_poll_at_the_finish_once_learnt() -> None:
    plan = forecaster()
    # Teach it that eta is exact: tasks whose eta counted down one second per second.
    for index in range(50):
        evidence = Evidence(0.0)
        plan.running(evidence, 5.0, 40.0, None)
        plan.running(evidence, 25.0, 20.0, None)
        plan.ended_between(evidence, 44.8, 45.2 + index * 0)
    evidence = Evidence(100.0)
    plan.running(evidence, 110.0, 30.0, None)
    lo, hi = plan.window(evidence) or (math.nan, math.nan)
    assert 135.0 <= lo <= 140.0 <= hi <= 144.0  # eta 30 is 29 to 30 s left; a little room for what is unproven
    due = plan.next_poll(
        evidence, 110.0, delay_cost=2.0, min_interval=0.25, max_interval=60.0, jitter=0.0, random_fraction=0.0
    )
    assert lo <= due <= hi


def test_progress_read_twice_predicts_the_finish_whatever_the_queueing() -> None:
    plan = forecaster()
    evidence = Evidence(0.0)
    # Queued for 20 s, then 1% every 0.8 s: 41% at 52.8 s, 70% at 76 s; it ends at 100 s.
    plan.running(evidence, 52.8, None, 41)
    plan.running(evidence, 76.0, None, 70)
    lo, hi = plan.window(evidence) or (math.nan, math.nan)
    assert 97.0 <= lo <= 100.0 <= hi <= 103.0


def test_without_hints_polls_are_sparse_while_few_tasks_end_and_dense_where_many_do() -> None:
    plan = forecaster()
    for index in range(200):  # tasks that all took 38 to 42 s
        evidence = Evidence(0.0, "kind")
        plan.running(evidence, 30.0, None, None)
        plan.ended_between(evidence, 38.0 + index % 4, 39.0 + index % 4)
    early = plan.gap_without_hints("kind", 5.0, 2.0, 0.25, 60.0)
    in_the_bulk = plan.gap_without_hints("kind", 39.0, 2.0, 0.25, 60.0)
    late = plan.gap_without_hints("kind", 300.0, 2.0, 0.25, 60.0)
    assert early > 10.0 > in_the_bulk
    assert late <= in_the_bulk * 1.01  # a late task is not polled more and more rarely


MODES: dict[str, dict[str, Any]] = {
    "exact eta": {"eta": "exact"},
    "noisy eta": {"eta": "noisy"},
    "progress only": {"eta": "absent"},
    "coarse progress": {"eta": "absent", "progress": "steps"},
    "no hints": {"eta": "absent", "progress": "absent"},
    "busy account": {"max_processing_per_key": 10},
}
#: Loose bounds at this small size (60 jobs, a cold start): what a fixed 5 s loop would cost is about 9.
POLL_BOUNDS = {"exact eta": 4.0, "noisy eta": 4.0, "progress only": 4.0}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", list(MODES))
async def test_every_hint_mode_costs_few_polls_and_no_poll_after_the_end(mode: str) -> None:
    jobs = 60
    options: dict[str, Any] = {"duration": lognormal_durations(40.0, 0.3), "seed": 7, **MODES[mode]}
    async with (
        Simulator(time_scale=0.005, **options) as sim,
        client_for(sim, max_concurrency=20, polling=PollPolicy(max_polls_per_second=None)) as client,
    ):
        requests = [ImageToVideo(f"job {index}", URL) for index in range(jobs)]
        async with client.as_completed(requests) as results:
            outcomes = [result async for result in results]
    assert all(result.ok for result in outcomes)
    assert sim.counters.polls_after_terminal == 0
    polls_per_task = sim.counters.poll_requests / jobs
    # The fixed 5 s loop's cost on these durations, as a ceiling for the modes without a tight bound.
    loop_polls = [math.ceil((task.ends_at - task.submitted_at) / 5.0) for task in sim.tasks.values()]
    five_second_loop = sum(loop_polls) / len(loop_polls)
    assert polls_per_task <= POLL_BOUNDS.get(mode, five_second_loop)
    assert min(Counter(sim.counters.polls_by_task).values()) >= 1


def _bisected_wait(model: DurationModel, age: float, tail: float, max_wait: float) -> float:
    """The bisection `Forecaster.webhook_fallback` used before `DurationModel.wait_until_survival`."""
    low, high = 0.0, max_wait
    if model.survival_between(age, age + high) > tail:
        return max_wait
    for _ in range(30):
        middle = (low + high) / 2
        if model.survival_between(age, age + middle) > tail:
            low = middle
        else:
            high = middle
    return high


@settings(max_examples=300, deadline=None)
@given(
    ends=st.lists(st.floats(0.5, 2000.0), max_size=40),
    prior_median=st.floats(1.0, 600.0),
    age=st.floats(0.0, 3000.0),
    tail=st.floats(0.001, 0.99),
    max_wait=st.floats(1.0, 3000.0),
)
def test_the_wait_until_survival_is_the_bisections_answer_computed_in_one_walk(
    ends: list[float], prior_median: float, age: float, tail: float, max_wait: float
) -> None:
    model = DurationModel(prior_median, 1.0)
    for duration in ends:
        model.count(0.0, duration)
        model.ended_at(duration)
    walked = model.wait_until_survival(age, tail, max_wait)
    assert 0.0 <= walked <= max_wait
    # The bisection is within max_wait / 2**30 of the answer.
    assert math.isclose(walked, _bisected_wait(model, age, tail, max_wait), rel_tol=1e-9, abs_tol=max_wait * 2**-29)

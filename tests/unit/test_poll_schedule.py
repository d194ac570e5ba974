"""The poll schedule of a client told nothing, as pure functions: its bounds, and the censored learner."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pixverse_async._durations import DurationModel, prior
from pixverse_async._forecast import Evidence, Forecaster

seconds = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)
positive = st.floats(min_value=0.01, max_value=900.0, allow_nan=False)
PLAN = {"delay_cost": 2.0, "min_interval": 0.25, "jitter": 0.1}


@st.composite
def readings(draw: st.DrawFn) -> tuple[Evidence, float]:
    """A task's evidence after a few polls that saw it running, and the time of the last one."""
    submitted = draw(seconds)
    evidence = Evidence(submitted)
    now = submitted
    for _ in range(draw(st.integers(0, 4))):
        now += draw(positive)
        evidence.record(now, draw(st.none() | st.integers(0, 900)), draw(st.none() | st.integers(0, 100)))
    return evidence, now


@st.composite
def learnt(draw: st.DrawFn) -> Forecaster:
    """A forecaster that saw some tasks end, of any length from a second to an hour."""
    forecaster = Forecaster()
    for _ in range(draw(st.integers(0, 30))):
        evidence = Evidence(0.0, "kind")
        running = draw(st.floats(0.0, 3000.0))
        if running > 0:
            forecaster.running(evidence, running, None, None)
        forecaster.ended_between(evidence, running if running > 0 else None, running + draw(positive))
    return forecaster


@given(learnt(), readings(), st.floats(0.0, 0.999), st.none() | positive)
@settings(max_examples=300, deadline=None)
def test_a_poll_is_never_sooner_than_min_interval_nor_later_than_its_bound(
    forecaster: Forecaster, reading: tuple[Evidence, float], draw: float, extra: float | None
) -> None:
    evidence, now = reading
    max_interval = None if extra is None else 0.25 + extra  # PollPolicy refuses a max below the min
    due = forecaster.next_poll(evidence, now, random_fraction=draw, max_interval=max_interval, **PLAN)
    assert due >= now + 0.25 - 1e-9
    if max_interval is not None:
        assert due <= now + max_interval + 1e-9
    window = forecaster.window(evidence)
    if window is None and max_interval is None:  # nothing but the age: looked at again before it doubles (or 60 s)
        assert due <= now + max(0.25, 60.0, now - evidence.submitted_at) + 1e-9
    elif window is not None and window[1] > now:  # never past the end the hints allow
        assert due <= max(window[1], now + 0.25) + 1e-9
        if max_interval is None:  # nor, however far that is, past 4 times the age or 10 minutes
            assert due <= now + max(0.25, 600.0, 4 * (now - evidence.submitted_at)) + 1e-9


@given(learnt(), seconds, st.floats(0.0, 0.999), st.booleans())
@settings(max_examples=200, deadline=None)
def test_the_first_poll_of_a_client_that_knows_nothing_comes_within_seconds(
    forecaster: Forecaster, submitted: float, draw: float, hints_read: bool
) -> None:
    cold = Forecaster()
    if not hints_read:  # it has seen that first polls read no hints
        for _ in range(10):
            cold.running(Evidence(1.0), 1.0, None, None)  # read at once: it teaches nothing of durations
    first = cold.first_poll(Evidence(submitted), random_fraction=draw, max_interval=None, **PLAN)
    assert submitted + 0.25 - 1e-9 <= first <= submitted + 5.0
    # Whatever was learnt, the first poll is never sooner than min_interval.
    learnt_first = forecaster.first_poll(Evidence(submitted, "kind"), random_fraction=draw, max_interval=None, **PLAN)
    assert learnt_first >= submitted + 0.25 - 1e-9


def durations_learnt_from_late_polls(model: DurationModel, rng: random.Random) -> None:
    """Tasks of about 2 s (log-normal, sigma 0.3), each polled once at a random age up to 12 s, then at 12 s:
    most ends are first seen at 12 s, or at a first poll long after the task ended."""
    for _ in range(400):
        duration = rng.lognormvariate(math.log(2.0), 0.3)
        first_poll = rng.uniform(0.5, 12.0)
        if duration <= first_poll:
            model.ended_between(0.0, first_poll)  # ended before the first poll
        else:
            model.count(0.0, first_poll)
            model.ended_between(first_poll, 12.0)


def test_the_censored_learner_recovers_a_2_s_median_from_ends_first_seen_at_12_s() -> None:
    model = DurationModel(*prior(None, 0.5))
    durations_learnt_from_late_polls(model, random.Random(5))
    assert 1.6 <= model.quantile(0.5) <= 2.5
    # Placing each end in the middle of its interval instead would learn a median past 6 s.
    assert model.quantile(0.9) <= 4.0


def test_a_cold_model_spreads_its_polls_with_the_age_whatever_the_length() -> None:
    forecaster = Forecaster()
    gaps = [forecaster.gap_without_hints(None, age, 2.0, 0.25, None) for age in (1.0, 10.0, 100.0, 1000.0)]
    assert gaps == sorted(gaps)  # older tasks are looked at less often
    assert gaps[0] <= 5.0 and gaps[-1] <= 1000.0  # and never later than their age allows


def test_ends_beyond_those_kept_for_refitting_are_never_lost() -> None:
    model = DurationModel(*prior(None, 0.5))
    rng = random.Random(2)
    for _ in range(5000):  # more than the 2,048 kept: refits at 2,048 and 4,096 share out only the kept ones
        lower = rng.uniform(0.0, 30.0)
        model.count(0.0, lower)
        model.ended_between(lower, lower + rng.uniform(0.0, 5.0))
    assert abs(sum(model.ends) - 5000) < 1e-6

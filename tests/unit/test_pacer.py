"""The budget's `Pacer` on a fake `now`: the limits known up front, a lone 429 against a run of them, the pace
cut by evidence of a rate limit, and how it grows back. No clock, no server: `delay(now)` takes a turn when
it answers 0, and `accepted()` / `refused(now, retry_after)` report each call's answer."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from pixverse_async import RetryPolicy
from pixverse_async._budget import (
    RATE_CUT,
    RATE_EVIDENCE,
    RATE_GROWTH,
    RATE_GROWTH_CALLS,
    RATE_PROBE,
    RATE_PROBE_CALLS,
    Pacer,
)

NO_JITTER = RetryPolicy(initial_backoff=1.0, max_backoff=30.0, jitter=0.0)


def pacer(*, per_minute: float | None = None, per_second_burst: float | None = None) -> Pacer:
    return Pacer(
        "task-result", per_minute=per_minute, per_second_burst=per_second_burst, retry=NO_JITTER, rng=random.Random(0)
    )


def test_without_limits_every_call_goes_at_once() -> None:
    free = pacer()
    assert [free.delay(0.0) for _ in range(1000)] == [0.0] * 1000
    assert free.learnt_rate is None


def test_calls_per_minute_are_spaced_evenly() -> None:
    paced = pacer(per_minute=60)
    assert paced.delay(0.0) == 0.0  # the first goes, and takes the turn
    assert paced.delay(0.0) == 1.0
    assert paced.delay(0.25) == 0.75
    assert paced.delay(1.0) == 0.0
    assert paced.delay(1.0) == 1.0


def test_a_burst_allowance_lets_one_seconds_calls_through_then_paces_them() -> None:
    paced = pacer(per_second_burst=4)
    assert [paced.delay(0.0) for _ in range(4)] == [0.0] * 4
    assert paced.delay(0.0) == 0.25
    assert paced.delay(0.25) == 0.0


def test_a_lone_429_delays_only_its_own_call() -> None:
    paced = pacer()
    assert paced.delay(0.0) == 0.0
    assert paced.refused(0.0, None) == 1.0  # its own backoff
    assert paced.delay(0.0) == 0.0  # every other call still goes
    paced.accepted()
    assert paced.refusals_in_a_row == 0


def test_a_refusal_asking_for_no_wait_is_retried_at_once_and_teaches_nothing() -> None:
    paced = pacer()
    for _ in range(RATE_EVIDENCE + 2):
        assert paced.delay(0.0) == 0.0
        assert paced.refused(0.0, 0.0) == 0.0
    assert paced.refusals_in_a_row == 0 and paced.learnt_rate is None


def test_429s_with_an_accepted_call_between_are_not_a_rate_limit() -> None:
    paced = pacer()
    for _ in range(5):
        for _ in range(RATE_EVIDENCE - 1):
            paced.delay(0.0)
            paced.refused(0.0, None)
        paced.delay(0.0)
        paced.accepted()
    assert paced.learnt_rate is None and paced.delay(0.0) == 0.0


def test_a_run_of_429s_pauses_every_call_and_cuts_the_pace_below_what_got_through() -> None:
    paced = pacer()
    # 10 calls a second get through for 10 seconds, then 3 in a row are refused. The fake clock starts at 0,
    # as the simulator's does: a first call at 0.0 is a first call (it once read as none).
    for tick in range(100):
        assert paced.delay(tick / 10) == 0.0
        paced.accepted()
    for _ in range(RATE_EVIDENCE):
        assert paced.delay(10.0) == 0.0
        wait = paced.refused(10.0, None)
    assert wait == 1.0  # the first pause's backoff
    assert paced.delay(10.5) == 0.5  # every call waits out the pause
    rate = paced.learnt_rate
    assert rate is not None
    # The refused calls were let through but not accepted: 90 accepted over the 10 seconds before this one.
    assert abs(rate - RATE_CUT * 9.0) < 1e-9
    # Then calls go at the learnt pace, and grow it a little with each one accepted after waiting for it.
    assert paced.delay(11.0) == 0.0
    assert paced.delay(11.0) > 0
    assert paced.delay(11.0 + 1 / rate + 1e-9) == 0.0
    paced.accepted()
    assert paced.learnt_rate is not None
    assert abs(paced.learnt_rate - rate * (1 + RATE_GROWTH * (1 + 1 / RATE_GROWTH_CALLS))) < 1e-9


def test_a_retry_after_sets_the_pause_and_each_new_run_of_refusals_backs_off_longer() -> None:
    paced = pacer()
    for tick in range(20):
        paced.delay(tick / 10)
        paced.accepted()
    for _ in range(RATE_EVIDENCE):
        paced.delay(2.0)
        assert paced.refused(2.0, 5.0) == 5.0
    assert paced.delay(6.0) == 1.0  # paused until 2 + 5
    # A second run of refusals, without an accepted call between: the pause's backoff doubles.
    assert paced.delay(7.0) == 0.0
    assert paced.refused(7.0, None) == 2.0
    assert paced.delay(8.5) == 0.5


def test_after_many_calls_accepted_the_pace_is_probed_higher() -> None:
    paced = pacer()
    for tick in range(100):
        paced.delay(tick / 10)
        paced.accepted()
    for _ in range(RATE_EVIDENCE):
        paced.delay(10.0)
        paced.refused(10.0, None)
    learnt = paced.learnt_rate
    assert learnt is not None
    # Accepted calls that never had to wait for the pace leave it alone, until the probe.
    now = 20.0
    for _ in range(RATE_PROBE_CALLS - 1):
        now += 2 / learnt
        assert paced.delay(now) == 0.0
        paced.accepted()
    assert paced.learnt_rate == learnt
    now += 2 / learnt
    paced.delay(now)
    paced.accepted()
    assert paced.learnt_rate == learnt * RATE_PROBE


@given(st.lists(st.sampled_from(["call", "accept", "refuse", "refuse-after", "tick"]), max_size=200))
def test_any_sequence_of_answers_keeps_the_pacer_sane(steps: list[str]) -> None:
    paced = pacer(per_minute=600)
    now = 0.0
    for step in steps:
        if step == "tick":
            now += 0.37
            continue
        if step == "call":
            wait = paced.delay(now)
            assert wait >= 0.0
            if wait > 0:
                now += wait
                assert paced.delay(now) < 1e-9  # a call that waited what it was told goes (but for rounding)
        elif step == "accept":
            paced.accepted()
            assert paced.refusals_in_a_row == 0
        else:
            wait = paced.refused(now, 4.0 if step == "refuse-after" else None)
            assert 0.0 <= wait <= max(4.0, NO_JITTER.max_backoff)
        rate = paced.learnt_rate
        assert rate is None or rate > 0

"""`listener.missed_delivery`: whether a row's webhook delivery may have come and gone while no run listened, from
the journal's record of the runs' receivers (pure: spans in, a reason or None out)."""

from __future__ import annotations

import pytest

from pixverse_async.cli.journal import ListenerSpan
from pixverse_async.cli.listener import FIRST_TO_LAST_TRY, LONGEST_BETWEEN_TRIES, missed_delivery, parse_listen_address

URL = "http://127.0.0.1:8787/hook"
T0 = 1_700_000_000.0  # wall-clock seconds


def missed(sent_at: float | None, spans: list[ListenerSpan], since: float, *, scale: float = 1.0) -> str | None:
    return missed_delivery(sent_at, URL, spans, listening_since=since, time_scale=scale)


def test_a_gap_shorter_than_the_routers_tries_cannot_have_swallowed_a_delivery() -> None:
    # Sent at T0+10 by a run listening since T0, killed after T0+30; this run listens from 20 s later.
    spans = [ListenerSpan(URL, T0, T0 + 30)]
    assert missed(T0 + 10, spans, T0 + 50) is None


def test_a_gap_as_long_as_the_routers_tries_may_have() -> None:
    spans = [ListenerSpan(URL, T0, T0 + 30)]
    reason = missed(T0 + 10, spans, T0 + 30 + FIRST_TO_LAST_TRY)
    assert reason is not None and "no run listened for 31 API s" in reason


def test_gaps_are_read_in_api_seconds() -> None:
    # 2 real seconds at 0.1 real seconds per API second are 20 API s: fine; 4 real seconds are 40: not.
    spans = [ListenerSpan(URL, T0, T0 + 3)]
    assert missed(T0 + 1, spans, T0 + 5, scale=0.1) is None
    assert missed(T0 + 1, spans, T0 + 7, scale=0.1) is not None


def test_a_short_spell_of_listening_between_two_gaps_may_have_missed_every_try() -> None:
    # Two short gaps around 10 s of listening: a try in the first gap, the next one 16 s later in the second.
    short = [ListenerSpan(URL, T0, T0 + 20), ListenerSpan(URL, T0 + 40, T0 + 50)]
    reason = missed(T0 + 5, short, T0 + 70)
    assert reason is not None and "listened for only 10 API s between two gaps" in reason
    long_enough = [ListenerSpan(URL, T0, T0 + 20), ListenerSpan(URL, T0 + 40, T0 + 40 + LONGEST_BETWEEN_TRIES + 4)]
    assert missed(T0 + 5, long_enough, T0 + 40 + LONGEST_BETWEEN_TRIES + 24) is None


def test_only_the_time_after_sending_counts_and_a_send_after_the_last_heartbeat_is_a_gap_from_then() -> None:
    # A long gap before the row was sent says nothing about it.
    spans = [ListenerSpan(URL, T0 - 500, T0 - 400), ListenerSpan(URL, T0, T0 + 30)]
    assert missed(T0 + 10, spans, T0 + 50) is None
    # Sent after its run's last heartbeat: the gap runs from the sending.
    assert missed(T0 + 35, spans, T0 + 60) is None
    assert missed(T0 + 35, spans, T0 + 35 + FIRST_TO_LAST_TRY) is not None


def test_a_row_sent_to_another_url_or_by_a_run_with_no_record_is_never_judged() -> None:
    other = [ListenerSpan("http://elsewhere/hook", T0, T0 + 30)]
    assert "another URL" in (missed(T0 + 10, other, T0 + 31) or "")
    assert "no record of its run's listener" in (missed(T0 + 10, [], T0 + 31) or "")
    assert "no record of when it was sent" in (missed(None, other, T0 + 31) or "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8787", ("127.0.0.1", 8787)), ("[::1]:80", ("::1", 80)), ("localhost:65535", ("localhost", 65535))],
)
def test_listen_addresses_are_read(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["8787", "127.0.0.1", ":8787", "host:0", "host:65536", "host:\uff18\uff10", "[]:80"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen_address(text)

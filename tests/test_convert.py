"""Task-result bodies: the hand-written parser of every poll (`_protocol`) and the converter's declared shape
(`_convert`, used for webhook payloads) give the same result for every body, and never crash on what a server
might send."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixverse_async import TaskResult, TaskStatus
from pixverse_async._convert import structure_task_result
from pixverse_async._protocol import parse_task_result

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
Parser = Callable[..., TaskResult]
PARSERS = pytest.mark.parametrize("parse", [parse_task_result, structure_task_result], ids=["by-hand", "converter"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
unknown_fields = st.dictionaries(st.text(max_size=12).map(lambda name: "x_" + name), json_values, max_size=3)


def number(low: float, high: float) -> st.SearchStrategy[Any]:
    """A number as the API sends it: JSON int or float, or the same written in a str."""
    plain = st.integers(int(low), int(high)) | st.floats(low, high, allow_nan=False)
    return plain | plain.map(str) | plain.map(lambda n: f" {n} ")


def with_unknown_fields(fields: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda known, unknown: {**unknown, **known}, fields, unknown_fields)


statuses = st.sampled_from([s.value for s in TaskStatus]) | st.just("TASK_STATUS_PAUSED")
tasks = with_unknown_fields(
    st.fixed_dictionaries(
        {"task_id": st.text(min_size=1), "status": statuses},
        optional={
            "reason": st.text(),
            "task_type": st.just("PIXVERSE_V4_5_I2V"),
            "eta": number(0, 1e6) | st.none(),
            "progress_percent": number(0, 100) | st.none(),
        },
    )
)
videos = with_unknown_fields(
    st.fixed_dictionaries(
        {"video_url": st.text(min_size=1).map(lambda path: "https://cdn.example/" + path)},
        optional={"video_url_ttl": number(0, 1e6) | st.none(), "video_type": st.sampled_from(["mp4", "webm", ""])},
    )
)
seeds = st.integers(0, 2_147_483_647)
valid_bodies = with_unknown_fields(
    st.fixed_dictionaries(
        {"task": tasks},
        optional={
            "videos": st.lists(videos, max_size=3),
            "extra": with_unknown_fields(st.fixed_dictionaries({}, optional={"seed": seeds | seeds.map(str)})),
            "images": st.just([]),
            "audios": st.just([]),
        },
    )
)


@given(valid_bodies)
def test_every_valid_body_with_unknown_fields_gets_the_same_result_from_both(body: dict[str, Any]) -> None:
    by_hand = parse_task_result(body, received_at=RECEIVED)
    assert structure_task_result(body, received_at=RECEIVED) == by_hand
    # The result is the body's, not a default's.
    assert by_hand.task_id == body["task"]["task_id"] and by_hand.raw_status == body["task"]["status"]
    assert len(by_hand.videos) == len(body.get("videos", []))


task_keys = st.sampled_from(["task_id", "status", "reason", "eta", "progress_percent", "junk"])
video_keys = st.sampled_from(["video_url", "video_url_ttl", "video_type", "junk"])
any_body = (
    st.dictionaries(st.sampled_from(["task", "videos", "extra", "images", "junk"]), json_values)
    | json_values
    | st.fixed_dictionaries(
        {
            "task": st.dictionaries(task_keys, json_values) | json_values,
            "videos": st.lists(st.dictionaries(video_keys, json_values) | json_values) | json_values,
            "extra": st.dictionaries(st.sampled_from(["seed", "junk"]), json_values) | json_values,
        }
    )
)


@given(any_body)
def test_anything_parses_without_crashing_and_alike(body: Any) -> None:
    result = parse_task_result(body, received_at=RECEIVED)
    assert isinstance(result.status, TaskStatus)
    assert isinstance(result.task_id, str)
    assert all(isinstance(video.url, str) and video.url for video in result.videos)
    assert structure_task_result(body, received_at=RECEIVED) == result


@PARSERS
def test_documented_example_with_string_numbers_and_unknown_fields(parse: Parser) -> None:
    body = {
        "extra": {"seed": "158881667", "debug_info": {"request_info": ""}},
        "task": {
            "task_id": "830d9c90",
            "status": "TASK_STATUS_SUCCEED",
            "reason": "",
            "task_type": "PIXVERSE_V4_5_I2V",
            "eta": "0",
            "progress_percent": "100",
            "brand_new_field": {"x": 1},
        },
        "images": [],
        "audios": [],
        "videos": [{"video_url": "https://cdn/x.mp4?sig=1", "video_url_ttl": "3600", "video_type": "mp4"}],
    }
    result = parse(body, received_at=RECEIVED)
    assert result.status is TaskStatus.SUCCEED and result.is_terminal
    assert (result.eta, result.progress_percent, result.seed) == (0.0, 100.0, 158881667)
    (video,) = result.videos
    assert video.ttl == 3600.0
    assert video.expires_at == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert "sig=1" not in repr(video)


@PARSERS
def test_unknown_status_and_missing_fields(parse: Parser) -> None:
    result = parse({"task": {"status": "TASK_STATUS_PAUSED", "eta": "soon"}})
    assert result.status is TaskStatus.UNKNOWN and result.raw_status == "TASK_STATUS_PAUSED"
    assert result.eta is None and result.videos == () and result.reason == ""

"""The task-result parser: round trips, and nothing a server might send ever crashes it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pixverse_async import TaskResult, TaskStatus, Video
from pixverse_async._protocol import parse_task_result, task_result_to_json

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e9)
videos = st.builds(
    Video,
    url=st.text(min_size=1).map(lambda s: "https://cdn.example/" + s),
    ttl=st.none() | finite,
    type=st.sampled_from(["mp4", "webm"]),
    received_at=st.just(RECEIVED),
)
task_results = st.builds(
    TaskResult,
    task_id=st.text(min_size=1),
    status=st.sampled_from([s for s in TaskStatus if s is not TaskStatus.UNKNOWN]),
    reason=st.text(),
    eta=st.none() | finite,
    progress_percent=st.none() | st.floats(min_value=0, max_value=100),
    videos=st.lists(videos, max_size=3).map(tuple),
    seed=st.none() | st.integers(min_value=0, max_value=2_147_483_647),
    raw_status=st.just(""),
)


@given(task_results)
def test_round_trip_through_the_api_json_shape(result: TaskResult) -> None:
    wire = json.loads(json.dumps(task_result_to_json(result)))
    parsed = parse_task_result(wire, received_at=RECEIVED)
    assert parsed == TaskResult(
        task_id=result.task_id,
        status=result.status,
        reason=result.reason,
        eta=result.eta,
        progress_percent=result.progress_percent,
        videos=result.videos,
        seed=result.seed,
        raw_status=result.status.value,
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
known_keys = st.sampled_from(["task_id", "status", "reason", "eta", "progress_percent", "video_url", "video_url_ttl"])


@given(
    st.dictionaries(st.sampled_from(["task", "videos", "extra", "images", "junk"]), json_values)
    | json_values
    | st.fixed_dictionaries({"task": st.dictionaries(known_keys, json_values), "videos": st.lists(json_values)})
)
def test_anything_parses_without_crashing(body: Any) -> None:
    result = parse_task_result(body)
    assert isinstance(result.status, TaskStatus)
    assert isinstance(result.task_id, str)
    assert all(isinstance(video.url, str) and video.url for video in result.videos)


def test_documented_example_with_string_numbers_and_unknown_fields() -> None:
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
    result = parse_task_result(body, received_at=RECEIVED)
    assert result.status is TaskStatus.SUCCEED and result.is_terminal
    assert (result.eta, result.progress_percent, result.seed) == (0.0, 100.0, 158881667)
    (video,) = result.videos
    assert video.ttl == 3600.0
    assert video.expires_at == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert "sig=1" not in repr(video)


def test_unknown_status_and_missing_fields() -> None:
    result = parse_task_result({"task": {"status": "TASK_STATUS_PAUSED", "eta": "soon"}})
    assert result.status is TaskStatus.UNKNOWN and result.raw_status == "TASK_STATUS_PAUSED"
    assert result.eta is None and result.videos == () and result.reason == ""

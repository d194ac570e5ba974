"""The API site: authentication, and what it answers to unknown paths, tasks and keys."""

from __future__ import annotations

import pytest

from tests.testing.sim_harness import KEY, OTHER_KEY, URL_IMAGE, running


@pytest.mark.anyio
async def test_authentication_errors() -> None:
    async with running() as h:
        submit_url = h.sim.base_url + "/v3/async/pixverse-v4.5-i2v"
        body = {"prompt": "p", "image": URL_IMAGE}
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
            reply = await h.request("POST", submit_url, json=body, headers=headers)
            assert (reply.status, reply.reason) == (400, "MISSING_API_KEY")
        reply = await h.submit(key="sk-wrong")
        assert reply.json() == {"code": 403, "reason": "INVALID_API_KEY", "message": "invalid API key", "metadata": {}}
        task_id = await h.create()
        assert (await h.poll(task_id, key=None)).reason == "MISSING_API_KEY"
        wrong = await h.poll(task_id, key="sk-wrong")
        assert (wrong.status, wrong.reason) == (403, "INVALID_API_KEY")
        assert h.sim.counters.errors_by_reason == {"MISSING_API_KEY": 4, "INVALID_API_KEY": 2}


@pytest.mark.anyio
async def test_not_found_answers() -> None:
    async with running() as h:
        for method, path in (
            ("GET", "/v3/async/nope"),
            ("GET", "/"),
            ("GET", "/v3/async/pixverse-v4.5-i2v"),
            ("POST", "/v3/async/task-result"),
        ):
            reply = await h.request(method, h.sim.base_url + path, headers={"Authorization": f"Bearer {KEY}"})
            assert (reply.status, reply.reason) == (404, "API_NOT_FOUND"), path
        unknown = await h.poll("00000000-0000-4000-8000-000000000000")
        assert (unknown.status, unknown.reason) == (404, "TASK_NOT_FOUND")
        mine = await h.create()
        other = await h.poll(mine, key=OTHER_KEY)
        assert (other.status, other.reason) == (404, "TASK_NOT_FOUND")
        missing = await h.poll(None)
        assert (missing.status, missing.reason) == (400, "INVALID_REQUEST_BODY")

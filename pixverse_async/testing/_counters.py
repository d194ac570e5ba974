"""What the simulator saw: `sim.counters`, for assertions on what a client did.

`sim.reset_counters()` replaces it with a fresh one (tasks are kept); the simulator looks its counters up at
each request, so a reset takes effect at once, also for webhook deliveries and video downloads under way.
"""

from __future__ import annotations

import collections
import typing

import attrs


@typing.final
@attrs.define
class SimCounters:
    """What the simulator saw. All counts start at 0; `Simulator.reset_counters` starts them again."""

    #: POST requests received on the submit path, valid or not, faulted or not.
    submit_requests: int = 0
    #: Tasks created (each one billed), including those created just before a fault struck.
    tasks_created: int = 0
    #: GET requests received on the task-result path, valid or not.
    poll_requests: int = 0
    #: Poll requests per `task_id` query value (known task or not).
    polls_by_task: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: Polls of a task after one poll had already answered it terminal (SUCCEED/FAILED): wasted requests.
    polls_after_terminal: int = 0
    #: Requests received by the video site (any path, valid or not, GET or HEAD).
    video_requests: int = 0
    #: Video-site requests that carried an `Authorization` header (must stay 0 with a correct client).
    key_leaks_to_video_host: int = 0
    #: 429 answers sent, from `max_running_per_key` and from `rate_limit` faults, on any endpoint.
    rate_limited: int = 0
    #: The same 429s by the limit that answered: "running_cap", "submit_rate", "poll_rate", "random", "fault".
    rate_limited_by: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: JSON error answers sent by the API site, by `reason` (fault answers included).
    errors_by_reason: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: Peak number of non-terminal tasks per API key, measured right after each task creation.
    max_running_by_key: dict[str, int] = attrs.Factory(dict)
    #: Tasks created per prompt text, for "exactly one task was created" assertions.
    tasks_created_by_prompt: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: Submissions whose body stopped before its `Content-Length` (the client went away): nothing created.
    bodies_cut_short: int = 0
    #: Videos served in full (200).
    videos_served: int = 0
    #: Video requests refused because the signed URL had expired.
    video_expired: int = 0
    #: Video requests refused because the signature was missing or wrong.
    video_bad_signature: int = 0
    #: Faults that struck, by `"<endpoint>:<kind>"`.
    faults_applied: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: Webhook POSTs made: every attempt, retries and the second POST of `duplicate` faults included.
    webhooks_sent: int = 0
    #: Webhook deliveries answered 2xx, counted once per delivery (a `duplicate`'s second POST is not).
    webhooks_delivered: int = 0
    #: Webhook deliveries given up after all 6 attempts failed.
    webhooks_failed: int = 0
    #: Webhook deliveries lost on purpose, by a `drop` fault or `webhook_drop_rate`: never sent.
    webhooks_dropped: int = 0
    #: Webhook deliveries POSTed a second time by a `duplicate` fault.
    webhooks_duplicated: int = 0
    #: Extra POSTs of delivered webhooks made by `webhook_repeat_rate` (each repeat counted).
    webhooks_repeated: int = 0

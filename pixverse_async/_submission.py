"""One submission: its body, its running-task slot, the shield that keeps its answer, and the POST rule.

Submissions are billed and the API takes no idempotency key, so a submission retries only when the server
cannot have created a task (it could not be reached, or it answered 429); when the request went out and the
answer was lost (read timeout, reset, 5xx, a garbled 200), it raises `SubmissionUncertainError` instead of
paying twice; with webhooks on, it first waits for the delivery that names the submission (see
`_lost_answers`), and carries on with the task it names. A failure while a streamed body was still being sent
is "not sent" (see `_upload`): retried.
Streamed bodies wait for room in the client's `UploadLane` before they go (and before the shield).
`submit()` and `as_completed()` both submit through a `Submitter`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio
import anyio.lowlevel
import attrs

from ._budget import Budget, Slot
from ._clock import Clock
from ._exceptions import (
    APIResponseError,
    InvalidRequestError,
    PixVerseError,
    RateLimitError,
    SubmissionUncertainError,
)
from ._forecast import kind_of
from ._lost_answers import SubmissionTokens
from ._models import ImageToVideo, TextToVideo, VideoRequest
from ._protocol import submission_body, submit_path
from ._retry import CallKind, RetryPolicy, Verdict, decide, is_surge, retry_after_of
from ._transport import AnswerLost, ApiTransport, RequestNotSent, Response
from ._upload import StreamedBody, UploadLane

RetryCallback = Callable[[int, PixVerseError], None]
#: What `Submitter.send` returns: the task's id, the slot that stands for it, and whether the answer was lost
#: and the task found by its webhook delivery (it has ended: poll it now; its age here says nothing).
Submitted = tuple[str, Slot, bool]


@attrs.frozen
class WireShield:
    """Two cancel scopes that let a task sending submissions for someone be cancelled without losing a task.

    `scope` is a cancel scope the sending task runs in: `Submitter.send` shields it only while a request is on
    the wire, so a cancellation then waits for the answer (bounded by the read timeout) and a task the server
    created is not lost. `stop` is the scope whose cancellation means the caller left (an `as_completed` run's,
    a `submit()` call's): once it is cancelled, nothing more is sent. Toggling one scope per sending task
    costs far less than entering a new shielded scope per request.
    """

    scope: anyio.CancelScope
    stop: anyio.CancelScope


@final
class Submitter:
    """Submits for one open client, through its transport and its budget."""

    def __init__(
        self,
        transport: ApiTransport,
        budget: Budget,
        *,
        clock: Clock,
        retry: RetryPolicy,
        rng: random.Random,
        image_as_data_uri: bool,
        webhook_url: str | None,
        uploads: UploadLane,
        tokens: SubmissionTokens | None = None,
    ) -> None:
        self._transport = transport
        self._budget = budget
        self._clock = clock
        self._retry = retry
        self._rng = rng
        #: `await take_slot()`: a running-task slot for the next submission, waiting while the budget has none
        #: free; the caller's from then on, to hand to `send()` or give back. The budget's own method, not a
        #: wrapper: it is awaited once per job.
        self.take_slot: Callable[[], Awaitable[Slot]] = budget.acquire
        # Named as on the client, so that request_body() reads as it did there.
        self.image_as_data_uri = image_as_data_uri
        self.webhook_url = webhook_url
        self.uploads = uploads
        #: With webhooks on: the submissions' tokens (each body's webhook URL names its submission).
        self.tokens = tokens

    async def request_body(self, request: VideoRequest) -> tuple[dict[str, Any] | StreamedBody, str | None]:
        """The body to send, and the token its webhook URL carries (None without webhooks)."""
        token, url = (None, self.webhook_url) if self.tokens is None else self.tokens.issue()
        return await submission_body(request, image_as_data_uri=self.image_as_data_uri, webhook_url=url), token

    async def send(
        self,
        request: ImageToVideo | TextToVideo,
        body: object,
        slot: Slot,
        *,
        on_retry: RetryCallback | None = None,
        shield: WireShield | None = None,
        take_slot: Callable[[], Awaitable[Slot]] | None = None,
        token: str | None = None,
    ) -> Submitted:
        """Submit holding a running-task slot; return the new task's id and the slot that now stands for it
        (see `Submitted`). `token` is the one `request_body` gave with `body`.

        The slot is this call's from here on: on success it is returned, accepted, for the poller to give
        back when the task ends (a 429 gives it back and a retry takes another, hence the return); on failure
        it is given back here, and kept until the task could have ended when the answer was lost. With a
        `shield` (see there), leaving waits for the answer of a request on the wire, so that a task the
        server created is not lost, and sends no new one. Submissions are paced by the budget. A retry takes
        its slot with `take_slot` (by default the budget's `acquire`).
        """
        budget = self._budget
        tokens, named = (self.tokens, token) if token else (None, "")
        path = submit_path(request)
        attempt = waits_at_the_cap = 0
        while True:
            attempt += 1
            on_wire = False
            try:
                if type(body) is StreamedBody:
                    # Before the shield: a caller who leaves while its body waits for the link sends nothing.
                    await self.uploads.enter(body)
                await budget.submissions.wait(self._clock)
                if tokens is not None:
                    tokens.sending(named)
                if shield is None:
                    on_wire = True
                    response = await self._transport.send("POST", path, body=body)
                else:
                    if shield.stop.cancel_called:
                        # Cancelled without an await since at which to hear it (woken in the very turn the
                        # caller left): hear it now, before anything is sent.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                    shield.scope.shield = True
                    on_wire = True
                    try:
                        response = await self._transport.send("POST", path, body=body)
                    finally:
                        shield.scope.shield = False
                if response.status == 200:
                    task_id = _task_id_from(response)
                    slot.accepted(task_id)
                    if tokens is not None:
                        tokens.answered(named)
                    return task_id, slot, False
                error: PixVerseError = self._transport.status_error(response)
                del response  # its body may echo the key: not a local of a frame in the traceback
                reached_server = True
            except RequestNotSent as failure:
                error, reached_server = failure.error, False
            except AnswerLost as failure:
                error, reached_server = failure.error, True
            except APIResponseError as failure:  # a 200 without a task id
                error, reached_server = failure, True
            except BaseException:
                if type(body) is StreamedBody:
                    body.release_lane()
                # Interrupted with the request out: its task may exist, so its slot stays taken meanwhile.
                if on_wire:
                    if tokens is not None:
                        tokens.given_up(named, request, kind=kind_of(request))
                    slot.release_when_ended()
                else:
                    if tokens is not None:
                        tokens.answered(named)  # nothing went out
                    slot.release()
                raise
            verdict = decide(error, CallKind.BILLED, reached_server=reached_server)
            if is_surge(error):
                # The router's traffic shaping: the next submissions slow down as after a 429. This one stays
                # uncertain: a 5xx on a POST may have created a task.
                budget.submissions.refused(self._clock.now(), retry_after_of(error))
            if verdict is Verdict.UNCERTAIN:
                if tokens is not None:
                    lost = tokens.lost(named, request, slot, error, kind_of(request))
                    del error
                    task_id, slot = await lost.resolved()
                    return task_id, slot, True
                slot.release_when_ended()
                raise SubmissionUncertainError(request, error) from error
            if tokens is not None:
                tokens.answered(named)  # nothing was created
            wait_for_a_slot = False
            if isinstance(error, RateLimitError):
                wait_for_a_slot = slot.refused(error.retry_after)
            else:
                slot.release()
            if verdict is Verdict.GIVE_UP:
                raise error
            retry_after = retry_after_of(error)
            delay = self._retry.delay(attempt, retry_after, self._rng)
            if wait_for_a_slot:
                # At the account's cap, the wait for a running task to end is the backoff, and it ends only as
                # tasks do: not a failed try (counting it failed jobs that merely queued behind the cap).
                waits_at_the_cap += 1
            if delay is None or attempt - waits_at_the_cap >= self._retry.max_attempts:
                raise error
            if on_retry is not None:
                on_retry(attempt, error)
            # At the account's cap after a 429, waiting for a running task to end is the backoff.
            if retry_after is not None or not wait_for_a_slot:
                await self._clock.sleep(delay)
            slot = await (take_slot or budget.acquire)()

    async def wait_for_delivery(
        self, request: VideoRequest, token: str, slot: Slot, *, judgeable: bool = True
    ) -> Submitted:
        """A submission sent before (by an earlier run) whose answer was lost, named by `token`: wait for its
        delivery holding `slot`, as for an answer lost here (see `UncertainSubmission`); not `judgeable`, its
        `SubmissionUncertainError` says `likely_created=None` whatever was measured."""
        if self.tokens is None:
            slot.release()
            raise InvalidRequestError(
                "job", "an UncertainSubmission waits for its webhook delivery: the client needs a webhook_url"
            )
        cause = RuntimeError("its answer was lost before this run")
        lost = self.tokens.lost(token, request, slot, cause, kind_of(request), judgeable=judgeable)
        task_id, slot = await lost.resolved()
        return task_id, slot, True


def _task_id_from(response: Response) -> str:
    body = response.json()
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise APIResponseError("the submission was answered 200 without a task_id")
    return task_id

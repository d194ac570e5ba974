"""Every error `pixverse_async` raises, in one tree.

    PixVerseError
    ├── InvalidRequestError (also ValueError)     bad input, found before any request is sent
    │   └── ConfigurationError                    ... in the client's options, policies, session or clock
    ├── APIError                                  talking to the API went wrong
    │   ├── APIStatusError                        the API answered with an error status
    │   │   ├── BadRequestError                   400 (body, image or prompt refused)
    │   │   │   └── ContentPolicyError            ILLEGAL_PROMPT, ILLEGAL_IMAGE_CONTENT (moderation; not billed)
    │   │   ├── AuthenticationError               MISSING_API_KEY, INVALID_API_KEY, BILLING_AUTH_FAILED
    │   │   ├── InsufficientBalanceError          BILLING_BALANCE_NOT_ENOUGH
    │   │   ├── PermissionDeniedError             403 (feature or API not allowed)
    │   │   ├── NotFoundError                     404 (TASK_NOT_FOUND, API_NOT_FOUND)
    │   │   ├── RateLimitError                    429
    │   │   └── ServerError                       5xx
    │   ├── APIConnectionError (also ConnectionError)   no usable answer arrived
    │   │   └── APITimeoutError (also TimeoutError)
    │   ├── APIResponseError (also ValueError)    a 200 answer that is not the promised JSON
    │   └── SubmissionUncertainError              a paid submission was sent but its answer was lost
    ├── ClientClosedError (also RuntimeError)     the client is not open, or was closed while you waited
    ├── BudgetUnavailableError (also ConnectionError)   a shared budget's store (Redis) cannot be reached
    ├── TaskFailedError                           the task ended TASK_STATUS_FAILED
    ├── TaskTimeoutError (also TimeoutError)      the task did not finish within the caller's timeout
    └── DownloadError                             a video could not be downloaded (every download failure)
        ├── VideoExpiredError                     its signed link has expired: poll the task for a new one
        ├── VideoHostError                        the video host answered 429 or 5xx (retried first)
        └── DownloadConnectionError (also ConnectionError)   the download broke off or never connected
            └── DownloadTimeoutError (also TimeoutError)        (retried first)

A `DownloadError` itself, not retried, is a download refused before or while it ran: a video URL that is not
http(s), carries credentials, redirects to such a URL (or too often), points at a private address when those
are refused, or a body that is not an MP4 file; or a file that cannot be written (then `__cause__` is the
`OSError`).

Account-wide errors (`AuthenticationError`, `InsufficientBalanceError`) are the ones worth stopping a whole
batch for. No message, repr or attribute of these errors ever contains the API key: the client masks the
key in every field a server writes (reason, message, metadata, a page, a task's reason) before it cuts the
text and builds an error, and does not chain aiohttp's errors (their frames hold the request's headers).
"""

from __future__ import annotations

from typing import Any


class PixVerseError(Exception):
    """Base class of every error this library raises."""


class InvalidRequestError(PixVerseError, ValueError):
    """A request breaks a rule of the API; raised before anything is sent (and nothing is paid)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConfigurationError(InvalidRequestError):
    """The client's configuration is wrong: an argument of `PixVerseClient(...)`, a policy (`RetryPolicy`,
    `PollPolicy`, `Timeouts`, ...), a session that would leak credentials, a clock. Raised when it is built
    (a session's headers are checked again when the client opens and downloads); nothing is sent. An
    `InvalidRequestError` (and so a `ValueError`): code that caught those catches it still."""


class APIError(PixVerseError):
    """Talking to the API failed."""


class APIStatusError(APIError):
    """The API answered with an error status; `reason` is its machine-readable reason, when it gave one."""

    def __init__(
        self,
        status_code: int,
        reason: str | None,
        message: str,
        *,
        retry_after: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        label = f"{status_code} {reason}" if reason else f"{status_code}"
        super().__init__(f"{label}: {message}" if message else label)
        self.status_code = status_code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.metadata = metadata if metadata is not None else {}


class BadRequestError(APIStatusError):
    """400: the API refused the request body (a rule this library could not check locally, or content)."""


class ContentPolicyError(BadRequestError):
    """400 `ILLEGAL_PROMPT` or `ILLEGAL_IMAGE_CONTENT`: moderation refused the prompt or the image at
    submission. Nothing was created or billed; retrying the same request will not help."""


class AuthenticationError(APIStatusError):
    """The API key is missing, wrong, or not allowed to bill. Retrying will not help."""


class InsufficientBalanceError(APIStatusError):
    """The account cannot pay for another task. Retrying will not help until it is topped up."""


class PermissionDeniedError(APIStatusError):
    """403: this key may not use this feature or API."""


class NotFoundError(APIStatusError):
    """404: no such task (for this key) or no such API path (check `base_url`)."""


class RateLimitError(APIStatusError):
    """429: too many requests or too many running tasks for this key."""


class ServerError(APIStatusError):
    """5xx: the API, or a proxy in front of it, failed."""


class APIConnectionError(APIError, ConnectionError):
    """No usable answer arrived: the connection failed, was reset, or the host could not be reached."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """The request did not complete within the client's timeout."""


class APIResponseError(APIError, ValueError):
    """The API answered 200 but the body was not the JSON it promises (truncated, or not JSON at all)."""


class SubmissionUncertainError(APIError):
    """A submission reached the API but its answer was lost, so a task may or may not exist (and be billed).

    The client never retries such a submission by itself: retrying could pay twice. `request` is the very
    request that was sent (the `ImageToVideo`; typed `object` so that the errors import no model: they sit
    below every module); `__cause__` is what went wrong. Resubmit it only if losing the possible task is
    better for you than paying for it twice.

    With webhooks on, the job first waits for the delivery that names its submission (`webhook_token`, the
    token its webhook URL carried) and raises this only when none came by the time every task of its kind
    would have ended. `likely_created` is then what was measured: `False` when the deliveries of this client's
    other tasks arrived so reliably that a created task's would be missing with chance at most
    `missing_chance` (5% or less), `None` when that is unknown (no webhooks, too few deliveries measured, or
    deliveries go missing); never `True`, a task that answers is not uncertain. The message gives the evidence.
    """

    def __init__(
        self,
        request: object,
        cause: BaseException,
        *,
        likely_created: bool | None = None,
        missing_chance: float | None = None,
        detail: str | None = None,
        webhook_token: str | None = None,
    ) -> None:
        super().__init__(
            f"the submission was sent but its answer was lost ({type(cause).__name__}: {cause}); "
            "a task may have been created and billed, so it was not retried" + (f"; {detail}" if detail else "")
        )
        self.request = request
        self.likely_created = likely_created
        self.missing_chance = missing_chance
        self.webhook_token = webhook_token


class ClientClosedError(PixVerseError, RuntimeError):
    """The client is not open (use `async with PixVerseClient(...)`), or was closed while a call waited."""


class BudgetUnavailableError(PixVerseError, ConnectionError):
    """A shared budget (`pixverse_async.redis.RedisBudget`) cannot reach its store: no slot, no submission."""


class TaskFailedError(PixVerseError):
    """The task ended with TASK_STATUS_FAILED, or a poll of it answered 500 `TASK_FAILED`; `reason` is the
    server's explanation."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"task {task_id} failed: {reason or 'no reason given'}")
        self.task_id = task_id
        self.reason = reason


class TaskTimeoutError(PixVerseError, TimeoutError):
    """The task was still running when the caller's timeout ran out. It keeps running (and is paid for)."""

    def __init__(self, task_id: str | None, timeout: float) -> None:
        subject = f"task {task_id}" if task_id else "job"
        super().__init__(f"{subject} did not finish within {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout


class DownloadError(PixVerseError):
    """A video could not be downloaded: `except DownloadError` catches every download failure."""


class VideoHostError(DownloadError):
    """The video host answered 429 or 5xx (after the client's retries); `retry_after` if it said."""

    def __init__(self, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(f"the video host answered {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after


class DownloadConnectionError(DownloadError, ConnectionError):
    """The download could not connect, or broke off (reset, cut short), after the client's retries."""


class DownloadTimeoutError(DownloadConnectionError, TimeoutError):
    """The video host went silent for longer than `Timeouts.download_read` (or `connect`)."""


class VideoExpiredError(DownloadError):
    """The video's signed link has expired; `get_task()` on its task returns a fresh link."""

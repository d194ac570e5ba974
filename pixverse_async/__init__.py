"""An asyncio-native client for PixVerse V4.5 image-to-video on async job APIs.

async with PixVerseClient() as client:
    task = await client.submit(ImageToVideo("a cat surfing", Path("cat.png")))
    result = await client.wait(task)
    await client.download(result, "cat.mp4")
"""

from ._budget import RateLimits
from ._bulk import AsCompleted, BatchCounts, EventKind, JobEvent
from ._client import DEFAULT_BASE_URL, DEFAULT_MAX_CONCURRENCY, PixVerseClient
from ._clock import Clock, SystemClock
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetUnavailableError,
    ClientClosedError,
    ConfigurationError,
    ContentPolicyError,
    DownloadConnectionError,
    DownloadError,
    DownloadTimeoutError,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PixVerseError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskTimeoutError,
    VideoExpiredError,
    VideoHostError,
)
from ._models import (
    AspectRatio,
    ImageToVideo,
    JobResult,
    Resolution,
    Style,
    Task,
    TaskResult,
    TaskStatus,
    TextToVideo,
    UncertainSubmission,
    Video,
    VideoRequest,
)
from ._poller import PollPolicy
from ._retry import RetryPolicy
from ._transport import Timeouts
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONCURRENCY",
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AsCompleted",
    "AspectRatio",
    "AuthenticationError",
    "BadRequestError",
    "BatchCounts",
    "BudgetUnavailableError",
    "ClientClosedError",
    "Clock",
    "ConfigurationError",
    "ContentPolicyError",
    "DownloadConnectionError",
    "DownloadError",
    "DownloadTimeoutError",
    "EventKind",
    "ImageToVideo",
    "InsufficientBalanceError",
    "InvalidRequestError",
    "JobEvent",
    "JobResult",
    "NotFoundError",
    "PermissionDeniedError",
    "PixVerseClient",
    "PixVerseError",
    "PollPolicy",
    "RateLimitError",
    "RateLimits",
    "Resolution",
    "RetryPolicy",
    "ServerError",
    "Style",
    "SubmissionUncertainError",
    "SystemClock",
    "Task",
    "TaskFailedError",
    "TaskResult",
    "TaskStatus",
    "TaskTimeoutError",
    "TextToVideo",
    "Timeouts",
    "UncertainSubmission",
    "Video",
    "VideoExpiredError",
    "VideoHostError",
    "VideoRequest",
    "__version__",
]

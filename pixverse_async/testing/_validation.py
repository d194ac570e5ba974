"""How the simulator checks a submission: the caller's key, the JSON body, the image.

In this order, the first problem answering (the router's call limits come between the key and the body: see
`pixverse_async.testing._rate_limits`):

1. `Authorization: Bearer <key>`: missing, not Bearer, or empty -> 400 `MISSING_API_KEY`; a key not in
   `api_keys` -> 403 `INVALID_API_KEY`.
2. The body: `Content-Type` other than `application/json`, invalid JSON, not an object, an unknown top-level
   key (only `extra` is allowed beyond the documented fields), a missing, wrong-typed or out-of-range field ->
   400 `INVALID_REQUEST_BODY`. The real API's answer to fields it does not document is not documented;
   `accept_fields` names top-level fields to accept anyway (kept, like every field but `image`, in
   `SimTask.request`), for tests of `ImageToVideo(extra_body=...)`. `null` is not accepted for any field: omit
   the field instead. `prompt` must be a non-blank string of at most 2048 characters; `resolution` one of
   360p/540p/720p/1080p (default 540p; 1080p is refused with `fast_mode: true`); `seed` an integer (not a
   boolean) in 0..2147483647; `style` one of anime/3d_animation/clay/comic/cyberpunk; `extra` an object.
   `extra.webhook`, if present, must be an object whose `url` is a string starting with `http://` or
   `https://` (in any case) and naming a host, with a valid port if any; other keys of `extra` and of
   `extra.webhook` are ignored.
3. `image`: an `http://` or `https://` URL is accepted without fetching it. Anything else is raw base64 or a
   `data:image/(png|jpeg|jpg);base64,` URI (another `data:image/...` type answers `INVALID_IMAGE_FORMAT`);
   base64 that does not decode strictly (standard alphabet, padded, no line breaks) -> 400
   `INVALID_REQUEST_BODY`. The decoded bytes: over 10 MiB -> `IMAGE_FILE_EXCEEDS_MAX_SIZE`; no PNG or JPEG
   whose size can be read -> `INVALID_IMAGE_FORMAT` (read by the simulator's own reader, `_image_check`, not
   the client's, so that a bug in the client's is not shared); a side under 300 px -> `INVALID_IMAGE_SIZE`;
   an aspect ratio beyond 1:2.5 or 2.5:1 -> `IMAGE_EXCEEDS_MAX_RESOLUTION`.

A text-to-video submission (`POST /v3/async/pixverse-v4.5-t2v`, `check_text_body`) is checked the same way,
except that it has no `image` (an `image` field is an unknown field there) and takes `aspect_ratio`: one of
16:9, 4:3, 1:1, 3:4, 9:16 (default 16:9).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from ._image_check import NotAnImage, read_image_size

MAX_PROMPT_CHARS: Final = 2048
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
MIN_IMAGE_SIDE: Final = 300
MAX_SEED: Final = 2_147_483_647
RESOLUTIONS: Final = frozenset({"360p", "540p", "720p", "1080p"})
FAST_MODE_RESOLUTIONS: Final = frozenset({"360p", "540p", "720p"})
STYLES: Final = frozenset({"anime", "3d_animation", "clay", "comic", "cyberpunk"})
_KNOWN_FIELDS: Final = frozenset(
    {"prompt", "image", "resolution", "negative_prompt", "fast_mode", "style", "seed", "extra"}
)
_KNOWN_TEXT_FIELDS: Final = (_KNOWN_FIELDS - {"image"}) | {"aspect_ratio"}
ASPECT_RATIOS: Final = frozenset({"16:9", "4:3", "1:1", "3:4", "9:16"})
_DATA_URI_PREFIXES: Final = tuple(f"data:image/{kind};base64," for kind in ("png", "jpeg", "jpg"))


@attrs.frozen
class SubmittedImage:
    """What a task's `image` field held, kept instead of the (possibly megabytes of) base64 text."""

    encoding: Literal["url", "base64", "data_uri", "none"]  # "none": a text-to-video task (`NO_IMAGE`)
    url: str | None = None  # only for `encoding="url"`
    format: str | None = None  # 'jpeg' | 'png', from the image checker; None for URLs
    width: int | None = None
    height: int | None = None
    byte_size: int | None = None  # decoded size


#: The `image` of a text-to-video task, which has none.
NO_IMAGE: Final = SubmittedImage(encoding="none")


class BadRequest(Exception):
    """A 400 answer found while checking a submission."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _check_string(body: Mapping[str, Any], field: str, *, max_chars: int | None = None) -> str | None:
    if field not in body:
        return None
    value = body[field]
    if not isinstance(value, str):
        raise BadRequest("INVALID_REQUEST_BODY", f"{field} must be a string")
    if max_chars is not None and len(value) > max_chars:
        raise BadRequest("INVALID_REQUEST_BODY", f"{field} must be at most {max_chars} characters")
    return value


def check_body(body: Any, accepted: frozenset[str] = frozenset()) -> None:
    """Raise `BadRequest` if the JSON body breaks a documented rule (the image bytes are checked later);
    top-level fields in `accepted` are let through unchecked."""
    _check_fields(body, _KNOWN_FIELDS | accepted)
    image = _check_string(body, "image")
    if not image:
        raise BadRequest("INVALID_REQUEST_BODY", "image is required")
    _check_shared_fields(body)


def check_text_body(body: Any, accepted: frozenset[str] = frozenset()) -> None:
    """`check_body` for a text-to-video submission: no `image`, an `aspect_ratio`."""
    _check_fields(body, _KNOWN_TEXT_FIELDS | accepted)
    aspect_ratio = _check_string(body, "aspect_ratio")
    if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
        raise BadRequest("INVALID_REQUEST_BODY", f"aspect_ratio must be one of {', '.join(sorted(ASPECT_RATIOS))}")
    _check_shared_fields(body)


def _check_fields(body: Any, known: frozenset[str]) -> None:
    if not isinstance(body, dict):
        raise BadRequest("INVALID_REQUEST_BODY", "request body must be a JSON object")
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest("INVALID_REQUEST_BODY", f"unknown field(s): {', '.join(unknown)}")
    prompt = _check_string(body, "prompt", max_chars=MAX_PROMPT_CHARS)
    if prompt is None or not prompt.strip():
        raise BadRequest("INVALID_REQUEST_BODY", "prompt is required")


def _check_shared_fields(body: dict[str, Any]) -> None:
    """The fields both endpoints take, past the prompt."""
    _check_string(body, "negative_prompt", max_chars=MAX_PROMPT_CHARS)
    fast_mode = body.get("fast_mode", False)
    if not isinstance(fast_mode, bool):
        raise BadRequest("INVALID_REQUEST_BODY", "fast_mode must be a boolean")
    resolution = _check_string(body, "resolution")
    if resolution is not None:
        allowed = FAST_MODE_RESOLUTIONS if fast_mode else RESOLUTIONS
        if resolution not in allowed:
            raise BadRequest(
                "INVALID_REQUEST_BODY",
                f"resolution must be one of {', '.join(sorted(allowed))}"
                + (" when fast_mode is true" if fast_mode else ""),
            )
    style = _check_string(body, "style")
    if style is not None and style not in STYLES:
        raise BadRequest("INVALID_REQUEST_BODY", f"style must be one of {', '.join(sorted(STYLES))}")
    if "seed" in body:
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise BadRequest("INVALID_REQUEST_BODY", f"seed must be an integer in 0..{MAX_SEED}")
    if "extra" in body:
        extra = body["extra"]
        if not isinstance(extra, dict):
            raise BadRequest("INVALID_REQUEST_BODY", "extra must be an object")
        if "webhook" in extra:
            _check_webhook(extra["webhook"])


def _check_webhook(webhook: Any) -> None:
    if not isinstance(webhook, dict):
        raise BadRequest("INVALID_REQUEST_BODY", "extra.webhook must be an object")
    url = webhook.get("url")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):  # schemes ignore case
        raise BadRequest("INVALID_REQUEST_BODY", "extra.webhook.url must be an http:// or https:// URL")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a port that is not a number in 0..65535
    except ValueError:  # that, or a malformed IPv6 literal
        host = None
    if not host:
        raise BadRequest("INVALID_REQUEST_BODY", "extra.webhook.url must name a host")


def webhook_url(body: Mapping[str, Any]) -> str | None:
    """The webhook URL of a checked submission, if it has one."""
    webhook = body.get("extra", {}).get("webhook")
    return None if webhook is None else str(webhook["url"])


def check_image(image: str) -> SubmittedImage:
    """Decode and check an `image` field as the API does; raise `BadRequest` where it would refuse."""
    if image.startswith(("http://", "https://")):
        return SubmittedImage(encoding="url", url=image)
    encoding: Literal["base64", "data_uri"] = "base64"
    encoded = image
    if image.startswith("data:"):
        prefix = next((p for p in _DATA_URI_PREFIXES if image.startswith(p)), None)
        if prefix is None:
            if image.startswith("data:image/") and ";base64," in image:
                raise BadRequest("INVALID_IMAGE_FORMAT", "image must be a JPEG or PNG")
            raise BadRequest("INVALID_REQUEST_BODY", "image data URI must be data:image/<type>;base64,...")
        encoding, encoded = "data_uri", image[len(prefix) :]
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("INVALID_REQUEST_BODY", "image is neither a URL nor valid base64") from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise BadRequest("IMAGE_FILE_EXCEEDS_MAX_SIZE", f"image is {len(data)} bytes; at most 10 MB")
    try:
        size = read_image_size(data)
    except NotAnImage as exc:
        raise BadRequest("INVALID_IMAGE_FORMAT", f"image must be a JPEG or PNG: {exc}") from exc
    width, height = size.width, size.height
    if min(width, height) < MIN_IMAGE_SIDE:
        raise BadRequest("INVALID_IMAGE_SIZE", f"image is {width}x{height} px; both sides must be at least 300 px")
    if 2 * max(width, height) > 5 * min(width, height):  # whole numbers: exactly 2.5:1 passes
        raise BadRequest("IMAGE_EXCEEDS_MAX_RESOLUTION", f"image is {width}x{height} px; aspect ratio 1:2.5 to 2.5:1")
    return SubmittedImage(encoding=encoding, format=size.format, width=width, height=height, byte_size=len(data))


def bearer_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None

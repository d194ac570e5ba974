"""The API key a client is given, and a session of the caller's: checked before either is used.

Problems are returned as text, never raised from here with the key in a local: the client raises them as
`ConfigurationError`s, whose tracebacks then hold no frame that saw a header's value.
"""

from __future__ import annotations

import aiohttp

from ._transport import Secret
from ._validation import api_key_problem


def wrap_api_key(value: object) -> Secret | str:
    """The key, wrapped; or, when it cannot be used, what is wrong with it (never the key itself)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "no API key: pass api_key=... or set PIXVERSE_API_KEY"
    if not isinstance(value, str):
        return f"must be a str, not {type(value).__name__}"
    # Surrounding whitespace is a copy-and-paste or file-reading accident (a trailing newline), not the key.
    problem = api_key_problem(value.strip())
    return Secret(value.strip()) if problem is None else problem


def session_problem(session: aiohttp.ClientSession, key: Secret) -> str | None:
    """Why a session of the caller's cannot be used, or None. It sends its defaults with every request,
    downloads included: none of them may carry credentials, or the video host (any host the API's answers
    name) would get them. Returned, not raised, so that no frame of a traceback holds a header's value."""
    if session.auth is not None:
        return "it has a default auth=...: it would be sent to the video host too; pass a session without it"
    for name, value in session.headers.items():
        if name.lower() in ("authorization", "proxy-authorization") or key.reveal() in value:
            return (
                f"its default header {name!r} carries credentials: the session sends it with every request, "
                "downloads from the video host included; pass a session without it (the client sends the key "
                "itself, to the API only)"
            )
    return None

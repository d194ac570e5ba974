"""Using one `PixVerseClient` from a web service: ASGI lifespan helpers and webhook receivers.

One client per app (per worker process), opened and closed with the app (Starlette or FastAPI)::

    app = FastAPI(lifespan=pixverse_lifespan(webhook_url="https://my.app/webhooks/pixverse"))
    app.add_api_route("/webhooks/pixverse", starlette_webhook_endpoint(), methods=["POST"])

    @app.post("/generations")
    async def start(request: Request) -> dict[str, str]:
        task = await client_from(request).submit(...)
        return {"task_id": task.task_id}

For aiohttp: `app.router.add_post("/webhooks/pixverse", aiohttp_webhook_handler(client))`.

Under several worker processes (`uvicorn --workers 4`), each process opens its own client; give them one
budget with `pixverse_lifespan(make_budget=lambda: RedisBudget(url))`, so that `max_concurrency` and what is
learnt of the account's limits are the whole service's (see `pixverse_async.redis`).

Starlette is only needed for the Starlette helpers; it is imported when they are called.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._budget import SharedBudget
from ._client import PixVerseClient
from ._json_reader import MAX_WEBHOOK_BYTES as _MAX_WEBHOOK_BYTES

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "LIFESPAN_STATE_KEY",
    "aiohttp_webhook_handler",
    "client_from",
    "pixverse_lifespan",
    "starlette_webhook_endpoint",
]

LIFESPAN_STATE_KEY = "pixverse"

_Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]]


def pixverse_lifespan(*, make_budget: Callable[[], SharedBudget] | None = None, **client_options: Any) -> _Lifespan:
    """An ASGI lifespan (for `Starlette(lifespan=...)` / `FastAPI(lifespan=...)`) that opens one client for
    the app's life and closes it on shutdown. `client_options` go to `PixVerseClient`; `make_budget`, if
    given, makes each client's shared budget (one per client: `lambda: RedisBudget(url)`). Handlers get
    the client with `client_from(request)`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        budget = make_budget() if make_budget is not None else None
        async with PixVerseClient(**client_options, budget=budget) as client:
            yield {LIFESPAN_STATE_KEY: client}

    return lifespan


def client_from(request: Request) -> PixVerseClient:
    """The app's client, from the lifespan state (also usable as a FastAPI dependency)."""
    client = getattr(request.state, LIFESPAN_STATE_KEY, None)
    if not isinstance(client, PixVerseClient):
        raise RuntimeError("no PixVerseClient in the app's lifespan state: use lifespan=pixverse_lifespan(...)")
    return client


def starlette_webhook_endpoint(
    client: PixVerseClient | Callable[[Request], PixVerseClient] = client_from,
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette/FastAPI endpoint receiving the API's webhooks (mount it with POST)."""
    from starlette.requests import Request
    from starlette.responses import Response

    async def endpoint(request: Request) -> Response:
        chosen = client if isinstance(client, PixVerseClient) else client(request)
        body = await _read_at_most(request.stream(), _MAX_WEBHOOK_BYTES)
        if body is None:
            return Response(status_code=413)
        return Response(status_code=await chosen.handle_webhook(body, url=str(request.url)))

    # The annotations are strings (postponed evaluation) naming imports local to this function: FastAPI,
    # which reads them to decide what to inject, needs the real classes.
    endpoint.__annotations__ = {"request": Request, "return": Response}
    return endpoint


def aiohttp_webhook_handler(client: PixVerseClient) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp.web handler receiving the API's webhooks (route it with POST)."""

    async def handler(request: web.Request) -> web.Response:
        body = await _read_at_most(request.content.iter_any(), _MAX_WEBHOOK_BYTES)
        if body is None:
            return web.Response(status=413)
        return web.Response(status=await client.handle_webhook(body, url=str(request.rel_url)))

    return handler


async def _read_at_most(chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """A request's body, read until it is over `limit` bytes (then None: nothing more is read). Anyone can
    post to a webhook endpoint: no body it sends is kept whole in memory past the limit."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)

"""An example web service: start PixVerse generations from an uploaded frame, read their status, and stream
their progress to the browser with Server-Sent Events. One `PixVerseClient` serves the whole app, opened and
closed with the ASGI lifespan; with `PIXVERSE_WEBHOOK_URL` set, results arrive by webhook instead of polls.

Under several worker processes, give them one budget through Redis (`pip install 'pixverse-async[redis]'`):
with `PIXVERSE_REDIS_URL` set, `PIXVERSE_MAX_CONCURRENCY` (default 64) bounds the tasks of all workers together
and what one worker learns of the account's limits all know. `PIXVERSE_TIME_SCALE` is the simulator's
`--time-scale`, when the API is the simulator.

Run it (against the simulator, in a second terminal: `pixverse-async simulate --port 8080`):

    PIXVERSE_API_KEY=sk-test PIXVERSE_BASE_URL=http://127.0.0.1:8080 uvicorn examples.fastapi_service:app

    curl -X POST --data-binary @frame.png -H 'Content-Type: image/png' \\
        'http://127.0.0.1:8000/generations?prompt=a+fox+in+the+snow'
    curl -N http://127.0.0.1:8000/generations/<task_id>/events

Several workers sharing one budget (a generation started on one can be read and streamed from any):

    PIXVERSE_REDIS_URL=redis://127.0.0.1:6379/0 PIXVERSE_MAX_CONCURRENCY=20 PIXVERSE_API_KEY=sk-test \\
        PIXVERSE_BASE_URL=http://127.0.0.1:8080 uvicorn examples.fastapi_service:app --workers 4
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from pixverse_async import ImageToVideo, InvalidRequestError, PixVerseError, TaskResult
from pixverse_async.testing import ScaledClock
from pixverse_async.web import client_from, pixverse_lifespan, starlette_webhook_endpoint


def create_app(**client_options: Any) -> FastAPI:
    """The app; `client_options` go to `PixVerseClient` (key and base URL default to the environment), and
    `redis_url` (default `$PIXVERSE_REDIS_URL`) to each worker's `RedisBudget`."""
    client_options.setdefault("webhook_url", os.environ.get("PIXVERSE_WEBHOOK_URL") or None)
    if os.environ.get("PIXVERSE_MAX_CONCURRENCY"):
        client_options.setdefault("max_concurrency", int(os.environ["PIXVERSE_MAX_CONCURRENCY"]))
    if os.environ.get("PIXVERSE_TIME_SCALE"):
        client_options.setdefault("clock", ScaledClock(float(os.environ["PIXVERSE_TIME_SCALE"])))
    redis_url = client_options.pop("redis_url", None) or os.environ.get("PIXVERSE_REDIS_URL")
    make_budget = None
    if redis_url:
        from pixverse_async.redis import RedisBudget

        def make_budget() -> RedisBudget:
            return RedisBudget(redis_url)

    app = FastAPI(title="PixVerse generations", lifespan=pixverse_lifespan(make_budget=make_budget, **client_options))
    app.add_api_route("/webhooks/pixverse", starlette_webhook_endpoint(), methods=["POST"])

    @app.post("/generations", status_code=201)
    async def start_generation(request: Request, prompt: str, resolution: str = "540p") -> dict[str, str]:
        """The request body is the first frame (PNG or JPEG bytes)."""
        try:
            job = ImageToVideo(prompt, await request.body(), resolution=resolution)  # type: ignore[arg-type]
        except InvalidRequestError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        try:
            task = await client_from(request).submit(job)
        except PixVerseError as error:
            raise HTTPException(status_code=502, detail=str(error)) from None
        return {"task_id": task.task_id, "events": f"/generations/{task.task_id}/events"}

    @app.get("/generations/{task_id}")
    async def read_generation(request: Request, task_id: str) -> dict[str, Any]:
        try:
            return _describe(await client_from(request).get_task(task_id))
        except PixVerseError as error:
            raise HTTPException(status_code=404 if "NOT_FOUND" in str(error) else 502, detail=str(error)) from None

    @app.get("/generations/{task_id}/events")
    async def stream_progress(request: Request, task_id: str) -> StreamingResponse:
        client = client_from(request)

        async def events() -> AsyncIterator[str]:
            try:
                async for snapshot in client.watch(task_id, timeout=3600):
                    kind = "result" if snapshot.is_terminal else "progress"
                    yield f"event: {kind}\ndata: {json.dumps(_describe(snapshot))}\n\n"
            except PixVerseError as error:
                yield f"event: error\ndata: {json.dumps({'task_id': task_id, 'error': str(error)})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _describe(result: TaskResult) -> dict[str, Any]:
    return {
        "task_id": result.task_id,
        "status": result.status.name,
        "progress_percent": result.progress_percent,
        "eta": result.eta,
        "reason": result.reason,
        "videos": [{"url": video.url, "expires_at": str(video.expires_at)} for video in result.videos],
    }


app = create_app()

"""The client against the simulator over real HTTP: submit, poll, wait, download, and the money rules."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from pixverse_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    DownloadConnectionError,
    DownloadError,
    ImageToVideo,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PixVerseClient,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    Task,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    Timeouts,
    VideoExpiredError,
)
from pixverse_async.testing import Fault, InstantClock, Simulator, TaskPlan
from tests.helpers import KEY, SCALE, client_for, eventually, live_tasks
from tests.images import jpeg, png

pytestmark = pytest.mark.anyio
URL_IMAGE = "https://example.com/frame.png"


def plan_from_prompt(body: object) -> TaskPlan | None:
    """Prompts like 'fail after 5' or 'run 40' fix a task's fate."""
    prompt = str(body["prompt"])  # type: ignore[index]
    words = prompt.split()
    if words[0] == "fail":
        return TaskPlan(duration=float(words[-1]), fail_reason="content moderation")
    if words[0] == "run":
        return TaskPlan(duration=float(words[-1]))
    return None


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, duration=5.0, seed=7, plan=plan_from_prompt) as simulator:
        yield simulator


async def test_submit_wait_download_end_to_end(sim: Simulator, tmp_path: Path) -> None:
    async with client_for(sim) as client:
        task = await client.submit(ImageToVideo("run 5", png(400, 300)))
        assert task.task_id in sim.tasks and task.request is not None
        result = await client.wait(task)
        assert result.status is TaskStatus.SUCCEED and result.task_id == task.task_id
        assert result.progress_percent == 100 and len(result.videos) == 1
        video_file = await client.download(result, tmp_path / "out.mp4")
    assert video_file.read_bytes() == sim.video_bytes(task.task_id)
    assert sim.counters.tasks_created == 1
    assert sim.counters.key_leaks_to_video_host == 0
    assert sim.counters.polls_after_terminal == 0
    assert sim.tasks[task.task_id].image.encoding == "base64"
    assert list(tmp_path.iterdir()) == [video_file]


async def test_images_are_sent_as_base64_data_uri_or_url(sim: Simulator, tmp_path: Path) -> None:
    frame = tmp_path / "frame.jpg"
    frame.write_bytes(jpeg(640, 480))
    async with client_for(sim) as plain, client_for(sim, image_as_data_uri=True) as data_uri:
        from_path = await plain.submit(ImageToVideo("p", frame))
        from_bytes_as_uri = await data_uri.submit(ImageToVideo("p", png(400, 300)))
        from_url = await plain.submit(ImageToVideo("p", URL_IMAGE, resolution="1080p", seed=5, style="clay"))
    assert sim.tasks[from_path.task_id].image.encoding == "base64"
    assert sim.tasks[from_path.task_id].image.format == "jpeg"
    assert sim.tasks[from_bytes_as_uri.task_id].image.encoding == "data_uri"
    assert sim.tasks[from_url.task_id].image.url == URL_IMAGE
    assert sim.tasks[from_url.task_id].request["resolution"] == "1080p"
    assert sim.tasks[from_url.task_id].seed == 5


async def test_a_file_changed_after_the_request_was_built_is_checked_again(sim: Simulator, tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300))
    request = ImageToVideo("p", frame)
    frame.write_bytes(png(100, 100))
    async with client_for(sim) as client:
        with pytest.raises(InvalidRequestError, match="100x100"):
            await client.submit(request)
    assert sim.counters.submit_requests == 0


async def test_get_task_reports_progress_and_eta(sim: Simulator) -> None:
    async with client_for(sim) as client:
        task = await client.submit(ImageToVideo("run 100", URL_IMAGE))
        sim.advance(50)
        result = await client.get_task(task.task_id)
    assert result.status is TaskStatus.PROCESSING
    assert result.eta is not None and 45 <= result.eta <= 51
    assert result.progress_percent is not None and 40 <= result.progress_percent <= 60
    assert result.videos == ()


async def test_wait_raises_task_failed_with_the_servers_reason(sim: Simulator) -> None:
    async with client_for(sim) as client:
        task = await client.submit(ImageToVideo("fail after 3", URL_IMAGE))
        with pytest.raises(TaskFailedError) as caught:
            await client.wait(task)
    assert caught.value.task_id == task.task_id
    assert caught.value.reason == "content moderation"


async def test_wait_timeout_raises_and_the_task_keeps_running(sim: Simulator) -> None:
    async with client_for(sim) as client:
        task = await client.submit(ImageToVideo("run 1000", URL_IMAGE))
        with pytest.raises(TaskTimeoutError) as caught:
            await client.wait(task, timeout=20)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.task_id == task.task_id
        assert sim.task_status(task.task_id) != "TASK_STATUS_SUCCEED"
        with pytest.raises(InvalidRequestError, match="timeout"):
            await client.wait(task, timeout=-1)


async def test_polling_follows_the_eta_instead_of_a_tight_loop(sim: Simulator) -> None:
    async with client_for(sim) as client:
        task = await client.submit(ImageToVideo("run 40", URL_IMAGE))
        await client.wait(task)
    # A fixed 1-second loop would poll 40 times and a 5-second loop 8 times.
    assert sim.counters.polls_by_task[task.task_id] <= 6
    assert sim.counters.polls_after_terminal == 0


async def test_wait_on_a_task_id_from_elsewhere_and_after_it_finished(sim: Simulator) -> None:
    async with client_for(sim) as submitter:
        task = await submitter.submit(ImageToVideo("run 2", URL_IMAGE))
    async with client_for(sim) as client:
        first = await client.wait(task.task_id)
        polls = sim.counters.poll_requests
        again = await client.get_task(first)
    assert first.status is again.status is TaskStatus.SUCCEED
    assert sim.counters.poll_requests == polls + 1


async def test_unknown_task_is_not_found(sim: Simulator) -> None:
    async with client_for(sim) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.wait("no-such-task")
    assert caught.value.reason == "TASK_NOT_FOUND" and caught.value.status_code == 404


async def test_polls_survive_transient_faults(sim: Simulator) -> None:
    for kind in ("server_error", "reset", "html_error", "empty_error", "truncated_json", "rate_limit"):
        sim.inject(Fault("poll", kind))
    async with client_for(sim, retry=RetryPolicy(max_attempts=8, max_backoff=2.0)) as client:
        task = await client.submit(ImageToVideo("run 1", URL_IMAGE))
        sim.advance(2)
        assert (await client.wait(task)).status is TaskStatus.SUCCEED
    assert sum(sim.counters.faults_applied.values()) == 6


async def finished_task(client: PixVerseClient, sim: Simulator) -> Task:
    """A task that has ended, so that the client's poller leaves it alone."""
    task = await client.submit(ImageToVideo("run 1", URL_IMAGE))
    sim.advance(2)
    await client.wait(task)
    return task


async def test_a_stalled_poll_times_out_at_the_read_limit_and_is_retried(sim: Simulator) -> None:
    read = 0.2
    async with client_for(sim, timeouts=Timeouts(read=read)) as client:
        task = await finished_task(client, sim)
        polls = sim.counters.polls_by_task[task.task_id]
        sim.inject(Fault("poll", "slow", delay=60_000))  # a minute of real time: only the read limit ends it
        started = anyio.current_time()
        result = await client.get_task(task)
        waited = anyio.current_time() - started
    assert result.status is TaskStatus.SUCCEED
    assert sim.counters.polls_by_task[task.task_id] == polls + 2
    assert read <= waited < read * 5  # never early; late by at most an eighth, plus this machine's noise


@pytest.mark.parametrize("request_kind", ["poll", "submit"])
async def test_a_request_cancelled_from_outside_is_cancelled_not_timed_out(sim: Simulator, request_kind: str) -> None:
    async with client_for(sim, timeouts=Timeouts(read=0.2)) as client:
        task = await finished_task(client, sim)
        sim.inject(Fault(request_kind, "slow", delay=60_000))  # type: ignore[arg-type]
        with anyio.move_on_after(0.05) as scope:
            if request_kind == "poll":
                await client.get_task(task)
            else:
                await client.submit(ImageToVideo("cancelled by the caller", URL_IMAGE))
        assert scope.cancelled_caught
        # Past the cancelled request's deadline: its watchdog entry is gone and cancels nothing else.
        await anyio.sleep(0.3)
        assert (await client.get_task(task)).task_id == task.task_id
    assert sim.counters.faults_applied[f"{request_kind}:slow"] == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_poll_that_keeps_failing_gives_up_after_max_attempts(sim: Simulator) -> None:
    sim.inject(Fault("poll", "server_error", times=100))
    async with client_for(sim) as client:
        task = await client.submit(ImageToVideo("run 1", URL_IMAGE))
        with pytest.raises(ServerError) as caught:
            await client.wait(task)
    assert caught.value.reason == "GET_RESULT_FAILED"
    assert sim.counters.polls_by_task[task.task_id] == 4


# -- submissions: never pay twice, never lose a paid task -------------------------------------------------


async def test_rate_limited_submission_is_retried_after_retry_after(sim: Simulator) -> None:
    sim.inject(Fault("submit", "rate_limit", retry_after=3))
    sim.inject(Fault("submit", "rate_limit"))
    async with client_for(sim) as client:
        task = await client.submit(ImageToVideo("p", URL_IMAGE))
    assert sim.counters.submit_requests == 3
    assert sim.counters.tasks_created == 1 and task.task_id in sim.tasks


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        (Fault("submit", "reset"), APIConnectionError),
        (Fault("submit", "server_error"), ServerError),
        (Fault("submit", "truncated_json"), Exception),
        (Fault("submit", "slow", delay=10_000), APITimeoutError),
    ],
    ids=["reset-after-create", "500-after-create", "truncated-200", "read-timeout"],
)
async def test_lost_answer_raises_uncertain_and_never_retries(
    sim: Simulator, fault: Fault, cause: type[Exception]
) -> None:
    sim.inject(fault)
    request = ImageToVideo("lost answer", URL_IMAGE)
    async with client_for(sim, timeouts=Timeouts(read=0.2)) as client:
        with pytest.raises(SubmissionUncertainError) as caught:
            await client.submit(request)
    assert caught.value.request is request
    assert isinstance(caught.value.__cause__, cause)
    assert sim.counters.submit_requests == 1
    assert sim.counters.tasks_created_by_prompt["lost answer"] == 1


@pytest.mark.parametrize("canceller", ["anyio", "asyncio"])
async def test_a_submission_left_on_the_wire_keeps_its_paid_task(
    sim: Simulator, canceller: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim.inject(Fault("submit", "slow", delay=300))  # the task is created, then the answer takes 0.3 s
    request = ImageToVideo("left mid-request", URL_IMAGE)
    async with client_for(sim) as client:
        started = anyio.current_time()
        if canceller == "anyio":
            with anyio.move_on_after(0.05):
                await client.submit(request)
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.submit(request), 0.05)
        assert anyio.current_time() - started < 0.25  # the caller left at once, not with the answer
        assert client.abandoned_tasks == []
        await eventually(lambda: bool(client.abandoned_tasks))
        [task] = client.abandoned_tasks
        assert task.request is request and task.task_id in sim.tasks
        assert task.task_id in caplog.text
        sim.advance(10)
        assert (await client.wait(task)).status is TaskStatus.SUCCEED
    assert sim.counters.submit_requests == 1


@pytest.mark.parametrize("left_while", ["waiting for a slot", "backing off after a 429"])
async def test_a_submission_left_before_it_was_sent_sends_nothing(sim: Simulator, left_while: str) -> None:
    async with client_for(sim, max_concurrency=1) as client:
        if left_while == "waiting for a slot":
            running = await client.submit(ImageToVideo("run 100", URL_IMAGE))
        else:
            sim.inject(Fault("submit", "rate_limit", retry_after=200))  # 0.2 s of real time
        background = live_tasks(but_polls=True)
        submitted = sim.counters.submit_requests
        with anyio.move_on_after(0.05) as scope:
            await client.submit(ImageToVideo("left", URL_IMAGE))
        assert scope.cancelled_caught
        # Once everything has run as far as it can, nothing of the left call lives on to send it later (no
        # real sleep past the backoff needed).
        await anyio.wait_all_tasks_blocked()
        assert live_tasks(but_polls=True) == background
        assert sim.counters.submit_requests == submitted + (left_while == "backing off after a 429")
        assert client.abandoned_tasks == []
        if left_while == "waiting for a slot":
            sim.advance(200)
            await client.wait(running)
        # The slot the left call held or waited for is free again.
        assert (await client.submit(ImageToVideo("run 1", URL_IMAGE))).task_id in sim.tasks
    assert sim.counters.tasks_created_by_prompt["left"] == 0
    assert sim.counters.submit_requests == 2


async def test_a_submission_cut_off_by_closing_the_client_raises_client_closed(sim: Simulator) -> None:
    sim.inject(Fault("submit", "rate_limit", retry_after=10_000))  # it is to back off for 10 s of real time

    async def submit(client: PixVerseClient) -> None:
        with pytest.raises(ClientClosedError):
            await client.submit(ImageToVideo("never sent again", URL_IMAGE))

    async with anyio.create_task_group() as group:
        async with client_for(sim, retry=RetryPolicy(max_retry_after=20_000)) as client:
            group.start_soon(submit, client)
            await eventually(lambda: sim.counters.submit_requests == 1)
        # The client is closed while that submit() backs off.
    assert sim.counters.submit_requests == 1 and sim.counters.tasks_created == 0


@pytest.mark.parametrize("kind", ["html_error", "empty_error"])
async def test_proxy_5xx_on_submit_is_uncertain_too(sim: Simulator, kind: str) -> None:
    sim.inject(Fault("submit", kind))  # type: ignore[arg-type]
    async with client_for(sim) as client:
        with pytest.raises(SubmissionUncertainError) as caught:
            await client.submit(ImageToVideo("p", URL_IMAGE))
    assert isinstance(caught.value.__cause__, ServerError)
    assert sim.counters.submit_requests == 1


async def test_connection_refused_is_retried_with_capped_backoff_then_raised() -> None:
    clock = InstantClock()
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=3.0, jitter=0.0)
    port = _closed_port()
    async with PixVerseClient(KEY, base_url=f"http://127.0.0.1:{port}", clock=clock, retry=policy) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.submit(ImageToVideo("p", URL_IMAGE))
    assert not isinstance(caught.value, SubmissionUncertainError)
    assert clock.sleeps == [1.0, 2.0, 3.0, 3.0]


async def test_auth_and_balance_errors_are_never_retried(sim: Simulator) -> None:
    async with client_for(sim, api_key="sk-wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.submit(ImageToVideo("p", URL_IMAGE))
    assert caught.value.reason == "INVALID_API_KEY" and "sk-wrong" not in str(caught.value)
    assert sim.counters.submit_requests == 1


async def test_insufficient_balance_is_not_retried() -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, balance=1) as sim, client_for(sim) as client:
        await client.submit(ImageToVideo("p", URL_IMAGE))
        with pytest.raises(InsufficientBalanceError) as caught:
            await client.submit(ImageToVideo("p", URL_IMAGE))
    assert caught.value.reason == "BILLING_BALANCE_NOT_ENOUGH" and caught.value.status_code == 400
    assert sim.counters.submit_requests == 2 and sim.counters.tasks_created == 1


async def test_persistent_rate_limit_gives_up_with_rate_limit_error(sim: Simulator) -> None:
    sim.inject(Fault("submit", "rate_limit", times=10))
    async with client_for(sim) as client:
        with pytest.raises(RateLimitError):
            await client.submit(ImageToVideo("p", URL_IMAGE))
    assert sim.counters.submit_requests == 4 and sim.counters.tasks_created == 0


# -- downloads ----------------------------------------------------------------------------------------------


async def test_expired_link_raises_and_polling_again_refreshes_it(sim: Simulator, tmp_path: Path) -> None:
    async with client_for(sim) as client:
        result = await client.wait(await client.submit(ImageToVideo("run 1", URL_IMAGE)))
        sim.advance(3601)
        with pytest.raises(VideoExpiredError, match="get_task"):
            await client.download(result, tmp_path / "v.mp4")
        assert list(tmp_path.iterdir()) == []
        fresh = await client.get_task(result)
        saved = await client.download(fresh.videos[0], tmp_path)
    assert saved == tmp_path / f"{result.task_id}.mp4"
    assert saved.read_bytes() == sim.video_bytes(result.task_id)
    assert sim.counters.key_leaks_to_video_host == 0


async def test_download_cut_short_is_retried_and_never_leaves_a_partial_file(sim: Simulator, tmp_path: Path) -> None:
    destination = tmp_path / "v.mp4"
    destination.write_bytes(b"previous video")
    async with client_for(sim) as client:
        result = await client.wait(await client.submit(ImageToVideo("run 1", URL_IMAGE)))
        sim.inject(Fault("video", "truncated_json", times=10))
        with pytest.raises(DownloadConnectionError) as caught:
            await client.download(result, destination)
        assert isinstance(caught.value, DownloadError) and isinstance(caught.value, ConnectionError)
        assert destination.read_bytes() == b"previous video"
        assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
        sim.clear_faults()
        sim.inject(Fault("video", "truncated_json"))
        await client.download(result, destination)
    assert destination.read_bytes() == sim.video_bytes(result.task_id)


# -- configuration ------------------------------------------------------------------------------------------


async def test_key_and_base_url_come_from_the_environment(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXVERSE_API_KEY", KEY)
    monkeypatch.setenv("PIXVERSE_BASE_URL", sim.base_url + "/")
    client = PixVerseClient()
    assert client.base_url == sim.base_url
    async with client:
        await client.submit(ImageToVideo("p", URL_IMAGE))
    assert sim.counters.tasks_created == 1
    monkeypatch.delenv("PIXVERSE_BASE_URL")
    assert PixVerseClient().base_url == "https://api.myrouter.ai"


def test_missing_key_and_bad_settings_fail_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXVERSE_API_KEY", raising=False)
    with pytest.raises(InvalidRequestError, match="PIXVERSE_API_KEY"):
        PixVerseClient()
    with pytest.raises(InvalidRequestError, match="base_url"):
        PixVerseClient(KEY, base_url="api.example.com")
    with pytest.raises(InvalidRequestError, match="max_concurrency"):
        PixVerseClient(KEY, max_concurrency=0)
    for bad in (0, -1.0, math.nan, math.inf, "60", True):
        with pytest.raises(InvalidRequestError, match="read"):
            Timeouts(read=bad)  # type: ignore[arg-type]
    assert Timeouts(connect=None, read=None, download_read=None).read is None


def test_repr_never_shows_the_key() -> None:
    client = PixVerseClient("sk-secret-123")
    assert "sk-secret-123" not in repr(client) and "sk-secret-123" not in str(vars(client))


async def test_calls_on_a_closed_client_raise_client_closed(sim: Simulator) -> None:
    client = client_for(sim)
    with pytest.raises(ClientClosedError, match="async with"):
        await client.submit(ImageToVideo("p", URL_IMAGE))
    async with client:
        pass
    with pytest.raises(ClientClosedError):
        await client.get_task("x")


async def test_closing_the_client_releases_waiters(sim: Simulator) -> None:
    errors: list[BaseException] = []

    async def waiter(client: PixVerseClient, task_id: str) -> None:
        try:
            await client.wait(task_id)
        except ClientClosedError as error:
            errors.append(error)

    async with anyio.create_task_group() as group, client_for(sim) as client:
        task = await client.submit(ImageToVideo("run 100000", URL_IMAGE))
        group.start_soon(waiter, client, task.task_id)
        await eventually(lambda: client.pending_tasks == 1 and sim.counters.poll_requests >= 1)
    assert len(errors) == 1 and task.task_id in str(errors[0])


async def test_a_given_session_is_used_and_left_open(sim: Simulator) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with client_for(sim, session=session) as client:
            await client.submit(ImageToVideo("p", URL_IMAGE))
        assert not session.closed
    assert sim.counters.tasks_created == 1

"""Proxies and certificates from the environment: the API calls and the video downloads go through a real
proxy on loopback; an https target is reached by CONNECT, so the proxy never sees the key."""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest
import trustme

from pixverse_async import APIConnectionError, ConfigurationError, ImageToVideo, PixVerseClient, TextToVideo
from pixverse_async.testing import ScaledClock, Simulator
from tests.helpers import KEY, SCALE
from tests.http_proxy import http_proxy
from tests.images import png

pytestmark = pytest.mark.anyio
SECRET_KEY = "sk-live-proxy-must-never-see-this"
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A test CA, a server context for 127.0.0.1 signed by it, and the CA's certificate file."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return server_context, ca_file


async def run_one_job_each_kind(client: PixVerseClient, out: Path) -> None:
    for request in (TextToVideo("a lighthouse"), ImageToVideo("a cat", png(400, 300))):
        result = await client.wait(await client.submit(request))
        await client.download(result, out)


async def test_http_targets_go_through_http_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, duration=5) as sim, http_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with PixVerseClient(KEY, base_url=sim.base_url, clock=ScaledClock(SCALE)) as client:
            await run_one_job_each_kind(client, tmp_path)
    lines = proxy.request_lines
    assert sum(line.startswith(f"POST {sim.base_url}/v3/async/pixverse-v4.5-t2v ") for line in lines) == 1
    assert sum(line.startswith(f"POST {sim.base_url}/v3/async/pixverse-v4.5-i2v ") for line in lines) == 1
    assert any(line.startswith(f"GET {sim.base_url}/v3/async/task-result?") for line in lines)
    assert sum(line.startswith(f"GET {sim.video_base_url}/") for line in lines) == 2  # both downloads
    assert sim.counters.videos_served == 2 and sim.counters.key_leaks_to_video_host == 0


async def test_https_targets_go_through_connect_and_the_proxy_never_sees_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tls: tuple[ssl.SSLContext, Path]
) -> None:
    server_context, ca_file = tls
    async with (
        Simulator(api_keys=(SECRET_KEY,), time_scale=SCALE, duration=5, ssl_context=server_context) as sim,
        http_proxy() as proxy,
    ):
        assert sim.base_url.startswith("https://")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the test CA, trusted only through the variable
        async with PixVerseClient(SECRET_KEY, base_url=sim.base_url, clock=ScaledClock(SCALE)) as client:
            await run_one_job_each_kind(client, tmp_path)
    api, video = sim.base_url.removeprefix("https://"), sim.video_base_url.removeprefix("https://")
    assert set(proxy.connects) == {api, video}
    assert all(line.startswith("CONNECT ") for line in proxy.request_lines)
    assert SECRET_KEY.encode() not in proxy.received and b"Bearer" not in proxy.received
    assert sim.counters.videos_served == 2 and sim.counters.tasks_created == 2


async def test_without_the_certificate_variable_the_test_ca_is_not_trusted(
    tls: tuple[ssl.SSLContext, Path],
) -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, ssl_context=tls[0]) as sim,
        PixVerseClient(KEY, base_url=sim.base_url, clock=ScaledClock(SCALE)) as client,
    ):
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.submit(TextToVideo("x"))
    assert sim.counters.tasks_created == 0


async def test_trust_env_false_no_proxy_and_a_given_session_go_direct(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, duration=5) as sim, http_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with PixVerseClient(KEY, base_url=sim.base_url, clock=ScaledClock(SCALE), trust_env=False) as client:
            await run_one_job_each_kind(client, tmp_path)
        async with (
            aiohttp.ClientSession() as session,
            PixVerseClient(KEY, base_url=sim.base_url, clock=ScaledClock(SCALE), session=session) as client,
        ):
            await run_one_job_each_kind(client, tmp_path)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with PixVerseClient(KEY, base_url=sim.base_url, clock=ScaledClock(SCALE)) as client:
            await run_one_job_each_kind(client, tmp_path)
    assert proxy.request_lines == []
    assert sim.counters.videos_served == 6


async def test_a_certificate_variable_naming_nothing_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        async with PixVerseClient(KEY, base_url="https://127.0.0.1:9"):
            pass
    async with PixVerseClient(KEY, base_url="https://127.0.0.1:9", trust_env=False):
        pass


async def test_the_cli_runs_unchanged_behind_a_proxy_given_only_by_https_proxy(
    tmp_path: Path, tls: tuple[ssl.SSLContext, Path]
) -> None:
    server_context, ca_file = tls
    manifest = tmp_path / "jobs.jsonl"
    image = tmp_path / "frame.png"
    image.write_bytes(png(400, 300))
    rows = [
        {"id": "text", "prompt": "a lighthouse", "aspect_ratio": "1:1"},
        {"id": "image", "prompt": "a cat", "image": str(image)},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    async with (
        Simulator(api_keys=(SECRET_KEY,), time_scale=SCALE, duration=5, ssl_context=server_context) as sim,
        http_proxy() as proxy,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}
        env |= {"PIXVERSE_API_KEY": SECRET_KEY, "HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(ca_file)}
        command = [sys.executable, "-m", "pixverse_async", "run", str(manifest), "--out", str(tmp_path / "out")]
        command += ["--base-url", sim.base_url, "--time-scale", str(SCALE)]
        with anyio.fail_after(60):
            done = await anyio.run_process(command, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(path.name for path in (tmp_path / "out").glob("*.mp4")) == ["image.mp4", "text.mp4"]
    assert set(proxy.connects) == {sim.base_url.removeprefix("https://"), sim.video_base_url.removeprefix("https://")}
    assert SECRET_KEY.encode() not in proxy.received

"""The network the environment describes, read the way the HTTP clients users know read it (requests, httpx):
proxies from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case), CA certificates from
`SSL_CERT_FILE` and `SSL_CERT_DIR`.

Read once, when a client opens its own session, and applied per request by the client itself rather than by
aiohttp's `trust_env`: for each request that reads the proxies in a worker thread and `~/.netrc` in another,
and it sends the Basic credentials of a `.netrc` entry to whatever host matches, the video host included (or
clashes with the API's `Authorization` header). An https target is reached through the proxy by `CONNECT`,
so the proxy sees the host name and encrypted bytes only, never the key.

aiohttp's default SSL context reads `SSL_CERT_FILE`/`SSL_CERT_DIR` only as they were when aiohttp was
imported, so the context is built here from what they say when the client opens.
"""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit
from urllib.request import getproxies_environment

import aiohttp
import attrs
from yarl import URL

from ._exceptions import ConfigurationError


@attrs.frozen
class Proxy:
    """A proxy to send a request through; `auth` from the credentials its URL carried (never shown)."""

    url: URL = attrs.field(repr=lambda url: repr(str(url.with_user(None))))
    auth: aiohttp.BasicAuth | None = attrs.field(default=None, repr=lambda auth: "None" if auth is None else "***")


@attrs.frozen
class ProxyRoutes:
    """Which proxy, if any, each URL goes through (by scheme, `all` for any, `no` the hosts that go direct)."""

    # By scheme, as urllib reads them; a proxy URL may carry credentials, so it is never shown.
    proxies: Mapping[str, str] = attrs.field(factory=dict, repr=lambda proxies: f"<{len(proxies)} entries>")

    def proxy_for(self, url: str) -> Proxy | None:
        parts = urlsplit(url)
        chosen = self.proxies.get(parts.scheme.lower()) or self.proxies.get("all")
        if not chosen or (parts.hostname and _bypassed(_host_port(parts.hostname, parts.port), self.proxies)):
            return None
        proxy = URL(chosen if "://" in chosen else f"http://{chosen}")
        if proxy.user is None:
            return Proxy(proxy)
        return Proxy(proxy.with_user(None), aiohttp.BasicAuth(proxy.user, proxy.password or ""))


def _bypassed(host: str, proxies: Mapping[str, str]) -> bool:
    """`NO_PROXY` names the host; urllib's own reading of it (not in typeshed's stubs)."""
    bypass: bool = urllib.request.proxy_bypass_environment(host, proxies)  # type: ignore[attr-defined]
    return bypass


def _host_port(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


def proxy_routes_from_environment() -> ProxyRoutes:
    """The proxies the environment names now."""
    return ProxyRoutes({scheme: url for scheme, url in getproxies_environment().items() if url})


def ssl_context_from_environment() -> ssl.SSLContext | None:
    """A verifying SSL context trusting the certificates `SSL_CERT_FILE`/`SSL_CERT_DIR` name (in place of the
    system's, as OpenSSL reads them), or None when neither is set. Blocking (it reads files)."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        return None
    # Loading a system bundle costs about 55 ms: one context per set of files as they are now, shared by the
    # clients of the process (as aiohttp shares its default one).
    return _context_for(cafile, capath, _version(cafile), _version(capath))


def _version(path: str | None) -> tuple[int, int] | None:
    try:
        return None if path is None else (os.stat(path).st_mtime_ns, os.stat(path).st_size)
    except OSError:
        return None


@functools.lru_cache(maxsize=4)
def _context_for(cafile: str | None, capath: str | None, file_version: object, dir_version: object) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as error:
        # Named by variable, not by path only: the user set it, maybe long ago.
        raise ConfigurationError(
            "SSL_CERT_FILE" if cafile else "SSL_CERT_DIR",
            f"the certificates it names cannot be loaded ({type(error).__name__}: {error}); fix or unset it, or "
            "pass trust_env=False",
        ) from None

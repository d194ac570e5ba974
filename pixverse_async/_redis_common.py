"""What the two users of Redis share: the shared budget (`pixverse_async.redis`) and the shared run's journal
(`cli/redis_journal.py`).

- The import guard: `redis` is an extra (`pip install 'pixverse-async[redis]'`), imported only when used.
- URLs: which schemes are Redis's, and one rule for showing a URL in a message or a repr: the user and the
  password are both dropped (a URL may carry either as the secret).
- Process ids: `host:pid:random`, unique per client or worker, readable in Redis and in file names.
- Outage backoff: one policy for every retry of an unreachable Redis: capped exponential, with jitter so that
  the workers of a run do not come back in step.
- Scripts: registered once per connection (EVALSHA after the first call).
- Namespacing: every key of one budget, or of one run, is `<prefix>:{<name>}:<part>`; the braces are a Redis
  Cluster hash tag, so that the keys one script touches sit in one slot.

Times here are real seconds (Redis's); callers that count in API seconds convert.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import yarl

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

REDIS_EXTRA: Final = "pip install 'pixverse-async[redis]'"
REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
#: The first and the longest wait between tries of an unreachable Redis (real seconds).
OUTAGE_FIRST_WAIT_REAL_SECONDS: Final = 0.02
OUTAGE_LONGEST_WAIT_REAL_SECONDS: Final = 1.0
_HOST_LENGTH = 40


def redis_asyncio(needed_by: str) -> Any:
    """`redis.asyncio`, or an `ImportError` naming the extra: "`needed_by` needs the redis package: ..."."""
    try:
        import redis.asyncio
    except ImportError:
        raise ImportError(f"{needed_by} needs the redis package: {REDIS_EXTRA}") from None
    return redis.asyncio


def scheme_of(url: str) -> str:
    try:
        return yarl.URL(url).scheme
    except (TypeError, ValueError):
        return ""


def is_redis_url(text: str) -> bool:
    return scheme_of(text) in REDIS_SCHEMES


def shown_url(url: str) -> str:
    """The URL for messages and reprs: without its user and its password."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return "<unparsable URL>"
    if parsed.user is not None or parsed.password is not None:
        parsed = parsed.with_user(None)
    return str(parsed)


def process_id() -> str:
    """A name for this client or worker, unique in Redis: `host:pid:random` (`:` -> `_` makes a file name)."""
    return f"{socket.gethostname()[:_HOST_LENGTH]}:{os.getpid()}:{secrets.token_hex(4)}"


def outage_wait(failures: int, *, longest: float = OUTAGE_LONGEST_WAIT_REAL_SECONDS, rng: random.Random) -> float:
    """Real seconds to wait before trying an unreachable Redis again, after `failures` tries in a row failed:
    doubling from OUTAGE_FIRST_WAIT_REAL_SECONDS up to `longest`, each wait between half and all of that."""
    capped = min(longest, OUTAGE_FIRST_WAIT_REAL_SECONDS * 2.0 ** min(max(failures, 1) - 1, 30))
    return capped * (0.5 + 0.5 * rng.random())


def register_scripts(client: Redis, scripts: Mapping[str, str]) -> dict[str, AsyncScript]:
    """Each Lua script registered once on `client`, by name: called by EVALSHA, loaded again if Redis lost it."""
    return {name: client.register_script(source) for name, source in scripts.items()}


def namespace(prefix: str, name: str) -> str:
    """The start of every key of one budget or run: `prefix:{name}` (the braces: one Cluster slot)."""
    return f"{prefix}:{{{name}}}"


def keys_of(space: str, parts: Iterable[str]) -> list[str]:
    """The keys `space:part` of one namespace, in the order of `parts`."""
    return [f"{space}:{part}" for part in parts]

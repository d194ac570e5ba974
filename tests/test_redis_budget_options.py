"""RedisBudget's options: bad input is refused before anything is sent, secrets stay out of reprs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from pixverse_async import InvalidRequestError, PixVerseClient
from pixverse_async.redis import RedisBudget
from pixverse_async.testing import InstantClock, ScaledClock

from .helpers import KEY


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"url": 6379}, "url"),
        ({"name": ""}, "name"),
        ({"name": "a b"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"prefix": "{braces}"}, "prefix"),
        ({"lease": 0}, "lease"),
        ({"lease": float("inf")}, "lease"),
        ({"lease": True}, "lease"),
        ({"give_up_after": -1}, "give_up_after"),
    ],
)
def test_bad_options_are_refused_with_the_field_named(options: dict[str, Any], field: str) -> None:
    arguments = {"url": "redis://127.0.0.1:6379/0", **options}
    with pytest.raises(InvalidRequestError, match=f"^{field}: "):
        RedisBudget(**arguments)


def test_the_password_of_the_url_is_never_shown() -> None:
    budget = RedisBudget("redis://user:hunter2@redis.internal:6379/0")
    assert "hunter2" not in repr(budget) and "redis.internal:6379" in repr(budget)
    with pytest.raises(InvalidRequestError) as refused:
        RedisBudget("http://user:hunter2@redis.internal:6379/0")
    assert "hunter2" not in str(refused.value)


def test_one_budget_serves_one_client_and_needs_a_clock_that_keeps_real_time() -> None:
    budget = RedisBudget("redis://127.0.0.1:6379/0")
    PixVerseClient(KEY, budget=budget, clock=ScaledClock(0.01))
    with pytest.raises(InvalidRequestError, match="already serves another client"):
        PixVerseClient(KEY, budget=budget)
    with pytest.raises(InvalidRequestError, match=r"^clock: a RedisBudget needs a clock"):
        PixVerseClient(KEY, budget=RedisBudget("redis://127.0.0.1:6379/0"), clock=InstantClock())
    with pytest.raises(InvalidRequestError, match=r"^budget: must be a shared budget"):
        PixVerseClient(KEY, budget=object())  # type: ignore[arg-type]


def test_the_default_name_is_a_hash_of_the_key_never_the_key() -> None:
    budget = RedisBudget("redis://127.0.0.1:6379/0")
    PixVerseClient(KEY, budget=budget, clock=ScaledClock(0.01))
    assert budget.name is not None and budget.name.startswith("key-") and KEY not in budget.name
    other = RedisBudget("redis://127.0.0.1:6379/0")
    PixVerseClient("sk-another", budget=other, clock=ScaledClock(0.01))
    assert other.name != budget.name


def test_without_the_redis_package_the_error_names_the_extra() -> None:
    # A fresh interpreter in which `import redis` fails, as on an install without the extra.
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['redis.asyncio'] = None\n"
        "from pixverse_async.redis import RedisBudget\n"
        "try:\n    RedisBudget('redis://127.0.0.1:6379/0')\n"
        "except ImportError as error:\n    print(error)\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "pip install 'pixverse-async[redis]'" in shown.stdout

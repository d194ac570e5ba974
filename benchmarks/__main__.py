"""Run every benchmark, or those named, and print their tables: `python -m benchmarks [--quick] [NAME ...]`.

Each benchmark starts its own simulator process and prints its tables as soon as they are measured; a
summary of the wall-clock time each took is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from benchmarks import (
    account_limit,
    lost_answers,
    mixed_kinds,
    polling,
    scale,
    scale_out,
    shared_runs,
    throughput,
    uploads,
    webhooks,
)
from benchmarks._common import Table

BENCHMARKS: dict[str, Callable[[bool], Coroutine[Any, Any, list[Table]]]] = {
    "throughput": throughput.run,
    "polling": polling.run,
    "scale": scale.run,
    "account_limit": account_limit.run,
    "webhooks": webhooks.run,
    "lost_answers": lost_answers.run,
    "scale_out": scale_out.run,
    "mixed_kinds": mixed_kinds.run,
    "shared_runs": shared_runs.run,
    "uploads": uploads.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="sizes about 10x smaller, for a smoke run")
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    arguments = parser.parse_args()
    unknown = [name for name in arguments.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose among {', '.join(BENCHMARKS)}")
    chosen = arguments.names or list(BENCHMARKS)
    took: dict[str, float] = {}
    for name in chosen:
        print(f"== {name}{' (quick)' if arguments.quick else ''}", flush=True)
        started = time.perf_counter()
        asyncio.run(BENCHMARKS[name](arguments.quick))
        took[name] = time.perf_counter() - started
    summary = Table("Wall-clock time per benchmark", ("benchmark", "seconds"))
    for name, seconds in took.items():
        summary.add(name, seconds)
    summary.add("total", sum(took.values()))
    summary.print()


if __name__ == "__main__":
    main()

"""The `pixverse-async` command: `run`, `status`, `demo` and `simulate`."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import attrs

from ._exceptions import PixVerseError
from ._journal import Journal
from ._manifest import ManifestError
from ._runner import DEFAULT_JOURNAL_NAME, RunAborted, RunOptions

_EXAMPLES = {
    "run": """examples:
  PIXVERSE_API_KEY=sk-... pixverse-async run jobs.jsonl --out videos/
  pixverse-async run jobs.csv --out videos/ --concurrency 32      # run it again to resume after a crash

manifest rows (JSON Lines or CSV): prompt, image (URL or path relative to the manifest), and optionally
id (names <id>.mp4), resolution, negative_prompt, fast_mode, style, seed. Exit code 0 only if every row
succeeded.""",
    "status": """examples:
  pixverse-async status --journal videos/pixverse-journal.sqlite
  pixverse-async status --journal videos/pixverse-journal.sqlite --json""",
    "demo": """examples:
  pixverse-async demo                        # 6 videos, journal and frames into ./pixverse-demo/
  pixverse-async demo --count 12 --out /tmp/demo""",
    "simulate": """examples:
  pixverse-async simulate --port 8080
  PIXVERSE_API_KEY=sk-test pixverse-async run jobs.jsonl --out out/ --base-url http://127.0.0.1:8080""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixverse-async", description="Bulk PixVerse V4.5 image-to-video from the command line."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=_EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    run = command("run", "make the videos of a manifest, resumably (API key from $PIXVERSE_API_KEY)")
    run.add_argument("manifest", type=Path, help="a .jsonl or .csv file, one job a row")
    run.add_argument("--out", type=Path, required=True, help="folder for the videos (and, by default, the journal)")
    run.add_argument("--concurrency", type=_positive_int, default=16, help="tasks running at once (default 16)")
    run.add_argument("--journal", type=Path, help=f"journal file (default: OUT/{DEFAULT_JOURNAL_NAME})")
    run.add_argument("--base-url", help="API base URL (default: $PIXVERSE_BASE_URL, else https://api.myrouter.ai)")
    run.add_argument("--resubmit-uncertain", action="store_true", help="submit again rows whose answer was lost")
    run.add_argument("--retry-failed", action="store_true", help="submit again rows whose task failed")
    run.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="when the API is `pixverse-async simulate --time-scale S`, the same S (polls at its speed)",
    )

    status = command("status", "show the rows of a journal and their states")
    status.add_argument("--journal", type=Path, required=True, help="the journal file of a run")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    demo = command("demo", "run a small bulk job end to end against the built-in simulator (no key, no network)")
    demo.add_argument("--out", type=Path, default=Path("pixverse-demo"), help="output folder (default: %(default)s)")
    demo.add_argument("--count", type=_positive_int, default=6, help="how many videos (default: %(default)s)")

    simulate = command("simulate", "serve the API simulator on loopback, to point your own code at")
    simulate.add_argument("--port", type=int, default=8080, help="API port; videos are served on port+1")
    simulate.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    simulate.add_argument("--api-key", action="append", dest="api_keys", help="accepted key (repeatable; sk-test)")
    simulate.add_argument("--time-scale", type=float, default=1.0, help="real seconds per simulated second")
    simulate.add_argument("--duration", type=float, default=30.0, help="simulated seconds per task")
    simulate.add_argument("--failure-rate", type=float, default=0.0, help="share of tasks that fail (0..1)")
    simulate.add_argument("--max-running-per-key", type=int, default=None, help="answer 429 beyond this many")
    simulate.add_argument(
        "--submit-rate", type=_call_rate, metavar="N/SECONDS", help="at most N submissions per SECONDS per key"
    )
    simulate.add_argument(
        "--poll-rate", type=_call_rate, metavar="N/SECONDS", help="at most N task-result calls per SECONDS per key"
    )
    simulate.add_argument("--random-429-rate", type=float, default=0.0, help="share of calls answered 429 at random")
    simulate.add_argument(
        "--rate-limit-retry-after", type=float, default=None, help="Retry-After of every simulated 429 (seconds)"
    )
    return parser


def _call_rate(text: str) -> tuple[int, float]:
    calls, _, seconds = text.partition("/")
    try:
        parsed = int(calls), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError("must be N/SECONDS, e.g. 20/2") from None
    if parsed[0] < 1 or not parsed[1] > 0:
        raise argparse.ArgumentTypeError("must be N/SECONDS with N >= 1 and SECONDS > 0")
    return parsed


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args.journal, as_json=args.json)
        if args.command == "demo":
            from ._demo import run_demo

            return anyio.run(run_demo, args.out, args.count)
        return _simulate(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except ManifestError as error:
        print(f"pixverse-async: nothing was submitted: {error}", file=sys.stderr)
        return 2
    except (PixVerseError, RunAborted, OSError, sqlite3.Error) as error:
        print(f"pixverse-async: error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from ._client import PixVerseClient
    from ._clock import ScaledClock
    from ._runner import run_manifest

    options = RunOptions(
        manifest=args.manifest,
        out=args.out,
        journal=args.journal,
        concurrency=args.concurrency,
        resubmit_uncertain=args.resubmit_uncertain,
        retry_failed=args.retry_failed,
    )
    clock = ScaledClock(args.time_scale) if args.time_scale else None
    client = PixVerseClient(base_url=args.base_url, max_concurrency=options.concurrency, clock=clock)

    async def go() -> int:
        async with client:
            return await run_manifest(options, client)

    return _unwrapped(lambda: anyio.run(go))


def _unwrapped(call: Callable[[], int]) -> int:
    """Run `call`, turning an exception group of one user-facing error into that error."""
    try:
        return call()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        for leaf in leaves:
            if isinstance(leaf, RunAborted | PixVerseError | OSError | sqlite3.Error | KeyboardInterrupt):
                raise leaf from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


def _status(path: Path, *, as_json: bool) -> int:
    journal = Journal.open_existing(path)
    try:
        rows = journal.rows()
    finally:
        journal.close()
    if as_json:
        print(json.dumps([attrs.asdict(row) for row in rows], indent=2))
        return 0
    print(f"{'row':<16} {'line':>5}  {'state':<10} {'task':<38} detail")
    for row in rows:
        detail = row.reason if row.state in ("failed", "uncertain") else row.file or ""
        print(f"{row.key:<16} {row.line:>5}  {row.state:<10} {row.task_id or '':<38} {detail or ''}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .testing import CallRateLimit, serve_forever

    retry_after = args.rate_limit_retry_after is not None

    def call_rate(given: tuple[int, float] | None) -> CallRateLimit | None:
        return None if given is None else CallRateLimit(given[0], per=given[1], retry_after=retry_after)

    options = {
        "api_keys": tuple(args.api_keys or ("sk-test",)),
        "time_scale": args.time_scale,
        "duration": args.duration,
        "failure_rate": args.failure_rate,
        "max_running_per_key": args.max_running_per_key,
        "rate_limit_retry_after": args.rate_limit_retry_after,
        "random_rate_limit": args.random_429_rate,
        "random_rate_limit_retry_after": args.rate_limit_retry_after,
        "submit_rate_limit": call_rate(args.submit_rate),
        "poll_rate_limit": call_rate(args.poll_rate),
    }
    anyio.run(lambda: serve_forever(args.port, args.host, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `pixverse-async` command: `run`, `status`, `demo` and `simulate`."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import anyio

from .._convert import unstructure
from .._exceptions import BudgetUnavailableError, PixVerseError
from .._redis_common import is_redis_url, shown_url
from .journal import Journal, JournalError
from .listener import parse_listen_address
from .manifest import ManifestError
from .redis_journal import DEFAULT_CLAIM_LEASE_REAL_SECONDS, OUTAGE_LEASES, check_run_name, redis_module
from .run import DEFAULT_JOURNAL_NAME, RunAborted, RunOptions

if TYPE_CHECKING:
    from .._budget import SharedBudget

_EXAMPLES = {
    "run": """examples:
  PIXVERSE_API_KEY=sk-... pixverse-async run jobs.jsonl --out videos/
  pixverse-async run jobs.csv --out videos/ --concurrency 32      # run it again to resume after a crash
  pixverse-async run jobs.csv --out videos/ --dry-run              # what it would do; sends nothing
  pixverse-async run jobs.csv --out /shared/videos/ --journal redis://redis.internal:6379/0
                                            # one run over many processes and machines: start it on each

manifest rows (JSON Lines or CSV): prompt, image (URL or path relative to the manifest), and optionally
id (names <id>.mp4), resolution, negative_prompt, fast_mode, style, seed, extra (a JSON object of fields
to add to the request). Exit code 0 only if every row succeeded; --dry-run needs no key and sends nothing.""",
    "status": """examples:
  pixverse-async status --journal videos/pixverse-journal.sqlite
  pixverse-async status --journal videos/pixverse-journal.sqlite --json
  pixverse-async status --journal redis://redis.internal:6379/0""",
    "demo": """examples:
  pixverse-async demo                        # 6 videos, journal and frames into ./pixverse-demo/
  pixverse-async demo --count 12 --out /tmp/demo""",
    "simulate": """examples:
  pixverse-async simulate --port 8080
  PIXVERSE_API_KEY=sk-test pixverse-async run jobs.jsonl --out out/ --base-url http://127.0.0.1:8080""",
}


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line in the user's words: `pixverse-async run: --concurrency: must be ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message.removeprefix('argument ')} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pixverse-async", description="Bulk PixVerse V4.5 image-to-video from the command line.")
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
    run.set_defaults(command_parser=run)  # for the errors found once every option is read
    run.add_argument("manifest", type=Path, help="a .jsonl or .csv file, one job a row")
    run.add_argument("--out", type=Path, required=True, help="folder for the videos (and, by default, the journal)")
    run.add_argument("--concurrency", type=_whole_number(1), default=16, help="tasks running at once (default 16)")
    run.add_argument(
        "--journal",
        type=_journal,
        help=f"journal file (default: OUT/{DEFAULT_JOURNAL_NAME}), or redis://HOST:PORT/DB: a run shared by every"
        " process started with the same manifest and URL (OUT then is shared storage)",
    )
    run.add_argument(
        "--lease",
        type=_positive_number,
        default=DEFAULT_CLAIM_LEASE_REAL_SECONDS,
        help="with a redis:// journal: seconds after which a dead worker's rows are taken over (default 30)",
    )
    run.add_argument(
        "--run-name",
        type=_run_name,
        help="with a redis:// journal: the run's name in Redis, the same for all its workers (default: the"
        " manifest's file name); runs of different names share a database",
    )
    run.add_argument(
        "--local-budget",
        action="store_true",
        help="with a redis:// journal: each worker learns the account's limits alone, instead of one budget of"
        " the key shared through the same Redis (the run's rows stay bounded by --concurrency)",
    )
    run.add_argument(
        "--base-url", type=_base_url, help="API base URL (default: $PIXVERSE_BASE_URL, else https://api.myrouter.ai)"
    )
    run.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit again the uncertain rows (answer lost) judged not created from the webhook deliveries; rows"
        " whose creation is unknown are left alone and reported",
    )
    run.add_argument(
        "--resubmit-unknown-may-pay-twice",
        action="store_true",
        help="submit again every uncertain row, those whose task may exist too: each of those may be PAID TWICE",
    )
    run.add_argument(
        "--webhook-url",
        type=_base_url,
        metavar="URL",
        help="receive each task's result by webhook at this public URL (the API calls it; a lost answer is then"
        " found by its delivery); needs --webhook-listen",
    )
    run.add_argument(
        "--webhook-listen",
        type=_listen_address,
        metavar="HOST:PORT",
        help="where this run serves --webhook-url's path while it runs (behind a tunnel or a reverse proxy, the"
        " local address the URL reaches)",
    )
    run.add_argument("--retry-failed", action="store_true", help="submit again rows whose task failed")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the manifest and the journal, print what the run would do, send nothing (no key needed)",
    )
    run.add_argument("--no-progress", action="store_true", help="plain log lines, no live progress bar")
    run.add_argument(
        "--time-scale",
        type=_positive_number,
        default=None,
        help="when the API is `pixverse-async simulate --time-scale S`, the same S (polls at its speed)",
    )

    status = command("status", "show the rows of a journal and their states")
    status.add_argument(
        "--journal", type=_journal, required=True, help="the journal file of a run, or its redis:// URL"
    )
    status.add_argument("--run-name", type=_run_name, help="with a redis:// journal holding several runs: which one")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    demo = command("demo", "run a small bulk job end to end against the built-in simulator (no key, no network)")
    demo.add_argument("--out", type=Path, default=Path("pixverse-demo"), help="output folder (default: %(default)s)")
    demo.add_argument("--count", type=_whole_number(1), default=6, help="how many videos (default: %(default)s)")

    simulate = command("simulate", "serve the API simulator on loopback, to point your own code at")
    simulate.add_argument("--port", type=_whole_number(0, 65535), default=8080, help="API port; videos on port+1")
    simulate.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    simulate.add_argument(
        "--api-key", type=_api_key, action="append", dest="api_keys", help="accepted key (repeatable; sk-test)"
    )
    simulate.add_argument("--time-scale", type=_positive_number, default=1.0, help="real seconds per simulated second")
    simulate.add_argument(
        "--duration",
        type=_positive_number,
        default=None,
        help="simulated seconds per task (default: log-normal around 40)",
    )
    simulate.add_argument("--failure-rate", type=_fraction, default=0.0, help="share of tasks that fail (0..1)")
    simulate.add_argument(
        "--max-running-per-key", type=_whole_number(0), default=None, help="answer 429 beyond this many"
    )
    simulate.add_argument(
        "--max-processing-per-key",
        type=_whole_number(1),
        default=None,
        help="tasks beyond this many wait QUEUED (a busy account)",
    )
    simulate.add_argument("--eta", choices=("exact", "noisy", "absent"), default="exact", help="what task.eta says")
    simulate.add_argument("--eta-noise", type=_positive_number, default=0.35, help="sigma of each task's eta factor")
    simulate.add_argument(
        "--progress", choices=("linear", "steps", "absent"), default="linear", help="what progress_percent says"
    )
    simulate.add_argument(
        "--progress-step", type=_whole_number(1, 100), default=25, help="percent per step (--progress steps)"
    )
    simulate.add_argument(
        "--accept-field", action="append", dest="accept_fields", help="accept this undocumented field (repeatable)"
    )
    simulate.add_argument(
        "--submit-rate", type=_call_rate, metavar="N/SECONDS", help="at most N submissions per SECONDS per key"
    )
    simulate.add_argument(
        "--poll-rate", type=_call_rate, metavar="N/SECONDS", help="at most N task-result calls per SECONDS per key"
    )
    simulate.add_argument(
        "--random-429-rate", type=_fraction, default=0.0, help="share of calls answered 429 at random"
    )
    simulate.add_argument(
        "--uplink-mbps", type=_positive_number, default=None, help="users' uplink shared by all request bodies"
    )
    simulate.add_argument(
        "--submit-latency", type=_positive_number, default=0.0, help="seconds from a body's end to its answer"
    )
    simulate.add_argument(
        "--rate-limit-retry-after",
        type=_positive_number,
        default=None,
        help="Retry-After of every simulated 429 (seconds)",
    )
    return parser


# Option values, checked at parse time. Each raises ArgumentTypeError in the user's words: argparse shows it
# after the option's name, where any other exception would read "invalid <function name> value".
_DIGITS = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def whole_number(text: str) -> int:
        if not _DIGITS.fullmatch(text) or not minimum <= int(text) <= (maximum if maximum is not None else math.inf):
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, not {text!r}")
        return int(text)

    return whole_number


def _positive_number(text: str) -> float:
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text!r}")
    return value


def _call_rate(text: str) -> tuple[int, float]:
    calls, _, seconds = text.partition("/")
    try:
        parsed = int(calls), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError("must be N/SECONDS, e.g. 20/2") from None
    if parsed[0] < 1 or not parsed[1] > 0:
        raise argparse.ArgumentTypeError("must be N/SECONDS with N >= 1 and SECONDS > 0")
    return parsed


def _fraction(text: str) -> float:
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not 0 <= value <= 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}")
    return value


def _base_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # an unclosed [IPv6] bracket, say
        usable = False
    if not usable:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL with a host, not {text!r}")
    return text


def _listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _check_webhook_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Both webhook options or neither: a URL nobody here listens at would hand the deliveries to nobody."""
    if args.webhook_url is not None and args.webhook_listen is None:
        parser.error(
            "--webhook-url: needs --webhook-listen HOST:PORT: this run receives the deliveries itself (nothing"
            " else would hand them to it)"
        )
    if args.webhook_listen is not None and args.webhook_url is None:
        parser.error("--webhook-listen: needs --webhook-url URL, the public address the API posts to")


def _journal(text: str) -> Path | str:
    """A journal file, or the redis:// URL of a shared run (kept as text)."""
    if is_redis_url(text):
        return text
    if "://" in text:
        raise argparse.ArgumentTypeError(f"must be a file or a redis:// URL, not {text!r}")
    return Path(text)


def _run_name(text: str) -> str:
    try:
        return check_run_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _api_key(text: str) -> str:
    if not text or not text.isprintable() or any(char.isspace() for char in text):
        raise argparse.ArgumentTypeError("must be a key without spaces or control characters")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        _check_webhook_options(args.command_parser, args)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args.journal, as_json=args.json, run_name=args.run_name)
        if args.command == "demo":
            from .demo import run_demo

            return anyio.run(run_demo, args.out, args.count)
        return _simulate(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except ManifestError as error:
        print(f"pixverse-async: nothing was submitted: {error}", file=sys.stderr)
        return 2
    except (PixVerseError, RunAborted, JournalError, OSError, sqlite3.Error) as error:
        print(f"pixverse-async: error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from .._client import PixVerseClient
    from .._clock import ScaledClock
    from .run import run_manifest

    shared = isinstance(args.journal, str)
    if shared:
        redis_module()  # the extra is there, or one clear line before anything else
    options = RunOptions(
        manifest=args.manifest,
        out=args.out,
        journal=None if shared else args.journal,
        concurrency=args.concurrency,
        resubmit_uncertain=args.resubmit_uncertain,
        retry_failed=args.retry_failed,
        journal_url=args.journal if shared else None,
        lease=args.lease,
        run_name=args.run_name,
        resubmit_unknown=args.resubmit_unknown_may_pay_twice,
        webhook_url=args.webhook_url,
        webhook_listen=args.webhook_listen,
        time_scale=args.time_scale or 1.0,
    )
    clock = ScaledClock(args.time_scale) if args.time_scale else None
    if args.dry_run:
        from .dry_run import dry_run

        # The client is built (so its options are checked as a run checks them) but never opened: nothing is
        # sent, and a dry run works without a key (a stand-in that goes nowhere) and without a network.
        has_key = bool(os.environ.get("PIXVERSE_API_KEY", "").strip())
        checked = PixVerseClient(
            None if has_key else "dry-run", base_url=args.base_url, max_concurrency=options.concurrency, clock=clock
        )
        return dry_run(options, base_url=checked.base_url, has_key=has_key)
    budget = None
    if shared and not args.local_budget:
        budget = _shared_budget(args.journal, lease=args.lease, time_scale=args.time_scale or 1.0)
    client = PixVerseClient(
        base_url=args.base_url,
        max_concurrency=options.concurrency,
        clock=clock,
        budget=budget,
        webhook_url=args.webhook_url,
    )

    async def go() -> int:
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(client)
            except BudgetUnavailableError as error:
                raise RunAborted(
                    f"cannot reach the Redis journal {shown_url(args.journal)} ({error}); nothing was sent"
                ) from None
            return await run_manifest(options, client, live=not args.no_progress)

    return _unwrapped(lambda: anyio.run(go))


def _shared_budget(url: str, *, lease: float, time_scale: float) -> SharedBudget:
    """The key's budget for the workers of a shared run: a `RedisBudget` on the journal's Redis. Its leases and
    its patience with an unreachable Redis are the journal's (`--lease` real seconds, `OUTAGE_LEASES` of them),
    in the API seconds it counts in."""
    from ..redis import RedisBudget

    return RedisBudget(url, lease=lease / time_scale, give_up_after=OUTAGE_LEASES * lease / time_scale)


def _unwrapped(call: Callable[[], int]) -> int:
    """Run `call`, turning an exception group of one user-facing error into that error."""
    try:
        return call()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        for leaf in leaves:
            if isinstance(
                leaf, RunAborted | JournalError | PixVerseError | OSError | sqlite3.Error | KeyboardInterrupt
            ):
                raise leaf from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


def _status(path: Path | str, *, as_json: bool, run_name: str | None) -> int:
    if isinstance(path, str):
        redis_module()
        from .redis_journal import read_run

        rows, _ = anyio.run(read_run, path, run_name)
        if not rows:
            named = f" named {run_name}" if run_name is not None else ""
            raise FileNotFoundError(f"no run{named} in the Redis journal {shown_url(path)}")
    else:
        journal = Journal.open_existing(path)
        try:
            rows = journal.rows()
        finally:
            journal.close()
    if as_json:
        from .manifest import row_kind
        from .progress import row_outcome, row_verdict

        shown = [
            {
                **unstructure(row),
                "kind": row_kind(row.fingerprint),
                "outcome": row_outcome(row),
                "verdict": row_verdict(row),
            }
            for row in rows
        ]
        print(json.dumps(shown, indent=2))
        return 0
    from .progress import console_for, status_table

    console_for(sys.stdout).print(status_table(rows))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from ..testing import CallRateLimit, serve_forever

    retry_after = args.rate_limit_retry_after is not None

    def call_rate(given: tuple[int, float] | None) -> CallRateLimit | None:
        return None if given is None else CallRateLimit(given[0], per=given[1], retry_after=retry_after)

    options = {
        "api_keys": tuple(args.api_keys or ("sk-test",)),
        "time_scale": args.time_scale,
        "failure_rate": args.failure_rate,
        "max_running_per_key": args.max_running_per_key,
        "max_processing_per_key": args.max_processing_per_key,
        "eta": args.eta,
        "eta_noise": args.eta_noise,
        "progress": args.progress,
        "progress_step": args.progress_step,
        "accept_fields": tuple(args.accept_fields or ()),
        "rate_limit_retry_after": args.rate_limit_retry_after,
        "random_rate_limit": args.random_429_rate,
        "random_rate_limit_retry_after": args.rate_limit_retry_after,
        "submit_rate_limit": call_rate(args.submit_rate),
        "poll_rate_limit": call_rate(args.poll_rate),
        "uplink_mbps": args.uplink_mbps,
        "submit_latency": args.submit_latency,
    }
    if args.duration is not None:
        options["duration"] = args.duration
    anyio.run(lambda: serve_forever(args.port, args.host, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())

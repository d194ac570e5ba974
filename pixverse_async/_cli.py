"""The `pixverse-async` command: `demo` (a whole run against the built-in simulator) and `simulate`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from ._exceptions import PixVerseError

_EPILOG_DEMO = """examples:
  pixverse-async demo                       # 6 videos into ./pixverse-demo/
  pixverse-async demo --count 12 --out /tmp/demo
"""
_EPILOG_SIMULATE = """examples:
  pixverse-async simulate --port 8080
  PIXVERSE_BASE_URL=http://127.0.0.1:8080 PIXVERSE_API_KEY=sk-test python my_script.py
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixverse-async", description="Bulk PixVerse V4.5 image-to-video from the command line."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a small bulk job end to end against the built-in simulator (no key, no network)",
        epilog=_EPILOG_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("pixverse-demo"), help="output folder (default: %(default)s)")
    demo.add_argument("--count", type=_positive_int, default=6, help="how many videos (default: %(default)s)")

    simulate = commands.add_parser(
        "simulate",
        help="serve the API simulator on loopback, to point your own code at",
        epilog=_EPILOG_SIMULATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("--port", type=int, default=8080, help="API port; videos are served on port+1")
    simulate.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    simulate.add_argument("--api-key", action="append", dest="api_keys", help="accepted key (repeatable; sk-test)")
    simulate.add_argument(
        "--time-scale", type=float, default=1.0, help="real seconds per simulated second (default: %(default)s)"
    )
    simulate.add_argument("--duration", type=float, default=30.0, help="simulated seconds per task")
    simulate.add_argument("--failure-rate", type=float, default=0.0, help="share of tasks that fail (0..1)")
    simulate.add_argument("--max-running-per-key", type=int, default=None, help="answer 429 beyond this many")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return anyio.run(run_demo, args.out, args.count)
        from .testing import serve_forever

        options = {
            "api_keys": tuple(args.api_keys or ("sk-test",)),
            "time_scale": args.time_scale,
            "duration": args.duration,
            "failure_rate": args.failure_rate,
            "max_running_per_key": args.max_running_per_key,
        }
        anyio.run(lambda: serve_forever(args.port, args.host, **options))
        return 0
    except KeyboardInterrupt:
        return 130
    except (PixVerseError, OSError, ValueError) as error:
        print(f"pixverse-async: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

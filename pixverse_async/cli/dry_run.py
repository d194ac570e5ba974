"""`run --dry-run`: check the manifest and the journal exactly as a run does (`run.plan_rows` decides each row's
fate for both), and print what the run would do; nothing is sent, nothing written."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TextIO

import anyio
from rich.table import Table
from rich.text import Text

from .journal import Journal, JournalError, JournalRow, ListenerSpan, check_manifest_identity
from .manifest import read_manifest
from .progress import console_for
from .run import Action, Listening, RowPlan, RunAborted, RunOptions, left_alone, manifest_identity, plan_rows
from .transitions import another_manifest, same_manifest


def dry_run(options: RunOptions, *, base_url: str, has_key: bool, stream: TextIO = sys.stdout) -> int:
    """`run --dry-run`: check the manifest and the journal as a run would, say what it would do, send nothing.

    The journal is read, never written (nor created); `out` is not created either."""
    rows = read_manifest(options.manifest)
    identity = manifest_path, manifest_rows = manifest_identity(options.manifest, rows)
    entries: list[JournalRow] = []
    spans: list[ListenerSpan] = []
    if options.journal_url is not None:
        from .._redis_common import shown_url
        from .redis_journal import read_run

        where = f"{shown_url(options.journal_url)} (run {options.shared_run_name})"
        entries, meta = anyio.run(read_run, options.journal_url, options.shared_run_name)
        known_path = meta.get("manifest_path")
        if known_path is not None and not same_manifest(known_path, meta.get("manifest_rows"), *identity):
            hint = "name this manifest's run with --run-name, or use another database"
            raise RunAborted(another_manifest(where, known_path, hint=hint))
        exists = bool(meta)
    else:
        where, exists = str(options.journal_path), options.journal_path.is_file()
        if exists:
            journal = Journal.open_existing(options.journal_path)
            try:
                check_manifest_identity(journal, manifest_path, manifest_rows)  # refused as the run would
                entries = journal.rows()
                spans = journal.listener_spans()
            except JournalError as error:
                raise RunAborted(str(error)) from None
            finally:
                journal.close()
    listening = None
    if options.webhook_url is not None and options.journal_url is None:
        listening = Listening(options.webhook_url, time.time(), spans, options.time_scale)
    plans = plan_rows(rows, entries, options, listening)
    console = console_for(stream)
    journal_note = "" if exists else ", not created yet"
    console.print(
        Text(
            f"dry run: nothing was sent. {len(rows)} rows in {options.manifest}; journal {where}"
            f"{journal_note}; API {base_url}",
            overflow="fold",
        )
    )
    console.print(plan_table(plans))
    for plan in plans:
        said = f"row {plan.row.key} (line {plan.row.line}): uncertain"
        if plan.action == "uncertain":
            console.print(Text(f"{said}, {left_alone(plan)}: {plan.reason}", overflow="fold"))
        elif plan.action == "await":
            missed = f"; {plan.missed}, so if none comes it stays unknown" if plan.missed else ""
            console.print(Text(f"{said}, its webhook delivery would be awaited{missed}", overflow="fold"))
    if not has_key:
        console.print("note: no API key ($PIXVERSE_API_KEY): the real run needs one (a dry run does not)")
    return 0


def plan_table(plans: Sequence[RowPlan]) -> Table:
    """What a run would do, by action; the rows to submit by resolution and fast mode."""
    by_action = Counter(plan.action for plan in plans)
    table = Table(title="what the run would do", title_justify="left")
    table.add_column("action", overflow="fold")
    table.add_column("rows", justify="right")
    table.add_row("submit (paid)", str(by_action["submit"]))
    by_kind = Counter(
        (plan.row.request.resolution, plan.row.request.fast_mode) for plan in plans if plan.action == "submit"
    )
    for (resolution, fast_mode), count in sorted(by_kind.items()):
        table.add_row(f"  {resolution}{', fast mode' if fast_mode else ''}", str(count))
    for action, label in _ACTION_LABELS.items():
        if by_action[action]:
            table.add_row(label, str(by_action[action]))
    table.add_row("total", str(len(plans)), style="bold")
    return table


_ACTION_LABELS: dict[Action, str] = {
    "poll": "poll (submitted earlier)",
    "fetch_again": "fetch again (file missing)",
    "done": "already done",
    "await": "await a late webhook delivery (uncertain)",
    "uncertain": "left alone: uncertain (see below)",
    "failed": "left alone: failed (--retry-failed)",
}

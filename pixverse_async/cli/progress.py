"""What `pixverse-async run` and `status` show: one progress model, a live `rich` display or plain lines, and
the tables (summary, status, dry-run plan).

Only the command line imports this module (and so `rich`): `import pixverse_async` does not.

The counts of a run live in one place, `RunProgress`: what the journal settled before the run (rows already
done, rows left alone), `as_completed`'s own running totals (`results.counts`) and the downloads. Done,
failed, running and queued are derived from those, never counted twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol, TextIO, final

import attrs
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .._bulk import BatchCounts
from .journal import STATES, JournalRow
from .manifest import row_kind

#: The reasons of a moderation refusal (`ContentPolicyError`), as a failed row's journal reason starts.
_REFUSAL_PREFIXES = ("400 ILLEGAL_PROMPT", "400 ILLEGAL_IMAGE_CONTENT")
_KINDS = ("image", "text")


def row_outcome(row: JournalRow) -> str:
    """The row's state, with `refused` for a failed row that moderation refused (nothing was billed)."""
    if row.state == "failed" and (row.reason or "").startswith(_REFUSAL_PREFIXES):
        return "refused"
    return row.state


def row_verdict(row: JournalRow) -> str | None:
    """An uncertain row's verdict: `not created` (judged from the webhook deliveries) or `unknown`."""
    if row.state != "uncertain":
        return None
    return "not created" if row.likely_created is False else "unknown"


@final
@attrs.define
class RunProgress:
    """The one progress model of a run: rows settled before it started, `as_completed`'s counts, downloads."""

    total: int
    already_done: int = 0
    left_alone: int = 0
    batch: BatchCounts = attrs.field(factory=BatchCounts)
    downloaded: int = 0
    download_failed: int = 0

    @property
    def done(self) -> int:
        return self.already_done + self.downloaded

    @property
    def failed(self) -> int:
        """Every row that will not be done, moderation refusals included (`refused` tells those apart)."""
        return self.left_alone + self.batch.failed + self.batch.content_refused + self.download_failed

    @property
    def refused(self) -> int:
        return self.batch.content_refused

    @property
    def running(self) -> int:
        """Being submitted, or running on the server: at most the run's concurrency."""
        return self.batch.submitting + self.batch.running

    @property
    def downloading(self) -> int:
        """Succeeded on the server, video not on disk yet."""
        return self.batch.succeeded - self.downloaded - self.download_failed

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def queued(self) -> int:
        return max(0, self.total - self.finished - self.running - self.downloading)

    def describe(self) -> str:
        downloading = f" · {self.downloading} downloading" if self.downloading else ""
        refused = f" ({self.refused} refused by moderation)" if self.refused else ""
        return (
            f"{self.done} done · {self.failed} failed{refused} · {self.running} running{downloading} · "
            f"{self.queued} queued"
        )


class Display(Protocol):
    """Where a run reports: log lines, and a redraw after the model changed."""

    def log(self, line: str) -> None: ...

    def refresh(self) -> None: ...

    def close(self) -> None: ...


def console_for(stream: TextIO) -> Console:
    """A console on `stream`: colours and live redraws only when it is a terminal (rich detects it)."""
    return Console(file=stream, highlight=False, soft_wrap=False)


def display_for(console: Console, model: RunProgress, *, live: bool) -> Display:
    """A live progress bar on a terminal (unless `live` is False), plain log lines otherwise."""
    if live and console.is_terminal and not console.is_dumb_terminal:
        return LiveDisplay(console, model)
    return PlainDisplay(console)


@final
class PlainDisplay:
    """One line per event, nothing redrawn: for logs, pipes and `--no-progress`."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def log(self, line: str) -> None:
        self._console.print(escape(line), overflow="fold")

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class _RateColumn(ProgressColumn):
    """Rows finished per minute (real time), from rich's own estimate over the last half minute."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-/min", style="progress.data.speed")
        per_minute = speed * 60
        shown = f"{per_minute:.0f}/min" if per_minute >= 10 else f"{per_minute:.1f}/min"
        return Text(shown, style="progress.data.speed")


@final
class _CountsProgress(Progress):
    """rich's progress bar with the model's counts on a line of their own above it, cut to the width."""

    def __init__(self, model: RunProgress, console: Console) -> None:
        self._model = model  # before rich's constructor, which renders once
        super().__init__(
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=console,
            expand=True,
            refresh_per_second=8,
        )

    def get_renderable(self) -> RenderableType:
        counts = Text(self._model.describe(), no_wrap=True, overflow="ellipsis")
        return Group(counts, self.make_tasks_table(self.tasks))


@final
class LiveDisplay:
    """A live progress bar (done/failed/running/queued, %, rate, ETA) with log lines scrolling above it."""

    def __init__(self, console: Console, model: RunProgress) -> None:
        self._model = model
        self._progress = _CountsProgress(model, console)
        self._task = self._progress.add_task("rows", total=model.total, completed=model.finished)
        self._progress.start()

    def log(self, line: str) -> None:
        # Redrawn first: a line printed above the bar reprints rich's last drawing of it, which may be older
        # than the change this line reports.
        self.refresh()
        self._progress.refresh()
        self._progress.console.print(escape(line), overflow="fold")

    def refresh(self) -> None:
        # The total grows in a shared run, as this worker claims rows.
        self._progress.update(self._task, completed=self._model.finished, total=self._model.total)

    def close(self) -> None:
        self.refresh()
        self._progress.stop()


def summary_table(entries: Sequence[JournalRow]) -> Table:
    """The rows of a journal by state (moderation refusals apart from other failures) and by kind of job."""
    counts = Counter((row_outcome(entry), row_kind(entry.fingerprint)) for entry in entries)
    kinds = Counter(row_kind(entry.fingerprint) for entry in entries)
    table = Table(title="rows by state", title_justify="left")
    table.add_column("state")
    for kind in _KINDS:
        table.add_column(kind, justify="right")
    table.add_column("rows", justify="right")
    for state in (*STATES[:4], "refused", *STATES[4:]):
        per_kind = [counts[state, kind] for kind in _KINDS]
        if any(per_kind):
            table.add_row(state, *map(str, per_kind), str(sum(per_kind)))
    table.add_row("total", *(str(kinds[kind]) for kind in _KINDS), str(len(entries)), style="bold")
    return table


def problems_table(entries: Iterable[JournalRow]) -> Table | None:
    problems = [entry for entry in entries if entry.state != "succeeded"]
    if not problems:
        return None
    table = Table(title="rows that did not succeed", title_justify="left")
    table.add_column("row", overflow="fold")
    table.add_column("line", justify="right")
    table.add_column("state")
    table.add_column("detail", overflow="fold", ratio=1)
    for entry in problems:
        state = entry.state if (verdict := row_verdict(entry)) is None else f"{entry.state} ({verdict})"
        table.add_row(entry.key, str(entry.line), state, escape(entry.reason or entry.task_id or ""))
    return table


def status_table(rows: Sequence[JournalRow]) -> Table:
    """`pixverse-async status`: every row of a journal."""
    table = Table()
    table.add_column("row", overflow="fold")
    table.add_column("line", justify="right")
    # Short words, kept whole: the long identifiers around them fold instead.
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("detail", overflow="fold", ratio=1)
    for row in rows:
        detail = row.reason or row.file  # why a row is not done (a submitted one may say), else its file
        verdict = row_verdict(row)
        state = row_outcome(row) if verdict is None else f"{row_outcome(row)} ({verdict})"
        table.add_row(row.key, str(row.line), row_kind(row.fingerprint), state, row.task_id or "", escape(detail or ""))
    return table

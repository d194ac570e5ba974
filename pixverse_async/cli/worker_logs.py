"""Each worker's own log of a shared run (`OUT/.pixverse-workers/`), and a run rebuilt from those logs.

A worker syncs every record to its log before Redis hears it, so that what was paid for is known even when
Redis loses the run: `rows_from_logs` then gives Redis the run back as the logs of its manifest's workers
tell it.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, final

from .transitions import FIELDS

LOG_FOLDER: Final = ".pixverse-workers"
ROW_FIELDS: Final = tuple(name for name in FIELDS if name != "fingerprint")


@final
class WorkerLog:
    """This worker's own record of what it wrote, one JSON line per record, synced before Redis is told."""

    def __init__(self, out: Path, worker: str) -> None:
        folder = out / LOG_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{worker.replace(':', '_')}.jsonl"
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def read(out: Path, worker: str) -> list[dict[str, Any]]:
        path = out / LOG_FOLDER / f"{worker.replace(':', '_')}.jsonl"
        records: list[dict[str, Any]] = []
        with contextlib.suppress(OSError), path.open(encoding="utf-8") as lines:
            for line in lines:
                with contextlib.suppress(ValueError):  # a line cut short by a kill
                    records.append(json.loads(line))
        return records


def precise_stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def rows_from_logs(out: Path, manifest_path: str, manifest_rows: str) -> dict[str, dict[str, Any]]:
    """What every worker's log says of each row, for a run Redis lost: the last word on each row wins, and a
    row claimed or sent without an answer is `uncertain` (its request may have reached the API).

    Words are ordered by their writers' clocks: two workers write of one row a lease apart at least (one takes
    it over from the other), so clocks less than a lease apart keep the order. Only the logs of workers of this
    manifest's run count (the same file, or the same rows): another run may have shared `OUT`."""
    records: list[dict[str, Any]] = []
    for path in sorted((out / LOG_FOLDER).glob("*.jsonl")):
        log = WorkerLog.read(out, path.stem)
        if log and (log[0].get("manifest_path") == manifest_path or log[0].get("manifest_rows") == manifest_rows):
            records.extend(log)
    records.sort(key=lambda record: str(record.get("at", "")))
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        key = record.get("key")
        if not isinstance(key, str):
            continue
        row = rows.setdefault(key, {"state": "todo"})
        if record.get("fingerprint"):
            row["fingerprint"] = record["fingerprint"]
        if record.get("op") in ("claimed", "sending"):
            row.update(state="uncertain", reason="Redis lost the run while this row's submission may have been sent")
            row.pop("task_id", None)
            row.update(row_fields(record))  # the token and time of a submission sent
        elif record.get("state"):
            row["state"] = record["state"]
            row.update(row_fields(record))
            if record["state"] == "todo":
                row.pop("task_id", None)
    return {key: row for key, row in rows.items() if row["state"] != "todo" or "task_id" in row}


def row_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record[name] for name in ROW_FIELDS if name in record}

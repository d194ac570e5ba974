"""The journal's row transitions, one table for both journals (`SQLiteJournal`, `RedisJournal`).

Each record a run makes of a row (`reset`, `submitted`, `succeeded`...) is one `Transition`: the state it
sets, the fields the caller gives (`sets`; `sets_if_given`: only when not None), the fields it empties
(`clears`), and whether the row's claim ends with it (`ends`: a shared run frees the row for the others).
`changes()` turns a record and its arguments into the state and the field values to write (None: empty
the field). The SQLite journal writes them as columns; the Redis journal sends them to its `RECORD` script
as data (`set` and `unset`), which applies them as given: neither journal has rules of its own.

The rule for "the same manifest" is here too: a journal belongs to one manifest, the same file (even edited)
or the same rows (moved); `JOIN` (cli/redis_scripts.py) keeps the Lua copy of `same_manifest`, which a test
holds to this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

State = Literal["todo", "submitting", "submitted", "succeeded", "failed", "uncertain"]
#: A row's fields besides its key, line and state, as both journals keep them.
#: `webhook_token` and `sent_at` (wall-clock seconds) are a submission's, written before it is sent: with
#: webhooks on, a resumed run matches a late delivery by its token; `likely_created` is an uncertain row's
#: verdict (False: judged not created; None: unknown).
FIELDS: Final = (
    "fingerprint",
    "task_id",
    "file",
    "size",
    "sha256",
    "reason",
    "webhook_token",
    "sent_at",
    "likely_created",
)
Record = Literal["reset", "submitting", "submitted", "succeeded", "refetch", "not_downloaded", "failed", "uncertain"]


@attrs.frozen
class Transition:
    state: State
    sets: tuple[str, ...] = ()
    sets_if_given: tuple[str, ...] = ()
    clears: tuple[str, ...] = ()
    ends: bool = False


TRANSITIONS: Final[Mapping[Record, Transition]] = {
    # Start again from `todo` (a changed row never paid for, one the user retries, one the API refused).
    "reset": Transition(
        "todo",
        sets=("fingerprint",),
        clears=("task_id", "reason", "webhook_token", "sent_at", "likely_created"),
        ends=True,
    ),
    # Written (and synced) before the request goes out, with the token its webhook URL carries (or None).
    "submitting": Transition("submitting", sets=("webhook_token", "sent_at")),
    # The task id: from the answer, or from a webhook delivery naming the submission's token.
    "submitted": Transition("submitted", sets=("task_id",), clears=("likely_created",)),
    "succeeded": Transition("succeeded", sets=("file", "size", "sha256"), clears=("reason",), ends=True),
    # A succeeded row whose file is gone or changed: back to `submitted`, to fetch its video again.
    "refetch": Transition("submitted", sets=("reason",), clears=("file", "size", "sha256")),
    # A submitted row whose video could not be fetched this time (the task is still ours).
    "not_downloaded": Transition("submitted", sets=("reason",), ends=True),
    "failed": Transition("failed", sets=("reason",), sets_if_given=("task_id",), ends=True),
    "uncertain": Transition("uncertain", sets=("reason", "likely_created"), ends=True),
}


def changes(record: Record, **given: Any) -> tuple[State, dict[str, Any]]:
    """The state `record` sets and the fields it writes (None: emptied), from the caller's arguments."""
    transition = TRANSITIONS[record]
    expected = set(transition.sets) | set(transition.sets_if_given)
    if set(given) != expected:
        raise TypeError(f"{record} takes {sorted(expected)}, not {sorted(given)}")
    fields: dict[str, Any] = {name: given[name] for name in transition.sets}
    fields.update((name, given[name]) for name in transition.sets_if_given if given[name] is not None)
    fields.update(dict.fromkeys(transition.clears))
    return transition.state, fields


def same_manifest(known_path: str | None, known_rows: str | None, path: str, rows: str) -> bool:
    """Whether a journal that knows (`known_path`, `known_rows`) belongs to this manifest: a new journal does,
    and so does the same file (even edited) or the same rows (the file moved)."""
    return known_path is None or known_path == path or known_rows == rows


def another_manifest(journal: str, known_path: str, *, hint: str) -> str:
    """The one message refusing a journal of another manifest."""
    return f"the journal {journal} belongs to another manifest ({known_path}); nothing was sent ({hint})"

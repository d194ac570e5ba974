"""Reading a bulk run's manifest (JSON Lines or CSV) into checked requests, or into a list of every bad line.

Each row holds the fields of `ImageToVideo` plus an optional `id` that names the output file (`<id>.mp4`,
else the row number), and an optional `extra`: a JSON object (in CSV, a cell holding one) of fields this
library does not know, sent as `ImageToVideo(extra_body=...)`. `image` is an `http(s)://` URL or a path
relative to the manifest. Every row is checked before anything is submitted, and all problems are reported
at once, each with its line number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._exceptions import InvalidRequestError
from ._models import ImageToVideo

FIELDS = ("id", "prompt", "image", "resolution", "negative_prompt", "fast_mode", "style", "seed", "extra")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}


class ManifestError(ValueError):
    """A manifest that cannot be run; `problems` lists every bad line ("line 4: prompt: ...")."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


@attrs.frozen
class ManifestRow:
    """One checked row: `key` names its output file and its journal entry; `fingerprint` its content."""

    line: int
    key: str
    request: ImageToVideo
    fingerprint: str

    @property
    def file_name(self) -> str:
        return f"{self.key}.mp4"


def read_manifest(path: Path) -> list[ManifestRow]:
    """Parse and check every row of `path`; raise `ManifestError` listing all bad lines."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise ManifestError(path, [f"unknown manifest type {suffix or '(none)'!r}: use .jsonl or .csv"])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(path, [f"cannot read the manifest: {error}"]) from None
    problems: list[str] = []
    rows: list[ManifestRow] = []
    seen_keys: dict[str, int] = {}
    raw_rows = _jsonl_rows(text, problems) if suffix != ".csv" else _csv_rows(text, problems)
    for number, (line, fields) in enumerate(raw_rows, start=1):
        try:
            row = _check_row(line, number, fields, path.parent)
        except InvalidRequestError as error:
            problems.append(f"line {line}: {error}")
            continue
        if row.key in seen_keys:
            problems.append(f"line {line}: id {row.key!r} is already used on line {seen_keys[row.key]}")
            continue
        seen_keys[row.key] = line
        rows.append(row)
    if not rows and not problems:
        problems.append("the manifest has no rows")
    if problems:
        raise ManifestError(path, problems)
    return rows


def _jsonl_rows(text: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            fields = json.loads(content)
        except ValueError as error:
            problems.append(f"line {line}: not valid JSON ({error.args[0]})")
            continue
        if not isinstance(fields, dict):
            problems.append(f"line {line}: must be a JSON object, not {type(fields).__name__}")
            continue
        yield line, fields


def _csv_rows(text: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        return
    for fields in reader:
        if None in fields:
            problems.append(f"line {reader.line_num}: more cells than columns")
            continue
        # Empty cells mean "not given", so that optional columns may be left blank.
        yield reader.line_num, {name: value for name, value in fields.items() if value != ""}


def _check_row(line: int, number: int, fields: Mapping[str, Any], base: Path) -> ManifestRow:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        allowed = ", ".join(FIELDS)
        raise InvalidRequestError("columns", f"unknown {', '.join(map(repr, unknown))} (allowed: {allowed})")
    key = _output_key(fields.get("id"), number)
    image = fields.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidRequestError("image", "is required: an http(s):// URL or a path relative to the manifest")
    if not image.startswith(("http://", "https://", "data:")):
        image_value: str | Path = base / image
    else:
        image_value = image
    if "prompt" not in fields:
        raise InvalidRequestError("prompt", "is required")
    request = ImageToVideo(
        fields["prompt"],
        image_value,
        resolution=fields.get("resolution", "540p"),
        negative_prompt=fields.get("negative_prompt"),
        fast_mode=_flag(fields.get("fast_mode", False)),
        style=fields.get("style"),
        seed=_integer(fields.get("seed")),
        extra_body=_json_object(fields.get("extra")),
    )
    fingerprint = hashlib.sha256(json.dumps(dict(fields), sort_keys=True, default=str).encode()).hexdigest()
    return ManifestRow(line=line, key=key, request=request, fingerprint=fingerprint)


def _output_key(value: object, number: int) -> str:
    if value is None:
        return str(number)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _SAFE_ID.fullmatch(value) or ".." in value:
        raise InvalidRequestError(
            "id", f"{value!r} cannot name a file: use letters, digits, '.', '_' and '-' (no '/', no '..')"
        )
    return value


# Both return Any on purpose: the value goes on to ImageToVideo, whose checks report a wrong one.
def _flag(value: object) -> Any:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return value  # ImageToVideo reports anything else


def _json_object(value: object) -> Any:
    """The `extra` column: a JSON object (in CSV, a cell holding one), merged into the request body."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise InvalidRequestError(
                "extra", f"a CSV cell of extra must hold a JSON object ({error.args[0]})"
            ) from None
    if value is not None and not isinstance(value, dict):
        raise InvalidRequestError("extra", f"must be a JSON object of extra request fields, not {value!r}")
    return value


def _integer(value: object) -> Any:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value
    return value

"""Reading a bulk run's manifest (JSON Lines or CSV) into checked requests, or into a list of every bad line.

Each row holds the fields of `ImageToVideo` plus an optional `id` that names the output file (`<id>.mp4`,
else the row number), and an optional `extra`: a JSON object (in CSV, a cell holding one) of fields this
library does not know, sent as `ImageToVideo(extra_body=...)`. `image` is an `http(s)://` URL or a path
relative to the manifest. A row without an image (no key, null, an empty cell) is a text-to-video job
(`TextToVideo`), which takes an `aspect_ratio` (16:9 by default); a row with both is refused, since an image
job's frame sets its aspect ratio. Every row is checked before anything is submitted, and all problems are
reported at once, each with its line number.

Each format is read by its own rules: CSV by the `csv` module (a quoted cell may hold line breaks; a row's line
is the line its record starts on), JSON Lines split on "\n" alone (a "\r" before it is dropped), so that a
string may hold U+2028 and other Unicode line breaks. Values are taken as the format writes them: JSON values
go to `ImageToVideo` as they are (a seed is a JSON integer, fast_mode a JSON boolean), and CSV cells, which are
all text, are read by one written rule each (`_seed_cell`, `_flag_cell`).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._convert import RequestReader
from .._exceptions import InvalidRequestError
from .._images import MAX_IMAGE_BYTES, has_url_scheme
from .._models import ImageToVideo, TextToVideo

FIELDS = (
    "id",
    "prompt",
    "image",
    "aspect_ratio",
    "resolution",
    "negative_prompt",
    "fast_mode",
    "style",
    "seed",
    "extra",
)
#: What starts the fingerprint of a text-to-video row (see `row_kind`).
TEXT_FINGERPRINT_PREFIX = "text:"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGITS = re.compile(r"[0-9]+")
# The largest cell a valid row can need: a data URI of the largest image the API takes, with room to spare.
MAX_CELL_CHARS = len("data:image/jpeg;base64,") + 4 * -(-MAX_IMAGE_BYTES // 3) + 4096
_CSV_LIMIT_LOCK = threading.Lock()  # csv.field_size_limit is process-wide: one reader at a time changes it


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
    request: ImageToVideo | TextToVideo
    fingerprint: str

    @property
    def file_name(self) -> str:
        return f"{self.key}.mp4"


def row_kind(fingerprint: str) -> str:
    """`text` or `image`: the kind of job of the row whose fingerprint (in a manifest or a journal) this is."""
    return "text" if fingerprint.startswith(TEXT_FINGERPRINT_PREFIX) else "image"


def read_manifest(path: Path) -> list[ManifestRow]:
    """Parse and check every row of `path`; raise `ManifestError` listing all bad lines."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise ManifestError(path, [f"unknown manifest type {suffix or '(none)'!r}: use .jsonl or .csv"])
    text = _read_text(path)
    problems: list[str] = []
    rows: list[ManifestRow] = []
    seen_keys: dict[str, int] = {}
    raw_rows = _jsonl_rows(text, problems) if suffix != ".csv" else _csv_rows(text, problems)
    for number, (line, fields) in enumerate(raw_rows, start=1):
        try:
            row = _check_row(line, number, fields, path.parent, from_csv=suffix == ".csv")
        except InvalidRequestError as error:
            problems.append(f"line {line}: {error}")
            continue
        except ExceptionGroup as errors:  # every field's problem
            problems.extend(f"line {line}: {error}" for error in errors.exceptions)
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


def _read_text(path: Path) -> str:
    try:
        if path.exists() and not path.is_file():  # a FIFO or a device would hang or never end
            raise ManifestError(path, ["cannot read the manifest: not a regular file"])
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as error:
        raise ManifestError(path, [f"cannot read the manifest: {error.strerror or error}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        bad = data[error.start : error.start + 1]
        raise ManifestError(path, [f"line {line}: not UTF-8 text (byte 0x{bad.hex()})"]) from None


def _jsonl_rows(text: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, content in enumerate(text.split("\n"), start=1):
        if not content.strip(" \t\r"):  # JSON's own whitespace; anything else must parse
            continue
        try:
            fields = json.loads(content, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constant)
        except json.JSONDecodeError as error:
            problems.append(f"line {line}: not valid JSON ({error.msg} at column {error.colno})")
            continue
        except ValueError as error:  # a duplicate key, NaN, an integer of too many digits
            problems.append(f"line {line}: not valid JSON ({error})")
            continue
        except RecursionError:
            problems.append(f"line {line}: not valid JSON (nested too deeply)")
            continue
        if not isinstance(fields, dict):
            problems.append(f"line {line}: must be a JSON object, not {_json_type(fields)}")
            continue
        # null means "not given", like an empty cell in CSV.
        yield line, {name: value for name, value in fields.items() if value is not None}


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        names = [name for name, _ in pairs]
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"the key {duplicate!r} appears more than once")
    return fields


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _csv_rows(text: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    records, broken = _csv_records(text)
    header: list[str] | None = None
    for line, cells in records:
        if header is None:
            header = cells
            problems.extend(f"line {line}: {problem}" for problem in _header_problems(header))
            continue
        if len(cells) != len(header):
            which = "more" if len(cells) > len(header) else "fewer"
            problems.append(f"line {line}: {which} cells ({len(cells)}) than columns ({len(header)})")
            continue
        # Empty cells mean "not given", so that optional columns may be left blank.
        yield line, {name: value for name, value in zip(header, cells, strict=True) if value != ""}
    if broken is not None:
        problems.append(broken)


def _csv_records(text: str) -> tuple[list[tuple[int, list[str]]], str | None]:
    """The non-blank records, each with the line it starts on, and the problem that stopped the reading."""
    # newline="" leaves line breaks to the csv module, which alone knows which ones are inside a quoted cell.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    end = 0
    with _CSV_LIMIT_LOCK:
        previous_limit = csv.field_size_limit(MAX_CELL_CHARS)
        try:
            while True:
                start = end + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return records, None
                except csv.Error as error:
                    return records, f"line {start}: {_csv_problem(error)}; the rest of the file was not read"
                end = reader.line_num
                if any(cells):  # blank lines and rows of empty cells (a spreadsheet's trailing rows) are skipped
                    records.append((start, cells))
        finally:
            csv.field_size_limit(previous_limit)


def _csv_problem(error: csv.Error) -> str:
    if "field limit" in str(error):
        return f"a cell is longer than {MAX_CELL_CHARS} characters, more than a data URI of a 10 MB image"
    return f"not valid CSV ({error})"


def _header_problems(header: list[str]) -> Iterator[str]:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            yield f"the column {name!r} appears more than once in the header"
        seen.add(name)


def _check_row(line: int, number: int, fields: Mapping[str, Any], base: Path, *, from_csv: bool) -> ManifestRow:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        allowed = ", ".join(FIELDS)
        raise InvalidRequestError("columns", f"unknown {', '.join(map(repr, unknown))} (allowed: {allowed})")
    key = _output_key(fields.get("id"), number)
    values = {name: value for name, value in fields.items() if name != "id"}
    # A value with a URL scheme (ftp:, file:, HTTPS:...) goes to ImageToVideo as it is, which names what is
    # wrong with it; anything else is a path relative to the manifest.
    image = fields.get("image")
    if image is None:
        request = (_CSV_TEXT_REQUESTS if from_csv else _JSON_TEXT_REQUESTS).read(values)
    else:
        if "aspect_ratio" in fields:
            raise InvalidRequestError(
                "aspect_ratio",
                "a row with an image is an image-to-video job, whose frame sets the aspect ratio: leave out one of"
                " image (for a text-to-video job) and aspect_ratio",
            )
        if isinstance(image, str) and image.strip() and not has_url_scheme(image):
            values["image"] = base / image
        request = (_CSV_REQUESTS if from_csv else _JSON_REQUESTS).read(values)
    fingerprint = hashlib.sha256(json.dumps(dict(fields), sort_keys=True, default=str).encode()).hexdigest()
    if isinstance(request, TextToVideo):
        # The kind travels with the row through every journal (SQLite or Redis) without a column of its own;
        # image rows keep the fingerprints earlier journals hold.
        fingerprint = TEXT_FINGERPRINT_PREFIX + fingerprint
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


def _flag_cell(cell: str | None) -> bool:
    """A CSV flag: `true` or `false` in any case; an empty cell (None here) is false. Nothing else (no 1/yes)."""
    if cell is None:
        return False
    if cell.isascii() and cell.lower() in ("true", "false"):
        return cell.lower() == "true"
    raise InvalidRequestError("fast_mode", f"{cell!r} is not true or false (an empty cell means false)")


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


def _seed_cell(cell: str | None) -> int | None:
    """A CSV seed: the digits 0-9 and nothing else (no sign, space, '_' or other scripts' digits)."""
    if cell is None:
        return None
    if not _DIGITS.fullmatch(cell):
        raise InvalidRequestError("seed", f"{cell!r} is not a whole number written in the digits 0-9")
    return int(cell)


def _image_cell(value: object) -> object:
    """The `image` column: a URL, or a path already made relative to the manifest."""
    if isinstance(value, Path) or (isinstance(value, str) and value.strip()):
        return value
    raise InvalidRequestError("image", _IMAGE_REQUIRED)


_IMAGE_REQUIRED = "is required: an http(s):// URL or a path relative to the manifest"
_REQUIRED = {"prompt": "is required", "image": _IMAGE_REQUIRED}
_COLUMNS = {"extra_body": "extra"}
# JSON values go to ImageToVideo as they are; CSV cells, all text, are read by one written rule each.
_JSON_REQUESTS = RequestReader({"image": _image_cell, "extra_body": _json_object}, required=_REQUIRED, columns=_COLUMNS)
_CSV_REQUESTS = RequestReader(
    {"image": _image_cell, "fast_mode": _flag_cell, "seed": _seed_cell, "extra_body": _json_object},
    required=_REQUIRED,
    columns=_COLUMNS,
)
_JSON_TEXT_REQUESTS = RequestReader({"extra_body": _json_object}, required=_REQUIRED, columns=_COLUMNS, text=True)
_CSV_TEXT_REQUESTS = RequestReader(
    {"fast_mode": _flag_cell, "seed": _seed_cell, "extra_body": _json_object},
    required=_REQUIRED,
    columns=_COLUMNS,
    text=True,
)

"""Manifests read by each format's own rules, one written rule per value, and nothing but `ManifestError`.

The behaviour is proven through the real command against the simulator (what was sent, what was refused and
on which line); the fuzz tests run the reader alone, which sends nothing by construction.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixverse_async import ImageToVideo, TextToVideo
from pixverse_async.cli.manifest import MAX_CELL_CHARS, ManifestError, ManifestRow, read_manifest
from pixverse_async.testing import Simulator
from tests.cli.test_cli import SCALE, cli, plan
from tests.images import png

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_keys=("sk-test",), time_scale=SCALE, plan=plan, seed=5) as simulator:
        yield simulator


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows(rows)  # "\r\n" between records, as spreadsheets write them
    return path


def sent_prompts(sim: Simulator) -> set[str]:
    return {task.prompt for task in sim.tasks.values()}


def problem_lines(stderr: str) -> dict[int, str]:
    """The manifest error's problems by line number (each problem is one line of the message)."""
    lines: dict[int, str] = {}
    for text in stderr.splitlines():
        head, _, rest = text.strip().partition(": ")
        if head.startswith("line ") and head[5:].isdigit():
            lines[int(head[5:])] = rest
    return lines


async def test_csv_keeps_newlines_inside_quoted_cells(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    manifest = write_csv(
        tmp_path / "jobs.csv",
        [
            ["id", "prompt", "image"],
            ["two", "line one\nline two", "a.png"],
            ["three", "one\r\ntwo\n\nthree", "a.png"],
            ["plain", "no breaks", "a.png"],
        ],
    )
    done = await cli("run", str(manifest), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sent_prompts(sim) == {"line one\nline two", "one\r\ntwo\n\nthree", "no breaks"}


async def test_csv_problems_name_the_line_their_record_starts_on(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    manifest = write_csv(
        tmp_path / "jobs.csv",
        [
            ["id", "prompt", "image", "resolution"],  # line 1
            ["a", "first\nsecond\nthird", "a.png", ""],  # lines 2-4
            ["b", "fine", "a.png", "4k"],  # line 5
            ["c", "x\ny", "missing.png", ""],  # lines 6-7
            ["d", "fine", "a.png", ""],  # line 8
            ["e", "fine", "a.png", "", "extra"],  # line 9
        ],
    )
    done = await cli("run", str(manifest), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 2
    problems = problem_lines(done.stderr)
    assert sorted(problems) == [5, 6, 9], done.stderr
    assert "resolution" in problems[5] and "no such file" in problems[6] and "more cells" in problems[9]
    assert sim.counters.submit_requests == 0


async def test_jsonl_strings_may_hold_unicode_line_breaks(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    prompts = ["one\u2028two", "para\u2029graph", "tab\tand\nnewline"]
    lines = [json.dumps({"prompt": p, "image": "a.png"}, ensure_ascii=False) for p in prompts]
    (tmp_path / "jobs.jsonl").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    done = await cli("run", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sent_prompts(sim) == set(prompts)


async def test_jsonl_line_numbers_count_only_line_feeds(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    good = json.dumps({"prompt": "a\u2028b\u2029c\u0085", "image": "a.png"}, ensure_ascii=False)
    bad = json.dumps({"prompt": "d\u2028e", "image": "a.png", "resolution": "4k"}, ensure_ascii=False)
    (tmp_path / "jobs.jsonl").write_text(f"{bad}\n{good}\n\n{bad}\r\n", encoding="utf-8")
    done = await cli("run", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 2
    problems = problem_lines(done.stderr)
    # Line 2's prompt holds U+0085, a control character: refused too, on its own line.
    assert sorted(problems) == [1, 2, 4], done.stderr
    assert "resolution" in problems[1] and "U+0085" in problems[2] and "resolution" in problems[4]
    assert sim.counters.submit_requests == 0


async def test_a_data_uri_cell_beyond_the_csv_modules_default_limit_is_read(sim: Simulator, tmp_path: Path) -> None:
    image = png(pad_to=400_000)
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    assert len(uri) > csv.field_size_limit()
    manifest = write_csv(tmp_path / "jobs.csv", [["id", "prompt", "image"], ["big", "a fox", uri]])
    done = await cli("run", str(manifest), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 0, done.stdout + done.stderr
    (task,) = sim.tasks.values()
    assert task.image.format == "png" and task.image.byte_size == len(image)


async def test_a_cell_larger_than_any_image_is_refused_naming_its_line(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    huge = "data:image/png;base64," + "A" * MAX_CELL_CHARS
    manifest = write_csv(
        tmp_path / "jobs.csv", [["id", "prompt", "image"], ["a", "fine", "a.png"], ["b", "huge", huge]]
    )
    done = await cli("run", str(manifest), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "_csv" not in done.stderr
    assert "a cell is longer than" in problem_lines(done.stderr)[3]
    assert sim.counters.submit_requests == 0


def test_the_csv_modules_limit_is_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    before = csv.field_size_limit()
    write_csv(tmp_path / "jobs.csv", [["prompt", "image"], ["p", "a.png"]])
    read_manifest(tmp_path / "jobs.csv")
    assert csv.field_size_limit() == before


async def test_values_are_refused_unless_written_by_their_rule(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    row = '"prompt": "p", "image": "a.png"'
    jsonl_rows = [
        "{" + row + ', "seed": "12"}',  # line 1: a seed is a JSON integer, not a string
        "{" + row + ', "seed": true}',
        "{" + row + ', "seed": 12.0}',
        "{" + row + ', "fast_mode": 1}',  # line 4: fast_mode is a JSON boolean
        "{" + row + ', "fast_mode": "true"}',
        '{"prompt": "a", "prompt": "b", "image": "a.png"}',  # line 6: duplicate key
        '{"prompt": "\\u200b\\u00a0", "image": "a.png"}',  # invisible only
        '{"prompt": "a\\u0000b", "image": "a.png"}',  # NUL
        '{"prompt": "half \\ud83d", "image": "a.png"}',  # lone surrogate
        '{"prompt": "p", "negative_prompt": "\\u2060", "image": "a.png"}',
        "{" + row + ', "seed": NaN}',
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(jsonl_rows) + "\n")
    done = await cli("run", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 2
    problems = problem_lines(done.stderr)
    assert sorted(problems) == list(range(1, 12)), done.stderr
    assert all("seed" in problems[line] for line in (1, 2, 3)) and "fast_mode" in problems[4] + problems[5]
    assert "'prompt' appears more than once" in problems[6] and "invisible" in problems[7]
    assert "U+0000" in problems[8] and "U+D83D" in problems[9] and "negative_prompt" in problems[10]
    assert "NaN" in problems[11]

    header = ["id", "prompt", "image", "seed", "fast_mode"]
    cells = [["1_000", ""], ["\u0663", ""], [" 12", ""], ["+12", ""], ["", "1"], ["", "yes"], ["", " true"]]
    write_csv(tmp_path / "jobs.csv", [header] + [[f"r{i}", "p", "a.png", *c] for i, c in enumerate(cells)])
    done = await cli("run", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 2
    problems = problem_lines(done.stderr)
    assert sorted(problems) == list(range(2, 9)), done.stderr
    assert all("seed" in problems[line] and "digits 0-9" in problems[line] for line in (2, 3, 4, 5))
    assert all("fast_mode" in problems[line] and "true or false" in problems[line] for line in (6, 7, 8))
    assert sim.counters.submit_requests == 0


async def test_values_written_by_their_rule_are_sent_as_such(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    header = ["id", "prompt", "image", "seed", "fast_mode"]
    rows = [
        ["up", "upper", "a.png", "12", "TRUE"],
        ["off", "empty", "a.png", "0007", ""],
        ["f", "f", "a.png", "", "False"],
    ]
    write_csv(tmp_path / "jobs.csv", [header, *rows])
    done = await cli("run", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 0, done.stdout + done.stderr
    sent = {task.prompt: task.request for task in sim.tasks.values()}
    assert sent["upper"]["seed"] == 12 and sent["upper"]["fast_mode"] is True
    assert sent["empty"]["seed"] == 7 and sent["empty"].get("fast_mode", False) is False
    assert "seed" not in sent["f"] and sent["f"].get("fast_mode", False) is False


# --- Fuzz: the reader raises nothing but ManifestError, whatever the file holds. ---

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELD_NAMES = ["id", "prompt", "image", "resolution", "negative_prompt", "fast_mode", "style", "seed", "colour", ""]
# Image values stay away from absolute paths, NUL and malformed URLs: those are the image checks' own cases.
IMAGES = ["a.png", "missing.png", "https://example.com/a.png", "data:image/png;base64,AAAA", "", "..", "sub/"]
ODD_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["12", "true", "720p", "anime", "1_000", "\u0663", "\x00", "\ud800"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
CELLS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(['"', '""', '"open', 'close"', 'a"b', ",", "\r\n", *ODD_BREAKS, *IMAGES]),
    st.integers(0, 200_000).map(lambda n: "x" * n),
)


def check_reader(directory: Path, name: str, content: bytes) -> None:
    (directory / name).write_bytes(content)
    limit = csv.field_size_limit()
    try:
        rows = read_manifest(directory / name)
    except ManifestError as error:
        assert error.problems and all(isinstance(problem, str) for problem in error.problems)
    else:
        assert rows and all(isinstance(row, ManifestRow) for row in rows)
    assert csv.field_size_limit() == limit


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        (directory / "a.png").write_bytes(png())
        yield directory


@FUZZ
@given(content=st.binary(max_size=2000), name=st.sampled_from(["m.jsonl", "m.csv"]))
def test_random_bytes_raise_only_manifest_errors(fuzz_dir: Path, content: bytes, name: str) -> None:
    check_reader(fuzz_dir, name, content)


@st.composite
def near_miss_jsonl(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        row = {"prompt": draw(st.sampled_from(["a fox", "", " ", "\u200b"])), "image": draw(st.sampled_from(IMAGES))}
        row.update(draw(st.dictionaries(st.sampled_from(FIELD_NAMES), JSON_VALUES, max_size=4)))
        text = json.dumps(row, ensure_ascii=draw(st.booleans()))
        mutation = draw(st.sampled_from(["none", "truncate", "duplicate", "break", "nest", "not an object"]))
        if mutation == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif mutation == "duplicate":
            text = text[:-1] + ', "prompt": "again"}'
        elif mutation == "break":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(ODD_BREAKS)) + text[at:]
        elif mutation == "nest":
            depth = draw(st.integers(1, 3000))  # beyond the interpreter's recursion limit
            text = "[" * depth + "]" * depth
        elif mutation == "not an object":
            text = json.dumps(draw(JSON_VALUES))
        lines.append(text)
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines).encode("utf-8", "surrogatepass")


@st.composite
def near_miss_csv(draw: st.DrawFn) -> bytes:
    header = draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=1, max_size=6))
    rows = [header]
    for _ in range(draw(st.integers(0, 5))):
        width = len(header) + draw(st.integers(-1, 1))
        rows.append([draw(CELLS) for _ in range(max(width, 0))])
    text = "\r\n".join(",".join(cell for cell in row) for row in rows)
    if draw(st.booleans()):  # a writer's quoting, so the cells' quotes and breaks are data, not structure
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows(rows)
        text = buffer.getvalue()
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(content=near_miss_jsonl())
def test_near_miss_json_lines_raise_only_manifest_errors(fuzz_dir: Path, content: bytes) -> None:
    check_reader(fuzz_dir, "m.jsonl", content)


@FUZZ
@given(content=near_miss_csv())
def test_near_miss_csv_raises_only_manifest_errors(fuzz_dir: Path, content: bytes) -> None:
    check_reader(fuzz_dir, "m.csv", content)


@pytest.mark.parametrize(
    ("image", "named"),
    [("ftp://example.com/a.png", "'ftp'"), ("file:///etc/passwd", "'file'"), ("javascript:alert(1)", "'javascript'")],
)
async def test_an_image_with_another_url_scheme_is_named_as_such_not_as_a_missing_file(
    sim: Simulator, tmp_path: Path, image: str, named: str
) -> None:
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"prompt": "a fox", "image": image}) + "\n", encoding="utf-8")
    result = await cli("run", str(manifest), "--out", str(tmp_path / "out"), sim=sim)
    assert result.returncode == 2 and f"unsupported URL scheme {named}" in result.stderr, result.stderr
    assert "no such file" not in result.stderr.lower() and sim.counters.submit_requests == 0


def test_rows_without_an_image_are_text_jobs_and_a_row_with_both_is_refused_by_line(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    rows = [
        {"id": "t", "prompt": "a lighthouse", "aspect_ratio": "9:16", "seed": 3},
        {"id": "d", "prompt": "a lighthouse", "image": None},
        {"id": "i", "prompt": "a cat", "image": "a.png"},
    ]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    text, default, image = (row.request for row in read_manifest(manifest))
    assert text == TextToVideo("a lighthouse", "9:16", seed=3)
    assert default == TextToVideo("a lighthouse")
    assert isinstance(image, ImageToVideo)

    csv_manifest = write_csv(
        tmp_path / "jobs.csv",
        [
            ["prompt", "image", "aspect_ratio"],
            ["a lighthouse", "", "1:1"],
            ["a cat", "a.png", ""],
            ["x", "a.png", "4:3"],
        ],
    )
    with pytest.raises(ManifestError) as caught:
        read_manifest(csv_manifest)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("line 4: aspect_ratio: a row with an image is an image-to-video job")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "aspect_ratio": "2:1"}) + "\n")
    with pytest.raises(ManifestError, match=r"line 1: aspect_ratio: '2:1' is not one of 16:9"):
        read_manifest(bad)

"""Every rule of the API, checked when an `ImageToVideo` is built, at and beyond its boundary."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixverse_async import ImageToVideo, InvalidRequestError
from tests.images import jpeg, png

URL = "https://example.com/frame.png"


def rejected(field: str, **kwargs: object) -> InvalidRequestError:
    kwargs.setdefault("prompt", "a cat surfing")
    kwargs.setdefault("image", URL)
    with pytest.raises(InvalidRequestError) as caught:
        ImageToVideo(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    return caught.value


def test_defaults_and_repr(tmp_path: Path) -> None:
    request = ImageToVideo("a cat surfing", URL)
    assert (request.resolution, request.fast_mode, request.style, request.seed) == ("540p", False, None, None)
    assert repr(request) == (
        "ImageToVideo(prompt='a cat surfing', image='https://example.com/frame.png', resolution='540p', "
        "negative_prompt=None, fast_mode=False, style=None, seed=None, extra_body=None)"
    )
    # Image data never goes into a repr (it ends up in logs and errors), only its size; a path is shown as is.
    image = png()
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    assert repr(ImageToVideo("p", image, seed=7)) == (
        f"ImageToVideo(prompt='p', image=<{len(image)} bytes>, resolution='540p', negative_prompt=None, "
        "fast_mode=False, style=None, seed=7, extra_body=None)"
    )
    assert f"image=<data URI, {len(uri)} chars>," in repr(ImageToVideo("p", uri))
    frame = tmp_path / "frame.png"
    frame.write_bytes(image)
    assert repr(ImageToVideo("p", frame, extra_body={"x": 1})) == (
        f"ImageToVideo(prompt='p', image={frame!r}, resolution='540p', negative_prompt=None, fast_mode=False, "
        "style=None, seed=None, extra_body={'x': 1})"
    )


# Text as people write it: no control characters but tab, CR and LF, and no lone surrogates.
PROMPT_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")) | st.sampled_from("\t\n\r"), max_size=2048)
VISIBLE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")).filter(lambda c: not c.isspace())


@given(PROMPT_TEXT, VISIBLE, PROMPT_TEXT)
def test_any_prompt_that_shows_something_up_to_2048_chars_is_accepted(head: str, visible: str, tail: str) -> None:
    prompt = head[:1000] + visible + tail[:1000]
    assert ImageToVideo(prompt, URL).prompt == prompt
    assert ImageToVideo("p", URL, negative_prompt=prompt).negative_prompt == prompt


@pytest.mark.parametrize(
    "text",
    [
        *["", " ", "\t\n\r", "\u200b", "\u2028\u2029", "\u00a0\u3000", "\ufeff\u200d\u2060", " \u200b \u00ad"],
        # Combining marks with nothing to mark (nonspacing, spacing, enclosing; a variation selector).
        *["\u0301", "\u0301\u0308\u0323" * 50, " \u20dd ", "\u093e", "\ufe0f\u200d"],
        *["\u3164", "\u115f\u1160", "\uffa0", "\u2800 \u2800"],  # Hangul fillers, the blank Braille pattern
    ],
)
def test_prompts_of_only_blank_or_invisible_characters_are_refused(text: str) -> None:
    assert "blank or invisible" in str(rejected("prompt", prompt=text))
    assert "blank or invisible" in str(rejected("negative_prompt", negative_prompt=text))


@pytest.mark.parametrize("text", ["e\u0301", "\u0915\u093e", "\u2764\ufe0f", "\u3164a", "\u0301x"])
def test_marks_and_fillers_beside_something_visible_are_a_prompt(text: str) -> None:
    assert ImageToVideo(text, URL).prompt == text


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("a cat\x00", "U+0000 at position 5: a control character"),
        ("\x1b[31mred", "U+001B at position 0"),
        ("bell\x07", "U+0007"),
        ("del\x7f", "U+007F"),
        ("c1 \x85", "U+0085"),
        ("half \ud83d pair", "U+D83D at position 5: a lone surrogate"),
        ("\udfff", "U+DFFF"),
    ],
)
def test_prompts_with_control_characters_or_lone_surrogates_are_refused(text: str, named: str) -> None:
    assert named in str(rejected("prompt", prompt=text))
    assert named in str(rejected("negative_prompt", negative_prompt=text))


@given(PROMPT_TEXT, st.characters(categories=("Cc", "Cs")).filter(lambda c: c not in "\t\n\r"), PROMPT_TEXT)
def test_any_prompt_holding_a_forbidden_character_is_refused(head: str, bad: str, tail: str) -> None:
    prompt = head[:1000] + bad + tail[:1000]
    assert f"U+{ord(bad):04X}" in str(rejected("prompt", prompt=prompt))


@pytest.mark.parametrize("prompt", ["", "   \n", "x" * 2049, "x" * 10_000])
def test_empty_blank_or_long_prompts_are_rejected(prompt: str) -> None:
    error = rejected("prompt", prompt=prompt)
    assert "2048" in str(error)


def test_prompt_must_be_a_string() -> None:
    rejected("prompt", prompt=42)


def test_negative_prompt_bounds() -> None:
    assert ImageToVideo("p", URL, negative_prompt="x" * 2048).negative_prompt == "x" * 2048
    assert "None for no negative prompt" in str(rejected("negative_prompt", negative_prompt=""))
    assert "2048" in str(rejected("negative_prompt", negative_prompt="x" * 2049))
    rejected("negative_prompt", negative_prompt=b"bytes")


@pytest.mark.parametrize("resolution", ["360p", "540p", "720p", "1080p"])
def test_every_resolution_is_accepted_without_fast_mode(resolution: str) -> None:
    assert ImageToVideo("p", URL, resolution=resolution).resolution == resolution  # type: ignore[arg-type]


@pytest.mark.parametrize("resolution", ["360p", "540p", "720p"])
def test_fast_mode_accepts_up_to_720p(resolution: str) -> None:
    assert ImageToVideo("p", URL, resolution=resolution, fast_mode=True).fast_mode  # type: ignore[arg-type]


def test_fast_mode_refuses_1080p_and_says_why() -> None:
    error = rejected("resolution", resolution="1080p", fast_mode=True)
    assert "fast_mode" in str(error)


@pytest.mark.parametrize("resolution", ["480p", "1080P", "", None, 720])
def test_unknown_resolutions_list_the_allowed_ones(resolution: object) -> None:
    assert "360p, 540p, 720p, 1080p" in str(rejected("resolution", resolution=resolution))


@pytest.mark.parametrize("fast_mode", [1, 0, "true", None])
def test_fast_mode_must_be_a_bool(fast_mode: object) -> None:
    rejected("fast_mode", fast_mode=fast_mode)


@pytest.mark.parametrize("style", ["anime", "3d_animation", "clay", "comic", "cyberpunk", None])
def test_every_style_is_accepted(style: str | None) -> None:
    assert ImageToVideo("p", URL, style=style).style == style  # type: ignore[arg-type]


@pytest.mark.parametrize("style", ["Anime", "watercolor", ""])
def test_unknown_styles_are_rejected(style: str) -> None:
    assert "cyberpunk" in str(rejected("style", style=style))


@given(st.integers(min_value=0, max_value=2_147_483_647))
def test_seeds_in_range_are_accepted(seed: int) -> None:
    assert ImageToVideo("p", URL, seed=seed).seed == seed


@pytest.mark.parametrize("seed", [-1, 2_147_483_648, 2**63])
def test_seeds_out_of_range_are_rejected(seed: int) -> None:
    assert "2147483647" in str(rejected("seed", seed=seed))


@pytest.mark.parametrize("seed", [True, False, 1.0, "7"])
def test_seed_must_be_a_real_int(seed: object) -> None:
    rejected("seed", seed=seed)


# -- the image ---------------------------------------------------------------------------------------------


def test_urls_are_taken_as_they_are() -> None:
    assert ImageToVideo("p", "http://example.com/a.jpg").image == "http://example.com/a.jpg"


@pytest.mark.parametrize("image", ["frame.png", "/tmp/frame.png", "iVBORw0KGgo=", "ftp://example.com/a.png"])
def test_other_strings_are_refused_with_a_hint_to_pass_a_path(image: str) -> None:
    assert "pathlib.Path" in str(rejected("image", image=image))


def test_url_without_host_is_refused() -> None:
    rejected("image", image="https:///nohost.png")


def test_bytes_png_and_jpeg_are_accepted() -> None:
    ImageToVideo("p", png(300, 300))
    ImageToVideo("p", jpeg(640, 480))
    ImageToVideo("p", jpeg(640, 480, with_exif=False))


def test_image_format_is_judged_by_content_not_name(tmp_path: Path) -> None:
    disguised = tmp_path / "frame.png"
    disguised.write_bytes(b"GIF89a" + b"\x00" * 100)
    assert "neither JPEG nor PNG" in str(rejected("image", image=disguised))
    jpeg_named_png = tmp_path / "real.png"
    jpeg_named_png.write_bytes(jpeg())
    ImageToVideo("p", jpeg_named_png)


@pytest.mark.parametrize(
    ("width", "height", "accepted"),
    [
        (300, 300, True),
        (299, 300, False),
        (300, 299, False),
        (750, 300, True),  # exactly 2.5:1
        (300, 750, True),  # exactly 1:2.5
        (751, 300, False),
        (300, 751, False),
    ],
)
def test_size_and_aspect_ratio_boundaries(width: int, height: int, accepted: bool) -> None:
    for image in (png(width, height), jpeg(width, height)):
        if accepted:
            ImageToVideo("p", image)
        else:
            assert f"{width}x{height}" in str(rejected("image", image=image))


def test_size_limit_is_10_mib_exactly(tmp_path: Path) -> None:
    limit = 10 * 1024 * 1024
    ImageToVideo("p", png(300, 300, pad_to=limit))
    assert str(limit) in str(rejected("image", image=png(300, 300, pad_to=limit + 1)))
    big_file = tmp_path / "big.png"
    big_file.write_bytes(png(300, 300, pad_to=limit + 1))
    assert "10 MB" in str(rejected("image", image=big_file))


@given(st.data())
def test_truncated_headers_are_rejected(data: st.DataObject) -> None:
    whole = data.draw(st.sampled_from([png(400, 300), jpeg(400, 300)]))
    # Cut anywhere before the frame size is complete (for the JPEG, before the SOF0 segment ends).
    sof = whole.find(b"\xff\xc0")
    header_end = 24 if whole.startswith(b"\x89PNG") else sof + 9
    cut = data.draw(st.integers(min_value=0, max_value=header_end - 1))
    rejected("image", image=whole[:cut])


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_check(blob: bytes) -> None:
    try:
        ImageToVideo("p", blob)
    except InvalidRequestError as error:
        assert error.field == "image"


def test_corrupt_png_header_is_rejected() -> None:
    broken = bytearray(png(400, 300))
    broken[12:16] = b"XXXX"
    assert "corrupt" in str(rejected("image", image=bytes(broken)))


def test_missing_file_and_directory_give_clear_errors(tmp_path: Path) -> None:
    assert "no such file" in str(rejected("image", image=tmp_path / "missing.png"))
    assert "directory" in str(rejected("image", image=tmp_path))


def test_data_uris_are_checked_against_what_they_declare() -> None:
    encoded = base64.b64encode(png(400, 300)).decode()
    ImageToVideo("p", f"data:image/png;base64,{encoded}")
    assert "carries a PNG" in str(rejected("image", image=f"data:image/jpeg;base64,{encoded}"))
    assert "only PNG and JPEG" in str(rejected("image", image=f"data:image/gif;base64,{encoded}"))
    assert "not valid base64" in str(rejected("image", image="data:image/png;base64,@@@"))
    assert "data:image/png;base64" in str(rejected("image", image="data:text/plain,hello"))


def test_image_of_wrong_type_is_refused() -> None:
    assert "pathlib.Path or bytes" in str(rejected("image", image=12))


def test_repr_never_dumps_image_data() -> None:
    request = ImageToVideo("p", png(400, 300))
    assert "bytes>" in repr(request)
    assert len(repr(request)) < 300

"""Decoding of every awkward-but-valid format a user folder holds, and of broken files."""

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from bench.planted import AWKWARD, encode, giant_png
from tasks.common.images import DecodeError, decode, probe


def _picture() -> np.ndarray:
    """Gray picture with an asymmetric layout, so a wrong rotation or flip is visible."""
    img = np.full((24, 32), 20, np.uint8)
    img[4:10, 3:25] = 230
    img[12:22, 20:28] = 140
    return img


@pytest.mark.parametrize("suffix", sorted(AWKWARD))
def test_awkward_format_decodes_to_the_picture(tmp_path, suffix):
    original = _picture()
    path = tmp_path / f"x_{suffix}"
    path.write_bytes(AWKWARD[suffix](original))
    img = decode(path)
    assert img.mode in ("L", "RGB")
    got = np.asarray(img.convert("L"), dtype=float)
    assert got.shape == original.shape  # EXIF orientation applied
    if suffix == "one_bit.png":
        expected = np.where(original > 127, 255.0, 0.0)
    elif suffix == "gray16.png":  # 16-bit range is stretched to 0..255
        expected = (original - 20.0) * 255 / (230 - 20)
    else:
        expected = original.astype(float)
    lossy = suffix.endswith(".jpg")
    assert np.abs(got - expected).mean() < (6 if lossy else 1), suffix


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "r.jpg"
    path.write_bytes(AWKWARD["exif_rotated.jpg"](_picture()))
    assert probe(path).width == 24  # stored rotated ...
    assert decode(path).size == (32, 24)  # ... shown upright


def test_palette_transparency_and_rgba_are_flattened_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent
    path = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert np.asarray(decode(path)).min() == 255


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a garbage", bytes(range(256)) * 4])
def test_garbage_raises_one_line_decode_error(tmp_path, data):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(DecodeError) as err:
        decode(path)
    assert "\n" not in str(err.value)


def test_truncated_png_is_not_decoded(tmp_path):
    rng = np.random.default_rng(0)
    whole = encode(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    assert probe(path).width == 64  # the header is intact
    with pytest.raises(DecodeError):
        decode(path)


def test_giant_header_is_probed_and_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(giant_png(60000, 60000))
    tracemalloc.start()
    try:
        assert probe(path).pixels == 60000 * 60000
        with pytest.raises(DecodeError, match="pixel limit"):
            decode(path, max_pixels=10_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert path.stat().st_size < 1000 and peak < 5_000_000


def test_decode_errors_name_the_file_not_its_folder(tmp_path):
    """The same bad file gives the same message wherever it is read from (a Dask worker's mount, a long
    temporary folder): reports and caches must not depend on the reader's path."""
    messages = []
    for folder in (tmp_path / "a", tmp_path.joinpath(*["a-rather-long-folder-name"] * 10)):
        folder.mkdir(parents=True)
        (folder / "f00d").write_bytes(b"not an image at all")
        with pytest.raises(DecodeError) as err:
            decode(folder / "f00d")
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "'f00d'" in messages[0] and str(tmp_path) not in messages[0]

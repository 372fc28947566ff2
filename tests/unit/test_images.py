"""Decoding of every awkward-but-valid format a user folder holds, and of broken files."""

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from bench.planted import AWKWARD, encode, giant_png
from tasks.common.images import DecodeError, alpha_background, decode, probe


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


def test_fully_transparent_image_keeps_its_stored_colour(tmp_path):
    """Every pixel transparent: the border is transparent, so the colour stored under it is used
    (black here) instead of a fixed white that would invert a black-background data set."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    path = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert np.asarray(decode(path)).max() == 0
    assert alpha_background(path) == "#000000"


def _garment() -> np.ndarray:
    """A bright shape on a black background, like Fashion-MNIST and digits."""
    arr = np.zeros((28, 28), np.uint8)
    arr[6:22, 9:19] = np.linspace(120, 250, 16)[:, None].astype(np.uint8)
    return arr


@pytest.mark.parametrize("suffix", ["palette_trns_background.png", "la_cutout.png", "rgba_cutout.png", "rgba.png"])
def test_transparency_decodes_like_the_opaque_picture(tmp_path, suffix):
    """A palette PNG with its black background marked transparent (tRNS), LA / RGBA cut-outs and an
    RGBA whose alpha is fully opaque all decode to the opaque picture's pixels."""
    arr = _garment()
    path = tmp_path / suffix
    path.write_bytes(AWKWARD[suffix](arr))
    decoded = np.asarray(decode(path).convert("L"))
    assert np.abs(decoded.astype(int) - arr).max() <= 1
    assert alpha_background(path) == ("" if suffix == "rgba.png" else "#000000")


def test_transparent_hole_takes_the_opaque_border_colour(tmp_path):
    """Opaque grey background with a transparent hole (stored white): the hole is shown grey."""
    rgba = np.full((16, 16, 4), 255, np.uint8)
    rgba[..., :3] = 90
    rgba[5:10, 5:10] = (255, 255, 255, 0)
    path = tmp_path / "hole.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert np.unique(np.asarray(decode(path))).tolist() == [90]
    assert alpha_background(path) == "#5a5a5a"
    assert alpha_background(AWKWARD["grayscale.png"](_garment())) == ""


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

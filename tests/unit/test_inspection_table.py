"""clean holds its Inspections as columns (tasks.checks.inspection_table) and caches them in batches
(tasks.checks.inspection_cache): nothing about an image may change on the way, whether it decoded
or not, and the columns must cost a fraction of what one object per image cost."""

import io

import numpy as np
from PIL import Image

from tasks.checks import inspection_cache
from tasks.checks.inspection_table import InspectionTable, table_of
from tasks.checks.quality import COPY_SIZE, FEATURE_SIZE, Inspection, inspect
from tests.helpers.images import digit_pictures


def _inspections(tmp_path) -> dict:
    """Real inspections of digits, plus a corrupt file and one over the pixel limit."""
    found = {}
    for k, (pixels, _label) in enumerate(digit_pictures(3, (0, 1))):
        path = tmp_path / f"{k}.png"
        Image.fromarray(pixels).save(path)
        found[f"{k:064x}"] = inspect(path, 10_000)
    Image.fromarray(np.dstack([pixels, pixels // 2, 255 - pixels])).save(tmp_path / "colour.png")
    found["c" * 64] = inspect(tmp_path / "colour.png", 10_000)  # colour offsets that are not zero
    assert found["c" * 64].chroma_b > 0 > found["c" * 64].chroma_g
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    found["f" * 64] = inspect(tmp_path / "bad.png", 10_000)
    buf = io.BytesIO()
    Image.new("L", (200, 200)).save(buf, format="PNG")
    (tmp_path / "big.png").write_bytes(buf.getvalue())
    found["e" * 64] = inspect(tmp_path / "big.png", 10_000)
    return found


def _same(a, b) -> bool:
    scalars = InspectionTable.SCALARS
    return all(getattr(a, n) == getattr(b, n) for n in scalars) and all(
        np.array_equal(getattr(a, n), getattr(b, n)) and getattr(a, n).dtype == getattr(b, n).dtype
        for n in ("thumbnail", "features")
    )


def test_the_table_and_the_cache_give_back_every_inspection_exactly(tmp_path):
    found = _inspections(tmp_path)
    assert {insp.status for insp in found.values()} == {"ok", "corrupt", "too_large"}
    table = table_of(found)
    assert all(_same(table[image_id], insp) for image_id, insp in found.items())

    cache = tmp_path / "cache.parquet"
    inspection_cache.save(cache, table, 10_000)
    loaded = inspection_cache.load(cache, 10_000)
    assert sorted(loaded) == sorted(found)
    assert all(_same(loaded[image_id], insp) for image_id, insp in found.items())
    # another pixel limit is another verdict: nothing is reused
    assert len(inspection_cache.load(cache, 20_000)) == 0

    # split reads only the copies it asks for, of images that decoded
    wanted = ["f" * 64, "0" * 64, "missing", f"{2:064x}"]
    out = np.zeros((len(wanted), COPY_SIZE), dtype=np.float16)
    filled = inspection_cache.load_copies(cache, wanted, out)
    assert filled.tolist() == [False, True, False, True]
    assert np.array_equal(out[1], found["0" * 64].thumbnail)
    assert np.array_equal(out[3], found[f"{2:064x}"].thumbnail)


def test_a_damaged_cache_costs_a_re_decode_not_a_crash(tmp_path):
    cache = tmp_path / "cache.parquet"
    cache.write_bytes(b"PAR1 not a parquet file")
    assert len(inspection_cache.load(cache, 10_000)) == 0
    assert not inspection_cache.load_copies(cache, ["a" * 64], np.zeros((1, COPY_SIZE), np.float16)).any()


def test_columns_cost_half_what_objects_did():
    """At 500k images the old objects were ~5 KB each (2.5 GB); the columns must stay under 2.6 KB."""
    table = InspectionTable(1000)
    per_image = sum(getattr(table, name).nbytes for name in (*InspectionTable.SCALARS, "copies", "features")) / 1000
    assert per_image < 2600
    assert table.copies.shape == (1000, COPY_SIZE) and table.features.shape == (1000, FEATURE_SIZE)


def test_an_image_added_twice_is_refused():
    table = InspectionTable(2)
    table.add("a", Inspection("corrupt", "bad"))
    try:
        table.add("a", Inspection("corrupt", "bad"))
    except ValueError as exc:
        assert "twice" in str(exc)
    else:
        raise AssertionError("a second row for one image was accepted")

"""validate decodes each image once into what its out-of-fold models take. A grey data set's CNN
copies are kept as one channel (a third of the memory: 0.5 GB instead of 1.5 GB at 500k images); the
first colour partition widens the rows kept so far, and grey rows then read exactly as RGB decoding
gives them."""

import hashlib

import numpy as np
import pandas as pd
from PIL import Image

from tasks import validate
from tasks.common import engine
from tasks.common.images import to_array
from tasks.common.store import ImageStore


def _store(tmp_path, pictures: list[Image.Image]) -> tuple[str, pd.DataFrame]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = ImageStore(tmp_path / "store")
    ids = []
    for k, picture in enumerate(pictures):
        tmp = tmp_path / f"{k}.png"
        picture.save(tmp)
        image_id = hashlib.sha256(tmp.read_bytes()).hexdigest()
        store.write(image_id, tmp)
        ids.append(image_id)
    return str(tmp_path / "store"), pd.DataFrame(
        {"image_id": ids, "source_path": [f"{k}.png" for k in range(len(ids))]}
    )


def _decoded(store: str, frame: pd.DataFrame) -> np.ndarray:
    cfg = validate.SuspectLabelParams(model="cnn")
    with engine.session(len(frame), engine.EngineParams(in_process_below=10**6, partition_size=2)) as eng:
        return validate._decode_for_models(frame, store, cfg, eng, project=False)["cnn"]


def _grey(k: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(k).integers(0, 256, (20, 20), dtype=np.uint8), "L")


def test_grey_copies_are_one_channel_and_widen_at_the_first_colour_partition(tmp_path):
    greys = [_grey(k) for k in range(4)]
    store, frame = _store(tmp_path, greys)
    copies = _decoded(store, frame)
    assert copies.shape == (4, 32, 32, 1)
    for k, picture in enumerate(greys):
        assert np.array_equal(copies[k], to_array(picture, 32, 3)[..., :1])

    colour = Image.fromarray(np.random.default_rng(9).integers(0, 256, (20, 20, 3), dtype=np.uint8), "RGB")
    pictures = [*greys, colour, _grey(5), _grey(6)]  # partitions of 2: grey, grey, colour + grey, grey
    store, frame = _store(tmp_path / "mixed", pictures)
    copies = _decoded(store, frame)
    assert copies.shape == (7, 32, 32, 3)
    for k, picture in enumerate(pictures):
        assert np.array_equal(copies[k], to_array(picture, 32, 3))

import numpy as np
from PIL import Image

from tasks.judging.metrics import confusion, reliability_table
from tasks.judging.plots import confident_mistakes, confusion_plot, mistakes_gallery, reliability_plot

CLASSES = ["cat", "dog", "bird"]


def _predictions():
    y_true = np.array([0, 1, 2, 0, 1, 2])
    proba = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.7, 0.2, 0.1],  # wrong, confident 0.7
            [0.1, 0.1, 0.8],  # right
            [0.3, 0.6, 0.1],  # wrong, 0.6
            [0.05, 0.95, 0.0],  # right
            [0.05, 0.9, 0.05],  # wrong, most confident 0.9
        ]
    )
    return y_true, proba


def _png(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        return np.asarray(img.convert("RGB"))


def test_confusion_plots_written(tmp_path):
    y_true, proba = _predictions()
    counts, normalized = confusion(y_true, proba.argmax(1), 3)
    _png(confusion_plot(counts, CLASSES, tmp_path / "confusion.png", "counts"))
    _png(confusion_plot(normalized, CLASSES, tmp_path / "confusion_normalized.png", "normalized"))
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_reliability_plot_written(tmp_path):
    y_true, proba = _predictions()
    _png(reliability_plot(reliability_table(y_true, proba, 10), 0.1, tmp_path / "reliability.png", "test"))


def test_confident_mistakes_most_confident_first():
    y_true, proba = _predictions()
    assert confident_mistakes(y_true, proba, 10).tolist() == [5, 1, 3]
    assert confident_mistakes(y_true, proba, 2).tolist() == [5, 1]


def test_gallery_shows_the_mistakes(tmp_path):
    y_true, proba = _predictions()
    # each image is one flat colour so the picture can be checked for which images it shows
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (6, 8, 8, 3))
    shown = mistakes_gallery(images, y_true, proba, CLASSES, tmp_path / "mistakes.png", limit=24)
    assert shown.tolist() == [5, 1, 3]
    pixels = _png(tmp_path / "mistakes.png").reshape(-1, 3)
    present = {tuple(c) for c in colours if (np.abs(pixels.astype(int) - c).sum(1) < 10).sum() > 50}
    assert present == {tuple(colours[i]) for i in (5, 1, 3)}


def test_gallery_without_mistakes_and_grayscale(tmp_path):
    y_true = np.array([0, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    images = np.zeros((2, 8, 8, 1), np.uint8)
    assert len(mistakes_gallery(images, y_true, proba, CLASSES, tmp_path / "mistakes.png", limit=24)) == 0
    assert (tmp_path / "mistakes.png").stat().st_size > 0

import numpy as np

from tasks.checks.confident_learning import budget_rows, kernel_model, out_of_fold_probabilities
from tasks.checks.oof_cnn import cnn_model, epochs_for


def striped_images(per_class=40, seed=0):
    """uint8 [N, 32, 32, 3] noisy pictures: class 0 horizontal stripes, 1 vertical, 2 a checkerboard,
    each at a random phase and contrast."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    yy, xx = np.mgrid[:32, :32]
    images = np.empty((len(labels), 32, 32, 3), np.uint8)
    for i, c in enumerate(labels):
        phase = rng.integers(0, 8)
        pattern = [(yy + phase) // 4 % 2, (xx + phase) // 4 % 2, ((yy + phase) // 4 + xx // 4) % 2][c]
        picture = 60 + pattern * rng.integers(80, 160) + rng.normal(0, 20, (32, 32))
        images[i] = np.clip(picture, 0, 255).astype(np.uint8)[..., None]
    return images, labels


# two folds throughout: every fold trains at least MIN_STEPS steps, so each fold costs the same here
def test_cnn_learns_out_of_fold_and_repeats_itself():
    images, labels = striped_images()
    model = cnn_model(images, epochs=8, budget=100_000, seed=0)
    probs = out_of_fold_probabilities([model], labels, folds=2, seed=0)
    assert probs.shape == (120, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == labels).mean() > 0.95
    np.testing.assert_allclose(probs, out_of_fold_probabilities([model], labels, folds=2, seed=0), atol=1e-5)


def test_ensemble_is_the_mean_of_its_members():
    images, labels = striped_images(per_class=20)
    features = images.reshape(len(images), -1).astype(np.float64)
    kernel, cnn = kernel_model(features, 0), cnn_model(images, epochs=3, budget=100_000, seed=0)
    alone = [out_of_fold_probabilities([m], labels, folds=2, seed=0) for m in (kernel, cnn)]
    together = out_of_fold_probabilities([kernel, cnn], labels, folds=2, seed=0)
    np.testing.assert_allclose(together, (alone[0] + alone[1]) / 2, atol=1e-5)


def test_cnn_never_learns_from_excluded_images():
    images, labels = striped_images()
    given = labels.copy()
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[:8] = True  # 8 class-0 pictures labelled 1
    given[flipped] = 1
    model = cnn_model(images, epochs=8, budget=100_000, seed=0)
    taught = out_of_fold_probabilities([model], given, folds=2, seed=0)
    untaught = out_of_fold_probabilities([model], given, folds=2, seed=0, exclude=flipped)
    assert untaught[flipped, 1].mean() < taught[flipped, 1].mean()
    assert (untaught[flipped].argmax(axis=1) == 0).all()


def test_large_folds_get_fewer_epochs():
    assert epochs_for(2_400, epochs=8, budget=100_000) == 8
    assert epochs_for(56_000, epochs=8, budget=100_000) == 1
    assert epochs_for(20_000, epochs=8, budget=100_000) == 5
    assert epochs_for(500_000, epochs=8, budget=100_000) == 1
    # a tiny fold trains for MIN_STEPS steps (two batches an epoch -> 50 epochs)
    assert epochs_for(90, epochs=8, budget=100_000) == 50


def test_a_fold_larger_than_the_budget_trains_on_a_sample_of_it(monkeypatch):
    import tasks.checks.oof_cnn as oof_cnn

    sampled = []

    def spy(rows, labels, budget, seed):
        kept = budget_rows(rows, labels, budget, seed)
        sampled.append((len(rows), len(kept)))
        return kept

    monkeypatch.setattr(oof_cnn, "budget_rows", spy)
    images, labels = striped_images(per_class=300)  # folds of 450 training images, 150 of each class
    probs = out_of_fold_probabilities([cnn_model(images, epochs=8, budget=300, seed=0)], labels, folds=2, seed=0)
    assert sampled == [(450, 300), (450, 300)]  # each class at its share, MIN_KEPT_PER_CLASS = 100
    assert (probs.argmax(axis=1) == labels).mean() > 0.9  # one pass over the sample still learns the stripes


def test_grey_images_kept_as_one_channel_give_the_same_probabilities():
    """validate keeps a grey data set's CNN copies as one channel (a third of the memory at 500k);
    the network must see exactly what the three equal channels gave it."""
    images, labels = striped_images(per_class=20)
    rgb = out_of_fold_probabilities([cnn_model(images, epochs=3, budget=100_000, seed=0)], labels, folds=2, seed=0)
    grey_model = cnn_model(np.ascontiguousarray(images[..., :1]), epochs=3, budget=100_000, seed=0)
    grey = out_of_fold_probabilities([grey_model], labels, folds=2, seed=0)
    np.testing.assert_allclose(
        grey, rgb, atol=1e-4
    )  # float rounding only: the inputs are equal, their memory layout is not
    fitted = grey_model.fit(labels, np.arange(len(labels)), 3)
    assert fitted["input_mean"].shape == (1, 3, 1, 1)  # kept models score colour images that come later
    np.testing.assert_allclose(
        grey_model.predict(fitted, images[:5], 3), grey_model.predict(fitted, images[:5, :, :, :1], 3), atol=1e-6
    )

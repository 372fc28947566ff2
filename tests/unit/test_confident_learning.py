import numpy as np
import pytest

from tasks.checks.confident_learning import (
    budget_rows,
    find_label_issues,
    fit_projection,
    fit_suspect_labels,
    image_features,
    kernel_model,
    out_of_fold_probabilities,
    project,
    with_projection,
)


def noisy_probabilities(n=1200, k=4, flip=0.05, seed=0):
    """Probabilities of a decent classifier for the TRUE classes, and labels with `flip` of them wrong."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), truth] += 4.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = truth.copy()
    flipped = rng.choice(n, int(flip * n), replace=False)
    labels[flipped] = (truth[flipped] + rng.integers(1, k, len(flipped))) % k
    mask = np.zeros(n, dtype=bool)
    mask[flipped] = True
    return probs, labels, mask


def test_confident_joint_method_flags_the_confident_disagreement_by_hand():
    # thresholds (mean self-confidence): class 0 (0.9 + 0.65 + 0.15) / 3 = 0.567, class 1 (0.8 + 0.45) / 2
    # = 0.625. Row 4, labelled 0, is confidently class 1 (0.85 >= 0.625); row 3 reaches neither threshold.
    probs = np.array([[0.9, 0.1], [0.65, 0.35], [0.2, 0.8], [0.55, 0.45], [0.15, 0.85]])
    labels = np.array([0, 0, 1, 1, 0])
    np.testing.assert_array_equal(find_label_issues(probs, labels, "confident_joint"), [0, 0, 0, 0, 1])


def test_no_examples_no_issues():
    assert find_label_issues(np.zeros((0, 3)), np.zeros(0, dtype=int)).shape == (0,)


def test_planted_flips_are_found_by_default_method():
    probs, labels, flipped = noisy_probabilities()
    found = find_label_issues(probs, labels)
    hits = (found & flipped).sum()
    assert hits / flipped.sum() >= 0.8
    assert hits / found.sum() >= 0.7


@pytest.mark.parametrize("method", ["confident_joint", "both"])
def test_off_diagonal_methods_trade_recall_for_precision(method):
    probs, labels, flipped = noisy_probabilities()
    found = find_label_issues(probs, labels, method)
    hits = (found & flipped).sum()
    assert hits / found.sum() >= 0.9
    assert hits / flipped.sum() >= 0.6
    assert not (find_label_issues(probs, labels, "both") & ~find_label_issues(probs, labels)).any()


def test_clean_labels_give_few_issues():
    probs, labels, _ = noisy_probabilities(flip=0.0)
    assert find_label_issues(probs, labels).mean() < 0.01


def test_unknown_method_is_rejected():
    probs, labels, _ = noisy_probabilities(n=40)
    with pytest.raises(ValueError, match="unknown confident-learning method"):
        find_label_issues(probs, labels, "majority_vote")


def test_out_of_fold_probabilities_on_separable_blobs():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 6, (3, 20))
    labels = np.repeat(np.arange(3), 40)
    features = centres[labels] + rng.normal(0, 1, (120, 20))
    probs = out_of_fold_probabilities([kernel_model(features, 0)], labels, folds=4, seed=0)
    assert probs.shape == (120, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs.argmax(axis=1) == labels).mean() > 0.95
    # out-of-fold: same seed, same answer
    np.testing.assert_allclose(probs, out_of_fold_probabilities([kernel_model(features, 0)], labels, folds=4, seed=0))


def test_floor_on_given_probability_keeps_only_confident_disagreements():
    probs, labels, flipped = noisy_probabilities()
    unfloored = find_label_issues(probs, labels)
    floored = find_label_issues(probs, labels, max_given_probability=0.05)
    given = probs[np.arange(len(labels)), labels]
    np.testing.assert_array_equal(floored, unfloored & (given < 0.05))
    assert 0 < floored.sum() < unfloored.sum()
    assert (floored & flipped).sum() / floored.sum() > (unfloored & flipped).sum() / unfloored.sum()


def test_a_label_with_almost_no_probability_is_flagged_even_when_the_rule_misses_it():
    # 10 classes, 1,000 clean examples from a good model, and ONE uniform flip: an image labelled 3
    # that the model splits between classes 7 and 8 (0.5 / 0.492; a shirt or a T-shirt, labelled
    # sandal). It reaches neither class's confidence threshold, so it is in no cell of the confident
    # joint and cleanlab's rule leaves it alone; certain_below catches it and nothing else
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, 1000)
    logits = rng.normal(0, 1, (1000, 10))
    logits[np.arange(1000), truth] += 7.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = truth.copy()
    labels[0] = 3
    probs[0] = 0.001
    probs[0, [7, 8]] = [0.5, 0.492]
    given = probs[np.arange(1000), labels]
    assert given[0] < 0.02 and (given[1:] >= 0.02).all()
    rule = find_label_issues(probs, labels, max_given_probability=0.05)
    assert not rule[0]
    with_certain = find_label_issues(probs, labels, max_given_probability=0.05, certain_below=0.02)
    np.testing.assert_array_equal(with_certain, rule | (given < 0.02))
    assert with_certain[0] and with_certain.sum() == rule.sum() + 1
    # the function's default is off: nothing changes without it
    np.testing.assert_array_equal(find_label_issues(probs, labels, max_given_probability=0.05, certain_below=0.0), rule)


def blobs_with_flips(seed=1):
    """Three well-separated classes, 60 each, with 6 of class 0 labelled 1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (3, 10))
    truth = np.repeat(np.arange(3), 60)
    features = centres[truth] + rng.normal(0, 1, (180, 10))
    labels = truth.copy()
    labels[:6] = 1
    flipped = np.zeros(180, dtype=bool)
    flipped[:6] = True
    return features, labels, flipped


def test_excluded_examples_are_scored_but_not_learned_from():
    features, labels, flipped = blobs_with_flips()
    taught = out_of_fold_probabilities([kernel_model(features, 0)], labels, folds=4, seed=0)
    untaught = out_of_fold_probabilities([kernel_model(features, 0)], labels, folds=4, seed=0, exclude=flipped)
    assert untaught.shape == (180, 3)
    np.testing.assert_allclose(untaught.sum(axis=1), 1.0, atol=1e-6)
    # without the mislabelled examples in training, class-0 pictures are less likely to be called 1
    assert untaught[flipped, 1].mean() < taught[flipped, 1].mean()


def test_suspect_labels_find_planted_flips_and_nothing_on_clean_labels():
    features, labels, flipped = blobs_with_flips()
    found = {}
    for retrain in (False, True):
        found_now = fit_suspect_labels(
            [kernel_model(features, 0)],
            labels,
            folds=4,
            seed=0,
            method="prune_by_noise_rate",
            max_given_probability=0.3,
            retrain=retrain,
        )
        probs, issues = found_now.probs, found_now.issues
        assert probs.shape == (180, 3) and not issues[~flipped].any()
        found[retrain] = issues[flipped].sum()
    # the 6 flips taught the first-round models that some class-0 pictures are 1; the second round
    # never sees them, so it is surer they are mislabelled
    assert found[False] >= 4 and found[True] > found[False]
    clean = np.repeat(np.arange(3), 60)
    issues = fit_suspect_labels(
        [kernel_model(features, 0)],
        clean,
        folds=4,
        seed=0,
        method="prune_by_noise_rate",
        max_given_probability=0.3,
        retrain=True,
    ).issues
    assert not issues.any()


def test_image_features_ignore_colour_on_grayscale_images():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 32, 32)).astype(np.uint8)
    small = rng.integers(0, 256, (5, 8, 8)).astype(np.uint8)
    feats = image_features(gray, np.repeat(small[..., None], 3, axis=-1))
    hog_dims = feats.shape[1] - 3 * 64
    luminance, colour = feats[:, hog_dims : hog_dims + 64], feats[:, hog_dims + 64 :]
    np.testing.assert_allclose(luminance, small.reshape(5, -1) / 255.0, atol=1e-5)
    assert not colour.any()
    tinted = np.repeat(small[..., None], 3, axis=-1).copy()
    tinted[..., 0] = 255
    assert image_features(gray, tinted)[:, hog_dims + 64 :].any()


def test_a_budget_keeps_each_class_in_its_share_and_rare_classes_whole():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.zeros(5000, int), np.ones(3000, int), np.full(40, 2)])
    rows = rng.permutation(len(labels))[:6000]  # a fold's training rows, unsorted
    kept = budget_rows(rows, labels, 2000, seed=0)
    assert np.isin(kept, rows).all() and (np.diff(kept) > 0).all()
    counts = np.bincount(labels[kept], minlength=3)
    given = np.bincount(labels[rows], minlength=3)
    assert counts[2] == given[2]  # the rare class, fewer than MIN_KEPT_PER_CLASS: all of it
    share = 2000 / len(rows)
    np.testing.assert_allclose(counts[:2], np.round(given[:2] * share), atol=1)
    np.testing.assert_array_equal(budget_rows(rows[:1500], labels, 2000, seed=0), rows[:1500])


def test_a_kernel_model_on_a_budget_still_knows_a_rare_class():
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 6, (3, 20))
    labels = np.concatenate([np.zeros(3000, int), np.ones(3000, int), np.full(30, 2)])
    features = centres[labels] + rng.normal(0, 1, (len(labels), 20))
    member = kernel_model(features, 0, budget=600)
    train = np.arange(0, len(labels), 2)
    fitted = member.fit(labels, train, 3)
    probs = member.predict(fitted, features[1::2], 3)
    assert (probs.argmax(axis=1) == labels[1::2]).mean() > 0.95
    assert probs[labels[1::2] == 2, 2].min() > 0.5


def test_a_projected_fold_model_scores_full_features_as_the_fit_scored_projections():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 3, (3, 200))
    labels = np.repeat(np.arange(3), 100)
    features = (centres[labels] + rng.normal(0, 1, (300, 200))).astype(np.float32)
    projection = fit_projection(features[:150], seed=0)  # fitted on a sample
    projected = project(projection, features)
    assert projected.shape == (300, 60) and projected.dtype == np.float32
    member = kernel_model(projected, 0)
    fitted = member.fit(labels, np.arange(0, 300, 2), 3)
    np.testing.assert_allclose(
        member.predict(with_projection(projection, fitted), features[1::2], 3),
        member.predict(fitted, projected[1::2], 3),
        atol=1e-6,
    )

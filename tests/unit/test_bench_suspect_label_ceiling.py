"""bench.suspect_label_ceiling's scoring of a ranking: what a model exposes of the planted flips."""

import numpy as np

from bench.data_quality import drawn_indices
from bench.suspect_label_ceiling import ranking_row


def test_ranking_row_counts_flips_by_their_given_label_probability():
    rng = np.random.default_rng(0)
    n, k = 300, 3
    true = np.repeat(np.arange(k), n // k)
    kind = np.zeros(n, dtype=int)
    kind[:10:2], kind[1:10:2] = 1, 2  # ten flips, half uniform and half confusable
    given = true.copy()
    given[:10] = (true[:10] + 1) % k
    probs = np.full((n, k), 0.02)
    probs[np.arange(n), true] = 0.96  # the model knows the true class of every image...
    probs[8:10] = 0.2
    probs[8:10, given[8:10]] = 0.6  # ...but finds two of the flips believable
    probs[100:120] = 0.25
    probs[np.arange(100, 120), true[100:120]] = 0.5  # and is unsure of twenty correct images
    probs = probs + rng.uniform(0, 1e-6, probs.shape)
    probs /= probs.sum(1, keepdims=True)

    row = ranking_row("synthetic", probs, given, true, kind)

    assert row["planted"] == 10
    assert row["in_lowest_planted"] == 8  # the two believable flips rank above unsure correct images
    assert row["flips_still_plausible"] == 2
    assert row["rule_found"] == 8 and row["rule_flagged"] == 8
    assert row["accuracy_on_true_labels"] == round(1 - 2 / n, 4)


def test_drawn_indices_are_the_draw_and_depend_on_the_seed():
    a, b = drawn_indices(1000, 50, 3), drawn_indices(1000, 50, 4)
    assert len(a) == 50 and len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, b)
    assert len(drawn_indices(10, 50, 3)) == 10  # never more than there are

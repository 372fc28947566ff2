"""The planted benchmark's per-kind scoring (bench.planted): near-duplicates by how they were made,
label flips by uniform or confusable."""

import pandas as pd

from bench.planted import kind_of, score_kinds


def test_kind_of_reads_near_duplicate_and_flip_details():
    assert kind_of("shift_2px of img_00012.png") == "shift_2px"
    assert kind_of("really Shirt (confusable)") == "confusable"
    assert kind_of("really T-shirt/top (uniform)") == "uniform"


def test_flips_are_scored_per_kind_and_only_suspect_label_counts():
    truth = pd.DataFrame(
        {
            "source_path": ["a.png", "b.png", "c.png", "d.png"],
            "planted_reason": ["suspect_label"] * 3 + ["clean"],
            "detail": ["really Coat (uniform)", "really Shirt (confusable)", "really Bag (confusable)", ""],
        }
    )
    flagged = pd.DataFrame(
        {"source_path": ["a.png", "b.png", "d.png"], "reason": ["suspect_label", "outlier", "suspect_label"]}
    )
    kinds = score_kinds(truth, flagged, "suspect_label")
    assert kinds == {
        "confusable": {"planted": 2, "hits": 0, "recall": 0.0},
        "uniform": {"planted": 1, "hits": 1, "recall": 1.0},
    }

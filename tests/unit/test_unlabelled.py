"""Unlabelled images (`imgcls review group`, tasks/labelling): groups that match planted classes, the
proposed label per group, uncertainty sampling that picks the ambiguous images first, accept-group into
the inbox and through a real ingest, excluded images never proposed again, and bad files as rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from flows import review
from flows.cli import main
from tasks import ingest
from tasks.common import label_decisions as ld
from tasks.common.errors import UserError
from tasks.common.params import Paths
from tasks.labelling import uncertainty
from tests.helpers.images import write_png

CLASSES = ("horizontal", "vertical", "rings")


def picture(kind: str, seed: int, size: int = 32) -> np.ndarray:
    """Stripes across, stripes down, or rings, at a random phase and period, with a little noise:
    classes HOG tells apart at a glance; `blend` is the mean of horizontal and vertical (ambiguous)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period, phase = rng.uniform(5, 7), rng.uniform(0, 2 * np.pi)
    waves = {
        "horizontal": np.sin(2 * np.pi * yy / period + phase),
        "vertical": np.sin(2 * np.pi * xx / period + phase),
        "rings": np.sin(2 * np.pi * np.hypot(yy - size / 2, xx - size / 2) / period + phase),
    }
    wave = (waves["horizontal"] + waves["vertical"]) / 2 if kind == "blend" else waves[kind]
    pixels = 128 + 100 * wave + rng.normal(0, 8, wave.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def labelled_source(root: Path, per_class: int = 6) -> Path:
    for c, kind in enumerate(CLASSES):
        for i in range(per_class):
            write_png(root / "src" / kind / f"{i}.png", picture(kind, 1000 * c + i))
    return root / "src"


def unlabelled_folder(root: Path, per_class: int = 8, blends: int = 2) -> tuple[Path, dict[str, str]]:
    """Nested folders of unlabelled pictures, a few blends and one broken file; path -> planted class."""
    folder, planted = root / "unlabelled", {}
    for c, kind in enumerate(CLASSES):
        for i in range(per_class):
            path = write_png(
                folder / f"batch{i % 2}" / "deep" / f"{kind[0]}{i}.png", picture(kind, 50_000 + 100 * c + i)
            )
            planted[str(path)] = kind
    for i in range(blends):
        planted[str(write_png(folder / f"blend{i}.png", picture("blend", 90_000 + i)))] = "blend"
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder, planted


@pytest.fixture
def ctx(project):
    project.write_params()
    return review.Context(Paths(), classes=None)


def test_groups_match_planted_classes_with_proposals_and_ambiguous_images_first(project, ctx):
    ingest.run(ingest.Params(source=str(labelled_source(project.root))), Paths())
    folder, planted = unlabelled_folder(project.root)

    result = review.group_unlabelled(ctx, str(folder), n_next=2)

    groups = pd.read_csv(ctx.unlabelled_dir() / "groups.csv", dtype=str, keep_default_na=False)
    assert list(groups.columns) == ["path", "sha256", "group", "proposed_label", "confidence", "error"]
    broken = groups[groups["path"].str.endswith("broken.png")]
    assert len(broken) == 1 and broken["error"].iloc[0] and broken["group"].iloc[0] == ""
    clean = groups[groups["path"].map(planted).isin(CLASSES)]
    assert adjusted_rand_score(clean["path"].map(planted), clean["group"]) >= 0.9
    assert result.embedder == "hog+pca" and result.proposer == "knn"
    for _, members in clean.groupby("group"):  # each group proposes its planted class, confidently
        assert members["proposed_label"].iloc[0] == members["path"].map(planted).mode()[0]
        assert float(members["confidence"].iloc[0]) >= 0.8
    picked = pd.read_csv(ctx.unlabelled_dir() / "next_to_label.csv")
    assert [planted[p] for p in picked["path"]] == ["blend", "blend"]
    assert picked["margin"].is_monotonic_increasing
    queue = pd.read_csv(ctx.queue_dir() / "queue.csv", dtype=str, keep_default_na=False)
    reasons = queue.set_index("source_path")["reason"]
    assert set(reasons[picked["path"]]) == {"uncertain_unlabelled"}
    assert (reasons == "unlabelled_group").sum() == len(clean)
    assert "group 0" in (ctx.unlabelled_dir() / "groups.html").read_text()


def test_accept_group_goes_through_the_inbox_into_ingest_and_excluded_images_stay_out(project, ctx):
    ingest.run(ingest.Params(source=str(labelled_source(project.root))), Paths())
    folder, planted = unlabelled_folder(project.root, blends=0)
    review.group_unlabelled(ctx, str(folder), n_next=0)
    groups = pd.read_csv(ctx.unlabelled_dir() / "groups.csv", dtype=str, keep_default_na=False)
    rings = groups[groups["proposed_label"] == "rings"]
    group = int(rings["group"].iloc[0])

    done = review.accept_group(ctx, group, user="ann")

    assert {d.label for d in done} == {"rings"} and len(done) == len(rings)
    inbox = sorted((project.root / "data" / "inbox" / "rings").iterdir())
    assert len(inbox) == len(rings)
    ingest.run(ingest.Params(source=str(project.root / "src")), Paths())
    manifest = pd.read_parquet(Paths().ingested).set_index("image_id")
    assert set(manifest.loc[list(rings["sha256"]), "label"]) == {"rings"}

    vertical = groups[groups["path"].map(planted) == "vertical"]["sha256"].iloc[0]
    review.decide(ctx, vertical, "exclude", note="not wanted")
    review.group_unlabelled(ctx, str(folder), n_next=0)
    again = pd.read_csv(ctx.unlabelled_dir() / "groups.csv", dtype=str, keep_default_na=False)
    assert not set(again["sha256"]) & (set(rings["sha256"]) | {vertical})  # labelled or excluded: not proposed
    assert ld.load_latest(Paths().label_decisions)[vertical].decision == "exclude"
    queue = pd.read_csv(ctx.queue_dir() / "queue.csv", dtype=str, keep_default_na=False)
    assert vertical not in set(queue["sha256"])


def test_without_labels_or_model_groups_have_no_proposal(project, ctx):
    folder, planted = unlabelled_folder(project.root, blends=0)
    result = review.group_unlabelled(ctx, str(folder), n_next=5)
    good = result.groups[result.groups["error"] == ""]
    assert result.k == 3 and adjusted_rand_score(good["path"].map(planted), good["group"].astype(int)) >= 0.9
    assert (good["proposed_label"] == "").all() and result.next_to_label.empty
    with pytest.raises(UserError, match="no label to keep"):
        review.decide(ctx, good["sha256"].iloc[0], "keep")


def test_cli_group_and_one_line_errors(project, capsys):
    project.write_params()
    folder, _ = unlabelled_folder(project.root, per_class=4, blends=0)
    assert main(["review", "group", "--folder", str(folder), "--next", "3"]) == 0
    assert "unlabelled image(s) in k=" in capsys.readouterr().out
    assert main(["review", "group", "--folder", str(project.root / "nowhere")]) == 2
    assert main(["review", "accept-group", "0"]) == 2  # no proposal without labels: --label needed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_margin_ties_are_broken_by_key():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
    margin = uncertainty.margins(probs)
    assert np.allclose(margin, [0, 0.8, 0, 0.2])
    assert list(uncertainty.pick_next(margin, ["b", "a", "a2", "c"], 3)) == [2, 0, 3]


def test_a_model_embeds_with_its_penultimate_layer_and_proposes_its_predictions(project, ctx):
    import torch

    from models.networks import build_network
    from models.predictor import Predictor, load_predictor, save_model_files
    from tasks.labelling import embed

    torch.manual_seed(0)
    net = build_network("resnet_tiny", len(CLASSES), 1)
    stats = {"image_size": 32, "channels": 1, "mean": [0.5], "std": [0.25], "test_time_flip": True}
    save_model_files(project.root / "model", "resnet_tiny", net, list(CLASSES), stats)
    folder, _ = unlabelled_folder(project.root, per_class=3, blends=0)

    result = review.group_unlabelled(ctx, str(folder), n_next=4, model_uri=str(project.root / "model"))

    assert result.embedder == "model" and result.proposer == "model"
    good = result.groups[result.groups["error"] == ""]
    assert set(good["proposed_label"]) <= set(CLASSES) and len(result.next_to_label) == 4
    images = np.stack([picture("rings", i)[:, :, None] for i in range(3)])
    flipped = embed.penultimate_features(load_predictor(project.root / "model"), images)
    assert flipped.shape == (3, net.num_features)  # the classifier's input, one row per image
    plain = Predictor(net, list(CLASSES), {**stats, "test_time_flip": False})
    features = embed.penultimate_features(plain, images)
    with torch.no_grad():  # they are what the classifier turns into the model's logits
        logits = net.get_classifier()(torch.from_numpy(features))
    assert np.allclose(logits.numpy(), plain.logits(images)[0], atol=1e-4)

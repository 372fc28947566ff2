"""split: train / val / test assignment that is stratified, reproducible and stable under new data.

Each image gets u = sha256(f"{seed}:{image_id}") read as a number in [0, 1); u < train -> train,
u < train + val -> val, else test. u depends only on the image's own bytes and the seed, so adding
images never moves an existing one, and because u is uniform and independent of the label, every class
is split in the given fractions in expectation (binomial noise: a class of n images lands
within about +-2*sqrt(n*f*(1-f)) of n*f). Exact per-class counts would need ranks within the class,
and ranks shift whenever an image is added, moving old images: stability wins here.

Near-duplicates that clean kept (aligned perceptual hashes within `group_radius` bits AND shift-tolerant
similarity at least `group_min_similarity`: tasks.checks.similarity, clean's own rule; chained) form a group
that always shares one split, decided by the u of its smallest image_id. The one way an existing image
can move: a newly added image joins its group (with a smaller image_id, or bridging two groups) -
then the move is what keeps near-copies out of different splits.

A split named by the source (`given_split`) is respected; the other members of its near-duplicate
group follow it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from tqdm import tqdm

from tasks.checks import inspection_cache
from tasks.checks.inspection_table import COPY_DTYPE
from tasks.checks.phash import groups_of_pairs, near_duplicate_groups
from tasks.checks.quality import COPY_SIZE, thumbnail_partition
from tasks.checks.similarity import DEFAULT_MIN_SIMILARITY, DEFAULT_RADIUS, near_duplicate_pairs
from tasks.common import engine
from tasks.common.atomic import write_parquet, write_text
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.manifest import SPLITS, read_manifest
from tasks.common.params import Paths, Strict
from tasks.common.reports import markdown_table
from tasks.common.store import ImageStore

log = logging.getLogger(__name__)
# how sources commonly spell the three splits
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


class Params(Strict):
    train: float = Field(0.8, ge=0.0, le=1.0)
    val: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0
    group_radius: int = Field(DEFAULT_RADIUS, ge=0, le=32)  # keep equal to clean.near_duplicate_distance
    group_min_similarity: float = Field(DEFAULT_MIN_SIMILARITY, ge=-1, le=1)  # = clean.near_duplicate_min_similarity

    @model_validator(mode="after")
    def _fractions_sum_to_one(self):
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"train + val + test must sum to 1, got {self.train:g} + {self.val:g} + {self.test:g} = {total:g}"
            )
        return self


def unit_hash(image_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the image and the seed."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(u: float, params: Params) -> str:
    if u < params.train:
        return "train"
    return "val" if u < params.train + params.val else "test"


def _given_splits(frame: pd.DataFrame) -> pd.Series:
    raw = (
        frame["given_split"].fillna("").astype(str).str.strip()
        if "given_split" in frame
        else pd.Series("", frame.index)
    )
    given = raw.str.lower().map(SPLIT_ALIASES)
    bad = (raw != "") & given.isna()
    if bad.any():
        names = sorted(raw[bad].unique())
        examples = ", ".join(frame.loc[bad, "source_path"].astype(str).head(3))
        raise UserError(
            f"{int(bad.sum())} image(s) name an unknown split {names} (expected train, val or test): {examples}"
        )
    return given.fillna("")


def aligned_copies(frame: pd.DataFrame, store: str, cache_file: Path | None = None) -> tuple[np.ndarray, int]:
    """(the aligned copy of every image of `frame` [n, COPY_SIZE], how many were decoded): from clean's
    inspection cache (`cache_file`, tasks.checks.inspection_cache: the same copies, computed by the
    same code); only those it lacks are decoded."""
    ids = frame["image_id"].astype(str).tolist()
    copies = np.zeros((len(ids), COPY_SIZE), dtype=COPY_DTYPE)
    cached = (
        inspection_cache.load_copies(cache_file, ids, copies) if cache_file is not None else np.zeros(len(ids), bool)
    )
    todo = np.flatnonzero(~cached).tolist()
    log.info("split: %d aligned copies from clean's cache, %d decoded", len(ids) - len(todo), len(todo))
    start = 0
    with (
        engine.session(len(todo), what="split: near-duplicate search") as eng,
        tqdm(total=len(todo), desc="split: near-duplicate search", unit="img", disable=None) as bar,
    ):
        # clean already refused oversized images
        todo_ids = [ids[k] for k in todo]
        for block in eng.map_partitions(thumbnail_partition, todo_ids, ImageStore(store).for_workers(), 2**31):
            copies[todo[start : start + len(block)]] = block
            start += len(block)
            bar.update(len(block))
    return copies, len(todo)


def searched_pairs(frame: pd.DataFrame, store: str, params: Params, cache_file: Path | None = None):
    """(near pairs as positions in `frame`, images decoded): clean's rule (tasks.checks.similarity.
    near_duplicate_pairs) searched over every image of `frame` with split's settings, when clean's index
    cannot stand in (indexed_pairs). Without the rule's verification, hash neighbours would chain
    look-alikes (sneakers, digits) into huge groups."""
    if frame["phash"].isna().any():
        raise UserError("some images have no phash: rerun the clean stage")
    copies, decoded = aligned_copies(frame, store, cache_file)
    hashes = frame["phash"].astype("int64").to_numpy().astype(np.uint64)
    return near_duplicate_pairs(hashes, copies, params.group_radius, params.group_min_similarity), decoded


def indexed_pairs(frame: pd.DataFrame, params: Params, cache_dir: Path) -> np.ndarray | None:
    """The near pairs (positions in `frame`) from clean's persisted near-duplicate index
    (tasks.checks.inspection_cache), when that index was built by this same rule (group_radius and
    group_min_similarity equal to clean's settings, the same code) over every image of `frame`: it
    holds every verified pair among its images, so nothing is searched, decoded or compared again.
    None when it cannot stand in (other settings, an image it never saw): split searches itself."""
    key = inspection_cache.near_index_key(params.group_radius, params.group_min_similarity)
    members, pairs, _ = inspection_cache.load_near_index(cache_dir / inspection_cache.NEAR_INDEX_FILE, key)
    ids = frame["image_id"].astype(str).tolist()
    position = {image_id: k for k, image_id in enumerate(ids)}
    if not members or len(position) < len(ids) or not position.keys() <= set(members):
        return None
    return np.array(
        [
            (position[a], position[b])
            for a, b in zip(pairs["a"].tolist(), pairs["b"].tolist())
            if a in position and b in position
        ],
        dtype=np.int64,
    ).reshape(-1, 2)


def assign_splits(frame: pd.DataFrame, params: Params, pairs: np.ndarray | None = None) -> tuple[pd.Series, dict]:
    """Split per row plus facts for the summary. `frame` needs image_id, phash, given_split; the
    near-duplicate `pairs` (positions: indexed_pairs or searched_pairs), else every pair within
    group_radius counts."""
    if frame["phash"].isna().any():
        raise UserError("some images have no phash: rerun the clean stage")
    if pairs is not None:
        groups = pd.Series(groups_of_pairs(len(frame), pairs), frame.index)
    else:
        hashes = frame["phash"].astype("int64").tolist()
        groups = pd.Series(near_duplicate_groups(hashes, params.group_radius), frame.index)
    given = _given_splits(frame)
    # a group nobody named follows the u of its smallest image_id (one hash per group, not per row)
    image_ids = frame["image_id"].astype(str)
    leaders = image_ids.groupby(groups).transform("min")
    by_leader = {leader: split_of(unit_hash(leader, params.seed), params) for leader in leaders.unique()}
    split = leaders.map(by_leader).astype(object)
    # a group the source named somewhere: the source's word is kept for each image it names; the rest
    # follow the named image with the smallest image_id (the first such row among equal ids)
    named = pd.DataFrame({"group": groups, "image_id": image_ids, "given": given})[given != ""]
    named_leaders = named.sort_values("image_id", kind="stable").drop_duplicates("group").set_index("group")
    in_named_group = groups.isin(named_leaders.index)
    split[in_named_group] = groups[in_named_group].map(named_leaders["given"])
    split[named.index] = named["given"]
    straddling = int(named.groupby("group")["given"].nunique().gt(1).sum())
    facts = {
        "given": int((given != "").sum()),
        "near_duplicate_groups": int((groups.value_counts() > 1).sum()),
        "images_in_groups": int(groups.map(groups.value_counts()).gt(1).sum()),
        "given_groups_straddling": int(straddling),
    }
    return split, facts


def _chart(table: pd.DataFrame, target) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.common.atomic import save_figure

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(table) + 2), 3.5))
    bottom = np.zeros(len(table))
    for name, colour in zip(SPLITS, ("#4c72b0", "#dd8452", "#55a868")):
        ax.bar(table.index.astype(str), table[name], bottom=bottom, label=name, color=colour)
        bottom += table[name].to_numpy()
    ax.set_title("split: images per class and split")
    ax.set_ylabel("images")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    save_figure(fig, target)


def _summary(table: pd.DataFrame, params: Params, facts: dict, notes: list[str]) -> str:
    total = table.to_numpy().sum()
    lines = [
        f"# split: {total} images, seed {params.seed}",
        "",
        f"- target fractions: train {params.train:g}, val {params.val:g}, test {params.test:g}",
        *(f"- {split}: {int(table[split].sum())} images ({table[split].sum() / total:.3f})" for split in SPLITS),
        f"- {facts['given']} images kept the split named by the source",
        f"- {facts['images_in_groups']} images in {facts['near_duplicate_groups']} near-duplicate groups "
        f"(aligned phash within {params.group_radius} bits and similarity >= "
        f"{params.group_min_similarity}), each group in one split",
        *(f"- {n}" for n in notes),
        "",
        "## Images per class and split",
        "",
    ]
    shown = table.assign(total=table.sum(axis=1))
    for split in SPLITS:
        shown[f"{split} %"] = (100 * table[split] / shown["total"]).round(1)
    lines.append(markdown_table(shown.reset_index().rename(columns={"label": "class"})))
    return "\n".join(lines) + "\n"


def run(params: Params, paths: Paths) -> dict:
    validated = read_manifest(paths.validated, "validate")
    if validated.empty:
        raise UserError(f"{paths.validated} has no images: nothing to split")
    frame = validated.reset_index(drop=True)
    cache = Path(paths.cache)
    pairs, decoded = indexed_pairs(frame, params, cache), 0
    if pairs is None:
        pairs, decoded = searched_pairs(frame, paths.store, params, cache / inspection_cache.INSPECTIONS_FILE)
    split, facts = assign_splits(frame, params, pairs=pairs)
    result = frame.assign(split=split.to_numpy())
    notes = []
    if facts["given_groups_straddling"]:
        notes.append(
            f"warning: {facts['given_groups_straddling']} near-duplicate groups span splits named by the "
            f"source; the source's splits were kept"
        )
        log.warning(notes[-1])
    table = pd.crosstab(result["label"].astype(str), result["split"]).reindex(columns=list(SPLITS), fill_value=0)
    for name, row in table.iterrows():
        missing = [s for s in SPLITS if row[s] == 0 and getattr(params, s) > 0]
        if missing:
            notes.append(f"warning: class {name!r} has no images in {', '.join(missing)}")
    write_parquet(result, paths.split)
    out_dir = paths.report_dir("split")
    write_text(_summary(table, params, facts, notes), out_dir / "summary.md")
    _chart(table, out_dir / "class_split.png")
    return {
        "images": len(result),
        **{s: int((result["split"] == s).sum()) for s in SPLITS},
        **facts,
        "decoded": decoded,
        "warnings": [n for n in notes if n.startswith("warning: ")],
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("split", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

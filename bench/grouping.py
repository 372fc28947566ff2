"""Unlabelled images (tasks/labelling): how well the grouping finds Fashion-MNIST's classes with the labels
hidden, and how many labels uncertainty sampling saves over random sampling.

Grouping, on a fixed sample of the TEST part (--group-n, 2,500 images; labels used only to score):
adjusted Rand index (ARI) against the true classes of
- ours: HOG + PCA (fitted on the images themselves, as with no labelled data), k by the silhouette sweep
  of tasks.labelling.grouping: k in 10..20 when the 10 classes are known (labelled data or a model),
  k in 2..15 when nothing is known (silhouette on a 3,000-image sample);
- the same embedding with k = 10;
- plain k-means on raw pixels with k = 10, and with k chosen by the same rule (both ranges).

Uncertainty sampling: the pool is --pool (10,000) images of the TRAIN part (labels revealed only when
picked), the classifier logistic regression on HOG + PCA (PCA fitted once on the pool: unsupervised, no
label used, the same features for both strategies). Start from 100 random labelled images, add batches
of 100 by smallest margin (tasks.labelling.uncertainty) or at random, up to 1,000; test accuracy on the
whole test part after each batch; 3 seeds. Random goes on to 3,000 to find how many labels it needs to
reach uncertainty's accuracy (linear between measured budgets).

    python -m bench.grouping [--pool 10000] [--group-n 2500] [--out bench/results/grouping.json]
    python -m bench.grouping --quick      # small sizes: a smoke run"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from bench import fashion
from bench.common import write_result
from tasks.labelling import embed, grouping, uncertainty


def to_hog_size(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> [N, 32, 32, 1], resized like tasks.common.images.to_array."""
    size = embed.HOG_SIZE
    out = np.empty((len(images), size, size, 1), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i, :, :, 0] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    return out


def hog_pca(fit_on: np.ndarray, *others: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    embedder = embed.HogPca(seed=seed).fit(to_hog_size(fit_on))
    return [embedder.transform(to_hog_size(x)) for x in (fit_on, *others)]


def grouping_scores(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    out = {}
    t = time.perf_counter()
    (x,) = hog_pca(images, seed=seed)
    chosen = grouping.sweep(x, *grouping.k_range(10), seed=seed)
    out["hog_pca_chosen_k_classes_known"] = {
        "k": chosen.k,
        "ari": adjusted_rand_score(labels, chosen.labels),
        "silhouettes": {str(k): round(v, 4) for k, v in chosen.silhouettes.items()},
        "seconds": round(time.perf_counter() - t, 1),
    }
    t = time.perf_counter()
    chosen = grouping.sweep(x, *grouping.k_range(0), seed=seed)
    out["hog_pca_chosen_k"] = {
        "k": chosen.k,
        "ari": adjusted_rand_score(labels, chosen.labels),
        "silhouettes": {str(k): round(v, 4) for k, v in chosen.silhouettes.items()},
        "seconds": round(time.perf_counter() - t, 1),
    }
    out["hog_pca_k10"] = {"k": 10, "ari": adjusted_rand_score(labels, grouping.kmeans(x, 10, seed))}
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
    out["pixels_k10"] = {"k": 10, "ari": adjusted_rand_score(labels, grouping.kmeans(pixels, 10, seed))}
    t = time.perf_counter()
    on_pixels = grouping.sweep(pixels, *grouping.k_range(10), seed=seed)
    out["pixels_chosen_k_classes_known"] = {
        "k": on_pixels.k,
        "ari": adjusted_rand_score(labels, on_pixels.labels),
        "seconds": round(time.perf_counter() - t, 1),
    }
    t = time.perf_counter()
    on_pixels = grouping.sweep(pixels, *grouping.k_range(0), seed=seed)
    out["pixels_chosen_k"] = {
        "k": on_pixels.k,
        "ari": adjusted_rand_score(labels, on_pixels.labels),
        "seconds": round(time.perf_counter() - t, 1),
    }
    for v in out.values():
        v["ari"] = round(float(v["ari"]), 4)
    return out


def learning_curve(
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    budgets: list[int],
    how: str,
    seed: int,
) -> list[float]:
    """Test accuracy after each budget, labels picked by `how` (uncertainty | random), batches of 100."""
    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(len(pool_x), size=budgets[0], replace=False))
    accuracies, model = [], None
    for budget in budgets:
        if len(labelled) < budget:
            rest = np.setdiff1d(np.arange(len(pool_x)), labelled)
            need = budget - len(labelled)
            if how == "random":
                labelled += list(rng.choice(rest, size=need, replace=False))
            else:
                probs = model.predict_proba(pool_x[rest])
                labelled += list(rest[uncertainty.pick_next(uncertainty.margins(probs), [str(i) for i in rest], need)])
        model = uncertainty.fit_logistic(pool_x[labelled], pool_y[labelled], seed)
        accuracies.append(float((model.predict(test_x) == test_y).mean()))
    return accuracies


def labels_needed(budgets: list[int], curve: list[float], target: float) -> float | None:
    """The budget at which `curve` first reaches `target` (linear between measured budgets); None if never."""
    for i, acc in enumerate(curve):
        if acc >= target:
            if i == 0:
                return float(budgets[0])
            b0, b1, a0 = budgets[i - 1], budgets[i], curve[i - 1]
            return b0 + (b1 - b0) * (target - a0) / (acc - a0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=10000, help="train-part images in the unlabelled pool")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--group-n", type=int, default=2500, help="test-part images grouped (k-means sweeps cost)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results/grouping.json")
    args = parser.parse_args()
    started = time.perf_counter()
    test_images, test_labels = fashion.load("test")
    train_images, train_labels = fashion.load("train")
    if args.quick:
        test_images, test_labels, args.pool, args.group_n = test_images[:1500], test_labels[:1500], 3000, 1000
    grouped = np.sort(
        np.random.default_rng(0).choice(len(test_images), size=min(args.group_n, len(test_images)), replace=False)
    )
    print(f"grouping {len(grouped)} test images ...", flush=True)
    groups = grouping_scores(test_images[grouped], test_labels[grouped])

    pool = np.random.default_rng(0).choice(len(train_images), size=args.pool, replace=False)
    pool_x, test_x = hog_pca(train_images[pool], test_images)
    pool_y = train_labels[pool]
    small = [100 * i for i in range(1, 11)]
    long = small + [1500, 2000, 3000]
    curves = {"uncertainty": [], "random": []}
    for seed in range(args.seeds):
        print(f"learning curves, seed {seed} ...", flush=True)
        curves["uncertainty"].append(learning_curve(pool_x, pool_y, test_x, test_labels, small, "uncertainty", seed))
        curves["random"].append(learning_curve(pool_x, pool_y, test_x, test_labels, long, "random", seed))
    mean_u = np.mean(curves["uncertainty"], axis=0)
    mean_r = np.mean(curves["random"], axis=0)
    needed = [labels_needed(long, list(mean_r), float(a)) for a in mean_u]
    result = {
        "data": f"Fashion-MNIST test part ({len(grouped)} of its images) for grouping; pool of {args.pool} "
        f"train-part images, accuracy on {len(test_images)} test images",
        "grouping": groups,
        "sampling": {
            "budgets": small,
            "random_budgets": long,
            "seeds": args.seeds,
            "uncertainty_accuracy": [round(float(a), 4) for a in mean_u],
            "random_accuracy": [round(float(a), 4) for a in mean_r],
            "uncertainty_accuracy_per_seed": [[round(a, 4) for a in c] for c in curves["uncertainty"]],
            "random_accuracy_per_seed": [[round(a, 4) for a in c] for c in curves["random"]],
            "random_labels_to_match": [None if n is None else round(n) for n in needed],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(result, args.out)
    print("\n| grouping (test part, labels hidden) | k | ARI |\n|---|---|---|")
    names = {
        "hog_pca_chosen_k_classes_known": "HOG + PCA, k by silhouette in 10..20 (ours, 10 classes known)",
        "hog_pca_chosen_k": "HOG + PCA, k by silhouette in 2..15 (ours, no classes known)",
        "hog_pca_k10": "HOG + PCA, k = 10",
        "pixels_k10": "raw pixels, k = 10",
        "pixels_chosen_k_classes_known": "raw pixels, k by silhouette in 10..20",
        "pixels_chosen_k": "raw pixels, k by silhouette in 2..15",
    }
    for key, name in names.items():
        print(f"| {name} | {groups[key]['k']} | {groups[key]['ari']:.3f} |")
    print("\n| labelled images | uncertainty acc | random acc | random needs |\n|---|---|---|---|")
    for b, u, r, n in zip(small, mean_u, mean_r[: len(small)], needed, strict=True):
        print(f"| {b} | {u:.3f} | {r:.3f} | {'> 3000' if n is None else round(n)} |")
    print(f"\n{result['seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()

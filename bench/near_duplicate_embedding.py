"""Near-duplicates by crop, rotation and shift, verified by an embedding trained on the data set itself
(issue 11; a measurement, not part of clean).

A small CNN is trained contrastively (SimCLR's NT-Xent loss) on the images of a set drawn from
Fashion-MNIST's TRAIN part: two random views of each image are pulled together and every other image
of the batch is pushed away, so the embedding tells one garment from a look-alike of the same class.
The views use generic mild augmentations (torchvision RandomAffine: up to 6 degrees, 8 % translation,
scale 0.9-1.15; brightness and contrast 20 %; a light blur), not the planted generator's functions.
It is then applied, unchanged, to a bench.near_duplicates set drawn from the TEST part. The candidate
pairs are bench.near_duplicate_registration's (hash neighbours + nearest neighbours). The rules are
clean's similarity OR embedding cosine >= t, and clean's similarity OR (cosine >= t AND the registered
similarity of bench.near_duplicate_registration >= r). Reported per rule: recall per planted kind and
the pairs that join two different pictures.

    python -m bench.near_duplicate_embedding [--epochs 15] [--seed 0]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from bench.near_duplicate_registration import best_registered, candidates, per_kind
from bench.near_duplicates import Own, fashion_arrays, make_set
from tasks.checks.similarity import DEFAULT_MIN_SIMILARITY, similarity

THRESHOLDS = (0.9, 0.93, 0.95, 0.97, 0.98)
# both witnesses at once: the embedding and bench.near_duplicate_registration's registered similarity
BOTH = ((0.8, 0.995), (0.85, 0.995), (0.9, 0.995), (0.8, 0.997), (0.9, 0.997), (0.9, 0.993))


def network(dim: int = 64):
    import torch.nn as nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(
        block(1, 32),
        block(32, 32),
        nn.MaxPool2d(2),
        block(32, 64),
        block(64, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(512, dim),
    )


def views(batch):
    import torch
    from torchvision.transforms import v2

    augment = v2.Compose(
        [
            v2.RandomAffine(degrees=6, translate=(0.08, 0.08), scale=(0.9, 1.15)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 0.8))], p=0.3),
        ]
    )
    return torch.stack([augment(x) for x in batch])


def train(images: np.ndarray, epochs: int, seed: int, batch_size: int = 256, temperature: float = 0.1):
    """The embedding network trained with NT-Xent on `images` [N, 28, 28] uint8; returns it in eval mode."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    net = network()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    data = torch.from_numpy(np.array(images)).float().div(255).unsqueeze(1)
    steps = epochs * (len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data) - batch_size + 1, batch_size):
            batch = data[order[start : start + batch_size]]
            z = F.normalize(net(torch.cat([views(batch), views(batch)])), dim=1)
            logits = z @ z.T / temperature
            logits.fill_diagonal_(float("-inf"))
            n = len(batch)
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def embed(net, images: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        data = torch.from_numpy(np.array(images)).float().div(255).unsqueeze(1)
        return torch.cat([F.normalize(net(data[i : i + 512]), dim=1) for i in range(0, len(data), 512)]).numpy()


def as_28(image) -> np.ndarray:
    from PIL import Image

    return np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BILINEAR), dtype=np.uint8)


def measure(epochs: int, seed: int, n: int = 3000, per_kind_count: int = 20) -> dict:
    train_images, _ = fashion_arrays("train")
    picked = np.random.default_rng(100 + seed).choice(len(train_images), n, replace=False)
    started = time.perf_counter()
    net = train(train_images[picked], epochs, seed)
    train_seconds = time.perf_counter() - started

    out = {"epochs": epochs, "seed": seed, "train_images": n, "train_seconds": round(train_seconds, 1), "sets": {}}
    for part, set_seed in (("train", 100), ("test", 0)):
        images, labels = fashion_arrays(part)
        s = make_set(images, labels, n, per_kind_count, set_seed)
        own = Own(s)
        copies, boxes, _, pairs = candidates(own)
        plain = similarity(own.copies, pairs) >= DEFAULT_MIN_SIMILARITY
        z = embed(net, np.stack([as_28(image) for image in s.images]))
        cosine = np.einsum("ij,ij->i", z[pairs[:, 0]], z[pairs[:, 1]])
        registered = best_registered(copies.reshape(len(copies), -1), boxes, pairs)
        rules = {"clean similarity on all candidates": per_kind(s, pairs, plain)}
        for t in THRESHOLDS:
            rules[f"clean similarity OR embedding >= {t}"] = per_kind(s, pairs, plain | (cosine >= t))
        for t, r in BOTH:
            chosen = plain | ((cosine >= t) & (registered >= r))
            rules[f"clean similarity OR (embedding >= {t} AND registered >= {r})"] = per_kind(s, pairs, chosen)
        out["sets"][f"{part} seed {set_seed}"] = {"candidate_pairs": len(pairs), "rules": rules}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.near_duplicate_embedding", description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/near_duplicate_embedding.json"))
    args = parser.parse_args(argv)
    result = measure(args.epochs, args.seed)
    print(f"trained {result['epochs']} epochs in {result['train_seconds']} s")
    for name, found in result["sets"].items():
        for rule, r in found["rules"].items():
            weak = {k: v for k, v in r["recall_per_kind"].items() if v < 0.9}
            print(f"{name} | {rule}: recall {r['recall']}, wrong pairs {r['wrong_pairs']}; below 0.9: {weak}")
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

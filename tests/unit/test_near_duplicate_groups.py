import numpy as np

from tasks.checks.phash import hamming, near_duplicate_groups

MASK64 = (1 << 64) - 1


def as_unsigned(value):
    return int(value) & MASK64


def random_hashes(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64, endpoint=True)


def near(value, bits, rng):
    """`value` with `bits` distinct bits flipped, as int64."""
    flipped = as_unsigned(value)
    for b in rng.choice(64, bits, replace=False):
        flipped ^= 1 << int(b)
    return flipped - (1 << 64) if flipped >= 1 << 63 else flipped


def test_groups_equal_brute_force_components():
    rng = np.random.default_rng(3)
    base = random_hashes(60, seed=3)
    # clusters around a few centres plus exact repeats, so radius queries have real answers
    hashes = [int(h) for h in base] + [near(int(base[i % 10]), int(rng.integers(0, 7)), rng) for i in range(240)]
    hashes += hashes[:20]
    for radius in (0, 3, 6):
        # brute force: flood fill over all pairs within the radius
        n, expected = len(hashes), [-1] * len(hashes)
        for start in range(n):
            if expected[start] >= 0:
                continue
            expected[start], todo = start, [start]
            while todo:
                i = todo.pop()
                for j in range(n):
                    if expected[j] < 0 and hamming(np.array([hashes[i]]), np.array([hashes[j]]))[0] <= radius:
                        expected[j] = start
                        todo.append(j)
        assert near_duplicate_groups(hashes, radius).tolist() == expected


def test_groups_are_chained_components():
    rng = np.random.default_rng(0)
    a = int(random_hashes(1, seed=9)[0])
    b = near(a, 3, rng)
    c = near(b, 3, rng)  # possibly 6 bits from a: joined through b
    far = int(random_hashes(1, seed=10)[0])
    groups = near_duplicate_groups([far, a, b, c, far], radius=4)
    assert groups.tolist() == [0, 1, 1, 1, 0]
    assert near_duplicate_groups([a, b], radius=2).tolist() == [0, 1]

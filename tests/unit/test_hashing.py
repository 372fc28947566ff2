import numpy as np

from tasks.hashing import BKTree, as_unsigned, hamming, near_duplicate_groups


def random_hashes(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64, endpoint=True)


def near(value, bits, rng):
    """`value` with `bits` distinct bits flipped, as int64."""
    flipped = as_unsigned(value)
    for b in rng.choice(64, bits, replace=False):
        flipped ^= 1 << int(b)
    return flipped - (1 << 64) if flipped >= 1 << 63 else flipped


def test_hamming_on_int64_uses_all_64_bits():
    assert hamming(-1, 0) == 64
    assert hamming(np.int64(-(2**63)), 0) == 1


def test_bk_tree_search_equals_brute_force():
    rng = np.random.default_rng(3)
    base = random_hashes(60, seed=3)
    # clusters around a few centres plus exact repeats, so radius queries have real answers
    hashes = [int(h) for h in base] + [near(int(base[i % 10]), int(rng.integers(0, 7)), rng) for i in range(240)]
    hashes += hashes[:20]
    tree = BKTree()
    for i, h in enumerate(hashes):
        tree.add(h, i)
    for radius in (0, 3, 6):
        for q in hashes[::7]:
            expected = sorted(i for i, h in enumerate(hashes) if hamming(q, h) <= radius)
            assert sorted(tree.search(q, radius)) == expected


def test_groups_are_chained_components():
    rng = np.random.default_rng(0)
    a = int(random_hashes(1, seed=9)[0])
    b = near(a, 3, rng)
    c = near(b, 3, rng)  # possibly 6 bits from a: joined through b
    far = int(random_hashes(1, seed=10)[0])
    groups = near_duplicate_groups([far, a, b, c, far], radius=4)
    assert groups.tolist() == [0, 1, 1, 1, 0]
    assert near_duplicate_groups([a, b], radius=2).tolist() == [0, 1]

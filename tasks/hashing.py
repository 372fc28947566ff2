"""Hamming-space search over 64-bit perceptual hashes: a BK-tree for radius queries and the grouping
of near-duplicates (connected components of "within radius") built on it. Hashes arrive as int64
(the manifest's `phash` column) and are handled as unsigned 64-bit integers."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

MASK64 = (1 << 64) - 1


def as_unsigned(value: int) -> int:
    """int64 from parquet -> the same 64 bits as a non-negative Python int."""
    return int(value) & MASK64


def hamming(a: int, b: int) -> int:
    return (as_unsigned(a) ^ as_unsigned(b)).bit_count()


class BKTree:
    """Burkhard-Keller tree in the Hamming metric. Equal hashes share one node (a list of keys), so
    many identical hashes never build a long chain of distance-0 children."""

    def __init__(self) -> None:
        self._root: list | None = None  # node = [hash, keys, {distance: child}]

    def add(self, value: int, key) -> None:
        value = as_unsigned(value)
        if self._root is None:
            self._root = [value, [key], {}]
            return
        node = self._root
        while True:
            d = (value ^ node[0]).bit_count()
            if d == 0:
                node[1].append(key)
                return
            child = node[2].get(d)
            if child is None:
                node[2][d] = [value, [key], {}]
                return
            node = child

    def search(self, value: int, radius: int) -> list:
        """Keys of every hash within `radius` bits of `value`."""
        value = as_unsigned(value)
        found: list = []
        stack = [self._root] if self._root is not None else []
        while stack:
            node = stack.pop()
            d = (value ^ node[0]).bit_count()
            if d <= radius:
                found.extend(node[1])
            # triangle inequality: only children at distance d-radius..d+radius can hold a match
            for edge, child in node[2].items():
                if d - radius <= edge <= d + radius:
                    stack.append(child)
        return found


def near_duplicate_groups(hashes: Sequence[int] | Iterable[int], radius: int) -> np.ndarray:
    """Group id per hash: i and j share a group when a chain of hashes links them, each step within
    `radius` bits. The id is the position of the group's first member, so it is deterministic."""
    values = [as_unsigned(h) for h in hashes]
    parent = list(range(len(values)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = BKTree()
    for i, value in enumerate(values):
        for j in tree.search(value, radius):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
        tree.add(value, i)
    return np.array([find(i) for i in range(len(values))], dtype=np.int64)

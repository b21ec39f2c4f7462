"""Groups of images that are the same picture: byte-for-byte copies, and near copies (re-encoded,
resized, slightly cropped) found by a perceptual hash or by the cosine similarity of a backbone's
features.

Nothing here holds an N x N matrix: hashes are compared only within buckets that share a part of the
hash (multi-index hashing: two 64-bit hashes within ``d`` bits agree exactly on at least one of ``d + 1``
parts), and features are compared in tiles of ``block x block``, so 100,000 images need memory for a
tile, not for 10^10 pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise

import numpy as np

BLOCK = 1024


class DisjointSets:
    """Union-find over ``0..n-1``: pairs in, groups out."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def groups(self) -> list[list[int]]:
        """Sets of two or more members, each sorted, in order of their first member."""
        members: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            members[self.find(i)].append(i)
        return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def exact_pairs(digests: Sequence[str]) -> Iterator[tuple[int, int]]:
    """Each file paired with the first earlier file of the same content hash."""
    first: dict[str, int] = {}
    for i, digest in enumerate(digests):
        if digest in first:
            yield first[digest], i
        else:
            first[digest] = i


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    as_bytes = values.astype(np.uint64).view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def hash_pairs(hashes: Sequence[int], max_distance: int) -> Iterator[tuple[int, int]]:
    """Pairs ``i < j`` whose 64-bit hashes differ in at most ``max_distance`` bits, each once."""
    values = np.asarray([int(h) for h in hashes], dtype=np.uint64)
    parts = max_distance + 1
    edges = np.linspace(0, 64, parts + 1).astype(int)
    seen: set[tuple[int, int]] = set()
    for low, high in pairwise(edges):
        mask = np.uint64((1 << int(high - low)) - 1)
        keys = (values >> np.uint64(low)) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            if end - start < 2:
                continue
            members = np.sort(order[start:end])
            for offset, i in enumerate(members[:-1]):
                others = members[offset + 1 :]
                close = others[popcount(values[others] ^ values[i]) <= max_distance]
                for j in close:
                    pair = (int(i), int(j))
                    if pair not in seen:
                        seen.add(pair)
                        yield pair


def feature_pairs(
    features: np.ndarray, threshold: float, *, block: int = BLOCK
) -> Iterator[tuple[int, int, float]]:
    """Pairs ``i < j`` whose feature vectors' cosine similarity is at least ``threshold``, compared a
    ``block x block`` tile at a time (``features`` may be memory-mapped: it is read a block at a time)."""
    n = len(features)
    for i0 in range(0, n, block):
        rows = _unit(features[i0 : i0 + block])
        for j0 in range(i0, n, block):
            cols = rows if j0 == i0 else _unit(features[j0 : j0 + block])
            sims = rows @ cols.T
            if j0 == i0:
                sims = np.triu(sims, k=1) - np.tril(np.ones_like(sims))  # each pair once, never itself
            for a, b in zip(*np.nonzero(sims >= threshold), strict=True):
                yield i0 + int(a), j0 + int(b), float(sims[a, b])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(_unit(np.asarray(a)[None])[0] @ _unit(np.asarray(b)[None])[0])


def _unit(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, 1e-12)


def group(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected groups that ``pairs`` make among ``n`` items (two or more members each): for
    relations that are transitive (byte-for-byte copies)."""
    sets = DisjointSets(n)
    for i, j in pairs:
        sets.union(i, j)
    return sets.groups()


def near_groups(
    n: int, exact: Iterable[tuple[int, int]], near: Iterable[tuple[int, int, float]]
) -> list[list[int]]:
    """Groups in which every member is near every other (complete linkage), never chains.

    Nearness is not transitive: A near B and B near C says nothing of A and C, and single-link groups of
    ten thousand photos chain a whole class together. Copies of one file (``exact``) count as one item;
    ``near`` pairs ``(i, j, similarity)`` join two groups, the most similar first, only when every
    member of one is near every member of the other.
    """
    copies = DisjointSets(n)
    for i, j in exact:
        copies.union(i, j)
    edges: dict[tuple[int, int], float] = {}
    for i, j, similarity in near:
        a, b = copies.find(i), copies.find(j)
        if a != b:
            key = (min(a, b), max(a, b))
            edges[key] = max(edges.get(key, similarity), similarity)
    members: dict[int, list[int]] = {}  # a group's id -> the copy sets (their roots) in it
    group_of: dict[int, int] = {}
    for (a, b), _ in sorted(edges.items(), key=lambda e: -e[1]):
        ga, gb = group_of.get(a, a), group_of.get(b, b)
        if ga == gb:
            continue
        left, right = members.get(ga, [ga]), members.get(gb, [gb])
        if all((min(x, y), max(x, y)) in edges for x in left for y in right):
            members[ga] = left + right
            members.pop(gb, None)
            for root in right:
                group_of[root] = ga
            group_of[ga] = ga
    roots = {root: [] for root in range(n)}
    for i in range(n):
        roots[copies.find(i)].append(i)
    grouped: list[list[int]] = []
    placed: set[int] = set()
    for gid, sets in members.items():
        if group_of.get(gid, gid) != gid:
            continue
        grouped.append(sorted(i for root in sets for i in roots[root]))
        placed.update(sets)
    grouped += [items for root, items in roots.items() if len(items) > 1 and root not in placed]
    return sorted(grouped, key=lambda m: m[0])

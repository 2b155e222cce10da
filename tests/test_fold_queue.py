"""The fold scheduler of ``cv --gpus N``: one worker per device pulls folds from a queue, so a device
never runs two folds at once and never idles while folds remain. Fake devices and fake fold processes
on the CPU: what is tested is the scheduling, not the training."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import quick_config
from liverscope.errors import LiverscopeError, UsageError
from liverscope.ui.cli import app


class FakeFolds:
    """``launch(fold, device)`` that sleeps ``seconds[fold]`` and records when each fold ran where,
    and how many folds each device was running at any moment."""

    def __init__(self, seconds: dict[int, float], codes: dict[int, int] | None = None):
        self.seconds, self.codes = seconds, codes or {}
        self.lock = threading.Lock()
        self.spans: list[tuple[str, int, float, float]] = []
        self.running: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}

    def __call__(self, fold: int, device: str) -> int:
        with self.lock:
            self.running[device] = self.running.get(device, 0) + 1
            self.most_at_once[device] = max(self.most_at_once.get(device, 0), self.running[device])
        start = time.monotonic()
        time.sleep(self.seconds.get(fold, 0.05))
        end = time.monotonic()
        with self.lock:
            self.running[device] -= 1
            self.spans.append((device, fold, start, end))
        return self.codes.get(fold, 0)


def test_two_workers_five_folds_never_two_folds_on_one_device():
    from liverscope.training.cv import run_fold_queue

    # fold 0 is slow: a pool sending fold i to device i % 2 would queue folds 2 and 4 behind it on
    # device "0" while device "1" sat idle after fold 3
    fake = FakeFolds({0: 0.8, 1: 0.05, 2: 0.05, 3: 0.05, 4: 0.05})
    t0 = time.monotonic()
    codes = run_fold_queue(range(5), ["0", "1"], fake)
    wall = time.monotonic() - t0
    assert codes == {i: 0 for i in range(5)}
    assert sorted(f for _, f, _, _ in fake.spans) == [0, 1, 2, 3, 4]  # every fold once
    assert fake.most_at_once == {"0": 1, "1": 1}
    for device in ("0", "1"):
        spans = sorted((s, e) for d, _, s, e in fake.spans if d == device)
        assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:])), (
            f"two folds overlapped on device {device}"
        )
    slow = next(d for d, f, _, _ in fake.spans if f == 0)
    assert [f for d, f, _, _ in fake.spans if d == slow] == [0]  # the other device took every other fold
    assert wall < 0.8 + 0.2 + 0.5  # in parallel: about the slow fold's time, not the sum


def test_a_failed_fold_is_reported_and_the_others_still_run():
    from liverscope.training.cv import run_fold_queue

    fake = FakeFolds({}, codes={2: 3})
    codes = run_fold_queue([0, 1, 2, 3], ["a", "b", "c"], fake)
    assert codes == {0: 0, 1: 0, 2: 3, 3: 0}
    assert max(fake.most_at_once.values()) == 1
    with pytest.raises(UsageError, match="no devices"):
        run_fold_queue([0], [], fake)


def test_fold_processes_see_one_gpu_and_get_resume(monkeypatch, tmp_path):
    import liverscope.training.cv as cv

    seen = []

    class Done:
        returncode = 0

    def fake_run(cmd, env, check):
        seen.append((cmd, env["CUDA_VISIBLE_DEVICES"]))
        return Done()

    monkeypatch.setattr(cv.subprocess, "run", fake_run)
    cfg_path = tmp_path / "config.yaml"
    assert cv.fold_process_launcher(cfg_path, resume=True)(3, "1") == 0
    cmd, device = seen[0]
    assert device == "1"
    assert cmd[1:4] == ["-m", "liverscope", "cv"] and cmd[cmd.index("--recipe") + 1] == str(cfg_path)
    assert cmd[cmd.index("--fold") + 1] == "3" and "--resume" in cmd and "--no-auto-aggregate" in cmd
    cv.fold_process_launcher(cfg_path, resume=False)(0, "0")
    assert "--resume" not in seen[1][0]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    from liverscope.training.cv import visible_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus(3) == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert visible_gpus(2) == ["4", "6"]
    with pytest.raises(UsageError, match="names only 3 GPU"):
        visible_gpus(4)


def test_folds_per_gpu_share_each_gpu_up_to_the_limit(monkeypatch):
    """--folds-per-gpu M: every GPU is M slots, so the queue runs up to M folds on it at once, no more."""
    from liverscope.training.cv import run_fold_queue, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots = visible_gpus(2, per_gpu=3)
    assert slots == ["3", "3", "3", "5", "5", "5"]
    fake = FakeFolds({f: 0.2 for f in range(8)})
    assert run_fold_queue(range(8), slots, fake) == {f: 0 for f in range(8)}
    assert fake.most_at_once == {"3": 3, "5": 3}
    with pytest.raises(UsageError, match="at least 1"):
        visible_gpus(1, per_gpu=0)


@pytest.fixture(scope="module")
def small_phantoms(tmp_path_factory) -> Path:
    from liverscope.data.datasets import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("queue-phantoms"), n_per_class=6, size=32, seed=4)


def test_the_parent_audits_once_and_queues_every_fold(small_phantoms, tmp_path, monkeypatch):
    """cv on devices: the parent writes config.yaml and the split (the one audit), the queue gets every
    fold, and a failed fold stops the aggregation with a message that says how to continue."""
    import liverscope.training.datamodule as train
    from liverscope.rundir import read_config, read_split
    from liverscope.training.cv import cross_validate_on_devices

    audits = []
    real_audit = train.audit_dataset
    monkeypatch.setattr(
        train, "audit_dataset", lambda samples: audits.append(len(samples)) or real_audit(samples)
    )
    cfg = quick_config(small_phantoms, tmp_path, "queued", **{"data.image_size": 32})
    fake = FakeFolds({}, codes={1: 1})
    with pytest.raises(LiverscopeError, match=r"\{1: 1\}.*--resume"):
        cross_validate_on_devices(cfg, 3, 0.2, ["x", "y"], launch=fake)
    assert audits == [30]
    run = tmp_path / "queued"
    _, outer, folds = read_split(run / "split.csv")
    assert sorted(set(folds[outer == "dev"])) == [0, 1, 2]
    assert read_config(run).to_dict() == cfg.to_dict()  # what the fold processes read
    assert sorted(f for _, f, _, _ in fake.spans) == [0, 1, 2] and set(fake.most_at_once) <= {"x", "y"}
    assert not (run / "metrics.json").exists()  # nothing aggregated over a failed fold


def test_gpus_with_several_devices_per_fold_is_refused(small_phantoms, tmp_path):
    from liverscope.training.cv import cross_validate_on_devices

    cfg = quick_config(small_phantoms, tmp_path, "both", **{"train.devices": "2"})
    with pytest.raises(UsageError, match="one fold per GPU"):
        cross_validate_on_devices(cfg, 3, 0.2, ["0", "1"], launch=FakeFolds({}))
    assert not (tmp_path / "both").exists()


def test_folds_per_gpu_needs_gpus(tmp_path):
    """--folds-per-gpu without --gpus is a usage error (exit 2) that says what to add, before any work."""
    res = CliRunner().invoke(app, ["cv", str(tmp_path), "--folds-per-gpu", "3", "--name", "x"])
    assert res.exit_code == 2 and "--gpus" in res.output, res.output
    assert not (tmp_path / "runs").exists()

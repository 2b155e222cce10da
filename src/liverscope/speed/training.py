"""``train.precision: auto`` by measurement: fp32 against bf16-mixed, timed on the run's own model.

Where the hardware computes bf16 natively (a CPU with AVX-512-BF16 or AMX, a GPU that supports bf16),
:func:`choose_training_precision` times a few training steps (forward, loss, backward) of a copy of
the run's model at the run's batch size and input size in each precision, on synthetic input of that
shape, and keeps the faster (bf16 only when it is at least :data:`MIN_SPEEDUP` faster: it rounds, so a
tie goes to fp32). Whether bf16 wins depends on the model: on one AMX CPU, autocast made ResNet-50
2.35x faster to train and EfficientNet-Lite0 0.86x (issue 26). Elsewhere bf16 is emulated, several
times slower, and fp32 is kept without timing. The timings are kept per machine
(:mod:`liverscope.speed.cache`), so the folds of a ``cv`` run and later runs pay for them once; a
timing taken on a busy CPU (another job sharing the cores skews the two precisions unevenly: one
such entry said bf16 2.05x faster where a quiet run found about 1.1x) is taken again once the
machine is at most half as busy.
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import torch

from liverscope.speed import cache
from liverscope.utils import cpu_has_native_bf16

FP32, BF16 = "32-true", "bf16-mixed"
#: bf16 must be at least this much faster per step than fp32 to be chosen.
MIN_SPEEDUP = 1.05
#: Timed steps per precision (after one untimed warm-up step each), interleaved fp32/bf16 so that a
#: change of the machine's load hits both; the median is kept.
STEPS = 3
CACHE_KIND = "train-precision"
#: 1-minute load average per core at or above which a CPU timing counts as taken on a busy machine.
BUSY = 0.5


def load_per_core() -> float | None:
    """The CPU's 1-minute load average per core, or ``None`` where the system keeps none (Windows)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return None


def _retake(stored: dict | None, load: float | None) -> bool:
    """Whether a cached timing was taken on a busy CPU that is now at most half as busy."""
    then = (stored or {}).get("load_per_core")
    return then is not None and load is not None and then >= BUSY and load <= then / 2


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bf16 in hardware (a GPU that supports it, a CPU with AVX-512-BF16 or AMX)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    """Seconds of one training step (forward, cross-entropy, backward) in fp32 or bf16 autocast."""
    kind = "cuda" if x.is_cuda else "cpu"
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def time_training_steps(
    model: torch.nn.Module,
    batch: int,
    size: int,
    device: str = "cpu",
    channels_last: bool = True,
    steps: int = STEPS,
) -> dict[str, float]:
    """Median seconds per training step of ``model`` in fp32 and in bf16-mixed, on a copy (the
    model's weights and batch-norm statistics are not touched) and synthetic ``batch x 3 x size x size`` input."""
    net = copy.deepcopy(model).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt)
    with torch.no_grad():
        classes = int(net(x[:2]).shape[1])
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    times: dict[str, list[float]] = {FP32: [], BF16: []}
    for i in range(steps + 1):
        for name in (FP32, BF16):
            seconds = _step(net, x, y, name == BF16)
            if i:  # the first step of each allocates and picks kernels
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def choose_training_precision(
    model: torch.nn.Module,
    model_name: str,
    batch: int,
    size: int,
    device: str = "cpu",
    channels_last: bool = True,
    use_cache: bool = True,
) -> dict:
    """``train.precision: auto`` on one device: the precision to train in, and why.

    Returns:
        ``{"precision": "32-true" | "bf16-mixed", "reason": ..., "seconds_per_step": {precision: s} or
        None, "cached": bool, "batch", "size", "device"}`` (what ``model.json["training_precision"]`` holds).
    """
    out = {
        "batch": int(batch),
        "size": int(size),
        "device": device,
        "seconds_per_step": None,
        "cached": False,
    }
    if not native_bf16(device):
        where = "this GPU" if str(device).startswith("cuda") else "this CPU (no AVX-512-BF16 or AMX)"
        return {**out, "precision": FP32, "reason": f"bf16 is not native on {where}: fp32, not timed"}
    key = {
        "model": model_name,
        "batch": int(batch),
        "size": int(size),
        "channels_last": bool(channels_last),
        "first_stage": "fp32",  # timings made before models/stem.py kept the first stage in fp32 are not reused
    }
    load = None if str(device).startswith("cuda") else load_per_core()
    timings = cache.lookup(CACHE_KIND, key, device) if use_cache else None
    if _retake(timings, load):
        timings = None
    out["cached"] = timings is not None
    if timings is None:
        # the timing draws random input: the run's seeded random streams must not see it
        with torch.random.fork_rng(devices=[] if not str(device).startswith("cuda") else None):
            timings = time_training_steps(model, batch, size, device, channels_last)
        if use_cache:
            cache.store(CACHE_KIND, key, {**timings, "load_per_core": load}, device)
    timings = {FP32: timings[FP32], BF16: timings[BF16]}
    speedup = timings[FP32] / timings[BF16]
    precision = BF16 if speedup >= MIN_SPEEDUP else FP32
    verdict = "faster" if precision == BF16 else f"not {MIN_SPEEDUP}x faster"
    reason = (
        f"measured{' earlier' if out['cached'] else ''}: {timings[FP32]:.3f} s/step fp32, {timings[BF16]:.3f} s/step bf16-mixed "
        f"({speedup:.2f}x): bf16 {verdict}"
    )
    return {
        **out,
        "precision": precision,
        "reason": reason,
        "seconds_per_step": {k: round(v, 4) for k, v in timings.items()},
    }


__all__ = [
    "FP32",
    "BF16",
    "MIN_SPEEDUP",
    "STEPS",
    "BUSY",
    "load_per_core",
    "native_bf16",
    "time_training_steps",
    "choose_training_precision",
]

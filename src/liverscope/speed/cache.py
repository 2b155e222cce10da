"""Timings measured on this machine, kept between runs in one small JSON file.

The file is ``$LIVERSCOPE_TIMINGS`` when set (``off`` keeps nothing), else ``timings.json`` in the
user's cache folder (``$XDG_CACHE_HOME/liverscope``, ``~/.cache/liverscope``; ``%LOCALAPPDATA%`` on
Windows). An entry is found by what was measured (``kind`` and ``key``: model, batch, size ...) on
this machine (:func:`machine`: CPU model, cores, torch threads and version, GPU name), so a figure
measured elsewhere, or with another torch, is never reused. Writes are atomic; a damaged file is
ignored (and replaced by the next write), never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from liverscope.utils import atomic_write_json, cpu_has_native_bf16, read_json

ENV = "LIVERSCOPE_TIMINGS"


def cache_file() -> Path | None:
    """The timings file, or ``None`` when ``$LIVERSCOPE_TIMINGS`` is ``off``."""
    env = os.environ.get(ENV)
    if env:
        return None if env.lower() == "off" else Path(env).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "liverscope" / "timings.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "liverscope" / "timings.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """What makes a timing this machine's: CPU model, cores, torch threads and version, native bf16,
    and the GPU's name on a CUDA ``device``."""
    out = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "native_bf16": cpu_has_native_bf16(),
    }
    if str(device).startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def _entry_id(kind: str, key: dict, device: str) -> str:
    text = json.dumps({"kind": kind, "key": key, "machine": machine(device)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read(path: Path) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(kind: str, key: dict, device: str = "cpu") -> dict | None:
    """The value stored for ``kind``/``key`` on this machine, or ``None``."""
    path = cache_file()
    if path is None or not path.is_file():
        return None
    entry = _read(path).get(_entry_id(kind, key, device))
    return entry.get("value") if isinstance(entry, dict) else None


def store(kind: str, key: dict, value: dict, device: str = "cpu") -> Path | None:
    """Keep ``value`` for ``kind``/``key`` on this machine (atomic replace of the whole file; a write
    that fails is skipped: the cache is an optimisation)."""
    path = cache_file()
    if path is None:
        return None
    data = _read(path) if path.is_file() else {}
    data[_entry_id(kind, key, device)] = {
        "kind": kind,
        "key": key,
        "machine": machine(device),
        "value": value,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        return atomic_write_json(path, data)
    except OSError:
        return None


__all__ = ["ENV", "cache_file", "machine", "lookup", "store"]

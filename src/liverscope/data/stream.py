"""Decoding files ahead of a model: the window of files in flight that
:meth:`liverscope.inference.predict.Predictor.predict_paths` streams through, and its process pool.

Two schedules (:func:`decoded`): ``overlap`` keeps the window full, so the workers decode while the
caller scores what came before; ``alternate`` decodes a whole window, hands it over, and decodes the next
only when the caller asks for more, so that the workers and the caller's model never run at once.
Nothing here knows of models or torch: a spawned decode process imports this module and
:mod:`liverscope.data.preprocess` only.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path

import cv2
import numpy as np

from liverscope.data.preprocess import Preprocessing, load_model_input
from liverscope.errors import ImageReadError


def worker_init() -> None:
    """Initializer of a decode process: one OpenCV thread (the pool runs one process per core)."""
    cv2.setNumThreads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` decode processes, spawned (a fork of a process whose OpenMP or OpenCV thread pools
    have run can hang), each with one OpenCV thread. The caller's script needs the
    ``if __name__ == "__main__":`` guard that spawned processes require."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init
    )


def pool_load_model_input(
    path: str | Path, pp: Preprocessing, frames: str = "middle", channels_first: bool = False
) -> np.ndarray | tuple[str, str, str]:
    """:func:`~liverscope.data.preprocess.load_model_input` for a process pool: an unreadable file comes
    back as ``(path, reason, fix)``, the arguments of its :class:`~liverscope.errors.ImageReadError`, which
    cannot cross a process boundary itself (its constructor takes three arguments, unpickling passes one,
    and ``concurrent.futures`` then declares the whole pool broken)."""
    try:
        return load_model_input(path, pp, frames, channels_first)
    except ImageReadError as exc:
        return (exc.path, exc.reason, exc.fix)


def decoded(
    files: Iterator[Path], submit: Callable[[Path], Future], window: int, alternate: bool
) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """``(path, model input, None)`` or ``(path, None, why it was skipped)`` for each file, in order.

    Args:
        files: the files, read lazily.
        submit: starts decoding one file in a pool and returns its future (an array, or
            :func:`pool_load_model_input`'s ``(path, reason, fix)``).
        window: most files decoded or decoding but not yet handed over.
        alternate: decode a whole window, hand it over, and start the next window only when the caller
            asks for the item after it (so not while the caller scores); else keep the window full.
    """
    pending: deque = deque()

    def fill() -> None:
        while len(pending) < window:
            path = next(files, None)
            if path is None:
                return
            pending.append((path, submit(path)))

    fill()
    try:
        while pending:
            if alternate:
                wait_all([f for _, f in pending])  # the decode phase ends before the caller goes on
            path, fut = pending.popleft()
            if not alternate:
                fill()
            try:
                x = fut.result()
                if isinstance(x, tuple):
                    raise ImageReadError(*x)
                yield path, x, None
            except ImageReadError as exc:
                yield path, None, f"{exc.reason} ({exc.fix})"
            except Exception as exc:  # a batch job lists a file it cannot process and goes on
                yield path, None, f"cannot preprocess ({type(exc).__name__}: {exc})"
            if alternate and not pending:
                fill()
    finally:
        for _, fut in pending:  # stopped early: queued files are not decoded for nothing
            fut.cancel()

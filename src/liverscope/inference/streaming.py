"""Scoring files as a stream (:meth:`FileStreaming.predict_paths`): decode threads or processes run ahead
of the model by a bounded window, batches are scored in input order, unreadable files become error
results. A base of :class:`~liverscope.inference.predict.Predictor`, kept apart because it is one job:
the decode/score pipeline over files. It uses what the predictor holds — ``pp``, ``engine``,
``batch_size``, ``workers``, ``schedule``, ``pool``, ``_process_pool``, ``_infer`` and ``_results``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from liverscope.config import parse_frames
from liverscope.data.io import iter_image_files
from liverscope.data.preprocess import load_model_input
from liverscope.data.stream import decoded, pool_load_model_input
from liverscope.inference.results import Result


class FileStreaming:
    """The file-streaming half of a predictor (see the module's docstring)."""

    def _load(self, path: Path) -> np.ndarray:
        """Worker: file → the model's float32 input in the engine's layout (``HxWx3``, or ``3xHxW`` for
        ONNX Runtime): decode + preprocess + normalise, the GIL mostly released."""
        return load_model_input(path, self.pp, "middle", self.engine.channels_first)[0]

    def _load_frames(self, path: Path, frames: str = "middle") -> np.ndarray:
        """Worker: file → the model's float32 inputs of the ``frames`` of a cine loop (``F`` x the layout
        of :meth:`_load`; one frame for a still image or ``middle``)."""
        if frames == "middle":
            return self._load(path)[None]
        return load_model_input(path, self.pp, frames, self.engine.channels_first)

    def predict_paths(
        self, paths: Iterable[str | Path], window: int | None = None, frames: str = "middle"
    ) -> Iterator[Result]:
        """Stream results for files and folders in input order; unreadable files yield an error result.

        ``workers`` decode; at most ``window`` files are decoded but not yet yielded, so memory stays flat.
        ``schedule="alternate"``: they decode a window (default: whole batches, two files per worker or
        more), then the model scores it; ``"overlap"``: they run ahead (two batches plus one per worker).

        Args:
            paths: files and folders (searched recursively, see :func:`iter_image_files`).
            window: files in flight.
            frames: frames of a DICOM cine loop to score (``middle``, ``all``, ``every:N``); a file's
                result averages the probabilities of its frames (:attr:`Result.frames` says how many).
        """
        parse_frames(frames)  # a wrong setting fails before any file is read
        alternate, b = self.schedule == "alternate", self.batch_size
        window = int(window or (-(-max(b, 2 * self.workers) // b) * b if alternate else 2 * b + self.workers))
        files = iter_image_files(paths)
        if self.pool == "process":
            args = (self.pp, frames, self.engine.channels_first)
            with nullcontext(self._process_pool()) as pool:  # kept between calls: spawning costs seconds
                yield from self._stream(
                    decoded(
                        files, lambda path: pool.submit(pool_load_model_input, path, *args), window, alternate
                    )
                )
        else:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="liverscope-decode") as pool:
                yield from self._stream(
                    decoded(
                        files, lambda path: pool.submit(self._load_frames, path, frames), window, alternate
                    )
                )

    def _stream(self, items: Iterator[tuple[Path, np.ndarray | None, str | None]]) -> Iterator[Result]:
        """Batches of decoded files (:func:`~liverscope.data.stream.decoded`) scored, results in order."""
        batch: list[tuple[str, np.ndarray | None, str | None]] = []
        n_good = 0
        for path, x, err in items:
            batch.append((str(path), x, err))
            n_good += x is not None
            if n_good >= self.batch_size:
                yield from self._score(batch)
                batch, n_good = [], 0
        if batch:
            yield from self._score(batch)

    def _score(self, batch: list[tuple[str, np.ndarray | None, str | None]]) -> list[Result]:
        """Results for one batch of decoded entries, in order; failed entries become error results."""
        good = [(p, x) for p, x, _ in batch if x is not None]
        if not good:
            return [Result(p, error=err) for p, _, err in batch]
        x = np.concatenate([x for _, x in good])  # in the layout the workers made: the engine's
        scored = iter(
            self._results(
                [p for p, _ in good], *self._infer(x, self.engine.channels_first), [len(x) for _, x in good]
            )
        )
        return [next(scored) if x is not None else Result(p, error=err) for p, x, err in batch]

"""ONNX export of a run: ``RUN_DIR/model.onnx`` with a dynamic batch axis, verified against torch.

The graph has two outputs from one forward pass: ``logits`` and ``features`` (the pooled last feature
map, which the out-of-distribution score needs; an export without it counts as stale). The export is
written to a temporary file, ONNX Runtime scores check inputs, and only when its logits (and features)
agree with the torch model's within ``atol`` does the file replace ``model.onnx``; ``model.json``
then records the export (with the SHA-256 of the weights, so retraining marks it stale:
:func:`liverscope.rundir.onnx_state`). :class:`~liverscope.inference.predict.Predictor` then times it against the
torch model and uses the faster (:mod:`liverscope.speed.serving`). The int8 export is :mod:`liverscope.inference.quantize`.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from liverscope import rundir
from liverscope.errors import LiverscopeError
from liverscope.utils import atomic_path, file_sha256, import_optional

#: Largest |logit(ONNX) - logit(torch)| that :func:`export_onnx` accepts.
ONNX_ATOL = 1e-3
ONNX_OPSET = 18
OUTPUTS = ("logits", "features")


class LogitsAndFeatures(torch.nn.Module):
    """The exported graph: a LiverNet returning ``(logits, pooled features)`` from one pass."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_features(x)


def _check_inputs(size: int, batch: int, seed: int) -> list[np.ndarray]:
    """Inputs to compare the two runtimes on: normalised noise (batch 1 and ``batch``: exercises the
    dynamic batch axis) and a smooth ultrasound-like ramp, whose activations are less extreme."""
    g = np.random.default_rng(seed)
    ramp = np.linspace(-2, 2, size, dtype=np.float32)
    smooth = np.broadcast_to((ramp[:, None] + ramp[None, :])[None, None] / 2, (1, 3, size, size)).copy()
    return [
        g.standard_normal((1, 3, size, size), dtype=np.float32),
        g.standard_normal((batch, 3, size, size), dtype=np.float32),
        smooth,
    ]


def _export_graph(model: torch.nn.Module, size: int, opset: int, tmp: Path, run_dir: Path) -> None:
    """The dynamo export of ``(logits, features)`` with a dynamic batch axis, saved to ``tmp``."""
    example = torch.zeros(1, 3, size, size)
    chatter = io.StringIO()
    # the exporter prints its progress to stderr even with verbose=False; keep it for the error message
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(chatter),
        contextlib.redirect_stdout(chatter),
    ):
        warnings.simplefilter("ignore")  # deprecation notes about exporter internals
        try:
            prog = torch.onnx.export(
                LogitsAndFeatures(model),
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=list(OUTPUTS),
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                verbose=False,
            )
            prog.save(str(tmp))
        except Exception as exc:
            tail = chatter.getvalue()[-500:]
            raise LiverscopeError(
                f"{run_dir}: ONNX export failed ({type(exc).__name__}: {str(exc)[:300]}) {tail}"
            ) from None


def _describe_file(onnx, tmp: Path, meta: dict) -> None:
    """Self-describing file: labels and preprocessing travel inside the .onnx too."""
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(
        proto,
        {
            "labels": json.dumps(meta["labels"]),
            "preprocessing": json.dumps(meta["preprocessing"]),
            "producer": "liverscope",
        },
    )
    onnx.save(proto, str(tmp))


def _differences(
    session, model: torch.nn.Module, size: int, check_batch: int, seed: int, run_dir: Path
) -> tuple[float, float, list[int]]:
    """ONNX Runtime against torch on the check inputs: the largest absolute logit difference, the largest
    feature difference relative to the features' scale, and the batch sizes checked."""
    diffs, feature_diffs, batches = [], [], []
    for x in _check_inputs(size, check_batch, seed):
        with torch.inference_mode():
            ref, ref_feat = (t.numpy() for t in model.forward_with_features(torch.from_numpy(x)))
        got, got_feat = session.run(None, {session.get_inputs()[0].name: x})[:2]
        if got.shape != ref.shape or got_feat.shape != ref_feat.shape:
            raise LiverscopeError(
                f"{run_dir}: ONNX output shapes {got.shape}, {got_feat.shape} != torch {ref.shape}, {ref_feat.shape} for batch {len(x)}"
            )
        diffs.append(float(np.abs(got - ref).max()))
        # features are unbounded activations: compared relative to their own scale
        feature_diffs.append(
            float(np.abs(got_feat - ref_feat).max() / max(1.0, float(np.abs(ref_feat).max())))
        )
        batches.append(len(x))
    return max(diffs), max(feature_diffs), batches


def _check_agreement(run_dir: Path, max_diff: float, max_feature_diff: float, atol: float) -> None:
    """Raise unless both differences are within ``atol``."""
    if not max_diff <= atol:
        raise LiverscopeError(
            f"{run_dir}: ONNX Runtime and torch disagree (max |logit difference| {max_diff:.2e} > {atol:.0e}); {rundir.ONNX} not written"
        )
    if not max_feature_diff <= atol:
        raise LiverscopeError(
            f"{run_dir}: ONNX Runtime and torch features disagree (max relative difference {max_feature_diff:.2e} > {atol:.0e}); {rundir.ONNX} not written"
        )


def export_onnx(
    run_dir: str | Path, opset: int = ONNX_OPSET, atol: float = ONNX_ATOL, check_batch: int = 4, seed: int = 0
) -> dict:
    """Export a run's model to ``RUN_DIR/model.onnx`` (dynamic batch axis) and verify it.

    The export goes to a temporary file, ONNX Runtime scores the check inputs, and the largest
    absolute logit difference to the torch model must be at most ``atol`` (and the largest feature
    difference at most ``atol`` times the features' scale); only then does the file replace ``model.onnx``. What was found is stored under ``"onnx"`` in ``model.json`` (with the
    SHA-256 of the weights, so a later retraining marks the export stale).

    Args:
        run_dir: a trained run directory.
        opset: ONNX opset version.
        atol: largest accepted absolute logit difference.
        check_batch: batch size of the second check input (the first has batch 1).
        seed: seed of the check inputs.

    Returns:
        The ``onnx`` entry written to ``model.json``: ``file``, ``outputs``, ``max_abs_logit_diff``,
        ``max_rel_feature_diff`` (relative to the features' largest magnitude), ``opset``, ``checked_batches``, sizes and hashes.

    Raises:
        LiverscopeError: no trained model, or ONNX Runtime disagrees with torch beyond ``atol``.
    """
    onnx = import_optional("onnx", "onnx", "ONNX export")
    ort = import_optional("onnxruntime", "onnx", "checking the ONNX export")
    import_optional("onnxscript", "onnx", "ONNX export")

    run_dir = Path(run_dir)
    model, meta = rundir.load_model(run_dir)
    size = int(meta["preprocessing"]["size"])
    out = run_dir / rundir.ONNX
    t0 = time.perf_counter()
    with atomic_path(out, suffix=".onnx") as tmp:
        _export_graph(model, size, opset, tmp, run_dir)
        _describe_file(onnx, tmp, meta)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        max_diff, max_feature_diff, batches = _differences(session, model, size, check_batch, seed, run_dir)
        _check_agreement(run_dir, max_diff, max_feature_diff, atol)
    info = {
        "file": rundir.ONNX,
        "opset": opset,
        "input": "input",
        "output": "logits",
        "outputs": list(OUTPUTS),
        "input_shape": ["batch", 3, size, size],
        "max_abs_logit_diff": max_diff,
        "max_rel_feature_diff": max_feature_diff,
        "atol": atol,
        "checked_batches": batches,
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "weights_sha256": file_sha256(run_dir / rundir.MODEL_WEIGHTS),
        "onnx_sha256": file_sha256(out),
        "bytes": out.stat().st_size,
        "export_seconds": round(time.perf_counter() - t0, 2),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    rundir.update_model_meta(
        run_dir, onnx=info
    )  # re-reads model.json: keeps whatever else was added meanwhile
    return info


__all__ = ["export_onnx", "LogitsAndFeatures", "ONNX_ATOL", "ONNX_OPSET"]

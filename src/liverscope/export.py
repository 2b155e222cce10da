"""ONNX export of a run: ``RUN_DIR/model.onnx`` with a dynamic batch axis, verified against torch.

The graph has two outputs from one forward pass: ``logits`` and ``features`` (the pooled last feature
map, which the out-of-distribution score needs; an export without it counts as stale). The export is
written to a temporary file, ONNX Runtime scores check inputs, and only when its logits (and features)
agree with the torch model's within ``atol`` does the file replace ``model.onnx``; ``model.json``
then records the export (with the SHA-256 of the weights, so retraining marks it stale:
:func:`liverscope.rundir.onnx_state`). :class:`~liverscope.predict.Predictor` uses it by default.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sklearn.metrics import balanced_accuracy_score

from liverscope import rundir
from liverscope.data.io import read_rgb
from liverscope.data.preprocess import normalise_batch, preprocess_array
from liverscope.errors import LiverscopeError
from liverscope.utils import atomic_path, file_sha256, import_optional, log, softmax

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
    return [g.standard_normal((1, 3, size, size), dtype=np.float32), g.standard_normal((batch, 3, size, size), dtype=np.float32), smooth]


def export_onnx(run_dir: str | Path, opset: int = ONNX_OPSET, atol: float = ONNX_ATOL, check_batch: int = 4, seed: int = 0) -> dict:
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
    example = torch.zeros(1, 3, size, size)
    t0 = time.perf_counter()
    with atomic_path(out, suffix=".onnx") as tmp:
        chatter = io.StringIO()
        # the exporter prints its progress to stderr even with verbose=False; keep it for the error message
        with warnings.catch_warnings(), contextlib.redirect_stderr(chatter), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")  # deprecation notes about exporter internals
            try:
                prog = torch.onnx.export(
                    LogitsAndFeatures(model), (example,), dynamo=True, opset_version=opset, input_names=["input"], output_names=list(OUTPUTS),
                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}, verbose=False,
                )
                prog.save(str(tmp))
            except Exception as exc:
                tail = chatter.getvalue()[-500:]
                raise LiverscopeError(f"{run_dir}: ONNX export failed ({type(exc).__name__}: {str(exc)[:300]}) {tail}") from None
        # self-describing file: labels and preprocessing travel inside the .onnx too
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {"labels": json.dumps(meta["labels"]), "preprocessing": json.dumps(meta["preprocessing"]), "producer": "liverscope"})
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diffs, feature_diffs, batches = [], [], []
        for x in _check_inputs(size, check_batch, seed):
            with torch.inference_mode():
                ref, ref_feat = (t.numpy() for t in model.forward_with_features(torch.from_numpy(x)))
            got, got_feat = session.run(None, {session.get_inputs()[0].name: x})[:2]
            if got.shape != ref.shape or got_feat.shape != ref_feat.shape:
                raise LiverscopeError(f"{run_dir}: ONNX output shapes {got.shape}, {got_feat.shape} != torch {ref.shape}, {ref_feat.shape} for batch {len(x)}")
            diffs.append(float(np.abs(got - ref).max()))
            # features are unbounded activations: compared relative to their own scale
            feature_diffs.append(float(np.abs(got_feat - ref_feat).max() / max(1.0, float(np.abs(ref_feat).max()))))
            batches.append(len(x))
        max_diff, max_feature_diff = max(diffs), max(feature_diffs)
        if not max_diff <= atol:
            raise LiverscopeError(f"{run_dir}: ONNX Runtime and torch disagree (max |logit difference| {max_diff:.2e} > {atol:.0e}); model.onnx not written")
        if not max_feature_diff <= atol:
            raise LiverscopeError(f"{run_dir}: ONNX Runtime and torch features disagree (max relative difference {max_feature_diff:.2e} > {atol:.0e}); model.onnx not written")
    info = {
        "file": "model.onnx",
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
    rundir.update_model_meta(run_dir, onnx=info)  # re-reads model.json: keeps whatever else was added meanwhile
    return info


def _split_inputs(run_dir: Path, part: str, limit: int | None, seed: int = 0, exclude: frozenset[str] = frozenset()) -> tuple[np.ndarray, list[str], list[str]]:
    """Preprocessed NCHW inputs of the run's own ``part`` images (``val``, ``test``, ``train``) but those
    in ``exclude`` (paths), at most ``limit`` of them (a seeded sample), with their labels and paths;
    unreadable files are left out."""
    samples, assignment, _ = rundir.read_split(run_dir / rundir.SPLIT)
    chosen = [s for s, a in zip(samples, assignment) if a == part and str(s.path) not in exclude]
    if limit is not None and len(chosen) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(chosen), limit, replace=False))
        chosen = [chosen[i] for i in keep]
    pp = rundir.read_preprocessing(run_dir)
    images, labels, paths = [], [], []
    for s in chosen:
        try:
            images.append(preprocess_array(read_rgb(s.path), pp))
        except (OSError, ValueError):
            continue
        labels.append(s.label)
        paths.append(str(s.path))
    if not images:
        return np.zeros((0, 3, pp.size, pp.size), np.float32), [], []
    return np.ascontiguousarray(normalise_batch(images, pp).transpose(0, 3, 1, 2)), labels, paths


def _end_nodes(model_path: Path) -> list[str]:
    """Names of the graph's first convolution and of the classifier: the ``Gemm``/``MatMul`` nodes after
    the last convolution (not those inside blocks, e.g. CBAM's channel attention)."""
    onnx = import_optional("onnx", "onnx", "int8 export")
    nodes = list(onnx.load(str(model_path)).graph.node)  # topologically sorted
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return []
    return [nodes[convs[0]].name, *(n.name for n in nodes[convs[-1] + 1 :] if n.op_type in ("Gemm", "MatMul"))]


def _session_logits(session, x: np.ndarray, batch: int = 32) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(["logits"], {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def export_int8(run_dir: str | Path, calibration: int = 128, per_channel: bool = True, reduce_range: bool = True, fp32_ends: bool = True) -> dict:
    """Statically quantised ``RUN_DIR/model.int8.onnx`` (int8 weights and activations, QDQ format),
    calibrated on the run's own validation images, and reported against the fp32 export.

    ONNX Runtime's quantiser does the work (``quant_pre_process`` then ``quantize_static`` with min-max
    calibration). The fp32 ``model.onnx`` is exported first when it is missing or stale. The report,
    kept in ``model.json["onnx_int8"]``: on the run's test split (or, when it has no test images, the
    validation images not used to calibrate: all of them when every one was), label agreement with
    fp32, the largest probability difference, and the balanced accuracy of each.

    Args:
        run_dir: a trained run directory (single model) with a ``split.csv``.
        calibration: at most this many validation images are used to calibrate (a seeded sample).
        per_channel: per-output-channel weight scales (more accurate for depthwise convolutions).
        reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2, AVX-512F) multiply u8 x s8 pairs into
            a saturating 16-bit sum, which full 8-bit weights can overflow; 7 bits cannot, on any CPU.
        fp32_ends: keep the first convolution (its input is the image itself) and the classifier
            (``Gemm``/``MatMul``) in fp32: a few percent of the compute, the layers quantisation hurts most.
            On a trained EfficientNet-Lite0 (128 px, 115 validation images it did not calibrate on) these
            two raised the label agreement with fp32 from 0.78 to 0.86 and cut the largest probability
            difference from 0.63 to 0.38.

    Returns:
        The ``onnx_int8`` entry written to ``model.json``.
    """
    ort = import_optional("onnxruntime", "onnx", "int8 export")
    quant = import_optional("onnxruntime.quantization", "onnx", "int8 export")
    shape_inference = import_optional("onnxruntime.quantization.shape_inference", "onnx", "int8 export")
    run_dir = Path(run_dir)
    if not (run_dir / rundir.SPLIT).exists():
        raise LiverscopeError(f"{run_dir}: no {rundir.SPLIT} — int8 calibration uses the run's own validation images (a single `train` run)")
    fp32_path, state = rundir.onnx_state(run_dir)
    if state != "current":
        log(f"exporting the fp32 model first ({state})")
        export_onnx(run_dir)
    calib, _, calib_paths = _split_inputs(run_dir, "val", calibration)
    if len(calib) == 0:
        calib, _, _ = _split_inputs(run_dir, "train", calibration)
    if len(calib) == 0:
        raise LiverscopeError(f"{run_dir}: no readable validation or training images to calibrate on (check the paths in {rundir.SPLIT})")

    class _Reader(quant.CalibrationDataReader):
        def __init__(self, x: np.ndarray):
            self.batches = iter([{"input": x[i:i + 8]} for i in range(0, len(x), 8)])

        def get_next(self):
            return next(self.batches, None)

    out = run_dir / rundir.ONNX_INT8
    t0 = time.perf_counter()
    with atomic_path(out, suffix=".onnx") as tmp, tempfile.TemporaryDirectory() as scratch:
        prep = Path(scratch) / "model.prep.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                shape_inference.quant_pre_process(str(fp32_path), str(prep))
            except Exception as exc:  # ORT's symbolic shape inference fails on some graphs (ResNet-50 + CBAM): ONNX's own shapes suffice
                log(f"symbolic shape inference failed ({type(exc).__name__}); preparing with ONNX shape inference only")
                shape_inference.quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
            keep = _end_nodes(prep) if fp32_ends else []
            quant.quantize_static(
                str(prep), str(tmp), _Reader(calib), quant_format=quant.QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,  # u8s8: the VNNI fast path on x86
                nodes_to_exclude=keep,
            )
    seconds = time.perf_counter() - t0

    part = "test"
    x, labels, _ = _split_inputs(run_dir, "test", None)
    if len(x) == 0:  # a run without a test split (a cv fold): its validation images the quantiser did not see
        part = "val (not used to calibrate)"
        x, labels, _ = _split_inputs(run_dir, "val", None, exclude=frozenset(calib_paths))
    if len(x) == 0:
        part = "val (calibration images included)"
        x, labels, _ = _split_inputs(run_dir, "val", None)
    if len(x) == 0:
        raise LiverscopeError(f"{run_dir}: no readable test or validation images to compare int8 with fp32 on (check the paths in {rundir.SPLIT}); {out.name} was written but not checked")
    meta = rundir.read_model_meta(run_dir)
    t = rundir.temperature(meta)
    opts = ort.SessionOptions()
    sessions = [ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"]) for f in (fp32_path, out)]
    p32, p8 = (softmax(_session_logits(s, x), t) for s in sessions)
    names = list(meta["labels"])
    y = np.array([names.index(label) for label in labels])
    info = {
        "file": rundir.ONNX_INT8,
        "format": (f"QDQ, u8 activations, {'7' if reduce_range else '8'}-bit weights per {'channel' if per_channel else 'tensor'}"
                   + (", first convolution and classifier in fp32" if fp32_ends else "")),
        "calibration_images": int(len(calib)),
        "compared_on": part,
        "n": int(len(x)),
        "label_agreement": float(np.mean(p32.argmax(1) == p8.argmax(1))),
        "max_prob_diff": float(np.abs(p32 - p8).max()),
        "balanced_accuracy_fp32": float(balanced_accuracy_score(y, p32.argmax(1))),
        "balanced_accuracy_int8": float(balanced_accuracy_score(y, p8.argmax(1))),
        "fp32_onnx_sha256": file_sha256(fp32_path),
        "onnx_sha256": file_sha256(out),
        "bytes": out.stat().st_size,
        "quantize_seconds": round(seconds, 2),
    }
    rundir.update_model_meta(run_dir, onnx_int8=info)
    return info


__all__ = ["export_onnx", "export_int8", "LogitsAndFeatures", "ONNX_ATOL", "ONNX_OPSET"]

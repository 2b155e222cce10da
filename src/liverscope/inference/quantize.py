"""int8 export of a run that keeps its labels: ``RUN_DIR/model.int8.onnx`` (issue 26, item 3).

ONNX Runtime's quantiser does the work (``quant_pre_process``, then ``quantize_static`` in QDQ format:
u8 activations, s8 weights per output channel). What this module adds is the check and the layers
that stay in fp32:

* the first stage's convolutions (the stem and the first block: timm's first ``feature_info`` stage,
  :func:`liverscope.models.stem.first_stage_convolutions`) and the classifier stay in fp32, a few percent
  of the compute. ImageNet BatchNorms there multiply some channels by up to ~110 on grey ultrasound, so
  the int8 rounding of the first activations is amplified through the network, as bf16's is
  (``models/stem.py``). On a trained `cpu-best` fold (docs/benchmarks.md) keeping the first stage rather
  than only the stem convolution raised the label agreement with fp32 from 0.918 to 0.975, the changed
  labels from confident answers (fp32's top-two gap up to 0.62) to near-ties, at about the same speed;
* with ``sensitive`` > 0, the convolutions whose int8 output differs most from their fp32 output
  (the signal-to-quantisation-noise ratio of each node's output over the calibration images, measured
  with ONNX Runtime's ``qdq_loss_debug``: :func:`layer_sensitivity`) stay in fp32 too, the worst first;
* the quantised model is scored against the fp32 export on the run's test images (for a ``cv`` fold:
  the validation images it did not calibrate on), and written only when it keeps the labels: label
  agreement at least :data:`MIN_AGREEMENT` and balanced accuracy within :data:`MAX_BA_DROP` of fp32
  (``force=True`` writes it anyway, flagged ``meets_bar: false``, and prediction's backend choice
  never picks it).

Measured on trained EfficientNet-Lite0 models in docs/benchmarks.md ("int8 that keeps the labels").
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from liverscope import rundir
from liverscope.errors import LiverscopeError
from liverscope.inference.export import export_onnx
from liverscope.models import model_from_arch
from liverscope.models.stem import first_stage_convolutions
from liverscope.speed.serving import split_inputs
from liverscope.utils import atomic_path, file_sha256, import_optional, log, softmax

#: The bar an int8 model must meet against fp32 on the run's held-out images to be written.
MIN_AGREEMENT = 0.99
MAX_BA_DROP = 0.005
CALIBRATION_BATCH = 8


def _reader(quant, x: np.ndarray):
    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [{"input": x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)]
            )

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def prepare(fp32_path: Path, out: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference, graph optimisation) of the fp32 export."""
    shape_inference = import_optional("onnxruntime.quantization.shape_inference", "onnx", "int8 export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            shape_inference.quant_pre_process(str(fp32_path), str(out))
        except Exception as exc:  # ORT's symbolic shape inference fails on some graphs (ResNet-50 + CBAM): ONNX's own shapes suffice
            log(
                f"symbolic shape inference failed ({type(exc).__name__}); preparing with ONNX shape inference only"
            )
            shape_inference.quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
    return out


def first_stage_of(meta: dict) -> int:
    """How many convolutions open the run's network as its first stage (what stays fp32 with the
    classifier), from ``model.json``'s architecture: the weights are not needed to count them."""
    return first_stage_convolutions(model_from_arch(meta["architecture"]).backbone)


def end_nodes(model_path: Path, first_convs: int = 1) -> list[str]:
    """Names of the graph's first ``first_convs`` convolutions (in topological order: the network's first
    stage comes first) and of the classifier: the ``Gemm``/``MatMul`` nodes after the last convolution
    (not those inside blocks, e.g. CBAM's channel attention)."""
    onnx = import_optional("onnx", "onnx", "int8 export")
    nodes = list(onnx.load(str(model_path)).graph.node)  # topologically sorted
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return []
    return [
        *(nodes[i].name for i in convs[: max(first_convs, 1)]),
        *(n.name for n in nodes[convs[-1] + 1 :] if n.op_type in ("Gemm", "MatMul")),
    ]


def quantize(
    prep: Path,
    out: Path,
    calib: np.ndarray,
    exclude: list[str],
    per_channel: bool = True,
    reduce_range: bool = False,
    method: str = "minmax",
) -> Path:
    """Static QDQ quantisation of the prepared model ``prep`` into ``out``, calibrated on ``calib``,
    leaving the nodes in ``exclude`` in fp32. ``method``: ``minmax`` or ``percentile`` (99.999%)."""
    quant = import_optional("onnxruntime.quantization", "onnx", "int8 export")
    methods = {"minmax": quant.CalibrationMethod.MinMax, "percentile": quant.CalibrationMethod.Percentile}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant.quantize_static(
            str(prep),
            str(out),
            _reader(quant, calib),
            quant_format=quant.QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,  # u8s8: the VNNI fast path on x86
            nodes_to_exclude=list(exclude),
            calibrate_method=methods[method],
        )
    return out


def layer_sensitivity(prep: Path, qdq: Path, x: np.ndarray) -> dict[str, float]:
    """Signal-to-quantisation-noise ratio (dB) of each quantised convolution's output in ``qdq``
    against the fp32 model ``prep`` over inputs ``x`` (ONNX Runtime's ``qdq_loss_debug``), lowest
    (most damaged) first. The error a node adds is its output's ratio minus its input's; the ranking
    uses that drop, so a layer is not blamed for the noise it was handed."""
    onnx = import_optional("onnx", "onnx", "int8 export")
    debug = import_optional("onnxruntime.quantization.qdq_loss_debug", "onnx", "int8 export")
    with tempfile.TemporaryDirectory() as scratch:
        acts = {}
        for name, path in (("float", prep), ("qdq", qdq)):
            aug = Path(scratch) / f"{name}.onnx"
            debug.modify_model_output_intermediate_tensors(str(path), str(aug))
            acts[name] = debug.collect_activations(
                str(aug), _reader(import_optional("onnxruntime.quantization", "onnx", "int8"), x)
            )
    errors = debug.compute_activation_error(debug.create_activation_matching(acts["qdq"], acts["float"]))
    sqnr = {t: e.get("xmodel_err") for t, e in errors.items() if e.get("xmodel_err") is not None}
    drops = {}
    for node in onnx.load(str(prep)).graph.node:
        if node.op_type != "Conv" or node.output[0] not in sqnr:
            continue
        before = sqnr.get(node.input[0], 100.0)  # the graph's input: not quantised noise
        drops[node.name] = float(before - sqnr[node.output[0]])
    return dict(sorted(drops.items(), key=lambda kv: -kv[1]))


def compare(fp32_path: Path, int8_path: Path, x: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> dict:
    """Label agreement, largest probability difference and balanced accuracy of each model on ``x``; and
    how near a tie fp32 was where int8 changed the label (``changed``, and ``changed_fp32_margin``: the
    largest gap between fp32's top two probabilities among those images — small when int8 only tips
    near-ties, large when it overturns confident answers)."""
    ort = import_optional("onnxruntime", "onnx", "int8 export")
    probs = []
    for f in (fp32_path, int8_path):
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        probs.append(
            softmax(
                np.concatenate([s.run(["logits"], {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)]),
                temperature,
            )
        )
    p32, p8 = probs
    changed = p32.argmax(1) != p8.argmax(1)
    top2 = np.sort(p32, axis=1)[:, -2:]
    out = {
        "n": int(len(x)),
        "label_agreement": float(np.mean(~changed)),
        "changed": int(changed.sum()),
        "changed_fp32_margin": float((top2[:, 1] - top2[:, 0])[changed].max()) if changed.any() else None,
        "max_prob_diff": float(np.abs(p32 - p8).max()),
        "balanced_accuracy_fp32": float(balanced_accuracy_score(y, p32.argmax(1))),
        "balanced_accuracy_int8": float(balanced_accuracy_score(y, p8.argmax(1))),
    }
    out["meets_bar"] = bool(
        out["label_agreement"] >= MIN_AGREEMENT
        and out["balanced_accuracy_fp32"] - out["balanced_accuracy_int8"] <= MAX_BA_DROP
    )
    return out


def _held_out(run_dir: Path, calib_paths: list[str], labels: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """The images int8 is checked on: the run's test split, else the validation images not used to calibrate."""
    part = "test"
    x, names, _ = split_inputs(run_dir, "test", None)
    if len(x) == 0:  # a run without a test split (a cv fold): its validation images the quantiser did not see
        part = "val (not used to calibrate)"
        x, names, _ = split_inputs(run_dir, "val", None, exclude=frozenset(calib_paths))
    if len(x) == 0:
        raise LiverscopeError(
            f"{run_dir}: no test images and no validation images left after calibration to check int8 against fp32 on "
            f"(check the paths in {rundir.SPLIT}, or calibrate on fewer with --calibration)"
        )
    return x, np.array([labels.index(n) for n in names]), part


def cpu_has_vnni() -> bool:
    """Whether this CPU multiplies u8 x s8 in 32-bit sums (AVX-512-VNNI, AVX-VNNI or AMX): ``/proc/cpuinfo`` flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _fp32_export(run_dir: Path) -> Path:
    """The run's fp32 ``model.onnx``, exported first when missing or stale."""
    if not (run_dir / rundir.SPLIT).exists():
        raise LiverscopeError(
            f"{run_dir}: no {rundir.SPLIT} — int8 calibration uses the run's own validation images (a single `train` run)"
        )
    fp32_path, state = rundir.onnx_state(run_dir)
    if state != "current":
        log(f"exporting the fp32 model first ({state})")
        export_onnx(run_dir)
    return fp32_path


def _calibration_images(run_dir: Path, calibration: int) -> tuple[np.ndarray, list[str]]:
    """At most ``calibration`` validation images (else training images) and their paths."""
    calib, _, calib_paths = split_inputs(run_dir, "val", calibration)
    if len(calib) == 0:
        calib, _, calib_paths = split_inputs(run_dir, "train", calibration)
    if len(calib) == 0:
        raise LiverscopeError(
            f"{run_dir}: no readable validation or training images to calibrate on (check the paths in {rundir.SPLIT})"
        )
    return calib, calib_paths


def _quantize_keeping(
    prep: Path,
    scratch: Path,
    calib: np.ndarray,
    keep: list[str],
    sensitive: int,
    per_channel: bool,
    reduce_range: bool,
    method: str,
) -> tuple[Path, list[str]]:
    """The int8 model with ``keep`` in fp32, and with ``sensitive`` > 0 the most damaged convolutions of a
    trial quantisation too; returns its path and those convolutions."""
    trial = quantize(prep, scratch / "trial.onnx", calib, keep, per_channel, reduce_range, method)
    worst = list(layer_sensitivity(prep, trial, calib[:16]))[:sensitive] if sensitive else []
    if not worst:
        return trial, worst
    return quantize(
        prep, scratch / "final.onnx", calib, keep + worst, per_channel, reduce_range, method
    ), worst


def _require_bar(run_dir: Path, check: dict, part: str, out: Path, force: bool) -> None:
    """Raise when the int8 model misses the bar (:func:`compare`) and ``force`` is not set, naming what missed."""
    if check["meets_bar"] or force:
        return
    missed = []
    if check["label_agreement"] < MIN_AGREEMENT:
        near = check["changed_fp32_margin"]
        missed.append(
            f"agreement with fp32 {check['label_agreement']:.3f} < {MIN_AGREEMENT}: {check['changed']} labels changed"
            + (
                f", where fp32's top two probabilities were at most {near:.2f} apart"
                if near is not None
                else ""
            )
        )
    drop = check["balanced_accuracy_fp32"] - check["balanced_accuracy_int8"]
    if drop > MAX_BA_DROP:
        missed.append(
            f"balanced accuracy {check['balanced_accuracy_int8']:.3f} vs fp32 {check['balanced_accuracy_fp32']:.3f}, more than {MAX_BA_DROP} lower"
        )
    raise LiverscopeError(
        f"{run_dir}: int8 does not keep the labels (on {check['n']} {part} images: {'; '.join(missed)}); {out.name} not written. "
        "Keep more layers in fp32 (--int8-sensitive N), or --force to write it anyway"
    )


def _format(method: str, reduce_range: bool, per_channel: bool, fp32_ends: int, n_worst: int) -> str:
    """The ``format`` line of the ``onnx_int8`` entry."""
    return (
        f"QDQ ({method} calibration), u8 activations, {'7' if reduce_range else '8'}-bit weights per {'channel' if per_channel else 'tensor'}"
        + (f", first stage ({fp32_ends} convolutions) and classifier in fp32" if fp32_ends else "")
        + (f", {n_worst} most sensitive convolutions in fp32" if n_worst else "")
    )


def export_int8(
    run_dir: str | Path,
    calibration: int = 128,
    sensitive: int = 0,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    method: str = "minmax",
    fp32_ends: bool = True,
    force: bool = False,
) -> dict:
    """Write ``RUN_DIR/model.int8.onnx`` when it keeps the fp32 labels (see the module notes).

    Args:
        run_dir: a trained single-model run (or ``cv`` fold) with a ``split.csv``.
        calibration: at most this many validation images calibrate (a seeded sample).
        sensitive: this many more convolutions stay in fp32, the most damaged by int8 first (:func:`layer_sensitivity`).
        per_channel: per-output-channel weight scales (depthwise convolutions need them).
        reduce_range: 7-bit weights, which x86 CPUs without VNNI need (their u8 x s8 pair sums saturate at
            16 bits); ``None``: 7-bit only where this CPU lacks VNNI (:func:`cpu_has_vnni`). Full 8-bit
            weights kept more labels (docs/benchmarks.md); a model exported on a VNNI CPU with them may
            saturate on one without: export it there.
        method: activation calibration, ``minmax`` or ``percentile``.
        fp32_ends: keep the first stage's convolutions and the classifier in fp32.
        force: write it even below the bar (flagged ``meets_bar: false``).

    Returns:
        The ``onnx_int8`` entry written to ``model.json``.

    Raises:
        LiverscopeError: nothing to calibrate or check on; or below the bar without ``force`` (nothing written).
    """
    run_dir = Path(run_dir)
    reduce_range = not cpu_has_vnni() if reduce_range is None else reduce_range
    fp32_path = _fp32_export(run_dir)
    calib, calib_paths = _calibration_images(run_dir, calibration)
    meta = rundir.read_model_meta(run_dir)
    x, y, part = _held_out(run_dir, calib_paths, list(meta["labels"]))
    out, t0 = run_dir / rundir.ONNX_INT8, time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        prep = prepare(fp32_path, Path(scratch) / "model.prep.onnx")
        first = first_stage_of(meta) if fp32_ends else 0
        keep = end_nodes(prep, first) if first else []
        final, worst = _quantize_keeping(
            prep, Path(scratch), calib, keep, sensitive, per_channel, reduce_range, method
        )
        check = compare(fp32_path, final, x, y, rundir.temperature(meta))
        _require_bar(run_dir, check, part, out, force)
        with atomic_path(out, suffix=".onnx") as tmp:
            tmp.write_bytes(final.read_bytes())
    info = {
        "file": rundir.ONNX_INT8,
        "format": _format(method, reduce_range, per_channel, first, len(worst)),
        "fp32_nodes": {"ends": keep, "sensitive": worst},
        "calibration_images": int(len(calib)),
        "compared_on": part,
        **check,
        "bar": {"min_label_agreement": MIN_AGREEMENT, "max_balanced_accuracy_drop": MAX_BA_DROP},
        "forced": bool(force and not check["meets_bar"]),
        "fp32_onnx_sha256": file_sha256(fp32_path),
        "onnx_sha256": file_sha256(out),
        "bytes": out.stat().st_size,
        "quantize_seconds": round(time.perf_counter() - t0, 2),
    }
    rundir.update_model_meta(run_dir, onnx_int8=info)
    return info


__all__ = [
    "MIN_AGREEMENT",
    "MAX_BA_DROP",
    "cpu_has_vnni",
    "prepare",
    "first_stage_of",
    "end_nodes",
    "quantize",
    "layer_sensitivity",
    "compare",
    "export_int8",
]

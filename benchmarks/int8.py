"""Why static int8 loses labels, and what keeps them (issue 26, item 3).

On a trained run (a copy: the run is not touched), each variant of :mod:`liverscope.inference.quantize` is
calibrated on the same validation images and checked against the fp32 export on the same held-out
images (the run's test split, else the validation images it did not calibrate on): label agreement,
largest probability difference, balanced accuracy of each, and the int8 session's speed against fp32
(batch 2, as ``predict`` runs ONNX Runtime on a CPU). Variants: the old default (7-bit weights), full
8-bit weights, only the stem convolution in fp32 instead of the first stage, percentile calibration,
more calibration images, the depthwise convolutions in fp32, the N convolutions that int8 damages most
in fp32 (:func:`liverscope.inference.quantize.layer_sensitivity`), the first N convolutions in fp32, and
ONNX Runtime's dynamic quantisation (int8 weights, activations quantised on the fly).

    python benchmarks/int8.py runs/NAME [--calibration 64] [--sensitive 4 8 16] [--first 6 9] [--out docs/int8.md]

Prints a markdown table with the CPU flags; figures from different machines are not comparable.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from liverscope import rundir
from liverscope.inference.export import export_onnx
from liverscope.inference.quantize import (
    _held_out,
    compare,
    end_nodes,
    first_stage_of,
    layer_sensitivity,
    prepare,
    quantize,
)
from liverscope.speed.serving import split_inputs


def cpu_flags() -> str:
    out = subprocess.run(
        ["bash", "-c", "lscpu | grep -o 'avx512_bf16\\|amx_bf16\\|avx512_vnni\\|avx_vnni\\|avx2' | sort -u"],
        capture_output=True,
        text=True,
    ).stdout
    return " ".join(out.split()) or "unknown"


def images_per_second(path: Path, x: np.ndarray, batch: int = 2, passes: int = 2) -> float:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    s.run(["logits"], {name: x[:batch]})
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            s.run(["logits"], {name: x[i : i + batch]})
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def depthwise(prep: Path) -> list[str]:
    """Convolutions with one input channel per group (EfficientNet's depthwise layers)."""
    out = []
    for n in onnx.load(str(prep)).graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and group > 1:
            out.append(n.name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--sensitive", type=int, nargs="*", default=[4, 8, 16])
    ap.add_argument(
        "--first", type=int, nargs="*", default=[6, 9], help="variants keeping the first N convolutions fp32"
    )
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if rundir.onnx_state(a.run)[1] != "current":
        export_onnx(a.run)
    fp32 = a.run / rundir.ONNX
    meta = rundir.read_model_meta(a.run)
    labels, t = list(meta["labels"]), rundir.temperature(meta)
    calib_all, _, all_paths = split_inputs(a.run, "val", None)
    order = np.random.default_rng(0).permutation(len(calib_all))
    calib, calib_more = calib_all[order[: a.calibration]], calib_all[order[: 2 * a.calibration]]
    x, y, part = _held_out(
        a.run, [all_paths[i] for i in order[: 2 * a.calibration]], labels
    )  # the same held-out set for every variant
    rows, speed32 = [], images_per_second(fp32, x)
    with tempfile.TemporaryDirectory() as scratch:
        prep = prepare(fp32, Path(scratch) / "prep.onnx")
        ends = end_nodes(prep, first_stage_of(meta))
        base = quantize(prep, Path(scratch) / "base8.onnx", calib, ends)
        sens = layer_sensitivity(prep, base, calib[:16])
        variants = {
            "old default: 7-bit weights, minmax, ends fp32": lambda p: quantize(
                prep, p, calib, ends, reduce_range=True
            ),
            "8-bit, only the stem convolution fp32 (the default before the first stage)": lambda p: quantize(
                prep, p, calib, end_nodes(prep)
            ),
            "8-bit weights, first stage fp32 (default)": None,
            "8-bit, percentile calibration": lambda p: quantize(prep, p, calib, ends, method="percentile"),
            f"8-bit, {len(calib_more)} calibration images": lambda p: quantize(prep, p, calib_more, ends),
            f"8-bit, depthwise convolutions fp32 ({len(depthwise(prep))})": lambda p: quantize(
                prep, p, calib, ends + depthwise(prep)
            ),
            **{
                f"8-bit, {k} most sensitive convolutions fp32": (
                    lambda p, k=k: quantize(prep, p, calib, ends + list(sens)[:k])
                )
                for k in a.sensitive
            },
            **{
                f"8-bit, first {k} convolutions fp32": (
                    lambda p, k=k: quantize(prep, p, calib, end_nodes(prep, k))
                )
                for k in a.first
            },
            "dynamic (int8 weights, activations on the fly)": lambda p: (
                quantize_dynamic(str(prep), str(p), weight_type=QuantType.QInt8) or p
            ),
        }
        for i, (name, make) in enumerate(variants.items()):
            path = base if make is None else Path(scratch) / f"v{i}.onnx"
            try:
                if make is not None:
                    make(path)
                c = compare(fp32, path, x, y, t)
                rows.append((name, c, images_per_second(path, x) / speed32))
            except Exception as exc:  # a variant ONNX Runtime cannot build or run is reported, not fatal
                rows.append((name, {"error": f"{type(exc).__name__}: {str(exc)[:80]}"}, float("nan")))
            print(name, rows[-1][1], f"{rows[-1][2]:.2f}x", flush=True)
    lines = [
        f"int8 variants of `{a.run}` (model {meta.get('model', {}).get('name', '?') if isinstance(meta.get('model'), dict) else meta.get('model', '?')}, "
        f"{meta['preprocessing']['size']} px): calibrated on {len(calib)} validation images, checked on {len(x)} {part} images; "
        f"fp32 {speed32:.1f} img/s at batch 2. CPU flags: {cpu_flags()}.",
        "",
        "| variant | label agreement | max prob. diff | balanced acc. int8 (fp32) | meets bar | speed vs fp32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, c, sp in rows:
        if "error" in c:
            lines.append(f"| {name} | {c['error']} | | | | |")
        else:
            lines.append(
                f"| {name} | {c['label_agreement']:.3f} | {c['max_prob_diff']:.3f} | {c['balanced_accuracy_int8']:.3f} ({c['balanced_accuracy_fp32']:.3f}) | "
                f"{'yes' if c['meets_bar'] else 'no'} | {sp:.2f}x |"
            )
    lines += [
        "",
        "Most sensitive convolutions (SQNR drop, dB): "
        + ", ".join(f"{n} {d:.1f}" for n, d in list(sens.items())[:8]),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()

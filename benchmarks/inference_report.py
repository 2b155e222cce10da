"""The Markdown tables of benchmarks/inference.py (issue 14): one set per model, figures in images/s
with their ratios to the naive pipelines and to the bare ONNX Runtime session."""

from __future__ import annotations

import numpy as np

from inference_setup import FAST, SETTING_NAMES, SETTINGS


def rounded(obj):
    """The report with plain Python numbers, floats to 4 significant digits (for JSON and tables)."""
    if isinstance(obj, dict):
        return {str(k): rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(f"{float(obj):.4g}")
    return obj


def table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def x(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.0f}%"


def model_tables(name: str, r: dict) -> str:
    out = [f"### {name}"]
    s = r["settings"]
    # item 1
    rows = [
        [
            SETTING_NAMES[k],
            s[k]["naive eager loop"],
            s[k]["torch"],
            x(s[k]["torch"], s[k]["naive eager loop"]),
            s[k]["torch before"],
            x(s[k]["torch before"], s[k]["naive eager loop"]),
        ]
        for k in SETTINGS
    ]
    out += [
        "",
        "Item 1: torch backend against the naive eager loop with the same preprocessing (one image at a time, batch 1, "
        "PyTorch's default threads), images/s:",
        "",
        table(
            [
                "denoising",
                "naive eager loop",
                "torch backend (default)",
                "vs naive",
                "torch backend before issue 14",
                "vs naive",
            ],
            rows,
        ),
    ]
    out += [
        "",
        f"torch backend now: {s['default']['torch | describe']}; before: {s['default']['torch before | describe']} "
        f"(denoising; every core when not). Seconds per image by model threads, as the backend timed them: "
        + "; ".join(f"{k} {s[k].get('torch | seconds per image by threads')}" for k in SETTINGS),
    ]
    bf = r["bf16"]
    out += [
        "",
        f"bf16: {bf['note']}"
        if not bf["supported"]
        else f"bf16 autocast, denoising off: {bf['bf16_ips']:.1f} images/s vs fp32 {bf['fp32_ips']:.1f} ({x(bf['bf16_ips'], bf['fp32_ips'])}); "
        f"max probability difference {bf['max_prob_diff']:.4f}, label agreement {bf['label_agreement']:.3f} on {bf['n']} real images",
    ]
    # item 2
    i2, bare, off = r["item2"], r["bare_session"], s["off"]
    ceiling = i2["ceiling_ips"]
    best32 = max(v for k, v in bare.items() if k.startswith("fp32"))
    rows = [
        [f"bare session, {k}", v, pct(v, ceiling), pct(v, best32) if k.startswith("fp32") else "—"]
        for k, v in bare.items()
    ]
    for k, v in off.items():
        if k.startswith("onnx") and "|" not in k:
            rows.append([f"ONNX end to end, {k[5:] or 'default'}", v, pct(v, ceiling), pct(v, best32)])
    rows.append(
        [
            "decode + preprocess alone (threads / processes)",
            f"{off['decode+preprocess threads']:.1f} / {off['decode+preprocess processes']:.1f}",
            "",
            "",
        ]
    )
    out += [
        "",
        f"Item 2: denoising off, ONNX Runtime end to end against the bare session (ceiling {ceiling:.1f} images/s: {i2['ceiling']}):",
        "",
        table(["pipeline", "images/s", "% of the ceiling", "% of the best fp32 session"], rows),
        "",
        f"ONNX default end to end: {pct(off['onnx'], ceiling)} of the ceiling, {pct(off['onnx'], best32)} of the best fp32 session "
        f"({s['off']['onnx | describe']}); best liverscope ONNX pipeline {100 * i2['best_onnx_off_vs_ceiling']:.0f}% of the ceiling. "
        f"Decoding and the model sharing the cores allow at most {100 * i2['additive_bound_fp32_vs_best_fp32']:.0f}% of the best fp32 session "
        f"(1 / (1/decode + 1/session)).",
    ]
    # item 3
    i3, q = r["item3"], r["int8_export"]
    out += [
        "",
        f"Item 3: int8 (static, QDQ, per channel; calibrated on {q['calibration_images']} images outside the timed set): bare session "
        f"{i3['bare_int8_vs_fp32']:.2f}x fp32; end to end {i3['e2e_off_int8_vs_fp32']:.2f}x (denoising off), {i3['e2e_default_int8_vs_fp32']:.2f}x "
        f"(default denoising); on the {q['n']} timed images label agreement {q['label_agreement']:.3f}, max probability difference "
        f"{q['max_prob_diff']:.4f} (random-init weights: near-uniform probabilities, a weak check; see the trained run).",
    ]
    # item 4
    i4, fast, study = r["item4"], r["fast"], r["item4"]["study_ips"]
    rows = [
        [
            "naive study pipeline: colour NLM at full res, one image at a time",
            "",
            "",
            study,
            "1.00x",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    ]
    for k in ("default", "full"):
        rows.append(
            [
                SETTING_NAMES[k],
                s[k]["decode+preprocess threads"],
                s[k]["decode+preprocess processes"],
                s[k]["onnx"],
                x(s[k]["onnx"], study),
                s[k]["onnx int8"],
                x(s[k]["onnx int8"], study),
                s[k]["torch"],
                "reference",
                "reference",
                "reference",
            ]
        )
    for k, f in fast.items():
        tr = f.get("trained")
        rows.append(
            [
                f"{k} ({'model' if FAST[k][1] == 'default' else 'full'} res)",
                f["decode+preprocess threads"],
                f["decode+preprocess processes"],
                f["onnx"],
                x(f["onnx"], study),
                f["onnx int8"],
                x(f["onnx int8"], study),
                f["torch"],
                f"{f['grey']['max_abs']:.0f} / {f['grey']['mean_abs']:.2f}",
                f"{f['model']['max_prob_diff']:.4f} / {f['model']['label_agreement']:.3f}",
                f"{tr['max_prob_diff']:.4f} / {tr['label_agreement']:.3f}" if tr else "—",
            ]
        )
    out += [
        "",
        "Item 4: denoising on, images/s (decode + preprocess alone on 2 threads / 2 processes; end to end) and the output against "
        "today's default at the same resolution:",
        "",
        table(
            [
                "denoising",
                "decode+preprocess threads",
                "processes",
                "ONNX fp32",
                "vs study",
                "ONNX int8",
                "vs study",
                "torch",
                "grey max / mean abs diff",
                "max prob diff / agreement (random init)",
                "trained run: max prob diff / agreement",
            ],
            rows,
        ),
        "",
        f"Tolerance: {i4['tolerance']}. Within it: {', '.join(i4['within_tolerance']) or 'none'}; recommended: {i4['recommended']}"
        + (
            f" (ONNX with a process pool: {fast[i4['recommended']]['onnx process pool']:.1f} images/s)"
            if i4["recommended"]
            else ""
        )
        + f". Best end to end with denoising on: {i4['best_denoised']}, {i4['best_denoised_vs_study']:.1f}x the naive study pipeline "
        f"(target 10x); liverscope's default ONNX {i4['default_onnx_vs_study']:.1f}x.",
    ]
    lat = [(k, v) for k, v in r.items() if k.startswith("latency_")]
    if lat:
        out += [
            "",
            table(
                ["single uploaded image", "predict ms", "Grad-CAM ms", "total ms (median)", "p90 ms"],
                [[k[8:], v["predict_ms"], v["gradcam_ms"], v["total_ms"], v["total_p90_ms"]] for k, v in lat],
            ),
        ]
    return "\n".join(out)


def markdown(report: dict) -> str:
    out = [
        f"{report['n_images']} real images, {report['size']} px; {report['machine']}; load average {report['load_average_before']} before, "
        f"{report['load_average_after']} after; process pool spawned in {report['process_pool_spawn_s']:.1f}s (not in the figures)"
    ]
    t = report.get("trained_run")
    if t:
        q = t["int8"]
        out += [
            "",
            f"Trained run {t['run']}: int8 on {q['n']} {q['compared_on']} images: label agreement {q['label_agreement']:.3f}, max probability "
            f"difference {q['max_prob_diff']:.4f}, balanced accuracy int8 {q['balanced_accuracy_int8']:.3f} vs fp32 {q['balanced_accuracy_fp32']:.3f} "
            f"({q['calibration_images']} calibration images); denoising options checked on its {t['images']}.",
        ]
    for name, r in report["models"].items():
        out += ["", model_tables(name, r)]
    return "\n".join(out)

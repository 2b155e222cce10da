"""Benchmark: prediction speed on a folder of real images against the naive pipelines and the bare
ONNX Runtime session, int8, the faster denoising options, and single-image predict + Grad-CAM latency
(issues 5 and 14).

Measured in one run, on real images of ``../shared/data/liver-fibrosis`` (a class-stratified subset,
both acquisition sources), for each model at 224 px with random-init weights (speed does not depend
on the weights). End to end = decode → preprocess → model → CSV row written (model loading excluded,
every pipeline warmed up on a few images first). Per model:

1. item 1: at each setting (denoising off, liverscope's default NLM at model resolution, NLM at full
   resolution) the torch backend (its default: decoding and the model take turns, model threads timed;
   and its default before issue 14: decoding beside the model, half the cores when denoising) against
   the naive eager loop with the same preprocessing (one image at a time, batch 1, PyTorch's default
   threads); bf16 autocast where the CPU has native bf16, with its probability difference to fp32;
2. item 2: denoising off, the ONNX backend (fp32 and int8; default, ``alternate`` with and without
   spinning threads, process pool, batch of the best bare session) against the bare session on a
   ready-made batch (batch 1-8, spinning on and off, fp32 and int8): the ceiling is the best of them;
   decode + preprocess alone and the bound that their sum allows when the cores are shared;
3. item 3: an int8 model per model (``export_int8``, calibrated on images outside the timed set):
   bare and end-to-end speed, label agreement and largest probability difference to fp32 on the timed
   images; with ``--run`` the same on a trained run's own split, with balanced accuracy;
4. item 4: end to end with denoising on against the naive study pipeline (colour NLM at full
   resolution, one image at a time), for today's default and each faster NLM option
   (``Preprocessing.nlm_search``, ``denoise_region="sector"``): decode + preprocess alone (threads and
   processes), end to end (ONNX fp32 and int8, torch), the grey-level difference of the preprocessed
   image from today's, and the model's probability difference (random-init here; trained with ``--run``);

then the latency of one uploaded image through predict + Grad-CAM (what the app does), EfficientNet-B0.

    python benchmarks/inference.py [--data ../shared/data/liver-fibrosis] [--n 64] [--models efficientnet_b0 resnet50_cbam]
        [--run runs/NAME] [--json bench.json]

The machine is shared: compare the ratios measured within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from liverscope import rundir
from liverscope.data.preprocess import normalise_batch
from liverscope.explain.cams import cam_overlay
from liverscope.inference.export import export_onnx
from liverscope.inference.predict import DEFAULT_BATCH_SIZE, Predictor
from liverscope.inference.quantize import export_int8
from liverscope.rundir import load_model
from liverscope.utils import atomic_write_json, cpu_has_native_bf16, default_model_threads, torch_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_report import markdown, rounded  # noqa: E402
from inference_setup import (  # noqa: E402,F401  (make_runs, naive_predict, pick_subset: benchmarks/torch_threads.py)
    FAST,
    LABELS,
    REPO,
    SETTINGS,
    add_int8,
    bare_session_ips,
    decode_only,
    grey_diff,
    liverscope_e2e,
    make_runs,
    naive_liverscope,
    naive_predict,
    pick_subset,
    prob_agreement,
    process_pool,
    trained_variant,
)

#: Tolerance for a faster denoising option to count as today's output (item 4).
MEAN_GREY_TOLERANCE = 1.0


# --------------------------------------------------------------------------------------------------
# single image: predict + Grad-CAM (issue 5, unchanged)
# --------------------------------------------------------------------------------------------------


def full_backward_cam(model, img, pp, k):
    """Grad-CAM as pytorch-grad-cam does it by default: backward through the whole network."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.from_numpy(normalise_batch([img], pp)).permute(0, 3, 1, 2).contiguous()
    with GradCAM(model=model, target_layers=[model.cam_layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
    return show_cam_on_image(img.astype(np.float32) / 255.0, heat, use_rgb=True)


def latency(run: Path, files: list[Path], backend: str, repeats: int, cam_fn=None) -> dict:
    """Median ms per uploaded image for decode+preprocess+predict, Grad-CAM, and both (as the app does)."""
    cam_fn = cam_fn or cam_overlay
    p = Predictor.from_run(run, backend=backend, batch_size=1)
    model = p.model.eval()
    data = [f.read_bytes() for f in files[:repeats]]
    # warm-up (first calls allocate, JIT-select kernels)
    for d in data[:3]:
        r, img = p.predict_bytes("x", d)
        cam_fn(model, img, p.pp, p.labels.index(r.label))
    pred_ms, cam_ms, total_ms = [], [], []
    for d in data:
        t0 = time.perf_counter()
        r, img = p.predict_bytes("x", d)
        t1 = time.perf_counter()
        cam_fn(model, img, p.pp, p.labels.index(r.label))
        t2 = time.perf_counter()
        pred_ms.append(1e3 * (t1 - t0))
        cam_ms.append(1e3 * (t2 - t1))
        total_ms.append(1e3 * (t2 - t0))
    return {
        "predict_ms": statistics.median(pred_ms),
        "gradcam_ms": statistics.median(cam_ms),
        "total_ms": statistics.median(total_ms),
        "total_p90_ms": float(np.percentile(total_ms, 90)),
        "n": len(data),
    }


# --------------------------------------------------------------------------------------------------
# one model
# --------------------------------------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, flush=True)


def bench_model(
    model_name: str,
    args,
    files: list[Path],
    calib: list[Path],
    folder: Path,
    tmp: Path,
    processes,
    trained: dict | None,
) -> dict:
    n = len(files)
    warm = files[:12]  # three torch batches: its thread counts are timed in the warm-up
    variants = {**SETTINGS, **{k: fields for k, (fields, _) in FAST.items()}}
    runs = make_runs(model_name, args.size, tmp / "runs", variants, files, calib)
    int8 = add_int8(runs, "default")
    say(
        f"  int8 export in {int8['seconds']:.0f}s ({int8['calibration_images']} calibration images outside the timed set); on the timed images "
        f"label agreement {int8['label_agreement']:.3f}, max probability difference {int8['max_prob_diff']:.4f} (random-init weights)"
    )
    model, _ = load_model(runs["off"])
    csv_out = tmp / "out.csv"
    res: dict = {
        "int8_export": {
            k: int8[k]
            for k in (
                "calibration_images",
                "compared_on",
                "n",
                "label_agreement",
                "max_prob_diff",
                "seconds",
                "bytes",
            )
        }
    }

    # the naive study pipeline: colour NLM at full resolution (and off), torch default threads and 1
    study: dict = {}
    for denoise in (True, False):
        for threads in (None, 1):
            key = f"{'colour NLM full res' if denoise else 'off'}, torch {threads or 'default'} thread(s)"
            with torch_threads(threads):  # None: PyTorch's default (all cores), as the studies ran it
                naive_predict(model, files[:2], csv_out, args.size, denoise)
                study[key] = n / naive_predict(model, files, csv_out, args.size, denoise)
            say(f"  (a) naive study pipeline, {key:40s} {study[key]:7.1f} images/s")
    res["naive_study"] = study
    study_ips = study["colour NLM full res, torch default thread(s)"]

    # items 1, 2, 4: each setting through every pipeline
    settings: dict = {}
    probs: dict = {}
    for key in SETTINGS:
        run = runs[key]
        pp = rundir.read_preprocessing(run)
        naive_liverscope(model, files[:2], csv_out, pp)
        s, _ = naive_liverscope(model, files, csv_out, pp)
        row: dict = {"naive eager loop": n / s}
        # the torch backend's default before issue 14: overlap, half the cores when denoising, else all
        before = {
            "backend": "torch",
            "schedule": "overlap",
            "threads": default_model_threads() if pp.denoise else os.cpu_count() or 1,
        }
        pipelines = (
            ("torch", {"backend": "torch"}),
            ("torch before", before),
            ("onnx", {"backend": "onnx"}),
            ("onnx alternate", {"backend": "onnx", "schedule": "alternate"}),
            ("onnx alternate spinning", {"backend": "onnx", "schedule": "alternate", "spinning": True}),
            ("onnx int8", {"backend": "onnx", "int8": True}),
        )
        if key != "full":
            pipelines += (("onnx process pool", {"backend": "onnx", "pool": "process"}),)
        for name, kw in pipelines:
            r = liverscope_e2e(run, folder, csv_out, warm, **kw)
            row[name], row[f"{name} | describe"] = r["ips"], r["describe"]
            if r["thread_timings"]:
                row[f"{name} | seconds per image by threads"] = r["thread_timings"]
            probs[(key, name)] = r["probs"]
        row["decode+preprocess threads"] = decode_only(pp, files, os.cpu_count() or 1, True, "thread", None)
        row["decode+preprocess processes"] = decode_only(
            pp, files, os.cpu_count() or 1, True, "process", processes
        )
        settings[key] = row
        say(
            f"  {key:8s} naive {row['naive eager loop']:6.1f} | torch {row['torch']:6.1f} (before {row['torch before']:6.1f}) | onnx {row['onnx']:6.1f} "
            f"(alternate {row['onnx alternate']:6.1f}, spinning {row['onnx alternate spinning']:6.1f}, int8 {row['onnx int8']:6.1f}, "
            f"processes {row.get('onnx process pool', float('nan')):6.1f}) | "
            f"decode+preprocess {row['decode+preprocess threads']:6.1f} (processes {row['decode+preprocess processes']:6.1f}) images/s"
        )
    res["settings"] = settings

    # bf16 (item 1)
    if cpu_has_native_bf16():
        a = liverscope_e2e(runs["off"], folder, csv_out, warm, backend="torch", precision="fp32")
        b = liverscope_e2e(
            runs["off"], folder, csv_out, warm, backend="torch", precision="bf16", bf16_tolerance=1.0
        )
        res["bf16"] = {
            "supported": True,
            "fp32_ips": a["ips"],
            "bf16_ips": b["ips"],
            **prob_agreement(a["probs"], b["probs"]),
        }
    else:
        res["bf16"] = {
            "supported": False,
            "note": f"not supported here: CPU capability {torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX "
            "(bf16 would be emulated, slower than fp32; --precision auto keeps fp32)",
        }
    say(f"  bf16: {res['bf16']}")

    # item 2: bare sessions, the ceiling, ONNX end to end with denoising off
    bare: dict = {}
    for prec, file in (("fp32", rundir.ONNX), ("int8", rundir.ONNX_INT8)):
        for spinning in (False, True):
            for b in (1, 2, 4, 8):
                bare[f"{prec}, batch {b}, spinning {'on' if spinning else 'off'}"] = bare_session_ips(
                    runs["off"] / file, args.size, b, max(32, n // 2), spinning
                )
    res["bare_session"] = bare
    best_fp32 = max((v, k) for k, v in bare.items() if k.startswith("fp32"))
    best_int8 = max((v, k) for k, v in bare.items() if k.startswith("int8"))
    say(
        f"  bare session: best fp32 {best_fp32[0]:.1f} ({best_fp32[1]}), best int8 {best_int8[0]:.1f} ({best_int8[1]}) images/s"
    )
    best_batch = int(best_fp32[1].split("batch ")[1].split(",")[0])
    off = settings["off"]
    if best_batch != DEFAULT_BATCH_SIZE[("onnx", "cpu")]:
        off[f"onnx batch {best_batch}"] = liverscope_e2e(
            runs["off"], folder, csv_out, warm, backend="onnx", batch_size=best_batch
        )["ips"]
    ceiling = max(best_fp32[0], best_int8[0])
    decode = off["decode+preprocess threads"]
    res["item2"] = {
        "ceiling_ips": ceiling,
        "ceiling": best_fp32[1] if best_fp32[0] >= best_int8[0] else best_int8[1],
        "onnx_off_vs_ceiling": off["onnx"] / ceiling,
        "onnx_off_vs_best_fp32": off["onnx"] / best_fp32[0],
        "onnx_int8_off_vs_best_int8": off["onnx int8"] / best_int8[0],
        "best_onnx_off_vs_ceiling": max(v for k, v in off.items() if k.startswith("onnx") and "|" not in k)
        / ceiling,
        # decoding and the model on the same cores: the most that adding their costs allows
        "additive_bound_fp32_vs_best_fp32": (1 / (1 / decode + 1 / best_fp32[0])) / best_fp32[0],
    }

    # item 3: int8 speed
    res["item3"] = {
        "bare_int8_vs_fp32": best_int8[0] / best_fp32[0],
        "e2e_off_int8_vs_fp32": off["onnx int8"] / off["onnx"],
        "e2e_default_int8_vs_fp32": settings["default"]["onnx int8"] / settings["default"]["onnx"],
        "agreement_on_timed_images": prob_agreement(
            probs[("default", "onnx")], probs[("default", "onnx int8")]
        ),
    }

    # item 4: the faster denoising options against today's output
    fast: dict = {}
    workers = os.cpu_count() or 1
    for name, (_fields, ref) in FAST.items():
        run = runs[name]
        pp, ref_pp = rundir.read_preprocessing(run), rundir.read_preprocessing(runs[ref])
        row = {
            "reference": ref,
            "grey": grey_diff(files, pp, ref_pp, workers),
            "decode+preprocess threads": decode_only(pp, files, workers, True, "thread", None),
            "decode+preprocess processes": decode_only(pp, files, workers, True, "process", processes),
        }
        for label, kw in (
            ("onnx", {"backend": "onnx"}),
            ("onnx int8", {"backend": "onnx", "int8": True}),
            ("torch", {"backend": "torch"}),
        ):
            r = liverscope_e2e(run, folder, csv_out, warm, **kw)
            row[label] = r["ips"]
            if label == "onnx":
                row["model"] = prob_agreement(probs[(ref, "onnx")], r["probs"])
        if trained:
            row["trained"] = trained["variants"].get(name)
        fast[name] = row
        say(
            f"  {name:34s} decode+preprocess {row['decode+preprocess threads']:6.1f} (processes {row['decode+preprocess processes']:6.1f}) | "
            f"onnx {row['onnx']:6.1f} (int8 {row['onnx int8']:6.1f}) | torch {row['torch']:6.1f} images/s | grey mean {row['grey']['mean_abs']:.2f} "
            f"max {row['grey']['max_abs']:.0f} | max prob diff {row['model']['max_prob_diff']:.4f}, agreement {row['model']['label_agreement']:.3f}"
        )
    res["fast"] = fast
    # random-init probabilities are near-uniform: only a trained model (--run) tests the predictions
    within = [
        k
        for k, r in fast.items()
        if r["grey"]["mean_abs"] < MEAN_GREY_TOLERANCE
        and r["model"]["label_agreement"] == 1.0
        and (not r.get("trained") or r["trained"]["label_agreement"] == 1.0)
        and r["reference"] == "default"
    ]
    best = max(within, key=lambda k: fast[k]["onnx"], default=None)
    if best is not None:
        fast[best]["onnx process pool"] = liverscope_e2e(
            runs[best], folder, csv_out, warm, backend="onnx", pool="process"
        )["ips"]
    denoised = {
        f"{k} | {b}": v
        for k in ("default", "full")
        for b, v in settings[k].items()
        if "|" not in b and b.startswith(("onnx", "torch")) and "spinning" not in b
    }  # spinning: no predictor option
    denoised.update(
        {
            f"{k} | {b}": fast[k][b]
            for k in within
            for b in ("onnx", "onnx int8", "torch", "onnx process pool")
            if b in fast[k]
        }
    )
    top = max(denoised, key=denoised.get)
    res["item4"] = {
        "tolerance": f"mean |grey difference| < {MEAN_GREY_TOLERANCE} and the same labels on every timed image"
        + (
            " and on the trained run's images"
            if trained
            else " (random-init weights: predictions unchecked without --run)"
        ),
        "within_tolerance": within,
        "recommended": best,
        "study_ips": study_ips,
        "default_onnx_vs_study": settings["default"]["onnx"] / study_ips,
        "best_denoised": top,
        "best_denoised_vs_study": denoised[top] / study_ips,
    }
    say(
        f"  item 4: within tolerance {within}; best denoised end to end {top}: {denoised[top]:.1f} images/s = {denoised[top] / study_ips:.1f}x the naive study pipeline"
    )

    if model_name == "efficientnet_b0":
        for backend, cam_name, cam_fn in (
            ("onnx", "app", None),
            ("torch", "app", None),
            ("onnx", "full-backward", full_backward_cam),
        ):
            lat = latency(runs["default"], files, backend, args.latency_repeats, cam_fn)
            res[f"latency_{backend}_{cam_name}_cam"] = lat
            say(
                f"  single image, {backend} predict + {cam_name} Grad-CAM (NLM @ model res): median {lat['total_ms']:.0f} ms "
                f"(predict {lat['predict_ms']:.0f} ms, Grad-CAM {lat['gradcam_ms']:.0f} ms, p90 {lat['total_p90_ms']:.0f} ms, n={lat['n']})"
            )
    return res


# --------------------------------------------------------------------------------------------------
# a trained run (--run): int8 and the denoising options on its own split
# --------------------------------------------------------------------------------------------------


def trained_checks(run: Path, tmp: Path, calibration: int, limit: int | None = None) -> dict:
    """int8 against fp32 (``export_int8`` on a copy: balanced accuracy on the run's test split, or its
    validation images not used to calibrate) and each faster denoising option against the run's own
    preprocessing (torch fp32 on the same images)."""
    if not (run / rundir.SPLIT).is_file() or not (run / rundir.MODEL_WEIGHTS).is_file():
        raise SystemExit(
            f"--run {run}: needs a single trained model with its split.csv (for a cv run, one of its folds: {run}/folds/fold0)"
        )
    copy = tmp / "trained-int8"
    copy.mkdir(parents=True)
    for f in (rundir.MODEL_WEIGHTS, rundir.MODEL_META, rundir.SPLIT):
        shutil.copy(run / f, copy / f)
    meta = rundir.read_model_meta(copy)
    for key in ("onnx", "onnx_int8"):
        meta.pop(key, None)
    rundir.write_model_meta(copy, meta)
    t0 = time.perf_counter()
    export_onnx(copy)
    info = export_int8(
        copy, calibration=calibration, force=True
    )  # reported whether or not it keeps the labels
    say(
        f"--run {run}: int8 in {time.perf_counter() - t0:.0f}s; on {info['n']} {info['compared_on']} images: agreement {info['label_agreement']:.3f}, "
        f"max probability difference {info['max_prob_diff']:.4f}, balanced accuracy int8 {info['balanced_accuracy_int8']:.3f} vs fp32 {info['balanced_accuracy_fp32']:.3f}"
    )
    samples, assignment, _ = rundir.read_split(run / rundir.SPLIT)
    part = "test" if (assignment == "test").any() else "val"
    files = [s.path for s, a in zip(samples, assignment) if a == part][:limit]

    def predict(r: Path) -> dict:
        p = Predictor.from_run(r, backend="torch", precision="fp32")
        return {x.path: np.array([x.probs[c] for c in p.labels]) for x in p.predict_paths(files)}

    out = {"run": str(run), "int8": info, "images": f"{len(files)} {part} images", "variants": {}}
    # a run that crops to the sector denoises its box already: the sector options are checked without the crop
    # (reference and option alike), which is how the benchmark's 224 px runs preprocess
    crops = rundir.read_preprocessing(run).crop_sector
    refs: dict = {}
    for name, (fields, ref) in FAST.items():
        uncrop = {"crop_sector": False} if crops and fields.get("denoise_region") == "sector" else {}
        key = (ref, bool(uncrop))
        if key not in refs:
            refs[key] = predict(
                trained_variant(
                    run, tmp, f"ref-{ref}{'-uncropped' if uncrop else ''}", {**SETTINGS[ref], **uncrop}
                )
            )
        out["variants"][name] = {
            **prob_agreement(refs[key], predict(trained_variant(run, tmp, name, {**fields, **uncrop}))),
            "without the run's sector crop": bool(uncrop),
        }
        say(
            f"  trained, {name:34s} agreement {out['variants'][name]['label_agreement']:.3f}, max prob diff {out['variants'][name]['max_prob_diff']:.4f}"
            + (" (without the run's sector crop)" if uncrop else "")
        )
    return out


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "liver-fibrosis")
    ap.add_argument("--n", type=int, default=64, help="images in the timed subset (spread over the classes)")
    ap.add_argument(
        "--calibration", type=int, default=16, help="int8 calibration images (outside the timed subset)"
    )
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", nargs="+", default=["efficientnet_b0", "resnet50_cbam"])
    ap.add_argument(
        "--run",
        type=Path,
        default=None,
        help="a trained run (one model with split.csv): int8 and the denoising options on its split",
    )
    ap.add_argument(
        "--run-calibration",
        type=int,
        default=128,
        help="--run: int8 calibration images (its validation split)",
    )
    ap.add_argument(
        "--run-n",
        type=int,
        default=None,
        help="--run: check the denoising options on at most this many of its images (default all)",
    )
    ap.add_argument("--latency-repeats", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(
            f"{args.data} not found: this benchmark needs the real data (see ../shared/data/README.md)"
        )

    tmp = Path(tempfile.mkdtemp(prefix="liverscope-bench-"))
    processes = None
    try:
        folder = tmp / "images"
        files = pick_subset(args.data, args.n, folder)
        calib = pick_subset(
            args.data, args.calibration, tmp / "calibration", exclude=frozenset(f.resolve() for f in files)
        )
        for f in files:  # page cache warm for every contender alike
            f.read_bytes()
        sizes: dict = {}
        for f in files:
            im = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            sizes[f"{im.shape[1]}x{im.shape[0]}"] = sizes.get(f"{im.shape[1]}x{im.shape[0]}", 0) + 1
        machine = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, capability {torch.backends.cpu.get_cpu_capability()}, "
            f"native bf16 {cpu_has_native_bf16()}, torch {torch.__version__}, OpenCV {cv2.__version__}"
        )
        say(
            f"{len(files)} images from {args.data} ({', '.join(f'{k}: {v}' for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])}); "
            f"{len(calib)} other images to calibrate int8"
        )
        say(f"load average before: {os.getloadavg()[0]:.1f}; machine: {machine}")
        report: dict = {
            "n_images": len(files),
            "size": args.size,
            "machine": machine,
            "load_average_before": os.getloadavg()[0],
            "models": {},
        }
        t0 = time.perf_counter()
        processes = process_pool(os.cpu_count() or 1)
        report["process_pool_spawn_s"] = time.perf_counter() - t0
        trained = trained_checks(args.run, tmp, args.run_calibration, args.run_n) if args.run else None
        report["trained_run"] = trained
        if args.json:
            atomic_write_json(args.json, rounded({**report, "partial": True}))
        for model_name in args.models:
            say(f"\n== {model_name} @ {args.size}px")
            report["models"][model_name] = bench_model(
                model_name, args, files, calib, folder, tmp, processes, trained
            )
            if args.json:  # what is measured is kept if a later model fails
                atomic_write_json(args.json, rounded({**report, "partial": True}))
        report["load_average_after"] = os.getloadavg()[0]
        say(f"load average after: {report['load_average_after']:.1f}")
        report = rounded(report)
        if args.json:
            atomic_write_json(args.json, report)
        print("\n" + markdown(report))
        print("\n" + json.dumps(report, indent=1))
    finally:
        if processes is not None:
            processes.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()

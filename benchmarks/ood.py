"""Out-of-distribution flag and calibration, measured on one run (issue 10).

How well do the two scores of :mod:`liverscope.evaluate.ood` (Mahalanobis distance of the pooled
features, Lee et al. 2018; energy of the logits, Liu et al. 2020) tell the run's own held-out images from
images of elsewhere? For the run's own held-out images (the paths in ``predictions_test.csv``; a run
without a test split, such as a cv fold, uses its validation fold, ``predictions_val.csv``) against

* each ``--other`` folder: real ultrasound of another set (a random sample of at most ``--max-per-set``
  images, seed 0);
* photographs that are not ultrasound: matplotlib's and scikit-learn's sample photos
  (grace_hopper.jpg, Minduka_Present_Blue_Pack.png, china.jpg, flower.jpg), each also cut into five
  half-size crops (24 images; the crops of one photo are not independent);

it prints the AUROC of both scores and the share of each set flagged at the run's thresholds (95th
percentile of its validation scores), and the share of validation images flagged. Calibration: the
ECE of the held-out images before and after the run's temperature, and the checked temperature fit on
the validation logits; for a run without a test split, ECE on each half of the validation fold with
the temperature fitted on the other half (2-fold cross-fitting).

A run trained before liverscope fitted the detector is copied to ``--work-dir`` (the run itself is left
untouched) and fitted there from its ``split.csv`` (:func:`liverscope.training.postrun.fit_run_ood`: train rows for
the class Gaussian, val rows for the threshold).

    python benchmarks/ood.py RUN_DIR --other ../shared/data/liver-lesions [--other DIR ...] [--work-dir /tmp/ood-bench]

Results: Markdown tables and ``WORK/ood_bench.json`` (WORK = the run, or its copy).
"""

from __future__ import annotations

import argparse
import io
import shutil
import time
from pathlib import Path

import numpy as np

from liverscope import rundir
from liverscope.data.io import iter_image_files
from liverscope.data.preprocess import normalise
from liverscope.errors import ImageReadError
from liverscope.evaluate import ood as O
from liverscope.evaluate.stats import expected_calibration_error, fit_temperature_checked
from liverscope.inference.predict import Predictor
from liverscope.training.postrun import fit_run_ood
from liverscope.utils import atomic_write_json, softmax

PHOTOS = (
    ("matplotlib", "sample_data/grace_hopper.jpg"),
    ("matplotlib", "sample_data/Minduka_Present_Blue_Pack.png"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
)


def photographs() -> list[tuple[str, bytes]]:
    """The sample photos of matplotlib and scikit-learn, whole and as five half-size crops each, as PNG bytes."""
    import matplotlib
    import sklearn.datasets
    from PIL import Image

    roots = {
        "matplotlib": Path(matplotlib.get_data_path()),
        "sklearn": Path(sklearn.datasets.__file__).parent / "images",
    }
    out = []
    for lib, rel in PHOTOS:
        path = roots[lib] / rel
        if not path.exists():
            print(f"(photo {path} not installed: left out)")
            continue
        img = Image.open(path).convert("RGB")
        w, h = img.size
        boxes = [
            (0, 0, w, h),
            (0, 0, w // 2, h // 2),
            (w // 2, 0, w, h // 2),
            (0, h // 2, w // 2, h),
            (w // 2, h // 2, w, h),
            (w // 4, h // 4, 3 * w // 4, 3 * h // 4),
        ]
        for i, box in enumerate(boxes):
            buf = io.BytesIO()
            img.crop(box).save(buf, format="PNG")
            out.append((f"{path.stem}-{i}.png", buf.getvalue()))
    return out


def outputs(
    p: Predictor, items: list[tuple[str, bytes | None]], batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features of images (``(name, bytes)``, or ``(path, None)`` to read the file)."""
    logits, feats = [], []
    for i in range(0, len(items), batch):
        xs = []
        for name, data in items[i : i + batch]:
            try:
                xs.append(normalise(p.prepare(name, data), p.pp))
            except ImageReadError as exc:
                print(f"  skipped {name}: {exc.reason}")
        if xs:
            lg, f = p.engine.logits_and_features(np.stack(xs))
            logits.append(lg)
            feats.append(f)
    return np.concatenate(logits), np.concatenate(feats)


def scores(p: Predictor, logits: np.ndarray, feats: np.ndarray) -> dict[str, np.ndarray]:
    return {m: O.ood_scores(m, logits, feats, p.ood) for m in O.METHODS}


def calibration(run: Path, held_out: rundir.Predictions, own_split: str, meta: dict) -> dict:
    """ECE before/after temperature scaling, and the checked fit on the validation logits."""
    names = list(meta["labels"])
    val = rundir.read_predictions(run / rundir.PREDICTIONS_VAL, names)
    fit = fit_temperature_checked(val.logits, val.y)
    out = {
        "validation_fit": {k: fit[k] for k in ("fitted", "temperature", "applied", "at_edge", "bounds", "n")},
        "stored_temperature": meta.get("temperature"),
    }
    if own_split == "test":
        t = fit["temperature"]
        out["held_out"] = {
            "set": "test",
            "n": len(held_out.y),
            "temperature": t,
            "ece_before": expected_calibration_error(softmax(held_out.logits), held_out.y),
            "ece_after": expected_calibration_error(softmax(held_out.logits, t), held_out.y),
        }
    else:  # no test split: fit on one half of the validation fold, measure on the other, and swap
        idx = np.random.default_rng(0).permutation(len(val.y))
        halves = [idx[: len(idx) // 2], idx[len(idx) // 2 :]]
        before, after, temps = [], [], []
        for a, b in (halves, halves[::-1]):
            t = fit_temperature_checked(val.logits[a], val.y[a])["temperature"]
            temps.append(t)
            before.append(expected_calibration_error(softmax(val.logits[b]), val.y[b]))
            after.append(expected_calibration_error(softmax(val.logits[b], t), val.y[b]))
        out["held_out"] = {
            "set": "validation halves (2-fold cross-fitting)",
            "n": len(val.y),
            "temperature": temps,
            "ece_before": float(np.mean(before)),
            "ece_after": float(np.mean(after)),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a trained run directory (train, or a cv fold)")
    ap.add_argument(
        "--other",
        type=Path,
        action="append",
        default=[],
        help="a folder of real images from elsewhere (repeatable)",
    )
    ap.add_argument("--max-per-set", type=int, default=400)
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/ood-bench"),
        help="where a run without a detector is copied and fitted",
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = args.run
    if not rundir.read_model_meta(run).get("ood"):
        work = args.work_dir / run.name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        for f in (
            rundir.MODEL_WEIGHTS,
            rundir.MODEL_META,
            rundir.CONFIG,
            rundir.SPLIT,
            rundir.PREDICTIONS_VAL,
            rundir.PREDICTIONS_TEST,
        ):
            if (run / f).exists():
                shutil.copyfile(run / f, work / f)
        print(f"{run} has no OOD detector: fitting one in {work} from its split.csv ...")
        fit_run_ood(work, device=args.device)
        run = work
    meta = rundir.read_model_meta(run)
    p = Predictor.from_run(run, backend="torch", device=args.device, precision="fp32")
    own_split = "test" if (run / rundir.PREDICTIONS_TEST).exists() else "val"
    held_out = rundir.read_predictions(
        run / (rundir.PREDICTIONS_TEST if own_split == "test" else rundir.PREDICTIONS_VAL), meta["labels"]
    )
    own = scores(p, *outputs(p, [(path, None) for path in held_out.paths]))
    sets: dict[str, dict[str, np.ndarray]] = {}
    rng = np.random.default_rng(0)
    for folder in args.other:
        files = sorted(iter_image_files([folder]))
        if len(files) > args.max_per_set:
            files = [files[i] for i in sorted(rng.choice(len(files), args.max_per_set, replace=False))]
        sets[f"{folder.name} (real ultrasound, {len(files)} of its images)"] = scores(
            p, *outputs(p, [(str(f), None) for f in files])
        )
    photos = photographs()
    sets[f"photographs ({len(photos)}: {len(photos) // 6} photos, whole and 5 crops each)"] = scores(
        p, *outputs(p, photos)
    )

    thresholds = meta["ood"]["thresholds"]
    result = {
        "run": str(args.run),
        "fitted_in": str(run),
        "shipped_method": meta["ood"]["method"],
        "thresholds": thresholds,
        "own_images": {"split": own_split, "n": len(held_out.paths)},
        "validation_share_flagged": meta["ood"].get("validation_share_flagged"),
        "own_share_flagged": {m: O.flag_summary(own[m], thresholds[m])["share"] for m in O.METHODS},
        "comparisons": {},
        "calibration": calibration(run, held_out, own_split, meta),
    }
    for name, s in sets.items():
        result["comparisons"][name] = {
            m: {
                "auroc": O.ood_auroc(own[m], s[m]),
                "share_flagged": O.flag_summary(s[m], thresholds[m])["share"],
                "n": int(len(s[m])),
            }
            for m in O.METHODS
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(run / "ood_bench.json", result)

    print(
        f"\nrun {args.run} — own held-out images: {own_split} split, n = {len(held_out.paths)}; thresholds {thresholds}"
    )
    vs = result["validation_share_flagged"] or {}
    print(
        "validation images flagged: "
        + ", ".join(f"{m} {vs.get(m, float('nan')):.1%}" for m in O.METHODS)
        + "; own held-out images flagged: "
        + ", ".join(f"{m} {result['own_share_flagged'][m]:.1%}" for m in O.METHODS)
    )
    print(
        "\n| own held-out images vs | AUROC Mahalanobis | AUROC energy | flagged (Mahalanobis) | flagged (energy) |\n| --- | ---: | ---: | ---: | ---: |"
    )
    for name, c in result["comparisons"].items():
        print(
            f"| {name} | {c['mahalanobis']['auroc']:.3f} | {c['energy']['auroc']:.3f} | {c['mahalanobis']['share_flagged']:.1%} | {c['energy']['share_flagged']:.1%} |"
        )
    cal = result["calibration"]
    fit = cal["validation_fit"]
    print(
        f"\ncalibration: temperature fit on validation (n = {fit['n']}): fitted {fit['fitted']:.4g}, at edge {fit['at_edge']}, applied {fit['applied']} "
        f"(stored in model.json: {cal['stored_temperature']})"
    )
    h = cal["held_out"]
    print(
        f"ECE on {h['set']} (n = {h['n']}): before {h['ece_before']:.4f}, after {h['ece_after']:.4f} (T = {h['temperature']})"
    )
    print(f"{result['seconds']} s")


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()

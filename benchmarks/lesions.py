"""Lesions at scale (issue 11): classification, CAM pseudo-masks and U-Nets against 539 expert outlines.

On ../shared/data/liver-lesions (623 B-mode images: normal 84, benign 169, malignant 370; expert masks of
every lesion, of the liver and of the scan sector in masks/), in one command:

1. **classification** — grouped 5-fold cross-validation of a recipe (default ``lesions``) on the distinct
   images: out-of-fold balanced accuracy, per-class AUC, the malignant-vs-rest and lesion-vs-normal AUCs,
   each with a bootstrap 95% CI;
2. **pseudo-masks against the experts** — every image is explained by the fold model that never saw it
   (out of fold), for the class that model predicts; an image predicted *normal* gets an empty
   pseudo-mask (the tool says "no lesion"). Each CAM variant (method, layer, flips) is cut by each rule
   (threshold 0.5 = the study's, Otsu, top 10% of the region, GrabCut refinement) inside the scan sector,
   and inside the expert liver mask (an upper bound of what a liver segmenter would give). Scores
   (``liverscope.evaluate.masks.expert_mask_summary``): Dice / IoU over images with a lesion, detection
   rate, false alarms on normal livers, pointing game, per class and lesion-size quartile;
3. **trivial baselines** that use no mask of the image: the whole scan sector; a disc at the sector's
   centroid whose area is the median expert lesion area of the *other* folds; for the pointing game the
   sector's centroid;
4. **U-Net on pseudo-masks** — ``segment train`` with the best variant's CAM and rule (by out-of-fold Dice),
   the pseudo-masks of the run's fold ensemble (empty where it predicts *normal*: ``--positive
   benign,malignant``), grouped hold-out, scored on its test images against the experts; and the same
   trained on confident pixels only (``--confident 0.3,0.6``);
5. **supervised segmentation** — the same U-Net trained on the expert lesion masks and on the expert liver
   masks (``segment train --masks … --target lesion|liver``), scored per class and size quartile, with
   detection and false-positive rates;
6. **CAMs inside the predicted liver** (``cams-liver``) — the liver segmenter of 5 (or ``--liver-from
   RUN``'s) on the images it held out: every CAM variant and rule cut inside the sector, the predicted
   liver and the expert liver of the same images, beside the whole predicted liver as a baseline;
7. **U-Net on pseudo-masks inside the predicted liver** (``unet-pseudo-liver``: ``segment train --within
   liver`` with the best variant of 2);
8. **one round of self-training** (``self-train-liver``, :mod:`lesions_selftrain`): the segmenter of 7 on
   its own training images, its confident predictions inside the predicted liver as the next targets.

    python benchmarks/lesions.py [--data DIR] [--out runs/lesions] [--name lite0-192] [--recipe lesions]
        [--stages cls,cams,supervised,cams-liver,unet-pseudo,unet-pseudo-liver,self-train-liver]
        [--seg-arch attention-unet|unet-lite0] [--seg-size 128] [--seg-epochs 40] [--seg-patience 10]
        [--supervised lesion,liver] [--liver-from RUN] [--variants flip-averaged] [--self-threshold 0.5]

The ``--seg-*`` options not given are the architecture's own defaults (``segment train``'s: unet-lite0 on
expert masks, 192 px; the Attention U-Net on pseudo-masks, the classifier's size; 30 epochs, no early
stop). The rows of issue 11 (Attention U-Net 8-16-32-64, 128 px, 40 epochs, early stop after 10) are
``--seg-arch attention-unet --seg-size 128 --seg-epochs 40 --seg-patience 10``. A result key (and a
pseudo-mask segmenter's target in the run) gains ``-ARCH`` for another architecture than the Attention
U-Net, ``-SIZE`` for a size other than 128 and ``-cCHANNELS`` for other channels, so runs with other
settings never overwrite each other (e.g. ``unet-pseudo-liver-unet-lite0-192``).

Results go to OUT/lesions.json after every stage (a stage already in it is not run again unless named
with --redo), and print as Markdown tables. The data is read in place, never copied.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = {"malignant": ["malignant"], "lesion": ["benign", "malignant"]}
LESION_CLASSES = ("benign", "malignant")
STAGES = ("cls", "cams", "supervised", "cams-liver", "unet-pseudo", "unet-pseudo-liver", "self-train-liver")
# CAM variants: name -> (method, layers, flip-averaged)
CAM_VARIANTS = {
    "Grad-CAM, last layer (study)": ("gradcam", None, False),
    "Grad-CAM, last layer, flip-averaged": ("gradcam", None, True),
    "Grad-CAM, second-to-last stage": ("gradcam", (-2,), False),
    "Grad-CAM, last two stages averaged": ("gradcam", (-2, -1), False),
    "LayerCAM, second-to-last stage": ("layercam", (-2,), False),
}
RULES = {
    "threshold 0.5 (study)": ("threshold", {}),
    "Otsu": ("otsu", {}),
    "top 10%": ("top", {"q": 10.0}),
    "GrabCut": ("grabcut", {}),
}


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def save(out: Path, results: dict) -> None:
    from liverscope.utils import atomic_write_json

    atomic_write_json(out / "lesions.json", results)


def with_ci(m: dict, key: str) -> dict:
    c = (m.get("ci") or {}).get(key) or {}
    return {"value": m.get(key), "ci95": c.get("ci95")}


def classification(args) -> dict:
    from liverscope.config import load_config
    from liverscope.evaluate.metrics import compute_metrics, metrics_by_group
    from liverscope.training.cv import cross_validate

    run = args.out / args.name
    t0 = time.perf_counter()
    trained = not (run / "metrics.json").exists()
    if trained:
        values = {
            "data.path": str(args.data),
            "out_dir": str(args.out),
            "name": args.name,
            "train.progress": False,
            "train.device": "cpu",
        }
        for item in args.set or []:
            key, _, value = item.partition("=")
            values[key.strip()] = value.strip()
        cross_validate(load_config(args.recipe, values), k=5, test_frac=0.0)
    with open(run / "oof_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [c[len("prob_") :] for c in rows[0] if c.startswith("prob_")]
    y = np.array([names.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"prob_{c}"]) for c in names] for r in rows])
    m = compute_metrics(y, p, names, ci=True, endpoints=ENDPOINTS)
    by_source = metrics_by_group(y, p, [r.get("source") for r in rows], names, endpoints=ENDPOINTS)
    out = {
        "run": str(run),
        "n": int(len(y)),
        "classes": names,
        "balanced_accuracy": with_ci(m, "balanced_accuracy"),
        "macro_auc": with_ci(m, "macro_auc"),
        "accuracy": m["accuracy"],
        "per_class_auc": {c: (m["per_class"].get(c) or {}).get("auc") for c in names},
        "per_class_recall": {c: (m["per_class"].get(c) or {}).get("recall") for c in names},
        "endpoints": {k: {"auc": v["auc"], "ci95": v.get("auc_ci95")} for k, v in m["endpoints"].items()},
        "confusion_matrix": m["confusion_matrix"],
        "by_source": {
            s: {"n": g["n"], "balanced_accuracy": g["balanced_accuracy"], "macro_auc": g["macro_auc"]}
            for s, g in by_source["groups"].items()
        },
    }
    if trained:
        out["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    return out


def load_oof(args, run: Path):
    """Every image of the cv run with the fold model that held it out: inputs, expert masks, labels."""
    from liverscope import segment as S
    from liverscope.data.geometry import to_model
    from liverscope.data.sector import sector_mask
    from liverscope.rundir import load_model, read_preprocessing

    pp = read_preprocessing(run)
    folds = sorted((run / "folds").glob("fold*"), key=lambda d: int(d.name[4:]))
    data = []
    for fold in folds:
        with open(fold / "split.csv", newline="") as fh:
            held = [r for r in csv.DictReader(fh) if r["split"] == "val"]
        if args.limit:
            held = held[: args.limit]
        items, bad = S.load_images(
            [Path(r["path"]) for r in held], pp, roots=[args.data], labels=[r["label"] for r in held]
        )
        if bad:
            print(f"skipped: {bad}", file=sys.stderr)
        for it in items:
            masks = {}
            for kind in ("lesion", "liver"):
                f = S.find_mask(args.data / "masks" / kind, it.rel)
                if f is None:
                    raise SystemExit(f"{it.path}: no expert {kind} mask in {args.data / 'masks' / kind}")
                masks[kind] = to_model(S.read_mask(f, it.shape), it.box, pp.size)
            data.append(
                {
                    "item": it,
                    "fold": fold,
                    "lesion": masks["lesion"],
                    "liver": masks["liver"],
                    "sector": sector_mask(it.input),
                }
            )
    return pp, data, {f: load_model(f)[0] for f in folds}


def fold_cams(pp, data, models, method, layers, flip) -> tuple[np.ndarray, np.ndarray]:
    """Raw CAMs (each fold model on the images it held out) and the explained (predicted) classes."""
    from liverscope.explain.cams import explain_batch

    cams = np.zeros((len(data), pp.size, pp.size), np.float32)
    classes = np.zeros(len(data), int)
    for fold, model in models.items():
        idx = [i for i, d in enumerate(data) if d["fold"] == fold]
        if not idx:
            continue
        b = explain_batch(
            model,
            [data[i]["item"].input for i in idx],
            pp,
            method=method,
            layers=layers,
            aug_smooth_flip=flip,
            sectors=[data[i]["sector"] for i in idx],
        )
        cams[idx], classes[idx] = b.cams, b.targets
    return cams, classes


def disc_baseline(data) -> list[np.ndarray]:
    """Centred disc per image, its area the median expert lesion area of the other folds' lesion images."""
    from liverscope.evaluate.masks import centred_disc

    out = []
    for d in data:
        areas = [e["lesion"].sum() for e in data if e["fold"] != d["fold"] and e["lesion"].any()]
        out.append(centred_disc(d["sector"], float(np.median(areas)) if areas else 0.0))
    return out


def headline(s: dict) -> dict:
    o = s["overall"]
    return {
        "dice": o.get("dice"),
        "iou": o.get("iou"),
        "detection_rate": o.get("detection_rate"),
        "false_positive_rate": o.get("false_positive_rate"),
        "pointing_game": s.get("pointing_game"),
        "n_lesion": o.get("n_lesion"),
        "n_empty": o.get("n_empty"),
    }


def pseudo_stage(args, results: dict) -> dict:
    from liverscope.evaluate.masks import expert_mask_summary, sector_centre

    run = Path(results["classification"]["run"])
    t0 = time.perf_counter()
    pp, data, models = load_oof(args, run)
    names = results["classification"]["classes"]
    labels = [d["item"].label for d in data]
    truth = [d["lesion"] for d in data]
    sectors = [d["sector"] for d in data]
    livers = [d["liver"] & d["sector"] for d in data]
    out: dict = {
        "n_images": len(data),
        "lesion_share_of_sector": float(
            np.mean([t.sum() / max(1, s.sum()) for t, s in zip(truth, sectors) if t.any()])
        ),
    }
    base = {
        "whole scan sector": expert_mask_summary(
            sectors, truth, labels, sectors, cams=[sector_centre(s) for s in sectors]
        ),
        "centred disc, median lesion area of the other folds": expert_mask_summary(
            disc_baseline(data), truth, labels, sectors, cams=[sector_centre(s) for s in sectors]
        ),
    }
    out["baselines"] = {k: {**headline(v), "summary": v} for k, v in base.items()}
    variants = cam_variants(
        pp, data, models, names, {"sector": sectors, "expert liver": livers}, args.variants
    )
    in_sector = [k for k, v in variants.items() if v["region"] == "sector"]
    best = max(in_sector, key=lambda k: variants[k]["dice"] or 0.0)
    out["variants"] = variants
    out["best_in_sector"] = best
    out["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    return out


def cam_variants(
    pp, data, models, names, regions: dict[str, list], variant_filter: list[str] | None = None
) -> dict:
    """Every CAM variant (those whose name contains one of ``variant_filter``) × rule × region (name →
    per-image masks, intersected with the sector), scored against the experts."""
    from liverscope.evaluate.masks import expert_mask_summary
    from liverscope.segment.rules import normalise_map, pseudo_mask

    labels = [d["item"].label for d in data]
    truth = [d["lesion"] for d in data]
    sectors = [d["sector"] for d in data]
    variants: dict = {}
    for vname, (method, layers, flip) in CAM_VARIANTS.items():
        if variant_filter and not any(f.lower() in vname.lower() for f in variant_filter):
            continue
        tv = time.perf_counter()
        raw, classes = fold_cams(pp, data, models, method, layers, flip)
        cam_s = time.perf_counter() - tv
        gate = np.array([names[c] in LESION_CLASSES for c in classes])
        for region_name, regs in regions.items():
            norm = [normalise_map(c, r) for c, r in zip(raw, regs)]
            for rname, (rule, kw) in RULES.items():
                masks = [
                    pseudo_mask(c, r, rule, image=d["item"].input, **kw) if g else np.zeros_like(r)
                    for c, r, d, g in zip(norm, regs, data, gate)
                ]
                s = expert_mask_summary(masks, truth, labels, sectors, cams=norm)
                key = f"{vname} | {rname} | in {region_name}"
                variants[key] = {
                    **headline(s),
                    "cam": vname,
                    "rule": rname,
                    "region": region_name,
                    "cam_seconds": round(cam_s, 1),
                    "summary": s,
                }
        print(f"  {vname}: {time.perf_counter() - tv:.0f}s", file=sys.stderr)
    return variants


def liver_stage(args, results: dict) -> dict:
    """CAMs cut inside the *predicted* liver: the liver segmenter (``--liver-from``, default the cv run) on
    the images it held out (its test split), beside the sector and the expert liver on the same images."""
    from liverscope import segment as S
    from liverscope.evaluate.masks import expert_mask_summary, mask_scores, sector_centre
    from liverscope.segment.unet import segmenter_files

    run = Path(results["classification"]["run"])
    liver_run = Path(args.liver_from or run)
    t0 = time.perf_counter()
    split = liver_run / segmenter_files("liver")["split"]
    if not split.exists():
        raise SystemExit(
            f"{liver_run}: no liver segmenter — run the 'supervised' stage first, or give --liver-from RUN"
        )
    with open(split, newline="") as fh:
        held = {r["path"] for r in csv.DictReader(fh) if r["split"] == "test"}
    pp, data, models = load_oof(args, run)
    discs = disc_baseline(data)  # each disc's area from the other folds' lesions: computed before the subset
    keep = [i for i, d in enumerate(data) if str(d["item"].path) in held]
    data, discs = [data[i] for i in keep], [discs[i] for i in keep]
    if not data:
        raise SystemExit(f"{split}: none of its test images is among the cv run's images")
    names = results["classification"]["classes"]
    predicted = S.predicted_regions(liver_run, "liver", [d["item"] for d in data], pp, [args.data])
    sectors = [d["sector"] for d in data]
    truth, labels = [d["lesion"] for d in data], [d["item"].label for d in data]
    pred_liver = [p & s for p, s in zip(predicted, sectors)]
    exp_liver = [d["liver"] & s for d, s in zip(data, sectors)]
    centres = [sector_centre(s) for s in sectors]
    base = {
        "whole scan sector": expert_mask_summary(sectors, truth, labels, sectors, cams=centres),
        "whole predicted liver": expert_mask_summary(pred_liver, truth, labels, sectors, cams=centres),
        "centred disc, median lesion area of the other folds": expert_mask_summary(
            discs, truth, labels, sectors, cams=centres
        ),
    }
    variants = cam_variants(
        pp,
        data,
        models,
        names,
        {"sector": sectors, "predicted liver": pred_liver, "expert liver": exp_liver},
        args.variants,
    )
    liver_dice = mask_scores(pred_liver, exp_liver)["dice"]
    return {
        "liver_run": str(liver_run),
        "n_images": len(data),
        "n_lesion": int(sum(t.any() for t in truth)),
        "liver_dice": liver_dice,
        "baselines": {k: {**headline(v), "summary": v} for k, v in base.items()},
        "variants": variants,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }


def seg_settings(args, results: dict, masks: bool) -> tuple[dict, str]:
    """The ``segment_config`` flags of the ``--seg-*`` options given (the others stay the architecture's
    defaults) and the suffix of the result key: ``-ARCH`` unless the Attention U-Net, ``-SIZE`` unless
    128 (the size the segmenter resolves to), ``-cCHANNELS`` for other Attention U-Net channels."""
    from liverscope.rundir import read_preprocessing
    from liverscope.segment.unet import DEFAULT_CHANNELS, MASKS_DEFAULTS, segmenter_defaults

    arch = segmenter_defaults(masks, args.seg_arch)[0]
    given = {"arch": args.seg_arch, "size": args.seg_size, "epochs": args.seg_epochs}
    flags = {k: v for k, v in {**given, "patience": args.seg_patience}.items() if v is not None}
    size = args.seg_size or (
        MASKS_DEFAULTS["size"] if masks else read_preprocessing(Path(results["classification"]["run"])).size
    )
    suffix = ("" if arch == "attention-unet" else f"-{arch}") + (f"-{size}" if size != 128 else "")
    if arch == "attention-unet":  # channels shape the Attention U-Net only
        flags["channels"] = args.seg_channels
        if tuple(args.seg_channels) != DEFAULT_CHANNELS:
            suffix += f"-c{'-'.join(map(str, args.seg_channels))}"
    return flags, suffix


def segmenter_stage(
    args, results: dict, target: str, masks: Path | None = None, flags: dict | None = None, **pseudo
) -> dict:
    """``segment train`` into the cv run: on expert ``masks``, or on the run's CAM pseudo-masks (``pseudo``
    options of :func:`liverscope.segment.segment_config`); scored against the experts on its test images.
    ``flags``: the network and fit (default: :func:`seg_settings` of the ``--seg-*`` options)."""
    from liverscope import segment as S

    run = Path(results["classification"]["run"])
    t0 = time.perf_counter()
    fit = {
        "loss": "bce+dice",
        "seed": 0,
        **(seg_settings(args, results, masks is not None)[0] if flags is None else flags),
    }
    cfg = S.segment_config(
        masks=masks,
        real_masks=args.data / "masks" / ("liver" if target == "liver" else "lesion"),
        target=target,
        device="cpu",
        **fit,
        **pseudo,
    )
    r = S.train_segmenter(run, args.data, cfg, report=False)
    sc, c = r["scores"], r["meta"]["config"]
    return {
        "target": target,
        "arch": c["network"]["arch"],
        "channels": c["network"]["channels"] if c["network"]["arch"] == "attention-unet" else None,
        "fit": {
            k: c["train"][k] for k in ("loss", "size", "epochs", "patience", "seed", "test_frac", "val_frac")
        },
        "masks": sc["masks"],
        "n_train": sc["n_train"],
        "n_val": sc["n_val"],
        "n_test": sc["n_test"],
        "best_epoch": sc["best_epoch"],
        "dice_vs_targets": sc["dice_vs_targets"],
        "vs_expert": sc.get("vs_expert"),
        "pseudo_vs_expert": sc.get("pseudo_vs_expert"),
        "baselines": sc.get("baselines"),
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }


def pseudo_options(results: dict) -> dict:
    """train_segmenter's pseudo-mask options of the best CAM variant (by out-of-fold Dice, in the sector)."""
    v = results["cams"]["variants"][results["cams"]["best_in_sector"]]
    method, layers, flip = CAM_VARIANTS[v["cam"]]
    rule, kw = RULES[v["rule"]]
    return {
        "method": method,
        "layers": layers,
        "flip_average": flip,
        "rule": rule,
        "positive": list(LESION_CLASSES),
        **kw,
    }


def print_tables(results: dict) -> None:
    c = results.get("classification")
    if c:
        ba, au = c["balanced_accuracy"], c["macro_auc"]
        print(f"\n## Classification (grouped 5-fold, out of fold, n={c['n']})\n")
        print(
            f"balanced accuracy {fmt(ba['value'])} {ba['ci95']}, macro AUC {fmt(au['value'])} {au['ci95']}, "
            f"per-class AUC {{{', '.join(f'{k}: {fmt(v)}' for k, v in c['per_class_auc'].items())}}}"
        )
        for k, v in c["endpoints"].items():
            print(f"{k}-vs-rest AUC {fmt(v['auc'])} {v['ci95']}")
    for stage in ("cams", "cams-liver"):
        p = results.get(stage)
        if not p:
            continue
        print(
            "\n## Pseudo-masks against the experts (out of fold)\n"
            if stage == "cams"
            else f"\n## CAMs inside the predicted liver ({p['n_images']} test images of the liver segmenter, liver Dice {fmt(p['liver_dice'])})\n"
        )
        print("| variant | Dice (lesion images) | IoU | detection | false alarms on normal | pointing game |")
        print("| --- | --- | --- | --- | --- | --- |")
        for k, v in {**{f"baseline: {k}": v for k, v in p["baselines"].items()}, **p["variants"]}.items():
            print(
                f"| {k} | {fmt(v['dice'])} | {fmt(v['iou'])} | {fmt(v['detection_rate'])} | {fmt(v['false_positive_rate'])} | {fmt(v['pointing_game'])} |"
            )
    for key in [k for k in results if k.startswith(("unet-pseudo", "supervised-", "self-train"))]:
        u = results.get(key)
        if u and u.get("vs_expert"):
            o = u["vs_expert"]["overall"]
            print(
                f"\n{key}: test n={u['n_test']}, Dice {fmt(o.get('dice'))}, detection {fmt(o.get('detection_rate'))}, "
                f"false alarms {fmt(o.get('false_positive_rate'))}, best epoch {u['best_epoch']} ({u['minutes']} min)"
            )


def main() -> None:
    from liverscope.segment.unet import ARCHS, DEFAULT_CHANNELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "liver-lesions")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "lesions")
    ap.add_argument("--name", default="lite0-192", help="the cv run under OUT (trained when absent)")
    ap.add_argument("--recipe", default="lesions")
    ap.add_argument("--set", action="append", help="recipe setting KEY=VALUE for the cv (repeatable)")
    ap.add_argument("--stages", default=",".join(STAGES), help="run in this order: " + ", ".join(STAGES))
    ap.add_argument("--redo", default="", help="stages to run again although lesions.json has them")
    ap.add_argument(
        "--seg-arch",
        choices=ARCHS,
        default=None,
        help="segmenter network (default: segment train's: unet-lite0 on expert masks, attention-unet on pseudo-masks)",
    )
    ap.add_argument("--seg-size", type=int, default=None, help="segmenter input size (default: the arch's)")
    ap.add_argument("--seg-epochs", type=int, default=None, help="most epochs (default: segment train's, 30)")
    ap.add_argument("--seg-patience", type=int, default=None, help="early stop after N (default: none)")
    ap.add_argument(
        "--seg-channels",
        type=lambda v: tuple(int(c) for c in v.split(",")),
        default=DEFAULT_CHANNELS,
        help="Attention U-Net channels per level (default: liverscope's, 8,16,32,64)",
    )
    ap.add_argument(
        "--self-threshold",
        type=float,
        default=0.5,
        help="self-train-liver: a pixel is a next target where the first segmenter's gated probability reaches this",
    )
    ap.add_argument(
        "--supervised", default="lesion,liver", help="expert-mask targets of the supervised stage"
    )
    ap.add_argument(
        "--liver-from",
        type=Path,
        default=None,
        help="run holding the liver segmenter for cams-liver (default: the cv run)",
    )
    ap.add_argument(
        "--variants",
        type=lambda v: [x for x in v.split(",") if x.strip()],
        default=None,
        help="CAM variants whose name contains one of these comma-separated words (default: all five)",
    )
    ap.add_argument(
        "--limit", type=int, default=0, help="images per fold for the CAM stage (a quick check; 0 = all)"
    )
    args = ap.parse_args()
    if not (args.data / "masks" / "lesion").is_dir():
        raise SystemExit(
            f"{args.data}: no masks/lesion folder — expected ../shared/data/liver-lesions (see ../shared/data/README.md)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lesions.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["command"] = "python benchmarks/lesions.py " + " ".join(sys.argv[1:])
    stages, redo = args.stages.split(","), set(args.redo.split(","))

    def want(key: str, stage: str = "") -> bool:  # stage: the key without its --seg-* suffix
        return key not in results or key in redo or (bool(stage) and stage in redo)

    if "cls" in stages or "classification" not in results:
        if want("classification"):
            results["classification"] = classification(args)
            save(args.out, results)
    if "cams" in stages and want("cams"):
        results["cams"] = pseudo_stage(args, results)
        save(args.out, results)
    if "supervised" in stages:
        for target in args.supervised.split(","):
            key = f"supervised-{target}" + seg_settings(args, results, masks=True)[1]
            if want(key, f"supervised-{target}"):
                results[key] = segmenter_stage(args, results, target, masks=args.data / "masks" / target)
                save(args.out, results)
    if "cams-liver" in stages and want("cams-liver"):
        results["cams-liver"] = liver_stage(args, results)
        save(args.out, results)
    sfx = seg_settings(args, results, masks=False)[1]  # the pseudo-mask segmenters' key suffix
    if "unet-pseudo" in stages:
        for key, target, extra in (
            ("unet-pseudo", "pseudo", {}),
            ("unet-pseudo-confident", "pseudo-confident", {"confident": (0.3, 0.6)}),
        ):
            if want(key + sfx, key):
                results[key + sfx] = segmenter_stage(
                    args, results, target + sfx, **pseudo_options(results), **extra
                )
                save(args.out, results)
    if "unet-pseudo-liver" in stages and want("unet-pseudo-liver" + sfx, "unet-pseudo-liver"):
        results["unet-pseudo-liver" + sfx] = segmenter_stage(
            args, results, "pseudo-liver" + sfx, **pseudo_options(results), within="liver"
        )
        save(args.out, results)
    if "self-train-liver" in stages and want("self-train-liver" + sfx, "self-train-liver"):
        from lesions_selftrain import self_train_stage

        results["self-train-liver" + sfx] = self_train_stage(
            args, results, "unet-pseudo-liver" + sfx, "self-train-liver" + sfx, segmenter_stage
        )
        save(args.out, results)
    if "classification" in results:  # the run's report shows every segmenter beside its baselines
        from liverscope.evaluate.report import write_report

        write_report(Path(results["classification"]["run"]))
    print_tables(results)
    print(f"→ {path}")


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()

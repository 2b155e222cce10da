"""Real-mask check (issue 4): CAM pseudo-masks and the Attention U-Net against expert lesion masks.

On ../shared/data/liver-masses (36 B-mode images, benign 20 / malignant 16, an expert lesion mask for
each in masks/):

1. train a small benign/malignant classifier with the project's recipe API (resnet10t from scratch, a
   grouped hold-out split; 36 images are far too few for a useful classifier — this is a check of the
   explanation pipeline, not a model to ship);
2. for every image, CAM pseudo-masks by each rule (threshold 0.5 = the study's, Otsu over the sector,
   top-20% and top-10% of the sector, threshold 0.5 and Otsu on flip-averaged CAMs) scored against the expert masks: IoU and
   Dice over the whole image and inside the scan sector, and the pointing-game hit rate of the CAM;
3. trivial baselines with no model: the whole scan sector as the mask; a disc at the sector's centroid
   covering 20% of the sector (the size of the top-20% masks); for the pointing game, the sector's
   centroid, and the chance rate of a uniformly random sector pixel (mean lesion share of the sector);
4. the Attention U-Net trained on the CAM pseudo-masks (grouped train/val/test split of the 36 images),
   scored on its held-out test images against their pseudo-masks (the study's figure) and against the
   expert masks; and, as a reference of what the same U-Net learns from expert labels on this little
   data, one trained on the expert masks themselves (BCE + Dice: lesions are ~8% of the sector).

Everything is scored on the classifier's input grid (expert masks resized with nearest neighbour).

    python benchmarks/masses.py [--data DIR] [--out runs/masses] [--epochs 20] [--image-size 128] [--unet-epochs 25]

Results: printed as Markdown tables and saved to OUT/masses.json. The data is read in place, never copied.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def centred_disc(sector: np.ndarray, share: float) -> np.ndarray:
    """A disc at the sector's centroid whose area is ``share`` of the sector's, clipped to the sector."""
    ys, xs = np.nonzero(sector)
    cy, cx = ys.mean(), xs.mean()
    r = math.sqrt(share * sector.sum() / math.pi)
    yy, xx = np.mgrid[0 : sector.shape[0], 0 : sector.shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & sector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "liver-masses")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "masses")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--unet-epochs", type=int, default=25)
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="Reuse a classifier already trained in OUT.")
    args = ap.parse_args()

    from liverscope import rundir
    from liverscope import segment as S
    from liverscope.config import load_config
    from liverscope.data.datasets import load_samples
    from liverscope.data.geometry import to_model
    from liverscope.evaluate.masks import mask_scores
    from liverscope.evaluate.report import write_report
    from liverscope.train import fit
    from liverscope.utils import atomic_write_json, read_json

    t_start = time.perf_counter()
    data, out = args.data, args.out
    if not (data / "masks").is_dir():
        sys.exit(f"{data}: no masks/ folder — expected ../shared/data/liver-masses")
    run_dir = out / "classifier"
    # 1. the classifier
    if not (args.keep and (run_dir / "model.safetensors").exists()):
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cfg = load_config("cpu-quick", {
            "data.path": str(data), "out_dir": str(out), "name": "classifier", "data.image_size": args.image_size,
            "data.crop_sector": True, "data.cache_dir": str(out / "cache"), "data.augment": "light",
            "model.name": args.model, "train.epochs": args.epochs, "train.batch_size": 8, "train.lr": 2e-3,
            "train.device": "cpu", "train.progress": False, "train.seed": args.seed,
        })
        fit(cfg)
    t_cls = time.perf_counter() - t_start
    clf = read_json(run_dir / "metrics.json").get("test", {})

    # 2. CAMs of every image, pseudo-masks by rule, scores against the expert masks
    pp = rundir.read_preprocessing(run_dir)
    samples, _ = load_samples(data)
    items, bad = S.load_images([s.path for s in samples], pp, roots=[data])
    if bad:
        print(f"skipped: {bad}", file=sys.stderr)
    truth = [to_model(S.read_mask(S.find_mask(data / "masks", it.rel), it.shape), it.box, pp.size) for it in items]
    inputs = [it.input for it in items]
    t0 = time.perf_counter()
    cams_plain = S.run_cams(run_dir, inputs, method=args.method)
    cams_flip = S.run_cams(run_dir, inputs, method=args.method, flip_average=True)
    t_cam = time.perf_counter() - t0
    recipes = [
        ("threshold 0.5 (study)", "threshold", cams_plain, False),
        ("Otsu", "otsu", cams_plain, False),
        ("top 20%", "top", cams_plain, False),
        ("top 10%", "top10", cams_plain, False),
        ("threshold 0.5, flip-averaged", "threshold", cams_flip, True),
        ("Otsu, flip-averaged", "otsu", cams_flip, True),
    ]
    rows = {}
    for name, rule, cams, flip in recipes:
        q = 10 if rule == "top10" else 20
        pm = S.pseudo_masks(run_dir, inputs, rule.replace("top10", "top"), q=q, cams=cams, flip_average=flip)
        s = S.score_pseudo_masks(pm, truth)
        s["mask_share_of_sector"] = float(np.mean([m.sum() / max(1, sec.sum()) for m, sec in zip(pm.masks, pm.sectors)]))
        rows[name] = s
    sectors = pm.sectors
    # 3. baselines
    whole = mask_scores(list(sectors), truth)
    disc_masks = [centred_disc(sec, 0.2) for sec in sectors]
    disc = mask_scores(disc_masks, truth)
    centre_hits = []
    for sec, t in zip(sectors, truth):
        ys, xs = np.nonzero(sec)
        centre_hits.append(bool(t[int(round(ys.mean())), int(round(xs.mean()))]))
    chance = float(np.mean([(t & sec).sum() / sec.sum() for t, sec in zip(truth, sectors)]))
    baselines = {
        "whole sector": {"n": whole["n"], "iou": whole["iou"], "dice": whole["dice"], "pointing_game": chance},
        "centred disc (20% of sector)": {"n": disc["n"], "iou": disc["iou"], "dice": disc["dice"], "pointing_game": float(np.mean(centre_hits))},
    }
    lesion_share = {"mean_lesion_share_of_image": float(np.mean([t.mean() for t in truth])), "mean_lesion_share_of_sector": chance}

    # 4. U-Nets: on the study's pseudo-masks, on Otsu pseudo-masks, and on the expert masks (reference)
    unets = {}
    for name, kw in [
        ("U-Net on expert masks, BCE+Dice (reference)", {"masks": data / "masks", "loss": "bce+dice"}),
        ("U-Net on Otsu pseudo-masks", {"rule": "otsu"}),
        ("U-Net on threshold-0.5 pseudo-masks (study)", {"rule": "threshold"}),
    ]:
        t0 = time.perf_counter()
        r = S.train_segmenter(run_dir, data, real_masks=data / "masks", epochs=args.unet_epochs, size=pp.size, seed=args.seed,
                              device="cpu", method=args.method, test_frac=0.25, val_frac=0.2, patience=10, report=False, **kw)
        sc = r["scores"]
        unets[name] = {
            "n_train": sc["n_train"], "n_val": sc["n_val"], "n_test": sc["n_test"], "iou_vs_targets": sc["iou_vs_targets"],
            "dice_vs_targets": sc["dice_vs_targets"], "vs_expert": sc.get("unet_vs_real"), "pseudo_vs_expert": sc.get("pseudo_vs_real"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    write_report(run_dir)
    total = time.perf_counter() - t_start

    # report
    print(f"\n## Real-mask check: {data} ({len(items)} images, classifier {args.model} {pp.size}px, {args.method})\n")
    print(f"classifier test (n={clf.get('n', '?')}): accuracy {fmt(clf.get('accuracy'))}, balanced accuracy {fmt(clf.get('balanced_accuracy'))}, "
          f"macro AUC {fmt(clf.get('macro_auc'))}")
    print(f"lesion share: {lesion_share['mean_lesion_share_of_image']:.3f} of the image, {chance:.3f} of the scan sector (means)\n")
    print("| pseudo-mask vs expert mask (all images) | n | IoU | Dice | IoU in sector | Dice in sector | pointing game | mask share of sector |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, s in rows.items():
        print(f"| {name} | {s['n']} | {fmt(s['iou'])} | {fmt(s['dice'])} | {fmt(s['iou_sector'])} | {fmt(s['dice_sector'])} | "
              f"{fmt(s['pointing_game'])} | {fmt(s['mask_share_of_sector'])} |")
    for name, s in baselines.items():
        print(f"| baseline: {name} | {s['n']} | {fmt(s['iou'])} | {fmt(s['dice'])} | – | – | {fmt(s['pointing_game'])} | – |")
    print("\n(pointing game of the baselines: the sector's centroid for the disc; the chance rate of a random sector pixel for the whole sector)\n")
    print("| U-Net (held-out test images) | train/val/test | IoU vs own targets | Dice vs own targets | IoU vs expert | Dice vs expert | pseudo-masks vs expert (IoU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, u in unets.items():
        ve, pe = u["vs_expert"] or {}, u["pseudo_vs_expert"] or {}
        print(f"| {name} | {u['n_train']}/{u['n_val']}/{u['n_test']} | {fmt(u['iou_vs_targets'])} | {fmt(u['dice_vs_targets'])} | "
              f"{fmt(ve.get('iou'))} | {fmt(ve.get('dice'))} | {fmt(pe.get('iou'))} |")
    print(f"\ntimes: classifier {t_cls:.0f}s, CAMs (plain + flip) {t_cam:.0f}s, total {total:.0f}s")

    result = {
        "data": str(data), "n_images": len(items), "classifier": {"run": str(run_dir), "model": args.model, "size": pp.size, "epochs": args.epochs, "test": {k: clf.get(k) for k in ("n", "accuracy", "balanced_accuracy", "macro_auc")}},
        "method": args.method, "lesion_share": lesion_share,
        "pseudo_masks": {k: {kk: vv for kk, vv in v.items() if kk not in ("iou_per_image", "dice_per_image", "hits")} for k, v in rows.items()},
        "baselines": baselines, "unet": unets, "seconds": {"classifier": round(t_cls, 1), "cams": round(t_cam, 1), "total": round(total, 1)},
        "command": "python benchmarks/masses.py " + " ".join(sys.argv[1:]),
    }
    atomic_write_json(out / "masses.json", result)
    print(f"→ {out / 'masses.json'}")


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()

"""One round of self-training for ``benchmarks/lesions.py`` (issue 22, item 4): the stage ``self-train-liver``.

The segmenter of ``unet-pseudo-liver`` (trained on the CAM pseudo-masks cut inside the predicted liver)
predicts its own *training* images — those its split file marks ``train``, never its validation or test
images. Its gated mask (what ``segment predict`` draws: the gate fitted on its validation targets, with
the image-level head where it has one) where the probability reaches ``--self-threshold``, inside the
run's predicted liver and the scan sector, is each training image's next target; an image it leaves
empty gets an empty mask. ``segment train --masks`` has no ignore value, so the targets are binary. The
validation and test images keep the first round's targets (its CAM pseudo-masks, ``pseudo_masks-T/``):
early stopping and the gate are chosen on the same targets as in the first round, and no expert mask is
a target anywhere. The targets are written as a mask folder (PNG 0/255 at the original size, the data's
relative paths — what ``--masks`` finds first — in ``RUN/self_train_masks-KEY/``), and a second segmenter
with the first one's network, size, epochs, patience, loss, batch, learning rate and seed is trained on
them and scored against the experts (``real_masks=DATA/masks/lesion``) on its test images. The same
images in the same order give the same grouped split (seed 0): the stage compares the two split files
(``same_split``). The expert masks of the *training* images are read only to report how far each round's
training targets are from the experts (``train_targets_vs_expert``), after the targets are written.
"""

from __future__ import annotations

import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def read_split(path: Path) -> dict[str, str]:
    """Image path → ``train`` / ``val`` / ``test`` of a segmenter's split file."""
    with open(path, newline="") as fh:
        return {r["path"]: r["split"] for r in csv.DictReader(fh)}


def relative(path: Path, data: Path) -> Path:
    """The image's path relative to the data folder (as ``segment train`` names its mask files)."""
    try:
        return path.relative_to(data)
    except ValueError:
        return Path(path.name)


def overall(summary: dict) -> dict:
    o = summary["overall"]
    keys = ("dice", "iou", "detection_rate", "false_positive_rate", "n_lesion", "n_empty")
    return {k: o.get(k) for k in keys}


def write_targets(args, run: Path, first: str, out: Path) -> dict:
    """The next targets of every image of ``first``'s split written into ``out``: its confident predictions
    on its training images, its CAM pseudo-masks on the others. Returns counts and diagnostics."""
    from liverscope import segment as S
    from liverscope.data.datasets import load_samples
    from liverscope.data.geometry import to_original
    from liverscope.data.sector import sector_mask
    from liverscope.evaluate.masks import expert_mask_summary, mask_scores
    from liverscope.rundir import read_preprocessing
    from liverscope.segment.pseudo import check_out_dir
    from liverscope.segment.unet import gated_masks, segmenter_files
    from liverscope.utils import atomic_write_png

    files = segmenter_files(first)
    seg = S.load_segmenter(run, target=first)
    cams = run / files["pseudo"]
    if seg is None or not (run / files["split"]).is_file() or not cams.is_dir():
        raise SystemExit(
            f"{run}: no '{first}' segmenter with its split and pseudo-masks: run unet-pseudo-liver first"
        )
    split = read_split(run / files["split"])
    check_out_dir(out, [args.data])
    if out.exists():  # this stage's own folder: no mask of an earlier attempt may stay
        shutil.rmtree(out)
    pp = seg.preprocessing or read_preprocessing(run)
    items, bad = S.load_images([Path(p) for p, k in split.items() if k == "train"], pp, roots=[args.data])
    if bad:
        raise SystemExit(f"unreadable training images: {bad}")
    inputs = [it.input for it in items]
    probs, scores = S.predict_proba(seg, inputs, scores=True)
    gated, suppressed = gated_masks(seg, probs, scores)
    livers = S.predicted_regions(run, "liver", items, pp, [args.data])
    sectors = [sector_mask(x) for x in inputs]
    new = [g & (p >= args.self_threshold) & lv & s for g, p, lv, s in zip(gated, probs, livers, sectors)]
    for it, m in zip(items, new):
        atomic_write_png(out / it.rel.with_suffix(".png"), to_original(m, it.shape, it.box))
    kept = 0
    for p, k in split.items():
        if k == "train":
            continue
        rel = relative(Path(p), args.data)
        src = S.find_mask(cams, rel)
        if src is None:
            raise SystemExit(f"{p}: no first-round pseudo-mask in {cams}")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel.with_suffix(".png"))
        kept += 1
    # diagnostics only (the targets are written): both rounds' training targets against the experts
    old, _ = S.load_masks_for(items, cams, pp.size)
    experts, _ = S.load_masks_for(items, args.data / "masks" / "lesion", pp.size)
    labels = {str(s.path): s.label for s in load_samples(args.data)[0]}
    have = [i for i, (o, e) in enumerate(zip(old, experts)) if o is not None and e is not None]
    cls = [labels.get(str(items[i].path), "all") for i in have]
    truth, regions = [experts[i] for i in have], [sectors[i] for i in have]
    return {
        "first": first,
        "mask_dir": str(out),
        "threshold": args.self_threshold,
        "n_train": len(items),
        "n_train_nonempty": int(sum(m.any() for m in new)),
        "n_emptied_by_gate": int(suppressed),
        "n_val_test_first_round_targets": kept,
        "mean_target_share_of_image": float(np.mean([m.mean() for m in new])) if new else None,
        "dice_with_first_round_targets": mask_scores([new[i] for i in have], [old[i] for i in have])["dice"],
        "train_targets_vs_expert": {
            "first round (CAM pseudo-masks)": overall(
                expert_mask_summary([old[i] for i in have], truth, cls, regions)
            ),
            "self-training": overall(expert_mask_summary([new[i] for i in have], truth, cls, regions)),
        },
    }


def self_train_stage(args, results: dict, first_key: str, key: str, train) -> dict:
    """``key``: the segmenter of ``first_key`` → next targets (:func:`write_targets`) → a second segmenter
    of the same network and fit (``train``: lesions.py's ``segmenter_stage``), target ``key`` in the run."""
    from liverscope.segment.unet import segmenter_files
    from liverscope.utils import read_json

    if first_key not in results:
        raise SystemExit(
            f"no '{first_key}' in lesions.json: run the unet-pseudo-liver stage first, with the same --seg-* options"
        )
    run = Path(results["classification"]["run"])
    first = results[first_key]["target"]
    t0 = time.perf_counter()
    targets = write_targets(args, run, first, run / f"self_train_masks-{key}")
    c = read_json(run / segmenter_files(first)["meta"])["config"]
    net, fit = c["network"], c["train"]
    flags = {
        "arch": net["arch"],
        **(
            {"channels": net["channels"], "in_channels": net["in_channels"]}
            if net["arch"] == "attention-unet"
            else {}
        ),
        **{
            k: fit[k]
            for k in (
                "size",
                "epochs",
                "patience",
                "loss",
                "seed",
                "batch_size",
                "lr",
                "test_frac",
                "val_frac",
            )
        },
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    r = train(args, results, key, masks=Path(targets["mask_dir"]), flags=flags)
    same = read_split(run / segmenter_files(first)["split"]) == read_split(
        run / segmenter_files(key)["split"]
    )
    if not same:
        print(f"warning: {key} was split differently from {first}: its test images differ", file=sys.stderr)
    return {
        **r,
        "first_round": first_key,
        "same_split": same,
        "targets": targets,
        "train_minutes": r["minutes"],
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }

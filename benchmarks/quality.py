"""Real-data quality benchmark (issue 3): the size of the leak, and honest grouped 5-fold figures.

On ../shared/data/liver-fibrosis, with a CPU recipe (no ImageNet weights):

(a) the same recipe trained twice on a 70/15/15 hold-out, once with the legacy random split (copies of
    test images sit in training) and once grouped (exact and near duplicates kept on one side); the test
    figures side by side are the size of the leak;
(b) grouped 5-fold cross-validation on the distinct images: out-of-fold balanced accuracy, macro AUC and
    quadratic-weighted kappa, overall and within each acquisition source.

    python benchmarks/quality.py [--data DIR] [--out runs/quality] [--epochs 30] [--image-size 96]

Results: printed as a Markdown table and saved to OUT/quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from liverscope.config import load_config
from liverscope.cv import cross_validate
from liverscope.train import fit
from liverscope.utils import atomic_write_json, read_json

REPO = Path(__file__).resolve().parents[1]


def recipe(args, name: str, **extra):
    values = {
        "data.path": str(args.data), "out_dir": str(args.out), "name": name,
        "data.image_size": args.image_size, "data.crop_sector": True, "data.denoise": True, "data.augment": "light",
        "model.name": args.model, "model.head": "linear", "train.epochs": args.epochs, "train.batch_size": 32,
        "train.optimizer": "adamw", "train.lr": args.lr, "train.weight_decay": 5e-4, "train.scheduler": "cosine",
        "train.balance": "sampler", "train.label_smoothing": 0.1, "train.progress": False, "train.seed": args.seed,
        "train.monitor": "val_balanced_acc",
    }
    values.update(extra)
    return load_config("cpu-quick", values)


def headline(m: dict) -> dict:
    keys = ("accuracy", "balanced_accuracy", "macro_auc", "quadratic_kappa", "macro_f1", "n")
    return {k: m.get(k) for k in keys}


def fmt(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "liver-fibrosis")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--leak-epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-leak", action="store_true")
    ap.add_argument("--skip-cv", action="store_true", help="only the random-vs-grouped hold-out comparison")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found: this benchmark needs the real data (see ../shared/data/README.md)")
    t0 = time.perf_counter()
    results: dict = {"command": " ".join(["python benchmarks/quality.py", f"--model {args.model}", f"--image-size {args.image_size}", f"--epochs {args.epochs}", f"--leak-epochs {args.leak_epochs}"])}

    if not args.skip_leak:
        for split in ("random", "grouped"):
            name = f"leak-{split}"
            run = args.out / name
            if not (run / "metrics.json").exists():
                fit(recipe(args, name, **{"data.split": split, "train.epochs": args.leak_epochs}))
            m = read_json(run / "metrics.json")
            results[f"holdout_{split}"] = headline(m["test"])
            results[f"holdout_{split}"]["by_source"] = {s: headline(v) for s, v in (m.get("test_by_source") or {}).get("groups", {}).items()}

    if not args.skip_cv:
        cv_run = cross_validate(recipe(args, "cv5-grouped", **{"data.split": "grouped", "data.distinct_only": True}), k=5, test_frac=0.0)
        m = read_json(cv_run / "metrics.json")
        results["cv5_oof"] = headline(m["oof"])
        results["cv5_oof"]["ci"] = m["oof"].get("ci")
        results["cv5_by_source"] = {s: headline(v) for s, v in (m.get("oof_by_source") or {}).get("groups", {}).items()}
    results["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    atomic_write_json(args.out / "quality.json", results)

    print("\n| evaluation | n | accuracy | balanced acc. | macro AUC | QW kappa |\n| --- | --- | --- | --- | --- | --- |")
    rows = []
    if "holdout_random" in results:
        rows += [("hold-out, random split (leaky)", results["holdout_random"]), ("hold-out, grouped split", results["holdout_grouped"])]
    if "cv5_oof" in results:
        rows.append(("grouped 5-fold, out-of-fold", results["cv5_oof"]))
        rows += [(f"  … source {s}", v) for s, v in results["cv5_by_source"].items()]
    for label, r in rows:
        print(f"| {label} | {fmt(r['n'])} | {fmt(r['accuracy'])} | {fmt(r['balanced_accuracy'])} | {fmt(r['macro_auc'])} | {fmt(r['quadratic_kappa'])} |")
    print(f"\n{results['minutes']} minutes; details in {args.out / 'quality.json'}")
    print(json.dumps(results.get("cv5_oof", {}).get("ci"), indent=1))


if __name__ == "__main__":
    main()

"""Real-data quality benchmark (issue 3): the size of the leak, and honest grouped 5-fold figures.

On ../shared/data/liver-fibrosis, with a CPU recipe (no ImageNet weights):

(a) the same recipe trained twice on a 70/15/15 hold-out, once with the legacy random split (copies of
    test images sit in training) and once grouped (exact and near duplicates kept on one side); the test
    figures side by side are the size of the leak;
(b) grouped 5-fold cross-validation on the distinct images: out-of-fold balanced accuracy, macro AUC and
    quadratic-weighted kappa, overall and within each acquisition source. The folds keep their last epoch
    (``train.select`` auto in cv, issue 23): their out-of-fold images choose nothing; ``--set
    train.select=best`` is the old way (best epoch by validation balanced accuracy, chosen on those same
    images: the figures in docs/benchmarks.md before issue 23). With ``--test-frac F`` a share F of the
    images is held out first and the 5-fold ensemble is scored on it, beside the out-of-fold figures of the
    rest (the product against the estimate).

    python benchmarks/quality.py [--data DIR] [--out runs/quality] [--epochs 30] [--image-size 96]
    python benchmarks/quality.py --skip-leak --model tf_efficientnet_lite0 --pretrained --image-size 128 \
        --epochs 15 --lr 1e-3 --name lite0-128 --lever "ImageNet Lite0, 128 px, 15 epochs"   # one experiment
    python benchmarks/quality.py --skip-leak --test-frac 0.2 ...   # + the 5-fold ensemble on an inner hold-out

Results: printed as a Markdown table and saved to OUT/quality.json; every cv experiment also appends
one row (lever, OOF figures overall and per source, minutes) to OUT/experiments.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from liverscope.config import load_config
from liverscope.training.cv import cross_validate
from liverscope.training.run import fit
from liverscope.utils import atomic_write_json, read_json

REPO = Path(__file__).resolve().parents[1]


def recipe(args, name: str, **extra):
    values = {
        "data.path": str(args.data),
        "out_dir": str(args.out),
        "name": name,
        "data.image_size": args.image_size,
        "data.crop_sector": True,
        "data.denoise": True,
        "data.augment": "light",
        "model.name": args.model,
        "model.head": "linear",
        "train.epochs": args.epochs,
        "train.batch_size": 32,
        "train.optimizer": "adamw",
        "train.lr": args.lr,
        "train.weight_decay": 5e-4,
        "train.scheduler": "cosine",
        "train.balance": "sampler",
        "train.label_smoothing": 0.1,
        "train.progress": False,
        "train.seed": args.seed,
        "train.monitor": "val_balanced_acc",
        "model.pretrained": args.pretrained,
    }
    for item in args.set or []:
        key, _, value = item.partition("=")
        values[key.strip()] = value.strip()
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
    ap.add_argument(
        "--pretrained",
        action="store_true",
        help="ImageNet weights (hub, or the liverscope[imagenet] packages offline)",
    )
    ap.add_argument("--name", default="cv5-grouped", help="run name of the cross-validation under OUT")
    ap.add_argument(
        "--lever", default="", help="what this experiment changes (the row label in experiments.jsonl)"
    )
    ap.add_argument("--set", action="append", help="any recipe setting KEY=VALUE (repeatable)")
    ap.add_argument(
        "--test-frac",
        type=float,
        default=0.0,
        help="hold this share out of the cv and score the 5-fold ensemble on it, beside the out-of-fold figures (0: none)",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(
            f"{args.data} not found: this benchmark needs the real data (see ../shared/data/README.md)"
        )
    t0 = time.perf_counter()
    import sys

    results: dict = {"command": " ".join(["python", *sys.argv])}

    if not args.skip_leak:
        for split in ("random", "grouped"):
            name = f"leak-{split}"
            run = args.out / name
            if not (run / "metrics.json").exists():
                fit(recipe(args, name, **{"data.split": split, "train.epochs": args.leak_epochs}))
            m = read_json(run / "metrics.json")
            results[f"holdout_{split}"] = headline(m["test"])
            results[f"holdout_{split}"]["by_source"] = {
                s: headline(v) for s, v in (m.get("test_by_source") or {}).get("groups", {}).items()
            }

    if not args.skip_cv:
        t_cv = time.perf_counter()
        cv_run = cross_validate(
            recipe(args, args.name, **{"data.split": "grouped", "data.distinct_only": True}),
            k=5,
            test_frac=args.test_frac,
        )
        m = read_json(cv_run / "metrics.json")
        results["cv5_oof"] = headline(m["oof"])
        results["cv5_oof"]["select"] = (m.get("oof_protocol") or {}).get(
            "select", "best"
        )  # runs before issue 23: best
        results["cv5_oof"]["ci"] = m["oof"].get("ci")
        results["cv5_oof"]["endpoints"] = {
            k: v.get("auc") for k, v in (m["oof"].get("endpoints") or {}).items()
        }
        results["cv5_by_source"] = {
            s: headline(v) for s, v in (m.get("oof_by_source") or {}).get("groups", {}).items()
        }
        if "ensemble" in m:  # --test-frac: the product (the fold ensemble) on the inner hold-out
            results["cv5_ensemble"] = headline(m["ensemble"])
            results["cv5_ensemble_by_source"] = {
                s: headline(v) for s, v in (m.get("ensemble_by_source") or {}).get("groups", {}).items()
            }
            results["cv5_ensemble_vs_oof"] = m.get("ensemble_vs_oof")
        row = {
            "lever": args.lever or args.name,
            "run": str(cv_run),
            "command": results["command"],
            "minutes": round((time.perf_counter() - t_cv) / 60, 1),
            **results["cv5_oof"],
            "by_source": results["cv5_by_source"],
            **(
                {"ensemble": results["cv5_ensemble"], "ensemble_by_source": results["cv5_ensemble_by_source"]}
                if "cv5_ensemble" in results
                else {}
            ),
        }
        with open(
            args.out / "experiments.jsonl", "a", encoding="utf-8"
        ) as fh:  # appended as each experiment ends
            fh.write(json.dumps(row) + "\n")
    results["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    atomic_write_json(args.out / "quality.json", results)

    print(
        "\n| evaluation | n | accuracy | balanced acc. | macro AUC | QW kappa |\n| --- | --- | --- | --- | --- | --- |"
    )
    rows = []
    if "holdout_random" in results:
        rows += [
            ("hold-out, random split (leaky)", results["holdout_random"]),
            ("hold-out, grouped split", results["holdout_grouped"]),
        ]
    if "cv5_oof" in results:
        rows.append(
            (f"grouped 5-fold, out-of-fold (select {results['cv5_oof']['select']})", results["cv5_oof"])
        )
        rows += [(f"  … source {s}", v) for s, v in results["cv5_by_source"].items()]
    if "cv5_ensemble" in results:
        rows.append(("5-fold ensemble on the inner hold-out", results["cv5_ensemble"]))
        rows += [(f"  … source {s}", v) for s, v in results["cv5_ensemble_by_source"].items()]
    for label, r in rows:
        print(
            f"| {label} | {fmt(r['n'])} | {fmt(r['accuracy'])} | {fmt(r['balanced_accuracy'])} | {fmt(r['macro_auc'])} | {fmt(r['quadratic_kappa'])} |"
        )
    print(f"\n{results['minutes']} minutes; details in {args.out / 'quality.json'}")
    print(json.dumps(results.get("cv5_oof", {}).get("ci"), indent=1))


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()

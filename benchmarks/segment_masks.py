"""Benchmark (issue 22): ``segment train --masks`` on the AUL lesion set, with its defaults or overrides.

Makes RUN (once) from the ``lesions`` recipe's preprocessing with an untrained classifier — with
``--masks`` the classifier only lends its preprocessing — then trains the segmenter of TARGET on the
expert masks (grouped hold-out 373 / 125 / 125, seed 0) and prints the scores as JSON and the command's
summary lines. The segmenter, its scores and ``metrics.json`` are written into RUN as the command writes them.

    python benchmarks/segment_masks.py RUN [TARGET] ['{"epochs": 30, "size": 256, "arch": "unet-lite1"}'] [--data DIR]

TARGET ``lesion`` (default) trains on ``masks/lesion``, ``liver`` on ``masks/liver``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from liverscope import segment as S
from liverscope.config import load_config
from liverscope.data.preprocess import Preprocessing
from liverscope.models import build_model, get_spec
from liverscope.rundir import save_model

REPO = Path(__file__).resolve().parents[1]


def make_run(run: Path, data: Path) -> None:
    """A run directory holding the ``lesions`` recipe's preprocessing (and an untrained classifier)."""
    if (run / "model.json").exists():
        return
    cfg = load_config("lesions", {"data.path": str(data)})
    spec = get_spec(cfg.model.name)
    run.mkdir(parents=True, exist_ok=True)
    save_model(
        run,
        build_model("resnet10t", 3, head="linear"),
        ["benign", "malignant", "normal"],
        Preprocessing.from_data_config(cfg.data, spec.mean, spec.std),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("target", nargs="?", default="lesion")
    ap.add_argument(
        "overrides",
        nargs="?",
        default="{}",
        help="JSON: segment train flags by name (liverscope.segment.segment_config), and resume",
    )
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "liver-lesions")
    args = ap.parse_args()
    make_run(args.run, args.data)
    extra = json.loads(args.overrides)
    t0 = time.perf_counter()
    flags = {k: v for k, v in extra.items() if k != "resume"}
    cfg = S.segment_config(
        masks=args.data / "masks" / args.target, target=args.target, device="cpu", seed=0, **flags
    )
    r = S.train_segmenter(args.run, args.data, cfg, report=False, resume=bool(extra.get("resume")))
    print(
        json.dumps(
            {
                "target": args.target,
                "overrides": extra,
                "minutes": round((time.perf_counter() - t0) / 60, 1),
                "scores": r["scores"],
            },
            default=str,
        )
    )
    for line in r["summary_lines"]:
        print(line)


if __name__ == "__main__":
    main()

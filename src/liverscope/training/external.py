"""Score a trained run (single model or fold ensemble) on other labelled data: a workflow beside
training, not a metric.

Writes ``RUN_DIR/eval/<name>/``: ``predictions_test.csv``, ``metrics.json`` (with per-source metrics when
the data has more than one acquisition source, and the share of images flagged as unlike the training
data: a whole new site flagged means the model does not transfer there), ``confusion_matrix.png``,
``audit.json`` and ``report.html``.

Figures of record are computed in fp32 (``precision="fp32"``, the default), the same on every machine;
``precision="bf16"`` can move them far (docs/benchmarks.md, "bf16 against fp32"). The precision used is
written to ``metrics.json`` (``test.precision``), to every row of the predictions CSV and to the report.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope import rundir
from liverscope.data.ablation import parse_ablations
from liverscope.data.audit import audit_dataset
from liverscope.data.audit_report import write_audit
from liverscope.data.datasets import load_samples
from liverscope.errors import LiverscopeError
from liverscope.evaluate.ood import ensemble_margin, flag_summary
from liverscope.evaluate.report import write_report
from liverscope.evaluate.scoring import score_predictions
from liverscope.inference.predict import Predictor
from liverscope.training.cv import ensemble_logits
from liverscope.training.shortcut_check import shortcut_check


def ensemble_predict_logits(
    run_dir: Path,
    paths: list[Path],
    device: str = "auto",
    tta: str = "none",
    precision: str = "fp32",
) -> tuple[np.ndarray, list[str], list[tuple[str, str]], tuple[np.ndarray, float, dict] | None, str]:
    """Logits of a run (mean over ensemble members) for files, and their out-of-distribution scores.

    A single model's OOD score is its own, against its own threshold. A fold ensemble's is
    :func:`~liverscope.evaluate.ood.ensemble_margin`: each member scores the image relative to its own
    threshold and the median of these margins is the ensemble's score, with threshold 0 — an image is
    flagged when the majority of members (odd counts) flag it.

    ``precision``: ``fp32`` (or ``auto``, the same) scores with ONNX Runtime where the run has a current
    export (fp32 too), else PyTorch; ``bf16`` needs PyTorch (:class:`~liverscope.models.backends.TorchBackend`).

    Returns:
        ``(logits, ok_paths, skipped, ood, precision)`` with ``ood = (scores, threshold, info)`` or ``None``
        when a member has no detector (a run trained before liverscope scored OOD), and the precision
        the models ran in (``bf16+fp32`` when bf16's first-batch check kept it for some members only).
    """
    all_logits, all_scores, thresholds, methods, ok, skipped, used = [], [], [], [], None, [], set()
    for member in rundir.members(run_dir):
        backend = "torch" if precision == "bf16" else "auto"
        pred = Predictor.from_run(
            member, backend=backend, device=device, calibrated=False, tta=tta, precision=precision
        )
        results = list(pred.predict_paths(paths))
        used.add(pred.precision)
        if ok is None:
            skipped = [(r.path, r.error) for r in results if r.error]
            ok = [r.path for r in results if not r.error]
        all_logits.append(np.array([r.logits for r in results if not r.error]))
        if pred.ood:
            all_scores.append(np.array([r.ood_score for r in results if not r.error], dtype=np.float64))
            thresholds.append(pred.ood_threshold)
            methods.append(pred.ood["method"])
    ood = None
    if thresholds and len(thresholds) == len(all_logits):
        if len(thresholds) == 1:
            ood = (all_scores[0], thresholds[0], {"method": methods[0]})
        else:
            rule = "median over the fold models of (score - the model's threshold); flagged above 0 (the majority of models flag it)"
            ood = (
                ensemble_margin(np.stack(all_scores), thresholds),
                0.0,
                {"method": methods[0], "ensemble": rule, "member_thresholds": thresholds},
            )
    return ensemble_logits(all_logits), ok or [], skipped, ood, "+".join(sorted(used))


def evaluate_on_data(
    run_dir: str | Path,
    data: str | Path,
    name: str | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    tta: str = "none",
    precision: str = "fp32",
    ablation: Sequence[str] | str | None = None,
) -> Path:
    """Score a run on labelled data and write the results to ``out`` (default ``RUN_DIR/eval/<name>/``).

    Args:
        run_dir: trained run (``train`` or ``cv``); only read when ``out`` lies elsewhere.
        data: class-per-folder tree or CSV manifest; its labels must be among the run's labels.
        name: sub-folder under ``RUN_DIR/eval/`` when ``out`` is not given (default: the data folder's name).
        device: inference device.
        out: output folder (self-contained: it gets a copy of the run's ``model.json`` and ``config.yaml``).
        tta: ``none`` or ``flip`` (each image's logits averaged with its mirror's; recorded in ``metrics.json``).
        precision: ``fp32`` (default: the same figures on every machine; ``auto`` is the same) or ``bf16``;
            the precision used is recorded in ``metrics.json`` (``test.precision``) and the predictions CSV.
        ablation: ``tissue`` and/or ``periphery`` (a list or a comma list): the shortcut check
            (:func:`liverscope.training.shortcut_check.shortcut_check`), checked before any image is read; its figures go to
            ``metrics.json["shortcut"]`` and the report.

    Returns:
        The output folder.
    """
    run_dir = Path(run_dir)
    regions = parse_ablations(ablation)
    meta = rundir.read_model_meta(run_dir)
    labels = list(meta["labels"])
    samples, classes = load_samples(data)
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise LiverscopeError(f"{data}: labels {unknown} are not among the model's labels {labels}")
    out = Path(out) if out is not None else rundir.eval_dir(run_dir, name or Path(data).stem)
    out.mkdir(parents=True, exist_ok=True)
    audit = audit_dataset(samples)
    write_audit(audit, out)
    source_of = {r["path"]: r.get("source") for r in audit["files"]}
    logits, ok, skipped, ood, used = ensemble_predict_logits(
        run_dir, [s.path for s in samples], device, tta, precision
    )
    if not ok:  # nothing to score: say why instead of failing on an empty batch
        first = "; ".join(f"{p}: {e}" for p, e in skipped[:3])
        raise LiverscopeError(
            f"{data}: none of its {len(samples)} images could be predicted ({first}); "
            "check the paths (a manifest's relative paths are read from the folder it is in) and the files"
        )
    by_path = {str(s.path): s for s in samples}
    kept = [by_path[p] for p in ok]
    for s in kept:
        s.source = s.source or source_of.get(str(s.path))
    index = {c: i for i, c in enumerate(labels)}
    y = np.array([index[s.label] for s in kept])
    metrics: dict = {
        "data": str(data),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "class_names": labels,
        "tta": tta,
    }
    scored = score_predictions(
        out,
        rundir.PREDICTIONS_TEST,
        kept,
        y,
        logits,
        labels,
        rundir.temperature(meta),
        ood=ood[:2] if ood else None,
        precision=used,
    )
    metrics["test"] = scored["metrics"]
    if ood:  # a whole new site flagged = the model does not transfer there
        metrics["ood"] = dict(flag_summary(ood[0], ood[1]), **ood[2])
    if scored["by_source"]:
        metrics["test_by_source"] = scored["by_source"]
    if regions:
        metrics["shortcut"] = shortcut_check(run_dir, kept, y, logits, regions, device, tta)
    rundir.write_metrics(out, metrics)
    for f in (rundir.MODEL_META, rundir.CONFIG):  # the report of eval/NAME shows the model it scored
        if (run_dir / f).exists():
            shutil.copyfile(run_dir / f, out / f)
    write_report(out)
    return out

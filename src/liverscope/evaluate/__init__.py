"""Evaluation: classification metrics (:mod:`.metrics`), mask metrics (:mod:`.masks`), statistics and
calibration (:mod:`.stats`), out-of-distribution scores (:mod:`.ood`), the one scoring path of a labelled set (:mod:`.scoring`), plots
(:mod:`.plots`), HTML building blocks (:mod:`.html`) and the HTML report of a run (:mod:`.report`).

``metrics``, ``masks``, ``stats``, ``ood`` and ``plots`` are pure (arrays in, numbers or a PNG out); ``report``
reads the run directory through :mod:`liverscope.rundir`. The submodules are imported on use
(``from liverscope.evaluate.metrics import compute_metrics``), so importing one does not pull in
matplotlib or scikit-learn for the others. Scoring a run on new labelled data is a workflow and lives
in :mod:`liverscope.training.external`.
"""

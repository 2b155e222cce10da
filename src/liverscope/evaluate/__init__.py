"""Evaluation: metrics (:mod:`.metrics`), statistics and calibration (:mod:`.stats`), plots and the
HTML report (:mod:`.report`), and scoring a run on new labelled data (:mod:`.external`).

The submodules are imported on use (``from liverscope.evaluate.metrics import compute_metrics``), so
importing one does not pull in matplotlib or scikit-learn for the others.
"""

"""Choices made by measurement on the machine at hand: the training precision
(:mod:`~liverscope.speed.training`) and the prediction backend (:mod:`~liverscope.speed.serving`),
with the timings kept per machine (:mod:`~liverscope.speed.cache`)."""

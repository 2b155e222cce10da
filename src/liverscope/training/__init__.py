"""Training a classifier: one run, cross-validation folds, the Lightning module, evaluation of a run on new data (docs/architecture.md)."""

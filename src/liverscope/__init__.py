"""liverscope: liver ultrasound fibrosis staging and disease classification, with explanations,
weakly supervised segmentation and leakage-safe evaluation."""

__version__ = "0.1.0"

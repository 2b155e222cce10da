"""Inference over a trained run: the predictor (torch / ONNX / int8), its export and its results (docs/architecture.md)."""

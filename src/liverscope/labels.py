"""Label sets: METAVIR fibrosis stages and the clinical endpoints defined on them.

One place for what a METAVIR label is (``F0``..``F4``, any case, a subset of at least two distinct
stages) and for the binary endpoints ≥F2 (significant fibrosis), ≥F3 (advanced fibrosis) and F4
(cirrhosis). The evaluation scores these endpoints (:func:`liverscope.evaluate.metrics.fibrosis_endpoints`)
and every prediction reports their probabilities (:func:`endpoint_probabilities`) from the same
definitions. Any other label set (normal / fatty / tumour …) is a plain list of folder names.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence

from liverscope.errors import LiverscopeError

#: The five METAVIR stages, F0 no fibrosis … F4 cirrhosis.
METAVIR = ("F0", "F1", "F2", "F3", "F4")
_METAVIR_RE = re.compile(r"^\s*F([0-4])\s*$", re.IGNORECASE)

#: The binary clinical endpoints of fibrosis staging: key -> (name, lowest positive stage).
FIBROSIS_ENDPOINTS: dict[str, tuple[str, int]] = {
    "≥F2": ("significant fibrosis", 2),
    "≥F3": ("advanced fibrosis", 3),
    "F4": ("cirrhosis", 4),
}


def metavir_stages(class_names: Sequence[str]) -> list[int] | None:
    """Stage numbers when the labels are METAVIR stages (``F0``..``F4``, any case, a subset of at least
    two distinct stages), else ``None``."""
    if len(class_names) < 2:
        return None
    stages = []
    for c in class_names:
        m = _METAVIR_RE.match(str(c))
        if m is None:
            return None
        stages.append(int(m.group(1)))
    return stages if len(set(stages)) == len(stages) else None


def is_metavir(class_names: Sequence[str]) -> bool:
    """Whether the label set is (a subset of) METAVIR fibrosis stages F0..F4."""
    return metavir_stages(class_names) is not None


def endpoint_definitions(class_names: Sequence[str], endpoints: Any = None) -> dict[str, dict[str, Any]]:
    """Resolve which binary endpoints apply to a label set.

    Args:
        class_names: the model's labels.
        endpoints: ``None`` (fibrosis endpoints when the labels are METAVIR stages), ``False`` (none),
            ``True`` (fibrosis endpoints, error if the labels are not stages) or a mapping
            ``{endpoint name: [positive class names]}`` for any other label set.

    Returns:
        ``{key: {"name", "positive": [class names], "index": [class indices]}}`` for each endpoint that
        has both a positive and a negative class among the labels.
    """
    names = [str(c) for c in class_names]
    if endpoints is False:
        return {}
    defs: dict[str, tuple[str, list[str]]] = {}
    if isinstance(endpoints, Mapping):
        for key, positive in endpoints.items():
            positive = [positive] if isinstance(positive, str) else [str(c) for c in positive]
            unknown = sorted(set(positive) - set(names))
            if unknown:
                raise LiverscopeError(f"endpoint {key!r}: classes {unknown} are not among {names}")
            defs[str(key)] = (str(key), positive)
    else:
        stages = metavir_stages(names)
        if stages is None:
            if endpoints is True:
                raise LiverscopeError(f"fibrosis endpoints need METAVIR stage labels (F0..F4), got {names}")
            return {}
        for key, (title, lowest) in FIBROSIS_ENDPOINTS.items():
            defs[key] = (title, [c for c, s in zip(names, stages) if s >= lowest])
    out = {}
    for key, (title, positive) in defs.items():
        idx = [names.index(c) for c in positive]
        if 0 < len(idx) < len(names):  # F4 is not an endpoint of a model that only knows F0..F2
            out[key] = {"name": title, "positive": positive, "index": idx}
    return out


@functools.lru_cache(maxsize=32)
def _default_definitions(labels: tuple[str, ...]) -> dict:
    # every prediction row asks for the same label set: resolve it once
    return endpoint_definitions(list(labels))


def endpoint_keys(labels: Sequence[str]) -> list[str]:
    """The endpoints that apply to a label set by default (``["≥F2", "≥F3", "F4"]`` for F0..F4)."""
    return list(_default_definitions(tuple(labels)))


def endpoint_probabilities(probs: Mapping[str, float]) -> dict[str, float] | None:
    """Probabilities of the clinical endpoints from METAVIR stage probabilities.

    Significant fibrosis ``≥F2`` = P(F2)+P(F3)+P(F4), advanced fibrosis ``≥F3`` = P(F3)+P(F4),
    cirrhosis ``F4`` = P(F4) — sums over the stages the model knows (an endpoint needs a positive and
    a negative stage among the labels, see :func:`endpoint_definitions`).

    Args:
        probs: class name → probability.

    Returns:
        ``{"≥F2": p, "≥F3": p, "F4": p}`` (those that apply), or ``None`` when the labels are not METAVIR stages.
    """
    defs = _default_definitions(tuple(probs))
    if not defs:
        return None
    return {k: float(sum(probs[c] for c in d["positive"])) for k, d in defs.items()}


def endpoint_column(key: str) -> str:
    """CSV column of an endpoint: ``≥F2`` → ``p_ge_F2``, ``F4`` → ``p_F4``."""
    return "p_" + key.replace("≥", "ge_")


__all__ = [
    "METAVIR",
    "FIBROSIS_ENDPOINTS",
    "metavir_stages",
    "is_metavir",
    "endpoint_definitions",
    "endpoint_keys",
    "endpoint_probabilities",
    "endpoint_column",
]

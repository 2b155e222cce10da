"""Dataset audit: duplicates, near-duplicates, label conflicts, acquisition sources and confounding.

Why this exists: the public liver-fibrosis set has ~4 copies of every image and a scanner that gives the
class away (see ``../shared/data/README.md``), so a random split scores a model on copies of its own
training images. :func:`audit_dataset` finds

* byte-identical files (SHA-256 of the bytes, read once);
* near-duplicates (re-encoded / rescaled copies): a 64-bit difference hash (dHash) searched within a
  Hamming radius by multi-index hashing (no all-pairs comparison), each candidate pair confirmed by a
  finer 256-bit dHash, then merged into groups (connected components);
* label conflicts (one image, exact or near copy, under two labels);
* acquisition sources (the ``source`` attribute, or clusters of image geometry, format and channel layout),
  a class x source table with Cramer's V and a plain warning when the class is predictable from the source;
* unreadable files and files whose extension does not match their content.

Each distinct file content is decoded once; files are read once and hashed from those bytes, in a thread
pool (hashlib, PIL and OpenCV release the GIL). The result is a JSON-able dict whose ``summary`` holds the
headline counts and whose ``group_id`` maps every path to its duplicate group (what the grouped splits use).
A group is the union of every constraint: exact copies, near copies, and patients (the manifest's
``group``, or for a DICOM file without one the one-way hash of its PatientID or StudyInstanceUID); the
identifiers themselves appear nowhere in the result. The frames of a cine loop are one file here.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverscope.data.datasets import load_samples, natural_key
from liverscope.data.hashing import connected_groups, dhash, find_near_pairs, hamming
from liverscope.data.io import (
    decode_image,
    dicom_header,
    extension_matches,
    read_bytes,
    sniff_format,
    to_grey,
)
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.utils import progress

#: Hamming radius of the 64-bit dHash candidate search. Measured on ../shared/data/liver-fibrosis (1,216
#: distinct images; groups with the 256-bit check at 6): radius 0 -> 1,149, 1 -> 1,120, 2 -> 1,104,
#: 3 -> 1,101, 4 -> 1,101. Past 2 the finer check decides, so the result no longer depends on the radius.
NEAR_THRESHOLD = 2
#: Hamming radius of the 256-bit dHash that confirms a candidate pair. The 64-bit hash alone collides for
#: different dark, low-contrast frames of one scanner (their 8x9 thumbnails are mostly the fixed scan fan):
#: on the fibrosis set radius 0 of the 64-bit hash alone merges an F0 and an F1 image that are visibly
#: different, and radius 1 merges 65 cross-class pairs; with this check there are none up to radius 4.
FINE_THRESHOLD = 6
#: Cramer's V above which the class counts as predictable from the acquisition source.
CONFOUND_V = 0.5


# --------------------------------------------------------------------------------------------------
# reading


@dataclass
class _Image:
    """What the audit keeps of one distinct file content (the bytes themselves are dropped)."""

    width: int = 0
    height: int = 0
    layout: str = ""  # grey | grey-rgb | colour
    hash64: int = 0
    hash256: int = 0
    error: str | None = None


@dataclass
class _File:
    path: str
    label: str
    group: str | None
    source: str | None
    sha256: str | None = None
    fmt: str | None = None
    error: str | None = None
    image: _Image | None = field(default=None, repr=False)


def _describe(data: bytes, path: Path) -> _Image:
    try:
        img = decode_image(data, path)
        if img.ndim == 2:
            layout = "grey"
        elif np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]):
            layout = "grey-rgb"
        else:
            layout = "colour"
        grey = to_grey(img)
        return _Image(img.shape[1], img.shape[0], layout, dhash(grey, 8), dhash(grey, 16))
    except ImageReadError as exc:
        return _Image(error=f"{exc.reason} ({exc.fix})")
    except Exception as exc:  # an audit lists a bad file and goes on, whatever the decoder raised
        return _Image(error=f"cannot decode ({type(exc).__name__}: {exc})")


def _inspect_files(samples: Sequence[Any], workers: int) -> tuple[list[_File], dict[str, _Image]]:
    files = [
        _File(str(s.path), str(s.label), getattr(s, "group", None), getattr(s, "source", None))
        for s in samples
    ]
    images: dict[str, _Image] = {}
    lock = threading.Lock()

    def work(f: _File) -> None:
        path = Path(f.path)
        try:
            data = read_bytes(path)
        except ImageReadError as exc:
            f.error = f"{exc.reason} ({exc.fix})"
            return
        except OSError as exc:
            f.error = f"cannot read ({exc.strerror or exc})"
            return
        f.sha256 = hashlib.sha256(data).hexdigest()
        f.fmt = sniff_format(data)
        if f.fmt == "dicom" and f.group in (None, ""):
            header = dicom_header(path)  # the patient's one-way hash (read once per file, cached)
            f.group = header.group if header is not None else None
        with lock:  # decode each distinct content once, however many copies there are
            first = f.sha256 not in images
            if first:
                images[f.sha256] = _Image()
        if first:
            desc = _describe(data, path)
            with lock:
                images[f.sha256] = desc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(progress(pool.map(work, files), "auditing files", total=len(files)))
    for f in files:
        if f.sha256 is not None:
            f.image = images[f.sha256]
            if f.image.error:
                f.error = f.image.error
    return files, images


def _one_per_file(samples: Sequence[Any]) -> list[Any]:
    """The samples with the frames of a cine loop (samples told apart only by ``frame``) kept once:
    the audit is about files, and its ``group_id`` (by path) covers every frame of one."""
    seen: set[tuple] = set()
    out = []
    for s in samples:
        if getattr(s, "frame", None) is not None:
            key = (str(s.path), str(s.label), getattr(s, "group", None), getattr(s, "source", None))
            if key in seen:
                continue
            seen.add(key)
        out.append(s)
    return out


# --------------------------------------------------------------------------------------------------
# sources and confounding


def _infer_sources(files: list[_File]) -> dict[str, str]:
    """Source name per readable path: image geometry, content format and channel layout.

    Geometries shared by at least 1% of the files (and 3) are sources of their own; the rest of one
    format and layout are pooled ("mixed sizes"), so a set of hand-cropped images of every size does
    not become hundreds of one-image sources.
    """
    ok = [f for f in files if f.error is None]
    min_files = max(3, math.ceil(0.01 * len(ok)))
    geometry = Counter((f.fmt, f.image.layout, f.image.width, f.image.height) for f in ok)
    out = {}
    for f in ok:
        key = (f.fmt, f.image.layout, f.image.width, f.image.height)
        size = f"{f.image.width}x{f.image.height}" if geometry[key] >= min_files else "mixed sizes"
        out[f.path] = f"{size} {f.fmt} {f.image.layout}"
    return out


def _confounding(labels: list[str], sources: list[str]) -> dict[str, Any]:
    """Class x source table, Cramer's V and the plain-language findings."""
    from scipy.stats.contingency import association

    classes = sorted(set(labels), key=natural_key)
    names = sorted(set(sources), key=lambda s: (-sources.count(s), s))
    table = np.zeros((len(classes), len(names)), np.int64)
    ci, si = {c: i for i, c in enumerate(classes)}, {s: i for i, s in enumerate(names)}
    for c, s in zip(labels, sources):
        table[ci[c], si[s]] += 1
    v = None
    if len(classes) >= 2 and len(names) >= 2:
        v = float(association(table, method="cramer"))
    # A class absent from a source that holds a fair share of the data is given away by the source;
    # tiny classes and sources are ignored so one stray file does not raise the alarm.
    n = int(table.sum())
    big_src = table.sum(0) >= max(5, 0.02 * n)
    big_cls = table.sum(1) >= 5
    findings = []
    if len(names) >= 2:
        for i, c in enumerate(classes):
            present = [names[j] for j in np.flatnonzero(table[i] > 0) if big_src[j]]
            absent = [names[j] for j in np.flatnonzero(table[i] == 0) if big_src[j]]
            if big_cls[i] and absent:
                findings.append(
                    f"class {c} appears only in source(s) {', '.join(repr(s) for s in present) or 'none'}"
                )
        for j, s in enumerate(names):
            missing = [classes[i] for i in np.flatnonzero(table[:, j] == 0) if big_cls[i]]
            if big_src[j] and missing:
                held = [classes[i] for i in np.flatnonzero(table[:, j] > 0)]
                findings.append(f"source {s!r} holds only {', '.join(held)}")
    confounded = bool(findings) or (v is not None and v > CONFOUND_V)
    return {
        "classes": classes,
        "sources": names,
        "table": table.tolist(),
        "cramers_v": v,
        "findings": findings,
        "confounded": confounded,
    }


# --------------------------------------------------------------------------------------------------
# the audit


def audit_dataset(
    samples: Sequence[Any],
    *,
    near_threshold: int = NEAR_THRESHOLD,
    fine_threshold: int | None = FINE_THRESHOLD,
    workers: int | None = None,
) -> dict[str, Any]:
    """Audit a labelled image set for duplicates, label conflicts, source confounding and bad files.

    Args:
        samples: objects with ``path``, ``label``, ``group`` (patient ID or None) and ``source`` (or None)
            attributes, e.g. :class:`liverscope.data.datasets.Sample`.
        near_threshold: Hamming radius of the 64-bit dHash search for near-duplicates (0 = same hash).
        fine_threshold: Hamming radius of the 256-bit dHash that must confirm each candidate pair;
            ``None`` accepts the 64-bit match alone.
        workers: threads reading and decoding (default: CPU count, at most 8).

    Returns:
        A JSON-able dict: ``summary`` (files, distinct, groups, label_conflicts, sources, confounded,
        unreadable, extension_mismatches, near_duplicate_files, ...), ``warnings`` (plain sentences),
        ``exact_duplicates``, ``near_duplicates``, ``label_conflicts``, ``sources``, ``contingency``,
        ``unreadable``, ``extension_mismatches``, ``files`` (one record per file) and ``group_id``
        (path -> duplicate group; files of one patient ``group`` share it too).
    """
    if not samples:
        raise LiverscopeError("nothing to audit: the data set has no image files")
    if fine_threshold is not None and not 0 <= fine_threshold < 256:
        raise LiverscopeError(f"fine_threshold {fine_threshold} must lie in 0..255 bits (or None)")
    t0 = time.perf_counter()
    workers = workers or min(8, os.cpu_count() or 1)
    files, images = _inspect_files(_one_per_file(samples), workers)
    comps = _image_components(images, near_threshold, fine_threshold)
    gid = _file_groups(files, comps)
    exact, by_sha = _exact_duplicates(files)
    near, conflicts, near_files = _near_duplicates_and_conflicts(files, comps, gid, by_sha)
    src, sources, conf, given = _sources_and_confounding(files)
    unreadable = sorted(
        ({"path": f.path, "reason": f.error} for f in files if f.error), key=lambda e: e["path"]
    )
    mismatches = sorted(
        (
            {"path": f.path, "format": f.fmt, "extension": Path(f.path).suffix}
            for f in files
            if f.fmt is not None and not extension_matches(f.path, f.fmt)
        ),
        key=lambda e: e["path"],
    )
    n, n_groups = len(files), len(set(gid))
    summary = {
        "files": n,
        "distinct": len({f.sha256 for f in files if f.sha256 is not None}),
        "groups": n_groups,
        "duplicate_files": sum(e["count"] - 1 for e in exact),
        "max_copies": max((e["count"] for e in exact), default=1),
        "near_duplicate_files": near_files,
        "near_duplicate_merges": comps.merges,
        "label_conflicts": len(conflicts),
        "sources": len(conf["sources"]),
        "sources_given": given,
        "cramers_v": conf["cramers_v"],
        "confounded": conf["confounded"],
        "unreadable": len(unreadable),
        "extension_mismatches": len(mismatches),
        "near_threshold": near_threshold,
        "fine_threshold": fine_threshold,
        "near_candidates": comps.candidates,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    summary["leakage_risk"] = bool(n_groups < n - len(unreadable) or conflicts or conf["confounded"])
    result = {
        "summary": summary,
        "warnings": [],
        "exact_duplicates": exact,
        "near_duplicates": near,
        "label_conflicts": conflicts,
        "sources": sources,
        "contingency": {k: conf[k] for k in ("classes", "sources", "table", "cramers_v", "findings")},
        "unreadable": unreadable,
        "extension_mismatches": mismatches,
        "files": [_file_record(f, g, src[f.path]) for f, g in zip(files, gid)],
        "group_id": {f.path: g for f, g in zip(files, gid)},
    }
    result["warnings"] = _warnings(result)
    return result


@dataclass
class _Components:
    """Near-duplicate components of the distinct readable contents (by SHA-256)."""

    index: dict[str, int]  # sha256 -> row of ``comp``
    comp: np.ndarray  # component per distinct content
    candidates: int  # pairs within the 64-bit radius, before the 256-bit check
    merges: int  # distinct contents folded into another's component

    def of(self, sha: str) -> int:
        return int(self.comp[self.index[sha]])


def _image_components(images: dict, near_threshold: int, fine_threshold: int | None) -> _Components:
    """Near-duplicates among the distinct readable contents: 64-bit dHash pairs within ``near_threshold``
    bits, confirmed by the 256-bit dHash within ``fine_threshold`` (``None``: not checked)."""
    shas = sorted(sha for sha, im in images.items() if im.error is None)
    h64 = np.array([images[s].hash64 for s in shas], dtype=np.uint64)
    pairs = find_near_pairs(h64, near_threshold)
    n_candidates = len(pairs)
    if fine_threshold is not None and len(pairs):
        fine = [images[s].hash256 for s in shas]
        keep = [hamming(fine[i], fine[j]) <= fine_threshold for i, j in pairs]
        pairs = pairs[np.asarray(keep, bool)]
    comp = connected_groups(len(shas), pairs)
    return _Components(
        {sha: k for k, sha in enumerate(shas)}, comp, n_candidates, len(shas) - len(set(comp.tolist()))
    )


def _file_groups(files: list, comps: _Components) -> list[str]:
    """The split group of every file: files of one image component (copies, near copies; undecodable
    copies of one file by their bytes) or of one patient ``group`` share it. Ids ``g01``, ``g02``, ...
    numbered in order of each group's first path."""
    n = len(files)
    node: dict[tuple, int] = {}  # extra graph nodes: image components and patient groups
    edges = []
    for k, f in enumerate(files):
        keys = []
        if f.error is None:
            keys.append(("image", comps.of(f.sha256)))
        elif f.sha256 is not None:
            keys.append(("bytes", f.sha256))
        if f.group not in (None, ""):
            keys.append(("group", str(f.group)))
        for key in keys:
            edges.append((k, node.setdefault(key, n + len(node))))
    comp = connected_groups(n + len(node), np.array(edges, np.int64).reshape(-1, 2))[:n]
    names: dict[int, str] = {}
    width = len(str(len(set(comp.tolist()))))
    for k in sorted(range(n), key=lambda k: files[k].path):
        names.setdefault(int(comp[k]), f"g{len(names) + 1:0{width}d}")
    return [names[int(c)] for c in comp]


def _exact_duplicates(files: list) -> tuple[list[dict], dict[str, list[int]]]:
    """Byte-identical files (most copies first) and the files of each SHA-256."""
    by_sha: dict[str, list[int]] = defaultdict(list)
    for k, f in enumerate(files):
        if f.sha256 is not None:
            by_sha[f.sha256].append(k)
    exact = [
        {
            "sha256": sha,
            "count": len(ks),
            "labels": sorted({files[k].label for k in ks}),
            "paths": sorted(files[k].path for k in ks),
        }
        for sha, ks in by_sha.items()
        if len(ks) > 1
    ]
    exact.sort(key=lambda e: (-e["count"], e["paths"][0]))
    return exact, by_sha


def _near_duplicates_and_conflicts(
    files: list, comps: _Components, gid: list[str], by_sha: dict[str, list[int]]
) -> tuple[list[dict], list[dict], int]:
    """Near-duplicate groups and label conflicts, on image components (not patient groups), and how
    many files the near-duplicate groups hold."""
    by_comp: dict[int, list[int]] = defaultdict(list)
    for k, f in enumerate(files):
        if f.error is None:
            by_comp[comps.of(f.sha256)].append(k)
    near, conflicts, near_files = [], [], 0
    for ks in by_comp.values():
        distinct = {files[k].sha256 for k in ks}
        labels = sorted({files[k].label for k in ks})
        group = gid[ks[0]]
        if len(distinct) > 1:
            near_files += len(ks)
            near.append(
                {
                    "group_id": group,
                    "distinct": len(distinct),
                    "labels": labels,
                    "paths": sorted(files[k].path for k in ks),
                }
            )
        if len(labels) > 1:
            per_label = defaultdict(list)
            for k in ks:
                per_label[files[k].label].append(files[k].path)
            exact_clash = any(len({files[k].label for k in by_sha[s]}) > 1 for s in distinct)
            conflicts.append(
                {
                    "group_id": group,
                    "kind": "exact" if exact_clash else "near",
                    "labels": {lab: sorted(p) for lab, p in sorted(per_label.items())},
                }
            )
    near.sort(key=lambda e: (-len(e["paths"]), e["paths"][0]))
    conflicts.sort(key=lambda e: e["group_id"])
    return near, conflicts, near_files


def _sources_and_confounding(files: list) -> tuple[dict[str, Any], dict[str, dict], dict, bool]:
    """The source of every file (given, else inferred), the table of sources (readable files only), the
    class-by-source confounding and whether any source was given."""
    inferred = _infer_sources(files)
    given = any(f.source not in (None, "") for f in files)
    src = {f.path: (str(f.source) if f.source not in (None, "") else inferred.get(f.path)) for f in files}
    ok = [f for f in files if f.error is None]
    conf = _confounding([f.label for f in ok], [src[f.path] for f in ok])
    sources: dict[Any, dict] = {}
    for f in ok:
        s = sources.setdefault(
            src[f.path],
            {
                "files": 0,
                "classes": Counter(),
                "formats": Counter(),
                "sizes": Counter(),
                "layouts": Counter(),
            },
        )
        s["files"] += 1
        s["classes"][f.label] += 1
        s["formats"][f.fmt] += 1
        s["sizes"][f"{f.image.width}x{f.image.height}"] += 1
        s["layouts"][f.image.layout] += 1
    table = {
        name: {k: (dict(v.most_common(20)) if isinstance(v, Counter) else v) for k, v in d.items()}
        for name, d in sorted(sources.items(), key=lambda kv: -kv[1]["files"])
    }
    return src, table, conf, given


def _file_record(f, group: str, source: Any) -> dict[str, Any]:
    """One file of ``audit.json["files"]``."""
    ok = f.error is None
    return {
        "path": f.path,
        "label": f.label,
        "group_id": group,
        "source": source,
        "sha256": f.sha256,
        "format": f.fmt,
        "width": f.image.width if ok else None,
        "height": f.image.height if ok else None,
        "layout": f.image.layout if ok else None,
        "dhash": f"{f.image.hash64:016x}" if ok else None,
    }


def _warnings(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    out = []
    if s["duplicate_files"]:
        out.append(
            f"{s['duplicate_files']} of {s['files']} files are byte-identical copies of another file "
            f"({s['distinct']} distinct; one image appears {s['max_copies']} times). A random split puts copies "
            "of one image in training and test: use the grouped split (the default)."
        )
    merges = s["near_duplicate_merges"]
    if merges:
        out.append(
            f"{merges} distinct images are near-duplicates (re-encoded or rescaled copies) of another; "
            f"with them merged there are {s['groups']} independent groups."
        )
    if s["label_conflicts"]:
        first = result["label_conflicts"][0]["labels"]
        example = "; ".join(f"{lab}: {paths[0]}" for lab, paths in first.items())
        out.append(
            f"{s['label_conflicts']} images appear under two or more labels (e.g. {example}). Fix the labels "
            "or remove the copies: the model cannot be right about both."
        )
    if s["confounded"]:
        v = s["cramers_v"]
        vtxt = f" (Cramer's V = {v:.2f})" if v is not None else ""
        out.append(
            f"The class is predictable from the acquisition source{vtxt}: "
            + "; ".join(
                result["contingency"]["findings"] or ["the class mix differs strongly between sources"]
            )
            + ". A model can learn the scanner (image size, format, layout) instead of the disease: "
            "report results within each source and stratify splits by source."
        )
    if s["unreadable"]:
        ex = result["unreadable"][0]
        out.append(
            f"{s['unreadable']} files cannot be read and are skipped (e.g. {ex['path']}: {ex['reason']})."
        )
    if s["extension_mismatches"]:
        ex = result["extension_mismatches"][0]
        out.append(
            f"{s['extension_mismatches']} files have an extension that does not match their content "
            f"(e.g. {ex['path']} is {ex['format'].upper()} data). liverscope reads by content; other tools may not."
        )
    return out


def group_ids(result: dict[str, Any]) -> dict[str, str]:
    """Path -> duplicate-group id from an audit result (what the grouped splits keep on one side)."""
    try:
        return dict(result["group_id"])
    except (KeyError, TypeError):
        raise LiverscopeError(
            "not an audit result: it has no 'group_id' mapping (run audit_dataset)"
        ) from None


def duplicate_group_ids(samples: Sequence[Any], *, annotate: bool = True, **kwargs) -> list[str]:
    """Group id per sample (exact and near-duplicates and patient groups merged), in sample order.

    Args:
        samples: as for :func:`audit_dataset`.
        annotate: fill in missing ``sha256`` and ``source`` attributes of the samples from the audit, so
            the run's ``split.csv`` records them and metrics can be given per source.
        kwargs: passed to :func:`audit_dataset`.
    """
    result = audit_dataset(samples, **kwargs)
    ids = result["group_id"]
    if annotate:
        records = {r["path"]: r for r in result["files"]}
        for s in samples:
            r = records[str(s.path)]
            if hasattr(s, "sha256") and not getattr(s, "sha256", None):
                s.sha256 = r["sha256"]
            if hasattr(s, "source") and not getattr(s, "source", None):
                s.source = r["source"]
    return [ids[str(s.path)] for s in samples]


def audit_path(data: str | Path, **kwargs) -> dict[str, Any]:
    """Audit a class-per-folder tree or CSV manifest (see :func:`liverscope.data.datasets.load_samples`)."""
    samples, _ = load_samples(data)
    return audit_dataset(samples, **kwargs)


__all__ = ["audit_dataset", "audit_path", "duplicate_group_ids", "group_ids"]

"""Audit: planted exact and near duplicates, label conflicts, source confounding and bad files are found;
the near-duplicate search matches brute force and scales near-linearly; the real fibrosis set gives the
figures in its README."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from liverscope.data.audit import audit_dataset, duplicate_group_ids, group_ids
from liverscope.data.audit_report import format_summary, write_audit
from liverscope.data.hashing import dhash, find_near_pairs, hamming
from liverscope.errors import LiverscopeError


@dataclass
class Sample:  # same fields as liverscope.data.datasets.Sample
    path: Path
    label: str
    group: str | None = None
    source: str | None = None
    sha256: str | None = None


def texture(seed: int, w: int = 160, h: int = 128) -> np.ndarray:
    """A smooth random grey image with speckle: distinct seeds give unrelated dHashes."""
    rng = np.random.default_rng(seed)
    low = cv2.resize(rng.random((12, 15)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(low * 200 + rng.normal(0, 4, (h, w)) + 20, 0, 255).astype(np.uint8)


def write(path: Path, img: np.ndarray, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = params.pop("ext", path.suffix)
    flags = [cv2.IMWRITE_JPEG_QUALITY, params["quality"]] if "quality" in params else []
    ok, buf = cv2.imencode(ext, img, flags)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def by_path(result) -> dict:
    return group_ids(result)


# ---------------------------------------------------------------- dHash and the near-duplicate search


def test_dhash_stable_under_reencoding_and_far_between_images():
    a = texture(1)
    ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 80])
    jpeg = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(a, (163, 130), interpolation=cv2.INTER_LINEAR)
    for copy in (jpeg, resized, np.dstack([a, a, a])):
        assert hamming(dhash(a), dhash(copy)) <= 2
        assert hamming(dhash(a, 16), dhash(copy, 16)) <= 6
    others = [hamming(dhash(a), dhash(texture(s))) for s in range(2, 12)]
    assert min(others) > 10
    assert 0 <= dhash(a) < 2**64 and dhash(a, 16) < 2**256


@pytest.mark.parametrize("threshold", [0, 1, 2, 4])
def test_near_pairs_match_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, 300
    ).astype(np.uint64)
    # plant neighbours at every distance 0..threshold+1 of some hashes
    planted = []
    for i in range(60):
        flips = rng.choice(64, size=i % (threshold + 2), replace=False)
        mask = np.uint64(sum(1 << int(b) for b in flips))
        planted.append(base[i] ^ mask)
    h = np.concatenate([base, np.array(planted, np.uint64)])
    got = {tuple(p) for p in find_near_pairs(h, threshold).tolist()}
    n = len(h)
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    want = {(i, j) for i in range(n) for j in range(i + 1, n) if d[i, j] <= threshold}
    assert got == want
    assert len(want) >= 60 * (threshold + 1) // (threshold + 2)  # the planted pairs within the radius


def test_near_pairs_rejects_bad_threshold():
    with pytest.raises(LiverscopeError):
        find_near_pairs(np.zeros(3, np.uint64), 64)


def test_near_search_scales_near_linearly():
    """Timing n and 8n random hashes: all-pairs would take 64x as long; multi-index hashing ~8-10x."""
    rng = np.random.default_rng(0)

    def best_time(n: int) -> float:
        h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            find_near_pairs(h, 2)
            times.append(time.perf_counter() - t0)
        return min(times)

    small, large = best_time(40_000), best_time(320_000)
    assert large / small < 24, f"8x the hashes took {large / small:.1f}x as long (quadratic would be 64x)"


# ---------------------------------------------------------------- the audit on a planted synthetic set


@pytest.fixture()
def planted(tmp_path):
    """Two classes, one source; planted: an exact copy, a JPEG re-encoding, a 2% rescale, a label conflict,
    an unreadable file, a truncated file and PNG data named .jpg."""
    root = tmp_path / "data"
    samples = []

    def add(path, label, img=None, **kw):
        if img is not None:
            write(path, img, **kw)
        samples.append(Sample(path, label))
        return path

    for i in range(12):
        add(root / "a" / f"a{i}.png", "a", texture(100 + i))
        add(root / "b" / f"b{i}.png", "b", texture(200 + i))
    exact = add(root / "a" / "a0_copy.png", "a")
    shutil.copy(root / "a" / "a0.png", exact)
    add(root / "a" / "a1_q80.jpg", "a", texture(101), quality=80)
    add(
        root / "a" / "a2_rescaled.png",
        "a",
        cv2.resize(texture(102), (163, 130), interpolation=cv2.INTER_AREA),
    )
    # the same picture under the other label: an exact copy and a re-encoded one
    conflict = add(root / "b" / "a3_in_b.png", "b")
    shutil.copy(root / "a" / "a3.png", conflict)
    add(root / "b" / "a4_in_b.jpg", "b", texture(104), quality=85)
    # bad files
    garbage = root / "b" / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    samples.append(Sample(garbage, "b"))
    good = write(root / "tmp.png", texture(300))
    truncated = root / "b" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    good.unlink()
    samples.append(Sample(truncated, "b"))
    mislabelled_ext = add(root / "a" / "png_named.jpg", "a", texture(400), ext=".png")
    return samples, {
        "exact": (root / "a" / "a0.png", exact),
        "jpeg": (root / "a" / "a1.png", root / "a" / "a1_q80.jpg"),
        "rescaled": (root / "a" / "a2.png", root / "a" / "a2_rescaled.png"),
        "conflict_exact": (root / "a" / "a3.png", conflict),
        "conflict_near": (root / "a" / "a4.png", root / "b" / "a4_in_b.jpg"),
        "garbage": garbage,
        "truncated": truncated,
        "ext": mislabelled_ext,
    }


def test_audit_finds_planted_duplicates_and_conflicts(planted):
    samples, p = planted
    r = audit_dataset(samples, workers=2)
    s = r["summary"]
    gid = by_path(r)
    assert s["files"] == len(samples) == 32
    # 32 files, one byte-identical copy of a0 and one of a3 -> 30 distinct contents
    assert s["distinct"] == 30
    for key in ("exact", "jpeg", "rescaled", "conflict_exact", "conflict_near"):
        a, b = p[key]
        assert gid[str(a)] == gid[str(b)], key
    # the 24 originals and the bad/extra files stay apart: 32 files - 5 planted copies = 27 groups
    originals = [str(x.path) for x in samples if x.path.stem[1:].isdigit()]
    assert len({gid[o] for o in originals}) == len(originals) == 24
    assert s["groups"] == 27
    assert s["near_duplicate_merges"] == 3  # JPEG, rescale and the re-encoded conflict
    assert s["near_duplicate_files"] == 6
    assert s["label_conflicts"] == 2
    kinds = sorted(c["kind"] for c in r["label_conflicts"])
    assert kinds == ["exact", "near"]
    for c in r["label_conflicts"]:
        assert set(c["labels"]) == {"a", "b"}
    exact_sets = {tuple(e["paths"]) for e in r["exact_duplicates"]}
    assert tuple(sorted(map(str, p["exact"]))) in exact_sets
    assert any("two or more labels" in w for w in r["warnings"])


def test_audit_reports_unreadable_and_mismatched_files(planted):
    samples, p = planted
    r = audit_dataset(samples, workers=2)
    bad = {e["path"]: e["reason"] for e in r["unreadable"]}
    assert set(bad) == {str(p["garbage"]), str(p["truncated"])}
    assert "not a PNG" in bad[str(p["garbage"])]
    assert r["summary"]["unreadable"] == 2
    mism = {e["path"]: e["format"] for e in r["extension_mismatches"]}
    assert mism == {str(p["ext"]): "png"}
    assert r["summary"]["extension_mismatches"] == 1
    text = format_summary(r)
    assert "2 unreadable" in text and str(p["garbage"]) in text and "WARNING" in text


def test_audit_finds_a_planted_source_confound(tmp_path):
    """Class a only from a 160x128 PNG scanner, class c only from a 200x150 JPEG one, b from both."""
    samples = []
    for i in range(10):
        samples.append(Sample(write(tmp_path / "a" / f"{i}.png", texture(i)), "a"))
        samples.append(Sample(write(tmp_path / "b" / f"x{i}.png", texture(100 + i)), "b"))
        samples.append(
            Sample(write(tmp_path / "b" / f"y{i}.jpg", texture(200 + i, 200, 150), quality=90), "b")
        )
        samples.append(
            Sample(write(tmp_path / "c" / f"{i}.jpg", texture(300 + i, 200, 150), quality=90), "c")
        )
    r = audit_dataset(samples, workers=2)
    s = r["summary"]
    assert s["sources"] == 2 and s["confounded"] is True and s["cramers_v"] > 0.5
    assert sorted(r["sources"]) == ["160x128 png grey", "200x150 jpeg grey"]
    findings = " ".join(r["contingency"]["findings"])
    assert "class a appears only in source(s) '160x128 png grey'" in findings
    assert "class c appears only" in findings
    assert any("predictable from the acquisition source" in w for w in r["warnings"])
    table = np.array(r["contingency"]["table"])
    assert table.sum() == 40 and table.shape == (3, 2)


def test_balanced_sources_are_not_confounded(tmp_path):
    samples = []
    for i in range(8):
        for label, off in (("a", 0), ("b", 500)):
            samples.append(Sample(write(tmp_path / label / f"p{i}.png", texture(off + i)), label))
            samples.append(
                Sample(
                    write(tmp_path / label / f"j{i}.jpg", texture(off + 50 + i, 200, 150), quality=90), label
                )
            )
    r = audit_dataset(samples, workers=2)
    assert r["summary"]["sources"] == 2
    assert r["summary"]["confounded"] is False
    assert r["summary"]["cramers_v"] < 0.1
    assert r["summary"]["groups"] == r["summary"]["files"] == 32
    assert r["summary"]["leakage_risk"] is False


def test_given_sources_and_patient_groups_are_used(tmp_path):
    samples = [
        Sample(
            write(tmp_path / "a" / f"{i}.png", texture(i)),
            "a",
            group=f"patient{i // 2}",
            source=f"site{i % 2}",
        )
        for i in range(6)
    ] + [Sample(write(tmp_path / "b" / f"{i}.png", texture(50 + i)), "b", source="site1") for i in range(6)]
    r = audit_dataset(samples, workers=2)
    assert r["summary"]["sources_given"] is True
    assert set(r["sources"]) == {"site0", "site1"}
    gid = by_path(r)
    assert gid[str(samples[0].path)] == gid[str(samples[1].path)] != gid[str(samples[2].path)]
    assert r["summary"]["groups"] == 3 + 6
    assert r["summary"]["label_conflicts"] == 0  # patient groups are not image copies


def test_duplicate_group_ids_annotates_samples(planted):
    samples, p = planted
    ids = duplicate_group_ids(samples, workers=2)
    assert len(ids) == len(samples)
    k = {str(s.path): i for i, s in enumerate(samples)}
    a, b = p["jpeg"]
    assert ids[k[str(a)]] == ids[k[str(b)]]
    assert all(s.sha256 for s in samples)
    assert samples[0].source == "160x128 png grey"
    assert ids[k[str(p["garbage"])]] not in {ids[i] for i in range(len(ids)) if i != k[str(p["garbage"])]}


def test_write_audit_json_and_html(planted, tmp_path):
    samples, _ = planted
    r = audit_dataset(samples, workers=2)
    json_path, html_path = write_audit(r, tmp_path / "out")
    data = json.loads(json_path.read_text())
    for key in (
        "files",
        "distinct",
        "groups",
        "label_conflicts",
        "sources",
        "confounded",
        "unreadable",
        "extension_mismatches",
        "near_duplicate_files",
    ):
        assert key in data["summary"]
    assert data["group_id"] == r["group_id"]
    html = html_path.read_text()
    assert "<h1>Data audit</h1>" in html and "garbage.png" in html
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_empty_and_bad_arguments():
    with pytest.raises(LiverscopeError):
        audit_dataset([])
    with pytest.raises(LiverscopeError):
        group_ids({"summary": {}})


# ---------------------------------------------------------------- the real data


@pytest.mark.real
def test_real_fibrosis_audit_matches_readme(real_fibrosis):
    from liverscope.data.datasets import scan_folder
    from liverscope.data.splits import check_leakage, holdout_split, random_split

    samples, classes = scan_folder(real_fibrosis)
    r = audit_dataset(samples)
    s = r["summary"]
    assert s["files"] == 4964
    assert s["distinct"] == 1216
    assert abs(s["groups"] - 1110) <= 15
    assert s["label_conflicts"] == 0
    assert s["sources"] == 2
    assert s["confounded"] is True
    assert s["max_copies"] == 18
    assert s["extension_mismatches"] > 100 and s["unreadable"] == 0
    assert s["seconds"] < 60
    # F0 only in the 640x480 JPEG source, F2 and F3 only in the 449x464 PNG one
    cont = r["contingency"]
    table = dict(zip(cont["classes"], cont["table"]))
    src = cont["sources"]
    jpeg, png = src.index("640x480 jpeg grey"), src.index("449x464 png grey")
    assert table["F0"][png] == 0 and table["F0"][jpeg] == 1606
    assert table["F2"][jpeg] == 0 and table["F3"][jpeg] == 0
    # grouped split is clean; the legacy random split leaks
    labels = [x.label for x in samples]
    groups = [r["group_id"][str(x.path)] for x in samples]
    check_leakage(holdout_split(labels, groups, seed=0), groups)
    with pytest.raises(LiverscopeError, match="straddle"):
        check_leakage(random_split(labels, seed=0), groups, paths=[x.path for x in samples])


def test_listing_and_auditing_data_never_import_torch():
    # `liverscope audit` on 100k images: torch would add ~0.75 GB and seconds of start-up for nothing
    import subprocess
    import sys

    code = "import sys, liverscope.data.audit, liverscope.data.audit_report, liverscope.data.datasets; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"

"""DICOM: patients become split groups (by a one-way hash, never the raw identifier), cine loops become
one sample per selected frame, and grey values go through pydicom's rescale and VOI LUT with the same
answer as the formulas they replace."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import quick_config
from liverscope.config import load_config, parse_frames
from liverscope.data import io as lio
from liverscope.data.audit import audit_dataset, duplicate_group_ids
from liverscope.data.audit_report import write_audit
from liverscope.data.datasets import ImageDataset, Sample, load_samples, make_phantom, warm_cache
from liverscope.data.preprocess import PreprocessCache, Preprocessing, preprocess_array
from liverscope.data.splits import holdout_split, kfold_split
from liverscope.errors import ImageReadError, UsageError
from liverscope.utils import atomic_write_png
from synthetic_study import US_MULTIFRAME_STORAGE, us_dataset  # tests/ is on sys.path (no package)

N_PATIENTS = 16  # 8 per class
PER_PATIENT = 3
CINE_FRAMES = 6
STUDY_UID = "1.2.826.0.1.3680043.8.498.90817263544"  # a study with no PatientID: two files share it
SECRETS = [f"MRN-7731-{p:02d}" for p in range(N_PATIENTS)] + ["MRN-7731-CINE", STUDY_UID, "Doe^Jane"]


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str | None = None,
    study_uid: str | None = None,
    name: str | None = None,
    bits: int = 8,
    stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    **attrs,
) -> Path:
    """An uncompressed ultrasound DICOM: grey ``HxW``, a grey cine loop ``FxHxW``, or colour ``HxWx3``
    (``photometric`` RGB / YBR_FULL); extra header attributes (rescale, window, ...) as keywords."""
    ds = us_dataset(US_MULTIFRAME_STORAGE)
    if patient_id is not None:
        ds.PatientID = patient_id
    if name is not None:
        ds.PatientName = name
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    colour = photometric in ("RGB", "YBR_FULL")
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if pixels.ndim == (4 if colour else 3):
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = stored or bits
    ds.HighBit = (stored or bits) - 1
    ds.PixelRepresentation = int(signed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    dtype = np.uint8 if bits == 8 else (np.int16 if signed else np.uint16)
    ds.PixelData = pixels.astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(seed: int, stage: int) -> np.ndarray:
    return make_phantom(stage, 2, size=64, seed=seed)[0]


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """F0/F1 tree of DICOMs: 16 patients x 3 images, a 6-frame cine loop, two files of one study
    without PatientID, one file naming no patient. Returns ``(root, {path: who})``."""
    root = tmp_path_factory.mktemp("dicoms")
    who: dict[str, str] = {}
    for p in range(N_PATIENTS):
        label = f"F{p % 2}"
        (root / label).mkdir(exist_ok=True)
        for k in range(PER_PATIENT):
            path = write_dicom(
                root / label / f"p{p:02d}_{k}.dcm",
                _image(100 * p + k, p % 2),
                patient_id=SECRETS[p],
                name="Doe^Jane",
            )
            who[str(path)] = f"patient{p}"
    cine = np.stack([_image(5000 + f, 1) for f in range(CINE_FRAMES)])
    who[str(write_dicom(root / "F1" / "loop.dcm", cine, patient_id="MRN-7731-CINE"))] = "cine"
    for k in range(2):
        who[str(write_dicom(root / "F0" / f"study_{k}.dcm", _image(7000 + k, 0), study_uid=STUDY_UID))] = (
            "study"
        )
    who[str(write_dicom(root / "F0" / "anonymous.dcm", _image(8000, 0)))] = "nobody"
    return root, who


# --------------------------------------------------------------------------------------------------
# patient groups


def test_patient_group_is_a_one_way_hash_of_patient_then_study():
    from pydicom.dataset import Dataset

    a, b, study, neither = Dataset(), Dataset(), Dataset(), Dataset()
    a.PatientID, a.StudyInstanceUID = "MRN-1", "1.2.3"
    b.PatientID = "MRN-2"
    study.StudyInstanceUID = "1.2.3"
    neither.PatientID = "   "  # blank counts as missing
    ga = lio.patient_group(a)
    assert ga.startswith("pt-") and len(ga) == 19 and "MRN" not in ga
    assert ga == lio.patient_group(a) and ga != lio.patient_group(b)
    assert lio.patient_group(study).startswith("st-") and lio.patient_group(study) != ga
    assert lio.patient_group(neither) is None


def test_header_is_read_once_and_without_pixels(tmp_path, monkeypatch):
    import pydicom

    path = write_dicom(tmp_path / "a.dcm", _image(1, 0), patient_id="MRN-1")
    calls = []
    real = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(kwargs.get("stop_before_pixels"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    first = lio.dicom_header(path)
    assert lio.dicom_header(path) == first and first.frames == 1 and first.group.startswith("pt-")
    assert calls == [True]  # one header read, pixel data skipped
    png = tmp_path / "b.png"
    atomic_write_png(png, _image(2, 0))
    assert lio.dicom_header(png) is None and lio.dicom_header(tmp_path / "missing.dcm") is None


def test_listing_gives_each_patient_one_group(dicom_set):
    root, who = dicom_set
    samples, classes = load_samples(root)
    assert classes == ["F0", "F1"] and len(samples) == len(who)
    groups_of = defaultdict(set)
    for s in samples:
        groups_of[who[str(s.path)]].add(s.group)
    for person, groups in groups_of.items():
        if person == "nobody":
            assert groups == {None}  # no identifier: the file is its own group, as before
        else:
            assert len(groups) == 1, person
    assert next(iter(groups_of["study"])).startswith("st-")
    assert len({next(iter(g)) for p, g in groups_of.items() if p.startswith("patient")}) == N_PATIENTS


def test_grouped_split_keeps_patients_together(dicom_set):
    root, who = dicom_set
    samples, _ = load_samples(root)
    groups = duplicate_group_ids(samples, annotate=False)
    labels = [s.label for s in samples]
    person = [who[str(s.path)] for s in samples]

    def straddlers(assignment) -> list[str]:
        sides = defaultdict(set)
        for p, a in zip(person, assignment):
            sides[p].add(str(a))
        return [p for p, s in sides.items() if len(s) > 1 and p != "nobody"]

    ungrouped = 0
    for seed in range(5):
        assert straddlers(holdout_split(labels, groups, test_frac=0.2, val_frac=0.2, seed=seed)) == []
        folds = np.full(len(samples), -1)
        for i, (_, val) in enumerate(kfold_split(labels, groups, k=4, seed=seed)):
            folds[val] = i
        assert straddlers(folds) == []
        ungrouped += len(straddlers(holdout_split(labels, None, test_frac=0.2, val_frac=0.2, seed=seed)))
    assert ungrouped > 0  # without the patient groups, patients do straddle: the check above can fail


def test_audit_unites_patients_with_duplicates_and_names_no_one(dicom_set, tmp_path):
    root, who = dicom_set
    samples, _ = load_samples(root, frames="all")
    # a PNG export of patient 3's first image, listed without any patient: a copy of that patient's image
    copy = tmp_path / "export.png"
    atomic_write_png(copy, lio.read_image(root / "F1" / "p03_0.dcm"))
    samples.append(Sample(copy, "F1"))
    # a sample built by hand (no group) still gets its patient's group in the audit
    samples.append(Sample(root / "F1" / "p05_1.dcm", "F1"))
    result = audit_dataset(samples)
    assert result["summary"]["files"] == len(who) + 2  # the cine loop's 6 frames are one file
    gid = result["group_id"]
    patient3 = {gid[p] for p, w in who.items() if w == "patient3"}
    assert len(patient3) == 1 and gid[str(copy)] in patient3  # duplicate and patient constraints both hold
    assert len({gid[p] for p, w in who.items() if w == "patient5"}) == 1
    write_audit(result, tmp_path)
    for f in (tmp_path / "audit.json", tmp_path / "audit.html"):
        data = f.read_bytes()
        assert not [s for s in SECRETS if s.encode() in data], f
    assert not [s for s in SECRETS if s in json.dumps(result)]


# --------------------------------------------------------------------------------------------------
# cine loops


@pytest.mark.parametrize(
    "frames,expect",
    [("all", list(range(6))), ("every:2", [0, 2, 4]), ("every:4", [0, 4]), ("middle", [None])],
)
def test_cine_loop_becomes_one_sample_per_selected_frame_in_one_group(dicom_set, frames, expect):
    root, who = dicom_set
    samples, _ = load_samples(root, frames=frames)
    loop = [s for s in samples if s.path.name == "loop.dcm"]
    assert [s.frame for s in loop] == expect
    assert len({s.group for s in loop}) == 1 and loop[0].group.startswith("pt-")
    assert all(s.frame is None for s in samples if s.path.name != "loop.dcm")  # still images: unchanged
    assert len(samples) == len(who) - 1 + len(expect)


def test_cine_without_patient_keeps_its_frames_together(tmp_path):
    (tmp_path / "a").mkdir()
    write_dicom(tmp_path / "a" / "loop.dcm", np.stack([_image(f, 0) for f in range(4)]))
    samples, _ = load_samples(tmp_path, frames="all")
    assert len(samples) == 4 and len({s.group for s in samples}) == 1 and samples[0].group.startswith("file-")


@pytest.mark.parametrize("bad", ["some", "every:0", "every:", "every:two", "every:-1", 3, None, ""])
def test_bad_frames_setting_is_a_clear_usage_error(bad, tmp_path):
    with pytest.raises(UsageError, match=r"middle.*all.*every:N"):
        parse_frames(bad)
    with pytest.raises(UsageError, match="data.frames"):
        load_config(None, {"data.frames": bad} if bad is not None else {"data": {"frames": None}})
    with pytest.raises(UsageError, match="every:N"):
        load_samples(tmp_path / "not-even-there", frames=bad)  # before the data is looked at
    with pytest.raises(UsageError, match="every:N"):
        lio.frame_indices(6, bad)


def test_frames_setting_and_flag():
    assert load_config(None, {}).data.frames == "middle"
    assert load_config("cpu-quick", {"data.frames": "every:3"}).data.frames == "every:3"
    from liverscope.ui.cli import app

    res = CliRunner().invoke(app, ["train", "nowhere", "--frames", "every:zero"])
    assert res.exit_code == 2 and "every:N" in res.output


def test_read_frames_gives_the_selected_frames(tmp_path):
    frames = np.stack([_image(40 + f, f % 2) for f in range(CINE_FRAMES)])
    path = write_dicom(tmp_path / "loop.dcm", frames)
    assert (
        all(np.array_equal(a, b) for a, b in zip(lio.read_frames(path, "all"), frames))
        and len(lio.read_frames(path, "all")) == 6
    )
    assert [a.tobytes() for a in lio.read_frames(path, "every:2")] == [frames[i].tobytes() for i in (0, 2, 4)]
    (middle,) = lio.read_frames(path)
    assert np.array_equal(middle, frames[3]) and np.array_equal(middle, lio.read_image(path))
    still = tmp_path / "still.png"
    atomic_write_png(still, frames[0])
    assert len(lio.read_frames(still, "all")) == 1 and np.array_equal(
        lio.read_frames(still, "all")[0], frames[0]
    )
    assert len(lio.read_frames(write_dicom(tmp_path / "one.dcm", frames[1]), "all")) == 1
    with pytest.raises(UsageError):
        lio.read_frames(path, "every:0")
    with pytest.raises(ImageReadError, match="frame 6"):
        lio.read_image(path, frame=6)


def test_cache_keys_and_dataset_items_are_per_frame(tmp_path):
    frames = np.stack([_image(60 + f, 0) for f in range(CINE_FRAMES)])
    (tmp_path / "F0").mkdir()
    path = write_dicom(tmp_path / "F0" / "loop.dcm", frames)
    samples, classes = load_samples(tmp_path, frames="all")
    pp = Preprocessing(size=32, denoise=False)
    cache = PreprocessCache(pp, tmp_path / "cache")
    good, skipped = warm_cache(samples, cache, workers=1)
    assert len(good) == 6 and not skipped and cache.misses == 6
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6  # one entry per frame
    ds = ImageDataset(samples, classes, PreprocessCache(pp, tmp_path / "cache"), transform=lambda a: a)
    for i in range(6):
        assert np.array_equal(ds[i][0], preprocess_array(frames[i], pp))
    assert ds.cache.hits == 6 and ds.cache.misses == 0
    assert lio.read_frames(path, "all")[5].shape == (64, 64)


@pytest.mark.slow
def test_training_on_dicom_cine_writes_no_identifier(dicom_set, tmp_path):
    """End to end: ``fit`` with every frame of the loop as a sample; the patients stay on one side of
    the split and no file of the run (nor the cache) holds a PatientID, StudyInstanceUID or name."""
    from liverscope.training.run import fit

    root, who = dicom_set
    cfg = quick_config(
        root,
        tmp_path,
        "dicom-run",
        **{"data.frames": "all", "data.image_size": 32, "train.epochs": 1, "data.denoise": False},
    )
    run = fit(cfg)
    with open(run / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    loop = [r for r in rows if r["path"].endswith("loop.dcm")]
    assert len(loop) == CINE_FRAMES and len({r["split"] for r in loop}) == 1
    sides = defaultdict(set)
    for r in rows:
        sides[who[r["path"]]].add(r["split"])
    assert all(len(s) == 1 for p, s in sides.items() if p != "nobody")
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(written) > 10 and (run / "audit.json") in written and (run / "model.json") in written
    leaks = [(f.name, s) for f in written for s in SECRETS if s.encode() in f.read_bytes()]
    assert leaks == []


# --------------------------------------------------------------------------------------------------
# rescale and VOI LUT: pydicom's functions give the answer of the formulas they replace


def _old_rescale_decode(path: Path, frame: int | None = None) -> np.ndarray:
    """The hand-written code liverscope used before ``pydicom.pixels.apply_rescale`` (kept as the
    reference): stored values * RescaleSlope + RescaleIntercept, min-max to uint8, MONOCHROME1 inverted."""
    import pydicom

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[pixels.shape[0] // 2 if frame is None else frame]
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        pixels = pixels * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (
            np.zeros(arr.shape, np.uint8)
            if hi <= lo
            else np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        )
    return 255 - arr if ds.PhotometricInterpretation == "MONOCHROME1" else arr


def _window_reference(x: np.ndarray, center: float, width: float, y_min: float, y_max: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (the LINEAR window) written out, then y_min..y_max onto 0..255."""
    x = x.astype(np.float64)
    c, w = center - 0.5, width - 1
    y = np.where(
        x <= c - w / 2, y_min, np.where(x > c + w / 2, y_max, ((x - c) / w + 0.5) * (y_max - y_min) + y_min)
    )
    return np.clip(np.rint((y - y_min) * (255.0 / (y_max - y_min))), 0, 255).astype(np.uint8)


RAMP = (np.arange(48 * 40).reshape(48, 40) * 37 % 4001).astype(np.int64)  # 0..4000, every value different


@pytest.mark.parametrize(
    "case,pixels,kwargs",
    [
        ("8-bit, no rescale", (RAMP % 256), {}),
        ("16-bit, no rescale", RAMP * 16, {"bits": 16}),
        ("16-bit rescaled", RAMP * 16, {"bits": 16, "RescaleSlope": 0.5, "RescaleIntercept": -100}),
        ("12-bit rescaled", RAMP, {"bits": 16, "stored": 12, "RescaleSlope": 2.5, "RescaleIntercept": 7}),
        (
            "signed rescaled",
            RAMP - 2000,
            {"bits": 16, "signed": True, "RescaleSlope": 1, "RescaleIntercept": -1024},
        ),
        (
            "MONOCHROME1 rescaled",
            RAMP,
            {"bits": 16, "photometric": "MONOCHROME1", "RescaleSlope": 3, "RescaleIntercept": 10},
        ),
        (
            "cine rescaled",
            np.stack([RAMP + 9 * f for f in range(5)]),
            {"bits": 16, "RescaleSlope": 0.25, "RescaleIntercept": 1},
        ),
    ],
)
def test_rescale_matches_the_old_formula(tmp_path, case, pixels, kwargs):
    path = write_dicom(tmp_path / "r.dcm", pixels, **kwargs)
    new, old = lio.read_image(path), _old_rescale_decode(path)
    assert new.dtype == np.uint8 and new.shape == (48, 40)
    assert np.array_equal(new, old), f"{case}: {int(np.abs(new.astype(int) - old).max())} grey levels apart"
    if pixels.ndim == 3:
        assert np.array_equal(lio.read_image(path, frame=1), _old_rescale_decode(path, frame=1))


@pytest.mark.parametrize(
    "kwargs,y_range,extremes",
    [
        (
            {"WindowCenter": 1800, "WindowWidth": 1200},
            (0, 4095),
            (0, 255),
        ),  # the ramp is clipped at both ends
        ({"WindowCenter": 2048, "WindowWidth": 4096}, (0, 4095), (0, 249)),  # 4000 of 4095: not stretched
        (
            {"WindowCenter": 40, "WindowWidth": 400, "RescaleSlope": 1, "RescaleIntercept": -1024},
            (-1024, 3071),
            (0, 255),
        ),
    ],
)
def test_window_matches_the_standard_formula(tmp_path, kwargs, y_range, extremes):
    path = write_dicom(tmp_path / "w.dcm", RAMP, bits=16, stored=12, **kwargs)
    slope, intercept = kwargs.get("RescaleSlope", 1), kwargs.get("RescaleIntercept", 0)
    ref = _window_reference(RAMP * slope + intercept, kwargs["WindowCenter"], kwargs["WindowWidth"], *y_range)
    new = lio.read_image(path)
    assert np.array_equal(new, ref), f"{int(np.abs(new.astype(int) - ref).max())} grey levels apart"
    assert (new.min(), new.max()) == extremes  # the window decides the grey levels, not the observed range
    # without the window it is the old min-max picture again
    plain = lio.read_image(write_dicom(tmp_path / "p.dcm", RAMP, bits=16, stored=12))
    assert np.array_equal(plain, _old_rescale_decode(tmp_path / "p.dcm"))


def test_voi_lut_sequence_and_bad_window(tmp_path):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new("LUTDescriptor", "US", [256, 0, 8])
    item.add_new("LUTData", "US", list(range(255, -1, -1)))  # an inverting 8-bit VOI LUT
    grey = (RAMP % 256).astype(np.uint8)
    path = write_dicom(tmp_path / "lut.dcm", grey, VOILUTSequence=[item])
    assert np.array_equal(lio.read_image(path), 255 - grey)
    bad = write_dicom(tmp_path / "bad.dcm", RAMP, bits=16, WindowCenter=100, WindowWidth=0)
    with pytest.raises(ImageReadError, match="window") as err:
        lio.read_image(bad)
    assert str(bad) in str(err.value)


def test_ybr_colour_is_converted_once(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.dstack([RAMP % 256, (RAMP // 3) % 256, 255 - RAMP % 256]).astype(np.uint8)
    path = write_dicom(
        tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), photometric="YBR_FULL"
    )
    out = lio.read_image(path)
    assert out.shape == rgb.shape and int(np.abs(out.astype(int) - rgb).max()) <= 2  # YBR rounding only
    assert np.array_equal(lio.read_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")), rgb)


def test_predict_averages_the_frames_of_a_cine_loop(trained_run, tmp_path):
    from typer.testing import CliRunner

    from liverscope.inference.predict import Predictor
    from liverscope.ui.cli import app

    frames = np.stack([_image(60 + f, f % 5) for f in range(CINE_FRAMES)])
    loop = write_dicom(tmp_path / "loop.dcm", frames, patient_id="PAT-LOOP")
    still = tmp_path / "still.png"
    atomic_write_png(still, frames[0])
    p = Predictor.from_run(trained_run, backend="torch", precision="fp32")
    per_frame = [p.predict(f) for f in frames]
    (res, res_still) = list(p.predict_paths([loop, still], frames="all"))
    assert res.frames == 6 and res_still.frames == 1
    expect = {c: float(np.mean([r.probs[c] for r in per_frame])) for c in p.labels}
    assert all(abs(res.probs[c] - expect[c]) < 1e-5 for c in p.labels)
    (every,) = list(p.predict_paths([loop], frames="every:3"))
    assert (
        every.frames == 2
        and abs(every.probs[p.labels[0]] - np.mean([per_frame[i].probs[p.labels[0]] for i in (0, 3)])) < 1e-5
    )
    (middle,) = list(p.predict_paths([loop]))
    assert middle.frames == 1 and abs(middle.probs[p.labels[0]] - per_frame[3].probs[p.labels[0]]) < 1e-5
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(
        app,
        ["predict", str(trained_run), str(loop), "--frames", "all", "--backend", "torch", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert (
        "frames" in out.read_text().splitlines()[0] and out.read_text().splitlines()[1].split(",")[-2] == "6"
    )
    res = CliRunner().invoke(
        app, ["predict", str(trained_run), str(loop), "--frames", "some", "--out", str(out)]
    )
    assert res.exit_code == 2 and "every:N" in res.output

"""The clinician web app (Streamlit): upload ultrasound images, see the stage and why.

Start it with ``liverscope serve RUN_DIR`` (binds 127.0.0.1; ``--host`` to expose it, behind the
hospital's authenticating proxy: the app has no login of its own). Directly:
``LIVERSCOPE_RUN_DIR=runs/demo streamlit run src/liverscope/ui/app.py``.

Per uploaded image it shows the predicted class, the probability of every class (bar chart and
table), the fibrosis endpoints ≥F2 / ≥F3 / F4 when the labels are METAVIR stages, the Grad-CAM
overlay and, when the run holds segmentation models, the outline of what each segments (one colour per
target: lesion red, liver green); the
sidebar shows the model card (name, version, labels, the data it was trained on, said plainly when they
were the built-in synthetic phantoms, validation figures). Probabilities are calibrated with the run's
temperature when it has one. An image unlike the images the model was trained on (its
out-of-distribution score above the run's threshold) is shown as *not assessable*, with a red warning
that says why; its stage and probabilities only behind a "Show anyway" expander. Results download as
CSV, with every number and the flag.

Privacy: DICOM header fields are never displayed or written. The only header values read are the
patient identifiers, and only to remove them from file names and messages (:func:`redact`); for DICOM
images everything outside the scan sector is blanked before display, which removes the burned-in
patient text that ultrasound machines print in the border (best effort: text burned into the fan
itself cannot be told from tissue). Uploaded files stay in memory; nothing is written to disk.

Hardening: ``liverscope serve`` passes Streamlit's own ``server.maxUploadSize`` (the server answers a
larger upload with HTTP 413, whatever the page does) and ``server.enableXsrfProtection=true`` as flags,
which outrank config files and environment variables; the page refuses to run with XSRF protection off
(:data:`XSRF_OFF`). Every browser session keeps its results in its own ``st.session_state``; only the
model is shared between sessions (``st.cache_resource``; the segmenter and Grad-CAM take locks).

The functions above :func:`main` are plain Python (tested without a browser); :func:`main` draws the page.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from liverscope import rundir
from liverscope.data.io import decode_image, sniff_format
from liverscope.data.preprocess import preprocess_array
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.evaluate.notices import (
    DECISION_SUPPORT,
    NOT_ASSESSABLE,
    PHANTOMS,
    UNLIKE_TRAINING,
    flag_reason,
    is_phantoms,
    trained_on,
)
from liverscope.explain.cams import cam_overlay  # noqa: F401 (the app's heatmap, reached as app.cam_overlay by tests)
from liverscope.inference.predict import Predictor, Result, results_csv
from liverscope.labels import FIBROSIS_ENDPOINTS
from liverscope.rundir.bundle import RunData

# the pictures of an image, shared with the filed reports; the names stay reachable from the app
from liverscope.segment.panels import blank_outside_sector, image_panels, outline_legend, segmentation_outline  # noqa: F401
from liverscope.ui.app_records import render_records
from liverscope.ui.app_reports import render_pdf_download

#: The label of the expander that holds a flagged image's stage and probabilities.
SHOW_ANYWAY = "Show anyway: the model's output for this image"
#: Default upload limit (MB); ``liverscope serve --max-upload-mb`` sets it, for the server
#: (``server.maxUploadSize``) and for the page (``LIVERSCOPE_MAX_UPLOAD_MB``).
DEFAULT_MAX_UPLOAD_MB = 50
#: Shown instead of the page when Streamlit runs without XSRF protection.
XSRF_OFF = (
    "XSRF protection is off (server.enableXsrfProtection=false): another web site could upload to this app in a "
    "user's name. Start the app with `liverscope serve RUN_DIR`, which turns it on."
)
DISPLAY_MAX_SIDE = 640
REDACTED = "[redacted]"

#: DICOM attributes that identify the patient (PS3.15 Annex E basic profile, the ones that name or number
#: a person or visit). Their values are read only to strip them from names and messages.
IDENTIFYING_TAGS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "RequestingPhysician",
    "InstitutionName",
    "StudyID",
    "AdmissionID",
    "PatientInsurancePlanCodeSequence",
    "ResponsiblePerson",
)


# --------------------------------------------------------------------------------------------------
# Privacy helpers
# --------------------------------------------------------------------------------------------------


def dicom_identifiers(data: bytes) -> list[str]:
    """Patient-identifying strings in a DICOM file's header (empty for other files).

    Person names are split into their components (``DOE^JANE`` → ``DOE^JANE``, ``DOE``, ``JANE``) so a
    file named ``jane_doe.dcm`` is caught too; fragments shorter than 2 characters are ignored.

    Returns:
        Distinct values, longest first (so a longer match is redacted before its parts).
    """
    if sniff_format(data) != "dicom":
        return []
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:
        return []
    found: set[str] = set()

    def add(value) -> None:
        if value is None:
            return
        if isinstance(value, pydicom.Sequence):
            for item in value:
                for elem in item:
                    add(elem.value)
            return
        values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        for v in values:
            text = str(v).strip()
            if len(text) >= 2:
                found.add(text)
            for part in re.split(r"[\^=\s,/._-]+", text):
                if len(part) >= 2:
                    found.add(part)

    for tag in IDENTIFYING_TAGS:
        try:
            elem = ds.get(tag)
        except Exception:
            continue
        if elem is not None:
            add(elem)
    return sorted(found, key=lambda s: (-len(s), s))


def redact(text: str, identifiers: list[str]) -> str:
    """``text`` with every identifier replaced (case-insensitively) by ``[redacted]``."""
    for ident in identifiers:
        text = re.sub(re.escape(ident), REDACTED, text, flags=re.IGNORECASE)
    return text


def md_escape(text: str) -> str:
    """Escape Markdown (and Streamlit's $…$ maths) in user-controlled text such as file names."""
    return re.sub(r"([\\`*_{}\[\]<>#|~$])", r"\\\1", text)


# --------------------------------------------------------------------------------------------------
# Analysis of one upload (no Streamlit calls: testable)
# --------------------------------------------------------------------------------------------------


@dataclass
class UploadAnalysis:
    """Everything the page shows for one upload.

    Attributes:
        name: display name (DICOM identifiers removed).
        result: the prediction (``result.error`` set for a bad upload).
        image: the upload for display (downscaled; DICOM: blanked outside the scan sector), or ``None``.
        cam: Grad-CAM overlay on the model input (RGB uint8), or ``None``.
        outline: segmentation outline overlay (RGB uint8, every target's outline), or ``None``.
        outline_caption: its caption, naming each target and its colour.
        combined: the outlines on the Grad-CAM overlay (the PDF report's picture), or ``None``.
        notes: why a panel is missing (e.g. heatmap failed), shown as captions.
    """

    name: str
    result: Result
    image: np.ndarray | None = None
    cam: np.ndarray | None = None
    outline: np.ndarray | None = None
    outline_caption: str = "segmented regions (outline)"
    notes: list[str] = field(default_factory=list)
    combined: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.result.error is None


def _downscale(img: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    h, w = img.shape[:2]
    s = max(h, w) / max_side
    if s <= 1:
        return img
    return cv2.resize(img, (int(round(w / s)), int(round(h / s))), interpolation=cv2.INTER_AREA)


def analyse_upload(
    predictor, name: str, data: bytes, max_bytes: int, with_cam: bool = True
) -> UploadAnalysis:
    """Decode, score and explain one uploaded file; bad files become an :class:`UploadAnalysis` with the error.

    Args:
        predictor: a :class:`~liverscope.inference.predict.Predictor`.
        name: the uploaded file's name.
        data: its bytes.
        max_bytes: uploads larger than this are refused.
        with_cam: compute the Grad-CAM overlay.
    """
    ids = dicom_identifiers(data)
    safe = redact(name, ids)
    if len(data) > max_bytes:
        msg = f"file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB upload limit (export a single frame or a smaller image)"
        return UploadAnalysis(safe, Result(safe, error=msg))
    if len(data) == 0:
        return UploadAnalysis(
            safe, Result(safe, error="file is empty (0 bytes) (re-export or re-copy the image)")
        )
    try:
        img = decode_image(data, safe)
        model_input = preprocess_array(img, predictor.pp)
    except ImageReadError as exc:
        return UploadAnalysis(safe, Result(safe, error=redact(f"{exc.reason} ({exc.fix})", ids)))
    except Exception as exc:  # keep the app alive whatever a strange file does to a decoder
        return UploadAnalysis(
            safe, Result(safe, error=redact(f"cannot process this file ({type(exc).__name__}: {exc})", ids))
        )
    result = predictor.predict_arrays([model_input], [safe])[0]
    panels = image_panels(predictor, img, model_input, result.label, sniff_format(data) == "dicom", with_cam)
    return UploadAnalysis(
        safe,
        result,
        image=_downscale(panels.display),
        cam=panels.cam,
        outline=panels.outline,
        outline_caption=panels.outline_caption,
        notes=panels.notes,
        combined=panels.combined,
    )


def model_card(run_dir: Path, predictor) -> dict:
    """What the sidebar shows: name, version, labels, validation (and test) figures, backend."""
    meta = predictor.meta
    arch = meta.get("architecture", {})
    model_id = (rundir.weights_sha256(run_dir) or "?")[:12]
    data = RunData.load(run_dir).training_data
    card = {
        "run": run_dir.name,
        "model": f"{arch.get('name', '?')} ({arch.get('head', '?')} head)",
        "version": f"liverscope {meta.get('liverscope_version', '?')}, trained {str(meta.get('created', '?'))[:10]}, model id {model_id}",
        "labels": list(meta.get("labels", [])),
        "trained_on": trained_on(data),
        "phantoms": is_phantoms(data),
        "input": f"{predictor.pp.size} px, denoising {'on' if predictor.pp.denoise else 'off'}",
        "weights": meta.get("weights_source", "?"),
        "calibration": _calibration_text(meta),
        "ood": _ood_text(predictor),
        "validation": {
            k: v for k, v in (meta.get("validation") or {}).items() if isinstance(v, (int, float))
        },
        "test": {},
        "split": meta.get("split", "?"),
        "inference": predictor.describe(),
    }
    try:
        test = rundir.read_metrics(run_dir).get("test") or {}
        card["test"] = {
            k: test[k]
            for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "n")
            if isinstance(test.get(k), (int, float))
        }
    except (OSError, ValueError):  # a damaged metrics.json costs the test figures, not the app
        pass
    return card


def _calibration_text(meta: dict) -> str:
    if (meta.get("temperature_fit") or {}).get("at_edge"):
        return "none (the temperature fit stopped at the edge of its range; probabilities are uncalibrated)"
    if meta.get("temperature") and meta["temperature"] != 1.0:
        return f"temperature {meta['temperature']:.2f}"
    return "none"


def _ood_text(predictor) -> str:
    ood = predictor.ood
    if not ood:
        return "none (this run has no out-of-distribution detector: retrain it to get the flag)"
    return f"{ood['method']} score, threshold {ood['threshold']:.4g} (the {ood.get('quantile', 0.95):.1%} conformal quantile of the validation images' scores)"


def run_dir_from_env(argv: list[str] | None = None) -> Path | None:
    """The run directory: ``LIVERSCOPE_RUN_DIR``, else the first argument after ``--`` of ``streamlit run``."""
    env = os.environ.get("LIVERSCOPE_RUN_DIR")
    if env:
        return Path(env)
    args = sys.argv[1:] if argv is None else argv
    return Path(args[0]) if args else None


def max_upload_bytes(server_mb: float | None = None) -> int:
    """The page's upload limit in bytes: ``LIVERSCOPE_MAX_UPLOAD_MB`` (default :data:`DEFAULT_MAX_UPLOAD_MB`),
    never above the server's own limit ``server_mb`` (Streamlit's ``server.maxUploadSize``)."""
    try:
        mb = float(os.environ.get("LIVERSCOPE_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB))
    except ValueError:
        mb = DEFAULT_MAX_UPLOAD_MB
    if server_mb is not None:
        mb = min(mb, float(server_mb))
    return int(mb * 2**20)


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

# Streamlit lists uploaded file names under the uploader; a DICOM's file name may carry the patient's
# name, so the list shows only counts and delete buttons, and each result panel shows the redacted name.
_CSS = """
<style>
[data-testid="stFileChipName"] { display: none !important; }
</style>
"""


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _render_sidebar(st, card: dict) -> None:
    sb = st.sidebar
    sb.header("Model")
    sb.markdown(f"**{card['model']}** — run `{card['run']}`")
    sb.caption(card["version"])
    sb.markdown("**Labels:** " + ", ".join(card["labels"]))
    sb.markdown(md_escape(card["trained_on"]))
    if card["phantoms"]:
        sb.error(PHANTOMS, icon=":material/science:")
    sb.markdown(
        f"**Input:** {card['input']}  \n**Weights:** {card['weights']}  \n**Calibration:** {card['calibration']}  \n"
        f"**Unlike-the-training-data flag:** {card['ood']}"
    )
    if card["validation"]:
        sb.markdown(
            "**Validation figures**  \n"
            + "  \n".join(f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in card["validation"].items())
        )
    else:
        sb.markdown("**Validation figures:** none recorded")
    if card["test"]:
        sb.markdown(
            f"**Held-out test ({card['split']} split)**  \n"
            + "  \n".join(f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in card["test"].items())
        )
    sb.caption(f"Inference: {card['inference']}")


def _render_output(st, r: Result, labels: list[str], headline: str, calibrated: bool) -> None:
    """The model's output for one image: its class, the probability of every class, the endpoints."""
    import pandas as pd

    st.metric(
        headline,
        r.label,
        f"{'calibrated ' if calibrated else ''}probability {r.confidence:.1%}",
        delta_color="off",
        delta_arrow="off",
    )
    probs = pd.DataFrame({"probability": [r.probs[c] for c in labels]}, index=pd.Index(labels, name="class"))
    st.bar_chart(probs, y="probability", horizontal=True, height=40 + 32 * len(labels))
    st.table(
        pd.DataFrame({"class": labels, "probability": [f"{r.probs[c]:.1%}" for c in labels]}).set_index(
            "class"
        )
    )
    ep = r.endpoints
    if ep:
        st.markdown("**Fibrosis endpoints** (sums of stage probabilities)")
        for col, (k, p) in zip(st.columns(3), ep.items()):
            col.metric(f"{k} {FIBROSIS_ENDPOINTS[k][0].split()[0]}", f"{p:.1%}")


def _render_analysis(
    st,
    a: UploadAnalysis,
    labels: list[str],
    index: int,
    calibrated: bool = False,
    threshold: float | None = None,
    ensemble: bool = False,
) -> None:
    with st.container(border=True, key=f"result-{index}"):
        st.subheader(md_escape(a.name))
        if not a.ok:
            st.error(md_escape(f"Could not analyse {a.name}: {a.result.error}"))
            return
        r = a.result
        if r.ood:  # not assessable: no stage as a headline; the reason in red; the output behind an expander
            st.error(flag_reason(r.ood_score, threshold, ensemble), icon=":material/block:")
        left, right = st.columns([1, 1])
        with left:
            if r.ood:
                st.metric(
                    "Predicted class", NOT_ASSESSABLE, UNLIKE_TRAINING, delta_color="off", delta_arrow="off"
                )
                with st.expander(SHOW_ANYWAY):
                    _render_output(st, r, labels, "The model's class (not assessable)", calibrated)
            else:
                _render_output(st, r, labels, "Predicted class", calibrated)
        with right:
            panels = [(a.image, "uploaded image")]
            if a.cam is not None:
                panels.append(
                    (
                        a.cam,
                        "Grad-CAM: regions driving the model's output"
                        if r.ood
                        else f"Grad-CAM: regions driving '{r.label}'",
                    )
                )
            if a.outline is not None:
                panels.append((a.outline, a.outline_caption))
            panels = [(img, caption) for img, caption in panels if img is not None]
            for col, (img, caption) in zip(st.columns(len(panels)), panels):
                col.image(img, caption=caption, width="stretch")
            for note in a.notes:
                st.caption(note)


def main() -> None:
    """Draw the page (run by ``streamlit run``)."""
    import streamlit as st

    st.set_page_config(page_title="liverscope", layout="wide")
    st.markdown(_CSS, unsafe_allow_html=True)
    st.title("liverscope — liver ultrasound")
    st.warning(DECISION_SUPPORT, icon=":material/info:")
    if not st.get_option("server.enableXsrfProtection"):
        st.error(XSRF_OFF)
        st.stop()

    run_dir = run_dir_from_env()
    if run_dir is None or not (run_dir / rundir.MODEL_META).exists():
        st.error(
            f"No trained run to serve ({run_dir or 'none given'}). Start the app with `liverscope serve RUN_DIR`."
        )
        st.stop()

    @st.cache_resource(show_spinner="Loading the model…")
    def load(run: str, backend: str, int8: bool, tta: str) -> Predictor:
        return Predictor.from_run(run, backend=backend, int8=int8, batch_size=1, tta=tta)

    try:
        predictor = load(
            str(run_dir),
            os.environ.get("LIVERSCOPE_BACKEND", "auto"),
            os.environ.get("LIVERSCOPE_INT8", "0") == "1",
            os.environ.get("LIVERSCOPE_TTA", "none"),
        )
    except LiverscopeError as exc:
        st.error(f"Cannot load the model: {exc}")
        st.stop()
    labels = predictor.labels
    _render_sidebar(st, model_card(run_dir, predictor))

    limit = max_upload_bytes(st.get_option("server.maxUploadSize"))
    uploads = st.file_uploader(
        f"Ultrasound images — PNG, JPEG or DICOM, up to {limit / 2**20:.0f} MB each",
        accept_multiple_files=True,
        key="uploads",
    )
    with_cam = st.toggle("Show Grad-CAM heatmaps", value=True)
    if not uploads:
        st.info(
            "Upload one or several B-mode images to see the predicted stage, the probabilities and the heatmap."
        )
        render_records(st, predictor, [], [])  # the past exams
        return

    # results are kept per file content, so re-drawing the page (any widget change) does not re-run the
    # model; in this browser session's own state: never in a module or a cached resource, which every
    # session shares
    cache: dict = st.session_state.setdefault("analyses", {})
    keep = {}
    analyses = []
    for up in uploads:
        data = up.getvalue()
        key = (hashlib.sha256(data).hexdigest(), up.name, with_cam)
        if key not in cache:
            with st.spinner("Analysing…"):
                cache[key] = analyse_upload(predictor, up.name, data, limit, with_cam)
        keep[key] = cache[key]
        analyses.append(cache[key])
    st.session_state["analyses"] = keep  # forget removed uploads

    n_bad, n_flagged = sum(not a.ok for a in analyses), sum(a.ok and bool(a.result.ood) for a in analyses)
    st.markdown(
        f"**{len(analyses) - n_bad} image(s) analysed**"
        + (f", {n_flagged} not assessable ({UNLIKE_TRAINING})" if n_flagged else "")
        + (f", {n_bad} could not be read" if n_bad else "")
    )
    csv_text = results_csv([a.result for a in analyses], labels)
    st.session_state["results_csv"] = csv_text
    st.download_button(
        "Download results (CSV)",
        csv_text,
        file_name=f"liverscope_{run_dir.name}_results.csv",
        mime="text/csv",
    )
    render_pdf_download(
        st, analyses, [(up.name, up.getvalue()) for up in uploads], labels, run_dir
    )  # the exam's one-page PDF
    render_records(
        st, predictor, analyses, [(up.name, up.getvalue()) for up in uploads]
    )  # recorded; the exam's one answer, review, past exams
    ensemble = bool((predictor.ood or {}).get("ensemble"))
    for i, a in enumerate(analyses):
        _render_analysis(
            st,
            a,
            labels,
            i,
            calibrated=predictor.temperature != 1.0,
            threshold=predictor.ood_threshold,
            ensemble=ensemble,
        )


if __name__ == "__main__":
    main()

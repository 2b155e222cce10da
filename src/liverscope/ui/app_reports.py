"""The app's PDF download: the uploaded images as one exam, its one-page report (the same page as
``liverscope records report KEY --pdf``: :mod:`liverscope.reports`).

The exam key printed on the page is pseudonymous: for DICOM uploads the salted one-way hash of the
Study Instance UID (``st-...``, as ``predict --record --by study`` keys the exam), otherwise
``upload-`` and the first image's digest; the user may type another (the field says: no names or IDs).
The PDF is drawn once per set of images and key and kept in the browser session's own state.
"""

from __future__ import annotations

import hashlib
import io
import re

from liverscope.data.io import pseudonym, sniff_format
from liverscope.errors import LiverscopeError
from liverscope.reports.build import Scored, report_of
from liverscope.reports.pdf import pdf_bytes

KEY_FIELD = "Exam key printed on the PDF (pseudonymous: no names or IDs)"


def default_key(uploads: list[tuple[str, bytes]]) -> str:
    """The exam key of a set of uploads (module docstring)."""
    import pydicom

    for _, data in uploads:
        if sniff_format(data) == "dicom":
            try:
                key = pseudonym(
                    pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True), "StudyInstanceUID"
                )
            except Exception:  # an unreadable header: the upload's own error says why
                key = None
            if key:
                return key
    return f"upload-{hashlib.sha256(uploads[0][1]).hexdigest()[:16]}" if uploads else "upload"


def exam_pdf(analyses, uploads: list[tuple[str, bytes]], labels, run_dir, key: str) -> bytes:
    """The one-page PDF of the analysed uploads (``app.UploadAnalysis`` each, the upload's name and bytes beside it);
    uploads that could not be read are left out."""
    scored = [
        Scored(a.result, hashlib.sha256(data).hexdigest(), a.combined, note="; ".join(a.notes) or None)
        for a, (_, data) in zip(analyses, uploads)
        if a.ok
    ]
    return pdf_bytes(report_of(key, scored, labels, run_dir))


def render_pdf_download(st, analyses, uploads: list[tuple[str, bytes]], labels, run_dir) -> None:
    """A key field and the PDF's download button (nothing when no upload could be analysed)."""
    if not any(a.ok for a in analyses):
        return
    key = st.text_input(KEY_FIELD, value=default_key(uploads), key="exam_key").strip() or default_key(uploads)
    ident = (key, tuple(hashlib.sha256(d).hexdigest() for _, d in uploads))
    cached = st.session_state.get("exam_pdf")
    if not cached or cached[0] != ident:
        try:
            cached = (ident, exam_pdf(analyses, uploads, labels, run_dir, key))
        except (
            LiverscopeError
        ) as exc:  # e.g. an installation without the reports extra: the rest of the page stands
            st.caption(f"PDF report unavailable: {exc}")
            return
        st.session_state["exam_pdf"] = cached
    st.download_button(
        "Download the exam report (PDF)",
        cached[1],
        file_name=f"liverscope_{re.sub(r'[^A-Za-z0-9._-]+', '_', key)[:64]}.pdf",
        mime="application/pdf",
    )


__all__ = ["KEY_FIELD", "default_key", "exam_pdf", "render_pdf_download"]

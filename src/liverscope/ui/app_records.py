"""The app's exam records (docs/records.md): each analysis recorded, the exam's one answer, the review,
and the past exams.

On when the app was started by ``liverscope serve`` (``LIVERSCOPE_RECORD=1``; ``serve --no-record``
turns it off) into ``LIVERSCOPE_DB`` (``serve --db``; else the user's data folder). The uploads on the
page are one exam, keyed by the PDF's exam-key field (``st.session_state["exam_key"]``: the DICOM study's
pseudonym, else ``upload-`` and a digest, or what the user typed). Each analysed upload is recorded
once per browser session and key (the bytes are not kept: an app upload has no file behind it). The
store is opened once per server (``st.cache_resource``) and shared by every session: each of its calls
takes its own short transaction.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, time, timezone

from liverscope import records  # its names load on first use: without the records extra the page still stands
from liverscope.errors import LiverscopeError
from liverscope.evaluate.notices import NOT_ASSESSABLE, UNLIKE_TRAINING

ENV_RECORD = "LIVERSCOPE_RECORD"
HISTORY = "Past exams"


def recording_on() -> bool:
    return os.environ.get(ENV_RECORD, "0") == "1"


def upload_key(uploads: list[tuple[str, bytes]]) -> str:
    """The exam key when the page has none typed: ``upload-`` and the first upload's digest."""
    return f"upload-{hashlib.sha256(uploads[0][1]).hexdigest()[:16]}" if uploads else "upload"


def record_uploads(
    store, run, key: str, analyses, uploads: list[tuple[str, bytes]], done: set, user: str = "app"
) -> int:
    """Record the analysed uploads (``app.UploadAnalysis`` each, beside its name and bytes) into exam ``key``,
    each once (``done`` holds what this session recorded); returns how many were recorded now."""
    n = 0
    for a, (_name, data) in zip(analyses, uploads):
        ident = (key, hashlib.sha256(data).hexdigest(), run.run_fingerprint)
        if not a.ok or ident in done:
            continue
        store.record(
            records.ExamKey(key, "user"),
            records.bytes_input(a.name, data, "app", a.result.frames),
            a.result,
            run,
            user=user,
        )
        done.add(ident)
        n += 1
    return n


def answer_text(exam) -> str:
    """The exam's answer in one sentence (markdown)."""
    a = exam.answer
    if a.label is None:
        return f"**Exam {exam.key}: {NOT_ASSESSABLE}** — all {a.n_images} image(s) {UNLIKE_TRAINING}."
    flagged = f", {a.n_flagged} flagged image(s) left out ({UNLIKE_TRAINING})" if a.n_flagged else ""
    return (
        f"**Exam {exam.key}: {a.label}** ({a.probabilities[a.label]:.1%}) from {a.n_used} image(s); "
        f"{a.n_agree} of {a.n_used} agree, spread {a.spread:.3f}{flagged}."
    )


def _review_form(st, store, exam, labels: list[str], where: str) -> None:
    """Agree, or correct the label, with a note; stored beside the analyses."""
    for r in exam.reviews:
        st.caption(
            f"Review {r.created_at:%Y-%m-%d %H:%M} UTC: {r.verdict} — {r.label} (answer was {r.answer_label})"
            + (f" — {r.note}" if r.note else "")
        )
    with st.form(key=f"review-{where}-{exam.key}", clear_on_submit=True):
        verdict = st.radio("Review", ["Agree", "Correct the label"], horizontal=True, key=f"verdict-{where}")
        label = st.selectbox("Right label (when correcting)", labels, key=f"label-{where}")
        note = st.text_input("Note", key=f"note-{where}")
        if st.form_submit_button("Save review"):
            try:
                r = store.review(
                    exam.key, None if verdict == "Agree" else label, verdict == "Agree", note or None, "app"
                )
                st.success(f"Review saved: {r.verdict} — {r.label}")
            except LiverscopeError as exc:
                st.error(str(exc))


def render_exam(st, store, key: str, labels: list[str], where: str = "page") -> None:
    """The exam's one answer beside the images, and its review form."""
    try:
        exam = store.get_exam(key)
    except LiverscopeError:
        return
    with st.container(border=True, key=f"exam-{where}"):
        st.markdown(answer_text(exam))
        a = exam.answer
        if a.probabilities:
            st.caption(
                "Exam probabilities ("
                + a.method
                + "): "
                + ", ".join(f"{c} {p:.1%}" for c, p in a.probabilities.items())
            )
        _review_form(st, store, exam, labels, where)


def render_history(st, store, labels: list[str]) -> None:
    """Past exams: search by key, date, flag, disagreement; one opened with its answer and review form."""
    with st.expander(HISTORY, expanded=False):
        cols = st.columns(4)
        search = cols[0].text_input("Search exam key", key="history-search")
        since = cols[1].date_input("Since", value=None, key="history-since")
        flagged = cols[2].checkbox("Flagged images only", key="history-flagged")
        disagree = cols[3].checkbox("Disagreements only", key="history-disagree")
        start = datetime.combine(since, time.min, tzinfo=timezone.utc) if since else None
        exams = store.find_exams(
            search or None, start, None, True if flagged else None, True if disagree else None, limit=100
        )
        if not exams:
            st.caption("No exams match.")
            return
        rows = [
            {
                "exam": e.key,
                "created (UTC)": f"{e.created_at:%Y-%m-%d %H:%M}",
                "images": len(e.images),
                "answer": e.answer.label or NOT_ASSESSABLE,
                "flagged": e.answer.n_flagged,
                "review": f"{e.review.verdict} {e.review.label}" if e.review else "",
            }
            for e in exams
        ]
        st.dataframe(rows, hide_index=True, key="history-table")
        chosen = st.selectbox("Open exam", [e.key for e in exams], index=None, key="history-open")
        if chosen:
            render_exam(st, store, chosen, labels, where="history")


def render_records(st, predictor, analyses, uploads: list[tuple[str, bytes]]) -> None:
    """Record the page's analyses, show the exam's answer and review, and the past exams (nothing when
    recording is off; a caption when the store cannot be opened)."""
    if not recording_on():
        return

    @st.cache_resource(show_spinner=False)
    def store_of(db: str | None):  # one engine per server, shared by every session
        return records.open_store(db)

    @st.cache_resource(show_spinner=False)
    def run_of(
        run_dir: str, backend: str, tta: str, temperature: float
    ):  # the fingerprint hashes the weights: once
        return records.run_info(predictor)

    try:
        store = store_of(os.environ.get("LIVERSCOPE_DB") or None)
        run = run_of(str(predictor.run_dir), predictor.backend, predictor.tta, float(predictor.temperature))
        if uploads and any(a.ok for a in analyses):
            key = (st.session_state.get("exam_key") or "").strip() or upload_key(uploads)
            record_uploads(store, run, key, analyses, uploads, st.session_state.setdefault("recorded", set()))
            render_exam(st, store, key, predictor.labels)
        render_history(st, store, predictor.labels)
    except LiverscopeError as exc:
        st.caption(f"Exam records unavailable: {exc}")


__all__ = [
    "ENV_RECORD",
    "HISTORY",
    "recording_on",
    "upload_key",
    "record_uploads",
    "answer_text",
    "render_exam",
    "render_history",
    "render_records",
]

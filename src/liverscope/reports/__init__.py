"""Reports a clinic can file (docs/records.md, "Reports"): one exam's one-page PDF and its DICOM
objects (a Secondary Capture of each overlay, a Comprehensive SR of the result), and the round trip
with a PACS (Orthanc's REST API: pull a study, analyse it, push the report back).

Modules: :mod:`~liverscope.reports.content` (what a report says: typed dataclasses), :mod:`.build`
(an :class:`~liverscope.reports.content.ExamReport` from files scored now or from a stored exam),
:mod:`.pdf` (fpdf2), :mod:`.dicom` (highdicom), :mod:`.pacs` (Orthanc). fpdf2 and highdicom are the
``reports`` extra; each module imports its library when it is used.
"""

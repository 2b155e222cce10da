"""Exam records: every analysis in a database (SQLite by default, PostgreSQL by URL), one answer per
exam, clinician reviews, and the reviewed cases as a training manifest (docs/records.md).

The public names are loaded on first use (as the package root does), so that ``liverscope --help`` and
an installation without the ``records`` extra (SQLAlchemy, Alembic, psycopg) do not import them::

    from liverscope.records import open_store
    with open_store() as store:
        exam = store.get_exam("st-0123456789abcdef")

Modules: :mod:`~liverscope.records.engine` (URL, engine, migrations, retries), ``models`` (tables),
``views`` (the read-only dataclasses and the exam's answer), ``store`` (:class:`Store`), ``runinfo``
(what an analysis records of its model), ``recorder`` (``predict --record``), ``export`` (the manifest).
"""

from importlib import import_module as _import_module

from liverscope.errors import LiverscopeError as _LiverscopeError

#: public name → the module that defines it
_LAZY = {
    "open_store": "store",
    "Store": "store",
    "ExamKey": "store",
    "ImageInput": "store",
    "RunInfo": "store",
    "AnalysisRecord": "views",
    "ImageRecord": "views",
    "ReviewRecord": "views",
    "ExamAnswer": "views",
    "ExamRecord": "views",
    "exam_answer": "views",
    "pool_probabilities": "views",
    "database_url": "engine",
    "default_database": "engine",
    "run_info": "runinfo",
    "image_input": "runinfo",
    "bytes_input": "runinfo",
    "run_fingerprint": "runinfo",
    "Recorder": "recorder",
    "BY": "recorder",
    "prediction_inputs": "recorder",
    "exam_line": "recorder",
    "write_exams": "recorder",
    "export_manifest": "export",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'liverscope.records' has no attribute '{name}'")
    try:
        module = _import_module(f"liverscope.records.{_LAZY[name]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("sqlalchemy", "alembic", "platformdirs", "psycopg"):
            raise _LiverscopeError(
                f"exam records need the Python package '{exc.name.split('.')[0]}', which is not installed: "
                "pip install 'liverscope[records]'"
            ) from None
        raise
    value = getattr(module, name)
    globals()[name] = value
    return value

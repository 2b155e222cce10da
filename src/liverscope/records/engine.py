"""Where the exam records live and how they are written safely: the database URL, the engine (SQLite in
WAL mode, write transactions that take the write lock at once), the Alembic migrations run on open, and
the retry of a transaction that met a busy database.

The database is a URL or a path:

* nothing: ``$LIVERSCOPE_DB``, else ``records.sqlite`` in the user's data folder (``platformdirs``:
  ``~/.local/share/liverscope`` on Linux);
* a path (``records.sqlite``): a SQLite file, made with its folder when missing;
* a SQLAlchemy URL: ``sqlite:///path``, ``postgresql+psycopg://user:pw@host/db`` (``postgresql://`` is
  read as psycopg 3's).

SQLite is set for several writers at once (the app's users and a ``predict --record`` batch): WAL
journal (readers never wait for the writer), ``synchronous=NORMAL`` (a committed record survives a
crash of the program, kill -9 included; a power cut or an OS crash may take back the last commits, never
corrupting the file; ``LIVERSCOPE_DB_SYNC=FULL`` syncs every commit to disk, about twice the time per
record: docs/benchmarks.md), a 30 s busy timeout, and ``BEGIN IMMEDIATE`` for writes, so a writer waits for the
lock at the start of its transaction instead of failing half-way (a deferred transaction that reads
then writes can only fail with "database is locked"). Transactions are short (one image's record);
:func:`retrying` repeats one that still met a locked database or a concurrent insert of the same exam.
"""

from __future__ import annotations

import logging
import os
import random
import time
from importlib.resources import files
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from liverscope.errors import LiverscopeError

logger = logging.getLogger(__name__)

ENV_DB = "LIVERSCOPE_DB"
ENV_SYNC = "LIVERSCOPE_DB_SYNC"
SYNC_MODES = ("NORMAL", "FULL")
DEFAULT_FILE = "records.sqlite"
BUSY_TIMEOUT_S = 30.0
#: attempts of one write transaction before the error reaches the user (each after the busy timeout)
ATTEMPTS = 8
T = TypeVar("T")


def default_database() -> Path:
    """``records.sqlite`` in the user's data folder (created on first use)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("liverscope", appauthor=False)) / DEFAULT_FILE


def database_url(db: str | Path | None = None) -> str:
    """The SQLAlchemy URL of ``db`` (a URL, a path, or ``None``: ``$LIVERSCOPE_DB`` or the default file)."""
    db = db if db not in (None, "") else os.environ.get(ENV_DB) or default_database()
    text_db = str(db)
    if "://" not in text_db:
        path = Path(text_db).expanduser().resolve()
        if path.is_dir():
            raise LiverscopeError(
                f"--db {db}: is a folder; give a database file (e.g. {path / DEFAULT_FILE}) or a URL"
            )
        return f"sqlite:///{path}"
    if text_db.startswith(("postgresql://", "postgres://")):
        text_db = "postgresql+psycopg://" + text_db.split("://", 1)[1]
    try:
        make_url(text_db)
    except ArgumentError as exc:
        raise LiverscopeError(
            f"--db {db}: not a database URL ({exc}); give a file path or e.g. postgresql+psycopg://user@host/db"
        ) from None
    return text_db


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder, WAL, the sync mode, foreign keys and immediate writes."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if u.database and u.database != ":memory:":
        try:
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LiverscopeError(
                f"{u.database}: cannot create its folder ({exc}); choose another --db"
            ) from None
    sync = os.environ.get(ENV_SYNC, "NORMAL").upper()
    if sync not in SYNC_MODES:
        raise LiverscopeError(f"${ENV_SYNC}={sync}: expected one of {', '.join(SYNC_MODES)}")
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_setup(dbapi_conn, _record):
        dbapi_conn.isolation_level = (
            None  # the driver's own BEGIN is off: the "begin" listener below says which
        )
        cur = dbapi_conn.cursor()
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={sync}",
            "foreign_keys=ON",
            f"busy_timeout={int(BUSY_TIMEOUT_S * 1000)}",
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writer") else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The engine whose transactions write (SQLite: ``BEGIN IMMEDIATE``)."""
    return engine.execution_options(writer=True)


def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("liverscope.records") / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration this liverscope ships."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's migration (``None``: an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> None:
    """Bring the database to this liverscope's schema (Alembic ``upgrade head``), in one transaction."""
    from alembic import command

    head = head_revision()
    if current_revision(engine) == head:
        return
    known = _known_revisions()
    now = current_revision(engine)
    if now is not None and now not in known:
        raise LiverscopeError(
            f"{_safe_url(engine)}: its records were written by a newer liverscope (schema {now}); upgrade liverscope to open it"
        )

    def upgrade():
        with writer(engine).begin() as conn:
            if engine.dialect.name == "postgresql":  # one migrating process at a time
                conn.execute(text("SELECT pg_advisory_xact_lock(2405240524)"))
            command.upgrade(_alembic_config(conn), "head")

    retrying(upgrade, f"migrating {_safe_url(engine)}")
    logger.info("records database %s at schema %s", _safe_url(engine), head)


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config(None)).walk_revisions()}


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError):  # two writers made the same exam or image at once: the retry finds it
        return True
    msg = str(getattr(exc, "orig", exc)).lower()
    return isinstance(exc, OperationalError) and ("locked" in msg or "busy" in msg or "deadlock" in msg)


def retrying(work: Callable[[], T], what: str, attempts: int = ATTEMPTS) -> T:
    """Run one transaction (``work``), again after a short random pause when the database was busy or a
    concurrent writer made the same row; a :class:`LiverscopeError` saying so when it never got through."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except (OperationalError, IntegrityError) as exc:
            if not _retryable(exc):
                raise LiverscopeError(f"{what}: {getattr(exc, 'orig', exc)}") from None
            if attempt == attempts:
                raise LiverscopeError(
                    f"{what}: the database stayed busy through {attempts} attempts ({getattr(exc, 'orig', exc)}); "
                    "another program holds it: try again, or use a PostgreSQL server (--db postgresql+psycopg://...)"
                ) from None
            logger.debug("%s: %s; attempt %d of %d", what, getattr(exc, "orig", exc), attempt, attempts)
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")


__all__ = [
    "ENV_DB",
    "database_url",
    "default_database",
    "make_engine",
    "writer",
    "migrate",
    "retrying",
    "head_revision",
    "current_revision",
]

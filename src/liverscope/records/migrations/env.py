"""Alembic's environment for the exam records: migrations run on the connection that
:func:`liverscope.records.engine.migrate` hands over (``config.attributes["connection"]``), inside its
transaction, so a migration is all or nothing and two processes opening a new database at once
migrate it once (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock)."""

from __future__ import annotations

from alembic import context

from liverscope.records.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` on the command line is not how liverscope migrates
    raise RuntimeError("liverscope's records migrate through liverscope.records.engine.migrate(engine)")
# render_as_batch: SQLite alters a table by copying it; Alembic's batch mode does that
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

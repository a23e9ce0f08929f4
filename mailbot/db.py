"""Database engine and transactions.

SQLite is the embedded default and PostgreSQL the choice for bigger installs; the same code
runs on both.  On SQLite every transaction starts with ``BEGIN IMMEDIATE`` so two writers
queue instead of failing half-way with "database is locked", and the file is created
owner-only because it holds complainants' mail.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

from mailbot import audit, observe  # noqa: F401 - register the audit chain hook and their tables
from mailbot.cases import models  # noqa: F401 - registers the tables


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            path = Path(database)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.touch(mode=0o600)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def create_schema(engine: Engine) -> None:
    """Create missing tables; on PostgreSQL under an advisory lock so two daemons can start at once."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
            SQLModel.metadata.create_all(conn)
            _add_missing_indexes(conn)
        return
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        _add_missing_indexes(conn)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        try:
            os.chmod(engine.url.database, 0o600)
        except OSError:
            pass


def _add_missing_indexes(conn) -> None:
    """``create_all`` makes missing tables but not an index added to a table that exists: a
    database made by an older version gets the newer indexes here (additive, so safe to run on
    every start; anything beyond adding indexes needs a real migration)."""
    inspector = inspect(conn)
    for table in SQLModel.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(conn, checkfirst=True)


class Database:
    """An engine plus the schema, created on first use."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        create_schema(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()

"""Throwaway PostgreSQL databases for tests.

Why: mailbot supports SQLite and PostgreSQL, and the two differ in ways that
matter (types, locking, ``ON CONFLICT``, transactional DDL, case rules), so
the storage tests run against both.  Each test gets its own freshly created
database on the local server, so tests cannot see each other's rows and can
run in parallel; it is dropped afterwards.

The server is the machine's PostgreSQL on ``127.0.0.1:5432`` with trust auth
for user ``postgres``.  If it is not reachable the test *fails* (never skips):
a silently skipped PostgreSQL run would hide PostgreSQL-only bugs.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
DB_PREFIX = "mailbot_t_"


def admin_connect(host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER) -> psycopg.Connection:
    """Autocommit connection to the ``postgres`` maintenance database.

    Autocommit because ``CREATE/DROP DATABASE`` cannot run in a transaction.
    Fails the test with an explanation if the server is not reachable.
    """
    try:
        return psycopg.connect(host=host, port=port, user=user, dbname="postgres",
                               autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {user}@{host}:{port} (trust auth expected): "
            f"{str(exc).strip()}\n"
            "The PostgreSQL tests need a running server: start it (e.g. "
            "`service postgresql start`) or run only the sqlite variants with "
            "`-k 'not postgresql'`.",
            pytrace=False,
        )


def _terminate_and_drop(admin: psycopg.Connection, name: str) -> None:
    # Connections left open by the test (an un-disposed SQLAlchemy pool, a
    # daemon thread) would make DROP DATABASE fail: terminate them first.
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def throwaway_database(host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER) -> Iterator[str]:
    """Create ``mailbot_t_<random hex>``, yield its SQLAlchemy URL, drop it.

    Yields ``postgresql+psycopg://postgres@127.0.0.1:5432/mailbot_t_<hex>``.
    On exit (also when the test failed) other connections to the database
    are terminated and it is dropped.
    """
    name = DB_PREFIX + secrets.token_hex(6)
    with admin_connect(host, port, user) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        # A fresh admin connection: the test may have run for long enough
        # that an idle one would have been cut.
        with admin_connect(host, port, user) as admin:
            _terminate_and_drop(admin, name)


def database_exists(name: str, host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER) -> bool:
    """Whether a database called ``name`` exists (used to check the cleanup)."""
    with admin_connect(host, port, user) as admin:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

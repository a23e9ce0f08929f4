"""Shared fixtures: real servers on loopback (see tests/servers/ for why).

Fixtures:
    dovecot      -- started DovecotServer (IMAP, user "complaints"/"secret")
    smtp_server  -- started SmtpCapture (records what mailbot sends)
    pg_url       -- SQLAlchemy URL of a throwaway PostgreSQL database
    sqlite_url   -- SQLAlchemy URL of a SQLite file in tmp_path
    db_url       -- parametrized: ids "sqlite" and "postgresql"
"""

from __future__ import annotations

import pytest

from tests.servers import DovecotServer, SmtpCapture, throwaway_database


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


@pytest.fixture
def dovecot(request: pytest.FixtureRequest) -> DovecotServer:
    server = DovecotServer()
    # Finalizer registered before start(): the process and its /tmp dir go
    # away even if start() or the test fails.
    request.addfinalizer(server.close)
    server.start()
    return server


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> SmtpCapture:
    server = SmtpCapture()
    request.addfinalizer(server.stop)
    server.start()
    return server


@pytest.fixture
def pg_url():
    with throwaway_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mailbot.db'}"


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    # getfixturevalue: the sqlite variant must not need a PostgreSQL server.
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return request.getfixturevalue(name)

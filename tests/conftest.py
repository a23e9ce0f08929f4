"""Shared fixtures: real servers on loopback (see tests/servers/ for why).

Fixtures:
    dovecot      -- started DovecotServer (IMAP, user "complaints"/"secret")
    smtp_server  -- started SmtpCapture (records what mailbot sends)
    pg_url       -- SQLAlchemy URL of a throwaway PostgreSQL database
    sqlite_url   -- SQLAlchemy URL of a SQLite file in tmp_path
    db_url       -- parametrized: ids "sqlite" and "postgresql"
    ews_server   -- started EwsFake (Exchange Web Services, Basic auth "complaints"/"secret")
    oauth_tls       -- a throwaway CA + 127.0.0.1 certificate for the local HTTPS servers
    jwt_issuer      -- signs test OAuth2 access tokens (the servers below trust it)
    oauth_authority -- started local OAuth2 authority that msal accepts (Entra ID stand-in)
    dovecot_oauth2  -- Dovecot taking XOAUTH2/OAUTHBEARER tokens of jwt_issuer (and passwords)
    smtp_oauth2     -- SmtpCapture requiring AUTH XOAUTH2 with tokens of jwt_issuer
    graph_server    -- started GraphFake (Microsoft Graph mail, HTTPS, tokens of jwt_issuer)
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


@pytest.fixture
def ews_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A strict fake EWS endpoint (tests/servers/ews_fake.py); fails the test if mailbot sent it
    any request it did not expect.

    exchangelib keeps protocol objects (with their retry policy and HTTP sessions) per endpoint
    for the whole process: they are dropped after each test, and its 10 s retry pause is
    shortened so a test of a failure stays quick."""
    import exchangelib
    from exchangelib.protocol import BaseProtocol

    from tests.servers.ews_fake import EwsFake

    monkeypatch.setattr(BaseProtocol, "RETRY_WAIT", 0.05)
    server = EwsFake(user="complaints", password="secret")
    request.addfinalizer(exchangelib.close_connections)
    request.addfinalizer(server.stop)
    server.start()
    yield server
    assert not server.problems, "unexpected EWS requests:\n" + "\n".join(server.problems)


# -- OAuth2 and Microsoft Graph (tests/servers/oauth_*.py, graph_fake.py) ---------------------------
@pytest.fixture(scope="session")
def oauth_tls():
    from tests.servers.oauth_tls import TestTLS

    tls = TestTLS()
    yield tls
    tls.close()


@pytest.fixture
def jwt_issuer():
    from tests.servers.oauth_jwt import JwtIssuer

    return JwtIssuer()


@pytest.fixture
def oauth_authority(request: pytest.FixtureRequest, oauth_tls, jwt_issuer):
    from tests.servers.oauth_authority import OAuthAuthority

    authority = OAuthAuthority(oauth_tls, jwt_issuer)
    request.addfinalizer(authority.stop)
    authority.start()
    yield authority
    assert not authority.problems, "unexpected OAuth2 requests:\n" + "\n".join(authority.problems)


@pytest.fixture
def dovecot_oauth2(request: pytest.FixtureRequest, jwt_issuer) -> DovecotServer:
    server = DovecotServer(oauth2=jwt_issuer)
    request.addfinalizer(server.close)
    server.start()
    return server


@pytest.fixture
def smtp_oauth2(request: pytest.FixtureRequest, jwt_issuer) -> SmtpCapture:
    server = SmtpCapture(oauth2=jwt_issuer)
    request.addfinalizer(server.stop)
    server.start()
    return server


@pytest.fixture
def graph_server(request: pytest.FixtureRequest, oauth_tls, jwt_issuer):
    """A strict fake Graph endpoint; fails the test if mailbot sent it anything unexpected.
    Small pages (3 per delta page) so that paging is exercised everywhere."""
    from tests.servers.graph_fake import GraphFake

    server = GraphFake(oauth_tls, jwt_issuer, max_page_size=3)
    request.addfinalizer(server.stop)
    server.start()
    yield server
    assert not server.problems, "unexpected Graph requests:\n" + "\n".join(server.problems)

"""OAuth2 tokens through msal against the local HTTPS authority, and OAuth2 logins to real
servers (Dovecot's oauth2 passdb, aiosmtpd with XOAUTH2) when a token runs out.

The msal tests pass msal a ``requests.Session`` with ``trust_env=False`` that trusts the test CA
only: this machine's ``REQUESTS_CA_BUNDLE`` would otherwise override ``Session.verify``.
"""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailbot.transport.base import TransportError
from mailbot.transport.imap import ImapMailbox
from mailbot.transport.oauth import (MsalTokenProvider, OAuthError, OAuthSettings,
                                     StaticTokenProvider, token_claims)
from mailbot.transport.smtp import SmtpSender
from tests.mailkit import make_mail
from tests.servers.oauth_jwt import CLIENT_ID, GRAPH, OUTLOOK


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _provider(authority, tls, *, scopes=(f"{OUTLOOK}/.default",), **kwargs) -> MsalTokenProvider:
    values = dict(tenant_id=authority.tenant, client_id=CLIENT_ID, scopes=tuple(scopes),
                  client_secret="s3cret", authority=authority.authority)
    values.update({k: kwargs.pop(k) for k in list(kwargs) if k in OAuthSettings.__dataclass_fields__})
    return MsalTokenProvider(OAuthSettings(**values), http_client=tls.session(), **kwargs)


def test_token_is_cached_and_renewed_before_it_expires(oauth_authority, oauth_tls):
    oauth_authority.register_app(secret="s3cret", roles={GRAPH: ["Mail.ReadWrite"]})
    clock = Clock()
    provider = _provider(oauth_authority, oauth_tls, scopes=(f"{GRAPH}/.default",), clock=clock,
                         refresh_margin=300)
    first = provider.token()
    assert token_claims(first)["roles"] == ["Mail.ReadWrite"] and token_claims(first)["aud"] == GRAPH
    clock.now += 3600 - 301  # five minutes and a second before the end: still good
    assert provider.token() == first
    clock.now += 2  # within the margin: a new one, before the old one runs out
    second = provider.token()
    assert second != first and provider.acquired == 2
    provider.invalidate(second)  # a server refused it
    assert provider.token() not in (first, second)
    assert len(oauth_authority.token_requests) == 3


def test_client_certificate_instead_of_a_secret(oauth_authority, oauth_tls, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailbot")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256()))
    pem = tmp_path / "mailbot.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw"))
                    + cert.public_bytes(serialization.Encoding.PEM))
    oauth_authority.register_app(certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
                                 roles={OUTLOOK: ["IMAP.AccessAsApp"]})
    provider = _provider(oauth_authority, oauth_tls, client_secret=None, certificate_path=pem,
                         certificate_password="pw")
    assert token_claims(provider.token())["roles"] == ["IMAP.AccessAsApp"]
    # a certificate the app registration does not know is refused, with Entra ID's number
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"pw"))
                    + cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(OAuthError) as caught:
        _provider(oauth_authority, oauth_tls, client_secret=None, certificate_path=pem,
                  certificate_password="pw").token()
    assert caught.value.aadsts == "AADSTS700027"


@pytest.mark.parametrize("change, aadsts", [
    ({"client_secret": "wrong"}, "AADSTS7000215"),
    ({"client_id": "99999999-0000-0000-0000-000000000000"}, "AADSTS700016"),
    ({"scopes": (f"{OUTLOOK}/IMAP.AccessAsApp",)}, "AADSTS1002012"),
])
def test_refusals_carry_entra_id_error_numbers(oauth_authority, oauth_tls, change, aadsts):
    oauth_authority.register_app(secret="s3cret")
    with pytest.raises(OAuthError) as caught:
        _provider(oauth_authority, oauth_tls, **change).token()
    assert caught.value.aadsts == aadsts
    assert isinstance(caught.value, TransportError)  # the daemon backs off and tries again


def test_unknown_tenant_or_unreachable_authority_is_an_oauth_error(oauth_authority, oauth_tls):
    with pytest.raises(OAuthError, match="authority") as caught:
        _provider(oauth_authority, oauth_tls, tenant_id="no-such-tenant").token()
    assert caught.value.code == "authority"
    with pytest.raises(OAuthError) as caught:
        MsalTokenProvider(OAuthSettings(tenant_id=oauth_authority.tenant, client_id=CLIENT_ID,
                                        scopes=(f"{OUTLOOK}/.default",), client_secret="s3cret",
                                        authority="https://127.0.0.1:9"),
                          http_client=oauth_tls.session()).token()
    assert caught.value.code in ("authority", "network")


def test_device_code_without_a_sign_in_says_what_to_do(oauth_authority, oauth_tls, tmp_path):
    oauth_authority.register_app("public", public=True)
    provider = _provider(oauth_authority, oauth_tls, client_id="public", client_secret=None,
                         flow="device_code", token_cache=tmp_path / "cache.json",
                         username="complaints@example.org")
    with pytest.raises(OAuthError, match="mailbot auth login") as caught:
        provider.token()
    assert caught.value.code == "login_required"


# -- a token running out while the daemon runs: IMAP and SMTP -----------------------------------
def test_imap_reconnect_after_the_token_expired_gets_a_new_one_and_loses_nothing(
        dovecot_oauth2, oauth_authority, oauth_tls):
    """Exchange Online ends an IMAP session when its token expires; the reconnect must log in
    with a new token.  The provider's clock stands still, so it still believes in the old
    token: the server's refusal alone must make it fetch a new one."""
    oauth_authority.register_app(secret="s3cret", roles={OUTLOOK: ["IMAP.AccessAsApp"]},
                                 email=dovecot_oauth2.user)
    oauth_authority.ttl = 3
    provider = _provider(oauth_authority, oauth_tls, refresh_margin=0, clock=Clock())
    mails = [make_mail(subject=f"m {i}") for i in range(4)]
    for raw in mails[:2]:
        dovecot_oauth2.append(raw)
    box = ImapMailbox(dovecot_oauth2.host, dovecot_oauth2.port, "none", dovecot_oauth2.user, "",
                      timeout=10, token_provider=provider)
    handled: list[str] = []
    try:
        first = box.fetch(10)
        box.move([m.uid for m in first], "processed")
        handled += [m.uid for m in first]
        # the token has expired (JWT times are whole seconds, and the server may allow the
        # very second of exp: wait a full second past it)
        time.sleep(4.5)
        for raw in mails[2:]:
            dovecot_oauth2.append(raw)
        dovecot_oauth2.restart()  # the session ends, as Exchange Online ends it
        with pytest.raises(TransportError):
            box.fetch(10)  # the dead connection; the daemon backs off and tries again
        second = box.fetch(10)
        box.move([m.uid for m in second], "processed")
        handled += [m.uid for m in second]
    finally:
        box.close()
    assert len(handled) == len(set(handled)) == 4
    assert [m.raw for m in first + second] == [r.replace(b"\n", b"\r\n") if b"\r\n" not in r else r
                                               for r in mails]
    assert dovecot_oauth2.uids() == []
    assert provider.acquired == 2  # the expired token was refused once and replaced
    assert "Token has expired" in dovecot_oauth2.log_text()


def test_smtp_login_with_an_expired_token_retries_once_with_a_new_one(smtp_oauth2):
    tokens = iter([smtp_oauth2.oauth2_token(ttl=-5), smtp_oauth2.oauth2_token()])
    provider = StaticTokenProvider(lambda: next(tokens))
    sender = SmtpSender(smtp_oauth2.host, smtp_oauth2.port, "none", "complaints@example.org",
                        timeout=10, token_provider=provider)
    try:
        sender.send(make_mail(to="jo@example.com"), "complaints@example.org", ["jo@example.com"])
    finally:
        sender.close()
    assert len(smtp_oauth2.wait_for(1)) == 1
    assert len(provider.refused) == 1 and "ExpiredSignatureError" in smtp_oauth2.oauth2_refusals[0]


def test_imap_token_for_another_mailbox_is_refused_after_one_retry(dovecot_oauth2):
    provider = StaticTokenProvider(dovecot_oauth2.oauth2_token(user="someone-else"))
    box = ImapMailbox(dovecot_oauth2.host, dovecot_oauth2.port, "none", dovecot_oauth2.user, "",
                      timeout=10, token_provider=provider)
    try:
        with pytest.raises(TransportError, match="OAuth2 login \\(XOAUTH2\\) refused"):
            box.fetch(10)
    finally:
        box.close()
    assert len(provider.refused) == 2

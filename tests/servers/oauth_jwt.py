"""Signed JWT access tokens for the tests, and their verification.

One :class:`JwtIssuer` plays Microsoft Entra ID's signing key: the OAuth2 authority fake issues
its tokens with it, and the servers that take tokens check them with its public key -- Dovecot
(``passdb oauth2`` with local validation, ``/work/shared/design/oauth2-in-tests.md``), the
aiosmtpd XOAUTH2 handler and the Graph fake.  Tokens look like Microsoft's v1 access tokens for
Exchange and Graph (``aud``, ``iss`` ``https://sts.windows.net/<tenant>/``, ``appid``, ``tid``,
``roles`` for application permissions or ``scp`` for delegated ones) plus an ``email`` claim,
which Dovecot needs to know whose mailbox the token opens.
"""

from __future__ import annotations

import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "00000000-aaaa-bbbb-cccc-000000000001"
GRAPH = "https://graph.microsoft.com"
OUTLOOK = "https://outlook.office365.com"

_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def _key(kid: str) -> rsa.RSAPrivateKey:
    # RSA key generation costs ~50 ms: one key per kid for the whole test run
    if kid not in _KEYS:
        _KEYS[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[kid]


class JwtIssuer:
    def __init__(self, tenant: str = TENANT, kid: str = "mailbot-test-key-1") -> None:
        self.tenant = tenant
        self.kid = kid
        self.issuer = f"https://sts.windows.net/{tenant}/"
        self._private = _key(kid)
        self.public_pem = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.issued = 0

    def issue(self, audience: str, *, email: str | None = None, roles: list[str] | None = None,
              scp: str | None = None, ttl: float = 3600, client_id: str = CLIENT_ID,
              subject: str | None = None, **extra) -> str:
        now = time.time()
        claims = {"aud": audience, "iss": self.issuer, "iat": int(now) - 1, "nbf": int(now) - 1,
                  "exp": int(now + ttl), "appid": client_id, "tid": self.tenant,
                  "sub": subject or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{client_id}/{email}")),
                  "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"oid/{client_id}/{email}")),
                  "uti": uuid.uuid4().hex[:22], "ver": "1.0"}
        if email is not None:
            claims["email"] = email
        if roles is not None:
            claims["roles"] = list(roles)
        if scp is not None:
            claims["scp"] = scp
        claims.update(extra)
        self.issued += 1
        return jwt.encode(claims, self._private, algorithm="RS256",
                          headers={"kid": self.kid, "typ": "JWT"})

    def verify(self, token: str, audience: str | list[str] | None = None, leeway: float = 0) -> dict:
        """The claims, or a ``jwt.InvalidTokenError`` (expired, wrong key/audience/issuer...)."""
        header = jwt.get_unverified_header(token)
        if header.get("kid") != self.kid:
            raise jwt.InvalidTokenError(f"unknown signing key {header.get('kid')!r}")
        return jwt.decode(token, self.public_pem, algorithms=["RS256"], audience=audience,
                          issuer=self.issuer, leeway=leeway,
                          options={"require": ["exp", "iss", "aud", "nbf"],
                                   "verify_aud": audience is not None})

"""OAuth 2.0 access tokens for Microsoft 365 mailboxes (IMAP, SMTP and Microsoft Graph), via msal.

Why: Exchange Online no longer accepts passwords for IMAP and SMTP, and Graph only takes
bearer tokens.  The transports never deal with OAuth themselves: they ask a *token provider*
for a token right before they need one (an IMAP or SMTP login, each Graph request) and tell it
when the server refused that token.  The provider:

* caches the token and asks for a new one ``refresh_margin`` seconds before it expires, so a
  long-running daemon never presents an expired token on purpose;
* forgets a token the server refused (:meth:`TokenProvider.invalidate`), so the next request
  gets a fresh one -- a token can end early (clock skew, revocation, a tenant policy), and the
  transports retry once after a refusal;
* turns msal's error answers (``AADSTS7000215: Invalid client secret provided`` ...) into
  :class:`OAuthError`, a :class:`TransportError` that ``mailbot doctor`` explains.

Two flows, as Microsoft documents them:

* ``client_credentials`` (an app registration acting on its own, with a client secret or a
  certificate): for an unattended daemon.  Scopes end in ``/.default``: the application
  permissions granted to the app (``IMAP.AccessAsApp``/``SMTP.SendAsApp`` on Office 365 Exchange
  Online, or ``Mail.ReadWrite``/``Mail.Send`` on Microsoft Graph).
* ``device_code`` (a person signs in once as the complaints mailbox, or as someone with access
  to it): ``mailbot auth login`` shows a code to enter at Microsoft's device login page; the
  tokens (with a refresh token) are kept in ``token_cache`` (a file readable by its owner
  only), and the daemon renews them silently from there.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlsplit

from mailbot.transport.base import TransportError

log = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
#: Hosts msal knows as Microsoft's own: no need to turn off its authority validation for them.
MICROSOFT_AUTHORITY_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us",
                             "login.partner.microsoftonline.cn", "login.microsoft.com",
                             "login.windows.net", "login.microsoftonline.de"}

#: Default scopes per use and flow (Microsoft's documentation: "Authenticate an IMAP, POP or SMTP
#: connection using OAuth" and the Graph permissions reference).
SCOPES = {
    ("outlook", "client_credentials"): ["https://outlook.office365.com/.default"],
    ("outlook", "device_code"): ["https://outlook.office.com/IMAP.AccessAsUser.All",
                                 "https://outlook.office.com/SMTP.Send"],
    ("graph", "client_credentials"): ["https://graph.microsoft.com/.default"],
    ("graph", "device_code"): ["https://graph.microsoft.com/Mail.ReadWrite",
                               "https://graph.microsoft.com/Mail.Send"],
}


class OAuthError(TransportError):
    """No token could be had.  ``code`` is the OAuth error (``invalid_client``...), ``aadsts`` the
    Microsoft Entra error number when there is one (``AADSTS7000215``)."""

    def __init__(self, message: str, code: str = "", aadsts: str = ""):
        super().__init__(message)
        self.code, self.aadsts = code, aadsts


class TokenProvider(Protocol):
    description: str

    def token(self) -> str:
        """A bearer token valid for a while yet (fetched or renewed when needed)."""
        ...

    def invalidate(self, token: str) -> None:
        """The server refused ``token``: never hand it out again."""
        ...


class StaticTokenProvider:
    """A fixed token, or whatever a function returns: for tests and for tokens made elsewhere."""

    def __init__(self, token: str | Callable[[], str], description: str = "static token"):
        self._source = token if callable(token) else (lambda: token)
        self.description = description
        self.refused: list[str] = []

    def token(self) -> str:
        return self._source()

    def invalidate(self, token: str) -> None:
        self.refused.append(token)


@dataclass(frozen=True)
class OAuthSettings:
    """An app registration and how to get tokens from it (from ``[mailbox]``/``[outgoing]``)."""

    tenant_id: str
    client_id: str
    scopes: tuple[str, ...]
    flow: str = "client_credentials"  # client_credentials | device_code
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: Path | None = None  # PEM with the private key and the certificate
    certificate_password: str | None = field(default=None, repr=False)
    authority: str = DEFAULT_AUTHORITY
    token_cache: Path | None = None  # device_code: where the refresh token is kept
    username: str | None = None  # device_code: the account that signed in
    timeout: float = 30

    @property
    def authority_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}"


def _error_from(result: dict, what: str) -> OAuthError:
    code = result.get("error", "error")
    description = " ".join(str(result.get("error_description", "")).split())
    aadsts = description.split(":", 1)[0] if description.startswith("AADSTS") else ""
    return OAuthError(f"{what}: {code}: {description}" if description else f"{what}: {code}",
                      code=code, aadsts=aadsts)


def _read_certificate(settings: OAuthSettings) -> dict:
    """msal's client_credential for a certificate: the private key and the certificate from one
    PEM file (msal works out the SHA-256 thumbprint from the certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    path = settings.certificate_path
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise OAuthError(f"cannot read the client certificate {path}: {exc}",
                         code="certificate") from exc
    password = settings.certificate_password.encode() if settings.certificate_password else None
    try:
        serialization.load_pem_private_key(data, password=password)
        cert = x509.load_pem_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise OAuthError(f"{path} must hold the private key and the certificate in PEM "
                         f"(and client_certificate_password_env if the key is encrypted): {exc}",
                         code="certificate") from exc
    credential = {"private_key": data.decode(),
                  "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode()}
    if settings.certificate_password:
        credential["passphrase"] = settings.certificate_password
    return credential


class MsalTokenProvider:
    """Tokens from Microsoft Entra ID through msal (see the module docstring).

    ``http_client``: a ``requests.Session``-like object for msal (tests pass one that trusts a
    local certificate authority); default: msal's own session."""

    def __init__(self, settings: OAuthSettings, *, http_client=None, refresh_margin: float = 300,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.http_client = http_client
        self.refresh_margin = refresh_margin
        self.clock = clock
        self.description = (f"OAuth2 ({settings.flow}) for app {settings.client_id} in tenant "
                            f"{settings.tenant_id}")
        self._app = None
        self._cache = None
        self._cache_mtime: float | None = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        #: how many tokens were fetched (not served from the cache): for logs and tests
        self.acquired = 0

    # -- msal application ------------------------------------------------------------------------
    def _make_app(self):
        import msal

        s = self.settings
        kwargs: dict = {"authority": s.authority_url, "timeout": s.timeout}
        if (urlsplit(s.authority).hostname or "") not in MICROSOFT_AUTHORITY_HOSTS:
            kwargs["instance_discovery"] = False  # a private or test authority msal cannot know
        if self.http_client is not None:
            kwargs["http_client"] = self.http_client
        try:
            if s.flow == "device_code":
                self._cache = msal.SerializableTokenCache()
                self._load_cache()
                return msal.PublicClientApplication(s.client_id, token_cache=self._cache, **kwargs)
            if s.certificate_path:
                credential = _read_certificate(s)
            elif s.client_secret:
                credential = s.client_secret
            else:
                raise OAuthError("no client secret and no client certificate configured",
                                 code="configuration")
            return msal.ConfidentialClientApplication(s.client_id, client_credential=credential,
                                                      **kwargs)
        except OAuthError:
            raise
        except ValueError as exc:  # msal: authority/tenant discovery failed
            raise OAuthError(f"cannot use the authority {s.authority_url}: {exc}",
                             code="authority") from exc
        except Exception as exc:  # noqa: BLE001 - network trouble reaching the authority
            raise OAuthError(f"cannot reach {s.authority_url}: {type(exc).__name__}: {exc}",
                             code="network") from exc

    def _application(self):
        if self._app is None:
            self._app = self._make_app()
        return self._app

    # -- device-code token cache (a file) ---------------------------------------------------------
    def _load_cache(self) -> None:
        path = self.settings.token_cache
        if path is None or self._cache is None:
            return
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return
        if self._cache_mtime == stat.st_mtime:
            return
        self._cache.deserialize(Path(path).read_text(encoding="utf-8"))
        self._cache_mtime = stat.st_mtime

    def _save_cache(self) -> None:
        path = self.settings.token_cache
        if path is None or self._cache is None or not self._cache.has_state_changed:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".token-cache-")
        try:
            os.fchmod(fd, 0o600)  # it holds a refresh token: owner only
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self._cache.serialize())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._cache.has_state_changed = False
        self._cache_mtime = os.stat(path).st_mtime

    # -- tokens -----------------------------------------------------------------------------------
    def token(self) -> str:
        with self._lock:
            now = self.clock()
            if self._token is not None and self._expires_at - now > self.refresh_margin:
                return self._token
            result = self._acquire()
            if "access_token" not in result:
                raise _error_from(result, f"no OAuth2 token for app {self.settings.client_id}")
            self._token = result["access_token"]
            self._expires_at = now + float(result.get("expires_in", 3600))
            self.acquired += 1
            log.debug("%s: new token, valid for %s s", self.description, result.get("expires_in"))
            return self._token

    def _acquire(self) -> dict:
        app = self._application()
        scopes = list(self.settings.scopes)
        try:
            if self.settings.flow == "device_code":
                self._load_cache()
                accounts = app.get_accounts(username=self.settings.username) if \
                    self.settings.username else []
                if not accounts:
                    # signed in as someone with access to the mailbox (a delegate), not as it
                    everyone = app.get_accounts()
                    accounts = everyone if len(everyone) == 1 else []
                if not accounts:
                    raise OAuthError(
                        f"no signed-in account{' ' + self.settings.username if self.settings.username else ''} "
                        f"in the token cache {self.settings.token_cache}: run `mailbot auth login`",
                        code="login_required")
                # force_refresh: our own cache decided a new token is due (msal would hand back
                # its cached one until 5 minutes before expiry, also one a server refused)
                result = app.acquire_token_silent_with_error(scopes, account=accounts[0],
                                                             force_refresh=True)
                self._save_cache()
                if result is None:
                    raise OAuthError("the cached sign-in can no longer be renewed: run "
                                     "`mailbot auth login` again", code="login_required")
                return result
            self._forget_msal_access_tokens(app)
            return app.acquire_token_for_client(scopes=scopes)
        except OAuthError:
            raise
        except Exception as exc:  # noqa: BLE001 - requests/msal network errors
            raise OAuthError(f"cannot reach {self.settings.authority_url}: "
                             f"{type(exc).__name__}: {exc}", code="network") from exc

    @staticmethod
    def _forget_msal_access_tokens(app) -> None:
        """We only ask msal when our own copy is due or was refused: make it fetch a new one."""
        import msal

        cache = app.token_cache
        for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(item)

    def invalidate(self, token: str) -> None:
        with self._lock:
            if token == self._token:
                self._token, self._expires_at = None, 0.0

    # -- device-code sign-in (``mailbot auth login``) -----------------------------------------------
    def login(self, show: Callable[[str], None]) -> dict:
        """Run the device-code flow: ``show`` gets Microsoft's instruction ("To sign in, use a web
        browser to open ... and enter the code ..."); returns the signed-in account's claims."""
        if self.settings.flow != "device_code":
            raise OAuthError("`mailbot auth login` is for oauth_flow = \"device_code\"; the "
                             "client_credentials flow needs no sign-in", code="configuration")
        app = self._application()
        try:
            flow = app.initiate_device_flow(scopes=list(self.settings.scopes))
        except Exception as exc:  # noqa: BLE001
            raise OAuthError(f"cannot start the device sign-in: {exc}", code="network") from exc
        if "user_code" not in flow:
            raise _error_from(flow, "cannot start the device sign-in")
        show(flow["message"])
        result = app.acquire_token_by_device_flow(flow)
        if "access_token" not in result:
            raise _error_from(result, "sign-in failed")
        self._save_cache()
        with self._lock:
            self._token = result["access_token"]
            self._expires_at = self.clock() + float(result.get("expires_in", 3600))
            self.acquired += 1
        return result.get("id_token_claims") or {}

    def accounts(self) -> list[str]:
        """User names signed in and kept in the token cache (device_code)."""
        if self.settings.flow != "device_code":
            return []
        app = self._application()
        self._load_cache()
        return [a.get("username", "") for a in app.get_accounts()]


def token_claims(token: str) -> dict:
    """The claims of a JWT access token, *unverified*: only to explain things (which roles an
    app token carries), never to trust them."""
    import jwt

    try:
        return jwt.decode(token, options={"verify_signature": False})
    except Exception:  # noqa: BLE001 - not every token is a JWT
        return {}


# -- from the configuration ---------------------------------------------------------------------
def settings_from_config(config, section: str, use: str) -> OAuthSettings:
    """OAuthSettings for ``[mailbox]`` (``section="mailbox"``) or ``[outgoing]``; ``use`` is
    ``"outlook"`` (IMAP/SMTP) or ``"graph"``.  ``[outgoing]`` keys left unset are taken from
    ``[mailbox]``, so one app registration serves both.  Secrets are read here, from the
    environment variables the config names."""
    from mailbot.config import ConfigError

    box = config.mailbox
    own = getattr(config, section)

    def pick(name: str):
        value = getattr(own, name, None)
        if value is None and section != "mailbox":
            value = getattr(box, name, None)
        return value

    flow = pick("oauth_flow") or "client_credentials"
    secret_env = pick("client_secret_env")
    certificate = pick("client_certificate")
    secret = None
    if flow == "client_credentials" and not certificate:
        if not secret_env:
            raise ConfigError(f"{section}.client_secret_env: give the environment variable that "
                              "holds the client secret (or client_certificate)")
        if secret_env not in os.environ:
            raise ConfigError(f"{section}.client_secret_env: environment variable {secret_env} "
                              "is not set")
        secret = os.environ[secret_env]
    password = None
    password_env = pick("client_certificate_password_env")
    if certificate and password_env:
        if password_env not in os.environ:
            raise ConfigError(f"{section}.client_certificate_password_env: environment variable "
                              f"{password_env} is not set")
        password = os.environ[password_env]
    scopes = pick("oauth_scopes") or SCOPES[(use, flow)]
    username = pick("username") or getattr(box, "primary_smtp_address", None)
    return OAuthSettings(
        tenant_id=pick("tenant_id") or "", client_id=pick("client_id") or "",
        scopes=tuple(scopes), flow=flow, client_secret=secret, certificate_path=certificate,
        certificate_password=password, authority=pick("oauth_authority") or DEFAULT_AUTHORITY,
        token_cache=pick("token_cache"), username=username,
        timeout=min(float(getattr(own, "timeout_seconds", 30)), 60))


def provider_from_config(config, section: str, use: str, **kwargs) -> MsalTokenProvider:
    return MsalTokenProvider(settings_from_config(config, section, use), **kwargs)


def describe_claims(claims: dict) -> str:
    """A short, human description of who a token is for (for the doctor)."""
    parts = []
    if claims.get("roles"):
        parts.append("application permissions " + ", ".join(sorted(claims["roles"])))
    if claims.get("scp"):
        parts.append("delegated permissions " + ", ".join(sorted(str(claims["scp"]).split())))
    if claims.get("aud"):
        parts.append(f"for {claims['aud']}")
    return "; ".join(parts) or json.dumps(sorted(claims))

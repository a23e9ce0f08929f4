"""A local OAuth 2.0 authority that msal accepts, standing in for Microsoft Entra ID.

msal needs an https authority (``https://127.0.0.1:PORT/<tenant>``); with
``instance_discovery=False`` it fetches ``/<tenant>/v2.0/.well-known/openid-configuration``
and then talks to the endpoints named there.  This server implements what mailbot uses, in
the shapes of Microsoft's identity platform (v2.0 endpoints):

* ``POST /<tenant>/oauth2/v2.0/token``
  - ``grant_type=client_credentials`` with ``client_secret`` or a certificate
    ``client_assertion`` (a JWT signed with the app's key, checked against the registered
    certificate: signature, ``aud`` = the token endpoint, ``iss`` = ``sub`` = client id, ``exp``),
    one scope ``<resource>/.default``;
  - ``grant_type=urn:ietf:params:oauth:grant-type:device_code`` (``authorization_pending`` once,
    then tokens with a refresh token, an id_token and client_info);
  - ``grant_type=refresh_token``;
* ``POST /<tenant>/oauth2/v2.0/devicecode``.

Refusals use Microsoft's error shapes (``{"error": "invalid_client", "error_description":
"AADSTS7000215: Invalid client secret provided. ...", "error_codes": [7000215], ...}``), so
mailbot's explanations are tested against what Entra ID says.  Every request is validated;
anything unexpected is answered with ``invalid_request`` and recorded in :attr:`problems`.

Access tokens are JWTs from a :class:`~tests.servers.oauth_jwt.JwtIssuer`, valid for
:attr:`OAuthAuthority.ttl` seconds (tests shorten it to make tokens expire during a run).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import jwt
from cryptography import x509

from tests.servers.oauth_jwt import CLIENT_ID, JwtIssuer
from tests.servers.oauth_tls import TestTLS

HOST = "127.0.0.1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
OIDC_SCOPES = {"openid", "profile", "offline_access"}


@dataclass
class App:
    client_id: str
    secret: str | None = None
    certificate: x509.Certificate | None = None
    #: application permissions per resource, e.g. {"https://graph.microsoft.com": ["Mail.ReadWrite"]}
    roles: dict[str, list[str]] = field(default_factory=dict)
    #: the ``email`` claim of its app-only tokens (Dovecot maps a token to a mailbox by it)
    email: str | None = None
    public: bool = False  # a public client (device code), no secret


@dataclass
class DeviceCode:
    client_id: str
    scopes: list[str]
    user: str
    polls: int = 0
    used: bool = False


def _aad_error(status: int, error: str, number: int, text: str) -> tuple[int, dict]:
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return status, {
        "error": error,
        "error_description": f"AADSTS{number}: {text} Trace ID: {trace} Correlation ID: {corr} "
                             f"Timestamp: {stamp}",
        "error_codes": [number], "timestamp": stamp, "trace_id": trace, "correlation_id": corr,
    }


class OAuthAuthority:
    def __init__(self, tls: TestTLS, issuer: JwtIssuer | None = None, *, ttl: float = 3600) -> None:
        self.tls = tls
        self.jwt = issuer or JwtIssuer()
        self.tenant = self.jwt.tenant
        self.ttl = ttl
        self.apps: dict[str, App] = {}
        self.user = "complaints@example.org"  # who signs in with the device code
        self._codes: dict[str, DeviceCode] = {}
        self._refresh: dict[str, tuple[str, list[str], str]] = {}  # token -> (client, scopes, user)
        self._lock = threading.Lock()
        #: (grant_type, client_id, scope) of every token request, in order
        self.token_requests: list[tuple[str, str, str]] = []
        self.problems: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def register_app(self, client_id: str = CLIENT_ID, *, secret: str | None = None,
                     certificate_pem: bytes | None = None, roles: dict[str, list[str]] | None = None,
                     email: str | None = None, public: bool = False) -> App:
        app = App(client_id, secret,
                  x509.load_pem_x509_certificate(certificate_pem) if certificate_pem else None,
                  roles or {}, email, public)
        self.apps[client_id] = app
        return app

    def start(self) -> "OAuthAuthority":
        authority = self

        class Handler(_Handler):
            fake = authority

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        context = self.tls.server_context()
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True, name="oauth-authority").start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    @property
    def base(self) -> str:
        return f"https://{HOST}:{self._server.server_address[1]}"

    @property
    def authority(self) -> str:
        """What goes into ``oauth_authority`` (the tenant is appended by mailbot/msal)."""
        return self.base

    @property
    def token_endpoint(self) -> str:
        return f"{self.base}/{self.tenant}/oauth2/v2.0/token"

    # -- requests -------------------------------------------------------------------------------
    def handle(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict]:
        prefix = f"/{self.tenant}"
        if not path.startswith(prefix + "/"):
            return _aad_error(400, "invalid_tenant", 90002,
                              f"Tenant '{path.strip('/').split('/')[0]}' not found. Check to make "
                              "sure you have the correct tenant ID and are signing into the "
                              "correct cloud.")
        rest = path[len(prefix):]
        with self._lock:
            if method == "GET" and rest == "/v2.0/.well-known/openid-configuration":
                return 200, self._openid_configuration()
            if method == "POST" and rest == "/oauth2/v2.0/token":
                return self._token(form)
            if method == "POST" and rest == "/oauth2/v2.0/devicecode":
                return self._devicecode(form)
        return self._invalid(f"{method} {path} is not an endpoint of this authority", 404)

    def _invalid(self, problem: str, status: int = 400) -> tuple[int, dict]:
        self.problems.append(problem)
        return _aad_error(status, "invalid_request", 900144, problem)

    def _openid_configuration(self) -> dict:
        t = f"{self.base}/{self.tenant}"
        return {
            "token_endpoint": f"{t}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{t}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{t}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{t}/oauth2/v2.0/devicecode",
            "http_logout_supported": True, "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{t}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "tid", "email"],
            "kerberos_endpoint": f"{t}/kerberos", "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com", "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com", "rbac_url": "https://pas.windows.net",
        }

    def _client(self, form: dict[str, str]) -> tuple[App | None, tuple[int, dict] | None]:
        client_id = form.get("client_id", "")
        app = self.apps.get(client_id)
        if app is None:
            return None, _aad_error(400, "unauthorized_client", 700016,
                                    f"Application with identifier '{client_id}' was not found in the "
                                    f"directory '{self.tenant}'. This can happen if the application "
                                    "has not been installed by the administrator of the tenant.")
        if app.public:
            return app, None
        if "client_secret" in form:
            if app.secret is None or not secrets.compare_digest(form["client_secret"], app.secret):
                return None, _aad_error(401, "invalid_client", 7000215,
                                        "Invalid client secret provided. Ensure the secret being "
                                        f"sent in the request is the client secret value, not the "
                                        f"client secret ID, for a secret added to app '{client_id}'.")
            return app, None
        if form.get("client_assertion_type") == ASSERTION_TYPE and "client_assertion" in form:
            problem = self._check_assertion(app, form["client_assertion"])
            if problem:
                return None, _aad_error(401, "invalid_client", 700027, problem)
            return app, None
        return None, _aad_error(401, "invalid_client", 7000218,
                                "The request body must contain the following parameter: "
                                "'client_assertion' or 'client_secret'.")

    def _check_assertion(self, app: App, assertion: str) -> str | None:
        if app.certificate is None:
            return "Client assertion failed signature validation: no certificate registered."
        header = jwt.get_unverified_header(assertion)
        der = app.certificate.public_bytes(serialization_der())
        expected = {"x5t#S256": _b64(hashlib.sha256(der).digest()),
                    "x5t": _b64(hashlib.sha1(der).digest())}  # noqa: S324 - as Entra accepts it
        if not any(str(header.get(k, '')).rstrip('=') == v for k, v in expected.items()):
            return "Client assertion contains an invalid signature. [Reason - The key was not found.]"
        try:
            claims = jwt.decode(assertion, app.certificate.public_key(), algorithms=["PS256", "RS256"],
                                audience=self.token_endpoint, options={"require": ["exp", "iss", "sub"]})
        except jwt.InvalidTokenError as exc:
            return f"Client assertion failed signature validation. [Reason - {exc}]"
        if claims["iss"] != app.client_id or claims["sub"] != app.client_id:
            return "Client assertion iss/sub must be the client id."
        return None

    def _resource(self, scopes: list[str]) -> tuple[str, list[str]] | tuple[None, str]:
        real = [s for s in scopes if s not in OIDC_SCOPES]
        resources = {s.rsplit("/", 1)[0] for s in real}
        if len(resources) != 1:
            return None, f"scopes for {len(resources)} resources: {real}"
        return resources.pop(), [s.rsplit("/", 1)[1] for s in real]

    def _token(self, form: dict[str, str]) -> tuple[int, dict]:
        grant = form.get("grant_type", "")
        self.token_requests.append((grant, form.get("client_id", ""), form.get("scope", "")))
        app, refusal = self._client(form)
        if refusal:
            return refusal
        if grant == "client_credentials":
            scopes = form.get("scope", "").split()
            if len(scopes) != 1 or not scopes[0].endswith("/.default"):
                return _aad_error(400, "invalid_scope", 1002012,
                                  f"The provided value for scope {form.get('scope')} is not valid. "
                                  "Client credential flows must have a scope value with /.default "
                                  "suffixed to the resource identifier (application ID URI).")
            resource = scopes[0].removesuffix("/.default")
            token = self.jwt.issue(resource, email=app.email, roles=app.roles.get(resource, []),
                                   ttl=self.ttl, client_id=app.client_id)
            return 200, {"token_type": "Bearer", "expires_in": int(self.ttl),
                         "ext_expires_in": int(self.ttl), "access_token": token}
        if grant == DEVICE_GRANT:
            code = self._codes.get(form.get("device_code", ""))
            if code is None or code.used or code.client_id != app.client_id:
                return _aad_error(400, "invalid_grant", 70019, "Verification code expired.")
            code.polls += 1
            if code.polls == 1:  # the person has not entered the code yet
                return _aad_error(400, "authorization_pending", 70016,
                                  "OAuth 2.0 device flow error. Authorization is pending. Continue "
                                  "polling.")
            code.used = True
            return self._user_tokens(app, code.scopes, code.user)
        if grant == "refresh_token":
            # as with Entra ID, a refresh token stays valid after use (a new one comes along)
            known = self._refresh.get(form.get("refresh_token", ""))
            if known is None or known[0] != app.client_id:
                return _aad_error(400, "invalid_grant", 700082,
                                  "The refresh token has expired due to inactivity.")
            scopes = form.get("scope", "").split() or known[1]
            return self._user_tokens(app, scopes, known[2])
        return self._invalid(f"grant_type {grant!r} is not expected from mailbot")

    def _user_tokens(self, app: App, scopes: list[str], user: str) -> tuple[int, dict]:
        resource, names = self._resource(scopes)
        if resource is None:
            return _aad_error(400, "invalid_request", 28000,
                              f"Provided value for the input parameter scope is not valid because "
                              f"it contains more than one resource. {names}")
        token = self.jwt.issue(resource, email=user, scp=" ".join(names), ttl=self.ttl,
                               client_id=app.client_id, upn=user)
        refresh = secrets.token_urlsafe(32)
        self._refresh[refresh] = (app.client_id, scopes, user)
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, user))
        now = int(time.time())
        id_token = jwt.encode({"aud": app.client_id, "iss": f"{self.base}/{self.tenant}/v2.0",
                               "iat": now, "nbf": now, "exp": now + 3600, "name": "Complaints",
                               "oid": oid, "preferred_username": user, "sub": oid,
                               "tid": self.tenant, "ver": "2.0"}, "id-token-key-not-checked-by-msal-0123456789",
                              algorithm="HS256")
        client_info = _b64(json.dumps({"uid": oid, "utid": self.tenant}).encode())
        return 200, {"token_type": "Bearer", "scope": " ".join(s for s in scopes
                                                                if s not in OIDC_SCOPES),
                     "expires_in": int(self.ttl), "ext_expires_in": int(self.ttl),
                     "access_token": token, "refresh_token": refresh, "id_token": id_token,
                     "client_info": client_info}

    def _devicecode(self, form: dict[str, str]) -> tuple[int, dict]:
        app = self.apps.get(form.get("client_id", ""))
        if app is None or not app.public:
            return _aad_error(400, "unauthorized_client", 700016,
                              f"Application with identifier '{form.get('client_id')}' was not "
                              "found in the directory, or is not a public client.")
        scopes = form.get("scope", "").split()
        resource, names = self._resource(scopes)
        if resource is None:
            return self._invalid(f"device code for {names}")
        user_code = secrets.token_hex(4).upper()
        device_code = secrets.token_urlsafe(24)
        self._codes[device_code] = DeviceCode(app.client_id, scopes, self.user)
        verify = "https://microsoft.com/devicelogin"
        return 200, {"user_code": user_code, "device_code": device_code,
                     "verification_uri": verify, "expires_in": 900, "interval": 0,
                     "message": f"To sign in, use a web browser to open the page {verify} and "
                                f"enter the code {user_code} to authenticate."}


def serialization_der():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.DER


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    fake: OAuthAuthority

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _run(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        form: dict[str, str] = {}
        if method == "POST":
            ctype = self.headers.get("Content-Type", "")
            if not ctype.startswith("application/x-www-form-urlencoded"):
                self.fake.problems.append(f"POST {path} with Content-Type {ctype!r}")
                self._answer(*_aad_error(400, "invalid_request", 900144, "not a form post"))
                return
            form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        try:
            status, body = self.fake.handle(method, path, form)
        except Exception as exc:  # a bug in the fake must fail the test, not hang it
            self.fake.problems.append(f"authority crashed: {type(exc).__name__}: {exc}")
            status, body = 500, {"error": "server_error"}
        self._answer(status, body)

    def do_GET(self) -> None:
        self._run("GET")

    def do_POST(self) -> None:
        self._run("POST")

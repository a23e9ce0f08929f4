"""An SMTP server on loopback that captures what mailbot sends.

Why a real SMTP server and not a mocked ``smtplib``: mailbot's sending code
must handle the real protocol -- envelope vs. header addresses, dot-stuffing,
AUTH, and above all temporary refusals (451) and outages during which the
acknowledgement must be retried, not lost and not sent twice.  aiosmtpd runs
in a thread of the test process, so captured messages are plain Python
objects the test can inspect directly.

Outage tests use :meth:`SmtpCapture.refuse` (answer with an error code for a
while) or :meth:`SmtpCapture.stop` / :meth:`SmtpCapture.start` (nothing
listening on the port, then back on the same port).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import errno
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"
# Fixed name for the greeting/EHLO: without it aiosmtpd calls
# socket.getfqdn(), which can stall on DNS on a machine without network.
SERVER_HOSTNAME = "smtp.mailbot-test.invalid"
STAGES = ("mail", "rcpt", "data")


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class CapturedMessage:
    """One message accepted by :class:`SmtpCapture`.

    ``raw`` is exactly what came after DATA (dot-stuffing undone, CRLF line
    ends); ``message`` parses it with ``email.policy.default`` on first use.
    """

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    peer: tuple | str | None = None
    #: login name used for SMTP AUTH, or None when the client did not log in
    auth_login: str | None = None
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    #: ``time.monotonic()`` of this process when the handler received the end of DATA (before
    #: answering 250), for latency measurements (bench/latency.py)
    received_at: float | None = None

    @cached_property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)

    def __repr__(self) -> str:
        return (f"<CapturedMessage from={self.mail_from!r} to={self.rcpt_tos!r} "
                f"subject={self.message.get('Subject')!r} {len(self.raw)} bytes>")


class _Handler:
    """aiosmtpd handler: consults the refusal switch, records accepted mail."""

    def __init__(self, capture: "SmtpCapture") -> None:
        self.capture = capture

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        refusal = self.capture._take_refusal("mail")
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.capture._take_refusal("rcpt")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        received_at = time.monotonic()
        refusal = self.capture._take_refusal("data")
        if refusal:
            return refusal
        login = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode("utf-8", "replace")
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):  # only with decode_data=True, which we do not use
            raw = raw.encode("utf-8", "surrogateescape")
        self.capture._record(CapturedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            raw=bytes(raw),
            peer=session.peer,
            auth_login=login,
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            received_at=received_at,
        ))
        return "250 2.0.0 OK: queued"


class _OAuthHandler(_Handler):
    """Adds SASL XOAUTH2 and OAUTHBEARER (advertised in EHLO because the handler has these
    ``auth_*`` methods): the bearer token must be a JWT signed by the capture's issuer, not
    expired, for one of :attr:`SmtpCapture.oauth2_audiences`, whose ``email`` claim is the SASL
    user.  Refusals follow RFC 7628 / Microsoft's XOAUTH2: a ``334`` JSON error challenge, then
    ``535 5.7.3`` after the client's empty answer."""

    async def auth_XOAUTH2(self, server, args):
        return await self._bearer(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server, args):
        return await self._bearer(server, args, "OAUTHBEARER")

    async def _bearer(self, server, args, mechanism: str):
        import base64
        import binascii
        import json

        if len(args) == 2:
            blob = args[1].encode()
        else:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        try:
            text = base64.b64decode(blob, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(success=False, handled=False,
                              message="501 5.5.2 Cannot decode the AUTH response")
        user, token = self.capture._parse_bearer(text, mechanism)
        problem = self.capture._check_bearer(user, token)
        if problem is None:
            self.capture.oauth2_logins.append(user)
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        self.capture.oauth2_refusals.append(problem)
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://outlook.office.com/SMTP.Send"})
        await server.challenge_auth(error)  # the client answers with an empty line
        return AuthResult(success=False, handled=False,
                          message="535 5.7.3 Authentication unsuccessful")


class _BigLineSMTP:
    """aiosmtpd's SMTP with room for an AUTH line carrying a JWT (about 900 bytes; the stock
    limits are 512 for a command and 1001 for a line)."""

    @staticmethod
    def make(base):
        import collections

        class SMTPWithLongAuth(base):
            command_size_limit = 8192
            line_length_limit = 8192

            def __init__(self, *args, **kwargs):
                # the stock default factory reads SMTP.command_size_limit, not ours
                self.command_size_limits = collections.defaultdict(lambda: 8192)
                super().__init__(*args, **kwargs)
        return SMTPWithLongAuth


class _Controller(Controller):
    smtp_class = None  # set for OAuth2 captures

    def factory(self):
        if self.smtp_class is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS",
                                        UserWarning)
                warnings.filterwarnings("ignore", "auth_required == True but auth_callback",
                                        UserWarning)
                return self.smtp_class(self.handler, **self.SMTP_kwargs)
        # aiosmtpd warns on every connection that AUTH without TLS is unsafe;
        # on a loopback test port that is the point, and the warning would
        # break runs with -W error.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS",
                                    UserWarning)
            return super().factory()


class SmtpCapture:
    """aiosmtpd on ``127.0.0.1:<free port>`` that records every accepted message.

    * ``messages``: snapshot list of :class:`CapturedMessage` (thread-safe);
    * ``wait_for(n)``: block until ``n`` messages arrived, return them;
    * ``refuse(code, text, stage=..., times=...)`` / ``accept()``: switchable
      failure mode for outage tests;
    * ``stop()`` / ``start()``: take the listener away and back (same port);
    * ``auth_user``/``auth_password``: require SMTP AUTH PLAIN/LOGIN (no TLS:
      loopback only).
    """

    def __init__(self, *, auth_user: str | None = None, auth_password: str | None = None,
                 oauth2=None, oauth2_audiences: tuple[str, ...] = (
                     "https://outlook.office365.com", "https://outlook.office.com")) -> None:
        if (auth_user is None) != (auth_password is None):
            raise ValueError("give both auth_user and auth_password, or neither")
        self.auth_user = auth_user
        self.auth_password = auth_password
        # OAuth2: require AUTH XOAUTH2/OAUTHBEARER with tokens of this
        # tests.servers.oauth_jwt.JwtIssuer (oauth2=True: a new one)
        self.oauth2_issuer = None
        if oauth2:
            from tests.servers.oauth_jwt import JwtIssuer
            self.oauth2_issuer = oauth2 if isinstance(oauth2, JwtIssuer) else JwtIssuer()
        self.oauth2_audiences = list(oauth2_audiences)
        #: SASL users logged in with a valid token, and why refused tokens were refused
        self.oauth2_logins: list[str] = []
        self.oauth2_refusals: list[str] = []
        self._port = free_port()
        self._started_once = False
        self._controller: Controller | None = None
        self._cond = threading.Condition()
        self._messages: list[CapturedMessage] = []
        self._refusal: tuple[str, str] | None = None  # (stage, "451 text")
        self._refusals_left: int | None = None
        self.refused_count = 0

    # -- properties -------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def messages(self) -> list[CapturedMessage]:
        """Copy of the messages captured since the last :meth:`clear`."""
        with self._cond:
            return list(self._messages)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpCapture {HOST}:{self._port} {state} {len(self.messages)} messages>"

    # -- lifecycle --------------------------------------------------------

    def _make_controller(self) -> Controller:
        kwargs: dict = {}
        if self.auth_user is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        if self.oauth2_issuer is not None:
            from aiosmtpd.smtp import SMTP
            kwargs.update(auth_required=True)
            controller = _Controller(
                _OAuthHandler(self), hostname=HOST, port=self._port,
                server_hostname=SERVER_HOSTNAME, auth_require_tls=False, ready_timeout=10,
                **kwargs)
            controller.smtp_class = _BigLineSMTP.make(SMTP)
            return controller
        return _Controller(
            _Handler(self), hostname=HOST, port=self._port,
            server_hostname=SERVER_HOSTNAME,
            # Plain-text AUTH on a non-TLS loopback port is what we test.
            auth_require_tls=False,
            ready_timeout=10,
            **kwargs,
        )

    def start(self) -> "SmtpCapture":
        """Start listening (on the same port as before, after a :meth:`stop`).

        aiosmtpd's controller closes its event loop on stop, so every start
        builds a new one.  On the very first start a port lost to another
        process (race after :func:`free_port`) is replaced by a new one.
        """
        if self._controller is not None:
            return self
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            controller = self._make_controller()
            try:
                controller.start()
            except OSError as exc:
                controller.stop(no_assert=True)
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    self._port = free_port()
                    continue
                raise RuntimeError(f"cannot start SMTP capture on {HOST}:{self._port}: {exc}") from exc
            self._controller = controller
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop listening; captured messages are kept.  Idempotent."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    close = stop

    def __enter__(self) -> "SmtpCapture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- captured messages ------------------------------------------------

    def _record(self, msg: CapturedMessage) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    def clear(self) -> None:
        """Forget captured messages (``wait_for`` counts from here)."""
        with self._cond:
            self._messages.clear()

    def wait_for(self, n: int = 1, timeout: float = 10) -> list[CapturedMessage]:
        """Wait until at least ``n`` messages were captured; return all of them.

        Raises ``AssertionError`` (a test failure, with what did arrive) on
        timeout.  Returns every captured message, which may be more than
        ``n``: assert on the length if "exactly n" matters.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = "\n".join(f"  {m!r}" for m in self._messages) or "  (none)"
                    raise AssertionError(
                        f"SMTP capture on {HOST}:{self._port}: expected {n} message(s) "
                        f"within {timeout:g} s, got {len(self._messages)}"
                        f"{' (refusing: ' + self._refusal[1] + ')' if self._refusal else ''}:\n{got}"
                    )
                self._cond.wait(left)
            return list(self._messages)

    # -- failure mode -----------------------------------------------------

    def refuse(self, code: int = 451, text: str = "4.3.0 Try again later", *,
               stage: str = "data", times: int | None = None) -> None:
        """Answer ``<code> <text>`` instead of accepting, until :meth:`accept`.

        ``stage`` is the command that gets refused: ``"data"`` (the end of
        DATA: smtplib raises ``SMTPDataError``), ``"rcpt"`` (every RCPT TO:
        ``SMTPRecipientsRefused``) or ``"mail"`` (MAIL FROM:
        ``SMTPSenderRefused``).  ``times``: refuse only that many commands,
        then accept again by itself (for retry tests); None = until accept().
        A 4xx code is a temporary failure (retry later), 5xx permanent.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
        if not 400 <= code <= 599:
            raise ValueError(f"a refusal needs a 4xx or 5xx code, not {code}")
        with self._cond:
            self._refusal = (stage, f"{code} {text}")
            self._refusals_left = times

    def accept(self) -> None:
        """Leave the failure mode: accept mail again."""
        with self._cond:
            self._refusal = None
            self._refusals_left = None

    def _take_refusal(self, stage: str) -> str | None:
        with self._cond:
            if self._refusal is None or self._refusal[0] != stage:
                return None
            reply = self._refusal[1]
            self.refused_count += 1
            if self._refusals_left is not None:
                self._refusals_left -= 1
                if self._refusals_left <= 0:
                    self._refusal = None
                    self._refusals_left = None
            return reply

    # -- auth -------------------------------------------------------------

    def oauth2_token(self, user: str = "complaints@example.org", *, ttl: float = 3600,
                     **claims) -> str:
        """A token this server accepts for ``user`` via XOAUTH2."""
        if self.oauth2_issuer is None:
            raise RuntimeError("make the capture with oauth2=True to use OAuth2 tokens")
        return self.oauth2_issuer.issue(self.oauth2_audiences[0], email=user, ttl=ttl,
                                        roles=["SMTP.SendAsApp"], **claims)

    @staticmethod
    def _parse_bearer(text: str, mechanism: str) -> tuple[str, str]:
        """(user, token) from ``user=U^Aauth=Bearer T^A^A`` (XOAUTH2) or
        ``n,a=U,^Aauth=Bearer T^A^A`` (OAUTHBEARER, RFC 7628)."""
        user = token = ""
        parts = text.split("\x01")
        if mechanism == "OAUTHBEARER" and parts:
            gs2 = parts.pop(0).split(",")
            user = next((g[2:] for g in gs2 if g.startswith("a=")), "")
        for part in parts:
            if part.startswith("user="):
                user = part[5:]
            elif part.lower().startswith("auth=bearer "):
                token = part[12:]
        return user, token

    def _check_bearer(self, user: str, token: str) -> str | None:
        """None if the token is good for ``user``, else why not."""
        import jwt

        if not user or not token:
            return "malformed XOAUTH2 response (no user= or auth=Bearer)"
        try:
            claims = self.oauth2_issuer.verify(token, audience=self.oauth2_audiences)
        except jwt.InvalidTokenError as exc:
            return f"invalid token: {type(exc).__name__}: {exc}"
        if str(claims.get("email", "")).lower() != user.lower():
            return f"token is for {claims.get('email')!r}, not {user!r}"
        return None

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            mechanism in ("PLAIN", "LOGIN")
            and isinstance(auth_data, LoginPassword)
            and auth_data.login.decode("utf-8", "replace") == self.auth_user
            and auth_data.password.decode("utf-8", "replace") == self.auth_password
        )
        # handled=False: aiosmtpd answers 535 5.7.8 itself on failure.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

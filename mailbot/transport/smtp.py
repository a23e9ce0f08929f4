"""Outgoing mail over SMTP (stdlib ``smtplib``), one connection kept open between messages."""

from __future__ import annotations

import smtplib
import ssl

from mailbot.transport.base import PermanentSendError, TransportError


class SmtpSender:
    def __init__(self, host: str, port: int, security: str = "starttls", username: str | None = None,
                 password: str | None = None, timeout: float = 60, token_provider=None):
        self.host, self.port, self.security = host, port, security
        self.username, self.password, self.timeout = username, password, timeout
        # OAuth2 (SMTP AUTH XOAUTH2) instead of the password: a
        # mailbot.transport.oauth.TokenProvider, asked for a token at every connection
        self.token_provider = token_provider
        self.description = f"smtp {host}:{port} ({security})"
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        try:
            if self.security == "ssl":
                conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                        context=ssl.create_default_context())
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    conn.starttls(context=ssl.create_default_context())
            if self.token_provider is not None:
                self._auth_xoauth2(conn)
            elif self.username and self.password is not None:
                conn.login(self.username, self.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise TransportError(f"{self.description}: login refused: {exc.smtp_error!r}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportError(f"{self.description}: cannot connect: {exc}") from exc
        return conn

    def _auth_xoauth2(self, conn: smtplib.SMTP) -> None:
        """AUTH XOAUTH2 (initial response ``user=U^Aauth=Bearer T^A^A``); on a refusal the
        server sends a JSON challenge, answered with an empty line, then 535.  A refused token
        is forgotten and a fresh one tried once."""
        conn.ehlo_or_helo_if_needed()
        for attempt in (1, 2):
            token = self.token_provider.token()  # an OAuthError is a TransportError
            initial = f"user={self.username}\x01auth=Bearer {token}\x01\x01"
            try:
                conn.auth("XOAUTH2", lambda challenge=None: initial if challenge is None else "",
                          initial_response_ok=True)
                return
            except smtplib.SMTPAuthenticationError:
                self.token_provider.invalidate(token)
                if attempt == 2:
                    raise

    def send(self, raw: bytes, mail_from: str, recipients: list[str]) -> None:
        for attempt in (1, 2):  # a kept-open connection may have been dropped by the server
            if self._conn is None:
                self._conn = self._connect()
            try:
                refused = self._conn.sendmail(mail_from, recipients, raw)
            except smtplib.SMTPRecipientsRefused as exc:
                self._reset_if_broken()
                codes = [code for code, _ in exc.recipients.values()]
                if all(code >= 500 for code in codes):
                    raise PermanentSendError(f"all recipients refused: {exc.recipients}") from exc
                raise TransportError(f"recipients refused for now: {exc.recipients}") from exc
            except smtplib.SMTPResponseException as exc:
                self._reset_if_broken()
                if exc.smtp_code >= 500:
                    raise PermanentSendError(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
                raise TransportError(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self.close()
                if attempt == 2:
                    raise TransportError(f"{self.description}: {exc}") from exc
                continue
            if refused:
                # accepted for some recipients: a retry would duplicate it for the others
                return
            return

    def _reset_if_broken(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self._conn = None

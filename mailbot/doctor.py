"""``mailbot doctor``: try the configured mailbox and outgoing mail for real, and say in plain
words what is wrong and what to do about it.

Why: the first run of a new installation usually fails on something outside mailbot -- a
wrong port, a password, a folder the account may not create, a certificate.  The daemon
can only log "login failed" and retry; the doctor goes step by step (connect, log in, list
folders, open the inbox, find or create the processed and quarantine folders, send a test
message) and stops a section at the first failing step, so the first red line is the one to
fix.  Nothing is read, moved or deleted; the only changes are the folders mailbot would create
anyway, and the test message when one is asked for.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr
from datetime import datetime, timezone
from typing import Callable

from mailbot.config import Config, ConfigError


@dataclass
class Check:
    section: str  # "mailbox" | "outgoing"
    step: str  # what was tried, e.g. "connect to mail.example.org:993 (ssl)"
    ok: bool
    detail: str = ""  # what happened
    advice: str = ""  # what to do, when it failed


class StepFailed(Exception):
    def __init__(self, detail: str, advice: str):
        super().__init__(detail)
        self.detail, self.advice = detail, advice


# -- explaining exceptions ------------------------------------------------------------------------
def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def explain_network(exc: BaseException, host: str, port: int | None, where: str) -> StepFailed:
    """Connection-level trouble (refused, unknown host, timeout, TLS) in plain words.

    ``where`` names the config keys to look at, e.g. ``mailbox.host/mailbox.port``."""
    text = " ".join(str(e) for e in _chain(exc))
    target = f"{host}:{port}" if port else host
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            reason = getattr(e, "verify_message", "") or "certificate verify failed"
            return StepFailed(
                f"the server's TLS certificate is not trusted ({reason})",
                f"use the host name written in the server's certificate in {where}; if the "
                "certificate is self-signed or from a private CA, install that CA on this machine "
                "(or point REQUESTS_CA_BUNDLE/SSL_CERT_FILE at it).")
        if isinstance(e, ssl.SSLError) or "WRONG_VERSION_NUMBER" in text or "SSLError" in text:
            return StepFailed(
                f"the TLS handshake with {target} failed ({e})",
                "the security setting probably does not match the port: IMAP uses security = "
                "\"ssl\" on 993 and \"starttls\" (or \"none\") on 143; SMTP uses \"ssl\" on 465 and "
                "\"starttls\" on 587; an EWS URL must start with https:// only if the server "
                "speaks TLS.")
        if isinstance(e, ConnectionRefusedError) or "Connection refused" in text:
            return StepFailed(
                f"nothing accepts connections on {target} (connection refused)",
                f"check {where}: the host is reachable but no mail service listens on that port. "
                "Is the port right, is the service running, is a firewall rejecting it?")
        if isinstance(e, socket.gaierror) or any(s in text for s in (
                "Name or service not known", "Failed to resolve", "nodename nor servname",
                "Temporary failure in name resolution", "No address associated")):
            return StepFailed(f"the host name {host!r} cannot be found (DNS)",
                              f"check the spelling of the host name ({where.split(',')[0]}), and "
                              "that this machine can resolve names (try: getent hosts " + host + ").")
        if isinstance(e, (TimeoutError, socket.timeout)) or "timed out" in text:
            return StepFailed(f"no answer from {target} in time",
                              f"check {where}; a firewall may be silently dropping the connection, "
                              "or the server is overloaded.")
    return StepFailed(f"{type(exc).__name__}: {exc}", f"check {where}.")


#: Microsoft Entra ID error numbers (AADSTS...) mailbot can explain.
_AADSTS = {
    "AADSTS7000215": ("Microsoft Entra ID refused the client secret (AADSTS7000215: invalid "
                      "client secret)",
                      "put the secret's Value (shown once, when it was made), not its Secret ID, "
                      "into the environment variable named in {section}.client_secret_env; if in "
                      "doubt make a new one under Certificates & secrets."),
    "AADSTS7000222": ("the client secret has expired (AADSTS7000222)",
                      "make a new client secret under App registrations -> Certificates & secrets "
                      "and put its value into the environment variable of client_secret_env."),
    "AADSTS700016": ("Microsoft Entra ID knows no app with this client_id in this tenant "
                     "(AADSTS700016)",
                     "check {section}.client_id (the Application (client) ID) and tenant_id (the "
                     "Directory (tenant) ID) on the app registration's Overview page."),
    "AADSTS90002": ("Microsoft Entra ID knows no tenant with this tenant_id (AADSTS90002)",
                    "check {section}.tenant_id: the Directory (tenant) ID of the organisation."),
    "AADSTS700027": ("Microsoft Entra ID did not accept the client certificate (AADSTS700027)",
                     "upload the certificate (its public part, .cer/.pem) under App registrations "
                     "-> Certificates & secrets, and check {section}.client_certificate holds the "
                     "matching private key."),
    "AADSTS1002012": ("the requested scope is not valid for this flow (AADSTS1002012)",
                      "leave {section}.oauth_scopes unset (the client_credentials flow needs a "
                      "scope ending in /.default)."),
    "AADSTS70011": ("the requested scope is not valid (AADSTS70011)",
                    "leave {section}.oauth_scopes unset, or check its spelling."),
    "AADSTS65001": ("nobody has consented to the app's permissions yet (AADSTS65001)",
                    "an administrator must press 'Grant admin consent' on the app registration's "
                    "API permissions page."),
    "AADSTS7000218": ("the app registration wants a client secret or certificate (AADSTS7000218)",
                      "set {section}.client_secret_env or client_certificate, or switch on 'Allow "
                      "public client flows' for the device_code flow."),
}


def explain_oauth(exc, section: str) -> StepFailed:
    """An OAuthError (no token from Microsoft Entra ID) in plain words."""
    if exc.aadsts in _AADSTS:
        detail, advice = _AADSTS[exc.aadsts]
        return StepFailed(detail, advice.format(section=section))
    if exc.code == "login_required":
        return StepFailed(str(exc), "run `mailbot auth login` (with the same --config) and sign "
                                    "in as the complaints mailbox.")
    if exc.code == "configuration":
        return StepFailed(str(exc), f"set {section}.client_secret_env or "
                                    f"{section}.client_certificate.")
    if exc.code == "certificate":
        return StepFailed(str(exc), f"check {section}.client_certificate.")
    if exc.code in ("network", "authority"):
        from urllib.parse import urlsplit
        text = str(exc)
        host = urlsplit(text[text.find("https://"):].split()[0] if "https://" in text else "").hostname
        failed = explain_network(exc, host or "the authority", None, f"{section}.oauth_authority")
        if failed.detail.startswith(type(exc).__name__):  # nothing more specific found
            return StepFailed(f"no token: {exc}", f"check {section}.tenant_id and "
                              f"{section}.oauth_authority, and that this machine can reach it.")
        return failed
    return StepFailed(f"Microsoft Entra ID gave no token: {exc}",
                      f"check {section}.client_id, tenant_id and the secret or certificate.")


# -- runner -------------------------------------------------------------------------------------
class Doctor:
    def __init__(self, config: Config, send_test: str | None = None):
        self.config = config
        self.send_test = send_test
        self.checks: list[Check] = []

    def step(self, section: str, name: str, func: Callable[[], str]) -> bool:
        """Run one step; record it; False stops the section."""
        try:
            detail = func() or "ok"
        except StepFailed as exc:
            self.checks.append(Check(section, name, False, exc.detail, exc.advice))
            return False
        except ConfigError as exc:
            self.checks.append(Check(section, name, False, str(exc), "fix the config file."))
            return False
        except Exception as exc:  # noqa: BLE001 - unknown trouble: still a readable line
            self.checks.append(Check(section, name, False, f"{type(exc).__name__}: {exc}",
                                     "see the message above; run with the same config and "
                                     "--verbose for details."))
            return False
        self.checks.append(Check(section, name, True, detail))
        return True

    def run(self) -> list[Check]:
        kind = self.config.mailbox.kind
        getattr(self, f"_mailbox_{kind}")()
        getattr(self, f"_outgoing_{self.config.outgoing.kind}")()
        return self.checks

    # -- mailboxes ------------------------------------------------------------------------------
    def _mailbox_maildir(self) -> None:
        from mailbot.transport.base import TransportError
        from mailbot.transport.maildir import MaildirMailbox

        box = self.config.mailbox

        def open_it() -> str:
            try:
                mb = MaildirMailbox(box.path, box.processed_folder, box.quarantine_folder)
            except (TransportError, OSError) as exc:
                raise StepFailed(str(exc), "check mailbox.path: the directory must exist or be "
                                           "creatable, and be writable by the user running mailbot.")
            try:
                return f"{mb.count()} message(s) waiting; processed and quarantine folders ready"
            finally:
                mb.close()

        self.step("mailbox", f"open the maildir {box.path}", open_it)

    def _mailbox_imap(self) -> None:
        from imap_tools import MailBox, MailBoxStartTls, MailBoxUnencrypted
        from imap_tools.errors import MailboxLoginError

        box = self.config.mailbox
        where = "mailbox.host, mailbox.port and mailbox.security"
        state: dict = {}

        def connect() -> str:
            try:
                if box.security == "ssl":
                    mb = MailBox(box.host, box.port, timeout=box.timeout_seconds,
                                 ssl_context=ssl.create_default_context())
                elif box.security == "starttls":
                    mb = MailBoxStartTls(box.host, box.port, timeout=box.timeout_seconds,
                                         ssl_context=ssl.create_default_context())
                else:
                    mb = MailBoxUnencrypted(box.host, box.port, timeout=box.timeout_seconds)
            except imaplib.IMAP4.error as exc:
                if "STARTTLS" in str(exc).upper():
                    raise StepFailed(f"the server does not offer STARTTLS ({exc})",
                                     "use security = \"ssl\" (port 993) if the server speaks TLS "
                                     "from the start, or ask the provider which port offers TLS.")
                raise StepFailed(f"the server did not answer like an IMAP server ({exc})",
                                 f"check {where}: is this the IMAP port?")
            except (OSError, EOFError) as exc:
                raise explain_network(exc, box.host, box.port, where)
            state["mb"] = mb
            return f"connected ({box.security})"

        def token() -> str:
            return self._oauth_token_step(state, "mailbox", "outlook")

        def login() -> str:
            if box.auth == "oauth2":
                return self._imap_xoauth2_login(state)
            try:
                state["mb"].login(box.username, box.resolve_password(), initial_folder=None)
            except MailboxLoginError as exc:
                env = f" (read from ${box.password_env})" if box.password_env else ""
                raise StepFailed(
                    f"the server refused the user name {box.username!r} or its password{env}: "
                    f"{exc}",
                    "check mailbox.username and the password; some providers (Microsoft 365, "
                    "Gmail) need an app password or OAuth instead of the normal password, and "
                    "IMAP access may have to be switched on for the account.")
            return f"logged in as {box.username}"

        def list_folders() -> str:
            mb = state["mb"]
            try:
                folders = list(mb.folder.list())
            except imaplib.IMAP4.error as exc:
                raise StepFailed(f"the server refused to list folders ({exc})",
                                 "the account needs permission to list its folders; ask the "
                                 "mail administrator.")
            state["names"] = {f.name for f in folders}
            state["delim"] = next((f.delim for f in folders if f.delim), "/")
            return f"{len(folders)} folder(s) visible"

        def inbox() -> str:
            mb = state["mb"]
            try:
                status = mb.folder.status(box.folder, ["MESSAGES"])
            except imaplib.IMAP4.error as exc:
                raise StepFailed(f"the folder {box.folder!r} cannot be opened ({exc})",
                                 "check mailbox.folder (usually INBOX) against the folder list.")
            return f"{box.folder}: {status['MESSAGES']} message(s) waiting"

        def folder(name: str) -> Callable[[], str]:
            def check() -> str:
                mb = state["mb"]
                server_name = name.replace("/", state["delim"])
                if server_name in state["names"] or mb.folder.exists(server_name):
                    return f"{server_name} exists"
                try:
                    mb.folder.create(server_name)
                except imaplib.IMAP4.error as exc:
                    raise StepFailed(
                        f"the folder {server_name!r} is missing and the account may not create it "
                        f"({exc})",
                        f"create {server_name!r} by hand (in webmail or a mail program), or give "
                        "the account the right to create folders; or name an existing folder in "
                        "mailbox.processed_folder / mailbox.quarantine_folder.")
                return f"{server_name} created"
            return check

        try:
            ok = (self.step("mailbox", f"connect to {box.host}:{box.port}", connect)
                  and (box.auth != "oauth2" or self.step(
                      "mailbox", f"get an OAuth2 token from {box.oauth_authority}", token))
                  and self.step("mailbox", f"log in as {box.username}", login)
                  and self.step("mailbox", "list folders", list_folders)
                  and self.step("mailbox", f"open {box.folder}", inbox))
            if ok:
                for name in (box.processed_folder, box.quarantine_folder):
                    if not self.step("mailbox", f"folder {name}", folder(name)):
                        break
        finally:
            mb = state.get("mb")
            if mb is not None:
                try:
                    mb.logout()
                except Exception:  # noqa: BLE001
                    mb.client.shutdown()

    def _ews_settings(self):
        from mailbot.transport.ews import settings_from_config
        # fail fast: the doctor must say "busy" or "refused" now, not after minutes of retrying
        return settings_from_config(self.config.mailbox, max_wait=0)

    def _explain_ews(self, exc: BaseException, what: str) -> StepFailed:
        from exchangelib import errors

        box = self.config.mailbox
        for e in _chain(exc):
            if isinstance(e, errors.UnauthorizedError):
                hint = {
                    "basic": "check mailbox.username (often the full address, or DOMAIN\\user) and "
                             "the password; Basic authentication is switched off in Exchange "
                             "Online, where auth_type = \"oauth2\" is needed",
                    "ntlm": "check mailbox.username (DOMAIN\\user) and the password, and that the "
                            "server allows NTLM on /EWS",
                    "oauth2": "check client_id, tenant_id and the client secret, and that the app "
                              "registration has the full_access_as_app permission with admin "
                              "consent",
                    "none": "the server wants a login: set auth_type and the credentials",
                }[box.auth_type]
                return StepFailed("Exchange refused the login (HTTP 401)", hint + ".")
            if isinstance(e, errors.ErrorNonExistentMailbox):
                return StepFailed(f"Exchange knows no mailbox {box.primary_smtp_address!r}",
                                  "check mailbox.primary_smtp_address.")
            if isinstance(e, (errors.ErrorImpersonateUserDenied,
                              errors.ErrorImpersonationDenied)):
                return StepFailed("the account may not impersonate this mailbox",
                                  "grant the ApplicationImpersonation role to the account (or "
                                  "set impersonation = false and give it full access to the "
                                  "mailbox instead).")
            if isinstance(e, errors.ErrorAccessDenied):
                return StepFailed(f"Exchange denied access while trying to {what}: {e}",
                                  "the account needs full access to the mailbox (Add-MailboxPermission "
                                  "-AccessRights FullAccess) -- or create the folder by hand in "
                                  "Outlook and name it in mailbox.processed_folder / "
                                  "quarantine_folder.")
            if isinstance(e, (errors.RateLimitError, errors.ErrorServerBusy)):
                return StepFailed("Exchange says it is too busy right now (ErrorServerBusy)",
                                  "try again in a few minutes; if it persists, ask the Exchange "
                                  "administrator about the throttling policy for this account.")
            if isinstance(e, errors.ErrorFolderNotFound):
                return StepFailed(f"a folder was not found while trying to {what}: {e}",
                                  "check mailbox.folder: INBOX, or a folder path below the top "
                                  "of the mailbox such as \"Complaints/Incoming\".")
        text = " ".join(str(e) for e in _chain(exc))
        if "Code: 404" in text or "404" in text.split("Code:")[-1][:5]:
            return StepFailed(f"there is no EWS service at {box.ews_url} (HTTP 404)",
                              "check mailbox.ews_url; it normally ends in /EWS/Exchange.asmx.")
        from urllib.parse import urlsplit
        url = urlsplit(box.ews_url or "")
        return explain_network(exc, url.hostname or "?", url.port, "mailbox.ews_url")

    def _mailbox_ews(self) -> None:
        from mailbot.transport.ews import EwsMailbox

        box = self.config.mailbox
        state: dict = {}

        def connect() -> str:
            mailbox = EwsMailbox(self._ews_settings(), box.folder, box.processed_folder,
                                 box.quarantine_folder, box.poll_seconds)
            state["box"] = mailbox
            try:
                mailbox.account().root  # the first real request: GetFolder
            except Exception as exc:  # noqa: BLE001
                raise self._explain_ews(exc, "log in") from exc
            return f"logged in ({box.auth_type}) to {box.primary_smtp_address}"

        def inbox() -> str:
            try:
                count = len(state["box"]._inbox_uids())
            except Exception as exc:  # noqa: BLE001
                raise self._explain_ews(exc, f"open {box.folder}") from exc
            return f"{box.folder}: {count} message(s) waiting"

        def folder(destination: str, name: str) -> Callable[[], str]:
            def check() -> str:
                try:
                    state["box"].target(destination)
                except Exception as exc:  # noqa: BLE001
                    raise self._explain_ews(exc, f"find or create the folder {name!r}") from exc
                return f"{name} ready"
            return check

        try:
            if (self.step("mailbox", f"connect to {box.ews_url}", connect)
                    and self.step("mailbox", f"open {box.folder}", inbox)):
                for destination, name in (("processed", box.processed_folder),
                                          ("quarantine", box.quarantine_folder)):
                    if not self.step("mailbox", f"folder {name}", folder(destination, name)):
                        break
        finally:
            if "box" in state:
                state["box"].close()

    # -- OAuth2 and Microsoft Graph -----------------------------------------------------------
    def _oauth_token_step(self, state: dict, section: str, use: str) -> str:
        from mailbot.transport.oauth import (OAuthError, describe_claims, provider_from_config,
                                             token_claims)

        provider = provider_from_config(self.config, section, use)
        try:
            token = provider.token()
        except OAuthError as exc:
            raise explain_oauth(exc, section) from exc
        state["provider"], state["token"] = provider, token
        claims = token_claims(token)
        return "token issued" + (f" ({describe_claims(claims)})" if claims else "")

    def _imap_xoauth2_login(self, state: dict) -> str:
        box = self.config.mailbox
        try:
            state["mb"].xoauth2(box.username, state["token"], initial_folder=None)
        except Exception as exc:  # noqa: BLE001 - imaplib raises its own error for a NO
            text = str(exc)
            unavailable = "UNAVAILABLE" in text.upper()
            raise StepFailed(
                f"the server refused the OAuth2 token for {box.username!r} (XOAUTH2): {text}",
                ("the server could not check the token right now (it may lack a claim it maps to "
                 "the mailbox); try again, and see the server's log. " if unavailable else "")
                + "A token was issued, but the server does not accept it for this mailbox. "
                "For Microsoft 365 with the client_credentials flow: the app registration needs "
                "the IMAP.AccessAsApp application permission (Office 365 Exchange Online) with "
                "admin consent, the scope must be https://outlook.office365.com/.default, and the "
                "app's service principal must be registered in Exchange Online and given access to "
                "the mailbox (New-ServicePrincipal, then Add-MailboxPermission -AccessRights "
                "FullAccess); mailbox.username must be the mailbox address and IMAP must be "
                "enabled for it. With the device_code flow, sign in (mailbot auth login) as the "
                "mailbox or as someone with full access to it.") from exc
        return f"logged in as {box.username} with OAuth2 (XOAUTH2)"

    def _graph_box(self):
        from mailbot.transport import graph
        from mailbot.transport.oauth import provider_from_config

        box = self.config.mailbox
        # fail fast: the doctor must say "busy" or "refused" now, not after minutes of waiting
        settings = graph.settings_from_config(box)
        settings = graph.GraphSettings(mailbox=settings.mailbox, base_url=settings.base_url,
                                       timeout=settings.timeout, max_wait=0)
        return graph.GraphMailbox(settings, provider_from_config(self.config, "mailbox", "graph"),
                                  folder=box.folder, processed_folder=box.processed_folder,
                                  quarantine_folder=box.quarantine_folder)

    def _explain_graph(self, exc: BaseException, what: str, token: str | None = None) -> StepFailed:
        from urllib.parse import urlsplit

        from mailbot.transport.graph import GraphError
        from mailbot.transport.oauth import OAuthError, token_claims

        box = self.config.mailbox
        for e in _chain(exc):
            if isinstance(e, OAuthError):
                return explain_oauth(e, "mailbox")
            if not isinstance(e, GraphError) or not e.status:
                continue
            if e.status == 403 and e.code in ("ErrorAccessDenied", "Authorization_RequestDenied",
                                              "AccessDenied"):
                claims = token_claims(token) if token else {}
                granted = set(claims.get("roles", [])) | set(str(claims.get("scp", "")).split())
                needed = "Mail.Send" if what == "send" else "Mail.ReadWrite"
                detail = (f"Microsoft Graph denied access while trying to {what} "
                          f"(403 ErrorAccessDenied): the app registration lacks {needed} for this "
                          f"mailbox, or the application access policy excludes it")
                if claims and needed not in granted:
                    detail += (f" -- the token carries no {needed} permission (it has: "
                               f"{', '.join(sorted(granted)) or 'none'})")
                elif claims:
                    detail += (f" -- the token does carry {needed}, so Exchange's access policy "
                               f"or RBAC scope leaves {box.primary_smtp_address} out")
                return StepFailed(
                    detail,
                    f"in the Microsoft Entra admin center, App registrations -> this app -> API "
                    f"permissions: add Microsoft Graph application permissions Mail.ReadWrite and "
                    f"Mail.Send and grant admin consent. If access is limited to the complaints "
                    f"mailbox (an application access policy, or RBAC for Applications), make sure "
                    f"{box.primary_smtp_address} is in it: Test-ApplicationAccessPolicy -Identity "
                    f"{box.primary_smtp_address} -AppId {box.client_id} (or "
                    f"Test-ServicePrincipalAuthorization) in Exchange Online PowerShell.")
            if e.status == 401:
                return StepFailed(
                    f"Microsoft Graph refused the token (401 {e.code}): {e}",
                    "the token must be for Microsoft Graph (scope https://graph.microsoft.com/"
                    ".default for the client_credentials flow) and from the mailbox's own tenant "
                    "(tenant_id); check this machine's clock as well.")
            if e.status == 404 and e.code in ("ErrorInvalidUser", "ResourceNotFound",
                                              "MailboxNotEnabledForRESTAPI", "ErrorNonExistentMailbox"):
                return StepFailed(
                    f"Microsoft Graph knows no mailbox {box.primary_smtp_address!r} ({e.code})",
                    "check mailbox.primary_smtp_address: it must be a mailbox in Exchange Online "
                    "(Graph cannot reach mailboxes on an on-premises Exchange server).")
            if e.status == 404:
                return StepFailed(f"not found while trying to {what}: {e}",
                                  "check mailbox.folder: INBOX, or a folder path below the top of "
                                  "the mailbox such as \"Complaints/Incoming\".")
            if e.status in (429, 503):
                return StepFailed(f"Microsoft Graph says it is too busy right now ({e.status})",
                                  "try again in a few minutes; Outlook allows 4 requests at a time "
                                  "and 10,000 per 10 minutes per app and mailbox.")
            return StepFailed(f"Microsoft Graph answered while trying to {what}: {e}",
                              "see Graph's answer above.")
        url = urlsplit(box.graph_url)
        return explain_network(exc, url.hostname or "?", url.port, "mailbox.graph_url")

    def _mailbox_graph(self) -> None:
        from mailbot.transport.oauth import OAuthError, describe_claims, token_claims

        box = self.config.mailbox
        state: dict = {}

        def token() -> str:
            state["box"] = self._graph_box()
            try:
                state["token"] = state["box"].client.tokens.token()
            except OAuthError as exc:
                raise explain_oauth(exc, "mailbox") from exc
            claims = token_claims(state["token"])
            return "token issued" + (f" ({describe_claims(claims)})" if claims else "")

        def inbox() -> str:
            try:
                path = state["box"].inbox_path()
                found = state["box"].client.json("GET", path, params={"$select": "totalItemCount"})
            except Exception as exc:  # noqa: BLE001
                raise self._explain_graph(exc, f"open {box.folder}", state.get("token")) from exc
            return f"{box.folder}: {found.get('totalItemCount', '?')} message(s) waiting"

        def delta() -> str:
            try:
                listed = state["box"].sync()
            except Exception as exc:  # noqa: BLE001
                raise self._explain_graph(exc, f"follow changes in {box.folder}",
                                          state.get("token")) from exc
            return f"delta query works ({len(listed)} message(s) listed)"

        def folder(destination: str, name: str) -> Callable[[], str]:
            def check() -> str:
                try:
                    state["box"].target(destination)
                except Exception as exc:  # noqa: BLE001
                    raise self._explain_graph(exc, f"find or create the folder {name!r}",
                                              state.get("token")) from exc
                return f"{name} ready"
            return check

        try:
            if (self.step("mailbox", f"get an OAuth2 token from {box.oauth_authority}", token)
                    and self.step("mailbox", f"open {box.folder} of {box.primary_smtp_address}",
                                  inbox)
                    and self.step("mailbox", f"read {box.folder} with a delta query", delta)):
                for destination, name in (("processed", box.processed_folder),
                                          ("quarantine", box.quarantine_folder)):
                    if not self.step("mailbox", f"folder {name}", folder(destination, name)):
                        break
        finally:
            if "box" in state:
                state["box"].close()

    def _outgoing_graph(self) -> None:
        from mailbot.transport import graph
        from mailbot.transport.base import PermanentSendError
        from mailbot.transport.oauth import OAuthError, provider_from_config, token_claims

        state: dict = {}
        box = self.config.mailbox

        def permission() -> str:
            settings = graph.settings_from_config(box)
            settings = graph.GraphSettings(mailbox=settings.mailbox, base_url=settings.base_url,
                                           timeout=settings.timeout, max_wait=0)
            provider = provider_from_config(self.config, "mailbox", "graph")
            state["sender"] = graph.GraphSender(settings, provider)
            try:
                state["token"] = provider.token()
            except OAuthError as exc:
                raise explain_oauth(exc, "mailbox") from exc
            claims = token_claims(state["token"])
            granted = set(claims.get("roles", [])) | set(str(claims.get("scp", "")).split())
            if claims and "Mail.Send" not in granted:
                raise StepFailed(
                    "the app registration lacks Mail.Send: the token carries no permission to "
                    f"send mail (it has: {', '.join(sorted(granted)) or 'none'})",
                    "in the Microsoft Entra admin center, App registrations -> this app -> API "
                    "permissions: add the Microsoft Graph application permission Mail.Send and "
                    "grant admin consent (and keep the mailbox inside any application access "
                    "policy or RBAC scope).")
            return "the token carries Mail.Send" if claims else "token issued"

        def explain(exc: BaseException) -> StepFailed:
            if isinstance(exc, PermanentSendError):
                return StepFailed(str(exc), "check outgoing.from: Graph sends as the mailbox and "
                                            "needs Send As rights for any other address.")
            return self._explain_graph(exc, "send", state.get("token"))

        try:
            if self.step("outgoing", "Microsoft Graph permission to send", permission):
                self._send_step(state["sender"], explain)
        finally:
            if "sender" in state:
                state["sender"].close()

    # -- outgoing -------------------------------------------------------------------------------
    def _test_message(self) -> EmailMessage:
        out = self.config.outgoing
        msg = EmailMessage(policy=SMTP)
        msg["From"] = out.from_
        msg["To"] = self.send_test
        msg["Subject"] = "mailbot doctor: test message"
        msg["Date"] = format_datetime(datetime.now(timezone.utc))
        msg["Message-ID"] = make_msgid(domain=out.from_address.split("@")[-1])
        # marked as machine-made, so no mailbot (or auto-responder) ever answers it
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content("This is a test message from `mailbot doctor`: the outgoing mail "
                        "settings work.\n")
        return msg

    def _send_step(self, sender, explain: Callable[[BaseException], StepFailed]) -> None:
        if not self.send_test:
            return
        if "@" not in parseaddr(self.send_test)[1]:
            self.checks.append(Check("outgoing", "send a test message", False,
                                     f"{self.send_test!r} is not an email address",
                                     "give --send-test a full address such as you@example.org."))
            return

        def send() -> str:
            try:
                sender.send(self._test_message().as_bytes(), self.config.outgoing.from_address,
                            [parseaddr(self.send_test)[1]])
            except Exception as exc:  # noqa: BLE001
                raise explain(exc) from exc
            return f"sent to {self.send_test}; check that it arrived"

        self.step("outgoing", f"send a test message to {self.send_test}", send)

    def _outgoing_folder(self) -> None:
        from mailbot.transport.folder import FolderSender

        out = self.config.outgoing
        state: dict = {}

        def open_it() -> str:
            try:
                state["sender"] = FolderSender(out.path)
                probe = out.path / ".mailbot-doctor"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise StepFailed(f"cannot write to {out.path} ({exc})",
                                 "check outgoing.path: the directory must be writable by the "
                                 "user running mailbot.")
            return f"{out.path} is writable"

        if self.step("outgoing", f"write to the folder {out.path}", open_it):
            self._send_step(state["sender"], lambda exc: StepFailed(str(exc), "check outgoing.path."))

    def _explain_smtp(self, exc: BaseException) -> StepFailed:
        import smtplib

        from mailbot.transport.oauth import OAuthError

        out = self.config.outgoing
        for e in _chain(exc):
            if isinstance(e, OAuthError):
                return explain_oauth(e, "outgoing")
            if isinstance(e, smtplib.SMTPAuthenticationError) and out.auth == "oauth2":
                return StepFailed(
                    f"the SMTP server refused the OAuth2 token ({e.smtp_code} {e.smtp_error!r})",
                    "a token was issued, but the server does not accept it for this mailbox. "
                    "For Microsoft 365 (smtp.office365.com, port 587, starttls): with the "
                    "client_credentials flow the app needs the SMTP.SendAsApp application "
                    "permission (Office 365 Exchange Online) with admin consent, and its service "
                    "principal must be registered in Exchange Online and given access to the "
                    "mailbox (New-ServicePrincipal, Add-MailboxPermission); outgoing.username "
                    "must be the mailbox address; SMTP AUTH must be switched on for the mailbox "
                    "(Set-CASMailbox -SmtpClientAuthenticationDisabled $false).")
            if isinstance(e, smtplib.SMTPAuthenticationError):
                return StepFailed(f"the SMTP server refused the user name {out.username!r} or its "
                                  f"password ({e.smtp_code} {e.smtp_error!r})",
                                  "check outgoing.username and the password; some providers need "
                                  "an app password.")
            if isinstance(e, smtplib.SMTPNotSupportedError):
                return StepFailed(f"the SMTP server does not support that ({e})",
                                  "STARTTLS or AUTH is not offered on this port: check "
                                  "outgoing.security and outgoing.port (587 starttls, 465 ssl).")
            if isinstance(e, smtplib.SMTPRecipientsRefused):
                return StepFailed(f"the SMTP server refused the recipient ({e.recipients})",
                                  "the server may not relay for this account: check outgoing.from "
                                  "and that the account may send to outside addresses.")
            if isinstance(e, smtplib.SMTPSenderRefused):
                return StepFailed(f"the SMTP server refused the sender {e.sender!r} ({e.smtp_code} "
                                  f"{e.smtp_error!r})",
                                  "outgoing.from must be an address this account may send as.")
            if isinstance(e, smtplib.SMTPResponseException):
                return StepFailed(f"the SMTP server answered {e.smtp_code} {e.smtp_error!r}",
                                  "see the server's answer; 4xx is temporary, 5xx permanent.")
        return explain_network(exc, out.host, out.port,
                               "outgoing.host, outgoing.port and outgoing.security")

    def _outgoing_smtp(self) -> None:
        from mailbot.transport.smtp import SmtpSender

        out = self.config.outgoing
        state: dict = {}

        def connect() -> str:
            if out.auth == "oauth2":
                from mailbot.transport.oauth import provider_from_config
                box = self.config.mailbox
                sender = SmtpSender(out.host, out.port, out.security,
                                    out.username or box.username or box.primary_smtp_address, None,
                                    out.timeout_seconds,
                                    token_provider=provider_from_config(self.config, "outgoing",
                                                                        "outlook"))
            else:
                sender = SmtpSender(out.host, out.port, out.security, out.username,
                                    out.resolve_password(), out.timeout_seconds)
            state["sender"] = sender
            try:
                sender._conn = sender._connect()  # connect, EHLO, STARTTLS, AUTH
            except Exception as exc:  # noqa: BLE001
                raise self._explain_smtp(exc) from exc
            if out.auth == "oauth2":
                return f"connected ({out.security}), logged in as {sender.username} with OAuth2"
            return (f"connected ({out.security})"
                    + (f", logged in as {out.username}" if out.username else ""))

        try:
            if self.step("outgoing", f"connect to {out.host}:{out.port}", connect):
                self._send_step(state["sender"], self._explain_smtp)
        finally:
            if "sender" in state:
                state["sender"].close()

    def _outgoing_ews(self) -> None:
        from mailbot.transport.ews import EwsSender, connect

        state: dict = {}

        def sent_items() -> str:
            settings = self._ews_settings()
            try:
                state["sender"] = EwsSender(settings)
                connect(settings).sent  # GetFolder sentitems: where replies are saved
            except Exception as exc:  # noqa: BLE001
                raise self._explain_ews(exc, "open Sent Items") from exc
            return "Sent Items can be opened"

        def explain(exc: BaseException) -> StepFailed:
            from mailbot.transport.base import PermanentSendError
            if isinstance(exc, PermanentSendError):
                return StepFailed(str(exc), "check outgoing.from: Exchange sends as the mailbox "
                                            "and needs Send As rights for any other address.")
            return self._explain_ews(exc, "send")

        try:
            if self.step("outgoing", "Exchange Sent Items", sent_items):
                self._send_step(state["sender"], explain)
        finally:
            if "sender" in state:
                state["sender"].close()


def run(config: Config, send_test: str | None = None) -> list[Check]:
    """All checks for this config, in order; a failed step ends its section."""
    return Doctor(config, send_test).run()

"""An Exchange mailbox over Exchange Web Services (exchangelib), behind the same contract as IMAP.

For on-premises Exchange Server (and, until Microsoft switches EWS off there, Exchange
Online).  The choices, and why:

* **Ids.**  A message's uid is ``ews:<mailbox>:<EWS ItemId>``.  The ItemId stays the same while
  the item sits in the inbox (also when someone reads or flags it in Outlook, which changes
  only the ChangeKey, so the ChangeKey is deliberately not part of the uid) and changes when
  the item is moved, exactly like an IMAP UID.
* **Reading.**  FindItem (ids only, oldest first, every item -- read or unread, because a
  member of staff may already have opened a complaint in Outlook) then GetItem with
  ``item:MimeContent``: the original RFC 822 bytes, attachments and all, nothing converted.
  Nothing is marked read and nothing is deleted.
* **Folders.**  ``processed_folder``/``quarantine_folder`` such as ``mailbot/processed`` are
  paths below the mailbox's top folder ("Top of Information Store", the folder that holds
  Inbox), so Outlook shows a ``mailbot`` folder next to Inbox, as with IMAP.  Each level is
  looked up by name (FindFolder, one level only: the folder tree is never walked) and created
  when missing (CreateFolder).  ``folder`` is the inbox when it is ``INBOX`` (the default),
  else a path below the top folder as well.
* **Moving.**  MoveItem with exactly the ids the daemon gives; an id that is already gone
  (moved or deleted by someone else) is skipped, so moving twice is harmless.
* **Waiting.**  Polling every ``poll_seconds``: a cheap FindItem of ids, True as soon as the
  inbox holds an id that the last fetch did not return.
* **Sending** (:class:`EwsSender`): CreateItem with ``MessageDisposition=SendAndSaveCopy`` and
  the letter's own MIME bytes, so the reply keeps its Message-ID/In-Reply-To/References,
  threads in Outlook and appears in Sent Items.
* **Trouble.**  Exchange throttles with ``ErrorServerBusy`` and a back-off hint: exchangelib's
  ``FaultTolerance`` waits as asked, up to ``max_wait`` seconds in all, then mailbot gives up
  for this round.  A refused login (HTTP 401) fails at once instead of being retried as
  "busy".  Every failure reaches the daemon as :class:`TransportError` (it backs off and
  tries again; nothing was moved), except a letter Exchange refuses for good, which is a
  :class:`PermanentSendError`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import getaddresses

from mailbot.transport.base import (Batch, Destination, Incoming, pause, PermanentSendError, stopping_now,
                                    TransportError)

log = logging.getLogger(__name__)

#: GetItem asks for this many full messages per request (a 25 MB message times 100 would not do).
GET_CHUNK = 10
#: Exchange's answers to a letter that no retry would fix.
PERMANENT_SEND_ERRORS = {
    "ErrorInvalidRecipients", "ErrorInvalidSmtpAddress", "ErrorMimeContentConversionFailed",
    "ErrorMimeContentInvalid", "ErrorMimeContentInvalidBase64String", "ErrorMessageSizeExceeded",
    "ErrorSendAsDenied", "ErrorInvalidRecipientSubfilter",
}


@dataclass(frozen=True)
class EwsSettings:
    """Everything needed to reach one mailbox over EWS (built from ``[mailbox]`` in the config)."""

    url: str
    primary_smtp_address: str
    auth_type: str = "basic"  # basic | ntlm | oauth2 | none
    username: str | None = None
    password: str | None = None
    impersonation: bool = False
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: str | None = None
    version: str | None = None  # e.g. "15.1.2507.6"; None: ask the server
    timeout: float = 60
    max_wait: float = 120  # total seconds to honour ErrorServerBusy back-offs; 0: fail fast


def _retry_policy(max_wait: float):
    from exchangelib.errors import UnauthorizedError
    from exchangelib.protocol import FailFast, FaultTolerance

    if max_wait <= 0:
        return FailFast()

    class MailbotFaultTolerance(FaultTolerance):
        """FaultTolerance, except that HTTP 401 is a wrong password, not a busy server.

        exchangelib's FaultTolerance retries 401 as "busy" until max_wait is used up, which
        would hide a wrong password behind minutes of waiting and a "max timeout" message."""

        def raise_response_errors(self, response):
            if response.status_code == 401:
                raise UnauthorizedError(f"Invalid credentials for {response.url}")
            return super().raise_response_errors(response)

    return MailbotFaultTolerance(max_wait=max_wait)


def connect(settings: EwsSettings):
    """An exchangelib Account for the settings; talks to the server only when first used."""
    from exchangelib import (DELEGATE, IMPERSONATION, Account, Build, Configuration, Credentials,
                             Identity, OAuth2Credentials, Version)
    from exchangelib.transport import BASIC, NOAUTH, NTLM, OAUTH2

    try:
        if settings.auth_type == "oauth2":
            credentials = OAuth2Credentials(
                client_id=settings.client_id, client_secret=settings.client_secret,
                tenant_id=settings.tenant_id,
                identity=Identity(primary_smtp_address=settings.primary_smtp_address))
            auth = OAUTH2
        elif settings.auth_type == "none":
            credentials, auth = None, NOAUTH
        else:
            credentials = Credentials(settings.username or settings.primary_smtp_address,
                                      settings.password or "")
            auth = NTLM if settings.auth_type == "ntlm" else BASIC
        version = None
        if settings.version:
            version = Version(build=Build(*(int(p) for p in settings.version.split("."))))
        policy = _retry_policy(settings.max_wait)
        config = Configuration(service_endpoint=settings.url, credentials=credentials,
                               auth_type=auth, version=version, retry_policy=policy)
        account = Account(primary_smtp_address=settings.primary_smtp_address, config=config,
                          autodiscover=False,
                          access_type=IMPERSONATION if settings.impersonation else DELEGATE)
    except Exception as exc:  # noqa: BLE001 - exchangelib raises many kinds here
        raise TransportError(f"ews {settings.url}: cannot set up the connection: {exc}") from exc
    # exchangelib shares one protocol object per (endpoint, credentials) in the process and
    # keeps the settings of whoever came first: make ours count.
    account.protocol.config.retry_policy = policy
    account.protocol.TIMEOUT = settings.timeout
    return account


def translate(exc: Exception, what: str, description: str) -> Exception:
    """An exchangelib/requests exception -> mailbot's TransportError with a readable reason."""
    from exchangelib import errors

    name = type(exc).__name__
    if isinstance(exc, errors.UnauthorizedError):
        reason = "login refused (wrong user name or password, or the wrong auth_type)"
    elif isinstance(exc, errors.ErrorAccessDenied):
        reason = f"access denied: {exc}"
    elif isinstance(exc, (errors.RateLimitError, errors.ErrorServerBusy)):
        reason = f"Exchange is busy and asked us to wait longer than allowed: {exc}"
    else:
        reason = f"{name}: {exc}"
    return TransportError(f"{description}: {what} failed: {reason}")


def _ensure_path(account, top, path: str):
    """The folder at ``path`` ("a/b") below ``top``, created level by level when missing."""
    from exchangelib import Folder
    from exchangelib.errors import ErrorFolderExists, ErrorFolderNotFound
    from exchangelib.services import CreateFolder

    current = top
    for part in [p for p in path.split("/") if p]:
        try:
            current = current // part
            continue
        except ErrorFolderNotFound:
            pass
        # CreateFolder directly: Folder.save() would first load the whole folder tree.
        new = Folder(parent=current, name=part, folder_class="IPF.Note")
        result = CreateFolder(account=account).get(parent_folder=current, folders=[new])
        if isinstance(result, ErrorFolderExists):  # created meanwhile by another daemon
            current = current // part
            continue
        if isinstance(result, Exception):
            raise result
        current = current // part  # the stored folder, with its id and change key
    return current


class EwsMailbox:
    """The inbox of one Exchange mailbox (see the module docstring for the choices)."""

    def __init__(self, settings: EwsSettings, folder: str = "INBOX",
                 processed_folder: str = "mailbot/processed",
                 quarantine_folder: str = "mailbot/quarantine", poll_seconds: float = 30):
        self.settings = settings
        self.folder = folder
        self._wanted = {"processed": processed_folder, "quarantine": quarantine_folder}
        self.poll_seconds = poll_seconds
        self.description = f"ews {settings.primary_smtp_address} at {settings.url}/{folder}"
        self._account = None
        self._inbox = None
        self._folders: dict[str, object] = {}
        self._known: set[str] = set()
        self._prefix = f"ews:{settings.primary_smtp_address}:"

    # -- connection (also used step by step by ``mailbot doctor``) ---------------------------
    def account(self):
        if self._account is None:
            self._account = connect(self.settings)
        return self._account

    def inbox(self):
        if self._inbox is None:
            account = self.account()
            if self.folder.upper() == "INBOX":
                self._inbox = account.inbox
            else:
                current = account.msg_folder_root
                for part in [p for p in self.folder.split("/") if p]:
                    current = current // part
                self._inbox = current
        return self._inbox

    def target(self, destination: Destination):
        if destination not in self._folders:
            self._folders[destination] = _ensure_path(self.account(), self.account().msg_folder_root,
                                                      self._wanted[destination])
        return self._folders[destination]

    def _run(self, what: str, func):
        try:
            return func()
        except TransportError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, HTTP, SOAP and EWS errors alike
            self._forget()
            raise translate(exc, what, self.description) from exc

    def _forget(self) -> None:
        """After trouble, look everything up again next time (folders may have been renamed)."""
        self._inbox = None
        self._folders = {}

    # -- contract ---------------------------------------------------------------------------
    def fetch(self, limit: int, max_bytes: int | None = None) -> list[Incoming]:
        def do() -> list[Incoming]:
            # folders first: a mailbox whose folders cannot be created fails before anything
            for destination in self._wanted:
                self.target(destination)
            query = self.inbox().all().order_by("datetime_received").only("mime_content")
            query.page_size = max(1, min(limit, 1000))
            query.chunk_size = GET_CHUNK
            out, total = Batch(), 0
            for item in query[:limit]:
                if isinstance(item, Exception):
                    raise item
                if item.mime_content is None:  # not expected from Exchange; leave it alone
                    log.warning("%s: item %s has no MIME content; left in the inbox",
                                self.description, item.id)
                    continue
                raw = item.mime_content
                raw = raw if isinstance(raw, bytes) else raw.encode("utf-8")
                if out and max_bytes is not None and total + len(raw) > max_bytes:
                    out.more = True  # items come GET_CHUNK at a time: stop asking for more
                    break
                total += len(raw)
                out.append(Incoming(self._prefix + item.id, raw))
            self._known = {m.uid for m in out}
            return out

        return self._run("fetch", do)

    def move(self, uids: list[str], destination: Destination) -> None:
        if not uids:
            return

        def do() -> None:
            from exchangelib.errors import ErrorItemNotFound

            ids = [uid.rsplit(":", 1)[1] for uid in uids]
            target = self.target(destination)
            results = self.account().bulk_move(ids=[(i, None) for i in ids], to_folder=target,
                                               chunk_size=100)
            for item_id, result in zip(ids, results):
                if isinstance(result, ErrorItemNotFound):
                    log.info("%s: %s was already gone; nothing to move", self.description, item_id)
                elif isinstance(result, Exception):
                    raise result
            self._known -= set(uids)

        self._run("move", do)

    def _inbox_uids(self) -> set[str]:
        ids = self.inbox().all().order_by("datetime_received").values_list("id", flat=True)
        return {self._prefix + i for i in ids}

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._run("poll", self._inbox_uids) - self._known:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pause(self, min(self.poll_seconds, left))
            if stopping_now(self):
                return False

    def close(self) -> None:
        account, self._account = self._account, None
        self._forget()
        if account is not None:
            try:
                account.protocol.close()  # the HTTP sessions; reopened when used again
            except Exception:  # noqa: BLE001
                pass


def _add_missing_recipients(raw: bytes, recipients: list[str]) -> bytes:
    """Exchange sends a MIME message to the addresses in its To/Cc/Bcc headers, not to an
    envelope.  Envelope recipients missing from those headers are added as a Bcc header (which
    Exchange strips on the way out), so nobody the outbox meant to reach is left out."""
    headers = BytesHeaderParser().parsebytes(raw)
    present = {addr.lower() for _n, addr in getaddresses(
        [str(v) for h in ("To", "Cc", "Bcc") for v in headers.get_all(h, [])]) if addr}
    missing = [r for r in recipients if r.lower() not in present]
    if not missing:
        return raw
    newline = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    return b"Bcc: " + ", ".join(missing).encode() + newline + raw


class EwsSender:
    """Sends through the Exchange mailbox: CreateItem SendAndSaveCopy with the MIME bytes.

    Exchange decides the recipients from the To/Cc/Bcc headers (see
    :func:`_add_missing_recipients`) and sends as the mailbox: a From address other than the
    mailbox needs "Send As" rights on the server, else Exchange refuses (ErrorSendAsDenied,
    a permanent failure)."""

    def __init__(self, settings: EwsSettings):
        self.settings = settings
        self.description = f"ews {settings.primary_smtp_address} at {settings.url} (send)"
        self._account = None
        self._sent_folder = None

    def send(self, raw: bytes, mail_from: str, recipients: list[str]) -> None:
        from exchangelib import Message
        from exchangelib.errors import EWSError

        try:
            if self._account is None:
                self._account = connect(self.settings)
            if self._sent_folder is None:
                self._sent_folder = self._account.sent
            message = Message(account=self._account, folder=self._sent_folder,
                              mime_content=_add_missing_recipients(raw, recipients))
            message.send_and_save()
        except TransportError:
            raise
        except EWSError as exc:
            if type(exc).__name__ in PERMANENT_SEND_ERRORS:
                raise PermanentSendError(f"Exchange refused the message: {type(exc).__name__}: "
                                         f"{exc}") from exc
            self._sent_folder = None
            raise translate(exc, "send", self.description) from exc
        except Exception as exc:  # noqa: BLE001 - network and HTTP errors
            self._sent_folder = None
            raise translate(exc, "send", self.description) from exc

    def close(self) -> None:
        account, self._account = self._account, None
        self._sent_folder = None
        if account is not None:
            try:
                account.protocol.close()
            except Exception:  # noqa: BLE001
                pass


def settings_from_config(box, *, max_wait: float | None = None) -> EwsSettings:
    """EwsSettings from a ``[mailbox]`` section (``mailbot.config.MailboxConfig``).

    Secrets are read here, from the environment variables the config names."""
    password = client_secret = None
    if box.auth_type in ("basic", "ntlm"):
        password = box.resolve_password()
    elif box.auth_type == "oauth2":
        client_secret = box.resolve_client_secret()
    return EwsSettings(
        url=box.ews_url, primary_smtp_address=box.primary_smtp_address, auth_type=box.auth_type,
        username=box.username, password=password, impersonation=box.impersonation,
        client_id=box.client_id, tenant_id=box.tenant_id, client_secret=client_secret,
        version=box.ews_version, timeout=box.timeout_seconds,
        max_wait=box.ews_max_wait_seconds if max_wait is None else max_wait)

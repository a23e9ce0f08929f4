"""An IMAP mailbox (imap-tools on top of imaplib).

Messages are identified by ``UIDVALIDITY:UID`` so an id never silently points at another
message after the server renumbers a folder.  Mail is read with ``BODY.PEEK[]`` (the
complainant's unread state is untouched) in bulk, and moved with ``UID MOVE`` when the server
has it (else COPY + flag + ``UID EXPUNGE``, never a bare EXPUNGE that would also remove other
clients' deleted mail).  Folder names are built with the server's own hierarchy delimiter and
created when missing.  New mail is awaited with IDLE when offered, else by polling.
"""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import time

from imap_tools import MailBox, MailBoxStartTls, MailBoxUnencrypted
from imap_tools.errors import MailboxLoginError
from imap_tools.utils import encode_folder

from mailbot.transport.base import Batch, Destination, Incoming, pause, TransportError, within_budget

_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
FETCH_CHUNK = 200
IDLE_SLICE = 1.0  # seconds between looks at the daemon's stop flag while idling


class ImapMailbox:
    def __init__(self, host: str, port: int, security: str, username: str, password: str,
                 folder: str = "INBOX", processed_folder: str = "mailbot/processed",
                 quarantine_folder: str = "mailbot/quarantine", poll_seconds: float = 30,
                 timeout: float = 60, token_provider=None):
        self.host, self.port, self.security = host, port, security
        self.username, self._password = username, password
        # OAuth2 (SASL XOAUTH2) instead of the password, e.g. for Microsoft 365: a
        # mailbot.transport.oauth.TokenProvider, asked for a token at every login
        self.token_provider = token_provider
        self.folder = folder
        self._wanted = {"processed": processed_folder, "quarantine": quarantine_folder}
        self.poll_seconds = poll_seconds
        self.timeout = timeout
        self.description = f"imap {username}@{host}:{port}/{folder}"
        self._box = None
        self._folders: dict[str, str] = {}
        self.uidvalidity = ""
        self.capabilities: set[str] = set()

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            if self.security == "ssl":
                box = MailBox(self.host, self.port, timeout=self.timeout,
                              ssl_context=ssl.create_default_context())
            elif self.security == "starttls":
                box = MailBoxStartTls(self.host, self.port, timeout=self.timeout,
                                      ssl_context=ssl.create_default_context())
            else:
                box = MailBoxUnencrypted(self.host, self.port, timeout=self.timeout)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise TransportError(f"{self.description}: cannot connect: {exc}") from exc
        if self.token_provider is not None:
            self._login_xoauth2(box)
        else:
            try:
                box.login(self.username, self._password, initial_folder=None)
            except MailboxLoginError as exc:
                box.client.shutdown()
                raise TransportError(f"{self.description}: login refused for {self.username}") from exc
        # The pre-login greeting may not list MOVE/IDLE/UIDPLUS: ask again now we are in.
        typ, data = box.client.capability()
        if typ == "OK" and data and data[-1]:
            box.client.capabilities = tuple(data[-1].decode().upper().split())
        self.capabilities = set(box.client.capabilities)
        self._box = box
        delimiter = self._delimiter()
        self._folders = {}
        for kind, name in self._wanted.items():
            server_name = name.replace("/", delimiter) if delimiter else name
            if not box.folder.exists(server_name):
                box.folder.create(server_name)
            self._folders[kind] = server_name
        status = box.folder.status(self.folder, ["UIDVALIDITY"])
        self.uidvalidity = str(status["UIDVALIDITY"])
        box.folder.set(self.folder)

    def _login_xoauth2(self, box) -> None:
        """AUTHENTICATE XOAUTH2 with a token from the provider; a refused token is forgotten and
        a fresh one tried once (a token may end between the provider's check and the login, and
        Exchange Online closes sessions whose token expired, so reconnects need a new one)."""
        for attempt in (1, 2):
            token = self.token_provider.token()  # an OAuthError is a TransportError
            try:
                box.xoauth2(self.username, token, initial_folder=None)
                return
            except (MailboxLoginError, imaplib.IMAP4.error) as exc:
                self.token_provider.invalidate(token)
                if attempt == 2:
                    box.client.shutdown()
                    raise TransportError(f"{self.description}: OAuth2 login (XOAUTH2) refused for "
                                         f"{self.username}: {exc}") from exc

    def _delimiter(self) -> str:
        for info in self._box.folder.list(search_args="%"):
            if info.delim:
                return info.delim
        return "/"

    def _ensure(self):
        if self._box is None:
            self._connect()
        return self._box

    def _run(self, what: str, func):
        """Run one server conversation; connection trouble becomes TransportError and a reconnect."""
        try:
            box = self._ensure()
            return func(box)
        except TransportError:
            self.close()
            raise
        except (OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort, socket.timeout, Exception) as exc:
            self.close()
            raise TransportError(f"{self.description}: {what} failed: {exc}") from exc

    # -- contract ---------------------------------------------------------------------------
    def fetch(self, limit: int, max_bytes: int | None = None) -> list[Incoming]:
        def do(box) -> list[Incoming]:
            box.client.noop()  # let the server tell us about new mail
            # Mail announced so far is in the SEARCH below; an EXISTS from here on (with the
            # answer to SEARCH, FETCH, MOVE...) is news that ends the next wait at once.
            box.client.untagged_responses.pop("EXISTS", None)
            typ, data = box.client.uid("SEARCH", None, "UNDELETED")
            if typ != "OK":
                raise TransportError(f"SEARCH refused: {data!r}")
            uids = data[0].split()[:limit] if data and data[0] else []
            more = False
            if max_bytes is not None and uids:
                sizes = self._sizes(box, uids)
                keep = within_budget([sizes.get(uid, 0) for uid in uids], max_bytes)
                uids, more = uids[:keep], keep < len(uids)
            out = Batch(more=more)
            for start in range(0, len(uids), FETCH_CHUNK):
                chunk = b",".join(uids[start:start + FETCH_CHUNK]).decode()
                typ, data = box.client.uid("FETCH", chunk, "(UID BODY.PEEK[])")
                if typ != "OK":
                    raise TransportError(f"FETCH refused: {data!r}")
                for item in data:
                    if isinstance(item, tuple) and len(item) == 2:
                        match = _UID.search(item[0])
                        if match:
                            uid = match.group(1).decode()
                            out.append(Incoming(f"imap:{self.folder}:{self.uidvalidity}:{uid}",
                                                item[1]))
            return out

        return self._run("fetch", do)

    @staticmethod
    def _sizes(box, uids: list[bytes]) -> dict[bytes, int]:
        """Each message's size in bytes, asked before the bodies are fetched."""
        sizes: dict[bytes, int] = {}
        for start in range(0, len(uids), FETCH_CHUNK * 5):
            typ, data = box.client.uid("FETCH", b",".join(uids[start:start + FETCH_CHUNK * 5]).decode(),
                                       "(UID RFC822.SIZE)")
            if typ != "OK":
                raise TransportError(f"FETCH RFC822.SIZE refused: {data!r}")
            for item in data:
                line = item[0] if isinstance(item, tuple) else item
                uid, size = _UID.search(line or b""), _SIZE.search(line or b"")
                if uid and size:
                    sizes[uid.group(1)] = int(size.group(1))
        return sizes

    def count(self) -> int:
        """Messages waiting in the inbox (for `mailbot status`)."""
        def do(box) -> int:
            typ, data = box.client.uid("SEARCH", None, "UNDELETED")
            return len(data[0].split()) if typ == "OK" and data and data[0] else 0

        return self._run("count", do)

    def requeue(self) -> int:
        """Put every quarantined message back into the inbox (after the cause was fixed)."""
        def do(box) -> int:
            try:
                box.folder.set(self._folders["quarantine"])
                typ, data = box.client.uid("SEARCH", None, "UNDELETED")
                found = data[0].split() if typ == "OK" and data and data[0] else []
                target = encode_folder(self.folder)
                for start in range(0, len(found), 500):
                    uidset = b",".join(found[start:start + 500]).decode()
                    if "MOVE" in self.capabilities:
                        box.client.uid("MOVE", uidset, target)
                    else:
                        box.client.uid("COPY", uidset, target)
                        box.client.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted)")
                        box.client.expunge()
                return len(found)
            finally:
                box.folder.set(self.folder)

        return self._run("requeue", do)

    def delete_handled(self, message_ids: list[str]) -> int:
        """Remove handled copies (processed and quarantine folders) with these Message-IDs:
        retention and erasure must not leave the mail behind in the mailbox."""
        def do(box) -> int:
            removed = 0
            try:
                for folder in self._folders.values():
                    box.folder.set(folder)
                    for message_id in message_ids:
                        quoted = '"' + message_id.replace("\\", "\\\\").replace('"', '\\"') + '"'
                        typ, data = box.client.uid("SEARCH", None, "HEADER", "Message-ID", quoted)
                        found = data[0].split() if typ == "OK" and data and data[0] else []
                        if not found:
                            continue
                        uidset = b",".join(found).decode()
                        box.client.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted)")
                        if "UIDPLUS" in self.capabilities:
                            box.client.uid("EXPUNGE", uidset)
                        else:
                            box.client.expunge()
                        removed += len(found)
            finally:
                box.folder.set(self.folder)
            return removed

        return self._run("delete", do)

    def move(self, uids: list[str], destination: Destination) -> None:
        if not uids:
            return

        def do(box) -> None:
            plain = []
            for uid in uids:
                _kind, _folder, validity, number = uid.rsplit(":", 3)
                if validity == self.uidvalidity:
                    plain.append(number)  # a stale UIDVALIDITY: the message will be fetched anew
            target = encode_folder(self._folders[destination])
            for start in range(0, len(plain), 1000):
                uidset = ",".join(plain[start:start + 1000])
                if "MOVE" in self.capabilities:
                    typ, data = box.client.uid("MOVE", uidset, target)
                    if typ != "OK":
                        raise TransportError(f"MOVE refused: {data!r}")
                    continue
                typ, data = box.client.uid("COPY", uidset, target)
                if typ != "OK":
                    raise TransportError(f"COPY refused: {data!r}")
                box.client.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted)")
                if "UIDPLUS" in self.capabilities:
                    box.client.uid("EXPUNGE", uidset)
                else:
                    box.client.expunge()

        self._run("move", do)

    def wait(self, timeout: float) -> bool:
        self._run("connect", lambda box: None)
        if "IDLE" not in self.capabilities:
            pause(self, min(timeout, self.poll_seconds))
            return False

        return self._run("idle", lambda box: _idle(box, min(timeout, 25 * 60), getattr(self, "stopping", None)))

    def close(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            try:
                box.logout()
            except Exception:  # noqa: BLE001 - the connection may already be dead
                try:
                    box.client.shutdown()
                except Exception:  # noqa: BLE001
                    pass


def _idle(box, timeout: float, stopping=None) -> bool:
    """One IDLE (RFC 2177): True as soon as the server reports a change, False after ``timeout``.

    Mail that came while we were not idling (during the last round) must not wait for the next
    message or the timeout (up to ``poll_seconds``).  The server reports it either with the
    answer to a command after the last fetch's SEARCH (an untagged EXISTS, which imaplib keeps
    in ``untagged_responses``), or as soon as IDLE starts, and Dovecot sends that in the same
    packet as its "+ idling": imaplib then already holds it in its read buffer, where a poll of
    the socket (imap_tools' ``idle.poll``) cannot see it.  Both count as news.
    """
    client = box.client
    if client.untagged_responses.pop("EXISTS", None):
        return True
    tag = client._command("IDLE")  # imaplib's own command writer, as imap_tools' idle.start
    news = False
    while client._get_response() is not None:  # None: the continuation "+ idling"
        if client.tagged_commands.get(tag):  # refused (NO/BAD) instead of a continuation
            typ, data = client.tagged_commands.pop(tag)
            raise TransportError(f"IDLE refused: {typ} {data!r}")
        news = True  # an untagged response before the continuation: something changed
    try:
        if news or _buffered(client):
            return True
        deadline = time.monotonic() + timeout
        while True:  # in short slices, so a daemon told to stop is not kept waiting
            responses = box.idle.poll(timeout=min(IDLE_SLICE, max(0.0, deadline - time.monotonic())))
            if any(b"EXISTS" in r or b"RECENT" in r for r in responses):
                return True
            if (stopping is not None and stopping.is_set()) or time.monotonic() >= deadline:
                return False
    finally:
        client.send(b"DONE\r\n")
        box.consume_until_tagged_response(tag)


def _buffered(client) -> bool:
    """Whether the server has already sent more than imaplib handed out (in imaplib's buffer,
    or, on TLS, decrypted and waiting in the SSL object): data a socket poll does not see."""
    sock = client.sock
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    old = sock.gettimeout()
    sock.settimeout(0)  # peek reads from the socket only when the buffer is empty: never block
    try:
        return bool(client.file.peek(1))
    except (OSError, ValueError):  # nothing there (EAGAIN, SSL want-read)
        return False
    finally:
        sock.settimeout(old)

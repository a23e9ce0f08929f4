"""A Microsoft 365 mailbox over Microsoft Graph, behind the same contract as IMAP and EWS.

For Exchange Online after Microsoft switches EWS off there (see the README).  The choices:

* **Ids.**  Every request says ``Prefer: IdType="ImmutableId"``: an item's id then stays the
  same for as long as it is in the mailbox, also when it is moved between folders.  A message's
  uid is ``graph:<mailbox>:<immutable id>``.  Because a moved item keeps its id, "moving twice
  is harmless" cannot come from the server answering "not found" as with IMAP or EWS: mailbot
  moves only ids its own copy of the inbox list still holds, and drops each id from that list
  (in the database) once it was moved.
* **Reading.**  The inbox is followed with a *delta query*
  (``mailFolders/inbox/messages/delta``): the first round lists every message (page by page,
  following ``@odata.nextLink`` exactly as given), later rounds only what was added or removed
  since the ``@odata.deltaLink`` of the round before.  mailbot keeps that link *and* the list of
  ids in the inbox (with their received time, for oldest-first) in its database
  (:class:`DatabaseDeltaStore`), in one transaction, so a restart picks up where it stopped
  with one cheap request and still sees the messages that were waiting before the restart.
  A delta link the service no longer knows (HTTP 410) starts a full round again.  Each message
  is then read as its MIME source (``messages/{id}/$value``), so parsing is the same as for
  IMAP; nothing is marked read and nothing is deleted.
* **Folders.**  ``processed_folder``/``quarantine_folder`` are paths below the top of the
  mailbox (``msgfolderroot``), so Outlook shows a ``mailbot`` folder next to Inbox, as with EWS.
  Each level is looked up by name (``childFolders?$filter=displayName eq '...'``) and created
  when missing (``ErrorFolderExists`` from a second daemon is fine).
* **Moving.**  ``POST messages/{id}/move`` with the folder's id; an item that is gone already
  (404) is skipped.
* **Sending** (:class:`GraphSender`): ``POST sendMail`` with the letter's own MIME, base64 in a
  ``text/plain`` body: threading headers survive, and Exchange keeps a copy in Sent Items.
  Graph takes at most 4 MB per request, so a bigger letter is refused for good with a
  sentence that says so (mailbot's letters are a few kilobytes).
* **Trouble.**  Graph throttles with 429 (and 503) and a ``Retry-After``: mailbot waits as
  asked, with tenacity, up to ``max_wait`` seconds in all, then gives up for this round;
  other 5xx answers and dropped connections are retried with exponential back-off for
  requests that are safe to repeat (not for sendMail, where the outbox retries later).  A 401
  makes the token provider forget the token and the request is tried once more with a new one
  (a token can expire between two requests).  Everything reaches the daemon as a
  :class:`TransportError` (:class:`GraphError` carries the HTTP status and Graph's error code),
  except a letter Graph refuses for good, which is a :class:`PermanentSendError`.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol
from urllib.parse import quote, urlsplit

from sqlalchemy import Column, Text, delete, insert
from sqlmodel import Field, SQLModel, col, select

from mailbot.transport.base import (Batch, Destination, Incoming, pause, PermanentSendError, stopping_now,
                                    TransportError)
from mailbot.transport.oauth import TokenProvider

log = logging.getLogger(__name__)

#: Graph refuses requests larger than this (sendMail with MIME included).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Graph's error codes for a letter that no retry would fix.
PERMANENT_SEND_ERRORS = {
    "ErrorInvalidRecipients", "ErrorInvalidSmtpAddress", "ErrorMimeContentConversionFailed",
    "ErrorMimeContentInvalid", "ErrorMimeContentInvalidBase64String", "ErrorMessageSizeExceeded",
    "ErrorSendAsDenied", "ErrorInvalidRecipientSubfilter", "ErrorQuotaExceeded",
}
USER_AGENT = "mailbot (+https://example.org/mailbot)"


@dataclass(frozen=True)
class GraphSettings:
    mailbox: str  # the mailbox's address (or its user id)
    base_url: str = "https://graph.microsoft.com/v1.0"
    timeout: float = 60
    max_wait: float = 120  # seconds, in all, to wait for Retry-After/back-off in one call
    page_size: int = 100  # Prefer: odata.maxpagesize for delta pages
    max_attempts: int = 8


class GraphError(TransportError):
    def __init__(self, message: str, status: int = 0, code: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


class _Again(Exception):
    """One attempt failed in a way worth trying again (after ``after`` seconds, if known)."""

    def __init__(self, error: GraphError, after: float | None):
        super().__init__(str(error))
        self.error, self.after = error, after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


def _error_of(response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
        return str(error.get("code", "")), str(error.get("message", ""))
    except ValueError:
        return "", (response.text or "")[:200]


class GraphClient:
    """Requests to one mailbox's part of Graph: token, ImmutableId, retries (module docstring)."""

    def __init__(self, settings: GraphSettings, tokens: TokenProvider, session=None):
        import requests

        self.settings = settings
        self.tokens = tokens
        self.session = session or requests.Session()
        base = settings.base_url.rstrip("/")
        self.base = f"{base}/users/{quote(settings.mailbox, safe='@')}"
        parts = urlsplit(base)
        self._origin = (parts.scheme, parts.netloc.lower())
        #: requests sent (method, url) -- for logs and tests
        self.sent = 0

    def url(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            parts = urlsplit(path)
            if (parts.scheme, parts.netloc.lower()) != self._origin:
                # never send the mailbox's token to another host
                raise GraphError(f"Graph answered with a link to another host: {path[:100]}")
            return path
        return f"{self.base}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, params=None, json=None, data=None,
                headers: dict | None = None, prefer: tuple[str, ...] = (),
                retry_ambiguous: bool = True, expect: tuple[int, ...] = (200,)):
        """One Graph call with retries; returns the ``requests.Response`` or raises GraphError."""
        from tenacity import Retrying, retry_if_exception_type

        url = self.url(path)
        refreshed = {"done": False}
        s = self.settings

        def attempt():
            import requests

            token = self.tokens.token()
            sent_headers = {"Authorization": f"Bearer {token}",
                            "Prefer": ", ".join(('IdType="ImmutableId"',) + prefer),
                            "client-request-id": str(uuid.uuid4()),
                            "User-Agent": USER_AGENT, "Accept": "application/json"}
            sent_headers.update(headers or {})
            try:
                self.sent += 1
                response = self.session.request(method, url, params=params, json=json, data=data,
                                                headers=sent_headers, timeout=s.timeout)
            except requests.RequestException as exc:
                error = GraphError(f"{method} {path}: {type(exc).__name__}: {exc}")
                if retry_ambiguous:
                    raise _Again(error, None) from exc
                raise error from exc
            status = response.status_code
            if status in expect:
                return response
            code, message = _error_of(response)
            after = _retry_after(response.headers.get("Retry-After"))
            error = GraphError(f"{method} {path.split('?')[0][:80]}: HTTP {status} {code}: {message}",
                               status=status, code=code, retry_after=after)
            if status == 401 and not refreshed["done"]:
                # the token ended early or was revoked: a new one, and once more
                self.tokens.invalidate(token)
                refreshed["done"] = True
                raise _Again(error, 0.0)
            if status in (429, 503) or (status in (500, 502, 504) and retry_ambiguous):
                raise _Again(error, after)
            raise error

        def wait(state) -> float:
            exc = state.outcome.exception()
            if isinstance(exc, _Again) and exc.after is not None:
                return exc.after
            return min(30.0, 0.5 * 2 ** (state.attempt_number - 1))

        def stop(state) -> bool:
            # the coming pause is worked out here too: give up *before* a wait past max_wait
            return (state.attempt_number >= s.max_attempts
                    or (state.seconds_since_start or 0) + wait(state) > s.max_wait)

        try:
            for try_ in Retrying(retry=retry_if_exception_type(_Again), wait=wait, stop=stop,
                                 reraise=True, sleep=time.sleep):
                with try_:
                    return attempt()
        except _Again as again:
            error = again.error
            if error.status in (429, 503):
                raise GraphError(f"Graph is busy and asked us to wait longer than allowed "
                                 f"({error})", status=error.status, code=error.code,
                                 retry_after=error.retry_after) from again
            raise error from again
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise GraphError(f"{method} {path}: the answer is not JSON") from exc


# -- where the delta link and the inbox list are kept ------------------------------------------------
class GraphDeltaState(SQLModel, table=True):
    """The last delta link of one mailbox folder."""

    __tablename__ = "graph_delta_state"
    key: str = Field(primary_key=True)  # "<mailbox>/<folder>"
    delta_link: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    updated_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class GraphInboxItem(SQLModel, table=True):
    """One message waiting in that folder, as the delta rounds so far have shown it."""

    __tablename__ = "graph_inbox_item"
    key: str = Field(primary_key=True)
    item_id: str = Field(primary_key=True)
    received: str = ""  # receivedDateTime as Graph gives it (ISO 8601, UTC): sorts as text


class DeltaStore(Protocol):
    def load(self, key: str) -> tuple[str | None, dict[str, str]]: ...

    def save(self, key: str, link: str | None, added: dict[str, str], removed: set[str],
             replace: bool) -> None:
        """Apply one round: ``replace`` drops the old list first; ``link`` None keeps the old."""
        ...


class MemoryDeltaStore:
    """In memory only: every restart begins with a full round."""

    def __init__(self):
        self._data: dict[str, tuple[str | None, dict[str, str]]] = {}

    def load(self, key: str) -> tuple[str | None, dict[str, str]]:
        link, items = self._data.get(key, (None, {}))
        return link, dict(items)

    def save(self, key, link, added, removed, replace) -> None:
        old_link, items = self._data.get(key, (None, {}))
        items = {} if replace else dict(items)
        for item_id in removed:
            items.pop(item_id, None)
        items.update(added)
        self._data[key] = (link if link is not None else old_link, items)


class DatabaseDeltaStore:
    """In mailbot's database (SQLite or PostgreSQL), one transaction per round."""

    def __init__(self, db):
        from mailbot.db import create_schema

        self.db = db
        create_schema(db.engine)  # our two tables, if this database does not have them yet

    def load(self, key: str) -> tuple[str | None, dict[str, str]]:
        with self.db.session() as session:
            state = session.get(GraphDeltaState, key)
            rows = session.exec(select(GraphInboxItem).where(col(GraphInboxItem.key) == key)).all()
            return (state.delta_link or None) if state else None, {r.item_id: r.received for r in rows}

    def save(self, key, link, added, removed, replace) -> None:
        with self.db.session() as session:
            # lock the folder's row: two daemons on one PostgreSQL database take turns
            state = session.exec(select(GraphDeltaState).where(col(GraphDeltaState.key) == key)
                                 .with_for_update()).first()
            if state is None:
                state = GraphDeltaState(key=key)
                session.add(state)
                session.flush()
            if link is not None:
                state.delta_link = link
                state.updated_at = datetime.now(timezone.utc)
                session.add(state)
            table = GraphInboxItem.__table__
            if replace:
                session.execute(delete(table).where(table.c.key == key))
            touched = sorted(set(added) | set(removed)) if not replace else []
            for start in range(0, len(touched), 500):
                chunk = touched[start:start + 500]
                session.execute(delete(table).where(table.c.key == key, table.c.item_id.in_(chunk)))
            rows = [{"key": key, "item_id": i, "received": r} for i, r in added.items()]
            for start in range(0, len(rows), 1000):
                session.execute(insert(table), rows[start:start + 1000])


def _quote_odata(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class GraphMailbox:
    """The inbox of one Microsoft 365 mailbox over Graph (see the module docstring)."""

    def __init__(self, settings: GraphSettings, tokens: TokenProvider, *,
                 state: DeltaStore | None = None, folder: str = "INBOX",
                 processed_folder: str = "mailbot/processed",
                 quarantine_folder: str = "mailbot/quarantine", poll_seconds: float = 30,
                 session=None):
        self.settings = settings
        self.client = GraphClient(settings, tokens, session)
        self.state = state or MemoryDeltaStore()
        self.folder = folder
        self._wanted = {"processed": processed_folder, "quarantine": quarantine_folder}
        self.poll_seconds = poll_seconds
        self.description = f"graph {settings.mailbox}/{folder}"
        self._prefix = f"graph:{settings.mailbox.lower()}:"
        self._key = f"{settings.mailbox.lower()}/{folder}"
        self._folder_path: str | None = None
        self._folders: dict[str, str] = {}
        self._index: dict[str, str] | None = None
        self._link: str | None = None
        self._link_saved_at = 0.0
        self._known: set[str] = set()
        #: delta rounds run, and how many of them started from scratch (for logs and tests)
        self.rounds = 0
        self.full_rounds = 0

    # -- folders (also used step by step by ``mailbot doctor``) ------------------------------------
    def inbox_path(self) -> str:
        if self._folder_path is None:
            if self.folder.upper() == "INBOX":
                self._folder_path = "mailFolders/inbox"
            else:
                folder_id = self._find_path(self.folder, create=False)
                if folder_id is None:
                    raise GraphError(f"{self.description}: there is no folder {self.folder!r} "
                                     "below the top of the mailbox", status=404,
                                     code="ErrorFolderNotFound")
                self._folder_path = f"mailFolders/{folder_id}"
        return self._folder_path

    def _child(self, parent: str, name: str) -> str | None:
        found = self.client.json("GET", f"mailFolders/{parent}/childFolders", params={
            "$filter": f"displayName eq {_quote_odata(name)}", "$select": "id,displayName"})
        for folder in found.get("value", []):
            if str(folder.get("displayName", "")).lower() == name.lower():
                return folder["id"]
        return None

    def _find_path(self, path: str, create: bool) -> str | None:
        current = "msgfolderroot"
        for part in [p for p in path.split("/") if p]:
            found = self._child(current, part)
            if found is None:
                if not create:
                    return None
                try:
                    made = self.client.json("POST", f"mailFolders/{current}/childFolders",
                                            json={"displayName": part}, expect=(201,))
                    found = made["id"]
                except GraphError as exc:
                    if exc.code != "ErrorFolderExists":  # made meanwhile by another daemon
                        raise
                    found = self._child(current, part)
                    if found is None:
                        raise
            current = found
        return current

    def target(self, destination: Destination) -> str:
        if destination not in self._folders:
            self._folders[destination] = self._find_path(self._wanted[destination], create=True)
        return self._folders[destination]

    def _run(self, what: str, func):
        try:
            return func()
        except GraphError as exc:
            self._folders, self._folder_path = {}, None  # look them up again next time
            raise GraphError(f"{self.description}: {what} failed: {exc}", status=exc.status,
                             code=exc.code, retry_after=exc.retry_after) from exc
        except TransportError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._folders, self._folder_path = {}, None
            raise TransportError(f"{self.description}: {what} failed: {type(exc).__name__}: "
                                 f"{exc}") from exc

    # -- the inbox list, kept by delta rounds ---------------------------------------------------------
    def _load(self) -> dict[str, str]:
        if self._index is None:
            self._link, self._index = self.state.load(self._key)
            self._link_saved_at = time.monotonic()
        return self._index

    def sync(self) -> dict[str, str]:
        """One delta round; returns the inbox list (id -> receivedDateTime)."""
        index = self._load()
        link, full = self._link, self._link is None
        added: dict[str, str] = {}
        removed: set[str] = set()
        url = link or f"{self.inbox_path()}/messages/delta"
        params = None if link else {"$select": "receivedDateTime"}
        pages = 0
        while True:
            try:
                page = self.client.json("GET", url, params=params,
                                        prefer=(f"odata.maxpagesize={self.settings.page_size}",))
            except GraphError as exc:
                if exc.status == 410 and not full:
                    # the service no longer knows our delta token: list everything again
                    log.info("%s: delta link expired (%s); starting a full round",
                             self.description, exc.code)
                    url, params, full = f"{self.inbox_path()}/messages/delta", \
                        {"$select": "receivedDateTime"}, True
                    added, removed = {}, set()
                    continue
                raise
            pages += 1
            params = None  # links carry their own query
            for entry in page.get("value", []):
                item_id = entry.get("id")
                if not item_id:
                    continue
                if "@removed" in entry:
                    removed.add(item_id)
                    added.pop(item_id, None)
                else:
                    added[item_id] = str(entry.get("receivedDateTime") or "")
                    removed.discard(item_id)
            if page.get("@odata.nextLink"):
                url = page["@odata.nextLink"]
                continue
            if page.get("@odata.deltaLink"):
                new_link = page["@odata.deltaLink"]
                break
            raise GraphError(f"{self.description}: a delta page with neither @odata.nextLink nor "
                             "@odata.deltaLink")
        self.rounds += 1
        self.full_rounds += full
        if full:
            index = dict(added)
        else:
            for item_id in removed:
                index.pop(item_id, None)
            index.update(added)
        changed = full or added or removed
        # An unchanged round's new link is as good as the old one: write it only now and then.
        if changed or time.monotonic() - self._link_saved_at > 600:
            self.state.save(self._key, new_link, added, removed, replace=full)
            self._link_saved_at = time.monotonic()
        self._index, self._link = index, new_link
        return index

    # -- contract ---------------------------------------------------------------------------------
    def fetch(self, limit: int, max_bytes: int | None = None) -> list[Incoming]:
        def do() -> list[Incoming]:
            # folders first: a mailbox whose folders cannot be made fails before anything
            for destination in self._wanted:
                self.target(destination)
            index = self.sync()
            oldest = sorted(index.items(), key=lambda kv: (kv[1], kv[0]))[:limit]
            out, total = Batch(), 0
            for item_id, _received in oldest:
                try:
                    response = self.client.request("GET", f"messages/{quote(item_id, safe='')}/$value")
                except GraphError as exc:
                    if exc.status == 404:
                        # moved or deleted since the delta round: skipped now, and dropped from
                        # the list when the next round reports it removed (never on a 404 alone,
                        # which must not make a waiting message invisible)
                        log.info("%s: %s not found; skipped this round", self.description, item_id)
                        continue
                    raise
                if out and max_bytes is not None and total + len(response.content) > max_bytes:
                    out.more = True  # it and the rest wait for the next fetch, not in memory
                    break
                total += len(response.content)
                out.append(Incoming(self._prefix + item_id, response.content))
            self._known = {m.uid for m in out}
            return out

        return self._run("fetch", do)

    def _forget(self, ids: set[str]) -> None:
        for item_id in ids:
            self._index.pop(item_id, None)
        self.state.save(self._key, None, {}, ids, replace=False)

    def move(self, uids: list[str], destination: Destination) -> None:
        if not uids:
            return

        def do() -> None:
            index = self._load()
            target = self.target(destination)
            moved: set[str] = set()
            try:
                for uid in uids:
                    item_id = uid.rsplit(":", 1)[1]
                    if item_id not in index or item_id in moved:
                        continue  # moved already (an immutable id does not change when moved)
                    try:
                        self.client.request("POST", f"messages/{quote(item_id, safe='')}/move",
                                            json={"destinationId": target}, expect=(200, 201))
                    except GraphError as exc:
                        if exc.status != 404:
                            raise
                        log.info("%s: %s was already gone; nothing to move", self.description,
                                 item_id)
                    moved.add(item_id)
            finally:
                if moved:
                    self._forget(moved)
                    self._known -= {self._prefix + i for i in moved}

        self._run("move", do)

    def _list(self, folder_id: str, params: dict) -> list[str]:
        """Ids of the messages in a folder matching ``params`` (all pages)."""
        ids: list[str] = []
        url, query = f"mailFolders/{folder_id}/messages", {**params, "$select": "id", "$top": "100"}
        while url:
            page = self.client.json("GET", url, params=query)
            ids += [m["id"] for m in page.get("value", []) if m.get("id")]
            url, query = page.get("@odata.nextLink"), None
        return ids

    def delete_handled(self, message_ids: list[str]) -> int:
        """Delete for good the handled copies (processed and quarantine folders) with these
        Message-IDs: retention and erasure must not leave the mail behind in the mailbox
        (``permanentDelete``: not even in Recoverable Items)."""
        def do() -> int:
            removed = 0
            for destination in self._wanted:
                folder_id = self.target(destination)
                for message_id in message_ids:
                    wanted = message_id.strip()
                    wanted = wanted if wanted.startswith("<") else f"<{wanted}>"
                    for item_id in self._list(folder_id, {
                            "$filter": f"internetMessageId eq {_quote_odata(wanted)}"}):
                        try:
                            self.client.request("POST", f"messages/{quote(item_id, safe='')}"
                                                "/permanentDelete", expect=(204,))
                        except GraphError as exc:
                            if exc.status != 404:
                                raise
                            continue
                        removed += 1
            return removed

        return self._run("delete", do)

    def requeue(self) -> int:
        """Put every quarantined message back into the inbox (after the cause was fixed); the
        next delta round lists them again, with the same ids."""
        def do() -> int:
            moved = 0
            for item_id in self._list(self.target("quarantine"), {}):
                self.client.request("POST", f"messages/{quote(item_id, safe='')}/move",
                                    json={"destinationId": "inbox"}, expect=(200, 201))
                moved += 1
            return moved

        return self._run("requeue", do)

    def count(self) -> int:
        """Messages waiting in the inbox (for ``mailbot status``): one delta round."""
        return len(self._run("count", self.sync))

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            index = self._run("poll", self.sync)
            if {self._prefix + i for i in index} - self._known:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pause(self, min(self.poll_seconds, left))
            if stopping_now(self):
                return False

    def close(self) -> None:
        self._folders, self._folder_path = {}, None
        try:
            self.client.session.close()
        except Exception:  # noqa: BLE001
            pass


class GraphSender:
    """Sends as the mailbox: ``POST sendMail`` with the letter's MIME (module docstring).

    Graph takes the recipients from the To/Cc/Bcc headers; envelope recipients missing from
    them are added as a Bcc header (as for EWS).  Sending as another address than the mailbox
    needs "Send As" rights (else ErrorSendAsDenied, a permanent failure)."""

    def __init__(self, settings: GraphSettings, tokens: TokenProvider, session=None):
        self.settings = settings
        self.client = GraphClient(settings, tokens, session)
        self.description = f"graph {settings.mailbox} (send)"

    def send(self, raw: bytes, mail_from: str, recipients: list[str]) -> None:
        from mailbot.transport.ews import _add_missing_recipients

        body = base64.b64encode(_add_missing_recipients(raw, recipients))
        if len(body) > MAX_REQUEST_BYTES:
            raise PermanentSendError(
                f"the letter is {len(raw) // 1024} KB; Microsoft Graph's sendMail takes at most "
                f"4 MB (base64 included), so it cannot be sent this way (send it with "
                f"[outgoing] kind = \"smtp\" and auth = \"oauth2\" instead)")
        try:
            # not retried on ambiguous failures (500/502/504, a timeout): the letter may have
            # gone; the outbox tries again later, as after an SMTP connection lost after DATA
            self.client.request("POST", "sendMail", data=body,
                                headers={"Content-Type": "text/plain"}, retry_ambiguous=False,
                                expect=(202,))
        except GraphError as exc:
            if exc.code in PERMANENT_SEND_ERRORS or exc.status == 413:
                raise PermanentSendError(f"Microsoft Graph refused the letter: {exc}") from exc
            raise GraphError(f"{self.description}: {exc}", status=exc.status, code=exc.code,
                             retry_after=exc.retry_after) from exc

    def close(self) -> None:
        try:
            self.client.session.close()
        except Exception:  # noqa: BLE001
            pass


def settings_from_config(box) -> GraphSettings:
    return GraphSettings(mailbox=box.primary_smtp_address, base_url=box.graph_url,
                         timeout=box.timeout_seconds, max_wait=box.graph_max_wait_seconds)

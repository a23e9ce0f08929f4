"""A small, strict Microsoft Graph mail endpoint on loopback (HTTPS), for tests.

No Graph service can run here, so this one answers the subset of Graph that mailbot uses, with
the response shapes of Microsoft's Graph reference (message delta, get MIME content, move,
mail folders and child folders, sendMail with MIME), and checks every request:

* **the token**: ``Authorization: Bearer <JWT>`` verified with the test issuer's public key
  (signature, ``exp``/``nbf``, issuer, audience ``https://graph.microsoft.com``); an expired or
  otherwise bad token gets Graph's ``401 InvalidAuthenticationToken``.  Permissions come from
  the token's ``roles`` (application) or ``scp`` (delegated): reading, moving and folders need
  ``Mail.ReadWrite``, sending ``Mail.Send``; without them, or when the mailbox is outside the
  app's application access policy (:attr:`GraphFake.excluded`), ``403 ErrorAccessDenied``.
* **the request**: method, path (only this mailbox, only the routes below), query (only the
  options each route takes, ``$filter`` only as ``displayName eq '...'``, ``$select`` only
  known properties), headers (``Prefer: IdType="ImmutableId"`` on every request,
  ``Content-Type`` on POSTs: JSON, or ``text/plain`` base64 MIME for sendMail).
  Anything else is answered with a Graph error *and* recorded in :attr:`GraphFake.problems`;
  the ``graph_server`` fixture fails the test when that list is not empty.  Moving an item
  that is not in the inbox is recorded too: mailbot must move only what it fetched.

Behaviour:

* delta (``mailFolders/{id}/messages/delta``): the first round lists the folder, later rounds
  (``$deltatoken``) what was added, changed or removed (``{"id", "@removed": {"reason":
  "deleted"}}``) since; pages of :attr:`GraphFake.max_page_size` (or the client's
  ``Prefer: odata.maxpagesize``, whichever is smaller) linked by ``@odata.nextLink``
  (``$skiptoken``), the last one with ``@odata.deltaLink``.  :meth:`expire_delta_tokens` makes
  old tokens answer ``410 Gone`` (``SyncStateNotFound``), as when Exchange drops a sync state.
* ids are immutable (with ``Prefer: IdType="ImmutableId"``): a moved item keeps its id;
  they look like real ones (base64url with ``-``, ``_`` and a trailing ``=``).
* :meth:`throttle` answers the next N matching requests with ``429`` (``ApplicationThrottled``)
  or ``503`` and a ``Retry-After``; :meth:`fail` with any status and error code;
  :meth:`expire_tokens_now` / :meth:`expire_tokens_after` make the tokens seen so far
  expire (at once, or after N more requests: in the middle of a run).
* sendMail takes at most 4 MB (``413`` beyond), refuses bad base64
  (``ErrorMimeContentInvalidBase64String``), a From address other than the mailbox
  (``ErrorSendAsDenied``), and keeps a copy of each sent message in Sent Items.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import jwt

from tests.servers.oauth_jwt import GRAPH, JwtIssuer
from tests.servers.oauth_tls import TestTLS

HOST = "127.0.0.1"
MAX_REQUEST = 4 * 1024 * 1024
WELL_KNOWN = {"msgfolderroot": ("Top of Information Store", None), "inbox": ("Inbox", "msgfolderroot"),
              "sentitems": ("Sent Items", "msgfolderroot"), "drafts": ("Drafts", "msgfolderroot"),
              "deleteditems": ("Deleted Items", "msgfolderroot"), "archive": ("Archive", "msgfolderroot")}
MESSAGE_PROPS = {"id", "receivedDateTime", "subject", "internetMessageId", "parentFolderId",
                 "isRead", "from", "sender", "createdDateTime", "lastModifiedDateTime", "changeKey"}
FOLDER_PROPS = {"id", "displayName", "parentFolderId", "childFolderCount", "unreadItemCount",
                "totalItemCount", "isHidden"}
READ = {"Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic", "Mail.ReadBasic.All", "Mail.Read.Shared",
        "Mail.ReadWrite.Shared"}
WRITE = {"Mail.ReadWrite", "Mail.ReadWrite.Shared"}
SEND = {"Mail.Send", "Mail.Send.Shared"}
_seq = itertools.count(1)


def new_id() -> str:
    """An id shaped like Exchange's immutable ids (base64url of a store id, with '-', '_', '=')."""
    raw = b"\x00\x00\x00\x00\xfb\xef" + next(_seq).to_bytes(4, "big") + os.urandom(60) + b"\xff\xe0"
    return base64.urlsafe_b64encode(raw[:-1]).decode()  # length 71: ends with "="


@dataclass
class Folder:
    id: str
    name: str
    parent: str | None
    well_known: str | None = None


@dataclass
class Item:
    id: str
    folder: str
    mime: bytes
    received: datetime
    version: int = 1
    is_read: bool = False

    @property
    def headers(self):
        return BytesHeaderParser().parsebytes(self.mime)


@dataclass
class Sent:
    mime: bytes
    recipients: list[str]

    @property
    def headers(self):
        return BytesHeaderParser().parsebytes(self.mime)


@dataclass
class Injected:
    status: int
    code: str
    message: str
    times: int
    match: str | None  # substring of "METHOD /path" (None: every request)
    retry_after: float | None = None


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, problem: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.problem = status, code, message, problem
        self.headers = headers or {}


@dataclass
class Round:
    entries: list[dict]
    snapshot: dict[str, int]
    folder: str
    select: list[str]
    page_size: int
    offset: int = 0


class GraphFake:
    def __init__(self, tls: TestTLS, issuer: JwtIssuer, mailbox: str = "complaints@example.org",
                 *, max_page_size: int = 10) -> None:
        self.tls, self.issuer, self.mailbox = tls, issuer, mailbox
        self.max_page_size = max_page_size
        self._lock = threading.RLock()
        self.folders: dict[str, Folder] = {}
        for key, (name, parent) in WELL_KNOWN.items():
            self.folders[key] = Folder(new_id(), name, None, key)
        for key, (_name, parent) in WELL_KNOWN.items():
            if parent:
                self.folders[key].parent = self.folders[parent].id
        self.folders = {f.id: f for f in self.folders.values()}
        self.items: dict[str, Item] = {}
        self.sent: list[Sent] = []
        self.problems: list[str] = []
        #: (method, route, status) of every request, in order
        self.log: list[tuple[str, str, int]] = []
        #: distinct access tokens seen (accepted ones)
        self.tokens_seen: list[str] = []
        self.send_as: set[str] = set()
        self.excluded = False  # the mailbox is outside the app's application access policy
        self._injected: list[Injected] = []
        self._expired: set[str] = set()
        self._expire_countdown: int | None = None
        #: 401s answered because a token had expired, and initial (full) delta rounds started
        self.expired_answered = 0
        self.initial_rounds = 0
        self._delta_tokens: dict[str, tuple[str, dict[str, int]]] = {}
        self._rounds: dict[str, Round] = {}
        self._clock = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "GraphFake":
        fake = self

        class Handler(_Handler):
            graph = fake

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = self.tls.server_context().wrap_socket(self._server.socket,
                                                                    server_side=True)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True, name="graph-fake").start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        """What goes into ``graph_url``."""
        return f"https://{HOST}:{self._server.server_address[1]}/v1.0"

    # -- test helpers ---------------------------------------------------------------------------
    def token(self, roles=("Mail.ReadWrite", "Mail.Send"), *, ttl: float = 3600, **claims) -> str:
        """An app-only token this endpoint accepts."""
        return self.issuer.issue(GRAPH, roles=list(roles), ttl=ttl, **claims)

    def well_known(self, name: str) -> Folder:
        return next(f for f in self.folders.values() if f.well_known == name)

    def folder(self, path: str) -> Folder | None:
        """The folder at ``a/b`` below the top of the mailbox (case-insensitive), or None."""
        with self._lock:
            current = self.well_known("msgfolderroot")
            for part in path.split("/"):
                current = next((f for f in self.folders.values() if f.parent == current.id
                                and f.name.lower() == part.lower()), None)
                if current is None:
                    return None
            return current

    def append(self, raw: bytes, folder: str = "inbox", *, is_read: bool = False) -> str:
        with self._lock:
            target = self.well_known(folder).id if folder in WELL_KNOWN else folder
            self._clock += timedelta(seconds=1)
            item = Item(new_id(), target, bytes(raw), self._clock, is_read=is_read)
            self.items[item.id] = item
            return item.id

    def mark_read(self, item_id: str) -> None:
        """As when someone opens the message in Outlook: a change the next delta reports."""
        with self._lock:
            self.items[item_id].is_read = True
            self.items[item_id].version += 1

    def delete(self, item_id: str) -> None:
        with self._lock:
            del self.items[item_id]

    def messages(self, folder: str = "inbox") -> list[bytes]:
        with self._lock:
            if folder in WELL_KNOWN:
                target = self.well_known(folder)
            else:
                target = self.folder(folder)
                if target is None:
                    return []
            return [i.mime for i in sorted((i for i in self.items.values() if i.folder == target.id),
                                           key=lambda i: (i.received, i.id))]

    def throttle(self, times: int = 1, retry_after: float = 1, *, status: int = 429,
                 match: str | None = None) -> None:
        """The next ``times`` requests matching ``match`` ("GET /messages", "POST /sendMail"...)
        get 429 ApplicationThrottled (or 503 ServiceUnavailable) with ``Retry-After``."""
        code, text = (("ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
                      if status == 429 else
                      ("ServiceUnavailable", "The service is temporarily unavailable. Try again later."))
        with self._lock:
            self._injected.append(Injected(status, code, text, times, match, retry_after))

    def fail(self, status: int, code: str, message: str, *, times: int = 1,
             match: str | None = None) -> None:
        with self._lock:
            self._injected.append(Injected(status, code, message, times, match))

    def expire_tokens_now(self) -> None:
        """Every token seen so far counts as expired from now on (as a token does that ends
        early: revoked, or the client's clock is off)."""
        with self._lock:
            self._expired.update(self.tokens_seen)

    def expire_tokens_after(self, requests: int) -> None:
        """After ``requests`` more accepted requests, every token seen so far expires: a token
        running out in the middle of a run."""
        with self._lock:
            self._expire_countdown = requests

    def expire_delta_tokens(self) -> None:
        with self._lock:
            self._delta_tokens.clear()
            self._rounds.clear()

    def requests(self, route: str | None = None) -> list[tuple[str, str, int]]:
        return [r for r in self.log if route is None or r[1] == route]

    # -- request handling -----------------------------------------------------------------------
    def handle(self, method: str, target: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        parts = urlsplit(target)
        query = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = "?"
        with self._lock:
            try:
                route, args = self._route(method, parts.path)
                claims = self._authorize(headers)
                self._check_prefer(headers)
                self._check_mailbox(args[0])
                self._check_permission(route, claims)
                injected = self._take_injected(method, parts.path)
                if injected is not None:
                    raise injected
                status, out_headers, payload = getattr(self, f"_r_{route}")(
                    method, args[1:], query, headers, body)
            except Refusal as exc:
                if exc.problem:
                    self.problems.append(f"{method} {target[:160]}: {exc.problem}")
                self.log.append((method, route, exc.status))
                return exc.status, exc.headers, _error(exc.code, exc.message, headers)
            self.log.append((method, route, status))
            return status, out_headers, payload

    def _bad(self, problem: str, status: int = 400, code: str = "BadRequest") -> Refusal:
        return Refusal(status, code, problem, problem)

    def _route(self, method: str, path: str) -> tuple[str, list[str]]:
        segments = [unquote(s) for s in path.split("/")]
        if len(segments) < 4 or segments[1] != "v1.0" or segments[2] != "users":
            raise self._bad(f"Resource not found for the segment '{path}'.", 404)
        rest = segments[4:]
        user = segments[3]
        shapes = [
            ("GET", ["mailFolders", None, "messages", "delta"], "delta"),
            ("GET", ["mailFolders", None, "childFolders"], "child_folders"),
            ("POST", ["mailFolders", None, "childFolders"], "create_folder"),
            ("GET", ["mailFolders", None, "messages"], "list_messages"),
            ("GET", ["mailFolders", None], "get_folder"),
            ("POST", ["messages", None, "permanentDelete"], "permanent_delete"),
            ("GET", ["messages", None, "$value"], "mime"),
            ("POST", ["messages", None, "move"], "move"),
            ("POST", ["sendMail"], "send_mail"),
        ]
        for want_method, shape, name in shapes:
            if len(shape) == len(rest) and all(s is None or s == r for s, r in zip(shape, rest)):
                if want_method != method:
                    continue
                return name, [user] + [r for s, r in zip(shape, rest) if s is None]
        raise self._bad(f"{method} {path} is not something mailbot is expected to do", 400)

    def _authorize(self, headers) -> dict:
        value = headers.get("Authorization", "")
        if not value.startswith("Bearer "):
            raise Refusal(401, "InvalidAuthenticationToken", "Access token is empty.",
                          "no bearer token", {"WWW-Authenticate": 'Bearer realm=""'})
        token = value[7:]
        try:
            claims = self.issuer.verify(token, audience=[GRAPH, "00000003-0000-0000-c000-000000000000"])
        except jwt.ExpiredSignatureError:
            raise Refusal(401, "InvalidAuthenticationToken",
                          "Lifetime validation failed, the token is expired.") from None
        except jwt.InvalidAudienceError:
            raise Refusal(401, "InvalidAuthenticationToken",
                          "Access token validation failure. Invalid audience.") from None
        except jwt.InvalidTokenError as exc:
            raise Refusal(401, "InvalidAuthenticationToken",
                          f"Access token validation failure ({type(exc).__name__}).") from None
        if token in self._expired:
            self.expired_answered += 1
            raise Refusal(401, "InvalidAuthenticationToken",
                          "Lifetime validation failed, the token is expired.")
        if token not in self.tokens_seen:
            self.tokens_seen.append(token)
        if self._expire_countdown is not None:
            self._expire_countdown -= 1
            if self._expire_countdown <= 0:
                self._expire_countdown = None
                self._expired.update(self.tokens_seen)
        return claims

    def _check_prefer(self, headers) -> None:
        prefs = [p.strip() for p in ",".join(headers.get_all("Prefer") or []).split(",") if p.strip()]
        if 'IdType="ImmutableId"' not in prefs:
            raise self._bad('Prefer: IdType="ImmutableId" missing: ids would change when a '
                            'message is moved')
        for pref in prefs:
            if pref != 'IdType="ImmutableId"' and not re.fullmatch(r"odata\.maxpagesize=\d+", pref):
                raise self._bad(f"unexpected preference {pref!r}")

    def _check_mailbox(self, user: str) -> None:
        if user.lower() != self.mailbox.lower():
            raise Refusal(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        if self.excluded:
            raise Refusal(403, "ErrorAccessDenied", "Access to OData is disabled: [RAOP] : Blocked "
                                                    "by tenant configured AppOnly AccessPolicy settings.")

    def _check_permission(self, route: str, claims: dict) -> None:
        granted = set(claims.get("roles", [])) | set(str(claims.get("scp", "")).split())
        needed = SEND if route == "send_mail" else READ if route in (
            "delta", "mime", "get_folder", "child_folders", "list_messages") else WRITE
        if not granted & needed:
            raise Refusal(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

    def _take_injected(self, method: str, path: str) -> Refusal | None:
        here = f"{method} {path}"
        for inj in self._injected:
            if inj.times > 0 and (inj.match is None or inj.match in here):
                inj.times -= 1
                extra = {"Retry-After": str(int(inj.retry_after) if float(inj.retry_after).is_integer()
                                            else inj.retry_after)} if inj.retry_after is not None else {}
                self._injected = [i for i in self._injected if i.times > 0]
                return Refusal(inj.status, inj.code, inj.message, None, extra)
        return None

    @staticmethod
    def _only(query: dict, allowed: set[str], route: str) -> None:
        extra = set(query) - allowed
        if extra:
            raise Refusal(400, "BadRequest", f"Query option(s) {sorted(extra)} not allowed here",
                          f"{route}: unexpected query options {sorted(extra)}")
        for key, values in query.items():
            if len(values) != 1:
                raise Refusal(400, "BadRequest", f"{key} given twice", f"{route}: {key} given twice")

    def _folder_of(self, ref: str) -> Folder:
        folder = self.folders.get(ref) or next(
            (f for f in self.folders.values() if f.well_known and f.well_known.lower() == ref.lower()), None)
        if folder is None:
            raise Refusal(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return folder

    def _folder_json(self, folder: Folder, select: list[str] | None = None) -> dict:
        items = [i for i in self.items.values() if i.folder == folder.id]
        full = {"id": folder.id, "displayName": folder.name, "parentFolderId": self.folders[folder.parent].id
                if folder.parent else None,
                "childFolderCount": sum(f.parent == folder.id for f in self.folders.values()),
                "unreadItemCount": sum(not i.is_read for i in items), "totalItemCount": len(items),
                "isHidden": False}
        return {k: v for k, v in full.items() if not select or k in select or k == "id"}

    def _select(self, query: dict, allowed: set[str], route: str) -> list[str]:
        if "$select" not in query:
            return []
        props = [p.strip() for p in query["$select"][0].split(",") if p.strip()]
        unknown = [p for p in props if p not in allowed]
        if unknown:
            raise Refusal(400, "RequestBroker--ParseUri",
                          f"Could not find a property named '{unknown[0]}' on type "
                          f"'microsoft.graph.{'message' if allowed is MESSAGE_PROPS else 'mailFolder'}'.",
                          f"{route}: unknown property {unknown[0]!r} in $select")
        return props

    def _message_json(self, item: Item, select: list[str]) -> dict:
        headers = item.headers
        full = {"@odata.type": "#microsoft.graph.message",
                "@odata.etag": f'W/"CQAAABYAAAD{item.version:04d}"',
                "id": item.id, "receivedDateTime": item.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "createdDateTime": item.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "lastModifiedDateTime": item.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "changeKey": f"CQAAABYAAAD{item.version:04d}",
                "subject": " ".join(str(headers.get("Subject", "")).split()),
                "internetMessageId": str(headers.get("Message-ID", "")).strip(),
                "parentFolderId": item.folder, "isRead": item.is_read}
        if not select:
            return full
        return {k: v for k, v in full.items() if k in select or k in ("@odata.type", "@odata.etag", "id")}

    # -- routes ---------------------------------------------------------------------------------
    def _base(self) -> str:
        return f"{self.url}/users/{quote(self.mailbox, safe='@')}"

    def _r_delta(self, method, args, query, headers, body):
        folder = self._folder_of(args[0])
        if folder.well_known != "inbox":
            raise self._bad("delta on a folder other than the inbox")
        self._only(query, {"$select", "$deltatoken", "$skiptoken"}, "delta")
        pref = re.search(r"odata\.maxpagesize=(\d+)", ",".join(headers.get_all("Prefer") or []))
        page_size = min(self.max_page_size, int(pref.group(1))) if pref else min(10, self.max_page_size)
        if "$skiptoken" in query:
            if set(query) != {"$skiptoken"}:
                raise self._bad("a nextLink must be followed as given")
            rnd = self._rounds.get(query["$skiptoken"][0])
            if rnd is None:
                raise Refusal(410, "SyncStateNotFound", "The sync state generation is not found.")
        else:
            current = {i.id: i.version for i in self.items.values() if i.folder == folder.id}
            if "$deltatoken" in query:
                if set(query) != {"$deltatoken"}:
                    raise self._bad("a deltaLink must be followed as given (its query is encoded "
                                    "in the token)")
                known = self._delta_tokens.get(query["$deltatoken"][0])
                if known is None:
                    raise Refusal(410, "SyncStateNotFound",
                                  "The sync state generation is not found. The delta token is "
                                  "expired and data must be synchronized again.")
                select, snapshot = known[0].split(",") if known[0] else [], known[1]
            else:
                select = self._select(query, MESSAGE_PROPS, "delta")
                snapshot = {}
                self.initial_rounds += 1
            entries = []
            for item in sorted((self.items[i] for i in current), key=lambda i: (i.received, i.id),
                               reverse=True):  # Graph's own order is not oldest first
                if snapshot.get(item.id) != item.version:
                    entries.append(self._message_json(item, select))
            for item_id in snapshot:
                if item_id not in current:
                    entries.append({"@odata.type": "#microsoft.graph.message", "id": item_id,
                                    "@removed": {"reason": "deleted"}})
            rnd = Round(entries, current, folder.id, select, page_size)
        page = rnd.entries[rnd.offset:rnd.offset + rnd.page_size]
        rnd.offset += len(page)
        out = {"@odata.context": f"{self.url}/$metadata#Collection(message)", "value": page}
        link = f"{self._base()}/mailFolders/{rnd.folder}/messages/delta"
        if rnd.offset < len(rnd.entries):
            skip = secrets.token_urlsafe(24)
            self._rounds[skip] = rnd
            out["@odata.nextLink"] = f"{link}?$skiptoken={skip}"
        else:
            token = secrets.token_urlsafe(24)
            self._delta_tokens[token] = (",".join(rnd.select), rnd.snapshot)
            out["@odata.deltaLink"] = f"{link}?$deltatoken={token}"
        return 200, {}, json.dumps(out).encode()

    def _r_child_folders(self, method, args, query, headers, body):
        parent = self._folder_of(args[0])
        self._only(query, {"$filter", "$select", "$top"}, "childFolders")
        select = self._select(query, FOLDER_PROPS, "childFolders")
        found = [f for f in self.folders.values() if f.parent == parent.id]
        if "$filter" in query:
            m = re.fullmatch(r"displayName eq '((?:[^']|'')*)'", query["$filter"][0])
            if not m:
                raise self._bad(f"$filter {query['$filter'][0]!r}: only displayName eq '...' is expected")
            name = m.group(1).replace("''", "'")
            found = [f for f in found if f.name.lower() == name.lower()]
        out = {"@odata.context": f"{self.url}/$metadata#users('{self.mailbox}')/mailFolders('{parent.id}')/childFolders",
               "value": [self._folder_json(f, select) for f in found]}
        return 200, {}, json.dumps(out).encode()

    def _json_body(self, headers, body: bytes, route: str) -> dict:
        if not headers.get("Content-Type", "").startswith("application/json"):
            raise self._bad(f"{route}: Content-Type {headers.get('Content-Type')!r}, expected "
                            "application/json")
        try:
            data = json.loads(body)
        except ValueError:
            raise self._bad(f"{route}: body is not JSON") from None
        if not isinstance(data, dict):
            raise self._bad(f"{route}: body is not a JSON object")
        return data

    def _r_create_folder(self, method, args, query, headers, body):
        parent = self._folder_of(args[0])
        self._only(query, set(), "create folder")
        data = self._json_body(headers, body, "create folder")
        if set(data) - {"displayName", "isHidden"} or not isinstance(data.get("displayName"), str) \
                or not data["displayName"]:
            raise self._bad(f"create folder with {data!r}")
        name = data["displayName"]
        if any(f.parent == parent.id and f.name.lower() == name.lower() for f in self.folders.values()):
            raise Refusal(409, "ErrorFolderExists", "A folder with the specified name already exists.")
        folder = Folder(new_id(), name, parent.id)
        self.folders[folder.id] = folder
        out = {"@odata.context": f"{self.url}/$metadata#users('{self.mailbox}')/mailFolders/$entity",
               **self._folder_json(folder)}
        return 201, {}, json.dumps(out).encode()

    def _r_get_folder(self, method, args, query, headers, body):
        folder = self._folder_of(args[0])
        self._only(query, {"$select"}, "mailFolder")
        out = {"@odata.context": f"{self.url}/$metadata#users('{self.mailbox}')/mailFolders/$entity",
               **self._folder_json(folder, self._select(query, FOLDER_PROPS, "mailFolder"))}
        return 200, {}, json.dumps(out).encode()

    def _item(self, item_id: str) -> Item:
        item = self.items.get(item_id)
        if item is None:
            raise Refusal(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return item

    def _r_mime(self, method, args, query, headers, body):
        self._only(query, set(), "$value")
        item = self._item(args[0])
        return 200, {"Content-Type": "text/plain"}, item.mime

    def _r_move(self, method, args, query, headers, body):
        self._only(query, set(), "move")
        data = self._json_body(headers, body, "move")
        if set(data) != {"destinationId"}:
            raise self._bad(f"move with {sorted(data)}, expected destinationId only")
        item = self._item(args[0])
        target = self._folder_of(data["destinationId"])
        if item.folder != self.well_known("inbox").id and target.well_known != "inbox":
            self.problems.append(f"move of {item.id[:12]}... from {self.folders[item.folder].name!r}: "
                                 "mailbot must only move messages it fetched from the inbox")
        item.folder = target.id
        item.version += 1  # the id stays: ImmutableId
        out = {"@odata.context": f"{self.url}/$metadata#users('{self.mailbox}')/messages/$entity",
               **self._message_json(item, [])}
        out.pop("@odata.type")
        return 201, {}, json.dumps(out).encode()

    def _r_list_messages(self, method, args, query, headers, body):
        folder = self._folder_of(args[0])
        self._only(query, {"$filter", "$select", "$top", "$skip"}, "messages")
        select = self._select(query, MESSAGE_PROPS, "messages")
        found = sorted((i for i in self.items.values() if i.folder == folder.id),
                       key=lambda i: (i.received, i.id), reverse=True)
        if "$filter" in query:
            m = re.fullmatch(r"internetMessageId eq '((?:[^']|'')*)'", query["$filter"][0])
            if not m:
                raise self._bad(f"$filter {query['$filter'][0]!r}: only internetMessageId eq "
                                "'...' is expected")
            wanted = m.group(1).replace("''", "'")
            found = [i for i in found if str(i.headers.get("Message-ID", "")).strip() == wanted]
        top = int(query.get("$top", ["10"])[0])
        skip = int(query.get("$skip", ["0"])[0])
        page = found[skip:skip + min(top, self.max_page_size)]
        out = {"@odata.context": f"{self.url}/$metadata#users('{self.mailbox}')/mailFolders('{folder.id}')/messages",
               "value": [self._message_json(i, select) for i in page]}
        if skip + len(page) < len(found):
            rest = {k: v[0] for k, v in query.items() if k != "$skip"}
            rest["$skip"] = str(skip + len(page))
            out["@odata.nextLink"] = (f"{self._base()}/mailFolders/{folder.id}/messages?"
                                      + "&".join(f"{k}={quote(v, safe='')}" for k, v in rest.items()))
        return 200, {}, json.dumps(out).encode()

    def _r_permanent_delete(self, method, args, query, headers, body):
        self._only(query, set(), "permanentDelete")
        item = self._item(args[0])
        if self.folders[item.folder].well_known in ("inbox", "sentitems"):
            self.problems.append(f"permanentDelete of a message in {self.folders[item.folder].name}: "
                                 "mailbot only erases its handled copies")
        del self.items[item.id]
        return 204, {}, b""

    def _r_send_mail(self, method, args, query, headers, body):
        self._only(query, set(), "sendMail")
        if len(body) > MAX_REQUEST:
            raise Refusal(413, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
        if headers.get("Content-Type", "").split(";")[0].strip() != "text/plain":
            raise self._bad(f"sendMail with Content-Type {headers.get('Content-Type')!r}: MIME is "
                            "sent as base64 in a text/plain body")
        try:
            mime = base64.b64decode(body, validate=True)
        except binascii.Error:
            raise Refusal(400, "ErrorMimeContentInvalidBase64String",
                          "Invalid base64 string for MIME content.") from None
        parsed = BytesHeaderParser().parsebytes(mime)
        sender = parseaddr(str(parsed.get("From", "")))[1]
        if sender.lower() != self.mailbox.lower() and sender.lower() not in self.send_as:
            raise Refusal(403, "ErrorSendAsDenied", "The user account which was used to submit this "
                          "request does not have the right to send mail on behalf of the specified "
                          "sending account., Cannot submit message.")
        recipients = [a for _n, a in getaddresses([str(v) for h in ("To", "Cc", "Bcc")
                                                   for v in parsed.get_all(h, [])]) if a]
        if not recipients:
            raise Refusal(400, "ErrorInvalidRecipients", "At least one recipient is not valid., "
                          "Recipient is missing.")
        self.sent.append(Sent(mime, recipients))
        self._clock += timedelta(seconds=1)
        copy = Item(new_id(), self.well_known("sentitems").id, mime, self._clock, is_read=True)
        self.items[copy.id] = copy
        return 202, {}, b""


def _error(code: str, message: str, headers) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "innerError": {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": str(uuid.uuid4()),
        "client-request-id": headers.get("client-request-id") or str(uuid.uuid4())}}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    graph: GraphFake

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _run(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, payload = self.graph.handle(method, self.path, self.headers, body)
        except Exception as exc:  # a bug in the fake must fail the test, not hang it
            self.graph.problems.append(f"graph fake crashed: {type(exc).__name__}: {exc}")
            status, headers, payload = 500, {}, _error("InternalServerError", str(exc), self.headers)
        self.send_response(status)
        if payload and "Content-Type" not in headers:
            headers = {**headers, "Content-Type": "application/json;odata.metadata=minimal;"
                                                  "odata.streaming=true;IEEE754Compatible=false;"
                                                  "charset=utf-8"}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("request-id", str(uuid.uuid4()))
        if self.headers.get("client-request-id"):
            self.send_header("client-request-id", self.headers["client-request-id"])
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._run("GET")

    def do_POST(self) -> None:
        self._run("POST")

    def do_PATCH(self) -> None:
        self._run("PATCH")

    def do_DELETE(self) -> None:
        self._run("DELETE")

    def do_PUT(self) -> None:
        self._run("PUT")

"""A small, strict Exchange Web Services endpoint on loopback, for tests.

Why a fake here when the other tests use real servers: no Exchange server can run on this
machine.  So this one speaks the real protocol instead of mocking exchangelib: mailbot's EWS
transport runs unchanged (exchangelib builds the SOAP, ``requests`` sends it over HTTP/1.1)
and every answer is a genuine EWS response document, shaped as in Microsoft's EWS reference
(GetFolder, FindFolder, CreateFolder, FindItem, GetItem with MimeContent, MoveItem, CreateItem
with SendAndSaveCopy).  What was measured about exchangelib 5.x against such a fake is
written down in ``/work/shared/design/exchange-and-graph-offline.md``.

It is strict on purpose.  Every request is validated -- a SOAP envelope, a
``RequestServerVersion`` header, the ``X-AnchorMailbox`` HTTP header, the Basic ``Authorization``
header when credentials are configured, one known operation in the body with the fields it
needs -- and anything unexpected (an unknown operation such as UpdateItem or DeleteItem, a
FindItem with a restriction that would skip mail, a missing MimeContent) is answered with
``ErrorInvalidOperation`` *and* recorded in :attr:`EwsFake.problems`, so a wrong call fails
the test instead of passing silently.  The ``ews_server`` fixture asserts that list is empty.

Failure modes for tests:

* :meth:`EwsFake.busy` -- the next N requests get the SOAP fault ``ErrorServerBusy`` on HTTP
  500 with ``BackOffMilliseconds`` (how Exchange throttles);
* :meth:`EwsFake.fail` -- the next N calls of one operation get an EWS error response
  (e.g. ``ErrorAccessDenied`` on CreateFolder: an account without folder rights);
* a wrong password gets HTTP 401 with ``WWW-Authenticate: Basic``.

Item ids are base64 like real ones (``+``, ``/`` and ``=`` included) and change when an item
is moved, as on Exchange.  Folders are looked up by display name case-insensitively.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape, quoteattr

HOST = "127.0.0.1"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"
PATH = "/EWS/Exchange.asmx"

#: Distinguished folders the fake mailbox has, with their display names.
WELL_KNOWN = {
    "root": ("", None),
    "msgfolderroot": ("Top of Information Store", "root"),
    "inbox": ("Inbox", "msgfolderroot"),
    "sentitems": ("Sent Items", "msgfolderroot"),
    "drafts": ("Drafts", "msgfolderroot"),
    "deleteditems": ("Deleted Items", "msgfolderroot"),
}
#: Folder properties the fake can answer (others asked for are simply left out, as Exchange
#: does for properties a folder does not have).
FOLDER_FIELDS = ("folder:FolderId", "folder:ParentFolderId", "folder:FolderClass",
                 "folder:DisplayName", "folder:TotalCount", "folder:ChildFolderCount",
                 "folder:EffectiveRights", "folder:UnreadCount", "folder:DistinguishedFolderId")
ITEM_FIELDS = ("item:MimeContent", "item:ItemId", "item:ParentFolderId", "item:ItemClass",
               "item:Subject", "item:DateTimeReceived", "item:Size", "message:InternetMessageId",
               "message:IsRead")
#: Elements exchangelib may put into a new Message besides MimeContent (defaults it always sends).
CREATE_ITEM_FIELDS = {"MimeContent", "IsRead", "IsResponseRequested", "IsDeliveryReceiptRequested",
                      "IsReadReceiptRequested", "Sensitivity", "Importance", "ReminderIsSet",
                      "ReminderMinutesBeforeStart", "Culture", "ItemClass"}


class Invalid(Exception):
    """A request the fake does not accept: answered with ErrorInvalidOperation and recorded."""


@dataclass
class FakeFolder:
    id: str
    name: str
    parent: str | None
    folder_class: str = "IPF.Note"
    distinguished: str | None = None
    changekey: str = field(default_factory=lambda: _new_id(12))


@dataclass
class FakeItem:
    id: str
    folder: str
    mime: bytes
    received: datetime
    is_read: bool = False
    changekey: str = field(default_factory=lambda: _new_id(12))

    @property
    def headers(self):
        return BytesHeaderParser().parsebytes(self.mime)


@dataclass
class SentMessage:
    """One message handed to the fake by CreateItem SendAndSaveCopy."""

    mime: bytes
    recipients: list[str]
    saved_in: str  # folder id the copy was saved in

    @property
    def headers(self):
        return BytesHeaderParser().parsebytes(self.mime)


_ids = itertools.count(1)


def _new_id(size: int = 48) -> str:
    # Real ids are base64 of a binary store id; make sure ours contain '+', '/' and '='.
    # b"\xfb\xff" encodes as "+/", and a length of 1 mod 3 ends in "==".
    raw = b"\xfb\xff" + next(_ids).to_bytes(4, "big") + os.urandom(size) + b"\x01"
    return base64.b64encode(raw).decode()


class EwsFake:
    """The fake Exchange server: one mailbox, in memory, on ``http://127.0.0.1:<port>``.

    ``user``/``password``: require HTTP Basic auth with these (None: no auth, for NOAUTH).
    """

    def __init__(self, mailbox: str = "complaints@example.org", *, user: str | None = None,
                 password: str | None = None) -> None:
        self.mailbox = mailbox
        self.user, self.password = user, password
        self._lock = threading.RLock()
        self.folders: dict[str, FakeFolder] = {}
        self.items: dict[str, FakeItem] = {}
        self.sent: list[SentMessage] = []
        #: operation names, in the order received (after auth), e.g. ["GetFolder", "FindItem"]
        self.operations: list[str] = []
        #: (operation, request body) of every request that reached an operation
        self.requests: list[tuple[str, bytes]] = []
        #: requests that were wrong: each a sentence; the fixture asserts this stays empty
        self.problems: list[str] = []
        self._busy_left = 0
        self._busy_back_off_ms = 50
        self._busy_operation: str | None = None
        self.busy_answered = 0
        self._failures: dict[str, list[tuple[str, str, int]]] = {}
        self._clock = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
        for key, (name, parent) in WELL_KNOWN.items():
            self.folders[key] = FakeFolder(id=_new_id(), name=name, parent=None,
                                           distinguished=key,
                                           folder_class="" if key == "root" else "IPF.Note")
        for key, (_name, parent) in WELL_KNOWN.items():
            if parent:
                self.folders[key].parent = self.folders[parent].id
        # index by real id as well
        for key in list(self.folders):
            folder = self.folders.pop(key)
            self.folders[folder.id] = folder
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "EwsFake":
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ews-fake",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    close = stop

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"

    # -- mailbox helpers for tests ------------------------------------------------------
    def well_known(self, name: str) -> FakeFolder:
        with self._lock:
            for folder in self.folders.values():
                if folder.distinguished == name:
                    return folder
        raise KeyError(name)

    def folder(self, path: str, *, under: str = "msgfolderroot") -> FakeFolder | None:
        """The folder at ``a/b`` below a well-known folder (case-insensitive), or None."""
        with self._lock:
            current = self.well_known(under)
            for part in path.split("/"):
                current = next((f for f in self.folders.values() if f.parent == current.id
                                and f.name.lower() == part.lower()), None)
                if current is None:
                    return None
            return current

    def append(self, raw: bytes, folder: str = "inbox", *, is_read: bool = False) -> str:
        """Deliver ``raw`` into a well-known folder (or a folder id); returns the item id."""
        with self._lock:
            target = self.well_known(folder).id if folder in WELL_KNOWN else folder
            self._clock += timedelta(seconds=1)
            item = FakeItem(id=_new_id(), folder=target, mime=bytes(raw), received=self._clock,
                            is_read=is_read)
            self.items[item.id] = item
            return item.id

    def messages(self, folder: str = "inbox") -> list[bytes]:
        """MIME bytes of the items in a well-known folder or at a path (``mailbot/processed``),
        in arrival order."""
        with self._lock:
            if folder in WELL_KNOWN:
                target = self.well_known(folder)
            else:
                target = self.folder(folder)
                if target is None:
                    return []
            items = sorted((i for i in self.items.values() if i.folder == target.id),
                           key=lambda i: i.received)
            return [i.mime for i in items]

    def busy(self, times: int, back_off_ms: int = 50, operation: str | None = None) -> None:
        """Answer the next ``times`` requests (of ``operation`` only, if given) with
        ErrorServerBusy: a SOAP fault on HTTP 500 asking to back off ``back_off_ms``."""
        with self._lock:
            self._busy_left, self._busy_back_off_ms = times, back_off_ms
            self._busy_operation = operation

    def fail(self, operation: str, code: str = "ErrorAccessDenied",
             text: str = "Access is denied. Check credentials and try again.", times: int = 1) -> None:
        """Answer the next ``times`` calls of ``operation`` with an EWS error response."""
        with self._lock:
            self._failures.setdefault(operation, []).append((code, text, times))

    # -- request handling -------------------------------------------------------------------
    def _take_failure(self, op: str) -> tuple[str, str] | None:
        queue = self._failures.get(op)
        if not queue:
            return None
        code, text, times = queue[0]
        if times <= 1:
            queue.pop(0)
        else:
            queue[0] = (code, text, times - 1)
        return code, text

    def handle(self, headers, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Answer one POST: (status, extra headers, body)."""
        if self.user is not None:
            expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if headers.get("Authorization") != expected:
                return 401, {"WWW-Authenticate": f'Basic realm="{HOST}"'}, b""
        with self._lock:
            try:
                envelope = ET.fromstring(body)
            except ET.ParseError as exc:
                return self._invalid("?", f"request is not XML: {exc}")
            op_elem = None
            try:
                op_elem = self._validate_envelope(headers, envelope)
                op = op_elem.tag.removeprefix(f"{{{MNS}}}")
                if self._busy_left > 0 and self._busy_operation in (None, op):
                    # throttled before any work is done, as Exchange does
                    self._busy_left -= 1
                    self.busy_answered += 1
                    return 500, {}, _busy_fault(self._busy_back_off_ms)
                self.operations.append(op)
                self.requests.append((op, body))
                handler = getattr(self, f"_op_{op}", None)
                if handler is None:
                    raise Invalid(f"operation {op} is not expected from mailbot")
                failure = self._take_failure(op)
                if failure is not None:
                    return 200, {}, _response(op, [_error_message(op, *failure)])
                return 200, {}, _response(op, handler(op_elem))
            except Invalid as exc:
                op = op_elem.tag.removeprefix(f"{{{MNS}}}") if op_elem is not None else "?"
                return self._invalid(op, str(exc))

    def _invalid(self, op: str, problem: str) -> tuple[int, dict[str, str], bytes]:
        self.problems.append(f"{op}: {problem}")
        return 200, {}, _response(op, [_error_message(op, "ErrorInvalidOperation", problem)])

    def _validate_envelope(self, headers, envelope: ET.Element) -> ET.Element:
        if envelope.tag != f"{{{SOAP}}}Envelope":
            raise Invalid(f"root element is {envelope.tag}, not a SOAP Envelope")
        header = envelope.find(f"{{{SOAP}}}Header")
        version = header.find(f"{{{TNS}}}RequestServerVersion") if header is not None else None
        if version is None or not version.get("Version"):
            raise Invalid("RequestServerVersion header missing")
        if header.find(f"{{{TNS}}}ExchangeImpersonation") is not None:
            raise Invalid("ExchangeImpersonation sent, but mailbot is configured for delegate access")
        anchor = headers.get("X-AnchorMailbox")
        if anchor is None or anchor.lower() != self.mailbox.lower():
            raise Invalid(f"X-AnchorMailbox is {anchor!r}, expected {self.mailbox!r}")
        body = envelope.find(f"{{{SOAP}}}Body")
        if body is None or len(body) != 1:
            raise Invalid("SOAP Body must hold exactly one operation")
        op = body[0]
        if not op.tag.startswith(f"{{{MNS}}}"):
            raise Invalid(f"operation element {op.tag} is not in the messages namespace")
        return op

    # -- folder lookups -------------------------------------------------------------------
    def _resolve_folder(self, elem: ET.Element) -> FakeFolder:
        """A t:FolderId or t:DistinguishedFolderId element -> folder (or Invalid)."""
        if elem.tag == f"{{{TNS}}}DistinguishedFolderId":
            name = elem.get("Id")
            mailbox = elem.find(f"{{{TNS}}}Mailbox/{{{TNS}}}EmailAddress")
            if mailbox is not None and mailbox.text.lower() != self.mailbox.lower():
                raise _Error("ErrorNonExistentMailbox", f"No mailbox with such guid ({mailbox.text}).")
            try:
                return self.well_known(name)
            except KeyError:
                raise _Error("ErrorFolderNotFound", "The specified folder could not be found in the store.")
        if elem.tag == f"{{{TNS}}}FolderId":
            folder = self.folders.get(elem.get("Id", ""))
            if folder is None:
                raise _Error("ErrorFolderNotFound", "The specified folder could not be found in the store.")
            return folder
        raise Invalid(f"unexpected folder id element {elem.tag}")

    def _children(self, folder: FakeFolder) -> list[FakeFolder]:
        return [f for f in self.folders.values() if f.parent == folder.id]

    def _folder_xml(self, folder: FakeFolder, fields: set[str]) -> str:
        parts = [f'<t:FolderId Id={quoteattr(folder.id)} ChangeKey={quoteattr(folder.changekey)}/>']
        if "folder:ParentFolderId" in fields and folder.parent:
            parent = self.folders[folder.parent]
            parts.append(f'<t:ParentFolderId Id={quoteattr(parent.id)} '
                         f'ChangeKey={quoteattr(parent.changekey)}/>')
        if "folder:FolderClass" in fields and folder.folder_class:
            parts.append(f"<t:FolderClass>{escape(folder.folder_class)}</t:FolderClass>")
        if "folder:DisplayName" in fields:
            parts.append(f"<t:DisplayName>{escape(folder.name)}</t:DisplayName>")
        items = [i for i in self.items.values() if i.folder == folder.id]
        if "folder:TotalCount" in fields:
            parts.append(f"<t:TotalCount>{len(items)}</t:TotalCount>")
        if "folder:ChildFolderCount" in fields:
            parts.append(f"<t:ChildFolderCount>{len(self._children(folder))}</t:ChildFolderCount>")
        if "folder:EffectiveRights" in fields:
            parts.append("<t:EffectiveRights><t:CreateAssociated>true</t:CreateAssociated>"
                         "<t:CreateContents>true</t:CreateContents><t:CreateHierarchy>true"
                         "</t:CreateHierarchy><t:Delete>true</t:Delete><t:Modify>true</t:Modify>"
                         "<t:Read>true</t:Read><t:ViewPrivateItems>true</t:ViewPrivateItems>"
                         "</t:EffectiveRights>")
        if "folder:UnreadCount" in fields:
            parts.append(f"<t:UnreadCount>{sum(not i.is_read for i in items)}</t:UnreadCount>")
        if "folder:DistinguishedFolderId" in fields and folder.distinguished:
            parts.append(f"<t:DistinguishedFolderId>{folder.distinguished}</t:DistinguishedFolderId>")
        return "<t:Folder>" + "".join(parts) + "</t:Folder>"

    @staticmethod
    def _shape_fields(shape: ET.Element | None, what: str) -> set[str]:
        if shape is None:
            raise Invalid(f"{what} missing")
        base = shape.findtext(f"{{{TNS}}}BaseShape")
        if base not in ("IdOnly", "Default", "AllProperties"):
            raise Invalid(f"{what}/BaseShape is {base!r}")
        fields = {f.get("FieldURI") for f in shape.iter(f"{{{TNS}}}FieldURI")}
        if base != "IdOnly":
            fields |= set(FOLDER_FIELDS) | set(ITEM_FIELDS) - {"item:MimeContent"}
        return fields

    # -- operations -------------------------------------------------------------------------
    def _op_GetFolder(self, op: ET.Element) -> list[str]:
        fields = self._shape_fields(op.find(f"{{{MNS}}}FolderShape"), "FolderShape")
        ids = op.find(f"{{{MNS}}}FolderIds")
        if ids is None or len(ids) == 0:
            raise Invalid("GetFolder without FolderIds")
        out = []
        for elem in ids:
            try:
                folder = self._resolve_folder(elem)
            except _Error as exc:
                out.append(_error_message("GetFolder", exc.code, exc.text, "<m:Folders/>"))
                continue
            out.append(_ok("GetFolder", f"<m:Folders>{self._folder_xml(folder, fields)}</m:Folders>"))
        return out

    def _op_FindFolder(self, op: ET.Element) -> list[str]:
        if op.get("Traversal") != "Shallow":
            raise Invalid(f"FindFolder Traversal={op.get('Traversal')!r}: mailbot must not walk the "
                          "whole folder tree")
        fields = self._shape_fields(op.find(f"{{{MNS}}}FolderShape"), "FolderShape")
        name = None
        restriction = op.find(f"{{{MNS}}}Restriction")
        if restriction is not None:
            equal = restriction.find(f"{{{TNS}}}IsEqualTo")
            uri = equal.find(f"{{{TNS}}}FieldURI") if equal is not None else None
            const = equal.find(f".//{{{TNS}}}Constant") if equal is not None else None
            if uri is None or uri.get("FieldURI") != "folder:DisplayName" or const is None:
                raise Invalid("FindFolder restriction other than DisplayName IsEqualTo")
            name = const.get("Value", "")
        offset, limit = _paging(op.find(f"{{{MNS}}}IndexedPageFolderView"))
        parents = op.find(f"{{{MNS}}}ParentFolderIds")
        if parents is None or len(parents) == 0:
            raise Invalid("FindFolder without ParentFolderIds")
        out = []
        for elem in parents:
            try:
                parent = self._resolve_folder(elem)
            except _Error as exc:
                out.append(_error_message("FindFolder", exc.code, exc.text))
                continue
            found = [f for f in self._children(parent)
                     if name is None or f.name.lower() == name.lower()]
            page = found[offset:offset + limit]
            last = offset + len(page) >= len(found)
            out.append(_ok("FindFolder",
                           f'<m:RootFolder IndexedPagingOffset="{offset + len(page)}" '
                           f'TotalItemsInView="{len(found)}" IncludesLastItemInRange="{_bool(last)}">'
                           f'<t:Folders>{"".join(self._folder_xml(f, fields) for f in page)}</t:Folders>'
                           f"</m:RootFolder>"))
        return out

    def _op_CreateFolder(self, op: ET.Element) -> list[str]:
        parent_elem = op.find(f"{{{MNS}}}ParentFolderId")
        folders = op.find(f"{{{MNS}}}Folders")
        if parent_elem is None or len(parent_elem) != 1 or folders is None or len(folders) == 0:
            raise Invalid("CreateFolder needs ParentFolderId and Folders")
        try:
            parent = self._resolve_folder(parent_elem[0])
        except _Error as exc:
            return [_error_message("CreateFolder", exc.code, exc.text) for _ in folders]
        out = []
        for elem in folders:
            if elem.tag != f"{{{TNS}}}Folder":
                raise Invalid(f"CreateFolder of {elem.tag}: mailbot creates mail folders only")
            name = elem.findtext(f"{{{TNS}}}DisplayName")
            folder_class = elem.findtext(f"{{{TNS}}}FolderClass") or "IPF.Note"
            if not name:
                raise Invalid("CreateFolder without DisplayName")
            if folder_class != "IPF.Note":
                raise Invalid(f"CreateFolder with FolderClass {folder_class!r}, expected IPF.Note")
            if any(f.name.lower() == name.lower() for f in self._children(parent)):
                out.append(_error_message("CreateFolder", "ErrorFolderExists",
                                          "A folder with the specified name already exists.",
                                          "<m:Folders/>"))
                continue
            folder = FakeFolder(id=_new_id(), name=name, parent=parent.id, folder_class=folder_class)
            self.folders[folder.id] = folder
            out.append(_ok("CreateFolder", f'<m:Folders><t:Folder><t:FolderId Id={quoteattr(folder.id)} '
                                           f'ChangeKey={quoteattr(folder.changekey)}/></t:Folder></m:Folders>'))
        return out

    def _op_FindItem(self, op: ET.Element) -> list[str]:
        if op.get("Traversal") != "Shallow":
            raise Invalid(f"FindItem Traversal={op.get('Traversal')!r}")
        shape = op.find(f"{{{MNS}}}ItemShape")
        fields = self._shape_fields(shape, "ItemShape")
        if "item:MimeContent" in fields:
            raise Invalid("FindItem cannot return MimeContent (GetItem must be used)")
        if op.find(f"{{{MNS}}}Restriction") is not None:
            raise Invalid("FindItem with a Restriction: mailbot must see every message in the "
                          "inbox, read or unread")
        offset, limit = _paging(op.find(f"{{{MNS}}}IndexedPageItemView"))
        order = op.find(f"{{{MNS}}}SortOrder")
        descending = False
        if order is not None:
            orders = order.findall(f"{{{TNS}}}FieldOrder")
            uris = [o.find(f"{{{TNS}}}FieldURI") for o in orders]
            if len(orders) != 1 or uris[0] is None or uris[0].get("FieldURI") != "item:DateTimeReceived":
                raise Invalid("FindItem SortOrder other than item:DateTimeReceived")
            descending = orders[0].get("Order") == "Descending"
        parents = op.find(f"{{{MNS}}}ParentFolderIds")
        if parents is None or len(parents) != 1:
            raise Invalid("FindItem must name exactly one folder")
        try:
            folder = self._resolve_folder(parents[0])
        except _Error as exc:
            return [_error_message("FindItem", exc.code, exc.text)]
        found = sorted((i for i in self.items.values() if i.folder == folder.id),
                       key=lambda i: (i.received, i.id), reverse=descending)
        page = found[offset:offset + limit]
        last = offset + len(page) >= len(found)
        items_xml = "".join(f"<t:Message>{self._item_props(i, fields)}</t:Message>" for i in page)
        return [_ok("FindItem",
                    f'<m:RootFolder IndexedPagingOffset="{offset + len(page)}" '
                    f'TotalItemsInView="{len(found)}" IncludesLastItemInRange="{_bool(last)}">'
                    f"<t:Items>{items_xml}</t:Items></m:RootFolder>")]

    def _item_props(self, item: FakeItem, fields: set[str]) -> str:
        """Properties in the order of the EWS schema (MimeContent first, then ItemId, ...)."""
        parts = []
        if "item:MimeContent" in fields:
            parts.append('<t:MimeContent CharacterSet="UTF-8">'
                         f"{base64.b64encode(item.mime).decode()}</t:MimeContent>")
        parts.append(f"<t:ItemId Id={quoteattr(item.id)} ChangeKey={quoteattr(item.changekey)}/>")
        if "item:ParentFolderId" in fields:
            folder = self.folders[item.folder]
            parts.append(f"<t:ParentFolderId Id={quoteattr(folder.id)} "
                         f"ChangeKey={quoteattr(folder.changekey)}/>")
        if "item:ItemClass" in fields:
            parts.append("<t:ItemClass>IPM.Note</t:ItemClass>")
        headers = item.headers
        if "item:Subject" in fields:
            parts.append(f"<t:Subject>{escape(_clean(headers.get('Subject', '')))}</t:Subject>")
        if "item:DateTimeReceived" in fields:
            parts.append(f"<t:DateTimeReceived>{item.received.strftime('%Y-%m-%dT%H:%M:%SZ')}"
                         "</t:DateTimeReceived>")
        if "item:Size" in fields:
            parts.append(f"<t:Size>{len(item.mime)}</t:Size>")
        if "message:InternetMessageId" in fields and headers.get("Message-ID"):
            parts.append(f"<t:InternetMessageId>{escape(_clean(headers['Message-ID']))}"
                         "</t:InternetMessageId>")
        if "message:IsRead" in fields:
            parts.append(f"<t:IsRead>{_bool(item.is_read)}</t:IsRead>")
        return "".join(parts)

    def _item_ids(self, op: ET.Element, name: str = "ItemIds") -> list[str]:
        ids = op.find(f"{{{MNS}}}{name}")
        if ids is None or len(ids) == 0:
            raise Invalid(f"{name} missing or empty")
        out = []
        for elem in ids:
            if elem.tag != f"{{{TNS}}}ItemId" or not elem.get("Id"):
                raise Invalid(f"unexpected item id element {elem.tag}")
            out.append(elem.get("Id"))
        return out

    def _op_GetItem(self, op: ET.Element) -> list[str]:
        fields = self._shape_fields(op.find(f"{{{MNS}}}ItemShape"), "ItemShape")
        if "item:MimeContent" not in fields:
            raise Invalid("GetItem without item:MimeContent: mailbot reads the original MIME bytes")
        if len(fields - {"item:MimeContent", "item:Subject", "message:InternetMessageId"}) > 0:
            raise Invalid(f"GetItem asks for {sorted(fields)}: more than the MIME content "
                          "(use .only() so Exchange does not build ~100 properties per message)")
        out = []
        for item_id in self._item_ids(op):
            item = self.items.get(item_id)
            if item is None:
                out.append(_error_message("GetItem", "ErrorItemNotFound",
                                          "The specified object was not found in the store.",
                                          "<m:Items/>"))
                continue
            out.append(_ok("GetItem", f"<m:Items><t:Message>{self._item_props(item, fields)}"
                                      "</t:Message></m:Items>"))
        return out

    def _op_MoveItem(self, op: ET.Element) -> list[str]:
        to = op.find(f"{{{MNS}}}ToFolderId")
        if to is None or len(to) != 1:
            raise Invalid("MoveItem without ToFolderId")
        ids = self._item_ids(op)
        try:
            target = self._resolve_folder(to[0])
        except _Error as exc:
            return [_error_message("MoveItem", exc.code, exc.text, "<m:Items/>") for _ in ids]
        out = []
        for item_id in ids:
            item = self.items.pop(item_id, None)
            if item is None:
                out.append(_error_message("MoveItem", "ErrorItemNotFound",
                                          "The specified object was not found in the store.",
                                          "<m:Items/>"))
                continue
            # As on Exchange: a moved item gets a new id in its new folder.
            item.id, item.changekey, item.folder = _new_id(), _new_id(12), target.id
            self.items[item.id] = item
            out.append(_ok("MoveItem", f"<m:Items><t:Message><t:ItemId Id={quoteattr(item.id)} "
                                       f"ChangeKey={quoteattr(item.changekey)}/></t:Message></m:Items>"))
        return out

    def _op_CreateItem(self, op: ET.Element) -> list[str]:
        if op.get("MessageDisposition") != "SendAndSaveCopy":
            raise Invalid(f"CreateItem MessageDisposition={op.get('MessageDisposition')!r}, "
                          "expected SendAndSaveCopy (so replies land in Sent Items)")
        saved = op.find(f"{{{MNS}}}SavedItemFolderId")
        if saved is None or len(saved) != 1:
            raise Invalid("CreateItem SendAndSaveCopy without SavedItemFolderId")
        try:
            folder = self._resolve_folder(saved[0])
        except _Error as exc:
            return [_error_message("CreateItem", exc.code, exc.text, "<m:Items/>")]
        if folder.distinguished != "sentitems":
            raise Invalid("the copy of a sent message must be saved in Sent Items")
        items = op.find(f"{{{MNS}}}Items")
        if items is None or len(items) != 1 or items[0].tag != f"{{{TNS}}}Message":
            raise Invalid("CreateItem must carry exactly one t:Message")
        message = items[0]
        extra = {child.tag.removeprefix(f"{{{TNS}}}") for child in message} - CREATE_ITEM_FIELDS
        if extra:
            raise Invalid(f"CreateItem message has unexpected elements {sorted(extra)}: the MIME "
                          "content must be sent as it is")
        mime_b64 = message.findtext(f"{{{TNS}}}MimeContent")
        if not mime_b64:
            raise Invalid("CreateItem without MimeContent")
        try:
            mime = base64.b64decode(mime_b64, validate=True)
        except binascii.Error:
            return [_error_message("CreateItem", "ErrorMimeContentInvalidBase64String",
                                   "Invalid base64 string for MIME content.", "<m:Items/>")]
        headers = BytesHeaderParser().parsebytes(mime)
        recipients = [addr for _name, addr in getaddresses(
            [str(v) for h in ("To", "Cc", "Bcc") for v in headers.get_all(h, [])]) if addr]
        if not recipients:
            return [_error_message("CreateItem", "ErrorInvalidRecipients",
                                   "At least one recipient isn't valid.", "<m:Items/>")]
        self.sent.append(SentMessage(mime=mime, recipients=recipients, saved_in=folder.id))
        self._clock += timedelta(seconds=1)
        copy = FakeItem(id=_new_id(), folder=folder.id, mime=mime, received=self._clock,
                        is_read=True)
        self.items[copy.id] = copy
        # SendAndSaveCopy returns no item id (Microsoft's CreateItem reference).
        return [_ok("CreateItem", "<m:Items/>")]


class _Error(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(code)
        self.code, self.text = code, text


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _clean(text) -> str:
    return " ".join(str(text).split())


def _paging(view: ET.Element | None) -> tuple[int, int]:
    if view is None:
        return 0, 1000
    try:
        offset = int(view.get("Offset", "0"))
        limit = int(view.get("MaxEntriesReturned", "1000"))
    except ValueError:
        raise Invalid("paging view with non-numeric Offset/MaxEntriesReturned") from None
    if view.get("BasePoint", "Beginning") != "Beginning":
        raise Invalid("paging from the end is not expected")
    return offset, limit


def _ok(op: str, inner: str) -> str:
    return (f'<m:{op}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f"{inner}</m:{op}ResponseMessage>")


def _error_message(op: str, code: str, text: str, inner: str = "") -> str:
    return (f'<m:{op}ResponseMessage ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
            f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
            f"{inner}</m:{op}ResponseMessage>")


_HEADER = (
    f'<s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" '
    f'MinorBuildNumber="6" Version="V2017_07_11" xmlns:h="{TNS}" xmlns="{TNS}" '
    f'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/></s:Header>')


def _response(op: str, messages: list[str]) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}">{_HEADER}'
            f'<s:Body><m:{op}Response xmlns:m="{MNS}" xmlns:t="{TNS}"><m:ResponseMessages>'
            f'{"".join(messages)}</m:ResponseMessages></m:{op}Response></s:Body></s:Envelope>').encode()


def _busy_fault(back_off_ms: int) -> bytes:
    text = "The server cannot service this request right now. Try again later."
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault>'
            f'<faultcode xmlns:a="{TNS}">a:ErrorServerBusy</faultcode>'
            f'<faultstring xml:lang="en-US">{text}</faultstring><detail>'
            f'<e:ResponseCode xmlns:e="{ENS}">ErrorServerBusy</e:ResponseCode>'
            f'<e:Message xmlns:e="{ENS}">{text}</e:Message>'
            f'<t:MessageXml xmlns:t="{TNS}"><t:Value Name="BackOffMilliseconds">{back_off_ms}</t:Value>'
            f"</t:MessageXml></detail></s:Fault></s:Body></s:Envelope>").encode()


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as IIS answers EWS (a ``Connection: close`` would change how
    exchangelib reads error statuses, see the design note)."""

    protocol_version = "HTTP/1.1"
    # Headers and body in one segment, sent at once: otherwise Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every request.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    server_fake: EwsFake

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.split("?")[0].lower() != PATH.lower():
            self._send(404, {}, b"")
            return
        try:
            status, headers, payload = self.server_fake.handle(self.headers, body)
        except Exception as exc:  # a bug in the fake: make it fail the test, not hang it
            self.server_fake.problems.append(f"fake crashed: {type(exc).__name__}: {exc}")
            status, headers, payload = 500, {}, b"fake crashed"
        self._send(status, headers, payload)

    def do_GET(self) -> None:
        self._send(405, {"Allow": "POST"}, b"")

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "text/xml; charset=utf-8")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def mailbox_config(fake: EwsFake, **overrides) -> str:
    """A ``[mailbox]`` TOML section that points mailbot at ``fake`` (Basic auth, explicit
    version so exchangelib does not probe, short timeouts)."""
    values = {"kind": "ews", "ews_url": fake.url, "primary_smtp_address": fake.mailbox,
              "auth_type": "basic" if fake.user else "none", "username": fake.user or "",
              "password": fake.password or "", "ews_version": "15.1.2507.6", "poll_seconds": 1,
              "timeout_seconds": 10, "ews_max_wait_seconds": 5}
    values.update(overrides)
    lines = ["[mailbox]"]
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {value}" if isinstance(value, (int, float)) and not isinstance(value, bool)
                     else f"{key} = {str(value).lower()}" if isinstance(value, bool)
                     else f'{key} = "{value}"')
    return "\n".join(lines) + "\n"

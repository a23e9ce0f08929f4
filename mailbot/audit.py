"""A tamper-evident audit trail: every Event is chained to the one before it by a SHA-256 hash.

The hash of an event covers its own fields and the previous event's hash, so editing any row
breaks its own hash, deleting a row breaks the next row's link, and deleting rows at the end
is caught by the chain head kept in its own table.  Hashes are computed in a ``before_insert``
hook, so no code that records an event can forget it; the head row is locked (``FOR UPDATE``)
for the rest of the transaction, so two daemons on one PostgreSQL database append in turn
instead of forking the chain.  ``verify()`` is what ``mailbot audit verify`` runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from sqlalchemy import event, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import object_session
from sqlmodel import Field, Session, SQLModel, col
from sqlmodel import select as sql_select

from mailbot.cases.models import Event

GENESIS = "0" * 64
HEAD_DIRTY = "audit_head_dirty"  # Session.info: events were appended in this transaction


class AuditHead(SQLModel, table=True):
    """The hash of the newest event: catches rows deleted from the end of the chain."""

    id: int = Field(default=1, primary_key=True)
    last_hash: str = GENESIS
    count: int = 0


ERASED = "[erased]"


def content_digest(ev: Event) -> str:
    payload = json.dumps([ev.actor, ev.detail or ""], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def event_hash(prev_hash: str, ev: Event) -> str:
    at = ev.at.isoformat() if ev.at is not None else ""
    payload = json.dumps([prev_hash, ev.case_id, ev.message_id, at, ev.action, ev.content_digest],
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def erase_event(ev: Event) -> None:
    """Remove personal data from an event, keeping what the chain needs (its content digest).
    The caller records which events it erased in an ``erased`` event of its own."""
    ev.actor, ev.detail = ERASED, ERASED


def _head(connection: Connection) -> dict:
    """The chain head for this transaction, locked on first use."""
    txn = connection.get_transaction()
    cached = connection.info.get("audit_head")
    if cached is not None and cached["txn"] is txn:
        return cached
    dialect = connection.dialect.name
    insert = "INSERT INTO audithead (id, last_hash, count) VALUES (1, :h, 0) ON CONFLICT DO NOTHING"
    connection.execute(text(insert), {"h": GENESIS})
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    row = connection.execute(text(f"SELECT last_hash, count FROM audithead WHERE id = 1{lock}")).one()
    cached = {"txn": txn, "hash": row[0], "count": row[1]}
    connection.info["audit_head"] = cached
    return cached


@event.listens_for(Event, "before_insert")
def _chain(_mapper, connection: Connection, target: Event) -> None:
    head = _head(connection)
    target.prev_hash = head["hash"]
    target.content_digest = content_digest(target)
    target.hash = event_hash(head["hash"], target)
    head["hash"] = target.hash
    head["count"] += 1
    head["dirty"] = True
    session = object_session(target)
    if session is not None:
        session.info[HEAD_DIRTY] = True


@event.listens_for(OrmSession, "before_commit")
def _store_head(session: Session) -> None:
    """Write the chain head once per transaction, at commit, rather than once per event: a
    batch of messages appends hundreds of events under one head (which stays locked, on
    PostgreSQL, from its first read to the commit)."""
    if session.in_nested_transaction():
        return  # a savepoint: the head is written once, when the transaction itself commits
    session.flush()  # the last events get their hashes now, not in commit's own flush
    if not session.info.pop(HEAD_DIRTY, False):
        return
    connection = session.connection()
    head = connection.info.get("audit_head")
    if head is not None and head.get("dirty") and head["txn"] is connection.get_transaction():
        connection.execute(update(AuditHead).where(col(AuditHead.id) == 1)
                           .values(last_hash=head["hash"], count=head["count"]))
        head["dirty"] = False


@dataclass
class Verification:
    events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session, limit_problems: int = 50) -> Verification:
    result = Verification()
    prev = GENESIS
    events = session.exec(sql_select(Event).order_by(col(Event.id)).execution_options(yield_per=1000))
    erased_ok: set[int] = set()
    erased_seen: list[int] = []
    for ev in events:
        result.events += 1
        if ev.prev_hash != prev:
            result.problems.append(f"event {ev.id}: the event before it was deleted or changed "
                                   f"(link {ev.prev_hash[:12]}… expected {prev[:12]}…)")
        if ev.action == "erased" and ev.detail and ev.detail != ERASED:
            try:
                erased_ok.update(json.loads(ev.detail).get("events", []))
            except (ValueError, AttributeError):
                pass
        if ev.actor == ERASED and ev.detail == ERASED:
            erased_seen.append(ev.id)  # checked below against the erasure records
        elif ev.content_digest != content_digest(ev):
            result.problems.append(f"event {ev.id} ({ev.action}): its content was edited after it was written")
        if ev.hash != event_hash(ev.prev_hash or "", ev):
            result.problems.append(f"event {ev.id} ({ev.action}): its content was edited after it was written")
        prev = ev.hash or ""
        if len(result.problems) >= limit_problems:
            break
    for event_id in erased_seen:
        if event_id not in erased_ok and len(result.problems) < limit_problems:
            result.problems.append(f"event {event_id}: erased without an erasure record")
    head = session.get(AuditHead, 1)
    if head is not None and len(result.problems) < limit_problems:
        if head.last_hash != prev or head.count != result.events:
            result.problems.append(f"the chain ends at event {result.events} but {head.count} were written: "
                                   "events were deleted from the end")
    return result

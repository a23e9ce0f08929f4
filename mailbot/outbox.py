"""The outbox: outgoing mail is a row written in the same transaction as the case change that
causes it, and delivered afterwards.  A crash before delivery loses nothing (the row is still
queued); a crash after the server accepted it but before the row was updated resends the
same bytes with the same Message-ID, which receivers and tests can recognise.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from email.message import Message as EmailMessage

from sqlmodel import Session, col, func, or_, select

from mailbot.cases.models import Event, Message, utcnow
from mailbot.db import Database
from mailbot.letters import as_smtp_bytes
from mailbot.transport.base import PermanentSendError, Sender, TransportError

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 12
QUEUED_KEY = "automatic_letters_queued"  # Session.info: letters queued in this transaction
BACKOFF_CAP = timedelta(hours=1)


def queue(session: Session, msg: EmailMessage, *, case_id: int | None, purpose: str,
          mail_from: str) -> Message:
    recipients = [addr.strip() for addr in str(msg["To"]).split(",") if addr.strip()]
    row = Message(
        case_id=case_id, direction="out", message_id=str(msg["Message-ID"]),
        in_reply_to=str(msg.get("In-Reply-To", "") or ""),
        references=str(msg.get("References", "") or ""),
        sender=mail_from, recipients=",".join(recipients), subject=str(msg["Subject"]),
        raw=as_smtp_bytes(msg), purpose=purpose, delivery="queued")
    session.add(row)
    if not purpose.startswith("staff"):  # automatic letters, counted by the reply limits
        session.info[QUEUED_KEY] = session.info.get(QUEUED_KEY, 0) + 1
    return row


def _backoff(attempts: int, base: float = 30) -> timedelta:
    return min(timedelta(seconds=base * 2 ** (attempts - 1)), BACKOFF_CAP)


def deliver(db: Database, sender: Sender, limit: int = 1000, retry_seconds: float = 30) -> dict[str, int]:
    """Send what is due, one row per transaction (locked with SKIP LOCKED so two daemons never
    both send it).  One, not a chunk: a crash between the server's "250 OK" and the commit then
    resends only that letter, with the same Message-ID (tests/test_crash.py holds us to at most
    one duplicate per crash); chunks of 25 were ~15% faster on a backlog but could resend 25."""
    counts = {"sent": 0, "retry": 0, "failed": 0}
    for _ in range(limit):
        with db.session() as session:
            now = utcnow()
            row = session.exec(
                select(Message)
                .where(col(Message.direction) == "out", col(Message.delivery) == "queued",
                       or_(col(Message.next_attempt_at).is_(None), col(Message.next_attempt_at) <= now))
                .order_by(col(Message.id)).limit(1).with_for_update(skip_locked=True)
            ).first()
            if row is None:
                break
            if not _send_one(session, sender, row, now, counts, retry_seconds):
                break  # the server is unwell: the rest waits for the next round
    return counts


def _send_one(session: Session, sender: Sender, row: Message, now, counts: dict[str, int],
              retry_seconds: float) -> bool:
    """Send one row and record the result on it; False when the server is unwell."""
    recipients = [r for r in row.recipients.split(",") if r]
    try:
        sender.send(row.raw, row.sender, recipients)
    except PermanentSendError as exc:
        row.delivery, row.last_error = "failed", str(exc)[:1000]
        row.attempts += 1
        session.add(Event(case_id=row.case_id, message_id=row.id, actor="system",
                          action="delivery_failed", detail=row.last_error))
        counts["failed"] += 1
        log.error("outbox: message %s refused for good: %s", row.id, exc)
    except TransportError as exc:
        row.attempts += 1
        row.last_error = str(exc)[:1000]
        if row.attempts >= MAX_ATTEMPTS:
            row.delivery = "failed"
            session.add(Event(case_id=row.case_id, message_id=row.id, actor="system",
                              action="delivery_failed", detail=row.last_error))
            counts["failed"] += 1
        else:
            row.next_attempt_at = now + _backoff(row.attempts, retry_seconds)
            counts["retry"] += 1
        log.warning("outbox: message %s not sent (attempt %s): %s", row.id, row.attempts, exc)
        session.add(row)
        return False
    else:
        row.delivery, row.sent_at = "sent", utcnow()
        row.attempts += 1
        counts["sent"] += 1
    session.add(row)
    return True


def pending_count(db: Database) -> int:
    with db.session() as session:
        return session.exec(select(func.count()).select_from(Message).where(
            col(Message.direction) == "out", col(Message.delivery) == "queued")).one()

"""Retention and erasure: personal data is kept only as long as the policy says, and a person
can ask for theirs to be erased.

What "erase" does to a case, and why:

- the case keeps a minimal record (reference, kind, status, channel, flags, dates) so the
  organisation can still count its complaints and prove a case existed; the complainant's
  address, name and the subject are removed;
- every message of the case keeps its row (the audit trail points at it) but loses its raw
  bytes, subject, addresses and classification; its de-duplication key is replaced by a hash
  of itself, so the same mail arriving again is still recognised;
- every event of the case keeps its place in the tamper-evident chain; its actor and detail are
  replaced by ``[erased]`` (the chain covers their digest, see mailbot/audit.py), and an
  ``erased`` event lists what was erased and why;
- the copies in the mailbox's processed and quarantine folders are deleted too.

``plan_purge`` / ``plan_erasure`` only look; ``execute`` changes things, so a dry run shows
exactly what would go.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, col, or_, select

from mailbot.audit import ERASED, erase_event
from mailbot.cases.models import Case, Event, Message, utcnow
from mailbot.db import Database
from mailbot.pipeline import erased_key
from mailbot.policy.rules import Rules

log = logging.getLogger(__name__)


@dataclass
class Plan:
    reason: str
    cases: list[tuple[int, str, datetime | None]] = field(default_factory=list)  # id, reference, closed
    records: list[tuple[int, str, datetime]] = field(default_factory=list)  # message id, outcome, when

    def summary(self) -> dict:
        return {"reason": self.reason,
                "cases": [{"reference": ref, "closed_at": closed.isoformat() if closed else None}
                          for _id, ref, closed in self.cases],
                "records": [{"message": mid, "outcome": outcome, "at": at.isoformat()}
                            for mid, outcome, at in self.records]}


@dataclass
class Result:
    cases: int = 0
    messages: int = 0
    events: int = 0
    message_ids: list[str] = field(default_factory=list)  # Message-ID headers, for the mailbox


def plan_purge(session: Session, rules: Rules, now: datetime | None = None) -> Plan:
    now = now or utcnow()
    keep = rules.retention
    plan = Plan(reason="retention period over")
    cutoff = now - timedelta(days=keep.closed_cases_days)
    for case in session.exec(select(Case).where(col(Case.closed_at).is_not(None), col(Case.closed_at) < cutoff,
                                                col(Case.complainant) != ERASED).order_by(col(Case.id))):
        plan.cases.append((case.id, case.reference, case.closed_at))
    records_cutoff = now - timedelta(days=keep.records_days)
    for msg in session.exec(select(Message).where(
            col(Message.direction) == "in", col(Message.case_id).is_(None), col(Message.at) < records_cutoff,
            col(Message.sender) != ERASED).order_by(col(Message.id))):
        plan.records.append((msg.id, msg.outcome, msg.at))
    return plan


def plan_erasure(session: Session, address: str) -> Plan:
    address = address.strip().lower()
    plan = Plan(reason=f"erasure requested by the data subject")
    for case in session.exec(select(Case).where(col(Case.complainant) == address).order_by(col(Case.id))):
        plan.cases.append((case.id, case.reference, case.closed_at))
    for msg in session.exec(select(Message).where(col(Message.case_id).is_(None), or_(
            col(Message.sender) == address, col(Message.recipients) == address)).order_by(col(Message.id))):
        plan.records.append((msg.id, msg.outcome, msg.at))
    return plan


def _erase_message(msg: Message, result: Result) -> None:
    if msg.message_id:
        result.message_ids.append(msg.message_id)
    if msg.dedupe_key and not msg.dedupe_key.startswith("erased:"):
        msg.dedupe_key = erased_key(msg.dedupe_key)
    msg.raw = b""
    msg.subject = msg.reason = msg.classification = msg.in_reply_to = msg.references = ""
    msg.sender = msg.recipients = ERASED
    msg.last_error = ""
    result.messages += 1


def execute(db: Database, plan: Plan) -> Result:
    """Erase what the plan lists, one case per transaction."""
    result = Result()
    for case_id, reference, _closed in plan.cases:
        with db.session() as session:
            case = session.get(Case, case_id)
            if case is None or case.complainant == ERASED and not _has_data(session, case_id):
                continue
            messages = session.exec(select(Message).where(col(Message.case_id) == case_id)).all()
            ids = [m.id for m in messages]
            events = session.exec(select(Event).where(or_(col(Event.case_id) == case_id,
                                                         col(Event.message_id).in_(ids or [-1])))).all()
            for msg in messages:
                _erase_message(msg, result)
                session.add(msg)
            erased = []
            for ev in events:
                if ev.actor != ERASED:
                    erase_event(ev)
                    erased.append(ev.id)
                    session.add(ev)
            case.complainant, case.complainant_name, case.subject = ERASED, "", ""
            session.add(case)
            from mailbot.cases.models import Survey  # mailbot.feedback: the words of a survey answer

            for survey in session.exec(select(Survey).where(col(Survey.case_id) == case_id)).all():
                survey.comment = ""  # the rating stays, as an anonymous figure
                session.add(survey)
            session.add(Event(case_id=case_id, actor="system", action="erased",
                              detail=json.dumps({"reason": plan.reason, "events": erased,
                                                 "messages": len(messages)})))
            result.cases += 1
            result.events += len(erased)
        log.info("erased case ref=%s (%s)", reference, plan.reason)
    if plan.records:
        with db.session() as session:
            ids = [mid for mid, _o, _a in plan.records]
            for msg in session.exec(select(Message).where(col(Message.id).in_(ids))).all():
                _erase_message(msg, result)
                session.add(msg)
            erased = []
            for ev in session.exec(select(Event).where(col(Event.message_id).in_(ids))).all():
                if ev.actor != ERASED:
                    erase_event(ev)
                    erased.append(ev.id)
                    session.add(ev)
            session.add(Event(actor="system", action="erased",
                              detail=json.dumps({"reason": plan.reason, "events": erased,
                                                 "records": len(ids)})))
            result.events += len(erased)
    return result


def _has_data(session: Session, case_id: int) -> bool:
    return session.exec(select(Message.id).where(col(Message.case_id) == case_id,
                                                 col(Message.sender) != ERASED)).first() is not None


def remove_from_mailbox(mailbox, message_ids: list[str]) -> int | None:
    """Delete the copies in the processed and quarantine folders; None if the transport cannot."""
    remover = getattr(mailbox, "delete_handled", None)
    if remover is None or not message_ids:
        return None if remover is None else 0
    return remover(message_ids)

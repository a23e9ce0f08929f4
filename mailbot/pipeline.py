"""One inbound message, top to bottom: parse -> screen -> classify -> route -> store -> act.

``process(app, incoming)`` is the single entry point every transport feeds.  Everything it
decides is written in ONE transaction: the inbound message (raw bytes included), the case,
the audit events and the outgoing mail.  Only after that commit may the caller move the
message out of the inbox.  A unique ``dedupe_key`` on inbound messages makes a second copy
(a restart, a re-delivery, another daemon) a recognised duplicate instead of a second case.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.exc import (DisconnectionError, IntegrityError, InterfaceError, OperationalError,
                            PendingRollbackError)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, col, func, select

from mailbot import feedback, staffmail
from mailbot.app import App
from mailbot.cases import registry
from mailbot.cases.models import Case, CaseProgress, Event, Message, utcnow
from mailbot.cases.workflow import (RECEIVED, Route, add_deadline, deadlines_of, decide,
                                    meet_deadline, progress_of, transition, update_progress)
from mailbot.classify import Classification
from mailbot.intake.parse import ParsedMessage, ParseError, parse
from mailbot.letters import LetterError, build_email
from mailbot.outbox import QUEUED_KEY, queue
from mailbot.policy.calendar import Calendar
from mailbot.policy.context import build_context
from mailbot.policy.rules import STAFF_ROLE
from mailbot.staffmail.threads import find_case
from mailbot.transport.base import Incoming

log = logging.getLogger(__name__)
LONDON = ZoneInfo("Europe/London")


@dataclass
class Outcome:
    uid: str
    destination: str  # "processed" | "quarantine"
    action: str  # case_opened | added_to_case | recorded | duplicate | quarantined | ...
    reference: str | None = None
    label: str = ""
    channel: str = ""
    detail: str = ""


# The database could not be reached or the connection broke: a passing outage, never a reason
# to quarantine a message (it stays in the inbox and is handled once the database is back).
STORAGE_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PendingRollbackError, PoolTimeout)


class StorageUnavailable(Exception):
    """The database cannot be written: the message stays in the inbox for a later attempt."""


def dedupe_key(msg: ParsedMessage | None, raw_sha256: str) -> str:
    if msg is not None and msg.message_id:
        return f"mid:{msg.message_id.lower()}|{msg.from_addr}"[:500]
    return f"sha256:{raw_sha256}"


class InternalError(Exception):
    """A bug met while handling a message, raised instead of quarantining when the caller says
    so (the daemon's circuit breaker: the same bug on message after message is the code's
    fault, not the mail's, and must not empty the inbox into quarantine)."""


def process(app: App, incoming: Incoming, parsed: ParsedMessage | None = None,
            classification: Classification | None = None, *, quarantine_bugs: bool = True) -> Outcome:
    """Handle one message in its own transaction (see ``process_batch``)."""
    breaker = Breaker(limit=1 if quarantine_bugs else 0)
    outcomes = process_batch(app, [(incoming, parsed, classification)], breaker)
    if breaker.error is not None:
        raise breaker.error
    return outcomes[0]


@dataclass
class Breaker:
    """The circuit breaker on bugs: the same bug on message after message is the code's fault,
    not the mail's, and must not empty the inbox into quarantine.  After ``limit`` messages in
    a row met a bug, the next one raises InternalError instead of being quarantined."""

    limit: int
    in_a_row: int = 0
    error: InternalError | None = None  # set when the breaker stopped a batch

    def record(self, outcome: Outcome) -> None:
        if outcome.action == "quarantined" and outcome.detail.startswith("internal error"):
            self.in_a_row += 1
        elif outcome.action != "duplicate":
            self.in_a_row = 0


Item = tuple[Incoming, "ParsedMessage | None", "Classification | None"]


def process_batch(app: App, items: list[Item], breaker: Breaker,
                  checked: Lookup | None = None) -> list[Outcome]:
    """Handle several messages in ONE transaction, each inside its own savepoint.

    A message that fails (a bug, a duplicate met at insert time) rolls back only its own
    savepoint and is quarantined or recognised as a duplicate; the others stand.  Nothing is
    visible, and nothing may leave the inbox, until the single commit at the end, so the
    exactly-once rule is the same as one transaction per message, at a fraction of the cost
    (one commit, one audit-chain head, one counter row lock per batch).  The returned outcomes
    are all committed.  If the breaker trips, the messages before it are committed and returned
    and ``breaker.error`` says why the rest were left in the inbox.  ``checked`` is what the
    caller already looked up for these messages (``lookup``), saving a query per message.
    """
    outcomes: list[Outcome] = []
    breaker.error = None
    try:
        with app.db.session() as session:
            for incoming, parsed, classification in items:
                try:
                    outcome = _process_one(app, session, incoming, parsed, classification, breaker,
                                           checked)
                except InternalError as exc:
                    breaker.error = exc
                    break
                breaker.record(outcome)
                outcomes.append(outcome)
    except STORAGE_ERRORS as exc:
        raise StorageUnavailable(str(exc)) from exc
    except IntegrityError as exc:  # only a quarantine record can still meet one here
        raise StorageUnavailable(str(exc)) from exc
    for outcome in outcomes:
        # one line per message, references and decisions only: no names, addresses or text
        log.info("handled uid=%s action=%s ref=%s label=%s channel=%s", outcome.uid,
                 outcome.action, outcome.reference or "-", outcome.label, outcome.channel)
    return outcomes


def _process_one(app: App, session: Session, incoming: Incoming, parsed: ParsedMessage | None,
                 classification: Classification | None, breaker: Breaker,
                 checked: Lookup | None) -> Outcome:
    try:
        msg = parsed or parse(incoming.raw)
    except ParseError as exc:
        return _quarantine_in(session, incoming, str(exc))
    saved = _batch_state(session)
    try:
        with session.begin_nested():
            if checked is None or dedupe_key(msg, msg.sha256) in checked.known:
                duplicate = _find_duplicate(session, msg)
                if duplicate is not None:
                    return _duplicate_outcome(incoming, duplicate)
            own = (msg.message_id in checked.own) if checked is not None else None
            return _handle(app, session, incoming, msg, classification, own_mail=own)
    except IntegrityError:
        # another daemon (or an earlier copy in this batch) recorded the same message first
        _restore_batch_state(session, saved)
        duplicate = _find_duplicate(session, msg)
        if duplicate is not None:
            return _duplicate_outcome(incoming, duplicate)
        raise
    except STORAGE_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug on one message must not stop the mailbox
        _restore_batch_state(session, saved)
        if breaker.in_a_row >= breaker.limit:
            raise InternalError(f"{type(exc).__name__}: {exc}") from exc
        log.exception("internal error on %s; quarantining it", incoming.uid)
        return _quarantine_in(session, incoming, f"internal error: {type(exc).__name__}: {exc}", msg)


def _batch_state(session: Session) -> tuple:
    """What a savepoint rollback must also undo outside the database: the audit chain head
    kept in memory for the transaction (mailbot.audit) and the count of letters queued in it."""
    head = session.connection().info.get("audit_head")
    return (dict(head) if head is not None else None, session.info.get(QUEUED_KEY, 0))


def _restore_batch_state(session: Session, saved: tuple) -> None:
    head, queued = saved
    info = session.connection().info
    if head is None:
        info.pop("audit_head", None)
    else:
        info["audit_head"] = head
    session.info[QUEUED_KEY] = queued


def erased_key(key: str) -> str:
    """The key an erased message keeps (see mailbot/retention.py): no personal data in it, yet
    the same mail arriving again is still recognised."""
    return "erased:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Lookup:
    """What one query per batch found out, so each message need not ask again: which
    messages are already recorded and which are our own letters come back.  Copies that
    arrive within one batch are still caught, by the unique ``dedupe_key``."""

    known: set[str]  # dedupe keys already recorded
    own: set[str]  # Message-IDs of our own letters


def lookup(app: App, messages: list[ParsedMessage]) -> Lookup:
    keys = [dedupe_key(m, m.sha256) for m in messages]
    ids = [m.message_id for m in messages if m.message_id]
    if not keys:
        return Lookup(set(), set())
    with app.db.session() as session:
        found = set(session.exec(select(Message.dedupe_key).where(
            col(Message.dedupe_key).in_(keys + [erased_key(k) for k in keys]))).all())
        own = set(session.exec(select(Message.message_id).where(
            col(Message.direction) == "out", col(Message.message_id).in_(ids))).all()) if ids else set()
    return Lookup({k for k in keys if k in found or erased_key(k) in found}, own)


def _find_duplicate(session: Session, msg: ParsedMessage) -> Message | None:
    key = dedupe_key(msg, msg.sha256)
    return session.exec(select(Message).where(
        col(Message.dedupe_key).in_([key, erased_key(key)]))).first()


def _duplicate_outcome(incoming: Incoming, original: Message) -> Outcome:
    destination = "quarantine" if original.outcome == "quarantined" else "processed"
    return Outcome(incoming.uid, destination, "duplicate", label=original.label,
                   detail=f"same message as #{original.id} ({original.outcome})")


def _quarantine_in(session: Session, incoming: Incoming, reason: str,
                   msg: ParsedMessage | None = None) -> Outcome:
    """Record the message as quarantined (raw bytes and reason kept), in its own savepoint."""
    sha = hashlib.sha256(incoming.raw).hexdigest()
    key = dedupe_key(msg, sha)
    with session.begin_nested():
        existing = session.exec(select(Message).where(col(Message.dedupe_key) == key)).first()
        if existing is None:
            row = Message(direction="in", dedupe_key=key, raw=incoming.raw, source=incoming.uid,
                          outcome="quarantined", reason=reason[:2000],
                          message_id=msg.message_id if msg else None,
                          sender=msg.from_addr if msg else "", subject=msg.subject[:500] if msg else "")
            session.add(row)
            session.flush()
            session.add(Event(message_id=row.id, actor="system", action="quarantined",
                              detail=reason[:2000]))
    log.warning("quarantined %s: %s", incoming.uid, reason)
    return Outcome(incoming.uid, "quarantine", "quarantined", detail=reason)


def _is_own_mail(session: Session, app: App, msg: ParsedMessage, looked_up: bool | None) -> bool:
    if msg.from_addr == app.config.outgoing.from_address:
        return True
    if looked_up is not None:
        return looked_up
    if msg.message_id:
        return session.exec(select(Message.id).where(
            col(Message.direction) == "out", col(Message.message_id) == msg.message_id)).first() is not None
    return False


def _handle(app: App, session: Session, incoming: Incoming, msg: ParsedMessage,
            classification: Classification | None = None, *, own_mail: bool | None = None) -> Outcome:
    cls = classification or app.classifier.classify(msg)
    row = Message(direction="in", dedupe_key=dedupe_key(msg, msg.sha256), message_id=msg.message_id,
                  in_reply_to=" ".join(msg.in_reply_to), references=" ".join(msg.references),
                  sender=msg.from_addr, recipients=",".join(msg.to), subject=msg.subject[:500],
                  raw=incoming.raw, source=incoming.uid, label=cls.label,
                  classification=cls.to_json())
    session.add(row)
    session.flush()  # the unique dedupe_key is checked here, before a number is taken

    if _is_own_mail(session, app, msg, own_mail):
        row.outcome, row.reason = "recorded", "our own mail came back: never answered"
        session.add(Event(message_id=row.id, actor="system", action="own_mail_ignored"))
        return Outcome(incoming.uid, "processed", "recorded", label=cls.label,
                       channel=cls.channel, detail=row.reason)

    # staff working a case by email (commands, notes) and anything pretending to be them
    handled = staffmail.handle(app, session, msg, cls, row, _received_at(msg))
    if handled is not None:
        return Outcome(incoming.uid, "processed", handled.action, reference=handled.reference,
                       label=cls.label, channel=cls.channel, detail=handled.detail)

    existing = find_case(session, app.rules, msg, cls.reference)
    now = _received_at(msg)
    progress = session.get(CaseProgress, existing.id) if existing is not None else None
    deadlines = deadlines_of(session, existing) if existing is not None else ()
    route = decide(msg, cls, existing, app.rules, progress=progress, deadlines=deadlines, now=now)
    limited = reply_limit_reached(session, app, msg.reply_address, now) if route.letter else None
    suppressed = _letter_suppressed(session, existing, row, route.letter, limited) if limited else None
    if limited:
        route = decide(msg, cls, existing, app.rules, progress=progress, deadlines=deadlines, now=now,
                       held_back=limited)
    row.reason = "; ".join(route.reasons)[:2000]
    if route.action == "record":
        row.outcome = "recorded"
        session.add(Event(message_id=row.id, actor="system", action=route.event,
                          detail=json.dumps({"label": cls.label, "channel": cls.channel,
                                             "handling": route.handling, "reasons": route.reasons})))
        if route.letter or route.staff_letter:
            _act(app, session, msg, cls, None, route, row, now, limits_checked=True)
        return Outcome(incoming.uid, "processed", "recorded", label=cls.label,
                       channel=cls.channel, detail=row.reason)

    if route.action == "new_case":
        case = _open_case(session, app, msg, cls, route)
        action = "case_opened"
    else:
        case = route.case
        action = "added_to_case"
        session.add(Event(case_id=case.id, actor=msg.from_addr or "unknown", action=route.event,
                          detail=json.dumps({"label": cls.label, "flags": cls.flags,
                                             "handling": route.handling})))
        if cls.flags:  # a legal threat or a safeguarding sign later on stays on the case
            case.flags = ",".join(dict.fromkeys(case.flag_list + cls.flags))
    row.case_id, row.outcome = case.id, action
    if suppressed is not None:
        suppressed.case_id = case.id  # the case the held-back letter was for, opened just now
    session.add(Event(case_id=case.id, message_id=row.id, actor="system", action="classified",
                      detail=cls.to_json()))
    feedback.before_act(app, session, msg, cls, case, route, row)  # survey answers
    _act(app, session, msg, cls, case, route, row, now, limits_checked=True)
    feedback.after_act(app, session, msg, cls, case, route, row)  # compliments, consent to publish
    return Outcome(incoming.uid, "processed", action, reference=case.reference, label=cls.label,
                   channel=cls.channel, detail=row.reason)


def _received_at(msg: ParsedMessage):
    return utcnow()


def _open_case(session: Session, app: App, msg: ParsedMessage, cls: Classification,
               route: Route) -> Case:
    now = _received_at(msg)
    year = now.astimezone(LONDON).year
    reference = registry.next_reference(session, app.rules.reference, year)
    case = Case(reference=reference, kind=route.kind or cls.label, status=route.status or RECEIVED,
                complainant=msg.reply_address, complainant_name=msg.from_name,
                subject=msg.subject[:500], channel=cls.channel, flags=",".join(cls.flags),
                confidence=cls.confidence, needs_review=cls.needs_review, opened_at=now)
    session.add(case)
    session.flush()
    session.add(CaseProgress(case_id=case.id))  # found by progress_of without a query
    session.add(Event(case_id=case.id, actor="system", action="case_opened",
                      detail=json.dumps({"reference": reference, "kind": case.kind,
                                         "status": case.status, "reasons": route.reasons})))
    return case


def letter_context(app: App, case: Case | None, msg: ParsedMessage, cls: Classification,
                   acknowledged: bool = False, *, route: Route | None = None,
                   progress: CaseProgress | None = None, deadlines=(), received=None) -> dict:
    """Everything a template may use (see mailbot.policy.context, shared with `rules check`)."""
    subs = json.loads(progress.substitutions) if progress and progress.substitutions else {}
    return build_context(
        app.rules, case=case, sender_name=msg.from_name, sender_addr=msg.from_addr,
        subject=msg.subject, body=msg.text, attached=msg.attachment_text, label=cls.label,
        channel=cls.channel, flags=cls.flags,
        confidence=cls.confidence, needs_review=cls.needs_review, received=received or utcnow(),
        acknowledged=acknowledged, handling=route.handling if route else "normal",
        deadlines=deadlines, stage=progress.stage if progress else 0, substitutions=subs,
        owner_role=progress.owner_role if progress and progress.owner_role else None,
        staff_roles=route.staff_roles if route else (), reasons=route.reasons if route else (),
        publish=progress.publish if progress else "")


def _apply(app: App, session: Session, case: Case, route: Route, row: Message,
           now) -> tuple[CaseProgress, list]:
    """Carry out the decision on the case: progress, state changes, deadlines (computed once,
    here, from the arrival time and the organisation's calendar).  Returns the progress and
    all the case's deadlines (no query for a case opened by this very message)."""
    progress = progress_of(session, case)
    update_progress(progress, route)
    session.add(progress)
    calendar = Calendar.for_rules(app.rules)
    opened_now = route.action == "new_case"
    for name, stage in route.meet:
        meet_deadline(session, case, name, stage, now)
    added = [add_deadline(session, case, spec, now, calendar) for spec in route.deadlines]
    for state in route.transitions:
        transition(session, case, state, "system", route.handling, message_id=row.id)
    if route.handling != "normal":
        session.add(Event(case_id=case.id, message_id=row.id, actor="system",
                          action=f"policy_{route.handling}",
                          detail=json.dumps({"reasons": route.reasons, "roles": route.staff_roles})))
    deadlines = added if opened_now and not route.meet else deadlines_of(session, case)
    return progress, deadlines


def reply_limit_reached(session: Session, app: App, address: str, now) -> str | None:
    """Why an automatic letter to ``address`` must not go now, or None (rules [limits])."""
    limits = app.rules.limits
    recent = select(func.count()).select_from(Message).where(
        col(Message.direction) == "out", col(Message.purpose).not_like("staff%"))
    to_them = session.exec(recent.where(col(Message.recipients) == address,
                                        col(Message.at) >= now - timedelta(days=1))).one()
    if to_them >= limits.replies_per_sender_per_day:
        return (f"{to_them} automatic letters to this address in the last 24 hours "
                f"(limit {limits.replies_per_sender_per_day}): possible mail loop")
    in_hour = _letters_in_last_hour(session, recent, now)
    if in_hour >= limits.replies_per_hour:
        return f"{in_hour} automatic letters in the last hour (limit {limits.replies_per_hour}): possible flood"
    return None


def _letters_in_last_hour(session: Session, recent, now) -> int:
    """Counted once per transaction (a batch may queue hundreds of letters), then kept up to
    date by ``outbox.queue``; letters that leave the hour meanwhile are still counted, which
    errs on the safe side."""
    base = session.info.get("letters_in_hour")
    if base is None or now - base[0] > timedelta(minutes=5):
        session.flush()
        count = session.exec(recent.where(col(Message.at) >= now - timedelta(hours=1))).one()
        base = session.info["letters_in_hour"] = (now, count)
        session.info[QUEUED_KEY] = 0
    return base[1] + session.info.get(QUEUED_KEY, 0)


def _letter_suppressed(session: Session, case: Case | None, row: Message, letter: str, why: str) -> Event:
    event = Event(case_id=case.id if case is not None else None, message_id=row.id,
                  actor="system", action="reply_suppressed",
                  detail=json.dumps({"letter": letter, "reason": why}))
    session.add(event)
    log.warning("not sending %s for %s: %s", letter, incoming_ref(case), why)
    return event


def incoming_ref(case: Case | None) -> str:
    return case.reference if case is not None else "a non-case message"


def _act(app: App, session: Session, msg: ParsedMessage, cls: Classification, case: Case | None,
         route: Route, row: Message, now=None, *, limits_checked: bool = False) -> None:
    """Carry out ``route``.  ``limits_checked``: the caller already held the letter against the
    reply limits before deciding (``_handle``), so they are not counted a second time."""
    now = now or utcnow()
    sender = app.config.outgoing.from_
    mail_from = app.config.outgoing.from_address
    progress, deadlines = _apply(app, session, case, route, row, now) if case is not None else (None, [])
    limited = (reply_limit_reached(session, app, msg.reply_address, now)
               if route.letter and not limits_checked else None)
    if limited:  # a caller that did not check before deciding (see _handle)
        _letter_suppressed(session, case, row, route.letter, limited)
        route.letter = None
    context = letter_context(app, case, msg, cls, acknowledged=route.letter is not None,
                             route=route, progress=progress, deadlines=deadlines, received=now)
    case_id = case.id if case is not None else None
    if route.letter:
        try:
            letter = app.letters.render(route.letter, context)
        except LetterError as exc:
            raise RuntimeError(f"cannot write the {route.letter} letter: {exc}") from exc
        # on an existing case, letters go to its complainant of record, whoever else writes in
        to = case.complainant if route.action == "add_to_case" and case.complainant else msg.reply_address
        email = build_email(letter, sender=sender, to=[to],
                            in_reply_to=msg.message_id, references=msg.references)
        out = queue(session, email, case_id=case_id, purpose=route.letter, mail_from=mail_from)
        session.add(Event(case_id=case_id, message_id=row.id, actor="system",
                          action=f"{route.letter}_queued"))
        log.debug("queued %s (%s)", route.letter, out.message_id)
    staff = app.rules.addresses(route.staff_roles or [STAFF_ROLE],
                                [a for a in app.config.staff.notify if a])
    assignee = staffmail.assignee_address(session, case) if route.staff_letter == "staff_case_update" else None
    if assignee and assignee not in staff:  # the member of staff the case was given to (#assign)
        staff.append(assignee)
    if route.staff_letter and staff:
        try:
            letter = app.letters.render(route.staff_letter, context)
        except LetterError as exc:
            raise RuntimeError(f"cannot write the {route.staff_letter} letter: {exc}") from exc
        email = build_email(letter, sender=sender, to=staff, auto_reply=True)
        queue(session, email, case_id=case_id, purpose=route.staff_letter, mail_from=mail_from)

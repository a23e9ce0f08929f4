"""``mailbot replay --rules DIR [--since DATE] [--limit N] [--json]``: the mail of the past
through another rules set, and what would have been different: label, flags, channel, what
the route did (new case, added to a case, recorded), the handling, the state, the letters
(which, to whom, with which subject) and the due dates.  Only messages whose handling
changes are listed, with a count of the rest.

How, and why:

- Nothing is written: the database is read through a read-only connection, and the plan of
  each message (``mailbot.admin.plan``) reuses the pipeline's decisions without its storing.
- Each message meets its case **as it stood just before it arrived**, rebuilt from the audit
  trail (state changes, outcomes, appeals accepted, extensions, reclassifications): an
  appeal from last spring is judged against a case with an outcome and an open window, not
  against today's closed case.
- Both sides are worked out the same way: the rules in force (``--against``, default the
  configured ones) and the new set, on the same stored message and the same case state.
  What differs is then what the *rules change* does, nothing else.  Where the rules in force
  no longer give what the record says was done (the model or the rules changed since), the
  message is counted as "drift", so a reader knows the past was handled under other rules.
- The reply limits of ``[limits]`` are not applied: they count letters around a moment of
  the past, which says nothing about a rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Iterator

from sqlmodel import Session, col, func, select

from mailbot.admin.plan import CaseState, Plan, aware, detached, plan_message
from mailbot.cases.models import Case, CaseAssignee, CaseProgress, Deadline, Event, Message
from mailbot.classify import Classification
from mailbot.intake.parse import ParsedMessage, ParseError, parse
from mailbot.policy.calendar import LONDON, describe_time
from mailbot.policy.rules import Rules

if TYPE_CHECKING:
    from mailbot.app import App

CHUNK = 200  # messages classified together (and held in memory) at a time
RECORDED_ACTIONS = ("case_opened", "added_to_case", "recorded")


@dataclass
class Difference:
    message_id: int
    received: datetime
    sender: str
    subject: str
    case: str | None  # the case the message was recorded with
    changes: dict[str, tuple[object, object]]  # field -> (now, with the new rules)

    def to_json(self) -> dict:
        return {"message": self.message_id, "received": self.received.isoformat(), "sender": self.sender,
                "subject": self.subject, "case": self.case,
                "changes": {k: {"now": a, "new": b} for k, (a, b) in self.changes.items()}}


@dataclass
class ReplayReport:
    replayed: int = 0
    differences: list[Difference] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    drift: list[int] = field(default_factory=list)  # message ids the rules in force no longer reproduce
    by_field: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"replayed": self.replayed, "changed": len(self.differences), "unchanged":
                self.replayed - len(self.differences), "skipped": self.skipped,
                "changes_by_field": self.by_field, "drift": len(self.drift), "drift_messages": self.drift,
                "messages": [d.to_json() for d in self.differences]}


# ---------------------------------------------------------------------------------------------
# The case as it stood before a message


def _first_inbound(session: Session, case_id: int) -> int | None:
    return session.exec(select(func.min(Message.id)).where(
        col(Message.case_id) == case_id, col(Message.direction) == "in")).one()


def existed_before(session: Session, case: Case, row: Message) -> bool:
    """Whether ``case`` was already there when ``row`` arrived (it was not opened by it, or later)."""
    first = _first_inbound(session, case.id)
    if first is not None:
        return first < row.id
    return aware(case.opened_at) < aware(row.at)  # registered by staff (#log): no mail of its own


def state_before(session: Session, case: Case, row: Message, rules: Rules) -> CaseState:
    """``case`` as ``row`` found it, rebuilt from the audit trail; copies only.

    The boundary is the first event the message itself caused (the pipeline writes it before
    any state change); a message that caused none on this case is placed by its time.
    ``rules`` are the rules in force, used only for the owner of a stage-0 case that has
    since gone to appeal (not stored anywhere else)."""
    arrived = aware(row.at)
    events = list(session.exec(select(Event).where(col(Event.case_id) == case.id).order_by(col(Event.id))).all())
    own = [e.id for e in events if e.message_id == row.id]
    if own:
        boundary = min(own)

        def before(e: Event) -> bool:
            return e.id < boundary
    else:
        later = [e.id for e in events if e.message_id is not None and e.message_id > row.id]
        next_boundary = min(later) if later else None

        def before(e: Event) -> bool:
            at = aware(e.at)
            return at < arrived or (at == arrived and (next_boundary is None or e.id < next_boundary))

    past = [e for e in events if before(e)]
    future = [e for e in events if not before(e)]
    copy = detached(case)
    status = None
    for e in past:
        d = e.detail_fields
        if e.action == "case_opened" and d.get("status"):
            status = d["status"]
        elif e.action == "status_changed" and d.get("to"):
            status = d["to"]
    copy.status = status or case.status
    reclassified = [e for e in future if e.action == "reclassified" and e.detail_fields.get("from")]
    if reclassified:
        copy.kind = _detail(reclassified[0])["from"]
    flags: list[str] = []
    inbound = session.exec(select(Message.classification).where(
        col(Message.case_id) == case.id, col(Message.direction) == "in", col(Message.id) < row.id)
        .order_by(col(Message.id))).all()
    for text in inbound:
        try:
            flags += json.loads(text or "{}").get("flags", [])
        except ValueError:
            continue
    if inbound:
        copy.flags = ",".join(dict.fromkeys(flags))

    progress = detached(session.get(CaseProgress, case.id))
    if progress is not None:
        accepted_later = sum(1 for e in future if e.action == "status_changed"
                             and e.detail_fields.get("to") == "appeal_received")
        outcomes = [e for e in past if e.action == "outcome_recorded"]
        progress.outcome_at = aware(outcomes[-1].at) if outcomes else None
        if accepted_later:
            progress.stage = max(0, progress.stage - accepted_later)
            subs = json.loads(progress.substitutions) if progress.substitutions else {}
            stages = rules.complaint.appeals
            owner = (stages[progress.stage - 1].reviewer if 0 < progress.stage <= len(stages)
                     else rules.complaint.owner)
            progress.owner_role = subs.get(owner, owner)

    deadlines = []
    extended_later = [e.detail_fields for e in future if e.action == "deadline_extended"]
    for row_d in session.exec(select(Deadline).where(col(Deadline.case_id) == case.id).order_by(col(Deadline.id))).all():
        d = detached(row_d)
        if d.started_at is None or d.started_at > arrived:
            continue
        if d.started_at == arrived and not (d.name == "appeal_window" and progress is not None
                                           and progress.outcome_at is not None):
            continue
        if d.met_at is not None and d.met_at >= arrived:
            d.met_at = None
        for ext in extended_later:  # moved after this message: it still had the first date
            if ext.get("deadline") == d.name and ext.get("stage", d.stage) == d.stage and ext.get("from"):
                d.due_at = datetime.fromisoformat(ext["from"])
                break
        deadlines.append(d)
    assignee = session.get(CaseAssignee, case.id)
    assigned = None
    if assignee is not None and assignee.assigned_at is not None and aware(assignee.assigned_at) < arrived:
        assigned = assignee.address
    return CaseState(case=copy, progress=progress, deadlines=deadlines, assignee=assigned)


def case_for(session: Session, app: "App", msg: ParsedMessage, cls: Classification,
             row: Message) -> Case | None:
    """The case ``msg`` would join under ``app``'s rules, among the cases that existed then."""
    from mailbot.staffmail.threads import find_case

    case = find_case(session, app.rules, msg, cls.reference)
    if case is None or not existed_before(session, case, row):
        return None
    return case


# ---------------------------------------------------------------------------------------------
# Replay


def _rows(session: Session, since: datetime | None, limit: int | None) -> list[int]:
    query = select(Message.id).where(col(Message.direction) == "in")
    if since is not None:
        query = query.where(col(Message.at) >= since)
    ids = list(session.exec(query.order_by(col(Message.id))).all())
    return ids[-limit:] if limit else ids


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def _new_reference(session: Session, app: "App", row: Message) -> str:
    """A case the message opened keeps its number on both sides; one it would newly open gets
    the rules' format with number 0 (so a change of the number format still shows)."""
    if row.outcome == "case_opened" and row.case_id is not None:
        case = session.get(Case, row.case_id)
        if case is not None:
            return case.reference
    return app.rules.reference.make(aware(row.at).astimezone(LONDON).year, 0)


def _plan(session: Session, app: "App", baseline_rules: Rules, msg: ParsedMessage,
          cls: Classification, row: Message) -> Plan:
    case = case_for(session, app, msg, cls, row)
    state = state_before(session, case, row, baseline_rules) if case is not None else None
    return plan_message(app, session, msg, cls, aware(row.at), state=state,
                        new_reference=_new_reference(session, app, row), check_limits=False)


def replay(baseline: "App", candidate: "App", session: Session, *, since: datetime | None = None,
           limit: int | None = None) -> ReplayReport:
    """Every stored inbound message (after ``since``; the last ``limit``) planned under both
    sets; the differences.  ``session`` must be read-only (``plan.read_only_engine``)."""
    report = ReplayReport()

    def skip(reason: str) -> None:
        report.skipped[reason] = report.skipped.get(reason, 0) + 1

    for ids in _chunks(_rows(session, since, limit)):
        rows = list(session.exec(select(Message).where(col(Message.id).in_(ids)).order_by(col(Message.id))).all())
        todo: list[tuple[Message, ParsedMessage]] = []
        for row in rows:
            if not row.raw:
                skip("erased")
            elif row.outcome == "quarantined":
                skip("quarantined")
            else:
                try:
                    todo.append((row, parse(row.raw)))
                except ParseError:
                    skip("unreadable")
        if not todo:
            continue
        messages = [m for _, m in todo]
        now_cls = baseline.classifier.classify_many(messages)
        new_cls = candidate.classifier.classify_many(messages)
        for (row, msg), before_cls, after_cls in zip(todo, now_cls, new_cls):
            report.replayed += 1
            now = _plan(session, baseline, baseline.rules, msg, before_cls, row)
            new = _plan(session, candidate, baseline.rules, msg, after_cls, row)
            if row.outcome in RECORDED_ACTIONS and now.action != "staff" and (
                    (now.action if now.action != "own_mail" else "recorded") != row.outcome
                    or (row.label and row.label != now.label)):
                report.drift.append(row.id)
            a, b = now.comparable(), new.comparable()
            changes = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
            if changes:
                case = session.get(Case, row.case_id) if row.case_id else None
                report.differences.append(Difference(row.id, aware(row.at), row.sender, row.subject,
                                                     case.reference if case else None, changes))
                for k in changes:
                    report.by_field[k] = report.by_field.get(k, 0) + 1
    return report


def describe_change(name: str, now: object, new: object) -> list[str]:
    """A change as lines for the table: lists as what goes and what comes."""
    if isinstance(now, list) and isinstance(new, list):
        gone = [f"- {x}" for x in now if x not in new]
        come = [f"+ {x}" for x in new if x not in now]
        return [f"{name}:"] + [f"  {x}" for x in gone + come]
    return [f"{name}: {now} -> {new}"]


def received_text(moment: datetime) -> str:
    return describe_time(moment)

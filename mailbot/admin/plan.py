"""What one message *would* do: its classification, the case it would join or open, the state
it would move to, the letters that would go out (to whom, with which subject) and the due
dates that would be set.  Nothing is written.

Why a plan and not the pipeline inside a rolled-back transaction: ``mailbot replay`` asks what
an old message would have done *at the time*, against the case as it stood then, which the
database no longer holds (the case has moved on).  So the pipeline's decisions are reused
(``workflow.decide``, ``Calendar.due``, ``pipeline.letter_context``, the letters) and only the
storing is left out; the case state is passed in (as stored now, for ``mailbot simulate``; as
it was before the message, for replay).  ``tests/test_admin_simulate.py`` holds the plan
against what the pipeline then really does, so the two cannot drift apart unnoticed.

Read with a read-only connection (``read_only_engine``): a plan cannot write even by mistake.

Not planned: what ``mailbot.feedback`` adds around the letters (a survey answer recorded, a
consent to quote confirmed by letter) and the commands of staff mail; the plan says when a
message is of that kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, col, create_engine, select

from mailbot.cases.models import Case, CaseAssignee, CaseProgress, Counter, Deadline, Message
from mailbot.cases.workflow import (PAUSED_LEGAL, RECEIVED, Route, decide, deadlines_of,
                                    find_deadline, machine_for, update_progress)
from mailbot.classify import Classification
from mailbot.intake.parse import ParsedMessage
from mailbot.letters import LetterError
from mailbot.policy.calendar import LONDON, Calendar, describe_time
from mailbot.policy.rules import STAFF_ROLE

if TYPE_CHECKING:
    from mailbot.app import App


# ---------------------------------------------------------------------------------------------
# Reading without writing


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: SQLite with ``PRAGMA query_only`` (and no ``BEGIN
    IMMEDIATE``, so a long replay never holds the write lock the daemon needs), PostgreSQL with
    read-only transactions.  Any attempt to write fails loudly instead of changing a case."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _record):  # pragma: no cover - exercised by every replay
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only = ON")
            cur.execute("PRAGMA busy_timeout = 30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True,
                         connect_args={"options": "-c default_transaction_read_only=on"})


def read_session(engine: Engine) -> Session:
    """A session that never flushes by itself: the objects a plan changes are copies anyway."""
    return Session(engine, autoflush=False, expire_on_commit=False)


def aware(moment: datetime | None) -> datetime | None:
    """Plain DateTime columns come back without a zone on SQLite; they were written in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def detached(row):
    """A copy of a stored row that no session knows: a plan may change it freely."""
    return type(row)(**row.model_dump()) if row is not None else None


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class CaseState:
    """A case as a message would find it (copies, never the stored rows)."""

    case: Case
    progress: CaseProgress | None = None
    deadlines: list[Deadline] = field(default_factory=list)
    assignee: str | None = None


def stored_state(session: Session, case: Case | None) -> CaseState | None:
    """The case as it is stored now (for ``mailbot simulate``)."""
    if case is None:
        return None
    assignee = session.get(CaseAssignee, case.id)
    return CaseState(case=detached(case), progress=detached(session.get(CaseProgress, case.id)),
                     deadlines=[detached(d) for d in deadlines_of(session, case)],
                     assignee=assignee.address if assignee else None)


@dataclass
class PlannedLetter:
    template: str
    to: list[str]
    subject: str
    audience: str  # "sender" (the complainant or whoever wrote) | "staff"
    text: str = ""
    html: str | None = None
    suppressed: str = ""  # why it would not be sent after all (a reply limit)

    def key(self) -> str:
        return f"{self.template} to {', '.join(sorted(self.to))}: {self.subject}"


@dataclass
class PlannedDeadline:
    name: str
    stage: int
    rule: str
    due: datetime
    met: bool = False

    def key(self) -> str:
        state = " (met at once)" if self.met else ""
        stage = f" stage {self.stage}" if self.stage else ""
        return f"{self.name}{stage}: {self.rule}, due {describe_time(self.due)}{state}"


@dataclass
class Plan:
    # classification
    label: str
    channel: str
    flags: list[str]
    reference: str | None
    confidence: float
    needs_review: bool
    classification_reasons: list[str]
    # route
    action: str  # case_opened | added_to_case | recorded | staff | own_mail
    case: str | None = None  # reference of the case joined or opened
    new_case: bool = False
    kind: str | None = None
    status_before: str | None = None
    status_after: str | None = None
    handling: str = "normal"
    event: str = ""
    reasons: list[str] = field(default_factory=list)
    owner_role: str | None = None
    staff_roles: list[str] = field(default_factory=list)
    letters: list[PlannedLetter] = field(default_factory=list)
    deadlines: list[PlannedDeadline] = field(default_factory=list)
    met: list[str] = field(default_factory=list)  # deadlines this message meets (an appeal window)
    problems: list[str] = field(default_factory=list)  # what would make the pipeline quarantine it
    received: datetime | None = None

    def comparable(self) -> dict[str, object]:
        """What replay compares, as short texts an admin can read side by side."""
        return {
            "label": self.label + (" (review)" if self.needs_review else ""),
            "flags": ", ".join(sorted(self.flags)) or "-",
            "channel": self.channel,
            "action": self.action + (f" {self.case}" if self.case and not self.new_case else ""),
            "handling": self.handling,
            "status": self.status_after or "-",
            "letters": sorted(letter.key() for letter in self.letters if not letter.suppressed),
            "deadlines": sorted(d.key() for d in self.deadlines),
            "problems": sorted(self.problems),
        }

    def to_json(self) -> dict:
        out = asdict(self)
        out["received"] = self.received.isoformat() if self.received else None
        for d in out["deadlines"]:
            d["due"] = d["due"].isoformat()
            d["due_text"] = describe_time(datetime.fromisoformat(d["due"]))
        return out


def peek_reference(session: Session, app: "App", now: datetime) -> str:
    """The registration number the next case would get (read, never taken)."""
    year = now.astimezone(LONDON).year
    counter = session.get(Counter, f"{app.rules.reference.format}|{year}")
    return app.rules.reference.make(year, (counter.value if counter else 0) + 1)


def _own_mail(session: Session, app: "App", msg: ParsedMessage) -> bool:
    if msg.from_addr == app.config.outgoing.from_address:
        return True
    return bool(msg.message_id) and session.exec(select(Message.id).where(
        col(Message.direction) == "out", col(Message.message_id) == msg.message_id)).first() is not None


def _staff_matter(app: "App", msg: ParsedMessage, cls: Classification, case: Case | None) -> str | None:
    """Why the staff-commands path (mailbot.staffmail) would take this message, or None.
    Mirrors the first lines of ``staffmail.handle``; the commands themselves are not planned."""
    from mailbot.staffmail import commands as cmd
    from mailbot.staffmail.auth import staff_addresses, verify_for

    notify = [a for a in app.config.staff.notify if a]
    if msg.from_addr.lower() not in staff_addresses(app.rules, notify):
        return None
    parsed = cmd.parse(msg.subject, msg.text, app.rules.reference.pattern())
    is_complainant = case is not None and bool(case.complainant) and \
        msg.from_addr.lower() == case.complainant.lower()
    if is_complainant and not parsed.mentions_commands:
        return None
    if msg.machine_generated or cls.channel == "auto_reply":
        return "automatic mail from a staff address: recorded"
    if not verify_for(app, msg).authenticated and case is None and not parsed.mentions_commands:
        return None
    said = ", ".join(c.raw for c in parsed.commands) or "no commands: an internal note"
    return f"from staff: handled as staff commands ({said}); simulate does not carry them out"


def _feedback_note(session: Session, case: Case, msg: ParsedMessage) -> str | None:
    """``mailbot.feedback`` also reads a reply on a case with a survey waiting for an answer, or
    on a compliment whose sender was asked for consent to quote it (and may confirm it by
    letter).  That is not planned here; say so rather than show less than will happen."""
    try:
        from mailbot.cases.models import Compliment, Survey
    except ImportError:  # pragma: no cover - an installation without the feedback feature
        return None
    if case.id is None or not case.complainant or msg.from_addr.lower() != case.complainant.lower():
        return None
    survey = session.exec(select(Survey).where(col(Survey.case_id) == case.id)).first()
    if survey is not None and survey.answered_at is None:
        return "note: it may also answer our satisfaction survey (mailbot.feedback: not shown here)"
    compliment = session.get(Compliment, case.id)
    if case.kind == "compliment" and compliment is not None and compliment.consent:
        return ("note: it may also answer our request to quote the compliment, and be confirmed by "
                "letter (mailbot.feedback: not shown here)")
    return None


def plan_message(app: "App", session: Session, msg: ParsedMessage, cls: Classification,
                 now: datetime, *, state: CaseState | None | type = ..., new_reference: str | None = None,
                 check_limits: bool = True, render: bool = True) -> Plan:
    """Everything ``pipeline._handle`` would decide for ``msg``, nothing stored.

    ``state``: the case the message belongs to, as it stands (``...``: look it up as the
    pipeline does, in the database as it is now).  ``new_reference``: the number a new case
    would get (default: the next one).  ``check_limits``: also apply the rules' reply limits,
    counted in the database as it is now (meaningless for mail of the past)."""
    from mailbot.pipeline import letter_context, reply_limit_reached
    from mailbot.staffmail.threads import find_case

    plan = Plan(label=cls.label, channel=cls.channel, flags=list(cls.flags), reference=cls.reference,
                confidence=cls.confidence, needs_review=cls.needs_review,
                classification_reasons=list(cls.reasons), action="recorded", received=now)
    if _own_mail(session, app, msg):
        plan.reasons = ["our own mail came back: never answered"]
        plan.action = "own_mail"
        return plan
    if state is ...:
        state = stored_state(session, find_case(session, app.rules, msg, cls.reference))
    existing = state.case if state is not None else None
    staff = _staff_matter(app, msg, cls, existing)
    if staff:
        plan.action, plan.reasons = "staff", [staff]
        plan.case = existing.reference if existing is not None else None
        return plan

    route: Route = decide(msg, cls, existing, app.rules, progress=state.progress if state else None,
                          deadlines=state.deadlines if state else (), now=now)
    plan.handling, plan.event, plan.reasons = route.handling, route.event, list(route.reasons)
    plan.staff_roles = list(route.staff_roles)
    if route.action == "record":
        plan.action = "recorded"
        if route.letter or route.staff_letter:
            _letters(app, session, plan, msg, cls, None, route, None, [], now, state, check_limits,
                     render, letter_context, reply_limit_reached)
        return plan

    if route.action == "new_case":
        case = Case(reference=new_reference or peek_reference(session, app, now),
                    kind=route.kind or cls.label, status=route.status or RECEIVED,
                    complainant=msg.reply_address, complainant_name=msg.from_name,
                    subject=msg.subject[:500], channel=cls.channel, flags=",".join(cls.flags),
                    confidence=cls.confidence, needs_review=cls.needs_review, opened_at=now)
        plan.action, plan.new_case, plan.status_before = "case_opened", True, None
        progress = CaseProgress(case_id=0)
        deadlines: list = []
    else:
        case = state.case
        plan.action, plan.status_before = "added_to_case", case.status
        if cls.flags:
            case.flags = ",".join(dict.fromkeys(case.flag_list + cls.flags))
        progress = state.progress or CaseProgress(case_id=case.id or 0)
        deadlines = list(state.deadlines)
    plan.case, plan.kind = case.reference, case.kind
    if route.action == "add_to_case":
        note = _feedback_note(session, case, msg)
        if note:
            plan.reasons.append(note)

    # pipeline._apply, without the database
    update_progress(progress, route)
    plan.owner_role = progress.owner_role or None
    for name, stage in route.meet:
        row = find_deadline(deadlines, name, stage)
        if row is not None and row.met_at is None:
            row.met_at = now
            plan.met.append(f"{name} stage {stage}" if stage else name)
    calendar = Calendar.for_rules(app.rules)
    for spec in route.deadlines:
        due = calendar.due(now, spec.limit, window=spec.window)
        deadlines.append(Deadline(case_id=case.id or 0, name=spec.name, stage=spec.stage,
                                  rule=str(spec.limit), started_at=now, due_at=due,
                                  met_at=now if spec.met else None))
        plan.deadlines.append(PlannedDeadline(spec.name, spec.stage, str(spec.limit), due, spec.met))
    status = case.status
    for target in route.transitions:
        if target not in machine_for(case.kind).get(status, set()):
            plan.problems.append(f"{case.reference} is {status!r} and cannot go to {target!r}: the "
                                 f"message would be quarantined")
            break
        if target == PAUSED_LEGAL:
            progress.resume_status = status
        status = target
    case.status = plan.status_after = status
    _letters(app, session, plan, msg, cls, case, route, progress, deadlines, now, state, check_limits,
             render, letter_context, reply_limit_reached)
    return plan


def _letters(app, session, plan: Plan, msg, cls, case, route: Route, progress, deadlines, now, state,
             check_limits: bool, render: bool, letter_context, reply_limit_reached) -> None:
    """pipeline._act's letters: the sender's letter (unless a reply limit stops it), and the
    staff letter to the roles' addresses (and the member of staff the case is assigned to)."""
    limited = None
    if route.letter and check_limits:
        limited = reply_limit_reached(session, app, msg.reply_address, now)
    letter_name = route.letter
    context = letter_context(app, case, msg, cls, acknowledged=bool(letter_name) and not limited,
                             route=route, progress=progress, deadlines=deadlines, received=now)
    if letter_name:
        to = case.complainant if route.action == "add_to_case" and case.complainant else msg.reply_address
        plan.letters.append(_render(app, plan, letter_name, context, [to], "sender", render, limited or ""))
    staff = app.rules.addresses(route.staff_roles or [STAFF_ROLE], [a for a in app.config.staff.notify if a])
    assignee = state.assignee if state is not None and route.staff_letter == "staff_case_update" else None
    if assignee and assignee not in staff:
        staff.append(assignee)
    if route.staff_letter and staff:
        plan.letters.append(_render(app, plan, route.staff_letter, context, staff, "staff", render, ""))


def _render(app, plan: Plan, name: str, context: dict, to: list[str], audience: str, render: bool,
            suppressed: str) -> PlannedLetter:
    try:
        letter = app.letters.render(name, context)
    except LetterError as exc:
        plan.problems.append(f"cannot write the {name} letter: {exc}")
        return PlannedLetter(name, to, "(cannot be written)", audience, suppressed=suppressed)
    return PlannedLetter(name, to, letter.subject, audience, letter.text if render else "",
                         letter.html if render else None, suppressed)

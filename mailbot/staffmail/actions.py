"""Carrying out what staff ask for by email, and refusing what they (or someone pretending to
be them) may not have.

``handle`` is called by the pipeline for every inbound message before the usual routing.  It
returns None for mail that is not a staff matter (the pipeline then routes it as always) and a
``StaffResult`` when it dealt with the message itself:

- **verified staff** (``mailbot.staffmail.auth``): the commands are checked first, all of them,
  against the case as it would be after each one (so "#outcome" then "#close" is judged as a
  sequence); if any is unknown, malformed or not allowed by the procedure, *nothing* is done
  and the answer says what was understood, what was not, and what the valid commands are.
  Otherwise they are carried out in order through ``mailbot.cases.workflow`` and one short
  confirmation goes back to the sender, in the thread.  A staff message without commands is an
  internal note (``Event`` action ``note``, like every note, so subject-access exports treat it
  as one); it is never forwarded to the complainant;
- **a staff address that is not verified** (forged, or the mail server's verdict missing):
  nothing is done and nothing about the case is sent; the attempt is an ``Event``, the people
  in ``[staff] warn`` are warned, and the real owner of the address is told that a message in
  their name was refused (to the From address, never to Reply-To, which the sender chooses);
- **anyone else** who writes commands (a complainant's neighbour, a look-alike domain, a
  display name "Jane Staff <jane@evil.example>"): the message is routed like any other mail,
  which never obeys a command and never sends case contents to anyone but the complainant of
  record; the attempt is recorded and staff are warned.

Letters to the complainant (``#reply``, ``#outcome``, ``#extend``, ``#withdraw``) go only to
the case's complainant of record.  Staff messages are not attached to the case as messages
(``Message.case_id`` stays empty): the events that cite them are, so a subject-access export
can leave internal notes out when an exemption applies, as ``mailbot.privacy`` documents.
Nothing here uses savepoints: the audit chain (``mailbot.audit``) hashes events as they are
flushed, so the checks run before anything is written instead of rolling back afterwards.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, func, select

from mailbot.cases.models import Case, CaseAssignee, CaseProgress, Event, Message
from mailbot.cases.workflow import (CLOSED, COMPLAINT_MACHINE, INVESTIGATING, OUTCOME_SENT,
                                    PAUSED_LEGAL, RECEIVED, SAFEGUARDING, STOPPED_LEGAL, TERMINAL,
                                    WITHDRAWN, ACKNOWLEDGED, APPEAL_ACKNOWLEDGED, APPEAL_RECEIVED,
                                    TRIAGE, deadlines_of, extend_deadline, find_deadline,
                                    machine_for, meet_deadline, progress_of, record_outcome,
                                    resume, start_investigation, transition)
from mailbot.classify import Classification
from mailbot.intake.parse import ParsedMessage, ParseError, parse as parse_mail
from mailbot.letters import LetterError, build_email
from mailbot.outbox import queue
from mailbot.policy.calendar import Calendar, describe
from mailbot.policy.context import CommandView, ResultView, build_context
from mailbot.policy.rules import LABELS, STAFF_ROLE, parse_duration
from mailbot.staffmail import commands as cmd
from mailbot.staffmail.auth import Verdict, staff_addresses, verify_for
from mailbot.staffmail.threads import find_case

if TYPE_CHECKING:
    from mailbot.app import App

log = logging.getLogger(__name__)
LONDON = ZoneInfo("Europe/London")
_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


class Refused(Exception):
    """A command that cannot be carried out; the message is sent back to the member of staff."""


@dataclass
class StaffResult:
    action: str  # staff_command | staff_note | staff_refused | unverified_refused | recorded
    reference: str | None = None
    detail: str = ""


@dataclass
class _State:
    """The case as it will be after the commands checked so far (for checking a sequence)."""

    status: str
    kind: str
    stage: int
    new_case: bool = False  # after #log: the commands apply to the case it registers


@dataclass
class _Job:
    """One message from verified staff being worked through."""

    app: "App"
    session: Session
    msg: ParsedMessage
    row: Message
    verdict: Verdict
    parsed: cmd.Parsed
    case: Case | None
    now: datetime
    results: list[ResultView] = field(default_factory=list)
    view: CommandView = field(default_factory=CommandView)
    plans: dict[int, dict] = field(default_factory=dict)  # index -> what the check worked out

    @property
    def actor(self) -> str:
        return self.verdict.address


# ---------------------------------------------------------------------------------------------
# Entry point


def handle(app: "App", session: Session, msg: ParsedMessage, cls: Classification,
           row: Message, now: datetime) -> StaffResult | None:
    """Deal with ``msg`` if it is a staff matter (see the module docstring); None otherwise.

    Most mail is neither from staff nor shaped like a command: that is found out with a set
    lookup and one regular expression, before any parsing or database query."""
    notify = [a for a in app.config.staff.notify if a]
    if msg.from_addr.lower() not in staff_addresses(app.rules, notify):
        if cmd.looks_like_commands(msg.subject, msg.text):
            case = find_case(session, app.rules, msg, cls.reference)
            parsed = cmd.parse(msg.subject, msg.text, app.rules.reference.pattern())
            if parsed.commands and not _is_complainant(case, msg):
                verdict = Verdict(address=msg.from_addr.lower(), staff=False)
                _warn_non_staff(app, session, msg, row, case, parsed, verdict, now)
        return None
    case = find_case(session, app.rules, msg, cls.reference)
    parsed = cmd.parse(msg.subject, msg.text, app.rules.reference.pattern())
    verdict = verify_for(app, msg)
    if case is not None and _is_complainant(case, msg) and not parsed.mentions_commands:
        return None  # a member of staff who is also this case's complainant, writing as such
    if msg.machine_generated or cls.channel == "auto_reply":
        row.outcome, row.reason = "recorded", f"automatic mail from staff ({msg.machine_generated or cls.channel})"
        session.add(Event(case_id=case.id if case else None, message_id=row.id, actor="system",
                          action="staff_auto_reply_ignored", detail=json.dumps({"from": verdict.address})))
        return StaffResult("recorded", case.reference if case else None, row.reason)
    if not verdict.authenticated:
        if case is None and not parsed.mentions_commands:
            return None  # ordinary mail from a staff address, e.g. their own complaint: routed as usual
        return _refuse_unverified(app, session, msg, row, case, parsed, verdict, now)
    job = _Job(app, session, msg, row, verdict, parsed, case, now)
    return _obey(job)


def _is_complainant(case: Case | None, msg: ParsedMessage) -> bool:
    return case is not None and bool(case.complainant) and msg.from_addr.lower() == case.complainant.lower()


def assignee_address(session: Session, case: Case | None) -> str | None:
    """The member of staff a case was assigned to by ``#assign``, if any: they get its updates."""
    if case is None or case.id is None:
        return None
    row = session.get(CaseAssignee, case.id)
    return row.address if row else None


# ---------------------------------------------------------------------------------------------
# Refusals and warnings


def _attempted(msg: ParsedMessage, parsed: cmd.Parsed) -> str:
    said = [c.raw for c in parsed.commands] + parsed.unknown
    return f"{msg.subject}" + (f"  (commands: {', '.join(said)})" if said else "")


def _warn_roles(app: "App") -> list[str]:
    roles = app.rules.staff.warn or [STAFF_ROLE, app.rules.safeguarding.lead]
    return app.rules.addresses(roles, [a for a in app.config.staff.notify if a])


def _send_warning(app: "App", session: Session, msg: ParsedMessage, case: Case | None,
                  parsed: cmd.Parsed, problem: str, now: datetime) -> None:
    to = _warn_roles(app)
    if not to:
        log.warning("refused staff command from %s, but nobody to warn: %s", msg.from_addr, problem)
        return
    view = CommandView(author=msg.from_name, author_address=msg.from_addr, problem=problem,
                       attempted=_attempted(msg, parsed), done=False)
    if _flooding(session, "staff_security_warning", None, now, case, None):
        return
    context = _context(app, session, case, view, now=now, body=msg.text[:4000])
    _queue(app, session, "staff_security_warning", context, to, case)


def _refuse_unverified(app: "App", session: Session, msg: ParsedMessage, row: Message,
                       case: Case | None, parsed: cmd.Parsed, verdict: Verdict,
                       now: datetime) -> StaffResult:
    """A staff address we cannot verify: do nothing, tell nobody anything about the case."""
    problem = f"the message could not be verified as coming from {verdict.address}: {verdict.problem}"
    row.outcome, row.reason = "refused", problem[:2000]
    session.add(Event(case_id=case.id if case else None, message_id=row.id, actor="system",
                      action="staff_command_refused",
                      detail=json.dumps({"from": verdict.address, "why": "not verified",
                                         "problem": verdict.problem, "seen": verdict.seen,
                                         "attempted": _attempted(msg, parsed)})))
    _send_warning(app, session, msg, case, parsed, problem, now)
    # the real owner of the address: no case contents, just that a message in their name was refused
    view = CommandView(author=msg.from_name, author_address=verdict.address, problem=verdict.problem,
                       attempted=_attempted(msg, parsed), done=False, help=cmd.help_lines())
    if not _flooding(session, "staff_not_verified", verdict.address, now, case, row):
        context = _context(app, session, None, view, now=now)
        _queue(app, session, "staff_not_verified", context, [verdict.address], None,
               in_reply_to=msg.message_id, references=msg.references)
    log.warning("refused unverified staff message from %s: %s", verdict.address, verdict.problem)
    return StaffResult("unverified_refused", case.reference if case else None, problem)


def _warn_non_staff(app: "App", session: Session, msg: ParsedMessage, row: Message,
                    case: Case | None, parsed: cmd.Parsed, verdict: Verdict, now: datetime) -> None:
    """Commands from someone who is not staff: never obeyed (the message goes on to the usual
    routing, which answers only a complainant of record); recorded and staff warned."""
    problem = (f"{verdict.address} is not on the staff list, so the commands in this message were "
               f"ignored (display name {msg.from_name!r})")
    session.add(Event(case_id=case.id if case else None, message_id=row.id, actor="system",
                      action="staff_command_refused",
                      detail=json.dumps({"from": verdict.address, "display_name": msg.from_name,
                                         "why": "not staff", "attempted": _attempted(msg, parsed)})))
    _send_warning(app, session, msg, case, parsed, problem, now)


# ---------------------------------------------------------------------------------------------
# Obeying verified staff


def _obey(job: _Job) -> StaffResult:
    parsed, case, msg = job.parsed, job.case, job.msg
    job.view = CommandView(author=_author(job), author_address=job.actor)
    if any(c.where == "subject" for c in parsed.commands):
        cmd.drop_inherited(parsed, _subjects_answered(job), job.app.rules.reference.pattern())
    for command in parsed.inherited:
        job.results.append(ResultView(
            f"{command.raw} (in the subject)", False,
            f"came with the subject of the message you replied to, so it was not carried out again; "
            f"to do it, write #{command.name} afresh on the first line of your text", command.name))
    if not parsed.mentions_commands:
        return _note_without_commands(job)
    checked, failed = _check_all(job)
    if failed or not parsed.ok:
        for result in checked:
            if result.ok:
                result.message = "understood, but not done because of the problems listed"
        problems = checked
        job.view.done = False
        job.view.not_understood = parsed.unknown + parsed.problems
        job.view.help = cmd.help_lines()
        job.results = problems
        job.view.results = problems
        job.row.outcome = "refused"
        job.row.reason = "; ".join([r.message for r in problems if not r.ok] + job.view.not_understood)[:2000]
        job.session.add(Event(case_id=case.id if case else None, message_id=job.row.id, actor=job.actor,
                              action="staff_command_rejected",
                              detail=json.dumps({"commands": [c.raw for c in parsed.commands],
                                                 "not_understood": job.view.not_understood,
                                                 "refused": [str(r) for r in problems if not r.ok]})))
        _answer(job)
        return StaffResult("staff_refused", case.reference if case else None, job.row.reason)
    for index, command in enumerate(parsed.commands):
        message = RUNNERS[command.name](job, command, job.plans.get(index, {}))
        if command.name in ("reply", "outcome") and msg.attachments:
            message += (f"; your {len(msg.attachments)} attachment(s) were NOT sent (letters carry "
                        f"text only): send them to the complainant yourself if they should have them")
        job.results.append(ResultView(command.raw, True, message, command.name))
    job.view.results = job.results
    if any(c.name == "help" for c in parsed.commands):
        job.view.help = cmd.help_lines()
    job.row.outcome = "staff_command"
    job.row.reason = "; ".join(f"#{c.name}" for c in parsed.commands)
    _answer(job)
    reference = job.case.reference if job.case else None
    return StaffResult("staff_command", reference, job.row.reason)


def _subjects_answered(job: _Job) -> list[str]:
    """The subjects of the mail this message answers: the messages its In-Reply-To/References
    name, or else (a client that drops those headers) earlier mail with the same subject."""
    msg = job.msg
    if msg.thread_ids:
        rows = job.session.exec(select(Message.subject).where(
            col(Message.message_id).in_(msg.thread_ids[-50:]))).all()
        if rows:
            return list(rows)
    if not cmd.is_reply_subject(msg.subject) or job.case is None:
        return []
    rows = job.session.exec(select(Message.subject).where(
        col(Message.direction) == "in", col(Message.id) != job.row.id,
        col(Message.subject).contains(job.case.reference)).order_by(col(Message.id).desc()).limit(200)).all()
    return [subject for subject in rows if cmd.same_subject(subject, msg.subject)]


def _note_without_commands(job: _Job) -> StaffResult:
    """No commands: on a case, an internal note; without a case, nothing to do (say so)."""
    if job.case is None:
        job.view.done = False
        job.view.not_understood = ["no case tag in the subject and no command: nothing was done"]
        job.view.help = cmd.help_lines()
        job.row.outcome, job.row.reason = "refused", "staff message without a case or a command"
        _answer(job)
        return StaffResult("staff_refused", None, job.row.reason)
    if not job.parsed.content:
        # nothing written: e.g. our own answer forwarded back by a mailbox rule. Recorded, not
        # answered, so that such a rule cannot start a loop of answers.
        job.row.outcome, job.row.reason = "recorded", "staff message without text or commands"
        job.session.add(Event(case_id=job.case.id, message_id=job.row.id, actor=job.actor,
                              action="staff_message_recorded", detail=json.dumps({"subject": job.msg.subject})))
        return StaffResult("recorded", job.case.reference, job.row.reason)
    text = job.parsed.content
    _record_note(job, text)
    job.results.append(ResultView("(no command)", True, "kept as an internal note on the case; "
                                  "nothing was sent to the complainant", "note"))
    job.view.results = job.results
    job.row.outcome, job.row.reason = "staff_note", "internal note"
    _answer(job)
    return StaffResult("staff_note", job.case.reference, "internal note")


def _author(job: _Job) -> str:
    """How letters sign for this member of staff: "Jane Smith, Line Manager" when their address
    is a role's, else their display name (or address)."""
    name = job.msg.from_name.strip()
    titles = [job.app.rules.role_title(key) for key, role in job.app.rules.roles.items()
              if job.actor in [a.lower() for a in role.addresses]]
    if titles and (not name or name.lower() == titles[0].lower()):
        return titles[0]
    who = name or job.actor
    return f"{who}, {titles[0]}" if titles else who


_CLOSINGS = re.compile(r"^(kind(est)? regards|best regards|warm regards|regards|best wishes|best|many thanks|"
                       r"thanks|thank you|cheers|yours sincerely|yours faithfully|sincerely|all the best)[,.!]*$",
                       re.I)


def _without_signoff(text: str, name: str) -> str:
    """The staff member's own closing lines ("Kind regards,\nJane") come off the end of text that
    goes into a letter: the letter signs off itself, once."""
    words = {w.lower() for w in re.findall(r"[^\W\d_]+", name) if len(w) > 1}
    lines = text.rstrip().split("\n")
    dropped = 0
    while lines and dropped < 4:
        last = lines[-1].strip()
        tokens = {w.lower() for w in re.findall(r"[^\W\d_]+", last)}
        if not last or _CLOSINGS.match(last) or (tokens and tokens <= words and len(last) <= 60):
            lines.pop()
            dropped += 1 if last else 0
            continue
        break
    return "\n".join(lines).rstrip() or text.strip()


def _check_all(job: _Job) -> tuple[list[ResultView], bool]:
    """Check every command against the case as the ones before it will leave it: (a result for
    each command, whether any of them cannot be done)."""
    case = job.case
    state = (_State(case.status, case.kind, progress_of(job.session, case).stage)
             if case is not None else None)
    results, failed = [], False
    for index, command in enumerate(job.parsed.commands):
        try:
            if command.spec.needs_case and state is None:
                raise Refused("there is no case to apply it to: keep the case tag (e.g. "
                              f"[{job.app.rules.reference.make(2026, 42)}]) in the subject")
            if state is not None and state.new_case and command.name not in (
                    "assign", "note", "escalate", "safeguarding", "help"):
                raise Refused("after #log only #assign, #note, #escalate and #safeguarding can be given "
                              "in the same message")
            job.plans[index] = CHECKS[command.name](job, command, state) or {}
            if command.name == "log":
                state = _State(RECEIVED, "complaint", 0, new_case=True)
            results.append(ResultView(command.raw, True, "would be done", command.name))
        except Refused as exc:
            failed = True
            results.append(ResultView(command.raw, False, str(exc), command.name))
    return results, failed


def _move(state: _State, reference: str, target: str) -> None:
    allowed = machine_for(state.kind).get(state.status, set())
    if target not in allowed:
        options = ", ".join(sorted(allowed)) or "nothing (it is finished)"
        raise Refused(f"{reference} is {state.status!r}: it cannot go to {target!r}. From "
                      f"{state.status!r} it can go to: {options}")
    state.status = target


def _text_of(command: cmd.Command, content: str) -> str:
    """A command's words: its own argument and the content under the commands.  In the subject
    only a #note's argument counts (after #reply or #outcome the rest of a subject is usually
    the old subject, never meant for the complainant)."""
    own = command.argument if command.where == "body" or command.name == "note" else ""
    return "\n\n".join(p for p in (own.strip(), content.strip()) if p)


def _letter_text(job: _Job, command: cmd.Command) -> str:
    return _without_signoff(_text_of(command, job.parsed.content), job.msg.from_name)


def _complainant_address(case: Case) -> str:
    address = (case.complainant or "").strip()
    if not _EMAIL.match(address):
        raise Refused(f"{case.reference} has no email address for the complainant, so nothing can "
                      f"be sent to them; write to them another way and record it with #note")
    return address


# ---------------------------------------------------------------------------------------------
# Checks (no writes) and runners, one pair per command


def _check_reply(job: _Job, command: cmd.Command, state: _State) -> dict:
    text = _letter_text(job, command)
    if not text:
        raise Refused("there is no text to send: write the reply under the #reply line")
    _complainant_address(job.case)
    _check_no_internal_text(job, text)
    return {"text": text}


def _run_reply(job: _Job, command: cmd.Command, plan: dict) -> str:
    case = job.case
    progress = progress_of(job.session, case)
    # a personal reply in writing acknowledges the complaint (or the appeal) if nothing had yet
    name = "acknowledge" if progress.stage == 0 else "appeal_acknowledge"
    pending = find_deadline(deadlines_of(job.session, case), name, progress.stage)
    acknowledged = pending is not None and pending.met_at is None
    if acknowledged:
        meet_deadline(job.session, case, name, progress.stage, job.now)
    if progress.stage == 0 and case.status in (RECEIVED, TRIAGE):
        transition(job.session, case, ACKNOWLEDGED, job.actor, "replied to by staff", message_id=job.row.id)
        acknowledged = True
    elif progress.stage > 0 and case.status == APPEAL_RECEIVED:
        transition(job.session, case, APPEAL_ACKNOWLEDGED, job.actor, "replied to by staff",
                   message_id=job.row.id)
        acknowledged = True
    view = CommandView(text=plan["text"], author=job.view.author, author_address=job.actor)
    to = _letter_to_complainant(job, job.app.rules.staff.reply_letter, view)
    return f"sent to {to}" + (" (this also counts as the acknowledgement)" if acknowledged else "")


def _check_outcome(job: _Job, command: cmd.Command, state: _State) -> dict:
    text = _letter_text(job, command)
    if not text:
        raise Refused("there is no outcome to send: write the outcome letter's text under the #outcome line")
    if machine_for(state.kind) is not COMPLAINT_MACHINE:
        raise Refused(f"{job.case.reference} is a {state.kind}: an outcome is only sent for complaints")
    _complainant_address(job.case)
    _check_no_internal_text(job, text)
    _move(state, job.case.reference, OUTCOME_SENT)
    if state.stage + 1 > len(job.app.rules.complaint.appeals):
        state.status = CLOSED
    return {"text": text}


def _run_outcome(job: _Job, command: cmd.Command, plan: dict) -> str:
    case = job.case
    window = record_outcome(job.session, job.app.rules, case, job.actor,
                            "outcome letter sent by email", sent_at=job.now)
    final = case.status == CLOSED
    view = CommandView(text=plan["text"], author=job.view.author, author_address=job.actor,
                       window_closes=describe(window.due_at) if window is not None else "", final=final)
    to = _letter_to_complainant(job, job.app.rules.staff.outcome_letter, view)
    if final:
        return f"outcome letter sent to {to}; this was the last stage, so the case is now closed"
    stage = job.app.rules.complaint.appeals[progress_of(job.session, case).stage]
    until = f" until {view.window_closes}" if view.window_closes else ""
    return f"outcome letter sent to {to}; they can ask for a {stage.name}{until}"


_EXTEND_BY = re.compile(r"^(?:by\s+)?(\d{1,3})\s*(working[ _-]?days?|days?|weeks?|hours?)\b\s*[:;,.\-–—]?\s*(.*)$",
                        re.I | re.S)
_EXTEND_TO = re.compile(r"^(?:to|until)\s+(\d{4}-\d{2}-\d{2}|\d{1,2}\s+[A-Za-z]+\s+\d{4})\b\s*[:;,.\-–—]?\s*(.*)$",
                        re.I | re.S)


def _check_extend(job: _Job, command: cmd.Command, state: _State) -> dict:
    case = job.case
    argument = command.argument.strip()
    by = _EXTEND_BY.match(argument)
    to = _EXTEND_TO.match(argument)
    if not by and not to:
        raise Refused("say how long or until when, e.g. #extend 10 working days: waiting for a "
                      "witness statement, or #extend to 2026-10-30: reason")
    reason = (by.group(3) if by else to.group(2)).strip() or _without_signoff(job.parsed.content,
                                                                               job.msg.from_name)
    if not reason:
        raise Refused("give the reason after a colon (#extend 10 working days: reason), or under the "
                      "command: the complainant is told why")
    if state.status in TERMINAL:
        raise Refused(f"{case.reference} is {state.status!r}: there is no date to extend")
    name = "respond" if state.stage == 0 else "appeal_respond"
    row = find_deadline(deadlines_of(job.session, case), name, state.stage)
    if row is None or row.due_at is None:
        raise Refused(f"{case.reference} has no response date at this stage to extend")
    if row.met_at is not None:
        raise Refused(f"the response for this stage was already sent ({describe(row.met_at)}): nothing to extend")
    calendar = Calendar.for_rules(job.app.rules)
    if by:
        amount, unit = int(by.group(1)), by.group(2).lower()
        if unit.startswith("week"):
            limit = parse_duration(f"{amount * 7} days")
        else:
            try:
                limit = parse_duration(f"{amount} {unit}")
            except ValueError as exc:
                raise Refused(str(exc)) from None
        new_due = _later(calendar, row.due_at, limit.amount, limit.unit)
    else:
        day = _date(to.group(1))
        if day is None:
            raise Refused(f"{to.group(1)!r} is not a date I can read: write it as 2026-10-30")
        new_due = datetime.combine(day, calendar.closes, tzinfo=LONDON)
    if new_due <= row.due_at:
        raise Refused(f"the new date ({describe(new_due)}) is not later than the one promised "
                      f"({describe(row.due_at)})")
    return {"name": name, "stage": state.stage, "new_due": new_due, "reason": reason,
            "previous": row.due_at}


def _later(calendar: Calendar, due: datetime, amount: int, unit: str) -> datetime:
    """``due`` moved on by the limit, counted from the date already promised (so "10 working
    days" more means ten more office days, ending at the same closing time)."""
    if unit == "hours":
        return due + timedelta(hours=amount)
    local = due.astimezone(LONDON)
    if unit == "days":
        return (local + timedelta(days=amount)).astimezone(due.tzinfo)
    day = local.date()
    for _ in range(amount):
        day = calendar.next_working_day(day)
    return datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=LONDON).astimezone(due.tzinfo)


def _date(text: str) -> date | None:
    for fmt in ("%Y-%m-%d", "%d %B %Y", "%d %b %Y"):
        try:
            return datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    return None


def _run_extend(job: _Job, command: cmd.Command, plan: dict) -> str:
    case = job.case
    extend_deadline(job.session, case, plan["name"], plan["new_due"], job.actor, plan["reason"],
                    stage=plan["stage"])
    view = CommandView(text=plan["reason"], author=job.view.author, author_address=job.actor,
                       previous_date=describe(plan["previous"]), new_date=describe(plan["new_due"]))
    if not _EMAIL.match(case.complainant or ""):
        return (f"response date moved to {view.new_date}; the complainant has no email address and "
                f"must be told another way")
    to = _letter_to_complainant(job, job.app.rules.staff.extension_letter, view)
    return f"response date moved from {view.previous_date} to {view.new_date}; {to} was told why"


def _check_assign(job: _Job, command: cmd.Command, state: _State) -> dict:
    words = command.argument.split()
    if not words:
        raise Refused("say who: #assign someone@example.org (a member of staff) or a role, e.g. #assign ceo")
    target = words[0].strip("<>,;").lower()
    rules = job.app.rules
    staff = staff_addresses(rules, [a for a in job.app.config.staff.notify if a])
    if "@" in target:
        if target not in staff:
            raise Refused(f"{target} is not on the staff list (roles.toml, [staff] members in "
                          f"staff.toml, [staff] notify in config.toml): a case is only given to staff")
        return {"address": target, "who": target}
    if target in rules.roles:
        addresses = rules.addresses([target], [a for a in job.app.config.staff.notify if a])
        if not addresses:
            raise Refused(f"the role {target!r} has no address in roles.toml")
        return {"address": addresses[0], "who": f"{rules.role_title(target)} ({addresses[0]})"}
    raise Refused(f"{target!r} is neither an address nor a role; roles are: {', '.join(sorted(rules.roles)) or '(none)'}")


def _run_assign(job: _Job, command: cmd.Command, plan: dict) -> str:
    case = job.case
    row = job.session.get(CaseAssignee, case.id)
    before = row.address if row else None
    if row is None:
        row = CaseAssignee(case_id=case.id, address=plan["address"])
    row.address, row.assigned_by, row.assigned_at = plan["address"], job.actor, job.now
    job.session.add(row)
    job.session.add(Event(case_id=case.id, message_id=job.row.id, actor=job.actor, action="assigned",
                          detail=json.dumps({"to": plan["address"], "before": before})))
    if plan["address"] == job.actor:
        return "assigned to you"
    view = CommandView(text=job.parsed.content, author=job.view.author, author_address=job.actor)
    context = _context(job.app, job.session, case, view, now=job.now, body=_first_text(job.session, case))
    _queue(job.app, job.session, "staff_assigned", context, [plan["address"]], case)
    return f"assigned to {plan['who']}, who has been told"


def _check_note(job: _Job, command: cmd.Command, state: _State) -> dict:
    text = _text_of(command, job.parsed.content)
    if not text:
        raise Refused("the note is empty: write it after #note or under it")
    return {"text": text}


def _record_note(job: _Job, text: str) -> None:
    job.session.add(Event(case_id=job.case.id, message_id=job.row.id, actor=job.actor, action="note",
                          detail=json.dumps({"text": text[:20000]})))


def _run_note(job: _Job, command: cmd.Command, plan: dict) -> str:
    _record_note(job, plan["text"])
    return "internal note recorded (not sent to the complainant)"


def _check_escalate(job: _Job, command: cmd.Command, state: _State) -> dict:
    rules = job.app.rules
    words = command.argument.split()
    progress = job.session.get(CaseProgress, job.case.id) if job.case is not None and job.case.id else None
    subs = json.loads(progress.substitutions) if progress and progress.substitutions else {}
    if words and command.where == "body" or (words and words[0].lower() in rules.roles):
        role = words[0].lower()
        if role not in rules.roles and role != STAFF_ROLE:
            raise Refused(f"{role!r} is not a role in roles.toml; roles are: {', '.join(sorted(rules.roles))}")
        roles = [role]
    else:
        stage = state.stage if state else 0
        following = rules.complaint.appeals[stage] if stage < len(rules.complaint.appeals) else None
        roles = [following.reviewer] if following else (rules.complaint.inform or [STAFF_ROLE])
    roles = [subs.get(r, r) for r in roles]  # conflict of interest: never to the person complained about
    if any(r in subs for r in roles):
        raise Refused("that role is named in the complaint (conflict of interest): choose another")
    to = rules.addresses(roles, [a for a in job.app.config.staff.notify if a])
    if not to:
        raise Refused("nobody to escalate to: give the role an address in roles.toml")
    return {"roles": roles, "to": to}


def _run_escalate(job: _Job, command: cmd.Command, plan: dict) -> str:
    case = job.case
    text = job.parsed.content
    job.session.add(Event(case_id=case.id, message_id=job.row.id, actor=job.actor, action="escalated",
                          detail=json.dumps({"roles": plan["roles"], "to": plan["to"], "text": text[:4000]})))
    view = CommandView(text=text, author=job.view.author, author_address=job.actor)
    context = _context(job.app, job.session, case, view, now=job.now, body=_first_text(job.session, case),
                       staff_roles=plan["roles"])
    _queue(job.app, job.session, "staff_escalated", context, plan["to"], case)
    titles = ", ".join(job.app.rules.role_title(r) for r in plan["roles"])
    return f"passed to {titles} ({', '.join(plan['to'])})"


def _check_safeguarding(job: _Job, command: cmd.Command, state: _State) -> dict:
    _move(state, job.case.reference if job.case else "the new case", SAFEGUARDING)
    sg = job.app.rules.safeguarding
    return {"roles": [sg.lead, *sg.inform]}


def _run_safeguarding(job: _Job, command: cmd.Command, plan: dict) -> str:
    case = job.case
    sg = job.app.rules.safeguarding
    transition(job.session, case, SAFEGUARDING, job.actor, "referred by staff", message_id=job.row.id)
    case.flags = ",".join(dict.fromkeys(case.flag_list + ["safeguarding"]))
    progress = progress_of(job.session, case)
    progress.owner_role = sg.lead
    job.session.add_all([case, progress])
    to = job.app.rules.addresses(plan["roles"], [a for a in job.app.config.staff.notify if a])
    body = "\n\n".join(p for p in (f"Referred by {job.view.author}:\n{job.parsed.content}" if job.parsed.content else "",
                                   _first_text(job.session, case)) if p)
    view = CommandView(text=job.parsed.content, author=job.view.author, author_address=job.actor)
    context = _context(job.app, job.session, case, view, now=job.now, body=body, handling="safeguarding",
                       staff_roles=plan["roles"])
    if to:
        _queue(job.app, job.session, "staff_safeguarding", context, to, case)
    return f"now handled under the safeguarding policy; {', '.join(to) or 'nobody'} told"


def _withdrawal_kept_open(job: _Job, case: Case) -> list[str]:
    w = job.app.rules.withdrawal
    keep = sorted(set(case.flag_list) & set(w.keep_open_flags))
    if case.status == SAFEGUARDING and "safeguarding" not in keep:
        keep.append("safeguarding")
    if not w.allowed and not keep:
        keep.append("the policy does not allow withdrawal")
    return keep


def _check_withdraw(job: _Job, command: cmd.Command, state: _State) -> dict:
    case = job.case
    if machine_for(state.kind) is not COMPLAINT_MACHINE:
        raise Refused(f"{case.reference} is a {state.kind}: only a complaint can be withdrawn")
    if state.status in TERMINAL:
        raise Refused(f"{case.reference} is already {state.status!r}")
    keep = _withdrawal_kept_open(job, case)
    if not keep:
        _move(state, case.reference, WITHDRAWN)
    return {"keep": keep}


def _run_withdraw(job: _Job, command: cmd.Command, plan: dict) -> str:
    case = job.case
    w = job.app.rules.withdrawal
    keep = plan["keep"]
    job.session.add(Event(case_id=case.id, message_id=job.row.id, actor=job.actor, action="withdrawal_recorded",
                          detail=json.dumps({"told_by": "staff", "kept_open": keep,
                                             "note": job.parsed.content[:4000]})))
    if not keep:
        transition(job.session, case, WITHDRAWN, job.actor, "withdrawn (told to staff)", message_id=job.row.id)
    letter = w.kept_open_letter if keep else w.letter
    done = "kept open (" + ", ".join(keep) + ")" if keep else "withdrawn and closed"
    if letter and _EMAIL.match(case.complainant or ""):
        to = _letter_to_complainant(job, letter, CommandView(author=job.view.author, author_address=job.actor),
                                    handling="withdrawal_kept_open" if keep else "withdrawn")
        return f"{done}; {to} was sent the policy's letter confirming it"
    return done


def _simple_check(target: str):
    def check(job: _Job, command: cmd.Command, state: _State) -> dict:
        _move(state, job.case.reference, target)
        return {}
    return check


def _run_investigate(job: _Job, command: cmd.Command, plan: dict) -> str:
    start_investigation(job.session, job.case, job.actor, job.parsed.content[:500])
    return "marked as under investigation"


def _check_resume(job: _Job, command: cmd.Command, state: _State) -> dict:
    if state.status not in (PAUSED_LEGAL, STOPPED_LEGAL):
        raise Refused(f"{job.case.reference} is {state.status!r}, not paused or stopped for legal action")
    state.status = INVESTIGATING
    return {}


def _run_resume(job: _Job, command: cmd.Command, plan: dict) -> str:
    resume(job.session, job.case, job.actor)
    return f"resumed: now {job.case.status!r}"


def _run_close(job: _Job, command: cmd.Command, plan: dict) -> str:
    transition(job.session, job.case, CLOSED, job.actor, job.parsed.content[:500] or "closed by staff",
               message_id=job.row.id)
    return "closed (nothing was sent to the complainant)"


def _check_reopen(job: _Job, command: cmd.Command, state: _State) -> dict:
    if state.status not in TERMINAL:
        raise Refused(f"{job.case.reference} is {state.status!r}, not closed or withdrawn")
    allowed = machine_for(state.kind).get(state.status, set())
    target = INVESTIGATING if INVESTIGATING in allowed else RECEIVED
    _move(state, job.case.reference, target)
    return {"target": target}


def _run_reopen(job: _Job, command: cmd.Command, plan: dict) -> str:
    transition(job.session, job.case, plan["target"], job.actor, job.parsed.content[:500] or "reopened by staff",
               message_id=job.row.id)
    return f"reopened: now {plan['target']!r}"


def _check_reclassify(job: _Job, command: cmd.Command, state: _State) -> dict:
    words = command.argument.split()
    label = words[0].lower() if words else ""
    if label not in LABELS:
        raise Refused(f"say what it is: #reclassify followed by one of {', '.join(LABELS)}")
    return {"label": label}


def _run_reclassify(job: _Job, command: cmd.Command, plan: dict) -> str:
    case, label = job.case, plan["label"]
    inbound = job.session.exec(select(Message).where(col(Message.case_id) == case.id,
                                                     col(Message.direction) == "in")
                               .order_by(col(Message.id))).all()
    job.session.add(Event(case_id=case.id, message_id=job.row.id, actor=job.actor, action="reclassified",
                          detail=json.dumps({"from": case.kind, "to": label,
                                             "messages": [{"id": m.id, "label": m.label} for m in inbound],
                                             "for": "retraining"})))
    changed = ""
    if label in ("complaint", "compliment", "appeal") and label != case.kind \
            and case.status in machine_for(label):
        case.kind = label
        changed = f"; the case is now a {label}"
    case.needs_review = False
    job.session.add(case)
    return f"correction recorded for retraining{changed}"


# #log: a complaint or compliment by phone, in person or by letter

_LOG_CHANNELS = {"phone": "phone", "telephone": "phone", "call": "phone", "in_person": "in_person",
                 "person": "in_person", "visit": "in_person", "face": "in_person", "letter": "letter",
                 "post": "letter"}
_LOG_KINDS = {"complaint": "complaint", "compliment": "compliment"}
_LOG_FIELD = re.compile(r"^\s*(name|full name|email|e-mail|email address|e-mail address|address|"
                        r"phone|telephone|tel|mobile)\s*:\s*(.*)$", re.I)


def _check_log(job: _Job, command: cmd.Command, state: _State | None) -> dict:
    channel, kind, unknown = "phone", "complaint", []
    for word in re.findall(r"[A-Za-z_]+", command.argument.lower()):
        if word in _LOG_CHANNELS:
            channel = _LOG_CHANNELS[word]
        elif word in _LOG_KINDS:
            kind = _LOG_KINDS[word]
        elif word not in ("in", "to", "face", "a", "by", "received", "via"):
            unknown.append(word)
    if unknown:
        raise Refused(f"not understood: {', '.join(unknown)}; write e.g. #log phone complaint or "
                      f"#log in person compliment (or letter)")
    name = email = phone = postal = ""
    said: list[str] = []
    body = job.parsed.content or job.parsed.quoted  # a forwarded account is fine too
    for line in body.split("\n"):
        match = _LOG_FIELD.match(line)
        if match and not said:
            key, value = match.group(1).lower(), match.group(2).strip()
            if key in ("name", "full name"):
                name = value
            elif "mail" in key or (key == "address" and "@" in value):
                email = value.strip("<>").lower()
            elif key == "address":
                postal = value
            else:
                phone = value
        else:
            said.append(line)
    text = "\n".join(said).strip()
    if not text:
        raise Refused("say what they told you under the command (and Name:, Email: lines first)")
    if email and not _EMAIL.match(email):
        raise Refused(f"{email!r} is not an email address")
    return {"channel": channel, "kind": kind, "name": name, "email": email, "phone": phone,
            "postal": postal, "text": text}


def _run_log(job: _Job, command: cmd.Command, plan: dict) -> str:
    from mailbot import pipeline
    from mailbot.cases.workflow import decide

    words = {"phone": "by telephone", "in_person": "in person", "letter": "by letter"}[plan["channel"]]
    first = plan["text"].split("\n", 1)[0][:80]
    synthetic = ParsedMessage(
        message_id=None, in_reply_to=[], references=[],
        subject=f"{plan['kind'].capitalize()} received {words}: {first}", from_name=plan["name"],
        from_addr=plan["email"], reply_to=None, to=[], cc=[], date=job.now, text=plan["text"], html=None,
        attachments=[], headers={}, machine_generated=None, size=len(plan["text"]), sha256="")
    # staff heard the person and chose what it is: no model second-guesses them (they add
    # #safeguarding themselves); only "anonymous" follows from what they wrote down
    anonymous = not (plan["name"] or plan["email"] or plan["phone"] or plan["postal"])
    cls = Classification(label=plan["kind"], channel=plan["channel"], flags=["anonymous"] if anonymous else [],
                         reference=None, confidence=1.0, needs_review=False,
                         reasons=[f"registered by {job.actor} ({words})"])
    route = decide(synthetic, cls, None, job.app.rules, now=job.now)
    case = pipeline._open_case(job.session, job.app, synthetic, cls, route)
    job.session.add(Event(case_id=case.id, message_id=job.row.id, actor=job.actor, action="logged_by_staff",
                          detail=json.dumps({"channel": plan["channel"], "name": plan["name"],
                                             "email": plan["email"], "phone": plan["phone"],
                                             "postal_address": plan["postal"], "said": plan["text"][:20000]})))
    job.session.add(Event(case_id=case.id, message_id=job.row.id, actor="system", action="classified",
                          detail=cls.to_json()))
    pipeline._act(job.app, job.session, synthetic, cls, case, route, job.row, job.now)
    job.row.case_id = case.id  # the staff member's account is this case's first record
    job.case = case
    job.view.new_reference = case.reference
    told = (f"; the acknowledgement went to {plan['email']}" if route.letter and plan["email"]
            else "; no letter was sent (" + ("no email address given" if not plan["email"] else
                                             "; ".join(route.reasons) or "the policy sends none") + ")")
    return f"registered as {case.reference} ({case.kind}, {words}, status {case.status!r}){told}"


def _check_help(job: _Job, command: cmd.Command, state: _State | None) -> dict:
    return {}


def _run_help(job: _Job, command: cmd.Command, plan: dict) -> str:
    return "the commands are listed below"


CHECKS = {
    "reply": _check_reply, "outcome": _check_outcome, "extend": _check_extend,
    "assign": _check_assign,
    "note": _check_note, "escalate": _check_escalate, "safeguarding": _check_safeguarding,
    "withdraw": _check_withdraw, "investigate": _simple_check(INVESTIGATING), "resume": _check_resume,
    "close": _simple_check(CLOSED), "reopen": _check_reopen, "log": _check_log,
    "reclassify": _check_reclassify, "help": _check_help,
}
RUNNERS = {
    "reply": _run_reply, "outcome": _run_outcome, "extend": _run_extend, "assign": _run_assign,
    "note": _run_note, "escalate": _run_escalate, "safeguarding": _run_safeguarding,
    "withdraw": _run_withdraw, "investigate": _run_investigate, "resume": _run_resume,
    "close": _run_close, "reopen": _run_reopen, "log": _run_log, "reclassify": _run_reclassify,
    "help": _run_help,
}
assert set(CHECKS) == set(RUNNERS) == set(cmd.SPECS)


# ---------------------------------------------------------------------------------------------
# Keeping internal text out of letters to complainants

_INTERNAL_MARKERS = ("--- their message ---", "deadlines under the policy:", "deadlines now running:",
                     "safeguarding: please act on this today", "a new message has arrived on case")


def _check_no_internal_text(job: _Job, text: str) -> None:
    """Refuse to send text that carries what we wrote to staff: quoted history that was not
    recognised as such (an unusual client) must never reach a complainant."""
    lowered = text.lower()
    marker = next((m for m in _INTERNAL_MARKERS if m in lowered), None)
    if marker is None:
        marker = _staff_line_in(job, text)
    if marker:
        raise Refused(f"the text seems to include a message mailbot sent to staff ({marker.strip()!r}), "
                      f"probably quoted history that was not recognised: nothing was sent. Send the "
                      f"text on its own (delete the quoted mail below it)")


def _staff_line_in(job: _Job, text: str) -> str | None:
    """A line of a staff letter of this case (not the complainant's own words) found in ``text``."""
    rows = job.session.exec(select(Message).where(col(Message.case_id) == job.case.id)
                            .order_by(col(Message.id))).all()
    own_words: set[str] = set()
    staff_lines: list[str] = []
    complainant = (job.case.complainant or "").lower()
    for m in rows:
        try:
            body = parse_mail(m.raw).text
        except ParseError:
            continue
        lines = {ln.strip() for ln in body.split("\n") if len(ln.strip()) >= 25}
        if m.direction == "in" or complainant in m.recipients.lower().split(","):
            own_words |= lines  # what the complainant wrote, or was sent anyway
        else:
            staff_lines += sorted(lines)
    body = {ln.strip() for ln in text.split("\n")}
    for line in staff_lines:
        if line not in own_words and line in body:
            return line
    return None


# ---------------------------------------------------------------------------------------------
# Letters


def _context(app: "App", session: Session, case: Case | None, view: CommandView, *, now: datetime,
             body: str = "", handling: str = "normal", staff_roles=()) -> dict:
    progress = session.get(CaseProgress, case.id) if case is not None and case.id else None
    subs = json.loads(progress.substitutions) if progress and progress.substitutions else {}
    return build_context(
        app.rules, case=case, sender_name=case.complainant_name if case else "",
        sender_addr=case.complainant if case else "", subject=case.subject if case else "",
        body=body, label=case.kind if case else "other", channel=case.channel if case else "email",
        flags=case.flag_list if case else [], confidence=case.confidence if case else 1.0,
        needs_review=case.needs_review if case else False, received=now, acknowledged=False,
        handling=handling, deadlines=deadlines_of(session, case) if case else [],
        stage=progress.stage if progress else 0, substitutions=subs,
        owner_role=(progress.owner_role or None) if progress else None, staff_roles=staff_roles,
        publish=progress.publish if progress else "", command=view)


def _queue(app: "App", session: Session, letter_name: str, context: dict, to: list[str],
           case: Case | None, *, in_reply_to: str | None = None, references: list[str] | None = None) -> Message:
    try:
        letter = app.letters.render(letter_name, context)
    except LetterError as exc:
        raise RuntimeError(f"cannot write the {letter_name} letter: {exc}") from exc
    email = build_email(letter, sender=app.config.outgoing.from_, to=to, in_reply_to=in_reply_to,
                        references=references)
    row = queue(session, email, case_id=case.id if case else None, purpose=letter_name,
                mail_from=app.config.outgoing.from_address)
    session.flush()
    return row


def _letter_to_complainant(job: _Job, letter_name: str, view: CommandView,
                           handling: str = "normal") -> str:
    """A letter to the complainant of record (only ever them), in the thread of their last mail."""
    case = job.case
    address = _complainant_address(case)
    last = job.session.exec(select(Message).where(col(Message.case_id) == case.id,
                                                  col(Message.direction) == "in",
                                                  col(Message.sender) == address)
                            .order_by(col(Message.id).desc())).first()
    context = _context(job.app, job.session, case, view, now=job.now, body=view.text, handling=handling)
    _queue(job.app, job.session, letter_name, context, [address], case,
           in_reply_to=last.message_id if last is not None else None,
           references=last.references.split() if last is not None and last.references else None)
    job.session.add(Event(case_id=case.id, message_id=job.row.id, actor=job.actor,
                          action=f"{letter_name}_queued"))
    return address


def _answer(job: _Job) -> None:
    """The confirmation (or the refusal) to the member of staff, in their thread."""
    case = job.case
    if _flooding(job.session, "staff_command_result", job.actor, job.now, case, job.row):
        return
    context = _context(job.app, job.session, case, job.view, now=job.now)
    _queue(job.app, job.session, "staff_command_result", context, [job.actor], case,
           in_reply_to=job.msg.message_id, references=job.msg.references)


# Answers and warnings per hour before mailbot stops writing them (and only records): a mailbox
# rule that forwards our answer back, or a stream of forgeries, must not become a mail storm.
ANSWERS_PER_HOUR = 30


def _flooding(session: Session, purpose: str, address: str | None, now: datetime,
              case: Case | None, row: Message | None) -> bool:
    query = select(func.count()).select_from(Message).where(
        col(Message.direction) == "out", col(Message.purpose) == purpose,
        col(Message.at) >= now - timedelta(hours=1))
    if address is not None:
        query = query.where(col(Message.recipients) == address)
    if session.exec(query).one() < ANSWERS_PER_HOUR:
        return False
    session.add(Event(case_id=case.id if case else None, message_id=row.id if row else None,
                      actor="system", action="staff_answer_suppressed",
                      detail=json.dumps({"letter": purpose, "to": address,
                                         "why": f"{ANSWERS_PER_HOUR} in the last hour: possible mail loop"})))
    log.warning("not sending %s to %s: %s in the last hour", purpose, address or "staff", ANSWERS_PER_HOUR)
    return True


def _first_text(session: Session, case: Case) -> str:
    """What the complainant first wrote (for letters that hand a case to someone)."""
    first = session.exec(select(Message).where(col(Message.case_id) == case.id, col(Message.direction) == "in")
                         .order_by(col(Message.id))).first()
    if first is None:
        return ""
    try:
        return parse_mail(first.raw).text[:8000]
    except ParseError:
        return ""

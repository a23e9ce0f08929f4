"""Follow-ups: the policy's promises, kept on time and exactly once.

The policies promise dates (acknowledge in 3 working days, respond in 28 days, a review within
28 working days) and things to do around them ("let the complainant know why there are
delays", "after 28 days, if there is no appeal, the CEO reports to the Board", a quarterly
log, compliments fed back to the people they name).  This module keeps those promises:

- ``plan(session, app, now)`` works out, from the database alone, every follow-up that is due
  or will be: reminders to the case owner before each of our due dates, an escalation when one
  is missed, holding letters to the complainant, cases closed when their appeal window ran out,
  the per-case report after an outcome, the periodic reports, compliments passed on.  Nothing
  about it is remembered anywhere else, so it cannot drift from the case book.
- ``sweep(app, now)`` carries out what ``plan`` says is due.  Each follow-up is one
  transaction: a ``FollowUp`` row with a unique key (kind, case, deadline, offset, due date),
  the outbox letter and an audit event.  The key is what makes it exactly-once: a sweep that
  runs twice, late, after a crash or in two daemons at once meets the database's refusal and
  its letter is rolled back with it.
- ``FollowUpScheduler`` is the alarm clock: an APScheduler 3 ``BackgroundScheduler`` whose
  jobs are stored in the same database (``mailbot_jobs``), one job per moment at which
  something falls due.  Each job only calls ``sweep``; the jobs are thrown away and rebuilt
  from ``plan`` when the daemon starts and brought up to date after every round.  A job that is
  lost, duplicated or fires late therefore changes nothing but *when* the sweep runs: the
  daemon loop (``Daemon.run_forever``) sweeps every round as well, with the same result.

Catching up after downtime: an escalation, a closing window or a report that fell due while
mailbot was down is done at the first sweep after; of several reminders (or progress letters)
whose moments all passed, only the latest is sent, and none once the date itself has passed
(the escalation says it instead).  Nothing is sent for a case that is closed, withdrawn, paused
or stopped, or for a step that is done: a deadline counts as met when ``met_at`` is set *or* the
case's state shows the step is behind it (staff may move a case on without recording the date).

Times: follow-ups to people go at office opening time on a working day of the organisation's
calendar ("2 working days" before Thursday 17:00 is Tuesday 09:00; a missed date is escalated
at 09:00 the next working day).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Iterable

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailbot.cases.models import Case, CaseProgress, Deadline, Event, FollowUp, Message, utcnow
from mailbot.cases.workflow import (ACKNOWLEDGED, APPEAL_ACKNOWLEDGED, APPEAL_RECEIVED, CLOSED,
                                    INVESTIGATING, OUTCOME_SENT, RECEIVED, TRIAGE, named_roles,
                                    transition)
from mailbot.letters import LetterError, build_email
from mailbot.outbox import queue
from mailbot.policy.calendar import LONDON, Calendar, describe, describe_time
from mailbot.policy.context import build_context
from mailbot.policy.rules import (FOLLOWED_DEADLINES, NEVER_ANSWERABLE_CHANNELS, STAFF_ROLE,
                                  Duration, ReportRule, Rules)

log = logging.getLogger(__name__)

REMINDER, ESCALATION, HOLDING = "reminder", "escalation", "holding_letter"
WINDOW_CLOSED, OUTCOME_REPORT, PERIODIC_REPORT = "window_closed", "outcome_report", "report"
COMPLIMENT = "compliment_passed_on"
KINDS = (REMINDER, ESCALATION, HOLDING, WINDOW_CLOSED, OUTCOME_REPORT, PERIODIC_REPORT, COMPLIMENT)

# Which case states mean that a deadline's step is still to be done (see module docstring).
ACTIVE_FOR = {
    "pass_to_owner": {RECEIVED, TRIAGE},
    "acknowledge": {RECEIVED, TRIAGE},
    "respond": {RECEIVED, TRIAGE, ACKNOWLEDGED, INVESTIGATING},
    "appeal_acknowledge": {APPEAL_RECEIVED},
    "appeal_respond": {APPEAL_RECEIVED, APPEAL_ACKNOWLEDGED, INVESTIGATING},
}
ACTIVE_STATES = set().union(*ACTIVE_FOR.values()) | {OUTCOME_SENT}
# Outcome reports are made for outcomes this recent; older ones are history, not a duty.
OUTCOME_REPORT_LOOKBACK = timedelta(days=400)
# What each time limit asks of us, in words for letters ("... within 28 days").
WHAT = {"pass_to_owner": "pass the complaint to the person who deals with it",
        "acknowledge": "acknowledge the complaint", "respond": "send our response",
        "appeal_acknowledge": "acknowledge the request for a {stage}",
        "appeal_respond": "send the outcome of the {stage}", "appeal_window": "ask for a {stage}"}
LETTERS = {REMINDER: "staff_reminder", ESCALATION: "staff_escalation", HOLDING: "holding_letter",
           OUTCOME_REPORT: "report_case_outcome", PERIODIC_REPORT: "report_mail",
           COMPLIMENT: "compliment_passed_on"}


@dataclass
class Planned:
    """One follow-up: what, when (UTC), for which case, why (in words), and to whom."""

    key: str
    kind: str
    at: datetime
    why: str
    state: str  # due | upcoming | overtaken | blocked
    case_id: int | None = None
    reference: str = ""
    deadline_id: int | None = None
    offset: str = ""
    to_roles: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def due(self) -> bool:
        return self.state == "due"


def aware(moment: datetime | None) -> datetime | None:
    """Columns without the UTC type come back naive from SQLite: they are UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# Calendar arithmetic for follow-ups (kept here: calendar.py computes due dates, this computes
# the mornings on which people are told about them)


def opening(calendar: Calendar, day: date) -> datetime:
    return datetime.combine(day, calendar.opens, tzinfo=LONDON).astimezone(timezone.utc)


def _previous_working_day(calendar: Calendar, day: date) -> date:
    day -= timedelta(days=1)
    while not calendar.is_working_day(day):
        day -= timedelta(days=1)
    return day


@lru_cache(maxsize=65536)  # pure; the plan asks the same questions every round
def before(calendar: Calendar, due: datetime, offset: Duration) -> datetime:
    """The morning (opening time, on a working day) ``offset`` before ``due``.

    "2 working days" before Thursday 17:00 is Tuesday 09:00; "1 day" before a Saturday is the
    Friday; hours count back exactly and then move to that day's opening (or the last working
    day's) so nobody is written to at night."""
    local = due.astimezone(LONDON)
    if offset.unit == "hours":
        moment = (due - timedelta(hours=offset.amount)).astimezone(LONDON)
        day = moment.date()
        if calendar.is_working_day(day) and calendar.opens <= moment.time() < calendar.closes:
            return moment.astimezone(timezone.utc)
        if not (calendar.is_working_day(day) and moment.time() >= calendar.closes):
            day = _previous_working_day(calendar, day)
        return opening(calendar, day)
    day = local.date()
    if offset.unit == "days":
        day -= timedelta(days=offset.amount)
        while not calendar.is_working_day(day):
            day -= timedelta(days=1)
    else:
        for _ in range(offset.amount):
            day = _previous_working_day(calendar, day)
    return opening(calendar, day)


@lru_cache(maxsize=65536)
def after(calendar: Calendar, start: datetime, period: Duration) -> datetime:
    """The first office opening at or after ``period`` from ``start`` (28 days after an outcome
    on a Sunday is the Monday at 09:00)."""
    if period.unit == "hours":
        return calendar.clock_start(start + timedelta(hours=period.amount))
    day = start.astimezone(LONDON).date()
    if period.unit == "days":
        day += timedelta(days=period.amount)
    else:
        for _ in range(period.amount):
            day = calendar.next_working_day(day)
    return calendar.clock_start(opening(calendar, day))


@lru_cache(maxsize=65536)
def when_missed(calendar: Calendar, due: datetime) -> datetime:
    """When a missed date is escalated: at once if it fell in office hours, else the next
    opening (a date due at 17:00 on Thursday is escalated at 09:00 on Friday)."""
    return calendar.clock_start(due)


# ---------------------------------------------------------------------------------------------
# The plan


def _subs(progress: CaseProgress | None) -> dict[str, str]:
    return json.loads(progress.substitutions) if progress and progress.substitutions else {}


def apply_substitutions(roles: Iterable[str], subs: dict[str, str]) -> list[str]:
    """Conflict of interest: the person a complaint names is never told; their stand-in is."""
    out = [subs.get(r, r) for r in roles]
    return list(dict.fromkeys(r for r in out if r not in subs))


def owner_of(rules: Rules, progress: CaseProgress | None, stage: int) -> str:
    if progress is not None and progress.owner_role:
        return progress.owner_role
    subs = _subs(progress)
    if stage >= 1 and stage <= len(rules.complaint.appeals):
        return subs.get(rules.complaint.appeals[stage - 1].reviewer, rules.complaint.appeals[stage - 1].reviewer)
    return subs.get(rules.complaint.owner, rules.complaint.owner)


def escalation_roles(rules: Rules, progress: CaseProgress | None, stage: int) -> list[str]:
    if 1 <= stage <= len(rules.complaint.appeals):
        named = rules.complaint.appeals[stage - 1].escalate_to
    else:
        named = rules.complaint.escalate_to
    return apply_substitutions([owner_of(rules, progress, stage), *named], _subs(progress))


def deadline_open(deadline: Deadline, case: Case, progress: CaseProgress | None) -> bool:
    """Is the step this deadline times still to be done?  (met_at, or the case's state)."""
    stage = progress.stage if progress else 0
    return (deadline.met_at is None and deadline.stage == stage
            and case.status in ACTIVE_FOR.get(deadline.name, ()))


def reachable(case: Case) -> bool:
    """Can a letter to the complainant reach a person?  (Not a relay or a robot address.)"""
    return bool(case.complainant) and case.channel not in (*NEVER_ANSWERABLE_CHANNELS, "sms_gateway")


def _key(*parts: Any) -> str:
    text = ":".join(str(p) for p in parts)
    if len(text) > 280:  # never expected; keeps the unique column bounded all the same
        text = text[:200] + ":" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return text


def _slug(name: str) -> str:
    """A report's part of a key: by its name, so reordering [[reporting]] changes nothing."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "report"


def _latest_only(items: list[Planned], now: datetime) -> None:
    """Of a series (reminders for one date, progress letters), only the latest whose moment has
    passed is due; earlier ones were overtaken (downtime) and are not sent late."""
    past = [p for p in items if p.at <= now]
    for p in items:
        if p.at > now:
            p.state = "upcoming"
        elif p is past[-1]:
            p.state = "due"
        else:
            p.state = "overtaken"


def _deadline_items(rules: Rules, calendar: Calendar, case: Case, progress: CaseProgress | None,
                    d: Deadline, now: datetime) -> list[Planned]:
    items: list[Planned] = []
    ref, due = case.reference, d.due_at
    if d.name == "appeal_window":
        if d.met_at is None and case.status == OUTCOME_SENT and progress is not None \
                and progress.stage == d.stage - 1:
            at = due + timedelta(seconds=1)
            items.append(Planned(
                _key(WINDOW_CLOSED, f"d{d.id}"), WINDOW_CLOSED, at,
                f"the {d.rule} window for a {_stage_name(rules, d.stage)} closes {describe(due)}: "
                f"no request came, so the case closes (the complainant is not chased)",
                "due" if at <= now else "upcoming", case.id, ref, d.id))
        return items
    if d.name not in FOLLOWED_DEADLINES or due is None or not deadline_open(d, case, progress):
        return items
    owner = owner_of(rules, progress, d.stage)
    label = d.name.replace("_", " ")
    round_ = due.astimezone(timezone.utc).strftime("%Y%m%dT%H%M")
    # reminders to the owner, before the date
    reminders: dict[datetime, Planned] = {}
    for offset in rules.reminders.before:
        at = before(calendar, due, offset)
        if at >= due or at in reminders:
            continue
        reminders[at] = Planned(
            _key(REMINDER, f"d{d.id}", str(offset), round_), REMINDER, at,
            f"{label} ({d.rule}) due {describe_time(due)}: reminder {offset} before",
            "upcoming", case.id, ref, d.id, str(offset), [owner])
    series = sorted(reminders.values(), key=lambda p: p.at)
    if series:
        _latest_only(series, now)
        if now >= due:
            for p in series:
                p.state = "overtaken"
    items += series
    # escalation when missed
    if rules.reminders.escalate:
        at = when_missed(calendar, due)
        roles = escalation_roles(rules, progress, d.stage)
        items.append(Planned(
            _key(ESCALATION, f"d{d.id}", round_), ESCALATION, at,
            f"{label} ({d.rule}) due {describe_time(due)} and not met: escalated to "
            + ", ".join(rules.role_title(r) for r in roles),
            "due" if at <= now else "upcoming", case.id, ref, d.id, "", roles))
    # holding letters to the complainant, anchored on the date first promised
    hold = rules.holding_letter
    if hold.letter and d.name in hold.deadlines:
        promised = d.extended_from or due
        first = before(calendar, promised, hold.before) if hold.before else when_missed(calendar, promised)
        letters = [Planned(_key(HOLDING, f"d{d.id}", 0), HOLDING, first,
                           f"{label} first promised for {describe(promised)}: the complainant is "
                           f"told why the answer is late" + (f" ({hold.before} before)" if hold.before else ""),
                           "upcoming", case.id, ref, d.id, "first", [], {"number": 0})]
        if hold.every:
            k, at = 1, after(calendar, promised, Duration(hold.every.amount, hold.every.unit))
            while True:
                letters.append(Planned(_key(HOLDING, f"d{d.id}", k), HOLDING, at,
                                       f"progress letter {k} while the {label} is outstanding "
                                       f"(every {hold.every})", "upcoming", case.id, ref, d.id,
                                       f"update {k}", [], {"number": k}))
                if at > now:
                    break
                k += 1
                at = after(calendar, promised, Duration(hold.every.amount * k, hold.every.unit))
        _latest_only(letters, now)
        if not reachable(case):
            for p in letters:
                p.state = "blocked"
                p.why += "; not sent: the complainant cannot be written to by email"
        items += letters
    return items


def _stage_name(rules: Rules, stage: int) -> str:
    if 1 <= stage <= len(rules.complaint.appeals):
        return rules.complaint.appeals[stage - 1].name
    return "review"


def _outcome_items(rules: Rules, calendar: Calendar, case: Case, progress: CaseProgress | None,
                   event: Event, deadlines: list[Deadline], now: datetime) -> list[Planned]:
    items = []
    try:
        stage = int(json.loads(event.detail or "{}").get("stage", 0))
    except (ValueError, TypeError, AttributeError):
        stage = 0
    for index, rule in enumerate(rules.reporting, 1):
        if rule.after_outcome is None:
            continue
        outcome_at = aware(event.at)
        at = after(calendar, outcome_at, rule.after_outcome)
        window = next((d for d in deadlines if d.name == "appeal_window" and d.stage == stage + 1), None)
        if rule.only_if_no_appeal:
            if (progress.stage if progress else 0) != stage or (window is not None and window.met_at):
                continue  # an appeal was made: its own outcome will be reported
            if window is not None and window.due_at and window.due_at > at:
                at = calendar.clock_start(window.due_at + timedelta(seconds=1))
        roles = apply_substitutions(rule.to, _subs(progress))
        items.append(Planned(
            _key(OUTCOME_REPORT, _slug(rule.name), f"c{case.id}", f"s{stage}"), OUTCOME_REPORT, at,
            f"{rule.name}: {rule.after_outcome} after the outcome of {describe(outcome_at)}"
            + (" with no appeal" if rule.only_if_no_appeal else ""),
            "due" if at <= now else "upcoming", case.id, case.reference, None, f"stage {stage}",
            roles, {"rule": index, "stage": stage, "outcome_event": event.id}))
    return items


def _compliment_item(rules: Rules, calendar: Calendar, case: Case, text: str,
                     now: datetime) -> Planned:
    from mailbot.feedback import compliment_targets  # staff and teams of people.toml too

    named, addresses, who = compliment_targets(rules, text)
    at = calendar.clock_start(aware(case.opened_at))
    who = who or "nobody we have an address for"
    return Planned(_key(COMPLIMENT, f"c{case.id}"), COMPLIMENT, at,
                   f"compliment fed back to the people it names ({who}), then closed",
                   "due" if at <= now else "upcoming", case.id, case.reference, None, "", named,
                   {"addresses": addresses} if addresses else {})


# -- periodic reports ---------------------------------------------------------------------------


def period_of(every: str, day: date) -> tuple[date, date]:
    """The reporting period (start, end exclusive) that contains ``day``."""
    if every == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if every == "month":
        start = day.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)
    if every == "quarter":
        start = date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
        end_month = start.month + 3
        return start, date(start.year + (end_month > 12), (end_month - 1) % 12 + 1, 1)
    start = date(day.year, 1, 1)
    return start, date(day.year + 1, 1, 1)


def _report_items(rules: Rules, calendar: Calendar, first_case: datetime | None,
                  now: datetime) -> list[Planned]:
    items: list[Planned] = []
    today = now.astimezone(LONDON).date()
    for index, rule in enumerate(rules.reporting, 1):
        if rule.every is None:
            continue
        series: list[Planned] = []
        if rule.every == "trustee_meeting":
            meetings = sorted(rule.meetings)
            for i, meeting in enumerate(meetings):
                at = before(calendar, opening(calendar, meeting), rule.send_before)
                start = (before(calendar, opening(calendar, meetings[i - 1]), rule.send_before)
                         .astimezone(LONDON).date() if i else at.astimezone(LONDON).date() - timedelta(days=91))
                series.append(_report_planned(rule, index, start, at.astimezone(LONDON).date(), at,
                                              f"{rule.name}: for the trustee meeting on {describe(opening(calendar, meeting))}"))
        else:
            start, end = period_of(rule.every, today)
            previous_start, _ = period_of(rule.every, start - timedelta(days=1))
            for p_start, p_end in ((previous_start, start), (start, end)):
                # the first office opening once the period is over
                at = calendar.clock_start(datetime.combine(p_end, time(0), tzinfo=LONDON))
                series.append(_report_planned(rule, index, p_start, p_end, at,
                                              f"{rule.name}: every {rule.every}, for "
                                              f"{p_start:%d %b %Y} to {p_end - timedelta(days=1):%d %b %Y}"))
        if first_case is not None:  # nothing to report on before the first case ever
            first_day = first_case.astimezone(LONDON).date()
            series = [p for p in series if p.data["end"] > first_day or p.at > now]
        else:
            series = [p for p in series if p.at > now]
        if series:
            _latest_only(series, now)
        items += series
    return items


def _report_planned(rule: ReportRule, index: int, start: date, end: date, at: datetime,
                    why: str) -> Planned:
    return Planned(_key(PERIODIC_REPORT, _slug(rule.name), start.isoformat()), PERIODIC_REPORT, at, why,
                   "upcoming", offset=f"{start.isoformat()}..{end.isoformat()}", to_roles=list(rule.to),
                   data={"rule": index, "start": start, "end": end})


def plan(session: Session, rules: Rules, now: datetime | None = None, *,
         case_ids: Iterable[int] | None = None, reports: bool = True,
         include_done: bool = False) -> list[Planned]:
    """Every follow-up not yet done (due, upcoming, overtaken or blocked), sorted by time.

    ``case_ids`` limits the plan to those cases (and leaves out periodic reports), which is how
    ``sweep`` re-checks one follow-up inside the transaction that carries it out."""
    now = now or utcnow()
    calendar = Calendar.for_rules(rules)
    wanted = set(case_ids) if case_ids is not None else None
    items: list[Planned] = []

    q = (select(Deadline, Case).join(Case, col(Case.id) == col(Deadline.case_id))
         .where(col(Deadline.met_at).is_(None), col(Case.status).in_(sorted(ACTIVE_STATES))))
    if wanted is not None:
        q = q.where(col(Case.id).in_(sorted(wanted)))
    pairs = session.exec(q.order_by(col(Deadline.id))).all()

    outcome_events: list[tuple[Event, Case]] = []
    if any(r.after_outcome for r in rules.reporting):
        q2 = (select(Event, Case).join(Case, col(Case.id) == col(Event.case_id))
              .where(col(Event.action) == "outcome_recorded",
                     col(Event.at) >= now - OUTCOME_REPORT_LOOKBACK))
        if wanted is not None:
            q2 = q2.where(col(Case.id).in_(sorted(wanted)))
        outcome_events = list(session.exec(q2.order_by(col(Event.id))).all())

    q3 = select(Case).where(col(Case.kind) == "compliment", col(Case.status).in_([RECEIVED, ACKNOWLEDGED]))
    if wanted is not None:
        q3 = q3.where(col(Case.id).in_(sorted(wanted)))
    compliments = list(session.exec(q3).all())

    ids = {c.id for _, c in pairs} | {c.id for _, c in outcome_events} | {c.id for c in compliments}
    progress = {p.case_id: p for p in session.exec(
        select(CaseProgress).where(col(CaseProgress.case_id).in_(sorted(ids))))} if ids else {}
    done_q = select(FollowUp.key).where(col(FollowUp.case_id).in_(sorted(ids))) if ids else None
    done = set(session.exec(done_q).all()) if done_q is not None else set()

    for d, case in pairs:
        items += _deadline_items(rules, calendar, case, progress.get(case.id), d, now)
    by_case: dict[int, list[Deadline]] = {}
    if outcome_events:
        for d in session.exec(select(Deadline).where(
                col(Deadline.case_id).in_(sorted({c.id for _, c in outcome_events})))):
            by_case.setdefault(d.case_id, []).append(d)
    for event, case in outcome_events:
        items += _outcome_items(rules, calendar, case, progress.get(case.id), event,
                                by_case.get(case.id, []), now)
    for case in compliments:
        if _compliment_key(case) in done and not include_done:
            continue
        items.append(_compliment_item(rules, calendar, case, _first_text(session, case), now))

    if reports and wanted is None:
        first = session.exec(select(Case.opened_at).order_by(col(Case.opened_at)).limit(1)).first()
        report_items = _report_items(rules, calendar, aware(first), now)
        keys = [p.key for p in report_items]
        if keys:
            done |= set(session.exec(select(FollowUp.key).where(col(FollowUp.key).in_(keys))).all())
        items += report_items

    if not include_done:
        items = [p for p in items if p.key not in done]
    return sorted(items, key=lambda p: (p.at, p.reference, p.kind))


def _compliment_key(case: Case) -> str:
    return _key(COMPLIMENT, f"c{case.id}")


def _first_message(session: Session, case: Case) -> Message | None:
    return session.exec(select(Message).where(col(Message.case_id) == case.id,
                                              col(Message.direction) == "in")
                        .order_by(col(Message.id)).limit(1)).first()


def _first_text(session: Session, case: Case) -> str:
    """The subject and text of the message that opened the case (for names and themes only)."""
    from mailbot.intake.parse import ParseError, parse

    row = _first_message(session, case)
    if row is None:
        return case.subject
    try:
        msg = parse(row.raw)
    except ParseError:
        return case.subject
    return f"{msg.subject}\n{msg.text}"


# ---------------------------------------------------------------------------------------------
# Carrying it out


@dataclass
class SweepResult:
    done: list[Planned] = field(default_factory=list)
    skipped: int = 0  # refused by the database: done elsewhere already
    errors: list[str] = field(default_factory=list)
    upcoming: list[Planned] | None = None  # what the plan had ahead (for the scheduler's jobs)

    def count(self, kind: str) -> int:
        return sum(1 for p in self.done if p.kind == kind)


def sweep(app, now: datetime | None = None) -> SweepResult:
    """Carry out every follow-up that is due now; safe to run any number of times, anywhere."""
    now = now or utcnow()
    result = SweepResult()
    with app.db.session() as session:
        items = plan(session, app.rules, now)
    due = [p for p in items if p.due]
    result.upcoming = [p for p in items if p.state == "upcoming"]
    for item in due:
        try:
            with app.db.session() as session:
                fresh = _recheck(session, app.rules, item, now)
                if fresh is None:
                    continue  # the case moved on between the plan and now
                row = FollowUp(key=fresh.key, kind=fresh.kind, case_id=fresh.case_id,
                               deadline_id=fresh.deadline_id, offset=fresh.offset,
                               planned_at=fresh.at, done_at=now,
                               detail=json.dumps({"why": fresh.why, "to": fresh.to_roles}))
                session.add(row)
                session.flush()  # the unique key is checked here, before any letter is written
                _carry_out(app, session, fresh, row, now)
            result.done.append(item)
            log.info("follow-up %s %s: %s", item.kind, item.reference or item.offset, item.why)
        except IntegrityError:
            result.skipped += 1  # another sweep did it first
        except Exception as exc:  # noqa: BLE001 - one bad follow-up must not stop the others
            log.exception("follow-up %s failed", item.key)
            result.errors.append(f"{item.key}: {type(exc).__name__}: {exc}")
    from mailbot.feedback import sweep_surveys  # satisfaction surveys (own table: once per person)

    for s in sweep_surveys(app, now):
        result.done.append(Planned(f"survey:c{s.case_id}", "survey", s.at, f"satisfaction survey ({s.trigger})",
                                   "due", s.case_id, s.reference))
    return result


def _recheck(session: Session, rules: Rules, item: Planned, now: datetime) -> Planned | None:
    if item.case_id is None:
        return next((p for p in plan(session, rules, now) if p.key == item.key and p.due), None)
    return next((p for p in plan(session, rules, now, case_ids=[item.case_id], reports=False)
                 if p.key == item.key and p.due), None)


def _carry_out(app, session: Session, item: Planned, row: FollowUp, now: datetime) -> None:
    case = session.get(Case, item.case_id) if item.case_id is not None else None
    if item.kind == WINDOW_CLOSED:
        transition(session, case, CLOSED, "system", "appeal window closed with no request")
    elif item.kind == COMPLIMENT:
        if item.to_roles or item.data.get("addresses"):
            from mailbot.feedback import pass_on  # to named staff, teams and their managers

            row.message_id = pass_on(app, session, item, case, now)
        transition(session, case, CLOSED, "system", "compliment passed on")
    elif item.kind == PERIODIC_REPORT:
        row.message_id = _report_mail(app, session, item, now)
    elif item.kind == HOLDING:
        row.message_id = _letter(app, session, item, case, now, to_complainant=True)
    else:
        row.message_id = _letter(app, session, item, case, now, to_roles=item.to_roles)
    session.add(row)
    if case is not None:
        session.add(Event(case_id=case.id, message_id=row.message_id, actor="system",
                          action=f"follow_up_{item.kind}",
                          detail=json.dumps({"why": item.why, "to": item.to_roles, "key": item.key})))


def follow_up_context(app, session: Session, item: Planned, case: Case, now: datetime,
                      extra: dict | None = None) -> dict:
    """What a follow-up letter may use: everything a case letter has (build_context), plus
    ``follow_up``: kind, why, offset, the deadline in words, the delay's reason and new date
    (from the latest extension), who it was escalated to, and the outcome report's facts."""
    from mailbot.cases.workflow import deadlines_of

    rules = app.rules
    progress = session.get(CaseProgress, case.id)
    deadlines = deadlines_of(session, case)
    d = session.get(Deadline, item.deadline_id) if item.deadline_id else None
    context = build_context(
        rules, case=case, sender_name=case.complainant_name, sender_addr=case.complainant,
        subject=case.subject, body="", label=case.kind, channel=case.channel,
        flags=case.flag_list, confidence=case.confidence, needs_review=case.needs_review,
        received=aware(case.opened_at), acknowledged=True, handling="normal",
        deadlines=deadlines, stage=progress.stage if progress else 0,
        substitutions=_subs(progress), owner_role=progress.owner_role if progress and progress.owner_role else None,
        staff_roles=item.to_roles, publish=progress.publish if progress else "")
    context["follow_up"] = _follow_up_view(session, rules, item, case, d, now)
    context["follow_up"].update(extra or {})
    return context


def _follow_up_view(session: Session, rules: Rules, item: Planned, case: Case, d: Deadline | None,
                    now: datetime) -> dict:
    view: dict[str, Any] = {
        "kind": item.kind, "why": item.why, "offset": item.offset,
        "to": [rules.role_title(r) for r in item.to_roles], "number": item.data.get("number", 0),
        "deadline": None, "reason": "", "extended": False, "new_date": "", "first_date": "",
        "overdue_days": 0, "report": None, "compliment_text": "",
    }
    if d is not None:
        promised = d.extended_from or d.due_at
        view.update(
            deadline={"name": d.name.removeprefix("appeal_").replace("_", " "), "rule": d.rule,
                      "date": describe(d.due_at), "when": describe_time(d.due_at),
                      "stage": d.stage, "what": WHAT[d.name].format(stage=_stage_name(rules, d.stage))},
            first_date=describe(promised), extended=d.extended_from is not None,
            new_date=describe(d.due_at) if d.extended_from is not None else "",
            reason=_extension_reason(session, case, d),
            overdue_days=max(0, (now - d.due_at).days) if now > d.due_at else 0)
    if item.kind == OUTCOME_REPORT:
        from mailbot.reports.data import case_summary

        view["report"] = case_summary(session, rules, case, item.data.get("stage", 0))
    return view


def _extension_reason(session: Session, case: Case, d: Deadline) -> str:
    for event in session.exec(select(Event).where(col(Event.case_id) == case.id,
                                                  col(Event.action) == "deadline_extended")
                              .order_by(col(Event.id).desc())):
        try:
            detail = json.loads(event.detail or "{}")
        except ValueError:
            continue
        if detail.get("deadline") == d.name and int(detail.get("stage", d.stage)) == d.stage:
            return str(detail.get("reason") or "")
    return ""


def _anonymised_compliment(session: Session, case: Case) -> str:
    from mailbot.reports.data import scrub

    row = _first_message(session, case)
    if row is None:
        return ""
    from mailbot.intake.parse import ParseError, parse

    try:
        text = parse(row.raw).text
    except ParseError:
        return ""
    return scrub(text[:4000], names=[case.complainant_name], addresses=[case.complainant]).strip()


def _letter(app, session: Session, item: Planned, case: Case, now: datetime, *,
            to_roles: list[str] | None = None, to_complainant: bool = False,
            extra: dict | None = None) -> int | None:
    name = LETTERS[item.kind]
    if item.kind == REMINDER:
        name = app.rules.reminders.letter
    elif item.kind == ESCALATION:
        name = app.rules.reminders.escalation_letter
    elif item.kind == HOLDING:
        name = app.rules.holding_letter.letter or name
    context = follow_up_context(app, session, item, case, now, extra)
    try:
        letter = app.letters.render(name, context)
    except LetterError as exc:
        raise RuntimeError(f"cannot write the {name} letter: {exc}") from exc
    sender, mail_from = app.config.outgoing.from_, app.config.outgoing.from_address
    if to_complainant:
        first = _first_message(session, case)
        to = [case.complainant]
        email = build_email(letter, sender=sender, to=to,
                            in_reply_to=first.message_id if first else None,
                            references=(first.references.split() if first and first.references else None))
    else:
        to = app.rules.addresses(to_roles or [STAFF_ROLE], [a for a in app.config.staff.notify if a])
        if not to:
            return None
        email = build_email(letter, sender=sender, to=to)
    out = queue(session, email, case_id=case.id, purpose=name, mail_from=mail_from)
    session.flush()
    return out.id


def with_attachments(body, files: list[tuple[str, str, str, bytes]]):
    """The letter (as ``build_email`` made it) inside a multipart/mixed with the files attached;
    the envelope headers move to the outer part."""
    from email.mime.application import MIMEApplication
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    outer = MIMEMultipart("mixed")
    for name, value in list(body.items()):
        if not name.lower().startswith(("content-", "mime-version")):
            outer[name] = value
            del body[name]
    outer.attach(body)
    for filename, maintype, subtype, data in files:
        part = (MIMEText(data.decode("utf-8"), subtype, "utf-8") if maintype == "text"
                else MIMEApplication(data, subtype))
        part.add_header("Content-Disposition", "attachment", filename=filename)
        outer.attach(part)
    return outer


def _report_mail(app, session: Session, item: Planned, now: datetime) -> int | None:
    """The periodic report: a short mail with the report attached as HTML and PDF."""
    from mailbot.reports import build_report, render_html, render_pdf

    rules = app.rules
    rule = rules.reporting[item.data["rule"] - 1]
    start, end = item.data["start"], item.data["end"]
    report = build_report(session, rules, start, end, title=rule.name, now=now)
    html = render_html(report)
    pdf = render_pdf(report)
    context = {"org": rules.organisation, "report": report, "rule": rule,
               "period": f"{start:%-d %B %Y} to {(end - timedelta(days=1)):%-d %B %Y}",
               "to": [rules.role_title(r) for r in rule.to]}
    letter = app.letters.render(LETTERS[PERIODIC_REPORT], context)
    to = rules.addresses(rule.to, [a for a in app.config.staff.notify if a])
    if not to:
        return None
    stem = re.sub(r"[^a-z0-9]+", "-", rule.name.lower()).strip("-") or "report"
    filename = f"{stem}-{start.isoformat()}-to-{(end - timedelta(days=1)).isoformat()}"
    email = with_attachments(build_email(letter, sender=app.config.outgoing.from_, to=to),
                             [(f"{filename}.html", "text", "html", html.encode("utf-8")),
                              (f"{filename}.pdf", "application", "pdf", pdf)])
    out = queue(session, email, case_id=None, purpose=LETTERS[PERIODIC_REPORT],
                mail_from=app.config.outgoing.from_address)
    session.flush()
    return out.id


# ---------------------------------------------------------------------------------------------
# The alarm clock: APScheduler 3 with its jobs in the mailbot database

JOB_PREFIX = "mailbot-follow-up:"
JOB_TABLE = "mailbot_jobs"
_RUNNERS: dict[str, "FollowUpScheduler"] = {}


def run_job(name: str) -> None:
    """What every stored job calls (a plain function, so the job store can keep a reference)."""
    runner = _RUNNERS.get(name)
    if runner is None:  # a job from another process's scheduler: nothing to do here
        log.warning("follow-up job for unknown scheduler %r ignored", name)
        return
    runner.run_due()


class FollowUpScheduler:
    """APScheduler's ``BackgroundScheduler`` with a ``SQLAlchemyJobStore`` in the mailbot
    database: one date job per moment at which some follow-up falls due.

    The jobs are only wake-up calls: ``run_due`` sweeps (the database decides what is due),
    delivers the outbox and re-syncs the jobs.  ``start`` rebuilds every job from the plan, so
    the stored jobs can be deleted, duplicated or stale without harm.  ``sender_factory`` opens
    a sender for the job's own delivery (the daemon's connection belongs to its thread)."""

    def __init__(self, app, *, sender_factory: Callable[[], Any] | None = None,
                 name: str = "default", horizon: timedelta = timedelta(days=120)):
        from apscheduler.jobstores.base import JobLookupError
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.schedulers.base import STATE_STOPPED

        class Scheduler(BackgroundScheduler):
            """A job already gone is not an error here: APScheduler removes a fired date job
            itself, and a second daemon on the same database (same job table) may have done so
            first.  Raised inside APScheduler's loop, it would stop the alarm clock."""

            def remove_job(self, job_id, jobstore=None):
                try:
                    super().remove_job(job_id, jobstore)
                except JobLookupError:
                    log.debug("follow-up job %s was already gone", job_id)

            def _process_jobs(self):
                # APScheduler 3 looks for due jobs once more after shutdown, when its executor is
                # gone; a job due at that moment stays in the table for the next start instead
                if self.state == STATE_STOPPED:
                    return None
                return super()._process_jobs()

        self.app = app
        self.name = name
        self.horizon = horizon
        self.sender_factory = sender_factory
        self.lock = threading.Lock()
        self.jobstore = SQLAlchemyJobStore(engine=app.db.engine, tablename=JOB_TABLE)
        self.scheduler = Scheduler(
            jobstores={"default": self.jobstore}, timezone=timezone.utc,
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1})
        self.last: SweepResult | None = None

    def start(self, *, paused: bool = False) -> None:
        _RUNNERS[self.name] = self
        self.scheduler.start(paused=paused)
        self.rebuild()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if _RUNNERS.get(self.name) is self:
            del _RUNNERS[self.name]

    def job_id(self, moment: datetime) -> str:
        return f"{JOB_PREFIX}{self.name}:{moment.astimezone(timezone.utc):%Y%m%dT%H%M%S}"

    def wanted(self, now: datetime | None = None, items: list[Planned] | None = None) -> dict[str, datetime]:
        """Job id -> run time for every moment ahead (within ``horizon``) when something is due."""
        now = now or utcnow()
        if items is None:
            with self.app.db.session() as session:
                items = plan(session, self.app.rules, now)
        moments = {p.at for p in items if p.state == "upcoming" and p.at <= now + self.horizon}
        return {self.job_id(m): m for m in moments}

    def rebuild(self, now: datetime | None = None) -> None:
        """Throw away every stored follow-up job and make them again from the database."""
        for job in self.scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX):
                job.remove()
        self.sync(now)

    def sync(self, now: datetime | None = None, items: list[Planned] | None = None) -> None:
        """Add the jobs for moments that are new, drop those no longer needed (``items``: a plan
        just made, e.g. by the sweep, to save making it again)."""
        wanted = self.wanted(now, items)
        mine = [job for job in self.scheduler.get_jobs() if job.id.startswith(f"{JOB_PREFIX}{self.name}:")]
        have = {job.id for job in mine}
        real_now = datetime.now(timezone.utc)
        for job in mine:  # stale ones, but never one APScheduler is about to fire and remove
            if job.id not in wanted and job.next_run_time and job.next_run_time > real_now:
                self.scheduler.remove_job(job.id)
        for job_id in sorted(set(wanted) - have):
            self.scheduler.add_job(run_job, "date", run_date=wanted[job_id], args=[self.name],
                                   id=job_id, name="mailbot follow-ups", replace_existing=True)

    def run_due(self, now: datetime | None = None) -> SweepResult:
        """Sweep, deliver what it queued (with a sender of its own), and re-sync the jobs."""
        with self.lock:
            result = sweep(self.app, now)
            self.last = result
            if result.done and self.sender_factory is not None:
                from mailbot import outbox

                sender = self.sender_factory()
                try:
                    outbox.deliver(self.app.db, sender)
                finally:
                    try:
                        sender.close()
                    except Exception:  # noqa: BLE001
                        pass
            try:
                self.sync(now, result.upcoming)
            except Exception:  # noqa: BLE001 - the daemon loop sweeps anyway
                log.exception("could not update the follow-up jobs")
            return result

    def stored_jobs(self) -> list[tuple[str, datetime | None]]:
        return [(job.id, job.next_run_time) for job in self.scheduler.get_jobs()]


def stored_job_times(engine) -> list[datetime]:
    """The run times of the stored follow-up jobs, read straight from the table (for
    ``mailbot schedule list``, which does not start a scheduler)."""
    from sqlalchemy import inspect, text

    if not inspect(engine).has_table(JOB_TABLE):
        return []
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, next_run_time FROM {JOB_TABLE}")).all()
    return sorted(datetime.fromtimestamp(t, timezone.utc) for i, t in rows
                  if t is not None and str(i).startswith(JOB_PREFIX))


# ---------------------------------------------------------------------------------------------
# `mailbot rules check`: the follow-up letters are rendered with sample data too


def _sample_follow_ups(rules: Rules) -> list[dict]:
    deadline = {"name": "respond", "rule": "28 days", "date": "Tuesday 12 May 2026",
                "when": "Tuesday 12 May 2026 at 17:00", "stage": 0, "what": WHAT["respond"]}
    summary = {"reference": rules.reference.make(2026, 42), "kind": "complaint", "channel": "email",
               "opened": "14 April 2026", "flags": ["legal"], "themes": ["Communication"],
               "outcome": "upheld", "stage": 0, "stage_name": "first response",
               "deadlines": [{"name": "responded", "rule": "28 days", "result": "met"}],
               "actions": ["remedial action: session times now texted to parents"]}
    plain = {"kind": REMINDER, "why": "sample", "offset": "2 working days", "to": ["Line Manager"],
             "number": 0, "deadline": deadline, "reason": "", "extended": False, "new_date": "",
             "first_date": "Tuesday 12 May 2026", "overdue_days": 0, "report": summary,
             "compliment_text": "Thank you to the team."}
    rich = dict(plain, number=2, reason="the investigator is on annual leave", extended=True,
                new_date="Tuesday 26 May 2026", overdue_days=3,
                deadline=dict(deadline, name="respond", stage=1, what=WHAT["appeal_respond"].format(stage="review")),
                report=dict(summary, actions=[], flags=[]))
    return [plain, rich]


def check_follow_up_letters(rules: Rules, templates) -> list[str]:
    """Problems with the follow-up letters these rules will send, as 'templates/NAME: ...'."""
    from pathlib import Path

    from mailbot.letters import Letters
    from mailbot.policy.context import sample_contexts

    templates = Path(templates)
    letters = Letters(templates)
    used: list[tuple[str, str]] = [("reminder", rules.reminders.letter)]
    if rules.reminders.escalate:
        used.append(("escalation", rules.reminders.escalation_letter))
    if rules.holding_letter.letter:
        used.append(("holding letter", rules.holding_letter.letter))
    used.append(("compliment passed on", LETTERS[COMPLIMENT]))
    if any(r.after_outcome for r in rules.reporting):
        used.append(("outcome report", LETTERS[OUTCOME_REPORT]))
    problems = []
    for kind, name in used:
        if not letters.exists(name):
            problems.append(f"{templates / name}: the follow-up {kind} letter {name!r} does not exist "
                            f"(create {name}.subject.j2 and {name}.txt.j2)")
            continue
        try:
            for base in sample_contexts(rules):
                for follow in _sample_follow_ups(rules):
                    letters.render(name, dict(base, follow_up=follow))
        except LetterError as exc:
            problems.append(f"{templates / name}: cannot be written (follow-up {kind}): {exc}")
    if any(r.every for r in rules.reporting):
        from mailbot.reports.data import Report

        name = LETTERS[PERIODIC_REPORT]
        sample = Report(title="Sample report", organisation=rules.organisation.name,
                        start=date(2026, 4, 1), end=date(2026, 7, 1), generated_at=datetime(2026, 7, 1, tzinfo=timezone.utc))
        for rule in (r for r in rules.reporting if r.every):
            try:
                letters.render(name, {"org": rules.organisation, "report": sample, "rule": rule,
                                      "period": sample.period, "to": [rules.role_title(r) for r in rule.to]})
            except LetterError as exc:
                problems.append(f"{templates / name}: cannot be written (follow-up report): {exc}")
                break
    return problems

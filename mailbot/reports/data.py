"""The numbers of a report, computed once from the database; every output (HTML, PDF, CSV, the
mail to the board) shows these same numbers.

What the seed policies ask to be reported: how many complaints and of what nature (000, 002,
004), outcomes and remedial actions (000, 002, 004), timeliness (004), compliments (001, 003),
appeals (000's "CEO will report to board").  Definitions, so a trustee can check a figure:

- *Cases* are those opened in the period (London dates, end exclusive); kind, channel, flags,
  outcome and themes are counted over them.  Outcome is the case's state now, with "upheld",
  "partly upheld" or "not upheld" when the outcome was recorded in those words.
- *Timeliness* covers every time limit (ours, not the complainant's appeal window) whose date
  *first promised* falls in the period: met by that date; met after an extension (by the new
  date); missed (met late, or still outstanding after its date); not yet due; or not applicable
  (the case was withdrawn, stopped or closed before the step was needed).
- *Time to acknowledge / respond*: from the message's arrival to the recorded date, for cases
  opened in the period; median and 90th percentile (nearest rank).
- *Appeals*: requests received in the period (in time, out of time, no further stage) and the
  results of appeal outcomes recorded in it.
- *Remedial actions and lessons learned*: what staff recorded on cases in the period (events
  ``remedial_action`` and ``lesson_learned``, see ``record_action``).

Personal data never appears: cases are shown by reference only, never with a name, an address,
a subject line or a message.  Staff notes are passed through ``scrub`` (addresses, telephone
numbers and the names the database knows are removed) before they are shown.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from mailbot.cases.models import Case, CaseProgress, Deadline, Event, FollowUp, Message, utcnow
from mailbot.policy.calendar import LONDON
from mailbot.policy.rules import FLAGS, Rules

COMPLAINT_KINDS = ("complaint", "appeal", "concern")
DEADLINE_ORDER = ("pass_to_owner", "acknowledge", "respond", "appeal_acknowledge", "appeal_respond")
DEADLINE_LABELS = {"pass_to_owner": "passed to the owner", "acknowledge": "acknowledged",
                   "respond": "responded", "appeal_acknowledge": "appeal acknowledged",
                   "appeal_respond": "appeal answered"}
TIMELINESS = ("met", "met after extension", "missed", "not yet due", "not applicable")
ACTIONS = {"remedial_action": "remedial action", "lesson_learned": "lesson learned"}
APPEAL_EVENTS = {"policy_appeal": "asked for in time", "policy_appeal_late": "asked for too late",
                 "policy_appeal_no_further": "no further stage",
                 "policy_appeal_unmatched": "matched no case",
                 "policy_appeal_before_outcome": "before any outcome"}

# Used when the rules name no [themes]: broad headings most complaints fall under.
DEFAULT_THEMES: dict[str, list[str]] = {
    "Staff conduct": ["rude", "attitude", "unprofessional", "shouted", "disrespectful", "behaviour",
                      "behavior", "manner", "unhelpful", "refused to listen"],
    "Communication": ["nobody told", "not told", "no reply", "never replied", "ignored",
                      "communication", "not informed", "call back", "no notice", "without notice"],
    "Cancellations and timekeeping": ["cancelled", "canceled", "cancellation", "late", "on time",
                                      "waiting", "delay", "delayed", "didn't turn up",
                                      "did not turn up", "didnt turn up", "no-show"],
    "Safety": ["safe", "unsafe", "safety", "injured", "hurt", "bullying", "bullied", "danger",
               "frightened"],
    "Premises": ["building", "toilets", "dirty", "heating", "premises", "parking", "doors",
                 "locked", "wheelchair"],
    "Transport": ["minibus", "bus", "transport", "pick up", "pick-up", "lift"],
    "Money": ["fee", "fees", "charged", "refund", "cost", "money", "invoice", "payment"],
    "Quality of service": ["quality", "poor", "not good enough", "standard", "course", "training",
                           "advice"],
    "Fairness": ["discrimination", "discriminated", "unfair", "racist", "sexist", "excluded"],
}


@dataclass
class Stats:
    n: int = 0
    median: float | None = None
    p90: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stats":
        ordered = sorted(values)
        if not ordered:
            return cls()
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return cls(len(ordered), median, ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)])


@dataclass
class Report:
    title: str
    organisation: str
    start: date
    end: date  # exclusive
    generated_at: datetime
    cases: int = 0
    by_kind: Counter = field(default_factory=Counter)
    by_channel: Counter = field(default_factory=Counter)
    by_outcome: Counter = field(default_factory=Counter)
    flags: Counter = field(default_factory=Counter)
    themes: Counter = field(default_factory=Counter)
    not_accepted: Counter = field(default_factory=Counter)  # mail refused by channel, not a case
    timeliness: dict[str, Counter] = field(default_factory=dict)
    acknowledge_hours: Stats = field(default_factory=Stats)
    respond_days: Stats = field(default_factory=Stats)
    appeal_respond_days: Stats = field(default_factory=Stats)
    appeals: Counter = field(default_factory=Counter)
    appeal_results: dict[int, Counter] = field(default_factory=dict)
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (reference, kind, text)
    compliments: int = 0
    compliments_by_channel: Counter = field(default_factory=Counter)
    compliments_passed_on: int = 0
    open_at_end: int = 0
    weekly: dict[date, Counter] = field(default_factory=dict)
    stage_names: dict[int, str] = field(default_factory=dict)
    feedback: Any = None  # mailbot.reports.compliments.Feedback: consented quotes, survey results

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def period(self) -> str:
        return f"{self.start:%-d %B %Y} to {self.last_day:%-d %B %Y}"

    @property
    def complaints(self) -> int:
        return sum(self.by_kind[k] for k in COMPLAINT_KINDS)

    def timeliness_total(self) -> Counter:
        total: Counter = Counter()
        for counts in self.timeliness.values():
            total.update(counts)
        return total

    def rows(self) -> list[tuple[str, str, str]]:
        """Every number in the report as (section, item, value): the CSV, and what tests check."""
        def num(v: float | None) -> str:
            return "" if v is None else (str(v) if isinstance(v, int) else f"{v:.1f}")

        rows = [("period", "from", self.start.isoformat()), ("period", "to", self.last_day.isoformat()),
                ("cases", "opened", str(self.cases)), ("cases", "complaints", str(self.complaints)),
                ("cases", "still open", str(self.open_at_end))]
        rows += [("kind", k, str(v)) for k, v in sorted(self.by_kind.items())]
        rows += [("channel", k, str(v)) for k, v in sorted(self.by_channel.items())]
        rows += [("not accepted (channel)", k, str(v)) for k, v in sorted(self.not_accepted.items())]
        rows += [("outcome", k, str(v)) for k, v in sorted(self.by_outcome.items())]
        rows += [("flag", k, str(v)) for k, v in sorted(self.flags.items())]
        rows += [("theme", k, str(v)) for k, v in self.themes.most_common()]
        for name in DEADLINE_ORDER:
            if name in self.timeliness:
                rows += [(f"timeliness {name}", t, str(self.timeliness[name][t])) for t in TIMELINESS]
        for label, s in (("acknowledge (hours)", self.acknowledge_hours),
                         ("respond (days)", self.respond_days),
                         ("appeal respond (days)", self.appeal_respond_days)):
            rows += [(f"time to {label}", "cases", str(s.n)), (f"time to {label}", "median", num(s.median)),
                     (f"time to {label}", "90th percentile", num(s.p90))]
        rows += [("appeals", k, str(v)) for k, v in sorted(self.appeals.items())]
        for stage, counts in sorted(self.appeal_results.items()):
            rows += [(f"appeal results stage {stage}", k, str(v)) for k, v in sorted(counts.items())]
        rows += [("compliments", "received", str(self.compliments)),
                 ("compliments", "passed on", str(self.compliments_passed_on))]
        rows += [("compliments by channel", k, str(v)) for k, v in sorted(self.compliments_by_channel.items())]
        rows += [(ACTIONS.get(kind, kind), ref, text) for ref, kind, text in self.actions]
        from mailbot.reports.compliments import feedback_rows

        rows += feedback_rows(self.feedback)
        return rows


# ---------------------------------------------------------------------------------------------


_EMAIL = re.compile(r"[^\s<>@,;:()\[\]]+@[^\s<>@,;:()\[\]]+\.[^\s<>@,;:()\[\]]+")
_PHONE = re.compile(r"(?<!\w)\+?\d[\d ()\-]{7,}\d(?!\w)")


def scrub(text: str, *, names: Iterable[str] = (), addresses: Iterable[str] = ()) -> str:
    """Take personal details out of a staff note before it goes into a report: email addresses,
    telephone numbers, and every name (whole or each part of three letters or more) given."""
    out = _EMAIL.sub("[address removed]", text or "")
    out = _PHONE.sub("[number removed]", out)
    for address in addresses:
        if address:
            out = out.replace(address, "[address removed]")
    words: set[str] = set()
    for name in names:
        name = (name or "").strip()
        if name:
            words.add(name)
            words.update(p for p in re.split(r"[\s,.]+", name) if len(p) >= 3)
    for word in sorted(words, key=len, reverse=True):
        out = re.sub(r"(?<!\w)" + re.escape(word) + r"(?!\w)", "[name removed]", out, flags=re.IGNORECASE)
    return out


def record_action(session: Session, case: Case, actor: str, text: str, *, lesson: bool = False) -> Event:
    """Record a remedial action (or a lesson learned) on a case, for the reports.  Write it
    without names: the report removes the ones it knows, but cannot know every name."""
    event = Event(case_id=case.id, actor=actor, action="lesson_learned" if lesson else "remedial_action",
                  detail=json.dumps({"text": text}))
    session.add(event)
    return event


def _naive(moment: datetime) -> datetime:
    """Query parameter for a time column: aware UTC (sqlmodel's type refuses naive values)."""
    return moment.astimezone(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def london_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LONDON).astimezone(timezone.utc)


def outcome_words(detail: str) -> str:
    """'upheld', 'partly upheld' or 'not upheld' when staff recorded the outcome in such words."""
    try:
        text = str(json.loads(detail or "{}").get("detail", ""))
    except (ValueError, AttributeError):
        text = detail or ""
    text = text.lower()
    if re.search(r"\bnot upheld\b|\bnot up-held\b|\brejected\b", text):
        return "not upheld"
    if re.search(r"\b(partly|partially) upheld\b", text):
        return "partly upheld"
    if re.search(r"\bupheld\b", text):
        return "upheld"
    return "outcome sent"


def outcome_of(case: Case, last_outcome: Event | None) -> str:
    status = case.status
    if status == "withdrawn":
        return "withdrawn"
    if status == "no_response":
        return "no response (policy)"
    if status in ("stopped_legal", "paused_legal"):
        return "legal action"
    if status == "safeguarding":
        return "safeguarding"
    if last_outcome is not None and status in ("outcome_sent", "closed"):
        return outcome_words(last_outcome.detail)
    if status == "closed":
        return "closed"
    return "open"


def themes_of(rules: Rules, text: str) -> list[str]:
    themes = rules.themes or DEFAULT_THEMES
    found = [name for name, words in themes.items()
             if any(re.search(r"(?<!\w)" + re.escape(w) + r"(?!\w)", text, re.IGNORECASE) for w in words)]
    return found or ["other"]


def _case_text(session: Session, case: Case) -> str:
    from mailbot.intake.parse import ParseError, parse

    row = session.exec(select(Message).where(col(Message.case_id) == case.id, col(Message.direction) == "in")
                       .order_by(col(Message.id)).limit(1)).first()
    if row is None:
        return case.subject
    try:
        msg = parse(row.raw)
    except ParseError:
        return case.subject
    return f"{msg.subject}\n{msg.text}"


def _timeliness(d: Deadline, case: Case, progress: CaseProgress | None, as_of: datetime) -> str:
    from mailbot.scheduler import deadline_open

    promised = d.extended_from or d.due_at
    if d.met_at is not None:
        if d.met_at <= promised:
            return "met"
        if d.extended_from is not None and d.met_at <= d.due_at:
            return "met after extension"
        return "missed"
    if deadline_open(d, case, progress):
        return "missed" if d.due_at < as_of else "not yet due"
    return "not applicable"


def _role_names(rules: Rules) -> list[str]:
    return [r.name for r in rules.roles.values() if r.name]


def build_report(session: Session, rules: Rules, start: date, end: date, *,
                 title: str = "Complaints and compliments report", now: datetime | None = None) -> Report:
    """The report for London dates ``start`` (inclusive) to ``end`` (exclusive)."""
    now = now or utcnow()
    t0, t1 = london_midnight(start), london_midnight(end)
    as_of = now  # like outcomes: as things stand on the day the report is made
    report = Report(title=title, organisation=rules.organisation.name, start=start, end=end,
                    generated_at=now,
                    stage_names={i: s.name for i, s in enumerate(rules.complaint.appeals, 1)})
    cases = list(session.exec(select(Case).where(col(Case.opened_at) >= _naive(t0),
                                                 col(Case.opened_at) < _naive(t1))
                              .order_by(col(Case.id))).all())
    ids = [c.id for c in cases]
    progress = {p.case_id: p for p in session.exec(select(CaseProgress).where(
        col(CaseProgress.case_id).in_(ids)))} if ids else {}
    outcomes: dict[int, Event] = {}
    if ids:
        for e in session.exec(select(Event).where(col(Event.case_id).in_(ids),
                                                  col(Event.action) == "outcome_recorded")
                              .order_by(col(Event.id))):
            outcomes[e.case_id] = e
    deadlines_by_case: dict[int, list[Deadline]] = {}
    if ids:
        for d in session.exec(select(Deadline).where(col(Deadline.case_id).in_(ids))):
            deadlines_by_case.setdefault(d.case_id, []).append(d)

    for case in cases:
        report.cases += 1
        report.by_kind[case.kind] += 1
        report.by_channel[case.channel] += 1
        opened = _aware(case.opened_at).astimezone(LONDON).date()
        week = opened - timedelta(days=opened.weekday())
        report.weekly.setdefault(week, Counter())[case.kind] += 1
        if case.kind == "compliment":
            report.compliments += 1
            report.compliments_by_channel[case.channel] += 1
            continue
        if case.kind not in COMPLAINT_KINDS:
            continue
        outcome = outcome_of(case, outcomes.get(case.id))
        report.by_outcome[outcome] += 1
        if outcome == "open":
            report.open_at_end += 1
        for flag in case.flag_list:
            if flag in FLAGS:
                report.flags[flag] += 1
        for theme in themes_of(rules, _case_text(session, case)):
            report.themes[theme] += 1
    ack, resp, appeal_resp = [], [], []
    for case in cases:
        for d in deadlines_by_case.get(case.id, []):
            if d.met_at is None or d.started_at is None:
                continue
            elapsed = (d.met_at - d.started_at).total_seconds()
            if d.name == "acknowledge" and d.stage == 0:
                ack.append(elapsed / 3600)
            elif d.name == "respond" and d.stage == 0:
                resp.append(elapsed / 86400)
            elif d.name == "appeal_respond":
                appeal_resp.append(elapsed / 86400)
    report.acknowledge_hours, report.respond_days = Stats.of(ack), Stats.of(resp)
    report.appeal_respond_days = Stats.of(appeal_resp)

    # timeliness: every time limit first promised for a date in the period, whenever opened
    promised_in = list(session.exec(
        select(Deadline, Case).join(Case, col(Case.id) == col(Deadline.case_id))
        .where(col(Deadline.name).in_(DEADLINE_ORDER),
               or_(and_(col(Deadline.extended_from).is_(None), col(Deadline.due_at) >= t0,
                        col(Deadline.due_at) < t1),
                   and_(col(Deadline.extended_from) >= t0, col(Deadline.extended_from) < t1)))).all())
    extra = {c.id for _, c in promised_in} - set(progress)
    if extra:
        progress.update({p.case_id: p for p in session.exec(select(CaseProgress).where(
            col(CaseProgress.case_id).in_(sorted(extra))))})
    for d, case in promised_in:
        promised = d.extended_from or d.due_at
        if promised is None or not (t0 <= promised < t1):
            continue
        report.timeliness.setdefault(d.name, Counter({t: 0 for t in TIMELINESS}))[
            _timeliness(d, case, progress.get(case.id), as_of)] += 1

    # appeals received, and results of appeal outcomes, in the period
    events = list(session.exec(select(Event, Case).join(Case, col(Case.id) == col(Event.case_id))
                               .where(col(Event.at) >= _naive(t0), col(Event.at) < _naive(t1),
                                      col(Event.action).in_([*APPEAL_EVENTS, "outcome_recorded",
                                                             *ACTIONS, "channel_not_accepted"]))
                               .order_by(col(Event.id))).all())
    known_names = _role_names(rules)
    for event, case in events:
        if event.action in APPEAL_EVENTS:
            report.appeals[APPEAL_EVENTS[event.action]] += 1
        elif event.action == "outcome_recorded":
            try:
                stage = int(json.loads(event.detail or "{}").get("stage", 0))
            except (ValueError, TypeError, AttributeError):
                stage = 0
            if stage >= 1:
                report.appeal_results.setdefault(stage, Counter())[outcome_words(event.detail)] += 1
        elif event.action in ACTIONS:
            try:
                text = str(json.loads(event.detail).get("text", ""))
            except (ValueError, AttributeError):
                text = event.detail or ""
            report.actions.append((case.reference, event.action,
                                   scrub(text, names=[case.complainant_name, *known_names],
                                         addresses=[case.complainant])))
    for event in session.exec(select(Event).where(col(Event.case_id).is_(None),
                                                  col(Event.action) == "channel_not_accepted",
                                                  col(Event.at) >= _naive(t0), col(Event.at) < _naive(t1))):
        try:
            channel = json.loads(event.detail or "{}").get("channel", "unknown")
        except ValueError:
            channel = "unknown"
        report.not_accepted[channel] += 1

    compliment_ids = [c.id for c in cases if c.kind == "compliment"]
    if compliment_ids:
        report.compliments_passed_on = len(session.exec(select(FollowUp.id).where(
            col(FollowUp.kind) == "compliment_passed_on", col(FollowUp.case_id).in_(compliment_ids),
            col(FollowUp.message_id).is_not(None))).all())
    from mailbot.reports.compliments import build_feedback  # consented quotes, survey results

    report.feedback = build_feedback(session, rules, start, end)
    return report


def case_summary(session: Session, rules: Rules, case: Case, stage: int) -> dict:
    """One case for the per-outcome report to the board (000): reference, kind, channel,
    nature, outcome, how each time limit went, and the remedial actions.  No personal data."""
    progress = session.get(CaseProgress, case.id)
    now = utcnow()
    deadlines = session.exec(select(Deadline).where(col(Deadline.case_id) == case.id)
                             .order_by(col(Deadline.id))).all()
    last = session.exec(select(Event).where(col(Event.case_id) == case.id,
                                            col(Event.action) == "outcome_recorded")
                        .order_by(col(Event.id).desc())).first()
    actions = []
    for e in session.exec(select(Event).where(col(Event.case_id) == case.id,
                                              col(Event.action).in_(list(ACTIONS)))
                          .order_by(col(Event.id))):
        try:
            text = str(json.loads(e.detail).get("text", ""))
        except (ValueError, AttributeError):
            text = e.detail or ""
        actions.append(f"{ACTIONS[e.action]}: " + scrub(text, names=[case.complainant_name, *_role_names(rules)],
                                                          addresses=[case.complainant]))
    return {
        "reference": case.reference, "kind": case.kind, "channel": case.channel,
        "opened": f"{_aware(case.opened_at).astimezone(LONDON):%-d %B %Y}",
        "flags": [f for f in case.flag_list if f in FLAGS],
        "themes": themes_of(rules, _case_text(session, case)),
        "outcome": outcome_of(case, last), "stage": stage,
        "stage_name": rules.complaint.appeals[stage - 1].name if 1 <= stage <= len(rules.complaint.appeals) else "first response",
        "deadlines": [{"name": DEADLINE_LABELS.get(d.name, d.name), "rule": d.rule,
                       "result": _timeliness(d, case, progress, now)}
                      for d in deadlines if d.name in DEADLINE_ORDER],
        "actions": actions,
    }

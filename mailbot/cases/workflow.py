"""Route and workflow: what a classified message means for the case book, and the state machine
every case moves through.

Two halves:

- ``decide(...)`` is pure: from the message, its classification, the case it belongs to (if
  any) and the organisation's rules it returns a ``Route`` (open a case / add to a case /
  record only, which letters, which roles are told, which state changes and deadlines).  The
  pipeline does the storing and sending, so a decision can be shown (simulate, replay)
  without side effects.  Policy comes from ``rules/`` only; nothing here knows which
  organisation it runs for.
- The state machine (``MACHINES``, ``transition``) and a small API for staff actions
  (``record_outcome``, ``start_investigation``, ``resume``, ``extend_deadline``).  An illegal
  move raises ``TransitionError`` with a sentence the staff-commands feature can send back
  to the person who asked for it.  Every change of state is an ``Event`` row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from sqlmodel import Session, col, select

from mailbot.cases.models import Case, CaseProgress, Deadline, Event, utcnow
from mailbot.classify import Classification
from mailbot.intake.parse import ParsedMessage
from mailbot.policy.calendar import Calendar
from mailbot.policy.rules import NEVER_ANSWERABLE_CHANNELS, STAFF_ROLE, Duration, Rules

# ---------------------------------------------------------------------------------------------
# States and the machine

RECEIVED, TRIAGE, ACKNOWLEDGED, INVESTIGATING = "received", "triage", "acknowledged", "investigating"
OUTCOME_SENT, APPEAL_RECEIVED, APPEAL_ACKNOWLEDGED = "outcome_sent", "appeal_received", "appeal_acknowledged"
CLOSED, WITHDRAWN, NO_RESPONSE = "closed", "withdrawn", "no_response"
PAUSED_LEGAL, STOPPED_LEGAL, SAFEGUARDING = "paused_legal", "stopped_legal", "safeguarding"
TERMINAL = {CLOSED, WITHDRAWN}

_ALWAYS = {SAFEGUARDING}  # a risk to someone can surface at any point, even after closing
_INTERRUPTS = {SAFEGUARDING, PAUSED_LEGAL, STOPPED_LEGAL, WITHDRAWN, CLOSED}

# complaint-like kinds: a complaint, an appeal that matched no case, a safeguarding concern
COMPLAINT_MACHINE: dict[str, set[str]] = {
    RECEIVED: {TRIAGE, ACKNOWLEDGED, INVESTIGATING, NO_RESPONSE} | _INTERRUPTS,
    TRIAGE: {RECEIVED, ACKNOWLEDGED, INVESTIGATING, NO_RESPONSE} | _INTERRUPTS,
    NO_RESPONSE: {ACKNOWLEDGED, INVESTIGATING, CLOSED} | _ALWAYS,
    ACKNOWLEDGED: {INVESTIGATING, OUTCOME_SENT} | _INTERRUPTS,
    INVESTIGATING: {OUTCOME_SENT} | _INTERRUPTS,
    OUTCOME_SENT: {APPEAL_RECEIVED} | _INTERRUPTS,
    APPEAL_RECEIVED: {APPEAL_ACKNOWLEDGED, INVESTIGATING, OUTCOME_SENT} | _INTERRUPTS,
    APPEAL_ACKNOWLEDGED: {INVESTIGATING, OUTCOME_SENT} | _INTERRUPTS,
    PAUSED_LEGAL: {ACKNOWLEDGED, INVESTIGATING, OUTCOME_SENT, APPEAL_ACKNOWLEDGED, STOPPED_LEGAL,
                   WITHDRAWN, CLOSED} | _ALWAYS,
    STOPPED_LEGAL: {INVESTIGATING, CLOSED} | _ALWAYS,
    SAFEGUARDING: {ACKNOWLEDGED, INVESTIGATING, OUTCOME_SENT, CLOSED},
    WITHDRAWN: {INVESTIGATING, CLOSED} | _ALWAYS,  # staff may continue a serious complaint
    CLOSED: {INVESTIGATING, APPEAL_RECEIVED} | _ALWAYS,
}
# compliments and anything else recorded as a case: thanked, passed on, closed
SIMPLE_MACHINE: dict[str, set[str]] = {
    RECEIVED: {TRIAGE, ACKNOWLEDGED, CLOSED} | _ALWAYS,
    TRIAGE: {RECEIVED, ACKNOWLEDGED, CLOSED} | _ALWAYS,
    ACKNOWLEDGED: {CLOSED} | _ALWAYS,
    SAFEGUARDING: {ACKNOWLEDGED, CLOSED},
    CLOSED: {RECEIVED} | _ALWAYS,
}
MACHINES = {"complaint": COMPLAINT_MACHINE, "appeal": COMPLAINT_MACHINE,
            "concern": COMPLAINT_MACHINE, "compliment": SIMPLE_MACHINE}


class TransitionError(Exception):
    """A state change the procedure does not allow; the message says what is possible instead."""

    def __init__(self, case: Case, to_state: str, allowed: Iterable[str]):
        self.reference, self.from_state, self.to_state = case.reference, case.status, to_state
        self.allowed = sorted(allowed)
        options = ", ".join(self.allowed) or "nothing (it is finished)"
        super().__init__(f"{case.reference} is {case.status!r}: it cannot go to {to_state!r}. "
                         f"From {case.status!r} it can go to: {options}.")


def machine_for(kind: str) -> dict[str, set[str]]:
    return MACHINES.get(kind, SIMPLE_MACHINE)


def allowed_transitions(case: Case) -> set[str]:
    return set(machine_for(case.kind).get(case.status, set()))


def progress_of(session: Session, case: Case) -> CaseProgress:
    for pending in session.new:  # made with the case a moment ago, not yet written
        if isinstance(pending, CaseProgress) and pending.case_id == case.id:
            return pending
    progress = session.get(CaseProgress, case.id)
    if progress is None:
        progress = CaseProgress(case_id=case.id)
        session.add(progress)
    return progress


def transition(session: Session, case: Case, to_state: str, actor: str, detail: str = "",
               *, message_id: int | None = None) -> Event:
    """Move ``case`` to ``to_state`` or raise TransitionError; records an Event either way it
    succeeds.  Closing sets ``closed_at``; reopening clears it."""
    if to_state not in allowed_transitions(case):
        raise TransitionError(case, to_state, allowed_transitions(case))
    before = case.status
    if to_state == PAUSED_LEGAL:
        progress_of(session, case).resume_status = before
    case.status = to_state
    case.closed_at = utcnow() if to_state in TERMINAL else None
    session.add(case)
    event = Event(case_id=case.id, message_id=message_id, actor=actor, action="status_changed",
                  detail=json.dumps({"from": before, "to": to_state, "detail": detail}))
    session.add(event)
    return event


# ---------------------------------------------------------------------------------------------
# Deadlines


@dataclass
class DeadlineSpec:
    name: str  # acknowledge | respond | pass_to_owner | appeal_window | appeal_acknowledge | appeal_respond
    stage: int
    limit: Duration
    met: bool = False  # met by this very step (the bot sent the letter at once)
    window: bool = False  # the complainant's time: runs to the end of the day


def add_deadline(session: Session, case: Case, spec: DeadlineSpec, started: datetime,
                 calendar: Calendar) -> Deadline:
    """Compute the due date once, from the policy's words and the calendar, and store it."""
    due = calendar.due(started, spec.limit, window=spec.window)
    row = Deadline(case_id=case.id, name=spec.name, stage=spec.stage, rule=str(spec.limit),
                   started_at=started, due_at=due, met_at=started if spec.met else None)
    session.add(row)
    return row


def deadlines_of(session: Session, case: Case) -> list[Deadline]:
    if case.id is None:
        return []
    return list(session.exec(select(Deadline).where(col(Deadline.case_id) == case.id)
                             .order_by(col(Deadline.id))).all())


def find_deadline(deadlines: Iterable[Deadline], name: str, stage: int) -> Deadline | None:
    found = [d for d in deadlines if d.name == name and d.stage == stage]
    return found[-1] if found else None


def meet_deadline(session: Session, case: Case, name: str, stage: int,
                  at: datetime | None = None) -> Deadline | None:
    row = find_deadline(deadlines_of(session, case), name, stage)
    if row is not None and row.met_at is None:
        row.met_at = at or utcnow()
        session.add(row)
    return row


def extend_deadline(session: Session, case: Case, name: str, new_due: datetime, actor: str,
                    reason: str, stage: int | None = None) -> Deadline:
    """Staff move a due date (e.g. 000: "let the complainant know why there are delays").
    The first promised date is kept in ``extended_from``."""
    progress = progress_of(session, case)
    wanted_stage = progress.stage if stage is None else stage
    row = find_deadline(deadlines_of(session, case), name, wanted_stage)
    if row is None:
        raise TransitionError(case, f"extend {name}", [d.name for d in deadlines_of(session, case)])
    old = row.due_at
    row.extended_from = row.extended_from or old
    row.due_at = new_due
    session.add(row)
    session.add(Event(case_id=case.id, actor=actor, action="deadline_extended",
                      detail=json.dumps({"deadline": name, "stage": wanted_stage,
                                         "from": old.isoformat() if old else None,
                                         "to": new_due.isoformat(), "reason": reason})))
    return row


# ---------------------------------------------------------------------------------------------
# Staff actions (called by the staff-commands feature; plain functions on one session)


def start_investigation(session: Session, case: Case, actor: str, detail: str = "") -> Event:
    return transition(session, case, INVESTIGATING, actor, detail)


def resume(session: Session, case: Case, actor: str, detail: str = "") -> Event:
    """End a pause for legal action: back to where the case was."""
    progress = progress_of(session, case)
    target = progress.resume_status or INVESTIGATING
    if target not in allowed_transitions(case):
        target = INVESTIGATING
    return transition(session, case, target, actor, detail or "resumed after legal pause")


def record_outcome(session: Session, rules: Rules, case: Case, actor: str, detail: str = "",
                   sent_at: datetime | None = None,
                   calendar: Calendar | None = None) -> Deadline | None:
    """The outcome letter of the current stage went out: meet its respond deadline, and open
    the window for the next appeal stage (or close the case when there is none).

    Returns the appeal-window deadline, if the policy has one."""
    sent_at = sent_at or utcnow()
    calendar = calendar or Calendar.for_rules(rules)
    progress = progress_of(session, case)
    transition(session, case, OUTCOME_SENT, actor, detail)
    meet_deadline(session, case, "respond" if progress.stage == 0 else "appeal_respond",
                  progress.stage, sent_at)
    progress.outcome_at = sent_at
    session.add(progress)
    appeals = rules.complaint.appeals
    next_stage = progress.stage + 1
    session.add(Event(case_id=case.id, actor=actor, action="outcome_recorded",
                      detail=json.dumps({"stage": progress.stage, "detail": detail,
                                         "further_stage": next_stage if next_stage <= len(appeals) else None})))
    if next_stage > len(appeals):
        transition(session, case, CLOSED, "system", "final outcome: no further stage in the policy")
        return None
    window = appeals[next_stage - 1].window
    if window is None:
        return None
    return add_deadline(session, case, DeadlineSpec("appeal_window", next_stage, window, window=True),
                        sent_at, calendar)


# ---------------------------------------------------------------------------------------------
# Routing decision


@dataclass
class Route:
    action: str  # "new_case" | "add_to_case" | "record"
    kind: str | None = None  # kind of a new case
    case: Case | None = None  # the existing case a message belongs to
    status: str = RECEIVED  # status a new case is created in
    letter: str | None = None  # template sent to the sender
    staff_letter: str | None = None  # template sent to staff
    staff_roles: list[str] = field(default_factory=list)  # who gets the staff letter
    event: str = ""
    reasons: list[str] = field(default_factory=list)
    handling: str = "normal"  # what the policy made of it; shown to staff in their letter
    transitions: list[str] = field(default_factory=list)
    deadlines: list[DeadlineSpec] = field(default_factory=list)
    meet: list[tuple[str, int]] = field(default_factory=list)
    stage: int | None = None  # the case's new stage (an accepted appeal)
    owner_role: str | None = None
    substitutions: dict[str, str] = field(default_factory=dict)
    publish: str | None = None


def can_answer(msg: ParsedMessage, cls: Classification) -> tuple[bool, str]:
    if msg.machine_generated:
        return False, f"machine-generated mail ({msg.machine_generated}): never answered"
    if cls.channel in NEVER_ANSWERABLE_CHANNELS or cls.channel == "sms_gateway":
        return False, f"arrived via {cls.channel}: the sender address is a relay"
    if cls.channel == "web_form" and not msg.reply_to:
        return False, "web form relay without a Reply-To address"
    if not msg.reply_address:
        return False, "no sender address to answer"
    return True, ""


def can_reply_to_channel(msg: ParsedMessage, channel: str) -> bool:
    """Whether a short reply can reach the sender of a message from a channel we do not accept:
    an SMS gateway turns a reply into a text; a social-media notification reaches nobody."""
    return (not msg.machine_generated and bool(msg.reply_address)
            and channel not in NEVER_ANSWERABLE_CHANNELS)


def named_roles(rules: Rules, text: str) -> list[str]:
    """Roles whose holder a message names, by the person's name or the role's words."""
    found = []
    for key, role in rules.roles.items():
        words = [w for w in [role.name, *role.known_as] if w.strip()]
        if any(re.search(r"(?<!\w)" + re.escape(w.strip()) + r"(?!\w)", text, re.IGNORECASE)
               for w in words):
            found.append(key)
    return found


def conflict_substitutions(rules: Rules, msg: ParsedMessage) -> dict[str, str]:
    named = set(named_roles(rules, f"{msg.subject}\n{msg.text}"))
    return {r.if_named: r.instead for r in rules.conflict_of_interest if r.if_named in named}


def _sub(roles: Iterable[str], subs: dict[str, str]) -> list[str]:
    """Apply conflict-of-interest replacements; the person named is never told."""
    out = [subs.get(r, r) for r in roles]
    return list(dict.fromkeys(r for r in out if r not in subs))


def _complaint_deadlines(rules: Rules, acknowledged: bool, told_owner: bool) -> list[DeadlineSpec]:
    c = rules.complaint
    specs = []
    if c.pass_to_owner_within:
        specs.append(DeadlineSpec("pass_to_owner", 0, c.pass_to_owner_within, met=told_owner))
    if c.acknowledge_within:
        specs.append(DeadlineSpec("acknowledge", 0, c.acknowledge_within, met=acknowledged))
    if c.respond_within:
        specs.append(DeadlineSpec("respond", 0, c.respond_within))
    return specs


def decide(msg: ParsedMessage, cls: Classification, existing: Case | None,
           rules: Rules | None = None, *, progress: CaseProgress | None = None,
           deadlines: Iterable[Deadline] = (), now: datetime | None = None,
           held_back: str | None = None) -> Route:
    """What to do with ``msg``.  ``held_back``: why no letter may go to the sender now (the
    reply limits); the decision is then the one for a sender we cannot answer, so the case is
    not marked acknowledged and its acknowledgement stays due for staff to see to."""
    rules = rules or Rules()
    now = now or utcnow()
    answerable, why_not = can_answer(msg, cls)
    reasons = [why_not] if why_not else []
    if held_back and answerable:
        answerable = False
        reasons.append(f"no letter to the sender: {held_back}")
    silent = "abusive" in cls.flags and rules.abusive.handling == "no_response"
    if silent:
        reasons.append("abusive: the policy gives no response")
        answerable = False
    if existing is not None:
        return _decide_existing(msg, cls, existing, rules, progress, list(deadlines), now,
                                answerable, reasons)
    if msg.machine_generated or cls.channel == "auto_reply":
        return Route("record", event="machine_mail_recorded", reasons=reasons)
    if "safeguarding" in cls.flags:
        return _new_safeguarding(msg, cls, rules, answerable, reasons)
    if cls.label in ("complaint", "appeal", "withdrawal") and not rules.accepts(cls.channel):
        return _rejected_channel(msg, cls, rules, reasons)
    if cls.label == "complaint":
        return _new_complaint(msg, cls, rules, answerable, reasons)
    if cls.label == "compliment":
        letter = rules.compliment.letter if answerable and not cls.needs_review else None
        return Route("new_case", kind="compliment", status=TRIAGE if cls.needs_review else RECEIVED,
                     letter=letter, transitions=[ACKNOWLEDGED] if letter else [],
                     staff_letter="staff_new_case",
                     staff_roles=rules.compliment.pass_to or [rules.complaint.owner],
                     event="case_opened", reasons=reasons, handling="compliment",
                     publish=rules.compliment.publish, owner_role=rules.complaint.owner)
    if cls.label == "appeal":
        # an appeal we cannot link to its complaint: staff find the case; the sender hears we have it
        stages = rules.complaint.appeals
        letter = stages[0].letter if stages and answerable and not cls.needs_review else None
        reasons.append("appeal that matches no known case: staff to link it to the complaint")
        return Route("new_case", kind="appeal", status=TRIAGE, letter=letter,
                     staff_letter="staff_new_case", staff_roles=[rules.complaint.owner],
                     event="case_opened", reasons=reasons, handling="appeal_unmatched",
                     owner_role=rules.complaint.owner)
    if cls.label == "withdrawal":
        reasons.append("withdrawal that matches no known case: recorded for staff")
        return Route("record", event="unmatched_withdrawal", reasons=reasons)
    return Route("record", event="not_a_case", reasons=reasons)


def _new_safeguarding(msg, cls, rules: Rules, answerable: bool, reasons: list[str]) -> Route:
    """Straight to the safeguarding lead, outside normal complaint handling and deadlines, from
    any channel: a risk of harm outweighs the rule about how complaints must arrive."""
    sg = rules.safeguarding
    kind = cls.label if cls.label in ("complaint", "appeal") else "concern"
    reasons.append("safeguarding: passed at once to the safeguarding lead, outside normal handling")
    return Route("new_case", kind=kind, status=RECEIVED,
                 letter=sg.letter if answerable else None, transitions=[SAFEGUARDING],
                 staff_letter="staff_safeguarding", staff_roles=[sg.lead, *sg.inform],
                 event="case_opened", reasons=reasons, handling="safeguarding", owner_role=sg.lead)


def _rejected_channel(msg, cls, rules: Rules, reasons: list[str]) -> Route:
    policy = rules.intake[cls.channel]
    letter = policy.reply if policy.reply and can_reply_to_channel(msg, cls.channel) else None
    reasons.append(f"{cls.channel} is not an accepted way to complain: recorded, not a case")
    if policy.reply and not letter:
        reasons.append("the sender cannot be answered")
    return Route("record", letter=letter, staff_letter="staff_channel_rejected",
                 staff_roles=policy.notify or [rules.complaint.owner], event="channel_not_accepted",
                 reasons=reasons, handling="channel_rejected")


def _new_complaint(msg, cls, rules: Rules, answerable: bool, reasons: list[str]) -> Route:
    c = rules.complaint
    subs = conflict_substitutions(rules, msg)
    if subs:
        reasons.append("conflict of interest: " + ", ".join(f"{a} named, {b} instead" for a, b in subs.items()))
    owner = subs.get(c.owner, c.owner)
    staff = _sub([c.owner, c.investigated_by, *c.inform], subs)
    route = Route("new_case", kind="complaint", status=TRIAGE if cls.needs_review else RECEIVED,
                  staff_letter="staff_new_case", event="case_opened", reasons=reasons,
                  owner_role=owner, substitutions=subs)
    no_response = []
    if "abusive" in cls.flags and rules.abusive.handling == "no_response":
        no_response.append(("abusive", rules.abusive.notify))
    if "anonymous" in cls.flags and rules.anonymous.handling == "no_response":
        no_response.append(("anonymous", rules.anonymous.notify))
        reasons.append("anonymous: the policy gives no response")
    if no_response:
        route.handling = "no_response_" + no_response[0][0]
        route.transitions = [NO_RESPONSE]
        route.staff_roles = _sub(staff + [r for _, notify in no_response for r in notify], subs)
        return route
    if "anonymous" in cls.flags:
        staff += rules.anonymous.notify
        route.handling = "anonymous_considered"
    if "abusive" in cls.flags:
        staff += rules.abusive.notify  # answered as usual, but someone senior knows
    if cls.needs_review:
        reasons.append(f"confidence {cls.confidence:.2f} is low: staff triage before any reply")
        answerable = False
    legal = rules.legal_action
    if "legal" in cls.flags and legal.handling != "continue":
        route.handling = f"legal_{legal.handling}"
        route.letter = (legal.letter or c.acknowledgement_letter) if answerable else None
        route.transitions = [PAUSED_LEGAL if legal.handling == "pause" else STOPPED_LEGAL]
        route.staff_roles = _sub(staff + legal.notify, subs)
        specs = _complaint_deadlines(rules, route.letter is not None, True)
        route.deadlines = [s for s in specs if legal.handling == "pause" or s.name != "respond"]
        reasons.append(f"legal action mentioned: the policy says {legal.handling} the investigation")
        return route
    if "legal" in cls.flags:
        staff += legal.notify
    route.letter = c.acknowledgement_letter if answerable else None
    if route.letter:
        route.transitions = [ACKNOWLEDGED]
    route.staff_roles = _sub(staff, subs)
    route.deadlines = _complaint_deadlines(rules, route.letter is not None, True)
    return route


def _decide_existing(msg, cls, case: Case, rules: Rules, progress: CaseProgress | None,
                     deadlines: list[Deadline], now: datetime, answerable: bool,
                     reasons: list[str]) -> Route:
    subs = json.loads(progress.substitutions) if progress and progress.substitutions else {}
    owner = (progress.owner_role if progress and progress.owner_role else rules.complaint.owner)
    route = Route("add_to_case", case=case, staff_letter="staff_case_update", staff_roles=[owner],
                  event=f"{cls.label}_received", reasons=reasons)
    from_complainant = msg.reply_address == case.complainant or msg.from_addr == case.complainant
    if not from_complainant:
        route.reasons.append("sender is not the complainant of record: nothing sent to them")
        answerable = False
    complaint_like = machine_for(case.kind) is COMPLAINT_MACHINE

    if "safeguarding" in cls.flags and case.status != SAFEGUARDING:
        sg = rules.safeguarding
        route.handling = "safeguarding"
        route.transitions = [SAFEGUARDING]
        route.staff_letter = "staff_safeguarding"
        route.staff_roles = [sg.lead, *sg.inform]
        route.reasons.append("safeguarding signs on an existing case: passed to the safeguarding lead")
        return route

    legal = rules.legal_action
    if ("legal" in cls.flags and complaint_like and legal.handling != "continue"
            and case.status not in (PAUSED_LEGAL, STOPPED_LEGAL, *TERMINAL)):
        target = PAUSED_LEGAL if legal.handling == "pause" else STOPPED_LEGAL
        if target in allowed_transitions(case):
            route.handling = f"legal_{legal.handling}"
            route.transitions = [target]
            route.letter = legal.letter if answerable else None
            route.staff_roles = _sub([owner, *legal.notify], subs)
            route.reasons.append(f"legal action mentioned: the policy says {legal.handling} the investigation")
            return route
    elif "legal" in cls.flags:
        route.staff_roles = _sub([owner, *legal.notify], subs)

    if cls.label == "appeal" and from_complainant and case.kind == "complaint":
        return _appeal(route, case, rules, progress, deadlines, now, answerable, subs)
    if cls.label == "withdrawal" and from_complainant and complaint_like and case.status not in TERMINAL:
        return _withdrawal(route, case, cls, rules, answerable, owner, subs)
    return route


def _appeal(route: Route, case: Case, rules: Rules, progress: CaseProgress | None,
            deadlines: list[Deadline], now: datetime, answerable: bool, subs: dict[str, str]) -> Route:
    stages = rules.complaint.appeals
    if progress is None or progress.outcome_at is None or case.status not in (OUTCOME_SENT, CLOSED):
        route.handling = "appeal_before_outcome"
        route.reasons.append("asks for a review before any outcome was sent: passed to staff")
        return route
    number = progress.stage + 1
    if number > len(stages):
        route.handling = "appeal_no_further"
        route.letter = rules.complaint.no_further_appeal_letter if answerable else None
        route.reasons.append("the policy has no further stage after this outcome")
        return route
    stage = stages[number - 1]
    window = find_deadline(deadlines, "appeal_window", number)
    route.staff_roles = _sub([stage.reviewer, *stage.inform], subs)
    if window is not None and window.due_at is not None and now > window.due_at:
        route.handling = "appeal_late"
        route.letter = stage.late_letter if answerable else None
        route.reasons.append(f"{stage.name} asked for after its window ({window.rule}) closed")
        return route
    route.handling = "appeal"
    route.stage = number
    route.owner_role = subs.get(stage.reviewer, stage.reviewer)
    route.letter = stage.letter if answerable else None
    route.transitions = [APPEAL_RECEIVED] + ([APPEAL_ACKNOWLEDGED] if route.letter else [])
    route.meet = [("appeal_window", number)] if window is not None else []
    if stage.acknowledge_within:
        route.deadlines.append(DeadlineSpec("appeal_acknowledge", number, stage.acknowledge_within,
                                            met=route.letter is not None))
    if stage.respond_within:
        route.deadlines.append(DeadlineSpec("appeal_respond", number, stage.respond_within))
    route.reasons.append(f"{stage.name} (stage {number}) asked for in time")
    return route


def _withdrawal(route: Route, case: Case, cls: Classification, rules: Rules, answerable: bool,
                owner: str, subs: dict[str, str]) -> Route:
    w = rules.withdrawal
    route.staff_roles = _sub([owner, *w.notify], subs)
    keep = sorted((set(case.flag_list) | set(cls.flags)) & set(w.keep_open_flags))
    if case.status == SAFEGUARDING and "safeguarding" not in keep:
        keep.append("safeguarding")
    if not w.allowed or keep:
        route.handling = "withdrawal_kept_open"
        route.letter = w.kept_open_letter if answerable else None
        route.reasons.append("withdrawal asked for, but the policy keeps this case open"
                             + (f" ({', '.join(keep)})" if keep else ""))
        return route
    route.handling = "withdrawn"
    route.transitions = [WITHDRAWN]
    route.letter = w.letter if answerable else None
    return route


__all__ = [
    "Route", "DeadlineSpec", "TransitionError", "decide", "transition", "record_outcome",
    "start_investigation", "resume", "extend_deadline", "add_deadline", "meet_deadline",
    "deadlines_of", "progress_of", "allowed_transitions", "machine_for", "can_answer",
]


def update_progress(progress: CaseProgress, route: Route) -> None:
    """Write what a decision says about the case's place in the procedure onto its progress
    row (shared by the pipeline and by the dry-run plan, so both read a route the same way)."""
    if route.owner_role:
        progress.owner_role = route.owner_role
    if route.substitutions:
        progress.substitutions = json.dumps(route.substitutions, sort_keys=True)
    if route.publish:
        progress.publish = route.publish
    if route.stage is not None:
        progress.stage = route.stage

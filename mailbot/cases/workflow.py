"""Route: decide what a classified message means for the case book.  Deciding only; the
pipeline does the storing and sending, so a decision can be shown (simulate, replay) without
side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailbot.cases.models import Case
from mailbot.classify import Classification
from mailbot.intake.parse import ParsedMessage

# Channels whose sender address is a relay, not a person we can write to.
UNANSWERABLE_CHANNELS = {"sms_gateway", "social_media", "auto_reply"}

NEW_CASE_LETTER = {
    "complaint": "acknowledgement",
    "compliment": "thank_you",
    "appeal": "appeal_acknowledgement",
}


@dataclass
class Route:
    action: str  # "new_case" | "add_to_case" | "record"
    kind: str | None = None  # kind of a new case
    case: Case | None = None  # the existing case a message belongs to
    status: str = ""
    letter: str | None = None  # template sent to the sender
    staff_letter: str | None = None  # template sent to staff
    event: str = ""
    reasons: list[str] = field(default_factory=list)


def can_answer(msg: ParsedMessage, cls: Classification) -> tuple[bool, str]:
    if msg.machine_generated:
        return False, f"machine-generated mail ({msg.machine_generated}): never answered"
    if cls.channel in UNANSWERABLE_CHANNELS:
        return False, f"arrived via {cls.channel}: the sender address is a relay"
    if cls.channel == "web_form" and not msg.reply_to:
        return False, "web form relay without a Reply-To address"
    if not msg.reply_address:
        return False, "no sender address to answer"
    if "anonymous" in cls.flags and not msg.reply_address:
        return False, "anonymous"
    return True, ""


def decide(msg: ParsedMessage, cls: Classification, existing: Case | None) -> Route:
    answerable, why_not = can_answer(msg, cls)
    reasons = [why_not] if why_not else []

    if existing is not None:
        route = Route("add_to_case", case=existing, staff_letter="staff_case_update",
                      event=f"{cls.label}_received", reasons=reasons)
        from_complainant = msg.reply_address == existing.complainant or msg.from_addr == existing.complainant
        if not from_complainant:
            route.reasons.append("sender is not the complainant of record: nothing sent to them")
        elif answerable and cls.label == "appeal" and existing.kind == "complaint":
            route.letter = "appeal_acknowledgement"
        elif answerable and cls.label == "withdrawal" and existing.kind == "complaint":
            route.letter = "withdrawal_acknowledgement"
        return route

    if msg.machine_generated or cls.channel == "auto_reply":
        return Route("record", event="machine_mail_recorded", reasons=reasons)
    if cls.label in NEW_CASE_LETTER:
        letter = NEW_CASE_LETTER[cls.label] if answerable else None
        if cls.needs_review:
            letter = None
            reasons.append(f"confidence {cls.confidence:.2f} is low: staff triage before any reply")
        status = "triage" if cls.needs_review else ("acknowledged" if letter else "received")
        return Route("new_case", kind=cls.label, status=status, letter=letter,
                     staff_letter="staff_new_case", event="case_opened", reasons=reasons)
    if cls.label == "withdrawal":
        reasons.append("withdrawal that matches no known case: recorded for staff")
        return Route("record", staff_letter=None, event="unmatched_withdrawal", reasons=reasons)
    return Route("record", event="not_a_case", reasons=reasons)

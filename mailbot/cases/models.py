"""The database is the source of truth: cases, every message in and out, and the audit trail.

Times are timezone-aware UTC (SQLModel stores them as UTC on every database); ``utcnow()`` is
the one clock, so scenario tests can control it.  Inbound messages carry a unique ``dedupe_key``: the database itself refuses a
second copy of the same mail, which is what makes handling exactly-once across restarts and
across several daemons.  Outbound messages are the outbox: written in the same transaction as
the case change that causes them and delivered afterwards.
"""

from __future__ import annotations

import json

from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import Column, DateTime, Index, LargeBinary, Text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

_clock_override: list[datetime] = []


def utcnow() -> datetime:
    """Current time in UTC, timezone-aware (overridable for scenario tests).  An override given
    in another zone (tests write London time) is returned in UTC too, so what is hashed into the
    audit chain when an event is written is what is read back to verify it."""
    if _clock_override:
        return _clock_override[-1].astimezone(timezone.utc)
    return datetime.now(timezone.utc)


class Case(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    reference: str = Field(index=True, unique=True)
    kind: str  # complaint | compliment | appeal | withdrawal | other
    status: str
    complainant: str = Field(index=True)  # address replies go to
    complainant_name: str = ""
    subject: str = ""
    channel: str = "email"
    flags: str = ""  # comma-separated, e.g. "safeguarding,legal"
    confidence: float = 1.0
    needs_review: bool = False
    opened_at: datetime = Field(default_factory=utcnow)
    closed_at: Optional[datetime] = None

    @property
    def flag_list(self) -> list[str]:
        return [f for f in self.flags.split(",") if f]


class Message(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    case_id: Optional[int] = Field(default=None, foreign_key="case.id", index=True)
    direction: str  # "in" | "out"
    dedupe_key: Optional[str] = Field(default=None, unique=True)
    message_id: Optional[str] = Field(default=None, index=True)
    in_reply_to: str = ""
    references: str = Field(default="", sa_column=Column(Text, default=""))
    sender: str = ""
    recipients: str = ""  # comma-separated envelope recipients
    subject: str = ""
    at: datetime = Field(default_factory=utcnow)
    source: str = ""  # where it came from, e.g. "imap:INBOX:1234567:42"
    outcome: str = ""  # what the pipeline did with an inbound message
    reason: str = ""
    label: str = ""
    classification: str = Field(default="", sa_column=Column(Text, default=""))
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # outbox fields (direction == "out")
    purpose: str = ""  # acknowledgement | thank_you | staff_new_case | ...
    delivery: str = ""  # queued | sent | failed
    attempts: int = 0
    next_attempt_at: Optional[datetime] = None
    sent_at: Optional[datetime] = None
    last_error: str = ""

    __table_args__ = (
        Index("ix_message_delivery", "direction", "delivery"),
        # the reply limits (rules [limits]) count recent letters, per address and in all
        Index("ix_message_recipient_at", "direction", "recipients", "at"),
        Index("ix_message_direction_at", "direction", "at"),
    )


class Event(SQLModel, table=True):
    """Append-only audit trail: who did what to which case, and when."""

    id: Optional[int] = Field(default=None, primary_key=True)
    case_id: Optional[int] = Field(default=None, foreign_key="case.id", index=True)
    message_id: Optional[int] = Field(default=None, foreign_key="message.id")
    at: datetime = Field(default_factory=utcnow)
    actor: str  # "system", a staff address, or the complainant's address
    action: str
    detail: str = Field(default="", sa_column=Column(Text, default=""))
    # tamper evidence (see mailbot/audit.py): set automatically when the row is inserted
    prev_hash: str = ""
    hash: str = ""
    # digest of actor + detail: the chain covers it, so personal data can later be erased from
    # actor/detail (retention, erasure requests) without breaking the chain
    content_digest: str = ""

    @property
    def detail_fields(self) -> dict:
        """``detail`` read as the JSON object most events write; {} for plain text or erased."""
        try:
            value = json.loads(self.detail or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class Counter(SQLModel, table=True):
    """Registration-number sequences, one row per prefix and year; locked while a case is made."""

    name: str = Field(primary_key=True)
    value: int = 0


class UTCDateTime(TypeDecorator):
    """A moment stored as naive UTC and read back timezone-aware, on SQLite and PostgreSQL
    alike, so due dates compare with ``utcnow()`` without surprises."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


def _moment(nullable: bool = True):
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


class Deadline(SQLModel, table=True):
    """A time limit the policy promises, computed once when its clock starts and then kept.

    ``name``: acknowledge | respond | pass_to_owner (stage 0, the complaint itself) or
    appeal_window | appeal_acknowledge | appeal_respond (stage 1, 2, ...: the appeal stages).
    ``rule`` is the policy's own words ("28 working days"), kept for the record.  An extension
    keeps the original date in ``extended_from``: a date once promised is never silently moved.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    name: str
    stage: int = 0
    rule: str = ""
    started_at: Optional[datetime] = _moment()
    due_at: Optional[datetime] = _moment()
    met_at: Optional[datetime] = _moment()
    extended_from: Optional[datetime] = _moment()
    created_at: Optional[datetime] = Field(default_factory=utcnow,
                                           sa_column=Column(UTCDateTime(), nullable=True))


class CaseAssignee(SQLModel, table=True):
    """The member of staff a case is assigned to by email (``#assign``, mailbot.staffmail): they
    are told, and get the case's updates besides the roles the policy names.  A table of its
    own so that databases created before it need no migration; the history is in Events."""

    case_id: int = Field(foreign_key="case.id", primary_key=True)
    address: str
    assigned_by: str = ""
    assigned_at: Optional[datetime] = _moment()


class CaseProgress(SQLModel, table=True):
    """Where a case stands in its policy's procedure, beside ``Case.status`` (a separate table so
    that databases created before it need no migration).

    ``stage``: 0 while the complaint itself is handled, N once appeal stage N is under way.
    ``substitutions``: conflict-of-interest replacements for this case, JSON {"ceo": "chair"}.
    ``resume_status``: where a case paused for legal action goes back to.
    """

    case_id: int = Field(foreign_key="case.id", primary_key=True)
    stage: int = 0
    owner_role: str = ""
    substitutions: str = ""
    resume_status: str = ""
    publish: str = ""  # compliments: never | anonymised | with_permission
    outcome_at: Optional[datetime] = _moment()


class FollowUp(SQLModel, table=True):
    """One follow-up the scheduler carried out (a reminder, an escalation, a holding letter, a
    report, a case closed when its appeal window ran out, ...).

    ``key`` is unique and says exactly what was done: kind, case, deadline, offset and the due
    date it was for (an extended deadline is a new promise, so its reminders count again).  The
    row is written in the same transaction as the outbox letter it causes, so a sweep that runs
    twice, late, or in two places at once does each follow-up exactly once: the second insert
    is refused by the database and its letter rolled back with it (see mailbot/scheduler.py).
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=300)
    kind: str  # reminder | escalation | holding_letter | window_closed | outcome_report | ...
    case_id: Optional[int] = Field(default=None, foreign_key="case.id", index=True)
    deadline_id: Optional[int] = Field(default=None, foreign_key="deadline.id")
    offset: str = ""  # "2 working days" (before), "update 2", a report period, ...
    planned_at: Optional[datetime] = _moment()  # when it was due to happen
    done_at: Optional[datetime] = _moment()
    message_id: Optional[int] = Field(default=None, foreign_key="message.id")
    detail: str = Field(default="", sa_column=Column(Text, default=""))


class Compliment(SQLModel, table=True):
    """What a compliment praises and whether its sender lets us quote it (mailbot.feedback).
    A table of its own so that databases created before it need no migration; every change of
    consent is also an Event on the case.

    ``praised``: JSON list of {"kind": "person" | "team" | "role", "name": ...} recognised in it.
    ``consent``: "" (not asked: the policy never publishes), "asked", "yes" or "no"; only "yes"
    puts the words (anonymised) on the compliments board and in reports."""

    case_id: int = Field(foreign_key="case.id", primary_key=True)
    praised: str = Field(default="", sa_column=Column(Text, default=""))
    consent: str = ""
    consent_asked_at: Optional[datetime] = _moment()
    consent_at: Optional[datetime] = _moment()
    consent_message_id: Optional[int] = Field(default=None, foreign_key="message.id")


class Survey(SQLModel, table=True):
    """The one satisfaction survey a person is sent (mailbot.feedback).  ``person`` is a digest of
    their address and is unique: the row is written in the same transaction as the outbox letter,
    so a sweep that runs twice, or in two daemons, surveys nobody twice."""

    id: Optional[int] = Field(default=None, primary_key=True)
    person: str = Field(unique=True, max_length=64)
    case_id: int = Field(foreign_key="case.id", index=True)
    trigger: str = ""  # closed | appeal_outcome
    sent_at: Optional[datetime] = _moment()
    message_id: Optional[int] = Field(default=None, foreign_key="message.id")  # the survey letter
    answered_at: Optional[datetime] = _moment()
    answer_message_id: Optional[int] = Field(default=None, foreign_key="message.id")
    rating: str = ""  # a word of the policy's scale, "" when the answer gave none
    score: Optional[int] = None  # 1 (worst) .. len(scale) (best)
    comment: str = Field(default="", sa_column=Column(Text, default=""))

"""The database is the source of truth: cases, every message in and out, and the audit trail.

Times are timezone-aware UTC (SQLModel stores them as UTC on every database); ``utcnow()`` is
the one clock, so scenario tests can control it.  Inbound messages carry a unique ``dedupe_key``: the database itself refuses a
second copy of the same mail, which is what makes handling exactly-once across restarts and
across several daemons.  Outbound messages are the outbox: written in the same transaction as
the case change that causes them and delivered afterwards.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import Column, Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

_clock_override: list[datetime] = []


def utcnow() -> datetime:
    """Current time in UTC, timezone-aware (overridable for scenario tests)."""
    if _clock_override:
        return _clock_override[-1]
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

    __table_args__ = (Index("ix_message_delivery", "direction", "delivery"),)


class Event(SQLModel, table=True):
    """Append-only audit trail: who did what to which case, and when."""

    id: Optional[int] = Field(default=None, primary_key=True)
    case_id: Optional[int] = Field(default=None, foreign_key="case.id", index=True)
    message_id: Optional[int] = Field(default=None, foreign_key="message.id")
    at: datetime = Field(default_factory=utcnow)
    actor: str  # "system", a staff address, or the complainant's address
    action: str
    detail: str = Field(default="", sa_column=Column(Text, default=""))


class Counter(SQLModel, table=True):
    """Registration-number sequences, one row per prefix and year; locked while a case is made."""

    name: str = Field(primary_key=True)
    value: int = 0

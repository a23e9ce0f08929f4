"""Registration numbers and case lookup.

A number is taken from a counter row in the *same* transaction that creates the case: if the
case is rolled back, so is the number, which keeps the sequence gap-free.  On PostgreSQL the
``UPDATE ... RETURNING`` takes a row lock, so two daemons queue for the next number instead
of both getting it; on SQLite the whole transaction already holds the write lock.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from mailbot.cases.models import Case, Counter, Message
from mailbot.policy.rules import ReferenceRules


def next_reference(session: Session, rules: ReferenceRules, year: int) -> str:
    name = f"{rules.format}|{year}"
    made = session.info.setdefault("counters_made", set())  # skip the insert after the first
    seq = _take(session, name) if name in made else None
    if seq is None:  # first number of the year, or a savepoint rolled the counter row back
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(insert(Counter).values(name=name, value=0).on_conflict_do_nothing())
        made.add(name)
        seq = _take(session, name)
    return rules.make(year, seq)


def _take(session: Session, name: str) -> int | None:
    return session.execute(
        update(Counter).where(col(Counter.name) == name).values(value=Counter.value + 1)
        .returning(Counter.value)
    ).scalar_one_or_none()


def case_by_reference(session: Session, reference: str | None) -> Case | None:
    if not reference:
        return None
    return session.exec(select(Case).where(col(Case.reference) == reference.upper())).first()


def case_by_thread(session: Session, message_ids: list[str]) -> Case | None:
    """The case a reply belongs to, from In-Reply-To/References pointing at one of its messages."""
    if not message_ids:
        return None
    row = session.exec(
        select(Message.case_id).where(col(Message.message_id).in_(message_ids[-50:]),
                                      col(Message.case_id).is_not(None))
        .order_by(col(Message.id).desc())
    ).first()
    return session.get(Case, row) if row else None

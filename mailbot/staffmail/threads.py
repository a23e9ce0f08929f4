"""Which case a message belongs to.

In order, as people actually reply:

1. the case tag in the subject (``[CMP-2026-00042]``, in the format of the rules' ``[reference]``),
   wherever it stands: after any number of ``RE:``/``AW:``/``FW:``/``SV:``/``WG:`` prefixes and
   Outlook's ``[EXTERNAL]`` banners, in any letter case, with or without the brackets.  The
   first tag that names a case we have wins; a tag for a case we do not have is passed over;
2. In-Reply-To/References pointing at any message of a case (one we received or one we sent),
   for clients that drop or rewrite the subject;
3. a reference written in the text (new or quoted), e.g. "my complaint CMP-2026-00042".

A message that matches none of these is new.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from mailbot.cases import registry
from mailbot.cases.models import Case
from mailbot.intake.parse import ParsedMessage
from mailbot.policy.rules import Rules


def references_in(rules: Rules, text: str) -> list[str]:
    return [m.group(0).upper() for m in rules.reference.pattern().finditer(text or "")]


def case_by_reference(session: Session, reference: str | None) -> Case | None:
    """Like ``registry.case_by_reference``, but also for formats with lower-case letters."""
    if not reference:
        return None
    found = registry.case_by_reference(session, reference)
    if found is not None:
        return found
    return session.exec(select(Case).where(func.upper(col(Case.reference)) == reference.upper())).first()


def case_from_subject(session: Session, rules: Rules, subject: str) -> Case | None:
    for reference in dict.fromkeys(references_in(rules, subject)):
        case = case_by_reference(session, reference)
        if case is not None:
            return case
    return None


def find_case(session: Session, rules: Rules, msg: ParsedMessage,
              text_reference: str | None = None) -> Case | None:
    """The case ``msg`` belongs to, or None when it is new.  ``text_reference``: a reference the
    classifier found in the text (``Classification.reference``)."""
    return (case_from_subject(session, rules, msg.subject)
            or registry.case_by_thread(session, msg.thread_ids)
            or case_by_reference(session, text_reference))

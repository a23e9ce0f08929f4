"""``mailbot templates preview NAME [--case REF]``: a letter as it would be written, so an
admin can check the wording of a change before any complainant reads it.

With ``--case`` the letter is written for a real case (its complainant, dates, stage, deadlines
as stored); without, for the sample case ``mailbot rules check`` uses.  The same
``build_context`` as real letters, so what previews is what will be sent.
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, col, select

from mailbot.admin.plan import aware, detached
from mailbot.cases.models import CaseProgress, Message
from mailbot.cases.workflow import deadlines_of
from mailbot.intake.parse import ParseError, parse
from mailbot.letters import Letter, Letters
from mailbot.policy.context import CommandView, build_context, sample_contexts
from mailbot.policy.rules import Rules


class PreviewError(Exception):
    pass


def case_context(session: Session, rules: Rules, reference: str, handling: str = "normal",
                 text: str = "") -> dict[str, Any]:
    """The context a letter about this stored case would get (read only)."""
    from mailbot.staffmail.threads import case_by_reference

    stored = case_by_reference(session, reference)
    if stored is None:
        raise PreviewError(f"no case with reference {reference}")
    case = detached(stored)  # copies: the letter is written after the read-only session ends
    progress = detached(session.get(CaseProgress, case.id))
    first = session.exec(select(Message).where(col(Message.case_id) == case.id, col(Message.direction) == "in")
                         .order_by(col(Message.id))).first()
    body, sender_name, sender_addr = "", case.complainant_name, case.complainant
    if first is not None and first.raw:
        try:
            msg = parse(first.raw)
            body, sender_name, sender_addr = msg.text, msg.from_name or sender_name, msg.from_addr or sender_addr
        except ParseError:
            pass
    subs = json.loads(progress.substitutions) if progress and progress.substitutions else {}
    return build_context(
        rules, case=case, sender_name=sender_name, sender_addr=sender_addr, subject=case.subject,
        body=body, label=case.kind, channel=case.channel, flags=case.flag_list,
        confidence=case.confidence, needs_review=case.needs_review, received=aware(case.opened_at),
        acknowledged=True, handling=handling,
        deadlines=[detached(d) for d in deadlines_of(session, stored)],
        stage=progress.stage if progress else 0, substitutions=subs,
        owner_role=progress.owner_role if progress and progress.owner_role else None,
        staff_roles=[rules.complaint.owner], reasons=[], publish=progress.publish if progress else "",
        command=CommandView(text=text) if text else None)


def sample_context(rules: Rules, handling: str | None = None, text: str = "") -> dict[str, Any]:
    """The sample case of ``rules check`` (an appeal stage with all its deadlines)."""
    context = dict(sample_contexts(rules)[0])
    if handling:
        context["handling"] = handling
    if text:
        context["command"] = CommandView(**{**vars(context["command"]), "text": text})
    return context


def render(letters: Letters, name: str, context: dict[str, Any]) -> Letter:
    if not letters.exists(name):
        raise PreviewError(f"there is no letter {name!r} in {letters.directory} (its files are "
                           f"{name}.subject.j2 and {name}.txt.j2)")
    return letters.render(name, context)

"""A case worked entirely from Outlook, through a real Dovecot mailbox and a real SMTP server.

Complaint in -> staff #assign -> #note -> #extend -> #outcome -> the complainant asks for a
review -> #outcome -> closed, with a stranger writing into the thread and a forged command on
the way.  Each step checks exactly which letters went to whom and the state the policy expects:
once with the default rules/ (roles without addresses, so staff mail goes to [staff] notify,
and the trusted mail server set in config.toml), once with the childrens-services-004 preset
(two appeal stages, the trusted server set in the rules' staff.toml).  The daemon runs in this
process so the test's clock is the clock of the pipeline and the calendar.
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime

import pytest
from sqlmodel import col, select

from mailbot import audit
from mailbot.app import App
from mailbot.cases import models
from mailbot.cases.models import Case, CaseAssignee, Event
from mailbot.daemon import Daemon
from tests.mailkit import REPO, write_config
from tests.policy_story import LONDON, london
from tests.staff_story import MX, Mail, outlook, quote, verified

COMPLAINT = ("I want to make a formal complaint. The Thursday youth club session was cancelled for "
             "the third week running and nobody told the parents. This is not good enough and I "
             "expect an explanation.")
APPEAL = ("I am not satisfied with the outcome of my complaint and I would like to appeal. Please "
          "pass it to someone more senior for a review of the outcome.")


class Conversation:
    """One mailbox (Dovecot), one SMTP capture, one organisation's rules; ``send`` delivers a
    message over IMAP, runs the daemon once and returns what it sent."""

    def __init__(self, tmp_path, dovecot, smtp, db_url, *, preset: str | None, staff_toml: str,
                 config_extra: str = ""):
        rules = tmp_path / "rules"
        shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
        if preset:
            for path in (REPO / "rules" / "presets" / preset).glob("*.toml"):
                shutil.copy(path, rules / path.name)
        (rules / "staff.toml").write_text(staff_toml)
        config = write_config(tmp_path, db_url=db_url, dovecot=dovecot, smtp=smtp, rules=rules,
                              staff=["team@example.org"], extra=config_extra)
        self.dovecot, self.smtp, self.app = dovecot, smtp, App.load(config)

    def at(self, when: datetime) -> "Conversation":
        models._clock_override[:] = [when]
        return self

    def send(self, raw: bytes) -> list[Mail]:
        self.dovecot.append(raw)
        self.smtp.clear()
        daemon = Daemon(self.app)
        try:
            report = daemon.run_once()
        finally:
            daemon.close()
        assert [o.destination for o in report.outcomes] == ["processed"], report.outcomes
        self.outcome = report.outcomes[0]
        if report.sent:
            self.smtp.wait_for(report.sent)
        return [Mail(m) for m in self.smtp.messages]

    def case(self, reference: str) -> Case:
        with self.app.db.session() as s:
            return s.exec(select(Case).where(col(Case.reference) == reference)).one()

    def latest(self) -> Case:
        with self.app.db.session() as s:
            return s.exec(select(Case).order_by(col(Case.id).desc())).first()

    def due(self, reference: str, name: str, stage: int = 0) -> datetime:
        from mailbot.cases.workflow import deadlines_of, find_deadline

        with self.app.db.session() as s:
            row = find_deadline(deadlines_of(s, self.case(reference)), name, stage)
            return row.due_at.astimezone(LONDON)

    def events(self, reference: str) -> list[tuple[str, str]]:
        with self.app.db.session() as s:
            case_id = self.case(reference).id
            return [(e.action, e.actor) for e in s.exec(select(Event).where(col(Event.case_id) == case_id)
                                                         .order_by(col(Event.id))).all()]

    def close(self) -> None:
        models._clock_override.clear()
        self.app.close()


def letters(sent: list[Mail]) -> list[tuple[tuple[str, ...], str]]:
    """(recipients, subject) of each letter, in a stable order, for exact comparison (the
    classifier's label in a staff update's subject is its business, not this test's)."""
    return sorted((tuple(sorted(m.to)), re.sub(r"on this case \(\w+\)", "on this case (...)", m.subject))
                  for m in sent)


def staff_reply(conv: Conversation, sender: str, answering: Mail, body: str, *, subject_add: str = "",
                html_only: bool = False, auth: str | None = "verified") -> list[Mail]:
    address = sender.split("<")[1].rstrip(">")
    return conv.send(outlook(
        sender=sender, subject=f"RE: {answering.subject}{subject_add}", body=body,
        in_reply_to=answering.message_id, quoted=quote(answering.subject, answering.text),
        auth=verified(address) if auth == "verified" else auth, html_only=html_only))


def complainant_reply(conv: Conversation, answering: Mail, body: str,
                      sender: str = "Joanne Price <joanne@example.com>") -> list[Mail]:
    return conv.send(outlook(sender=sender, subject=f"RE: {answering.subject}", body=body,
                             in_reply_to=answering.message_id,
                             quoted=quote(answering.subject, answering.text, "Joanne Price")))


def one(sent: list[Mail], address: str) -> Mail:
    found = [m for m in sent if address in m.to]
    assert len(found) == 1, letters(sent)
    return found[0]


@pytest.fixture
def conversations():
    made = []
    yield made
    for conv in made:
        conv.close()


def test_default_rules_worked_from_outlook(tmp_path, dovecot, smtp_server, db_url, conversations):
    conv = Conversation(tmp_path, dovecot, smtp_server, db_url, preset=None,
                        staff_toml='[staff]\nmembers = ["jane@example.org"]\n',
                        config_extra=f'trusted_authserv_ids = ["{MX}"]\n')  # under [staff] in config.toml
    conversations.append(conv)
    team, jane = "Complaints Team Lead <team@example.org>", "Jane Staff <jane@example.org>"

    # Friday 28 August 2026, 11:00: the complaint arrives
    conv.at(london(2026, 8, 28, 11, 0))
    sent = conv.send(outlook(sender="Joanne Price <joanne@example.com>",
                             subject="Youth club cancelled again", body=COMPLAINT))
    ref = conv.latest().reference
    assert letters(sent) == [
        (("joanne@example.com",), f"[{ref}] We have received your complaint: Youth club cancelled again"),
        (("team@example.org",), f"[{ref}] New complaint: Youth club cancelled again")]
    ack, notification = one(sent, "joanne@example.com"), one(sent, "team@example.org")
    assert conv.case(ref).status == "acknowledged"
    assert conv.due(ref, "respond") == london(2026, 9, 25, 17, 0)

    # Tuesday: the team lead answers the notification in Outlook, the command in the subject
    conv.at(london(2026, 9, 1, 9, 30))
    sent = staff_reply(conv, team, notification, "Jane, please pick this one up.",
                       subject_add=" #assign jane@example.org")
    assert letters(sent) == [
        (("jane@example.org",), f"[{ref}] Assigned to you: Youth club cancelled again"),
        (("team@example.org",), f"[{ref}] Done: assign")]
    handed_over = one(sent, "jane@example.org")
    assert "please pick this one up" in handed_over.text and "formal complaint" in handed_over.text

    # Jane keeps a note: nothing leaves the organisation
    conv.at(london(2026, 9, 2, 14, 0))
    sent = staff_reply(conv, jane, handed_over, "#note\nSpoke to Joanne on the phone: three sessions "
                                                "missed, no texts sent to parents.\n\nJane")
    assert letters(sent) == [(("jane@example.org",), f"[{ref}] Done: note")]

    # a neighbour replies into the thread: staff hear of it, the neighbour gets nothing
    conv.at(london(2026, 9, 3, 10, 0))
    sent = complainant_reply(conv, ack, "I agree with Joanne, please send me the outcome too.",
                             sender="Neighbour <neighbour@example.net>")
    assert letters(sent) == [(("jane@example.org", "team@example.org"),
                              f"[{ref}] New message on this case (...): RE: {ack.subject}")]

    # Monday 21 September: more time is needed; Joanne is told why and until when
    conv.at(london(2026, 9, 21, 10, 0))
    sent = staff_reply(conv, jane, handed_over, "#extend 10 working days: the session leader is on "
                                                "leave and we need to hear from them")
    assert letters(sent) == [
        (("jane@example.org",), f"[{ref}] Done: extend"),
        (("joanne@example.com",), f"[{ref}] We need more time to respond to your complaint")]
    extension = " ".join(one(sent, "joanne@example.com").text.split())
    assert "The reason: the session leader is on leave and we need to hear from them" in extension
    assert "Friday 25 September 2026" in extension and "Friday 9 October 2026" in extension
    assert conv.due(ref, "respond") == london(2026, 10, 9, 17, 0)

    # someone pretending to be Jane from a look-alike domain tries to close it: refused, staff warned
    sent = conv.send(outlook(sender="Jane Staff <jane@examp1e.org>", subject=f"RE: [{ref}] #close",
                             body="#reply\nPlease send me a copy of everything.", auth=verified("jane@examp1e.org")))
    assert letters(sent) == [
        (("jane@example.org", "team@example.org"), f"[{ref}] New message on this case (...): RE: [{ref}] #close"),
        (("team@example.org",), f"[{ref}] WARNING: a command by email was refused")]
    assert conv.case(ref).status == "acknowledged"

    # Monday 5 October: the outcome, written in Outlook; the review window opens
    conv.at(london(2026, 10, 5, 10, 0))
    sent = staff_reply(conv, jane, handed_over, "#outcome\nWe have looked into your complaint and we "
                                                "uphold it. From now on, parents will be sent a text "
                                                "message when a session is cancelled.\n\nKind regards,\nJane")
    assert letters(sent) == [(("jane@example.org",), f"[{ref}] Done: outcome"),
                             (("joanne@example.com",), f"[{ref}] The outcome of your complaint")]
    outcome = one(sent, "joanne@example.com")
    words = " ".join(outcome.text.split())
    assert "we uphold it" in words and "Kind regards" not in words
    assert "ask for a review by Chief Executive Officer" in words and "by Monday 19 October 2026" in words
    assert conv.case(ref).status == "outcome_sent"
    assert conv.due(ref, "appeal_window", 1) == london(2026, 10, 19, 23, 59, 59)

    # Thursday 15 October: Joanne asks for a review by replying to the outcome letter
    conv.at(london(2026, 10, 15, 14, 0))
    sent = complainant_reply(conv, outcome, APPEAL)
    assert letters(sent) == [
        (("jane@example.org", "team@example.org"), f"[{ref}] New message on this case (...): RE: {outcome.subject}"),
        (("joanne@example.com",), f"[{ref}] We have received your request for a review")]
    assert conv.case(ref).status == "appeal_acknowledged" and conv.outcome.action == "added_to_case"
    assert conv.due(ref, "appeal_respond", 1) == london(2026, 11, 24, 17, 0)
    review_request = one(sent, "team@example.org")

    # Monday 16 November: the review's outcome (the CEO's mail goes to [staff] notify here)
    conv.at(london(2026, 11, 16, 11, 0))
    sent = staff_reply(conv, team, review_request, "#outcome\nHaving reviewed your complaint, I agree "
                                                   "with the decision and the changes made.")
    assert letters(sent) == [(("joanne@example.com",), f"[{ref}] The outcome of the review of your complaint"),
                             (("team@example.org",), f"[{ref}] Done: outcome")]
    assert "final response" in one(sent, "joanne@example.com").text
    case = conv.case(ref)
    assert case.status == "closed" and case.closed_at is not None  # the policy has no further stage

    # a late "#close" is refused in words, and changes nothing
    sent = staff_reply(conv, team, review_request, "#close")
    assert letters(sent) == [(("team@example.org",), f"[{ref}] NOT done: close")]
    assert "'closed': it cannot go to 'closed'" in sent[0].text

    actions = [a for a, _ in conv.events(ref)]
    for expected in ("assigned", "note", "deadline_extended", "staff_command_refused",
                     "outcome_recorded", "appeal_received", "staff_command_rejected"):
        assert expected in actions
    assert ("note", "jane@example.org") in conv.events(ref)
    with conv.app.db.session() as s:
        assert audit.verify(s).ok
        assert s.get(CaseAssignee, case.id).address == "jane@example.org"
    assert dovecot.uids("INBOX") == []


def test_preset_with_two_appeal_stages_worked_from_outlook(tmp_path, dovecot, smtp_server, sqlite_url,
                                                          conversations):
    conv = Conversation(tmp_path, dovecot, smtp_server, sqlite_url, preset="childrens-services-004",
                        staff_toml=f'[staff]\nmembers = ["jane@example.org"]\ntrusted_authserv_ids = ["{MX}"]\n')
    conversations.append(conv)
    manager, senior = "Complaints Manager <complaints.manager@example.org>", "Sam Senior <senior.manager@example.org>"
    jane = "Jane Staff <jane@example.org>"

    conv.at(london(2026, 8, 28, 11, 0))
    sent = conv.send(outlook(sender="Joanne Price <joanne@example.com>", subject="Youth club cancelled again",
                             body=COMPLAINT))
    ref = conv.latest().reference
    assert ref.startswith("CL-2026-")
    assert letters(sent) == [
        (("complaints.manager@example.org",), f"[{ref}] New complaint: Youth club cancelled again"),
        (("joanne@example.com",), f"[{ref}] We have received your complaint: Youth club cancelled again")]
    notification = one(sent, "complaints.manager@example.org")
    assert conv.due(ref, "respond") == london(2026, 10, 8, 17, 0)  # 28 working days

    conv.at(london(2026, 9, 1, 9, 0))
    sent = staff_reply(conv, manager, notification, "#assign jane@example.org\nOver to you, Jane.")
    assert letters(sent) == [
        (("complaints.manager@example.org",), f"[{ref}] Done: assign"),
        (("jane@example.org",), f"[{ref}] Assigned to you: Youth club cancelled again")]
    handed_over = one(sent, "jane@example.org")
    assert "Over to you, Jane." in handed_over.text

    # an HTML-only reply (Outlook set to HTML without a text part)
    sent = staff_reply(conv, jane, handed_over, "#note\nThe register shows three cancelled sessions.",
                       html_only=True)
    assert letters(sent) == [(("jane@example.org",), f"[{ref}] Done: note")]

    conv.at(london(2026, 10, 5, 10, 0))
    sent = staff_reply(conv, jane, handed_over, "#extend 5 working days: we are waiting for the "
                                                "transport company's records")
    assert [m.to for m in sent if "more time" in m.subject] == [["joanne@example.com"]]
    assert conv.due(ref, "respond") == london(2026, 10, 15, 17, 0)

    conv.at(london(2026, 10, 12, 10, 0))
    sent = staff_reply(conv, jane, handed_over, "#outcome\nWe uphold your complaint.")
    outcome = one(sent, "joanne@example.com")
    assert letters(sent) == [(("jane@example.org",), f"[{ref}] Done: outcome"),
                             (("joanne@example.com",), f"[{ref}] The outcome of your complaint")]
    assert "ask for an appeal by Senior Manager" in " ".join(outcome.text.split())

    conv.at(london(2026, 10, 14, 10, 0))
    sent = complainant_reply(conv, outcome, APPEAL)
    assert letters(sent) == [
        (("jane@example.org", "senior.manager@example.org"),
         f"[{ref}] New message on this case (...): RE: {outcome.subject}"),
        (("joanne@example.com",), f"[{ref}] We have received your request for a appeal")]
    assert conv.case(ref).status == "appeal_acknowledged"
    request = one(sent, "senior.manager@example.org")

    # a forged command in the Senior Manager's name, with no verdict from our server
    sent = staff_reply(conv, senior, request, "#close", auth=None)
    assert conv.case(ref).status == "appeal_acknowledged"
    assert letters(sent) == [
        (("safeguarding@example.org", "team@example.org"), f"[{ref}] WARNING: a command by email was refused"),
        (("senior.manager@example.org",), "Your message to the complaints mailbox was not acted on")]

    conv.at(london(2026, 10, 21, 10, 0))
    sent = staff_reply(conv, senior, request, "#outcome\nThe appeal upholds the decision.")
    final_letter = one(sent, "joanne@example.com")
    assert letters(sent) == [(("joanne@example.com",), f"[{ref}] The outcome of the appeal of your complaint"),
                             (("senior.manager@example.org",), f"[{ref}] Done: outcome")]
    assert "final appeal by Chief Executive" in " ".join(final_letter.text.split())
    assert conv.case(ref).status == "outcome_sent"  # a final appeal is still possible

    conv.at(london(2026, 11, 30, 10, 0))
    sent = staff_reply(conv, senior, request, "#close\nNo final appeal was asked for.")
    assert letters(sent) == [(("senior.manager@example.org",), f"[{ref}] Done: close")]
    assert conv.case(ref).status == "closed"
    with conv.app.db.session() as s:
        assert audit.verify(s).ok

"""Staff commands by email through the real pipeline (Maildir in, aiosmtpd out, a controllable
clock): what each command does to the case and who is written to, the refusals, forged
commands, threading of complainants' follow-ups, and confidentiality towards third parties."""

from __future__ import annotations

import email
import json

import pytest
from sqlmodel import col, select

from mailbot.cases.models import Case, CaseAssignee, Event
from tests.policy_story import Story, london
from tests.staff_story import deliver, outlook, quote, to, verified, with_staff

COMPLAINT = ("I want to make a formal complaint. The Thursday youth club session was cancelled for "
             "the third week running and nobody told the parents. This is not good enough.")
LM = "Line Manager <line.manager@example.org>"
JANE = "Jane Staff <jane@example.org>"
WARNED = ("team@example.org", "safeguarding@example.org")  # [staff] notify and the safeguarding lead


@pytest.fixture
def story(tmp_path, smtp_server, sqlite_url):
    story = with_staff(Story(tmp_path, "youth-service-000", smtp_server, sqlite_url))
    story.at(london(2026, 8, 28, 11, 0))  # a Friday; Monday 31 August is a bank holiday
    yield story
    story.close()


def _complaint(story, who="parent", subject="Complaint about the Thursday youth club"):
    sent = deliver(story, outlook(sender=f"{who.title()} <{who}@example.com>", subject=subject, body=COMPLAINT))
    ack = to(sent, f"{who}@example.com")
    return story.latest_case().reference, ack


def _staff(story, ref, body, *, sender=LM, subject=None, auth="ok", **kwargs):
    address = sender.split("<")[1].rstrip(">")
    header = verified(address) if auth == "ok" else auth
    return deliver(story, outlook(sender=sender, subject=subject or f"RE: [{ref}] New complaint",
                                  body=body, auth=header, **kwargs))


def _events(story, ref, action):
    with story.app.db.session() as s:
        case = s.exec(select(Case).where(col(Case.reference) == ref)).one()
        return [json.loads(e.detail or "{}") | {"actor": e.actor} for e in s.exec(
            select(Event).where(col(Event.case_id) == case.id, col(Event.action) == action)).all()]


def test_note_and_message_without_commands_never_reach_the_complainant(story):
    ref, _ = _complaint(story)
    sent = _staff(story, ref, "#note\nCalled the parent; she is upset about the lack of notice.")
    assert [m.to for m in sent] == [["line.manager@example.org"]]
    assert "Done: note" in sent[0].subject and "#" not in sent[0].subject
    assert "upset" not in sent[0].text  # the answer does not repeat the note
    sent = _staff(story, ref, "Jo, can you check the register for the 20th?\n\nThanks")
    assert [m.to for m in sent] == [["line.manager@example.org"]]
    assert "internal note" in sent[0].text
    notes = _events(story, ref, "note")
    assert [n["text"] for n in notes] == ["Called the parent; she is upset about the lack of notice.",
                                          "Jo, can you check the register for the 20th?\n\nThanks"]
    assert story.case(ref).status == "acknowledged"


def test_reply_goes_only_to_the_complainant_of_record_in_the_organisations_letter(story):
    ref, ack = _complaint(story)
    body = ("#reply\nThank you for your patience. I have spoken to the club leader and will "
            "write again by Friday.\n\nKind regards,\nJane")
    sent = _staff(story, ref, body, sender=JANE, quoted=quote(ack.subject, ack.text, "Jane"))
    letter = to(sent, "parent@example.com")
    assert letter.subject == f"[{ref}] Complaint about the Thursday youth club"
    assert letter.text.startswith("Dear Parent,\n\nThank you for your patience.")
    assert "Kind regards" not in letter.text and letter.text.count("Jane Staff") == 1  # signed once
    assert "Please keep the reference" in letter.text  # the organisation's footer
    assert letter.message["In-Reply-To"]  # threads with the complainant's own mail
    assert "We have received your complaint" not in letter.text  # quoted history stays out
    assert "sent to parent@example.com" in to(sent, "jane@example.org").text


def test_internal_text_that_was_not_recognised_as_a_quote_is_not_sent(story):
    ref, _ = _complaint(story)
    staff_letter = [m for m in story.smtp.messages if "line.manager@example.org" in m.rcpt_tos][0]
    notification = staff_letter.message.get_body(("plain",)).get_content()
    body = "#reply\nWe are looking into it.\n\n=== earlier ===\n" + notification  # an unusual quote
    sent = _staff(story, ref, body)
    assert [m.to for m in sent] == [["line.manager@example.org"]]
    assert "NOT done" in sent[0].subject and "quoted history" in sent[0].text


def test_extend_tells_the_complainant_why_and_keeps_the_first_date(story):
    ref, _ = _complaint(story)
    assert story.due(ref, "respond") == london(2026, 9, 25, 17, 0)  # 28 days
    story.at(london(2026, 9, 21, 10, 0))
    sent = _staff(story, ref, "", subject=f"RE: [{ref}] New complaint #extend 10 working days: "
                                          "the club leader is on leave until the 28th")
    letter = to(sent, "parent@example.com")
    assert "more time" in letter.subject
    text = " ".join(letter.text.split())
    assert "The reason: the club leader is on leave until the 28th" in text
    assert "by Friday 25 September 2026" in text and "by Friday 9 October 2026" in text
    assert story.due(ref, "respond") == london(2026, 10, 9, 17, 0)
    assert story.deadlines(ref)[("respond", 0)].extended_from is not None
    assert "moved from Friday 25 September 2026 to Friday 9 October 2026" in to(sent, "line.manager@example.org").text
    # to a date, with the reason under the command
    sent = _staff(story, ref, "#extend to 2026-10-30\nWe are waiting for a witness statement.")
    assert "Friday 30 October 2026" in to(sent, "parent@example.com").text
    # nothing to extend without a reason, or to an earlier date
    sent = _staff(story, ref, "#extend 5 days")
    assert [m.to for m in sent] == [["line.manager@example.org"]] and "reason" in sent[0].text
    sent = _staff(story, ref, "#extend to 2026-10-01: sooner")
    assert "not later than the one promised" in sent[0].text


def test_assign_and_updates_reach_the_assignee(story):
    ref, ack = _complaint(story)
    sent = _staff(story, ref, "Jane, please take this one.", subject=f"RE: [{ref}] New complaint #assign jane@example.org")
    handover = to(sent, "jane@example.org")
    assert "Assigned to you" in handover.subject and "please take this one" in handover.text
    assert COMPLAINT[:40] in handover.text
    with story.app.db.session() as s:
        assert s.get(CaseAssignee, story.case(ref).id).address == "jane@example.org"
    # the complainant writes again: the owner and the assignee are told, no new case
    cases = story.latest_case().id
    sent = deliver(story, outlook(sender="Parent <parent@example.com>", subject=f"RE: {ack.subject}",
                                  body="I forgot to say: this also happened in July.",
                                  in_reply_to=ack.message_id))
    assert story.latest_case().id == cases and story.last_outcomes[-1].action == "added_to_case"
    update = [m for m in sent if "jane@example.org" in m.to]
    assert len(update) == 1 and "line.manager@example.org" in update[0].to
    # only staff can be given a case
    sent = _staff(story, ref, "#assign friend@gmail.example")
    assert "not on the staff list" in sent[0].text


@pytest.mark.parametrize("body, status, letter", [
    ("#close", "closed", None),
    ("#withdraw\nShe rang to say it is sorted out.", "withdrawn", "withdraw"),
    ("#investigate", "investigating", None),
    ("#safeguarding\nThe parent mentioned a child left alone after the session.", "safeguarding", None),
])
def test_state_commands_go_through_the_workflow(story, body, status, letter):
    ref, _ = _complaint(story)
    sent = _staff(story, ref, body)
    assert story.case(ref).status == status
    complainant = [m for m in sent if "parent@example.com" in m.to]
    assert (letter is None and not complainant) or letter in complainant[0].subject
    if status == "safeguarding":
        urgent = to(sent, "safeguarding@example.org")
        assert "SAFEGUARDING" in urgent.subject and "child left alone" in urgent.text
        assert "safeguarding" in story.case(ref).flag_list


def test_illegal_moves_and_unknown_commands_do_nothing_and_say_why(story):
    ref, _ = _complaint(story)
    _staff(story, ref, "#close")
    sent = _staff(story, ref, "#outcome\nWe uphold your complaint.")
    assert [m.to for m in sent] == [["line.manager@example.org"]]
    answer = sent[0]
    assert "NOT done" in answer.subject
    assert "'closed': it cannot go to 'outcome_sent'" in answer.text and "investigating" in answer.text
    assert "#reply" in answer.text  # the valid commands are listed
    # one bad command spoils the message: the good one is understood but not done
    sent = _staff(story, ref, "#reopen\n#frobnicate")
    assert story.case(ref).status == "closed"
    text = sent[0].text
    assert "#frobnicate" in text and "understood, but not done" in text
    # checked as a sequence: after #reopen the case is already under investigation
    sent = _staff(story, ref, "#reopen\n#investigate")
    assert "'investigating': it cannot go to 'investigating'" in sent[0].text
    assert story.case(ref).status == "closed"
    sent = _staff(story, ref, "#reopen")
    assert story.case(ref).status == "investigating" and "Done: reopen" in sent[0].subject


def test_outcome_opens_the_window_and_the_last_stage_closes_the_case(story):
    ref, ack = _complaint(story)
    story.at(london(2026, 9, 21, 10, 0))
    sent = _staff(story, ref, "#outcome\nWe uphold your complaint: sessions will be announced a week ahead.")
    letter = to(sent, "parent@example.com")
    assert "outcome of your complaint" in letter.subject.lower()
    assert "by Monday 5 October 2026" in " ".join(letter.text.split())  # 14 days, the complainant's time
    assert story.case(ref).status == "outcome_sent"
    story.at(london(2026, 9, 25, 10, 0))
    sent = deliver(story, outlook(sender="Parent <parent@example.com>", subject=f"RE: {letter.subject}",
                                  body="I am not satisfied with the outcome and I would like to appeal. "
                                       "Please pass it to someone more senior for a review.",
                                  in_reply_to=letter.message_id))
    assert story.case(ref).status == "appeal_acknowledged"
    sent = _staff(story, ref, "#outcome\nThe review upholds the first decision.",
                  sender="Chief Executive <ceo@example.org>")
    final = to(sent, "parent@example.com")
    assert "review of your complaint" in final.subject and "final response" in final.text
    assert story.case(ref).status == "closed"


def test_log_registers_a_phone_complaint_and_acknowledges_the_caller(story):
    body = ("#log phone complaint\nName: Mary Jones\nEmail: mary.jones@example.net\nPhone: 01234 555000\n"
            "She complained that she was charged twice for the summer trip and nobody has answered her calls.")
    sent = deliver(story, outlook(sender=LM, subject="Phone call from a parent", body=body,
                                  auth=verified("line.manager@example.org")))
    case = story.latest_case()
    assert (case.kind, case.channel, case.complainant, case.complainant_name) == (
        "complaint", "phone", "mary.jones@example.net", "Mary Jones")
    assert case.status == "acknowledged"
    ack = to(sent, "mary.jones@example.net")
    assert case.reference in ack.subject and ack.text.startswith("Dear Mary Jones")
    answer = [m for m in sent if m.to == ["line.manager@example.org"] and "Done" in m.subject]
    assert len(answer) == 1 and f"[{case.reference}]" in answer[0].subject
    # without an address nobody can be written to; a compliment in person
    sent = deliver(story, outlook(sender=LM, subject="Visitor", auth=verified("line.manager@example.org"),
                                  body="#log compliment in person\nName: Mr Patel\nHe said the staff were wonderful."))
    case = story.latest_case()
    assert (case.kind, case.channel, case.complainant) == ("compliment", "in_person", "")
    assert all("@example.org" in a for m in sent for a in m.to)
    assert "no email address given" in sent[-1].text or any("no email address given" in m.text for m in sent)


def test_reclassify_is_kept_for_retraining(story):
    deliver(story, outlook(sender="Priya <priya@example.com>", subject="Thank you to Marcus",
                           body="A huge thank you to Marcus, he was brilliant with my son."))
    ref = story.latest_case().reference
    sent = _staff(story, ref, "#reclassify complaint")
    assert "correction recorded" in sent[0].text
    event = _events(story, ref, "reclassified")[0]
    assert (event["from"], event["to"], event["actor"]) == ("compliment", "complaint", "line.manager@example.org")


def test_escalate_respects_conflict_of_interest(tmp_path, smtp_server, sqlite_url):
    story = with_staff(Story(tmp_path, "employment-charity-002", smtp_server, sqlite_url),
                       '[staff]\ntrusted_authserv_ids = ["mx.example.org"]\n')
    try:
        story.at(london(2026, 8, 28, 11, 0))
        deliver(story, outlook(sender="Critic <critic@example.com>", subject="Complaint about the chief executive",
                               body="I want to complain about the chief executive. He was rude to me at the "
                                    "open day and refused to listen. I expect an apology."))
        ref = story.latest_case().reference
        sent = deliver(story, outlook(sender="Operations <operations@example.org>",
                                      subject=f"RE: [{ref}] #escalate", body="Needs a trustee's view.",
                                      auth=verified("operations@example.org")))
        assert not [m for m in sent if "ceo@example.org" in m.to]  # the person complained about
        assert "Escalated to you" in to(sent, "chair@example.org").subject
    finally:
        story.close()


# -- forged and unauthenticated commands --------------------------------------------------------

FORGERIES = {
    "forged (dkim and spf fail)": (JANE, "mx.example.org; dkim=fail header.d=example.org; spf=fail "
                                          "smtp.mailfrom=jane@example.org"),
    "unauthenticated": (JANE, None),
    "spoofed display name": ("Jane Staff <jane@evil.example>", verified("jane@evil.example")),
    "look-alike domain": ("Jane Staff <jane@examp1e.org>", verified("jane@examp1e.org")),
    "untrusted authserv-id": (JANE, "mx.evil.example; dkim=pass header.d=example.org; spf=pass "
                                    "smtp.mailfrom=jane@example.org"),
    "forged header under ours": (JANE, "mx.example.org; dkim=none; spf=none smtp.mailfrom=evil.example"),
    "exchange marks over imap": (JANE, None),
}


@pytest.mark.parametrize("kind", list(FORGERIES))
def test_forged_commands_are_refused(story, kind):
    ref, _ = _complaint(story)
    sender, auth = FORGERIES[kind]
    address = sender.split("<")[1].rstrip(">")
    headers = {}
    if kind == "forged header under ours":  # the sender's own "pass", below our server's verdict
        headers["Authentication-Results"] = verified("jane@example.org")
    if kind == "exchange marks over imap":
        headers = {"X-MS-Exchange-Organization-AuthAs": "Internal",
                   "X-MS-Exchange-Organization-AuthSource": "EXCH01.example.org"}
    raw = outlook(sender=sender, subject=f"RE: [{ref}] New complaint #close", auth=auth, headers=headers,
                  body="#reply\nPlease send me everything you hold on this case.",
                  reply_to="attacker@evil.example")
    cases = story.latest_case().id
    sent = deliver(story, raw)

    assert story.case(ref).status == "acknowledged"  # not closed
    assert story.latest_case().id == cases
    assert not [m for m in sent if "parent@example.com" in m.to or "attacker@evil.example" in m.to]
    for mail in sent:  # whoever is written to, no case contents go to the sender's side
        if address in mail.to:
            assert COMPLAINT[:30] not in mail.text and "parent@example.com" not in mail.text
    warning = [m for m in sent if set(WARNED) <= set(m.to)]
    assert len(warning) == 1 and "WARNING" in warning[0].subject
    refused = _events(story, ref, "staff_command_refused")
    assert len(refused) == 1 and refused[0]["from"] == address
    if address == "jane@example.org":  # the real Jane hears that a message in her name was refused
        notice = to(sent, "jane@example.org")
        assert "not acted on" in notice.subject and ref not in notice.subject
    else:  # not staff at all: routed like any stranger's mail, which answers nobody on this case
        assert not [m for m in sent if address in m.to]
        assert story.last_outcomes[-1].action == "added_to_case"


def test_staff_mail_without_commands_or_case_is_routed_as_usual(story):
    """A member of staff may complain too: without a case tag or a command their mail is mail."""
    deliver(story, outlook(sender=JANE, subject="Complaint about the car park", body=COMPLAINT))
    assert story.latest_case().complainant == "jane@example.org"


def test_unverified_note_is_refused_not_recorded(story):
    ref, _ = _complaint(story)
    sent = deliver(story, outlook(sender=LM, subject=f"RE: [{ref}] New complaint", body="Just a note."))
    assert not _events(story, ref, "note")
    assert _events(story, ref, "staff_command_refused")
    assert "not acted on" in to(sent, "line.manager@example.org").subject


# -- threading and confidentiality ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["tag", "external banner", "in-reply-to only", "reference in text"])
def test_complainant_follow_ups_join_their_case(story, how):
    ref, ack = _complaint(story)
    subject, in_reply_to, body = f"RE: {ack.subject}", None, "One more thing: it happened again today."
    if how == "external banner":
        subject = f"[EXTERNAL] AW: SV: {ack.subject.lower()}"
    elif how == "in-reply-to only":
        subject, in_reply_to = "Re: your email", ack.message_id
    elif how == "reference in text":
        subject, body = "My complaint", f"About my complaint {ref}: it happened again today."
    sent = deliver(story, outlook(sender="Parent <parent@example.com>", subject=subject, body=body,
                                  in_reply_to=in_reply_to))
    assert story.last_outcomes[-1].action == "added_to_case" and story.last_outcomes[-1].reference == ref
    assert story.latest_case().reference == ref
    assert "New message on this case" in to(sent, "line.manager@example.org").subject


def test_third_party_replying_in_the_thread_gets_no_case_contents(story):
    ref, ack = _complaint(story)
    sent = deliver(story, outlook(sender="Neighbour <neighbour@example.net>", subject=f"RE: {ack.subject}",
                                  body="I would like to withdraw this complaint. Please send me the outcome.",
                                  in_reply_to=ack.message_id))
    assert not [m for m in sent if "neighbour@example.net" in m.to]
    assert story.case(ref).status == "acknowledged"  # a stranger cannot withdraw it
    assert "New message on this case" in to(sent, "line.manager@example.org").subject
    # someone writing as the complainant but asking for answers elsewhere: answers go to the complainant
    sent = deliver(story, outlook(sender="Parent <parent@example.com>", subject=f"RE: {ack.subject}",
                                  body="Please withdraw my complaint. The matter has been sorted out and I no "
                                       "longer wish to pursue it.", reply_to="someone@evil.example"))
    assert not [m for m in sent if "someone@evil.example" in m.to]
    assert [m for m in sent if "parent@example.com" in m.to]


def test_attachments_are_never_forwarded_and_staff_are_told(story):
    from email import message_from_bytes
    from email.policy import SMTP

    ref, _ = _complaint(story)
    raw = outlook(sender=LM, subject=f"RE: [{ref}] New complaint", body="#reply\nPlease see our letter.",
                  auth=verified("line.manager@example.org"))
    msg = message_from_bytes(raw, policy=SMTP)
    msg.add_attachment(b"%PDF-1.4 internal report", maintype="application", subtype="pdf",
                       filename="investigation-notes.pdf")
    sent = deliver(story, msg.as_bytes())
    letter = to(sent, "parent@example.com")
    assert not any(part.get_filename() for part in letter.message.walk())
    assert "attachment(s) were NOT sent" in to(sent, "line.manager@example.org").text


def test_answers_cannot_turn_into_a_mail_loop(story, monkeypatch):
    from mailbot.staffmail import actions

    ref, _ = _complaint(story)
    answer = to(_staff(story, ref, "#note\nFirst note."), "line.manager@example.org")
    # a mailbox rule forwards our answer back: recorded, not answered
    sent = _staff(story, ref, "", subject=f"FW: {answer.subject}", quoted=quote(answer.subject, answer.text))
    assert sent == [] and story.last_outcomes[-1].action == "recorded"
    # and whatever else goes round, answers stop after a number per hour
    monkeypatch.setattr(actions, "ANSWERS_PER_HOUR", 2)
    assert len(_staff(story, ref, "#note\nSecond note.")) == 1
    assert _staff(story, ref, "#note\nThird note.") == []
    assert [n["text"] for n in _events(story, ref, "note")][-1] == "Third note."  # still recorded
    assert _events(story, ref, "staff_answer_suppressed")


def test_note_in_the_subject(story):
    ref, _ = _complaint(story)
    _staff(story, ref, "", subject=f"RE: [{ref}] New complaint #note rang her back, no answer")
    assert [n["text"] for n in _events(story, ref, "note")] == ["rang her back, no answer"]


@pytest.mark.parametrize("threaded", [True, False], ids=["thread-headers", "subject-only"])
def test_a_command_inherited_in_a_reply_all_subject_is_not_carried_out_again(story, threaded):
    """Jane answers the complainant with "#reply" in the subject, copying her manager; the
    manager answers her with Reply All, and Outlook keeps "RE: [ref] #reply". That is a remark
    to a colleague, not a second letter: nothing goes to the complainant, the manager is told
    why, and the words are kept as an internal note on the case."""
    ref, _ = _complaint(story)
    first = outlook(sender=JANE, subject=f"[{ref}] #reply",
                    body="Thank you for your patience. I will write again by Friday.",
                    auth=verified("jane@example.org"), headers={"Cc": LM})
    sent = deliver(story, first)
    assert "write again by Friday" in to(sent, "parent@example.com").text
    jane_id = email.message_from_bytes(first)["Message-ID"]
    sent = _staff(story, ref, "Looks good to me, thanks Jane.", subject=f"RE: [{ref}] #reply",
                  in_reply_to=jane_id if threaded else None, quoted=quote(f"[{ref}] #reply", "Thank you for your patience.", "Jane"))
    assert not [m for m in sent if "parent@example.com" in m.to], "the manager's remark went to the complainant"
    answer = to(sent, "line.manager@example.org")
    assert "#reply" in answer.text and "replied to" in answer.text
    assert [n["text"] for n in _events(story, ref, "note")] == ["Looks good to me, thanks Jane."]
    # written afresh in the subject of a new message, the same command is carried out
    sent = _staff(story, ref, "The club leader has apologised.", subject=f"RE: [{ref}] New complaint #reply")
    assert "apologised" in to(sent, "parent@example.com").text

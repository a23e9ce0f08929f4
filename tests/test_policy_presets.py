"""One story per policy preset, through the real pipeline with a controllable clock: the five
seed policies in /work/shared/policies, as rules/presets/* encode them.

Each story: a complaint arriving before a bank holiday gets the policy's due dates; an outcome
(recorded through the workflow API, as staff commands will) opens the appeal window; an appeal
inside it is acknowledged and scheduled, one after it is refused in the policy's words; and the
policy's special cases (withdrawal, anonymous, abusive, safeguarding, legal action, channels,
conflict of interest, compliments) are handled as that policy says.
"""

from __future__ import annotations

import pytest

from mailbot.cases.workflow import TransitionError, start_investigation, transition
from tests.mailkit import run_cli
from tests.policy_story import Story, london, only, record_outcome_now, reference_in

COMPLAINT = ("Complaint about the Thursday youth club",
             "I want to make a formal complaint. The Thursday youth club session was cancelled for "
             "the third week running and nobody told the parents. This is not good enough and I "
             "expect an explanation.")
APPEAL = ("I am not satisfied with the outcome of my complaint and I would like to appeal. Please "
          "pass it to someone more senior for a review of the outcome.")
WITHDRAW = ("Please withdraw my complaint. The matter has been sorted out and I no longer wish to "
            "pursue it. Thank you.")
ANONYMOUS = ("Complaint about the drop-in",
             "I want to complain about the way the drop-in is run, the staff are never there on time "
             "and the doors are locked. I won't give my name because I don't want any trouble.")
ABUSIVE = ("Complaint", "I want to complain about your useless idiots at the centre. You are a bunch "
           "of morons and a waste of space, the session was cancelled again.")
SAFEGUARDING = ("Worried about my son", "I want to raise a concern. My son, who is 12, was sent home "
                "alone in the dark after the club and nobody checked he got home. He was frightened "
                "and crying.")
LEGAL = ("Complaint about cancelled sessions", "I wish to complain about the cancelled sessions this "
         "month, which nobody told us about. I have spoken to a solicitor and will be taking legal "
         "action if this is not resolved.")
CEO_NAMED = ("Complaint about the chief executive", "I want to complain about the chief executive. "
             "He was rude to me at the open day and refused to listen. This is not acceptable "
             "behaviour and I expect an apology.")
COMPLIMENT = ("Thank you to Marcus", "A huge thank you to Marcus, he was brilliant with my son and "
              "really helped him get his first job.")


@pytest.fixture
def story_factory(tmp_path, smtp_server):
    stories = []

    def make(preset: str, db_url: str) -> Story:
        story = Story(tmp_path, preset, smtp_server, db_url)
        stories.append(story)
        return story

    yield make
    for story in stories:
        story.close()


def _complain(story, who: str, subject_body=COMPLAINT, flags=()) -> tuple[str, list]:
    sent = story.mail(*subject_body, sender=f"{who.title()} <{who}@example.com>",
                      expect=("complaint", list(flags)))
    return story.latest_case().reference, sent


def test_youth_service_000(story_factory, db_url):
    story = story_factory("youth-service-000", db_url)

    # Friday 28 August 2026, 11:00: the Monday after is the summer bank holiday (England & Wales)
    story.at(london(2026, 8, 28, 11, 0))
    ref, sent = _complain(story, "parent")
    case = story.case(ref)
    assert (case.kind, case.status) == ("complaint", "acknowledged")
    assert story.due(ref, "pass_to_owner") == london(2026, 8, 30, 11, 0)          # 48 hours
    assert story.due(ref, "acknowledge") == london(2026, 9, 3, 17, 0)             # 3 working days
    assert story.due(ref, "respond") == london(2026, 9, 25, 17, 0)                # 28 (calendar) days
    assert story.deadlines(ref)[("acknowledge", 0)].met_at is not None            # sent at once
    ack = only(sent, "parent@example.com")
    assert "received your complaint" in ack.subject and "Friday 25 September 2026" in ack.text
    assert "review by Chief Executive Officer within 14 days" in " ".join(ack.text.split())
    staff = only(sent, "line.manager@example.org")
    assert sorted(staff.to) == ["ceo@example.org", "line.manager@example.org"]  # "Inform CEO"
    shown = run_cli("cases", "show", ref, "--config", str(story.config))
    assert "deadlines (London time)" in shown.stdout, shown.stderr
    assert "Friday 25 September 2026 at 17:00" in " ".join(shown.stdout.split())

    # the same Friday after office hours: the clock starts on Tuesday 1 September at 09:00
    story.at(london(2026, 8, 28, 18, 30))
    late_ref, _ = _complain(story, "carer")
    assert story.due(late_ref, "acknowledge") == london(2026, 9, 4, 17, 0)
    assert story.due(late_ref, "respond") == london(2026, 9, 29, 17, 0)

    # outcomes go out on Monday 5 October: a 14-day window for the review opens for each
    story.at(london(2026, 10, 5, 10, 0))
    start_investigation_on = story.do(start_investigation, ref, "line.manager@example.org")
    assert start_investigation_on.action == "status_changed"
    window = record_outcome_now(story, ref)
    record_outcome_now(story, late_ref)
    assert window.due_at.astimezone(london(2026, 1, 1).tzinfo) == london(2026, 10, 19, 23, 59, 59)
    assert story.case(ref).status == "outcome_sent"

    # an appeal inside the window: acknowledged, reviewed by the CEO within 28 working days
    story.at(london(2026, 10, 15, 14, 0))
    sent = story.mail(f"Re: [{ref}] outcome of my complaint", APPEAL,
                      sender="Parent <parent@example.com>", expect=("appeal", []))
    assert story.case(ref).status == "appeal_acknowledged"
    assert story.progress(ref).stage == 1
    assert story.deadlines(ref)[("appeal_window", 1)].met_at is not None
    assert story.due(ref, "appeal_respond", 1) == london(2026, 11, 24, 17, 0)
    letter = only(sent, "parent@example.com")
    assert "request for a review" in letter.subject and "Tuesday 24 November 2026" in letter.text
    assert sorted(only(sent, "ceo@example.org").to) == ["ceo@example.org", "trustees@example.org"]

    # an appeal after the window: the policy's refusal, and no new stage
    story.at(london(2026, 10, 21, 9, 30))
    sent = story.mail(f"Re: [{late_ref}] outcome", APPEAL, sender="Carer <carer@example.com>",
                      expect=("appeal", []))
    refusal = only(sent, "carer@example.com")
    assert "within 14 days" in " ".join(refusal.text.split())
    assert story.case(late_ref).status == "outcome_sent" and story.progress(late_ref).stage == 0

    # an illegal move is refused in words staff can act on
    with pytest.raises(TransitionError, match="cannot go to 'acknowledged'"):
        story.do(transition, ref, "acknowledged", "someone@example.org")

    # a withdrawal closes the case
    story.at(london(2026, 11, 2, 10, 0))
    wref, _ = _complain(story, "withdrawer")
    sent = story.mail(f"Re: [{wref}] my complaint", WITHDRAW, sender="W <withdrawer@example.com>",
                      expect=("withdrawal", []))
    assert story.case(wref).status == "withdrawn" and story.case(wref).closed_at is not None
    assert "withdraw" in only(sent, "withdrawer@example.com").subject

    # legal action: the investigation stops, the CEO is told, no response date is promised
    lref, sent = _complain(story, "litigant", LEGAL, ["legal"])
    assert story.case(lref).status == "stopped_legal"
    assert ("respond", 0) not in story.deadlines(lref)
    assert "legal action" in only(sent, "litigant@example.com").subject
    assert "ceo@example.org" in only(sent, "line.manager@example.org").to

    # safeguarding: straight to the safeguarding lead, out of normal handling
    sent = story.mail(*SAFEGUARDING, sender="Mum <mum@example.com>",
                      expect=("complaint", ["safeguarding"]))
    sref = story.latest_case().reference
    assert story.case(sref).status == "safeguarding" and not story.deadlines(sref)
    urgent = only(sent, "safeguarding@example.org")
    assert "SAFEGUARDING" in urgent.subject and "ceo@example.org" in urgent.to
    assert "safeguarding" in only(sent, "mum@example.com").text

    # anonymous complaints are recorded and considered; abusive ones are answered (not covered)
    _complain(story, "anon", ANONYMOUS, ["anonymous"])
    assert story.latest_case().status == "acknowledged"

    # a text message is not accepted: recorded, not a case; a short reply by SMS; staff told
    cases_before = story.latest_case().id
    sent = story.mail("SMS from +447700900123", "I want to complain, the minibus didnt turn up again "
                      "today to take my son to the club. Not good enough",
                      sender="+447700900123@sms.example.net", expect=("complaint", []))
    assert story.last_outcomes[-1].action == "recorded" and story.latest_case().id == cases_before
    reply = only(sent, "+447700900123@sms.example.net")
    assert "cannot take complaints by text" in reply.text
    assert "not an accepted channel" in only(sent, "line.manager@example.org").subject


def test_volunteer_centre_001(story_factory, sqlite_url):
    story = story_factory("volunteer-centre-001", sqlite_url)

    # Christmas Eve 2026, 16:30: 7 (calendar) days to acknowledge, 3 weeks to respond
    story.at(london(2026, 12, 24, 16, 30))
    ref, sent = _complain(story, "member")
    assert story.due(ref, "acknowledge") == london(2026, 12, 31, 17, 0)
    assert story.due(ref, "respond") == london(2027, 1, 14, 17, 0)
    assert only(sent, "ceo@example.org")  # a formal complaint goes to the Chief Executive

    # the Chief Executive is named: a trustee leads instead, and the CEO is not told
    story.at(london(2027, 1, 4, 10, 0))
    cref, sent = _complain(story, "visitor", CEO_NAMED)
    assert [m.to for m in sent if "visitor@example.com" not in m.to] == [["trustee@example.org"]]
    assert story.progress(cref).owner_role == "trustee"

    # no response to anonymous or abusive complaints; the Chief Executive is told
    for who, text, flag in (("anon", ANONYMOUS, "anonymous"), ("angry", ABUSIVE, "abusive")):
        nref, sent = _complain(story, who, text, [flag])
        assert story.case(nref).status == "no_response"
        assert [m.to for m in sent] == [["ceo@example.org"]]
        assert "NO RESPONSE" in sent[0].text and not story.deadlines(nref)

    # an outcome, then a review by the Chair (no time limit in the policy), then nothing further
    story.at(london(2027, 1, 12, 10, 0))
    assert record_outcome_now(story, ref) is None  # no window
    story.at(london(2027, 6, 1, 10, 0))
    sent = story.mail(f"Re: [{ref}]", APPEAL, sender="Member <member@example.com>",
                      expect=("appeal", []))
    assert story.case(ref).status == "appeal_acknowledged"
    assert "Chair of the Trustee Board" in only(sent, "member@example.com").text
    assert only(sent, "chair@example.org")
    story.at(london(2027, 6, 20, 10, 0))
    record_outcome_now(story, ref, "chair@example.org")
    assert story.case(ref).status == "closed"
    sent = story.mail(f"Re: [{ref}]", APPEAL, sender="Member <member@example.com>",
                      expect=("appeal", []))
    assert "completed our complaints procedure" in only(sent, "member@example.com").subject
    assert story.case(ref).status == "closed"


def test_employment_charity_002(story_factory, sqlite_url):
    story = story_factory("employment-charity-002", sqlite_url)

    # "by return" with a complaint registration number; first review by the CEO within 28 days
    story.at(london(2026, 8, 28, 11, 0))
    ref, sent = _complain(story, "customer")
    assert ref.startswith("WFU-2026-")
    assert story.due(ref, "acknowledge") == london(2026, 8, 28, 11, 0)
    assert story.due(ref, "respond") == london(2026, 9, 25, 17, 0)
    ack = only(sent, "customer@example.com")
    assert ref in ack.subject and "Chief Executive" in ack.text
    assert sorted(only(sent, "operations@example.org").to) == ["ceo@example.org", "operations@example.org"]

    # the CEO is named: referred to the Chair of Trustees, never to the CEO
    cref, sent = _complain(story, "critic", CEO_NAMED)
    staff = [m for m in sent if "critic@example.com" not in m.to]
    assert len(staff) == 1 and "ceo@example.org" not in staff[0].to
    assert "chair@example.org" in staff[0].to

    # a withdrawal closes an ordinary complaint; a serious one (legal threat) continues
    sent = story.mail(f"Re: [{cref}]", WITHDRAW, sender="Critic <critic@example.com>",
                      expect=("withdrawal", []))
    assert story.case(cref).status == "withdrawn"
    lref, _ = _complain(story, "claimant", LEGAL, ["legal"])
    assert story.case(lref).status == "acknowledged"  # legal action does not stop this policy
    sent = story.mail(f"Re: [{lref}]", WITHDRAW, sender="Claimant <claimant@example.com>",
                      expect=("withdrawal", []))
    assert story.case(lref).status == "acknowledged"
    assert "continue to look into" in " ".join(only(sent, "claimant@example.com").text.split())

    # outcome -> second review by the Chair -> final: a further request is told where to go next
    story.at(london(2026, 9, 21, 10, 0))
    record_outcome_now(story, ref, "ceo@example.org")
    sent = story.mail(f"Re: [{ref}]", APPEAL, sender="Customer <customer@example.com>",
                      expect=("appeal", []))
    assert story.case(ref).status == "appeal_acknowledged"
    assert "second review" in only(sent, "customer@example.com").subject
    story.at(london(2026, 10, 12, 10, 0))
    record_outcome_now(story, ref, "chair@example.org")
    sent = story.mail(f"Re: [{ref}]", APPEAL, sender="Customer <customer@example.com>",
                      expect=("appeal", []))
    assert "Charity Commission" in only(sent, "customer@example.com").text


def test_training_cic_003(story_factory, sqlite_url):
    story = story_factory("training-cic-003", sqlite_url)

    story.at(london(2026, 8, 28, 11, 0))
    ref, sent = _complain(story, "learner")
    assert ref.startswith("SEK-2026-")
    assert story.due(ref, "acknowledge") == london(2026, 9, 7, 17, 0)   # 5 working days
    assert story.due(ref, "respond") == london(2026, 10, 8, 17, 0)      # 28 working days
    assert "Thursday 8 October 2026" in only(sent, "learner@example.com").text

    # compliments: thanked, passed to the manager, published only with permission
    sent = story.mail(*COMPLIMENT, sender="Priya <priya@example.com>", expect=("compliment", []))
    cref = story.latest_case().reference
    assert "Thank you" in only(sent, "priya@example.com").subject
    assert "permission" in only(sent, "manager@example.org").text
    assert story.progress(cref).publish == "with_permission"

    # appeal to the Director (no time limit), abusive mail still answered under this policy
    story.at(london(2026, 10, 1, 10, 0))
    record_outcome_now(story, ref, "manager@example.org")
    sent = story.mail(f"Re: [{ref}]", APPEAL, sender="Learner <learner@example.com>",
                      expect=("appeal", []))
    assert story.case(ref).status == "appeal_acknowledged"
    assert "Director" in only(sent, "learner@example.com").text
    aref, sent = _complain(story, "angry", ABUSIVE, ["abusive"])
    assert story.case(aref).status == "acknowledged" and only(sent, "angry@example.com")
    assert "director@example.org" in only(sent, "manager@example.org").to


def test_childrens_services_004(story_factory, sqlite_url):
    story = story_factory("childrens-services-004", sqlite_url)

    # Christmas Eve 2026 16:30: Christmas, Boxing Day (observed 28th) and New Year do not count
    story.at(london(2026, 12, 24, 16, 30))
    ref, sent = _complain(story, "parent")
    assert ref.startswith("CL-2026-")
    assert story.due(ref, "acknowledge") == london(2027, 1, 5, 17, 0)
    assert story.due(ref, "respond") == london(2027, 2, 5, 17, 0)

    # appeal: acknowledged within 5 and dealt with in 10 working days; final appeal: 5 and 20
    story.at(london(2027, 1, 29, 10, 0))
    record_outcome_now(story, ref, "complaints.manager@example.org")
    story.at(london(2027, 2, 3, 10, 0))
    sent = story.mail(f"Re: [{ref}]", APPEAL, sender="Parent <parent@example.com>",
                      expect=("appeal", []))
    assert story.due(ref, "appeal_acknowledge", 1) == london(2027, 2, 10, 17, 0)
    assert story.due(ref, "appeal_respond", 1) == london(2027, 2, 17, 17, 0)
    letter = only(sent, "parent@example.com")
    assert "Wednesday 17 February 2027" in letter.text and "final appeal" in letter.text
    assert only(sent, "senior.manager@example.org")
    story.at(london(2027, 2, 16, 10, 0))
    record_outcome_now(story, ref, "senior.manager@example.org")
    story.at(london(2027, 2, 18, 10, 0))
    sent = story.mail(f"Re: [{ref}]", APPEAL, sender="Parent <parent@example.com>",
                      expect=("appeal", []))
    assert story.progress(ref).stage == 2
    assert story.due(ref, "appeal_respond", 2) == london(2027, 3, 18, 17, 0)
    assert "final appeal" in only(sent, "parent@example.com").subject
    assert only(sent, "ceo@example.org")
    story.at(london(2027, 3, 10, 10, 0))
    record_outcome_now(story, ref, "ceo@example.org")
    assert story.case(ref).status == "closed"

    # anonymous complaints are recorded and considered
    nref, sent = _complain(story, "anon", ANONYMOUS, ["anonymous"])
    assert story.case(nref).status == "acknowledged"
    assert "record and consider" in only(sent, "complaints.manager@example.org").text

    # safeguarding goes to the safeguarding system, and stays there if the sender withdraws
    sent = story.mail(*SAFEGUARDING, sender="Mum <mum@example.com>",
                      expect=("complaint", ["safeguarding"]))
    sref = story.latest_case().reference
    assert story.case(sref).status == "safeguarding"
    assert sorted(only(sent, "safeguarding@example.org").to) == [
        "safeguarding@example.org", "senior.manager@example.org"]
    sent = story.mail(f"Re: [{sref}]", WITHDRAW, sender="Mum <mum@example.com>",
                      expect=("withdrawal", []))
    assert story.case(sref).status == "safeguarding"
    assert "withdraw" in only(sent, "mum@example.com").subject

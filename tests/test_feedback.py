"""Compliments and feedback (#13) through the real pipeline: mail in through a real Dovecot
(IMAP), mail out captured by the aiosmtpd fixture, the daemon in this process so that the
clock the test sets is the one the pipeline, the scheduler and the outbox see.

- a compliment naming a member of staff reaches them and their line manager (people.toml);
- the thank-you asks for permission to quote; a reply ("yes that's fine", quoting the thank-you
  that says "no thanks") flips what the compliments board and the board report show, and a
  change of mind takes it off again;
- a survey goes out once after a complaint closes, its reply is recorded and counted in the
  board report; anonymous, abusive and withdrawn cases and people already asked get none.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import col, select

from mailbot.app import App
from mailbot.cases import models
from mailbot.cases.models import Case, Compliment, Survey
from mailbot.cases.registry import case_by_reference
from mailbot.cases.workflow import CLOSED, record_outcome, transition
from mailbot.daemon import Daemon, RunReport
from mailbot.feedback import parse_consent, parse_rating
from mailbot.reports import build_report, render_csv, render_html
from mailbot.reports.compliments import build_board, render_board_html, render_board_pdf
from tests.mailkit import REPO, make_mail, run_cli, write_config

LONDON = ZoneInfo("Europe/London")
SCALE = ["Excellent", "Very Good", "Good", "Average", "Poor"]

PEOPLE = '''
[[people]]
name = "Marcus Reid"
address = "marcus.reid@example.org"
team = "Youth Club"
line_manager = "Sam Patel"

[[people]]
name = "Sam Patel"
known_as = ["club manager"]
address = "sam.patel@example.org"
line_manager = "line_manager"

[[people]]
name = "Aisha Khan"
address = "aisha.khan@example.org"
team = "Youth Club"

[[teams]]
name = "Youth Club"
known_as = ["youth club team"]
address = "youthclub@example.org"
manager = "line_manager"
'''
COMPLIMENT = ("Thank you to Marcus",
              "A huge thank you to Marcus, he was brilliant with my son and really helped him get "
              "his first job. From Priya Sharma, 07700 900123")
COMPLAINT = ("Complaint about the Thursday youth club",
             "I want to make a formal complaint. The Thursday youth club session was cancelled for "
             "the third week running and nobody told the parents. This is not good enough and I "
             "expect an explanation.")
ANONYMOUS = ("Complaint about the drop-in",
             "I want to complain about the way the drop-in is run, the staff are never there on time "
             "and the doors are locked. I won't give my name because I don't want any trouble.")
ABUSIVE = ("Complaint", "I want to complain about your useless idiots at the centre. You are a bunch "
           "of morons and a waste of space, the session was cancelled again.")


def london(*args: int) -> datetime:
    return datetime(*args, tzinfo=LONDON)


class Office:
    """The default rules (youth-service-000) with addresses and a staff list, a real Dovecot and
    SMTP capture, and a clock."""

    def __init__(self, tmp_path, dovecot, smtp, db_url):
        rules = tmp_path / "rules"
        shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
        for path in (REPO / "rules" / "presets" / "youth-service-000").glob("*.toml"):
            shutil.copy(path, rules / path.name)
        (rules / "people.toml").write_text(PEOPLE)
        self.dovecot, self.smtp = dovecot, smtp
        self.config = write_config(tmp_path, db_url=db_url, dovecot=dovecot, smtp=smtp, rules=rules)
        self.app = App.load(self.config)
        self.tmp = tmp_path

    def at(self, when: datetime) -> "Office":
        models._clock_override[:] = [when]
        return self

    def _run(self, work) -> list:
        self.smtp.clear()
        daemon = Daemon(self.app)
        report = RunReport()
        try:
            report = work(daemon, report) or report
        finally:
            daemon.close()
        if report.sent:
            self.smtp.wait_for(report.sent)
        return list(self.smtp.messages)

    def mail(self, raw: bytes) -> list:
        self.dovecot.append(raw)
        return self._run(lambda daemon, report: daemon.run_once())

    def sweep(self) -> list:
        return self._run(lambda daemon, report: (daemon.run_follow_ups(report), report)[1])

    def send(self, subject: str, body: str, sender: str, **kwargs) -> list:
        return self.mail(make_mail(sender=sender, subject=subject, body=body, date=models.utcnow(), **kwargs))

    def latest(self) -> Case:
        with self.app.db.session() as s:
            return s.exec(select(Case).order_by(col(Case.id).desc())).first()

    def get(self, model, key):
        with self.app.db.session() as s:
            return s.get(model, key)

    def close(self) -> None:
        models._clock_override.clear()
        self.app.close()


@pytest.fixture
def office_factory(tmp_path, dovecot, smtp_server):
    made = []

    def make(db_url: str) -> Office:
        office = Office(tmp_path, dovecot, smtp_server, db_url)
        made.append(office)
        return office

    yield make
    for office in made:
        office.close()


def text_of(captured) -> str:
    return captured.message.get_body(("plain",)).get_content()


def to(sent, address: str) -> list:
    return [m for m in sent if address in m.rcpt_tos]


def reply(original, body: str, quoted: str, sender: str) -> dict:
    """A reply as a mail program writes it: the new words, then the quoted letter."""
    quote = "\n".join("> " + line for line in quoted.splitlines())
    return dict(subject="Re: " + str(original["Subject"]), sender=sender,
                body=f"{body}\n\nOn Tue, 14 Apr 2026 at 10:05, Complaints Team <complaints@example.org> wrote:\n{quote}\n",
                headers={"In-Reply-To": original["Message-ID"], "References": original["Message-ID"]})


def board_text(office: Office, start=date(2026, 4, 1), end=date(2026, 5, 1)) -> str:
    with office.app.db.session() as s:
        return render_board_html(build_board(s, office.app.rules, start, end))


# ---------------------------------------------------------------------------------------------


def test_compliment_passed_on_consent_flips_the_board(office_factory, db_url):
    office = office_factory(db_url)
    office.at(london(2026, 4, 14, 10, 0))  # a Tuesday morning
    sent = office.send(*COMPLIMENT, sender="Priya Sharma <priya@example.com>")
    case = office.latest()
    assert case.kind == "compliment", case
    ref = case.reference
    thanks = to(sent, "priya@example.com")
    assert len(thanks) == 1 and "Thank you" in thanks[0].message["Subject"]
    thank_you = text_of(thanks[0])
    assert "May we share your words?" in thank_you and "no thanks" in thank_you
    record = office.get(Compliment, case.id)
    assert record.consent == "asked" and "Marcus Reid" in record.praised

    # passed on at once (office hours): to Marcus and to his line manager, not to Aisha
    sent = office.sweep()
    passed = [m for m in sent if "A compliment about you" in str(m.message["Subject"])]
    assert len(passed) == 1
    assert sorted(passed[0].rcpt_tos) == ["marcus.reid@example.org", "sam.patel@example.org"]
    letter = text_of(passed[0])
    assert "brilliant with my son" in letter
    assert "Priya" not in letter and "priya@" not in letter and "07700" not in letter
    assert office.get(Case, case.id).status == "closed"

    # nothing on the board before the sender says yes
    assert "brilliant with my son" not in board_text(office)

    # "yes", with the thank-you (which says "no thanks") quoted below it
    office.at(london(2026, 4, 15, 11, 0))
    sent = office.send(**reply(thanks[0].message, "Yes that's fine, happy for you to use it!\n\nPriya",
                               thank_you, "Priya Sharma <priya@example.com>"))
    assert office.get(Compliment, case.id).consent == "yes"
    confirmation = to(sent, "priya@example.com")
    assert len(confirmation) == 1 and "may share your kind words" in str(confirmation[0].message["Subject"])
    assert office.latest().id == case.id  # no new case for the reply

    board = board_text(office)
    assert "brilliant with my son" in board and "Marcus" in board
    for private in ("Priya", "Sharma", "priya@", "07700"):
        assert private not in board
    with office.app.db.session() as s:
        pdf = render_board_pdf(build_board(s, office.app.rules, date(2026, 4, 1), date(2026, 5, 1)))
        report = build_report(s, office.app.rules, date(2026, 4, 1), date(2026, 5, 1))
    assert pdf.startswith(b"%PDF")
    if shutil.which("pdftotext"):
        path = office.tmp / "board.pdf"
        path.write_bytes(pdf)
        words = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True).stdout
        assert "brilliant with my son" in words and "Priya" not in words
    html = render_html(report)
    assert "brilliant with my son" in html and "Priya" not in html and "07700" not in html
    rows = {(a, b): v for a, b, v in list(csv.reader(io.StringIO(render_csv(report))))[1:]}
    assert rows[("compliments consent", "agreed to be quoted")] == "1"

    # the command line writes the same board (html and pdf)
    out = office.tmp / "board.html"
    done = run_cli("report", "compliments", "--from", "2026-04-01", "--to", "2026-04-30",
                   "--format", "html", "--out", str(out), "--config", str(office.config))
    assert done.returncode == 0, done.stderr
    assert "brilliant with my son" in out.read_text() and "Priya" not in out.read_text()
    done = run_cli("report", "compliments", "--from", "2026-04-01", "--to", "2026-04-30",
                   "--out", str(office.tmp / "board.pdf"), "--config", str(office.config))
    assert done.returncode == 0 and (office.tmp / "board.pdf").read_bytes().startswith(b"%PDF")

    # a change of mind, the same way: off the board and out of the report
    office.at(london(2026, 4, 20, 9, 30))
    sent = office.send(**reply(confirmation[0].message, "Actually I've changed my mind, please don't use it.",
                               text_of(confirmation[0]), "Priya Sharma <priya@example.com>"))
    assert office.get(Compliment, case.id).consent == "no"
    assert "no longer want" in text_of(to(sent, "priya@example.com")[0])
    assert "brilliant with my son" not in board_text(office)
    with office.app.db.session() as s:
        assert "brilliant with my son" not in render_html(build_report(s, office.app.rules, date(2026, 4, 1),
                                                                       date(2026, 5, 1)))
        actions = [e.action for e in s.exec(select(models.Event).where(col(models.Event.case_id) == case.id))]
    assert "publication_consent_given" in actions and "publication_consent_withdrawn" in actions


def test_team_compliment_goes_to_the_team_and_its_manager(office_factory, sqlite_url):
    office = office_factory(sqlite_url)
    office.at(london(2026, 4, 14, 10, 0))
    office.send("Thank you", "I just wanted to say a big thank you to the youth club team, the summer "
                "trip was wonderful and my daughter loved every minute.", sender="Dee <dee@example.com>")
    assert office.latest().kind == "compliment"
    passed = [m for m in office.sweep() if "A compliment about you" in str(m.message["Subject"])]
    assert len(passed) == 1
    # the team's address and its manager (the line manager role of roles.toml)
    assert sorted(passed[0].rcpt_tos) == ["line.manager@example.org", "youthclub@example.org"]


def _close(office: Office, reference: str) -> None:
    with office.app.db.session() as s:
        case = case_by_reference(s, reference)
        record_outcome(s, office.app.rules, case, "line.manager@example.org", "upheld")
    # the 14-day review window runs out with no request: the case closes, then the survey goes
    office.at(london(2026, 5, 6, 10, 0))


def test_survey_once_after_closing_answer_recorded_and_counted(office_factory, db_url):
    office = office_factory(db_url)
    office.at(london(2026, 4, 14, 10, 0))
    office.send(*COMPLAINT, sender="Carer One <carer@example.com>")
    ref = office.latest().reference
    office.at(london(2026, 4, 20, 10, 0))
    _close(office, ref)
    sent = office.sweep()
    surveys = [m for m in sent if "How did we do?" in str(m.message["Subject"])]
    assert [m.rcpt_tos for m in surveys] == [["carer@example.com"]]
    survey_text = text_of(surveys[0])
    for i, word in enumerate(SCALE):
        assert f"{5 - i}  {word}" in survey_text
    assert "anything we could have done better" in survey_text
    assert office.get(Case, office.latest().id).status == "closed"
    assert not [m for m in office.sweep() if "How did we do?" in str(m.message["Subject"])]  # once

    # the answer: a number, a word and a sentence, with the survey quoted below
    office.at(london(2026, 5, 7, 14, 0))
    sent = office.send(**reply(surveys[0].message, "4 - very good, but it would have helped to be told "
                               "sooner when the session was cancelled.", survey_text,
                               "Carer One <carer@example.com>"))
    assert to(sent, "carer@example.com") == []  # nothing automatic back to them
    with office.app.db.session() as s:
        answer = s.exec(select(Survey)).one()
        assert (answer.rating, answer.score) == ("Very Good", 4) and "cancelled" in answer.comment
        report = build_report(s, office.app.rules, date(2026, 5, 1), date(2026, 6, 1))
    fb = report.feedback.survey
    assert (fb.sent, fb.answered, fb.rate) == (1, 1, "100%")
    assert dict(fb.distribution) == {"Excellent": 0, "Very Good": 1, "Good": 0, "Average": 0, "Poor": 0}
    assert fb.themes["Cancellations and timekeeping"] == 1
    rows = {(a, b): v for a, b, v in list(csv.reader(io.StringIO(render_csv(report))))[1:]}
    assert rows[("survey", "response rate")] == "100%" and rows[("survey rating", "Very Good")] == "1"
    html = render_html(report)
    assert "How complainants rated our handling" in html and "carer@" not in html
    assert "would have helped" not in html  # comments are counted by theme, never quoted

    # the same person's next complaint closes: no second survey
    office.at(london(2026, 5, 11, 10, 0))
    office.send("Another complaint", "I want to make a formal complaint: the minibus did not turn up "
                "and nobody told us. This is not good enough.", sender="Carer One <carer@example.com>")
    second = office.latest().reference
    assert second != ref
    with office.app.db.session() as s:
        transition(s, case_by_reference(s, second), CLOSED, "line.manager@example.org", "resolved")
    office.at(london(2026, 5, 12, 10, 0))
    assert not [m for m in office.sweep() if "How did we do?" in str(m.message["Subject"])]


def test_no_survey_for_anonymous_abusive_or_withdrawn(office_factory, sqlite_url):
    office = office_factory(sqlite_url)
    office.at(london(2026, 4, 14, 10, 0))
    refs = {}
    for who, (subject, body) in (("anon", ANONYMOUS), ("angry", ABUSIVE), ("quitter", COMPLAINT),
                                 ("happy", COMPLAINT)):
        office.send(subject, body, sender=f"{who.title()} <{who}@example.com>")
        refs[who] = office.latest().reference
    assert "anonymous" in office.get(Case, office.latest().id - 3).flag_list
    assert "abusive" in office.get(Case, office.latest().id - 2).flag_list
    office.at(london(2026, 4, 15, 10, 0))
    office.send(f"Re: [{refs['quitter']}] Complaint", "Please withdraw my complaint. The matter has been "
                "sorted out and I no longer wish to pursue it. Thank you.", sender="Quitter <quitter@example.com>")
    with office.app.db.session() as s:
        assert case_by_reference(s, refs["quitter"]).status == "withdrawn"
        for who in ("anon", "angry", "quitter", "happy"):  # staff close them all
            transition(s, case_by_reference(s, refs[who]), CLOSED, "line.manager@example.org", "done")
    office.at(london(2026, 4, 16, 10, 0))
    surveys = [m for m in office.sweep() if "How did we do?" in str(m.message["Subject"])]
    assert [m.rcpt_tos for m in surveys] == [["happy@example.com"]]
    with office.app.db.session() as s:
        assert [c.reference for c in s.exec(select(Case).join(Survey, col(Survey.case_id) == col(Case.id)))] \
            == [refs["happy"]]


# -- reading replies ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("yes that's fine", "yes"), ("Yes!", "yes"), ("happy for you to use it", "yes"),
    ("Of course you can, Marcus deserves it", "yes"), ("No problem at all, go ahead", "yes"),
    ("I don't mind", "yes"), ("That's fine but please don't use my name", "yes"), ("ok", "yes"),
    ("no thanks", "no"), ("please don't", "no"), ("No, please don't", "no"), ("Nope", "no"),
    ("I'm not happy for you to use it", "no"), ("I'd rather you didn't", "no"),
    ("you can't use it", "no"), ("I don't want you to use it", "no"),
    ("Actually I've changed my mind, please take it down", "no"), ("I withdraw my permission", "no"),
    ("Thanks for passing it on", None), ("I'm sure Marcus will be pleased", None), ("", None),
])
def test_consent_is_read_from_plain_words(text, expected):
    assert parse_consent(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Excellent", "Excellent"), ("5", "Excellent"), ("very good thanks", "Very Good"), ("good", "Good"),
    ("Average", "Average"), ("Poor - nobody called me back", "Poor"), ("Not very good", "Poor"),
    ("4/5", "Very Good"), ("8 out of 10", "Very Good"), ("I'd give you a 4", "Very Good"),
    ("Brilliant service", "Excellent"), ("It was ok I suppose", "Average"), ("rubbish", "Poor"),
    ("2 weeks late, poor", "Poor"), ("Nothing to add", None),
])
def test_survey_answers_are_read_tolerantly(text, expected):
    got = parse_rating(text, SCALE)
    assert (got[0] if got else None) == expected


def test_rules_check_names_people_who_point_at_nobody(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
    (rules / "people.toml").write_text('[[people]]\nname = "Marcus Reid"\nteam = "Nowhere"\n'
                                       'line_manager = "nobody_at_all"\naddress = "not an address"\n')
    done = run_cli("rules", "check", str(rules))
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "people.toml" in out and "address" in out
    (rules / "people.toml").write_text('[[people]]\nname = "Marcus Reid"\nteam = "Nowhere"\n'
                                       'line_manager = "nobody_at_all"\n')
    out = (lambda d: d.stdout + d.stderr)(run_cli("rules", "check", str(rules)))
    assert "people#1.team" in out and "people#1.line_manager" in out


def test_thank_you_does_not_ask_when_the_policy_never_publishes(tmp_path, dovecot, smtp_server, sqlite_url):
    office = Office(tmp_path, dovecot, smtp_server, sqlite_url)
    try:
        workflow = office.app.rules.path / "workflow.toml"
        workflow.write_text(workflow.read_text().replace('publish = "anonymised"', 'publish = "never"'))
        office.app.close()
        office.app = App.load(office.config)
        office.at(london(2026, 4, 14, 10, 0))
        sent = office.send(*COMPLIMENT, sender="Priya Sharma <priya@example.com>")
        assert "May we share" not in text_of(to(sent, "priya@example.com")[0])
        case = office.latest()
        assert office.get(Compliment, case.id).consent == ""
        thanks = to(sent, "priya@example.com")[0]
        office.send(**reply(thanks.message, "yes that's fine", text_of(thanks), "Priya Sharma <priya@example.com>"))
        assert office.get(Compliment, case.id).consent == ""
        assert "brilliant" not in board_text(office)
    finally:
        office.close()



def test_erasure_removes_survey_words_and_the_quote(office_factory, sqlite_url):
    from mailbot import retention

    office = office_factory(sqlite_url)
    office.at(london(2026, 4, 14, 10, 0))
    office.send(*COMPLAINT, sender="Carer One <carer@example.com>")
    ref = office.latest().reference
    _close(office, ref)
    survey = [m for m in office.sweep() if "How did we do?" in str(m.message["Subject"])][0]
    office.send(**reply(survey.message, "Excellent, the youth worker called me back the same day.",
                        text_of(survey), "Carer One <carer@example.com>"))
    with office.app.db.session() as s:
        assert "called me back" in s.exec(select(Survey)).one().comment
        plan = retention.plan_erasure(s, "carer@example.com")
    retention.execute(office.app.db, plan)
    with office.app.db.session() as s:
        answer = s.exec(select(Survey)).one()
    assert answer.comment == "" and answer.rating == "Excellent"

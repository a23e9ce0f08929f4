"""Follow-ups through the real pipeline with a controllable clock: reminders before each date,
escalation when it is missed, holding letters to the complainant, cases closing when their
appeal window runs out, the Board's report after an outcome, compliments passed on, periodic
report mails; exactly once across restarts, late runs, duplicated or lost APScheduler jobs and
two sweeps at once.  The dates are worked out by hand from the 2026 calendar of England and
Wales (Good Friday 3 April, Easter Monday 6 April, bank holidays 4 and 25 May)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import col, select

from mailbot.app import App
from mailbot.cases.models import Event, FollowUp, Message
from mailbot.cases.workflow import extend_deadline
from mailbot.daemon import Daemon, RunReport
from mailbot import scheduler
from mailbot.policy.calendar import LONDON
from mailbot.scheduler import FollowUpScheduler, plan, sweep
from tests.policy_story import Sent, Story, london, only, record_outcome_now

COMPLAINT = ("Complaint about the Thursday youth club",
             "I want to make a formal complaint. The Thursday youth club session was cancelled for "
             "the third week running and nobody told the parents. This is not good enough and I "
             "expect an explanation.")
APPEAL = ("I am not satisfied with the outcome of my complaint and I would like to appeal. Please "
          "pass it to someone more senior for a review of the outcome.")


@pytest.fixture
def story_factory(tmp_path, smtp_server):
    stories = []

    def make(preset: str, db_url: str, extra_roles: str = "", extra_policy: str = "") -> Story:
        story = Story(tmp_path, preset, smtp_server, db_url)
        if extra_roles or extra_policy:
            rules = tmp_path / "rules"
            (rules / "roles.toml").write_text((rules / "roles.toml").read_text() + extra_roles)
            (rules / "policy.toml").write_text((rules / "policy.toml").read_text() + extra_policy)
            story.app.close()
            story.app = App.load(story.config)
        stories.append(story)
        return story

    yield make
    for story in stories:
        story.close()


def follow_up(story: Story) -> list[Sent]:
    """One daemon round's follow-up sweep at the story's clock; what it sent."""
    story.smtp.clear()
    daemon = Daemon(story.app)
    report = RunReport()
    try:
        daemon.run_follow_ups(report)
    finally:
        daemon.close()
    if report.sent:
        story.smtp.wait_for(report.sent)
    out = []
    for m in story.smtp.messages:
        body = m.message.get_body(("plain",))
        out.append(Sent(m.rcpt_tos, str(m.message["Subject"]), body.get_content() if body else ""))
    return out


def days(story: Story, start: datetime, end: datetime, hours=(9, 13, 17)) -> dict[str, list[tuple[str, list[str]]]]:
    """Sweep at the given hours of every day from start to end; what went out, by London day."""
    sent: dict[str, list[tuple[str, list[str]]]] = {}
    day = start
    while day <= end:
        for hour in hours:
            story.at(day.replace(hour=hour, minute=0))
            for m in follow_up(story):
                sent.setdefault(f"{day:%a %d %b}@{hour}", []).append((m.subject, sorted(m.to)))
        day += timedelta(days=1)
    return sent


def _text(raw: bytes) -> str:
    import email
    from email.policy import default

    return email.message_from_bytes(raw, policy=default).get_body(("plain",)).get_content()


def _complain(story: Story, who: str) -> str:
    story.mail(*COMPLAINT, sender=f"{who.title()} <{who}@example.com>", expect=("complaint", []))
    return story.latest_case().reference


def test_youth_service_000_reminders_escalation_holding_letter(story_factory, db_url):
    story = story_factory("youth-service-000", db_url)
    # Tuesday 14 April 2026 10:00: respond within 28 days -> Tuesday 12 May 17:00
    story.at(london(2026, 4, 14, 10, 0))
    late = _complain(story, "parent")
    on_time = _complain(story, "carer")
    extended = _complain(story, "guardian")
    assert story.due(late, "respond") == london(2026, 5, 12, 17, 0)

    # staff answer one in time, and extend another with a reason before its reminders
    story.at(london(2026, 5, 5, 15, 0))
    record_outcome_now(story, on_time, detail="not upheld")
    story.do(extend_deadline, extended, "respond", london(2026, 5, 26, 17, 0), "line.manager@example.org",
             "the youth worker who ran the session is on annual leave until 18 May")

    sent = days(story, london(2026, 4, 14, 0, 0), london(2026, 5, 29, 0, 0))
    expected = {
        # "2 working days" before Tuesday 12 May: Monday 11 (1), Friday 8 (2); "1 day": Monday 11
        "Fri 08 May@9": [(f"[{late}] Reminder: send our response by Tuesday 12 May 2026",
                          ["line.manager@example.org"])],
        "Mon 11 May@9": [(f"[{late}] Reminder: send our response by Tuesday 12 May 2026",
                          ["line.manager@example.org"]),
                         # the holding letter: 1 working day before the date first promised
                         (f"Your complaint: an update on timing [{late}]", ["parent@example.com"]),
                         (f"Your complaint: an update on timing [{extended}]", ["guardian@example.com"])],
        # missed at 17:00 on Tuesday: escalated at 09:00 on Wednesday to the owner and the CEO
        "Wed 13 May@9": [(f"[{late}] MISSED: send our response by Tuesday 12 May 2026",
                          ["ceo@example.org", "line.manager@example.org"])],
        # the extended date, Tuesday 26 May (Monday 25 is a bank holiday): Thursday 21 and Friday 22
        "Thu 21 May@9": [(f"[{extended}] Reminder: send our response by Tuesday 26 May 2026",
                          ["line.manager@example.org"])],
        "Fri 22 May@9": [(f"[{extended}] Reminder: send our response by Tuesday 26 May 2026",
                          ["line.manager@example.org"])],
        "Wed 27 May@9": [(f"[{extended}] MISSED: send our response by Tuesday 26 May 2026",
                          ["ceo@example.org", "line.manager@example.org"])],
        # the review window after the outcome of 5 May ran out on 19 May: closed, nobody chased;
        # at the next opening the complainant gets the policy's one satisfaction survey
        "Wed 20 May@9": [(f"[{on_time}] How did we do?", ["carer@example.com"])],
    }
    assert {k: sorted(v) for k, v in sent.items()} == {k: sorted(v) for k, v in expected.items()}
    assert story.case(on_time).status == "closed" and "follow_up_window_closed" in story.events(on_time)
    with story.app.db.session() as s:
        holding = s.exec(select(Message).where(col(Message.purpose) == "holding_letter",
                                               col(Message.recipients) == "guardian@example.com")).one()
    text = _text(holding.raw)
    assert "on annual leave until 18 May" in text and "Tuesday 26 May 2026" in text

    # 28 days after the outcome of 5 May, with no review asked for: the CEO reports to the Board
    sent = days(story, london(2026, 6, 1, 0, 0), london(2026, 6, 3, 0, 0))
    report = sent["Tue 02 Jun@9"]
    assert report == [(f"[{on_time}] Complaint outcome report for the Board",
                       ["ceo@example.org", "trustees@example.org"])]
    with story.app.db.session() as s:
        raw = _text(s.exec(select(Message).where(col(Message.purpose) == "report_case_outcome")).one().raw)
    assert "not upheld" in raw and "carer" not in raw.lower()  # reference only, no names or addresses


def test_nothing_twice_restart_late_jobs_and_concurrent_sweeps(story_factory, db_url):
    story = story_factory("youth-service-000", db_url)
    story.at(london(2026, 4, 14, 10, 0))
    refs = [_complain(story, f"person{i}") for i in range(4)]
    # downtime: nothing ran between 14 April and Thursday 14 May 10:00 (reminders overtaken)
    story.at(london(2026, 5, 14, 10, 0))
    with story.app.db.session() as s:
        due = [p for p in plan(s, story.app.rules) if p.due]
    assert sorted({p.kind for p in due}) == ["escalation", "holding_letter"]
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(sweep(story.app))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r.done) for r in results) == 8 and not any(r.errors for r in results)
    # a restart, a late or duplicated APScheduler job: the same sweep finds nothing left to do
    story.app.close()
    story.app = App.load(story.config)
    runner = FollowUpScheduler(story.app, name="restart-test")
    runner.start(paused=True)
    try:
        assert runner.run_due().done == []
        assert follow_up(story) == []
    finally:
        runner.shutdown()
    with story.app.db.session() as s:
        rows = s.exec(select(FollowUp)).all()
        letters = s.exec(select(Message).where(col(Message.direction) == "out",
                                               col(Message.purpose).in_(["staff_escalation", "holding_letter"]))).all()
    assert len(rows) == 8 and len(letters) == 8
    assert {r.kind for r in rows} == {"escalation", "holding_letter"}
    assert all(r.done_at == london(2026, 5, 14, 10, 0) for r in rows)


def test_crash_in_the_middle_of_a_sweep_rolls_back_that_follow_up(story_factory, sqlite_url, monkeypatch):
    story = story_factory("youth-service-000", sqlite_url)
    story.at(london(2026, 4, 14, 10, 0))
    for i in range(3):
        _complain(story, f"person{i}")
    story.at(london(2026, 5, 13, 9, 0))
    real_queue, calls = scheduler.queue, []

    def dying_queue(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")  # not an Exception: nothing catches it
        return real_queue(*args, **kwargs)

    monkeypatch.setattr(scheduler, "queue", dying_queue)
    with pytest.raises(KeyboardInterrupt):
        sweep(story.app)
    monkeypatch.setattr(scheduler, "queue", real_queue)
    with story.app.db.session() as s:
        assert len(s.exec(select(FollowUp)).all()) == 1  # the second one was rolled back whole
    story.app.close()
    story.app = App.load(story.config)
    assert len(sweep(story.app).done) == 5  # 3 escalations and 3 (late) holding letters in all
    with story.app.db.session() as s:
        assert len(s.exec(select(FollowUp)).all()) == 6
        for purpose in ("staff_escalation", "holding_letter"):
            assert len(s.exec(select(Message).where(col(Message.purpose) == purpose)).all()) == 3


def test_training_cic_003_progress_updates_until_the_answer(story_factory, sqlite_url):
    story = story_factory("training-cic-003", sqlite_url)
    story.at(london(2026, 4, 1, 11, 0))  # 28 working days (Easter, May Day) -> Thursday 14 May
    ref = _complain(story, "learner")
    assert story.due(ref, "respond") == london(2026, 5, 14, 17, 0)
    sent = days(story, london(2026, 5, 1, 0, 0), london(2026, 6, 11, 0, 0), hours=(9,))
    story.at(london(2026, 6, 11, 12, 0))
    record_outcome_now(story, ref, "manager@example.org")
    sent.update(days(story, london(2026, 6, 12, 0, 0), london(2026, 7, 10, 0, 0), hours=(9,)))
    to_learner = [day for day, letters in sent.items() for s, to in letters if to == ["learner@example.com"]]
    # the working day after the date, then 10 working days after it (not 25 May), then 20, ...
    # until the outcome went out on 11 June
    assert to_learner == ["Fri 15 May@9", "Fri 29 May@9"]
    reminders = [day for day, letters in sent.items() for s, to in letters if "Reminder" in s]
    assert reminders == ["Thu 07 May@9", "Wed 13 May@9"]  # 5 working days (May Day) and 1 before
    assert [day for day, letters in sent.items() for s, to in letters if "MISSED" in s] == ["Fri 15 May@9"]
    assert "director@example.org" in next(to for letters in sent.values() for s, to in letters if "MISSED" in s)


def test_compliment_passed_on_to_the_person_it_names(story_factory, sqlite_url):
    story = story_factory("youth-service-000", sqlite_url, extra_roles=(
        '\n[youth_worker_marcus]\ntitle = "Youth Worker"\nname = "Marcus"\naddress = "marcus@example.org"\n'))
    story.at(london(2026, 4, 11, 20, 0))  # a Saturday evening
    story.mail("Thank you to Marcus", "A huge thank you to Marcus, he was brilliant with my son and "
               "really helped him get his first job. From Priya Sharma, 07700 900123",
               sender="Priya Sharma <priya@example.com>", expect=("compliment", []))
    ref = story.latest_case().reference
    assert follow_up(story) == []  # not at the weekend: at opening time on Tuesday (Easter Monday)
    story.at(london(2026, 4, 14, 9, 0))
    letter = only(follow_up(story), "marcus@example.org")
    assert letter.subject == f"[{ref}] A compliment about you"
    assert "brilliant with my son" in letter.text
    assert "Priya" not in letter.text and "priya@" not in letter.text and "07700" not in letter.text
    assert story.case(ref).status == "closed"
    assert follow_up(story) == []


def test_quarterly_report_mailed_once_with_html_and_pdf(story_factory, sqlite_url):
    story = story_factory("volunteer-centre-001", sqlite_url)
    story.at(london(2026, 5, 6, 10, 0))
    ref = _complain(story, "member")
    story.at(london(2026, 6, 30, 16, 0))
    assert follow_up(story) == [] or True  # escalations of the unanswered complaint may go out
    story.at(london(2026, 7, 1, 9, 0))  # Wednesday: the first opening after the quarter
    sent = [m for m in follow_up(story) if "log" in m.subject]
    assert [(m.subject, sorted(m.to)) for m in sent] == [
        ("Complaints and compliments log: 1 April 2026 to 30 June 2026", ["ceo@example.org", "trustees@example.org"])]
    captured = [m for m in story.smtp.messages if "log" in str(m.message["Subject"])][0].message
    names = [part.get_filename() for part in captured.iter_attachments()]
    assert names == ["complaints-and-compliments-log-2026-04-01-to-2026-06-30.html",
                     "complaints-and-compliments-log-2026-04-01-to-2026-06-30.pdf"]
    html = next(captured.iter_attachments()).get_content()
    assert ref in html or "1</td>" in html
    assert "member@example.com" not in html and "Member" not in html and "youth club" not in html
    story.at(london(2026, 7, 1, 13, 0))
    assert [m for m in follow_up(story) if "log" in m.subject] == []


def test_apscheduler_jobs_are_kept_in_the_database_and_rebuilt(story_factory, sqlite_url):
    """The jobs live in the mailbot database (SQLAlchemyJobStore); they are rebuilt from the
    case book on start, so a lost or stray job is repaired, and a job that fires late (after
    downtime) or twice does exactly what the daemon loop's sweep would."""
    story = story_factory("youth-service-000", sqlite_url)
    story.at(london(2026, 4, 14, 10, 0))
    _complain(story, "parent")
    runner = FollowUpScheduler(story.app, name="job-test")
    runner.start(paused=True)
    try:
        jobs = runner.stored_jobs()
        # one wake-up per moment: reminders on 8 and 11 May (the holding letter shares 11 May),
        # the escalation on 13 May; the trustee-meeting report has no meeting dates here
        assert [t.astimezone(LONDON) for _, t in jobs] == [
            london(2026, 5, 8, 9, 0), london(2026, 5, 11, 9, 0), london(2026, 5, 13, 9, 0)]
        runner.scheduler.remove_job(jobs[0][0])  # lost
        runner.scheduler.add_job(scheduler.run_job, "date", run_date=jobs[1][1], args=["job-test"],
                                 id=scheduler.JOB_PREFIX + "job-test:stray")  # stray
        runner.rebuild()
        assert runner.stored_jobs() == jobs
    finally:
        runner.shutdown()

    # a restart: a new scheduler finds the same jobs in the table
    story.app.close()
    story.app = App.load(story.config)
    again = FollowUpScheduler(story.app, name="job-test")
    again.scheduler.start(paused=True)
    scheduler._RUNNERS["job-test"] = again
    try:
        assert again.stored_jobs() == jobs
        # down from 7 until 11 May 09:00: both stored jobs now due fire, late, one after the other
        story.at(london(2026, 5, 11, 9, 0))
        for job_id, _ in jobs[:2]:
            job = again.scheduler.get_job(job_id)
            job.func(*job.args, **job.kwargs)  # what APScheduler's executor does, then
            again.scheduler.remove_job(job_id)  # it removes the date job that ran
        with story.app.db.session() as s:
            done = sorted((f.kind, f.offset) for f in s.exec(select(FollowUp)))
        assert done == [("holding_letter", "first"), ("reminder", "1 day")]  # 8 May's was overtaken
        assert follow_up(story) == []  # the daemon loop's sweep at the same moment: nothing left
        assert [t.astimezone(LONDON) for _, t in again.stored_jobs()] == [london(2026, 5, 13, 9, 0)]
    finally:
        again.shutdown()


def test_apscheduler_fires_the_sweep_in_its_own_thread(tmp_path, sqlite_url):
    """With the real clock: a job in the database fires in APScheduler's thread and sweeps."""
    from tests.mailkit import write_config

    app = App.load(write_config(tmp_path, db_url=sqlite_url))
    runner = FollowUpScheduler(app, name="thread-test", sender_factory=app.open_sender)
    runner.start()
    try:
        runner.scheduler.add_job(scheduler.run_job, "date", args=["thread-test"], id="thread-test-job",
                                 run_date=datetime.now(timezone.utc) + timedelta(seconds=0.3))
        deadline = time.monotonic() + 20
        while runner.last is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.last is not None and runner.last.errors == []
    finally:
        runner.shutdown()
        app.close()


def test_schedule_list_shows_what_is_due_when_and_why(story_factory, sqlite_url):
    from typer.testing import CliRunner

    from mailbot.cli import app as cli

    story = story_factory("youth-service-000", sqlite_url)
    story.at(london(2026, 4, 14, 10, 0))
    ref = _complain(story, "parent")
    story.at(london(2026, 5, 7, 12, 0))
    result = CliRunner().invoke(cli, ["schedule", "list", "--config", str(story.config), "--days", "10"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "4 follow-up(s)" in out and ref in out
    for when in ("Fri 08 May 2026 09:00", "Mon 11 May 2026 09:00", "Wed 13 May 2026 09:00"):
        assert when in out
    result = CliRunner().invoke(cli, ["schedule", "list", "--config", str(story.config), "--json"])
    listed = json.loads(result.output)
    assert [(p["kind"], p["when"][:16]) for p in listed] == [
        ("reminder", "2026-05-08T08:00"), ("holding_letter", "2026-05-11T08:00"),
        ("reminder", "2026-05-11T08:00"), ("escalation", "2026-05-13T08:00")]
    assert "reminder 2 working days before" in listed[0]["why"]
    assert listed[1]["to"] == [] and "the complainant is told why" in listed[1]["why"]
    assert listed[3]["to"] == ["Line Manager", "Chief Executive Officer"]
    assert all(p["reference"] == ref for p in listed)


def test_rules_check_renders_the_follow_up_letters(tmp_path):
    from mailbot.policy.check import check_templates
    from mailbot.policy.rules import load_rules
    from tests.mailkit import REPO

    for preset in sorted((REPO / "rules" / "presets").iterdir()):
        rules = load_rules(preset)
        problems = [p for p in check_templates(rules, REPO / "templates") if "follow-up" in p]
        assert problems == [], preset.name
    broken = tmp_path / "templates"
    broken.mkdir()
    for path in (REPO / "templates").glob("*.j2"):
        (broken / path.name).write_text(path.read_text())
    (broken / "staff_reminder.txt.j2").write_text("{{ follow_up.deadline.nope }}\n")
    problems = check_templates(load_rules(REPO / "rules"), broken)
    assert any("staff_reminder" in p and "nope" in p for p in problems), problems


def test_report_command_writes_html_pdf_and_csv(story_factory, sqlite_url, tmp_path):
    from typer.testing import CliRunner

    from mailbot.cli import app as cli

    story = story_factory("employment-charity-002", sqlite_url)
    story.at(london(2026, 4, 14, 10, 0))
    answered, late = _complain(story, "customer"), _complain(story, "critic")
    story.at(london(2026, 5, 1, 10, 0))
    record_outcome_now(story, answered, "ceo@example.org", detail="partly upheld")
    from mailbot.reports import record_action

    story.do(record_action, answered, "ceo@example.org",
             "Spoke to Customer at customer@example.com on 07700 900123; rota changed")
    story.at(london(2026, 7, 1, 12, 0))
    outputs = {}
    for fmt in ("html", "pdf", "csv"):
        out = tmp_path / f"q2.{fmt}"
        result = CliRunner().invoke(cli, ["report", "--from", "2026-04-01", "--to", "2026-06-30",
                                          "--out", str(out), "--config", str(story.config)])
        assert result.exit_code == 0, result.output
        assert "2 case(s) from 1 April 2026 to 30 June 2026" in result.output
        outputs[fmt] = out.read_bytes()
    assert outputs["pdf"].startswith(b"%PDF")
    rows = {(a, b): c for a, b, c in __import__("csv").reader(outputs["csv"].decode().splitlines())}
    assert rows[("cases", "opened")] == "2" and rows[("outcome", "partly upheld")] == "1"
    assert rows[("timeliness respond", "met")] == "1" and rows[("timeliness respond", "missed")] == "1"
    assert rows[("remedial action", answered)] == \
        "Spoke to [name removed] at [address removed] on [number removed]; rota changed"
    html = outputs["html"].decode()
    assert "data:image/png;base64," in html and late not in html  # references only where needed
    for private in ("customer@example.com", "critic@example.com", "Critic", "youth club"):
        assert private not in html and private.encode() not in outputs["csv"]
    result = CliRunner().invoke(cli, ["report", "--from", "2026-06-30", "--to", "2026-04-01",
                                      "--out", str(tmp_path / "x.html"), "--config", str(story.config)])
    assert result.exit_code == 2 and "before" in result.output

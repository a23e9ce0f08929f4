"""A simulated quarter (April to June 2026, with Easter and two May bank holidays) of a youth
service's mailbox under policy 000, through the real pipeline: a Maildir inbox, the folder
outbox, the follow-up sweep of the daemon loop and APScheduler's jobs in the same database,
and staff who answer some complaints in time, extend others with a reason, answer late or not
at all, and record outcomes and remedial actions.  Half-way through, the daemon dies in the
middle of a sweep and is restarted (its stored jobs partly lost, partly duplicated).

The test then works out, independently of mailbot.scheduler (its own working-day arithmetic
from the ``holidays`` package, and the case history from the audit events), every reminder,
escalation, holding letter, closed appeal window, Board report and passed-on compliment the
policy asks for, and checks that each went out exactly once, at the right moment on the right
working day, and nothing else did.  Finally the quarter's report is built and rendered to
HTML, PDF and CSV, and its numbers are checked against the database.
"""

from __future__ import annotations

import csv
import email
import heapq
import io
import itertools
import json
import math
import mailbox
import os
import random
import re
import shutil
import statistics
import subprocess
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from email.policy import default as default_policy
from pathlib import Path

import holidays
import pytest
from sqlmodel import col, select

from mailbot import scheduler
from mailbot.app import App
from mailbot.cases import models
from mailbot.cases.models import Case, CaseProgress, Deadline, Event, FollowUp, Message
from mailbot.cases.registry import case_by_reference
from mailbot.cases.workflow import (ACKNOWLEDGED, extend_deadline, meet_deadline, record_outcome,
                                    transition)
from mailbot.daemon import Daemon, RunReport
from mailbot.reports import build_report, record_action, render_csv, render_html, render_pdf
from mailbot.scheduler import FollowUpScheduler
from tests.mailkit import REPO, make_mail, write_config

LONDON = __import__("zoneinfo").ZoneInfo("Europe/London")
BANK = holidays.country_holidays("GB", subdiv="ENG", years=[2026])
QUARTER = (date(2026, 4, 1), date(2026, 7, 1))
END = datetime(2026, 7, 10, 18, 0, tzinfo=LONDON)
SWEEP_HOURS = ((9, 0), (13, 0), (17, 30))

COMPLAINTS = [
    ("Complaint about the Thursday youth club", "I want to make a formal complaint. The Thursday youth "
     "club session was cancelled for the third week running and nobody told the parents."),
    ("Formal complaint - minibus", "I wish to make a formal complaint. The minibus did not turn up to take "
     "my son to the club again today and nobody rang us. This is not acceptable."),
    ("Complaint about a member of staff", "I am writing to complain about the way a member of staff spoke "
     "to me at the drop-in. She was rude and refused to listen. I expect an explanation."),
    ("Complaint: fees", "I want to complain about the fees for the summer programme. We were charged twice "
     "and nobody has answered my emails about a refund. Please treat this as a formal complaint."),
    ("Complaint about the building", "I would like to make a complaint. The toilets at the centre were "
     "dirty again and the heating was off all evening. This is not good enough."),
    ("Unhappy with the service - complaint", "I am not happy with the service and want to make a formal "
     "complaint. My son was promised a place on the course and then told there was no room."),
]
COMPLIMENTS = [
    ("Thank you", "A huge thank you to everyone at the youth club, my daughter loves coming every week."),
    ("Thanks to Marcus", "A huge thank you to Marcus, he was brilliant with my son and really helped him "
     "get his first job."),
]
APPEAL = ("I am not satisfied with the outcome of my complaint and I would like to appeal. Please pass "
          "it to someone more senior for a review of the outcome.")
WITHDRAW = ("Please withdraw my complaint. The matter has been sorted out and I no longer wish to pursue "
            "it. Thank you.")
REASONS = ["the youth worker who ran the session is on annual leave",
           "we are waiting to hear from the transport company"]


# -- an independent calendar (not mailbot's) ------------------------------------------------------


def working(day: date) -> bool:
    return day.weekday() < 5 and day not in BANK


def nine(day: date) -> datetime:
    return datetime.combine(day, time(9, 0), tzinfo=LONDON).astimezone(timezone.utc)


def back_working(day: date, n: int) -> date:
    while n:
        day -= timedelta(days=1)
        n -= working(day)
    return day


def forward_working(day: date, n: int) -> date:
    while n:
        day += timedelta(days=1)
        n -= working(day)
    return day


def on_or_before_working(day: date) -> date:
    while not working(day):
        day -= timedelta(days=1)
    return day


def on_or_after_working(day: date) -> date:
    while not working(day):
        day += timedelta(days=1)
    return day


def local_day(moment: datetime) -> date:
    return moment.astimezone(LONDON).date()


# -- the simulation --------------------------------------------------------------------------------


class Quarter:
    def __init__(self, tmp_path: Path, db_url: str):
        rules = tmp_path / "rules"
        shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
        for path in (REPO / "rules" / "presets" / "youth-service-000").glob("*.toml"):
            shutil.copy(path, rules / path.name)
        (rules / "roles.toml").write_text((rules / "roles.toml").read_text() + (
            '\n[youth_worker_marcus]\ntitle = "Youth Worker"\nname = "Marcus"\naddress = "marcus@example.org"\n'))
        # the Board meets on 20 May and 8 July; and a quarterly report besides
        policy = (rules / "policy.toml").read_text().replace(
            'name = "Review outcome report to the Board"\n',
            'name = "Review outcome report to the Board"\nmeetings = [2026-05-20, 2026-07-08]\n')
        (rules / "policy.toml").write_text(policy + (
            "\n[[reporting]]\nname = \"Quarterly complaints report\"\n"
            "to = [\"board\"]\nevery = \"quarter\"\ncontents = [\"count\", \"nature\", \"outcomes\", \"timeliness\"]\n"))
        workflow = (rules / "workflow.toml").read_text()
        (rules / "workflow.toml").write_text(workflow.replace(
            'before = "1 working day"\n', 'before = "1 working day"\nevery = "10 working days"\n'))
        self.inbox = tmp_path / "inbox"
        mailbox.Maildir(self.inbox, create=True)
        self.outbox = tmp_path / "outbox"
        self.config = write_config(tmp_path, db_url=db_url, maildir=self.inbox, rules=rules)
        self.rng = random.Random(20260401)
        self.heap: list = []
        self.seq = itertools.count()
        self.sweeps: list[datetime] = []
        self.by_job, self.by_loop = Counter(), Counter()
        self.people: dict[str, str] = {}  # address -> name
        self.subjects: list[str] = []
        self.start()

    def start(self) -> None:
        self.app = App.load(self.config)
        self.runner = FollowUpScheduler(self.app, name="quarter", sender_factory=self.app.open_sender)
        self.runner.start(paused=True)  # its jobs are fired below, at the simulated moments
        self.daemon = Daemon(self.app)
        self.daemon.follow_ups = self.runner

    def stop(self) -> None:
        self.daemon.close()
        self.app.close()

    def at(self, when: datetime) -> None:
        models._clock_override[:] = [when.astimezone(timezone.utc)]

    def push(self, when: datetime, kind: str, *args) -> None:
        heapq.heappush(self.heap, (when.astimezone(timezone.utc), next(self.seq), kind, args))

    # -- what happens ------------------------------------------------------------------------------

    def plan_arrivals(self) -> None:
        day = QUARTER[0]
        n = 0
        while day < QUARTER[1]:
            for _ in range(self.rng.choice([2, 3, 3, 4, 5]) if working(day) else self.rng.choice([0, 1])):
                n += 1
                when = datetime.combine(day, time(self.rng.randint(7, 21), self.rng.randint(0, 59)), tzinfo=LONDON)
                name = f"Person{n} Testname{n}"
                address = f"person{n}@example.net"
                self.people[address] = name
                if self.rng.random() < 0.12:
                    subject, body = self.rng.choice(COMPLIMENTS)
                else:
                    subject, body = self.rng.choice(COMPLAINTS)
                    self.subjects.append(subject)
                self.push(when, "mail", f"{name} <{address}>", subject, body, None)
            if self.rng.random() < 0.15:  # a newsletter: recorded, never a case
                self.push(datetime.combine(day, time(6, 30), tzinfo=LONDON), "mail",
                          "News <news@lists.example.com>", "Our monthly newsletter", "Lots of news this month.",
                          {"List-Id": "<news.lists.example.com>", "Precedence": "list"})
            day += timedelta(days=1)
        day = QUARTER[0]
        while local_day(END.astimezone(timezone.utc)) >= day:
            for hour, minute in SWEEP_HOURS:
                self.push(datetime.combine(day, time(hour, minute), tzinfo=LONDON), "sweep")
            day += timedelta(days=1)

    def staff_for(self, case: Case) -> None:
        """What staff will do with a new complaint (decided once, at random)."""
        opened = case.opened_at
        if case.status == "triage":  # staff check the classification the next morning
            self.push(nine(forward_working(local_day(opened), 1)) + timedelta(hours=1), "acknowledge", case.reference)
        u = self.rng.random()
        detail = self.rng.choice(["upheld", "partly upheld", "not upheld"])
        if u < 0.10 and case.status != "triage":
            self.push(opened + timedelta(days=self.rng.randint(2, 6), hours=1), "withdraw", case.reference)
        elif u < 0.55:
            self.push(opened + timedelta(days=self.rng.randint(3, 25), hours=2), "outcome", case.reference, 0, detail)
        elif u < 0.70:
            self.push(opened + timedelta(days=self.rng.randint(6, 14), hours=3), "extend", case.reference)
            self.push(opened + timedelta(days=self.rng.randint(30, 45), hours=2), "outcome", case.reference, 0, detail)
        elif u < 0.88:
            self.push(opened + timedelta(days=self.rng.randint(29, 50), hours=2), "outcome", case.reference, 0, detail)
        # else: never answered within the simulation

    def run(self) -> None:
        self.plan_arrivals()
        restarted = False
        while self.heap:
            when, _, kind, args = heapq.heappop(self.heap)
            if when > END.astimezone(timezone.utc):
                break
            self.at(when)
            if kind == "mail":
                self.deliver_mail(*args)
            elif kind == "sweep":
                if not restarted and when >= nine(date(2026, 5, 13)) and self.letters_due() >= 3:
                    restarted = True
                    self.crash_and_restart()
                self.sweep(when)
            else:
                self.staff(kind, *args)

    def letters_due(self) -> int:
        with self.app.db.session() as s:
            return sum(p.due and p.kind in ("reminder", "escalation", "holding_letter", "outcome_report", "report")
                       for p in scheduler.plan(s, self.app.rules))

    def deliver_mail(self, sender, subject, body, headers) -> None:
        before = self.latest_id()
        raw = make_mail(sender=sender, subject=subject, body=body, date=models.utcnow(), headers=headers)
        mailbox.Maildir(self.inbox, create=False).add(raw)
        self.daemon.run_once()
        with self.app.db.session() as s:
            for case in s.exec(select(Case).where(col(Case.id) > before)):
                if case.kind == "complaint":
                    self.staff_for(case)

    def latest_id(self) -> int:
        with self.app.db.session() as s:
            return s.exec(select(Case.id).order_by(col(Case.id).desc()).limit(1)).first() or 0

    def sweep(self, when: datetime) -> None:
        """APScheduler's due jobs fire first (as its thread would), then the loop's own round."""
        self.sweeps.append(when)
        for job in sorted(self.runner.scheduler.get_jobs(), key=lambda j: j.next_run_time):
            if job.next_run_time <= when:
                job.func(*job.args, **job.kwargs)
                self.runner.scheduler.remove_job(job.id)
                self.by_job.update(p.kind for p in self.runner.last.done)
        result = self.daemon.run_follow_ups(RunReport())
        self.by_loop.update(p.kind for p in result.done)
        assert not result.errors, result.errors

    def crash_and_restart(self) -> None:
        """The daemon dies half-way through a sweep; some stored jobs are lost, one duplicated."""
        real_queue, calls = scheduler.queue, []

        def dying_queue(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt("power cut")
            return real_queue(*args, **kwargs)

        scheduler.queue = dying_queue
        try:
            with pytest.raises(KeyboardInterrupt):
                for job in sorted(self.runner.scheduler.get_jobs(), key=lambda j: j.next_run_time):
                    if job.next_run_time <= models.utcnow():
                        job.func(*job.args, **job.kwargs)
                        self.runner.scheduler.remove_job(job.id)
                scheduler.sweep(self.app)  # (the daemon loop's round, if the jobs left enough)
        finally:
            scheduler.queue = real_queue
        self.done_before_crash = len(calls) - 1
        jobs = self.runner.scheduler.get_jobs()
        for job in jobs[1:4]:
            job.remove()
        self.runner.scheduler.add_job(scheduler.run_job, "date", run_date=jobs[-1].next_run_time,
                                      args=["quarter"], id=scheduler.JOB_PREFIX + "quarter:stray")
        self.stop()
        self.start()

    def staff(self, kind: str, reference: str, *args) -> None:
        rules = self.app.rules
        with self.app.db.session() as s:
            case = case_by_reference(s, reference)
            progress = s.get(CaseProgress, case.id)
            stage = progress.stage if progress else 0
            if kind == "acknowledge" and case.status == "triage":
                transition(s, case, ACKNOWLEDGED, "line.manager@example.org", "checked")
                meet_deadline(s, case, "acknowledge", 0)
            elif kind == "withdraw" and case.status == "acknowledged":
                self.later(timedelta(0), "mail", f"{case.complainant_name} <{case.complainant}>",
                           f"Re: [{reference}] my complaint", WITHDRAW, None)
            elif kind == "extend" and case.status in ("acknowledged", "investigating"):
                d = next(d for d in s.exec(select(Deadline).where(col(Deadline.case_id) == case.id,
                                                                  col(Deadline.name) == "respond")))
                if d.met_at is None and d.extended_from is None:
                    extend_deadline(s, case, "respond", d.due_at + timedelta(days=14),
                                    "line.manager@example.org", self.rng.choice(REASONS))
            elif kind == "outcome" and case.status in ("acknowledged", "investigating", "appeal_received",
                                                       "appeal_acknowledged") and stage == args[0]:
                record_outcome(s, rules, case, "line.manager@example.org", args[1])
                if self.rng.random() < 0.4:
                    record_action(s, case, "line.manager@example.org",
                                  f"Apologised to {case.complainant_name} ({case.complainant}); "
                                  f"session times are now texted to parents a week ahead",
                                  lesson=self.rng.random() < 0.3)
                if stage == 0 and self.rng.random() < 0.25:  # asks for a review, mostly in time
                    wait = self.rng.randint(2, 12) if self.rng.random() < 0.8 else self.rng.randint(16, 20)
                    self.later(timedelta(days=wait, hours=1), "appeal", reference)
            elif kind == "appeal" and case.status in ("outcome_sent", "closed"):
                self.later(timedelta(0), "mail", f"{case.complainant_name} <{case.complainant}>",
                           f"Re: [{reference}] outcome of my complaint", APPEAL, None)
                self.later(timedelta(days=self.rng.randint(12, 45), hours=1), "outcome", reference, 1,
                           self.rng.choice(["upheld", "not upheld"]))

    def later(self, delay: timedelta, kind: str, *args) -> None:
        self.push(models.utcnow() + delay + timedelta(seconds=1), kind, *args)


# -- the oracle ------------------------------------------------------------------------------------


ACTIVE = {"acknowledge": {"received", "triage"}, "respond": {"received", "triage", "acknowledged", "investigating"},
          "appeal_respond": {"appeal_received", "appeal_acknowledged", "investigating"},
          "appeal_acknowledge": {"appeal_received"}, "pass_to_owner": {"received", "triage"}}


def first_sweep(sweeps: list[datetime], moment: datetime) -> datetime | None:
    return next((s for s in sweeps if s >= moment), None)


def expected_follow_ups(session, sweeps: list[datetime]) -> dict[tuple, datetime]:
    """(kind, what, offset, planned moment) -> when it must have been done: from the case
    history alone, with this module's own calendar."""
    expected: dict[tuple, datetime] = {}
    last = sweeps[-1]
    events: dict[int, list[Event]] = {}
    for e in session.exec(select(Event).where(col(Event.case_id).is_not(None)).order_by(col(Event.id))):
        events.setdefault(e.case_id, []).append(e)

    def expect(key: tuple, planned: datetime) -> None:
        done = first_sweep(sweeps, planned)
        if done is not None and planned <= last:
            expected[key] = done

    for d, case in session.exec(select(Deadline, Case).join(Case, col(Case.id) == col(Deadline.case_id))):
        history = events.get(case.id, [])
        if d.name == "appeal_window":
            appealed = d.met_at is not None
            closed = next((e.at for e in history if e.action == "status_changed" and e.at > d.created_at
                           and json.loads(e.detail)["to"] not in ("outcome_sent",)), None)
            if not appealed and (closed is None or closed > d.due_at):
                expect(("window_closed", d.id, "", d.due_at + timedelta(seconds=1)), d.due_at + timedelta(seconds=1))
            continue
        if d.name not in ACTIVE:
            continue
        left = [e.at for e in history if e.action == "status_changed" and e.at >= d.created_at
                and json.loads(e.detail)["to"] not in ACTIVE[d.name]]
        done_at = min([t for t in [d.met_at, *left] if t is not None], default=None)
        extension = next((e.at for e in history if e.action == "deadline_extended"
                          and json.loads(e.detail)["deadline"] == d.name), None)
        rounds = [(d.extended_from, d.created_at, extension), (d.due_at, extension, None)] \
            if d.extended_from else [(d.due_at, d.created_at, None)]

        def open_at(moment: datetime) -> bool:
            return d.created_at <= moment and (done_at is None or moment < done_at)

        for due, current_from, current_until in rounds:
            def current(moment: datetime) -> bool:
                return current_from <= moment and (current_until is None or moment < current_until)

            due_day = local_day(due)
            for offset, moment in (("2 working days", nine(back_working(due_day, 2))),
                                   ("1 day", nine(on_or_before_working(due_day - timedelta(days=1))))):
                if moment < due and open_at(moment) and current(moment):
                    expect(("reminder", d.id, offset, moment), moment)
            missed = nine(on_or_after_working(due_day + timedelta(days=1)))
            if open_at(missed) and current(missed):
                expect(("escalation", d.id, "", missed), missed)
        if d.name in ("respond", "appeal_respond"):
            promised = d.extended_from or d.due_at
            day = local_day(promised)
            letters = [("first", nine(back_working(day, 1)))]
            letters += [(f"update {k}", nine(forward_working(day, 10 * k))) for k in range(1, 12)]
            for offset, moment in letters:
                if open_at(moment):
                    expect(("holding_letter", d.id, offset, moment), moment)

    for case in session.exec(select(Case).where(col(Case.kind) == "compliment")):
        opened = case.opened_at.astimezone(LONDON)
        start = (case.opened_at if working(opened.date()) and time(9) <= opened.time() < time(17)
                 else nine(on_or_after_working(opened.date() + timedelta(days=0 if opened.time() < time(9) else 1))))
        expect(("compliment_passed_on", case.id, "", start), start)

    for e, case in session.exec(select(Event, Case).join(Case, col(Case.id) == col(Event.case_id))
                                .where(col(Event.action) == "outcome_recorded")):
        stage = json.loads(e.detail)["stage"]
        progress = session.get(CaseProgress, case.id)
        if progress.stage != stage:
            continue  # an appeal followed: only its own outcome is reported
        moment = nine(on_or_after_working(local_day(e.at) + timedelta(days=28)))
        expect(("outcome_report", case.id, f"stage {stage}", moment), moment)

    # the trustee meetings of 20 May (5 working days before: 13 May) and 8 July (1 July)
    expect(("report", "Review outcome report to the Board", "", nine(date(2026, 5, 13))), nine(date(2026, 5, 13)))
    expect(("report", "Review outcome report to the Board", "", nine(date(2026, 7, 1))), nine(date(2026, 7, 1)))
    expect(("report", "Quarterly complaints report", "", nine(date(2026, 7, 1))), nine(date(2026, 7, 1)))
    return expected


def actual_follow_ups(session) -> dict[tuple, datetime]:
    found = {}
    for f in session.exec(select(FollowUp)):
        if f.kind == "report":
            what = json.loads(f.detail)["why"].split(":")[0]
        else:
            what = f.deadline_id if f.deadline_id is not None else f.case_id
        offset = f.offset if f.kind in ("reminder", "holding_letter", "outcome_report") else ""
        found[(f.kind, what, offset, f.planned_at)] = f.done_at
    return found


@pytest.mark.slow
def test_a_simulated_quarter(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'mailbot.db'}"
    quarter = Quarter(tmp_path, db_url)
    try:
        quarter.run()
        app = quarter.app
        with app.db.session() as s:
            cases = s.exec(select(Case)).all()
            complaints = [c for c in cases if c.kind == "complaint"]
            assert len(cases) >= 200 and len(complaints) >= 160, len(cases)
            expected = expected_follow_ups(s, quarter.sweeps)
            actual = actual_follow_ups(s)
            missing = sorted(set(expected) - set(actual), key=str)[:5]
            extra = sorted(set(actual) - set(expected), key=str)[:5]
            assert not missing and not extra, f"missing {missing}\nextra {extra}"
            wrong_time = [(k, actual[k], expected[k]) for k in expected if actual[k] != expected[k]][:5]
            assert not wrong_time, wrong_time
            kinds = Counter(k[0] for k in actual)
            for kind in ("reminder", "escalation", "holding_letter", "window_closed", "outcome_report",
                         "compliment_passed_on", "report"):
                assert kinds[kind] > 0, kinds
            # every letter falls due on a working day in office hours (a closing window writes to
            # nobody); it went at the first sweep from then (checked above)
            for kind, _, _, planned in actual:
                local = planned.astimezone(LONDON)
                if kind != "window_closed":
                    assert working(local.date()) and time(9) <= local.time() < time(17), (kind, local)

            # each follow-up letter is in the outbox once and was delivered once
            rows = s.exec(select(FollowUp).where(col(FollowUp.message_id).is_not(None))).all()
            letters = {m.id: m for m in s.exec(select(Message).where(col(Message.direction) == "out"))}
            assert len({r.message_id for r in rows}) == len(rows)
            delivered = Counter()
            for path in quarter.outbox.glob("*.eml"):
                head = path.read_bytes().split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
                mid = re.search(rb"(?im)^message-id:\s*(<[^>]+>)", head)
                delivered[mid.group(1).decode()] += 1
            for r in rows:
                message = letters[r.message_id]
                assert message.delivery == "sent" and delivered[message.message_id] == 1, r.key
                if r.kind == "holding_letter":
                    case = s.get(Case, r.case_id)
                    assert message.recipients == case.complainant
                elif r.kind == "escalation":
                    d = s.get(Deadline, r.deadline_id)
                    assert message.recipients.split(",") == (
                        ["line.manager@example.org", "ceo@example.org"] if d.stage == 0
                        else ["ceo@example.org", "trustees@example.org"])
            # both alarm clocks worked: APScheduler's jobs did most timed follow-ups, the loop the rest
            assert quarter.by_job["reminder"] > 0 and quarter.by_job["escalation"] > 0
            assert quarter.done_before_crash >= 1
        print(f"\nsimulated quarter: {len(cases)} cases, follow-ups {dict(kinds)}; "
              f"by APScheduler jobs {dict(quarter.by_job)}, by the daemon loop {dict(quarter.by_loop)}")

        check_report(quarter, app)
    finally:
        models._clock_override.clear()
        quarter.stop()


def check_report(quarter: Quarter, app) -> None:
    start, end = QUARTER
    t0 = datetime.combine(start, time(0), tzinfo=LONDON)
    t1 = datetime.combine(end, time(0), tzinfo=LONDON)
    now = models.utcnow()
    with app.db.session() as s:
        report = build_report(s, app.rules, start, end, title="Quarterly complaints report", now=now)
        cases = [c for c in s.exec(select(Case)) if t0 <= c.opened_at < t1]
        ids = {c.id for c in cases}
        deadlines = [d for d in s.exec(select(Deadline)) if d.case_id in ids]
        outcomes: dict[int, Event] = {}
        for e in s.exec(select(Event).where(col(Event.action) == "outcome_recorded").order_by(col(Event.id))):
            outcomes[e.case_id] = e
        all_deadlines = list(s.exec(select(Deadline, Case).join(Case, col(Case.id) == col(Deadline.case_id))))
        actions = [e for e in s.exec(select(Event).where(col(Event.action).in_(["remedial_action", "lesson_learned"])))
                   if t0 <= e.at < t1]
        appeals_in_time = [e for e in s.exec(select(Event).where(col(Event.action) == "policy_appeal"))
                           if t0 <= e.at < t1]
        compliments = [c for c in cases if c.kind == "compliment"]
        passed = [f for f in s.exec(select(FollowUp).where(col(FollowUp.kind) == "compliment_passed_on"))
                  if f.case_id in {c.id for c in compliments} and f.message_id is not None]

    assert report.cases == len(cases)
    assert report.by_kind == Counter(c.kind for c in cases)
    assert report.by_channel == Counter(c.channel for c in cases)
    complaint_like = [c for c in cases if c.kind in ("complaint", "appeal", "concern")]
    assert report.open_at_end == sum(c.status in ("received", "triage", "acknowledged", "investigating",
                                                  "appeal_received", "appeal_acknowledged", "paused_legal")
                                     for c in complaint_like)

    def outcome(c: Case) -> str:
        if c.status == "withdrawn":
            return "withdrawn"
        if c.status in ("outcome_sent", "closed") and c.id in outcomes:
            words = json.loads(outcomes[c.id].detail)["detail"]
            return {"upheld": "upheld", "partly upheld": "partly upheld", "not upheld": "not upheld"}[words]
        return {"no_response": "no response (policy)", "stopped_legal": "legal action",
                "safeguarding": "safeguarding", "closed": "closed"}.get(c.status, "open")
    assert report.by_outcome == Counter(outcome(c) for c in complaint_like)

    # timeliness of the respond limits first promised in the quarter, worked out again here
    respond = Counter()
    for d, case in all_deadlines:
        promised = d.extended_from or d.due_at
        if d.name != "respond" or not (t0 <= promised < t1):
            continue
        if d.met_at is not None:
            respond["met" if d.met_at <= promised else
                    "met after extension" if d.extended_from and d.met_at <= d.due_at else "missed"] += 1
        elif case.status in ACTIVE["respond"]:
            respond["missed" if d.due_at < now else "not yet due"] += 1
        else:
            respond["not applicable"] += 1
    assert {k: v for k, v in report.timeliness["respond"].items() if v} == dict(respond)
    assert respond["met"] and respond["missed"] and respond["met after extension"]

    def nearest_rank(values, q):
        values = sorted(values)
        return values[max(0, math.ceil(q * len(values)) - 1)]

    respond_days = [(d.met_at - d.started_at).total_seconds() / 86400 for d in deadlines
                    if d.name == "respond" and d.met_at is not None]
    assert report.respond_days.n == len(respond_days)
    assert report.respond_days.median == pytest.approx(statistics.median(respond_days))
    assert report.respond_days.p90 == pytest.approx(nearest_rank(respond_days, 0.9))
    ack_hours = [(d.met_at - d.started_at).total_seconds() / 3600 for d in deadlines
                 if d.name == "acknowledge" and d.met_at is not None]
    assert report.acknowledge_hours.median == pytest.approx(statistics.median(ack_hours))
    assert report.appeals["asked for in time"] == len(appeals_in_time) > 0
    assert len(report.actions) == len(actions) > 0
    assert report.compliments == len(compliments) and report.compliments_passed_on == len(passed) > 0

    # the same numbers in every format, and no personal data in any of them
    rows = list(csv.reader(io.StringIO(render_csv(report))))[1:]
    as_csv = {(a, b): v for a, b, v in rows}
    assert as_csv[("cases", "opened")] == str(len(cases))
    assert as_csv[("timeliness respond", "missed")] == str(respond["missed"])
    assert as_csv[("time to respond (days)", "median")] == f"{statistics.median(respond_days):.1f}"
    html = render_html(report)
    pdf = render_pdf(report)
    assert html.count("data:image/png;base64,") >= 3 and "<script" not in html and "http" not in html.split("<body>")[1]
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    keep = os.environ.get("MAILBOT_KEEP_REPORT")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / "quarter.html").write_text(html)
        (Path(keep) / "quarter.pdf").write_bytes(pdf)
    texts = [html, render_csv(report)]
    if shutil.which("pdftotext"):
        pdf_path = quarter.outbox.parent / "quarter.pdf"
        pdf_path.write_bytes(pdf)
        texts.append(subprocess.run(["pdftotext", str(pdf_path), "-"], capture_output=True, text=True).stdout)
        assert f"{len(cases)}" in texts[-1] and "Timeliness" in texts[-1]
    for text in texts:
        for address, name in quarter.people.items():
            assert address not in text and name.split()[1] not in text
        for subject in set(quarter.subjects):
            assert subject not in text
        assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text)  # no address of anyone

"""A harness for policy scenario tests: one organisation's preset, a controllable clock, mail in
through a real Maildir and the real pipeline, mail out captured by the aiosmtpd fixture.

The daemon runs in this process (not as a child) so that the clock set by the test is the
clock the pipeline, the calendar and the outbox see (``mailbot.cases.models._clock_override``).
"""

from __future__ import annotations

import mailbox
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import col, select

from mailbot.app import App
from mailbot.cases import models
from mailbot.cases.models import Case, CaseProgress, Deadline, Event
from mailbot.cases.registry import case_by_reference
from mailbot.daemon import Daemon
from mailbot.intake.parse import parse
from tests.mailkit import REPO, make_mail, write_config

LONDON = ZoneInfo("Europe/London")
PRESETS = REPO / "rules" / "presets"


def london(*args: int) -> datetime:
    return datetime(*args, tzinfo=LONDON)


@dataclass
class Sent:
    to: list[str]
    subject: str
    text: str


class Story:
    """One organisation: ``story.at(when)`` sets the clock, ``story.mail(...)`` delivers a message
    and runs the daemon once, returning what was sent."""

    def __init__(self, tmp_path: Path, preset: str, smtp_server, db_url: str):
        self.smtp = smtp_server
        rules = tmp_path / "rules"
        # As README says to adopt a preset: its files over a copy of rules/ (classifier kept).
        shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
        for path in (PRESETS / preset).glob("*.toml"):
            shutil.copy(path, rules / path.name)
        self.inbox = tmp_path / "inbox"
        mailbox.Maildir(self.inbox, create=True)
        config = write_config(tmp_path, db_url=db_url, smtp=smtp_server, maildir=self.inbox,
                              rules=rules, staff=["team@example.org"])
        self.config = config
        self.app = App.load(config)

    # -- time and mail ---------------------------------------------------------------------------

    def at(self, when: datetime) -> "Story":
        models._clock_override[:] = [when]
        return self

    def mail(self, subject: str, body: str, *, sender: str = "Jo Bloggs <jo@example.com>",
             expect: tuple[str, list[str]] | None = None, **kwargs) -> list[Sent]:
        raw = make_mail(sender=sender, subject=subject, body=body, date=models.utcnow(), **kwargs)
        if expect is not None:  # the story depends on the classifier seeing it this way
            got = self.app.classifier.classify(parse(raw))
            label, flags = expect
            assert (got.label, sorted(set(got.flags) & set(flags))) == (label, sorted(flags)), \
                f"classifier now sees {subject!r} as {got.label} {got.flags}: {got.reasons}"
        box = mailbox.Maildir(self.inbox, create=False)
        box.add(raw)
        self.smtp.clear()
        daemon = Daemon(self.app)
        try:
            report = daemon.run_once()
        finally:
            daemon.close()
        self.last_outcomes = report.outcomes
        if report.sent:
            self.smtp.wait_for(report.sent)
        return [Sent(m.rcpt_tos, str(m.message["Subject"]),
                     m.message.get_body(("plain",)).get_content()) for m in self.smtp.messages]

    # -- looking at the case book -----------------------------------------------------------------

    def case(self, reference: str) -> Case:
        with self.app.db.session() as s:
            return case_by_reference(s, reference)

    def latest_case(self) -> Case:
        with self.app.db.session() as s:
            return s.exec(select(Case).order_by(col(Case.id).desc())).first()

    def deadlines(self, reference: str) -> dict[tuple[str, int], Deadline]:
        with self.app.db.session() as s:
            case = case_by_reference(s, reference)
            rows = s.exec(select(Deadline).where(col(Deadline.case_id) == case.id)).all()
        return {(d.name, d.stage): d for d in rows}

    def due(self, reference: str, name: str, stage: int = 0) -> datetime:
        return self.deadlines(reference)[(name, stage)].due_at.astimezone(LONDON)

    def progress(self, reference: str) -> CaseProgress:
        with self.app.db.session() as s:
            return s.get(CaseProgress, self.case(reference).id)

    def events(self, reference: str) -> list[str]:
        with self.app.db.session() as s:
            case = case_by_reference(s, reference)
            return [e.action for e in s.exec(select(Event).where(col(Event.case_id) == case.id)
                                              .order_by(col(Event.id))).all()]

    def do(self, action, reference: str, *args, **kwargs):
        """Run a workflow API call (what staff commands will do) in one transaction."""
        with self.app.db.session() as s:
            return action(s, case_by_reference(s, reference), *args, **kwargs)

    def close(self) -> None:
        models._clock_override.clear()
        self.app.close()


def only(sent: list[Sent], to: str) -> Sent:
    found = [m for m in sent if to in m.to]
    assert len(found) == 1, f"expected one letter to {to}, got {[(m.to, m.subject) for m in sent]}"
    return found[0]


def reference_in(subject: str) -> str:
    import re

    return re.search(r"\[([A-Z]+-\d{4}-\d+)\]", subject).group(1)


def record_outcome_now(story: Story, reference: str, actor: str = "investigator@example.org",
                       detail: str = "outcome letter sent"):
    from mailbot.cases.workflow import record_outcome

    with story.app.db.session() as s:
        return record_outcome(s, story.app.rules, case_by_reference(s, reference), actor, detail)

"""`mailbot simulate` says what the pipeline will do, and `classify --explain --rules` and
`templates preview` show an admin's change before it is live.

The simulation is held against the real thing: each message is simulated (the real command
line, in a child process, at the moment the story's clock says), then delivered to the real
pipeline, and the case, letters and due dates must be the ones announced.  Simulating stores
nothing.
"""

from __future__ import annotations

import json
import mailbox
import shutil

import pytest
from sqlmodel import col, func, select

from mailbot.cases.models import Case, Deadline, Message
from mailbot.daemon import Daemon
from tests.mailkit import make_mail, run_cli, add_sms_gateway
from tests.policy_story import Story, london, record_outcome_now
from tests.test_admin_replay import APPEAL, COMPLAINT, _database_digest


@pytest.fixture
def story(tmp_path, smtp_server, sqlite_url):
    story = Story(tmp_path, "youth-service-000", smtp_server, sqlite_url)
    yield story
    story.close()


def _simulate(story, path, when, *extra) -> dict:
    result = run_cli("simulate", str(path), "--at", when.isoformat(), "--json", "--config", str(story.config), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _deliver(story, raw: bytes) -> tuple[list[Message], list[Deadline], Case | None]:
    """Run the real pipeline on ``raw``; the letters it queued, the deadlines it set, its case."""
    with story.app.db.session() as s:
        last_message = s.exec(select(func.max(Message.id))).one() or 0
        last_deadline = s.exec(select(func.max(Deadline.id))).one() or 0
    mailbox.Maildir(story.inbox, create=False).add(raw)
    daemon = Daemon(story.app)
    try:
        daemon.run_once()
    finally:
        daemon.close()
    with story.app.db.session() as s:
        inbound = s.exec(select(Message).where(col(Message.id) > last_message, col(Message.direction) == "in")).one()
        out = list(s.exec(select(Message).where(col(Message.id) > last_message, col(Message.direction) == "out")).all())
        deadlines = list(s.exec(select(Deadline).where(col(Deadline.id) > last_deadline)).all())
        case = s.get(Case, inbound.case_id) if inbound.case_id else None
    return out, deadlines, case


def _letters(plan: dict) -> list[tuple[str, list[str], str]]:
    return sorted((x["template"], sorted(x["to"]), x["subject"]) for x in plan["letters"] if not x["suppressed"])


def _queued(out: list[Message]) -> list[tuple[str, list[str], str]]:
    return sorted((m.purpose, sorted(m.recipients.split(",")), " ".join(m.subject.split())) for m in out)


def _due(deadlines) -> list[tuple[str, int, str]]:
    from datetime import datetime

    out = []
    for d in deadlines:
        due = d["due"] if isinstance(d, dict) else d.due_at.isoformat()
        out.append((d["name"] if isinstance(d, dict) else d.name, d["stage"] if isinstance(d, dict) else d.stage,
                    datetime.fromisoformat(due).strftime("%Y-%m-%d %H:%M")))
    return sorted(out)


def _check(story, tmp_path, name: str, raw: bytes, when) -> dict:
    path = tmp_path / f"{name}.eml"
    path.write_bytes(raw)
    before = _database_digest(story)
    plan = _simulate(story, path, when)
    assert _database_digest(story) == before  # simulating stores nothing
    story.at(when)
    out, deadlines, case = _deliver(story, raw)
    assert _letters(plan) == _queued(out), (plan["letters"], [(m.purpose, m.recipients, m.subject) for m in out])
    assert _due(plan["deadlines"]) == _due(deadlines)
    if plan["action"] in ("case_opened", "added_to_case"):
        assert case is not None and plan["case"] == case.reference and plan["status_after"] == case.status
    else:
        assert case is None
    return plan


def test_simulate_announces_what_the_pipeline_then_does(story, tmp_path):
    # a complaint on the Friday before a bank holiday: its case number, letters and dates
    plan = _check(story, tmp_path, "complaint", make_mail(
        sender="Parent <parent@example.com>", subject=COMPLAINT[0], body=COMPLAINT[1]),
        london(2026, 8, 28, 11, 0))
    assert plan["action"] == "case_opened" and plan["case"] == "CMP-2026-00001"
    assert [d["name"] for d in plan["deadlines"]] == ["pass_to_owner", "acknowledge", "respond"]
    ref = plan["case"]
    again = _simulate(story, tmp_path / "complaint.eml", london(2026, 8, 28, 11, 30))
    assert again["action"] == "duplicate" and not again["letters"]  # handled once, never twice

    # a text message by SMS: not accepted, a short reply, staff told, no case
    plan = _check(story, tmp_path, "sms", make_mail(
        sender="+447700900123@sms.example.net", subject="SMS from +447700900123",
        body="I want to complain, the minibus didnt turn up again today. Not good enough"),
        london(2026, 8, 28, 12, 0))
    assert plan["action"] == "recorded" and plan["handling"] == "channel_rejected"

    # after the outcome, an appeal in time joins the case, and the review gets its dates
    story.at(london(2026, 10, 5, 10, 0))
    record_outcome_now(story, ref)
    plan = _check(story, tmp_path, "appeal", make_mail(
        sender="Parent <parent@example.com>", subject=f"Re: [{ref}] outcome of my complaint", body=APPEAL),
        london(2026, 10, 15, 14, 0))
    assert (plan["action"], plan["case"], plan["handling"]) == ("added_to_case", ref, "appeal")
    assert (plan["status_before"], plan["status_after"]) == ("outcome_sent", "appeal_acknowledged")
    assert plan["met"] == ["appeal_window stage 1"]

    # the same appeal after the window: the refusal in the policy's words
    story.at(london(2026, 10, 16, 10, 0))
    story.mail(*COMPLAINT, sender="Carer <carer@example.com>")
    other = story.latest_case().reference
    story.at(london(2026, 10, 20, 10, 0))
    record_outcome_now(story, other)
    plan = _check(story, tmp_path, "late", make_mail(
        sender="Carer <carer@example.com>", subject=f"Re: [{other}] outcome", body=APPEAL),
        london(2026, 11, 20, 10, 0))
    assert plan["handling"] == "appeal_late"


def test_simulate_with_other_rules_and_in_words(story, tmp_path):
    raw = make_mail(sender="Parent <parent@example.com>", subject=COMPLAINT[0], body=COMPLAINT[1])
    path = tmp_path / "complaint.eml"
    path.write_bytes(raw)
    other = tmp_path / "other-rules"
    shutil.copytree(story.app.config.rules.path, other)
    workflow = other / "workflow.toml"
    workflow.write_text(workflow.read_text().replace('respond_within = "28 days"', 'respond_within = "20 working days"'))
    plan = _simulate(story, path, london(2026, 8, 28, 11, 0), "--rules", str(other))
    respond = [d for d in plan["deadlines"] if d["name"] == "respond"][0]
    assert respond["rule"] == "20 working days" and respond["due_text"] == "Monday 28 September 2026 at 17:00"

    words = run_cli("simulate", str(path), "--at", "2026-08-28 11:00", "--letters", "--config", str(story.config))
    assert words.returncode == 0, words.stderr
    out = " ".join(words.stdout.split())
    assert "would: open a new complaint case CMP-2026-00001 (next number), status acknowledged" in out
    assert 'acknowledgement to parent@example.com: "[CMP-2026-00001] We have received your complaint' in out
    assert "respond: 28 days, due Friday 25 September 2026 at 17:00" in out
    assert "| Dear Parent," in out and "nothing was sent or stored" in out
    with story.app.db.session() as s:
        assert s.exec(select(func.count()).select_from(Case)).one() == 0


def test_classify_explain_honours_the_rules_directory(story, tmp_path):
    raw = make_mail(sender="Relay <alerts@relay.textco.example>", subject="Minibus again",
                    body="The minibus was late again and my son waited in the rain. Zorblax.")
    path = tmp_path / "text.eml"
    path.write_bytes(raw)
    other = tmp_path / "other-rules"
    shutil.copytree(story.app.config.rules.path, other)
    add_sms_gateway(other / "channels.toml", "textco.example")
    patterns = other / "classifier" / "patterns.toml"
    text = patterns.read_text()
    assert 'phrases = ["i want to complain",' in text
    patterns.write_text(text.replace('phrases = ["i want to complain",', 'phrases = ["zorblax", "i want to complain",'))
    before = run_cli("classify", "--explain", str(path), "--config", str(story.config))
    after = run_cli("classify", "--explain", str(path), "--rules", str(other), "--config", str(story.config))
    assert before.returncode == 0 and after.returncode == 0, after.stderr
    assert "via email" in before.stdout and "Zorblax" not in before.stdout
    assert "via sms_gateway" in after.stdout and "sender domain relay.textco.example" in after.stdout
    assert "rule complaint" in after.stdout and "Zorblax" in after.stdout


def test_rules_check_reads_the_classifier_patterns(tmp_path):
    """A mistake in classifier/patterns.toml used to pass `rules check` and only show when the
    daemon built its classifier."""
    rules = tmp_path / "rules"
    shutil.copytree("rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
    patterns = rules / "classifier" / "patterns.toml"
    good = patterns.read_text()
    patterns.write_text(good + '\n[labels.complaint_typo]\nphrases = ["x"]\n')
    result = run_cli("rules", "check", str(rules))
    assert result.returncode == 1
    assert "labels: unknown label 'complaint_typo'" in " ".join(result.stderr.split())
    patterns.write_text(good.replace("[labels.complaint]\n", '[labels.complaint]\npatterns = [[{LOWERR = "sue"}]]\n', 1))
    result = run_cli("rules", "check", str(rules))
    assert result.returncode == 1
    assert "labels.complaint.patterns[0]" in " ".join(result.stderr.split())
    patterns.write_text(good)
    assert run_cli("rules", "check", str(rules)).returncode == 0


def test_templates_preview_with_a_real_case_and_a_sample(story, tmp_path):
    story.at(london(2026, 8, 28, 11, 0))
    story.mail(*COMPLAINT, sender="Parent <parent@example.com>")
    ref = story.latest_case().reference
    real = run_cli("templates", "preview", "acknowledgement", "--case", ref, "--html", str(tmp_path / "ack.html"),
                   "--config", str(story.config))
    assert real.returncode == 0, real.stderr
    out = " ".join(real.stdout.split())
    assert f"Subject: [{ref}] We have received your complaint" in out
    assert "Dear Parent," in out and "Friday 25 September 2026" in out
    assert ref in (tmp_path / "ack.html").read_text()
    sample = run_cli("templates", "preview", "outcome", "--text", "We found that the sessions were cancelled.",
                     "--config", str(story.config))
    assert sample.returncode == 0, sample.stderr
    assert "We found that the sessions were cancelled." in sample.stdout
    missing = run_cli("templates", "preview", "no_such_letter", "--config", str(story.config))
    assert missing.returncode == 2 and "there is no letter 'no_such_letter'" in missing.stderr

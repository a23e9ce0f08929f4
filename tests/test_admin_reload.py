"""Live reload: a real daemon thread on a real Dovecot mailbox and an aiosmtpd server, and an
admin editing the rules and templates on disk while it runs.

- A broken edit (a time limit mistyped; a template with a misspelt variable) is refused: the
  admin gets a letter listing the problem with its file and setting, the daemon keeps
  running, and new mail is handled with the last good rules and wording.
- A valid edit (a new time limit, new wording, a new SMS gateway) applies without a restart,
  to new mail only: the case opened before keeps the due date it was given.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import col, select

from mailbot.app import App
from mailbot.cases.models import Case, Deadline, Event
from mailbot.daemon import Daemon
from tests.mailkit import REPO, make_mail, write_config, add_sms_gateway

ADMIN = "admin@example.org"


def _complaint(who: str) -> bytes:
    return make_mail(sender=f"{who.title()} <{who}@example.com>", subject=f"Complaint from {who}",
                     body="I want to make a formal complaint. The Thursday youth club session was "
                          "cancelled for the third week running and nobody told the parents. This is "
                          "not good enough and I expect an explanation.")


@pytest.fixture
def live(tmp_path, dovecot, smtp_server, sqlite_url):
    """A daemon running in a thread on copies of rules/ and templates/ the test may edit."""
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
    with (rules / "roles.toml").open("a") as handle:
        handle.write(f'\n[admin]\ntitle = "Rules administrator"\naddress = "{ADMIN}"\n')
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, rules=rules,
                          staff=["team@example.org"])
    config.write_text(config.read_text().replace(f'templates = "{REPO / "templates"}"',
                                                 f'templates = "{templates}"'))
    app = App.load(config)
    daemon = Daemon(app)
    daemon_thread = threading.Thread(target=daemon.run_forever, daemon=True)
    daemon_thread.start()
    yield app, daemon, daemon_thread, rules, templates
    daemon.stop()
    daemon_thread.join(60)
    daemon.close()
    app.close()
    assert not daemon_thread.is_alive()


def _wait_for_letter(smtp, to: str, contains: str = "", timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in smtp.messages:
            if to in m.rcpt_tos and contains in str(m.message["Subject"]) + m.message.get_body(("plain",)).get_content():
                return m
        time.sleep(0.2)
    raise AssertionError(f"no letter to {to} containing {contains!r}; got "
                         f"{[(m.rcpt_tos, str(m.message['Subject'])) for m in smtp.messages]}")


def _text(m) -> str:
    return " ".join(m.message.get_body(("plain",)).get_content().split())


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def _deadlines(app, complainant: str) -> dict[str, Deadline]:
    with app.db.session() as s:
        case = s.exec(select(Case).where(col(Case.complainant) == complainant)).one()
        return {d.name: d for d in s.exec(select(Deadline).where(col(Deadline.case_id) == case.id)).all()}


def test_a_broken_edit_is_refused_and_the_daemon_runs_on(live, dovecot, smtp_server):
    app, daemon, thread, rules, templates = live
    dovecot.append(_complaint("first"))
    ack = _wait_for_letter(smtp_server, "first@example.com", "We have received your complaint")
    assert "(28 days under our complaints policy)" in _text(ack)
    good_rules = app.rules

    # 1. a mistyped time limit
    _edit(rules / "workflow.toml", 'respond_within = "28 days"', 'respond_within = "28 dayz"')
    refusal = _wait_for_letter(smtp_server, ADMIN, "NOT taken up")
    body = _text(refusal)
    assert f"{rules / 'workflow.toml'}: complaint.respond_within: '28 dayz' is not a time limit" in body
    assert "changed rules/workflow.toml" in body and "mailbot-ruleset-" not in body
    assert thread.is_alive() and app.rules is good_rules
    dovecot.append(_complaint("second"))
    ack = _wait_for_letter(smtp_server, "second@example.com", "We have received your complaint")
    assert "(28 days under our complaints policy)" in _text(ack)
    assert _deadlines(app, "second@example.com")["respond"].rule == "28 days"

    # 2. the time limit put right, but a template broken (new wording with a misspelt variable)
    smtp_server.clear()
    _edit(rules / "workflow.toml", 'respond_within = "28 dayz"', 'respond_within = "28 days"')
    _edit(templates / "acknowledgement.txt.j2", "What happens next:",
          "BRAND NEW WORDING for {{ complainant_nmae }}.\n\nWhat happens next:")
    refusal = _wait_for_letter(smtp_server, ADMIN, "NOT taken up")
    body = _text(refusal)
    assert f"{templates / 'acknowledgement'}: cannot be written" in body and "complainant_nmae" in body
    dovecot.append(_complaint("third"))
    ack = _wait_for_letter(smtp_server, "third@example.com", "We have received your complaint")
    assert "BRAND NEW WORDING" not in _text(ack)  # the last good letters, not the file on disk
    assert thread.is_alive() and app.rules is good_rules

    with app.db.session() as s:
        refused = s.exec(select(Event).where(col(Event.action) == "rules_refused")).all()
    assert len(refused) == 2 and all(e.case_id is None for e in refused)
    from mailbot.audit import verify

    with app.db.session() as s:
        assert verify(s).ok  # the refusals are in the tamper-evident trail like everything else


def test_a_valid_edit_applies_without_restart(live, dovecot, smtp_server):
    app, daemon, thread, rules, templates = live
    dovecot.append(_complaint("early"))
    _wait_for_letter(smtp_server, "early@example.com", "We have received your complaint")
    early = _deadlines(app, "early@example.com")["respond"]
    assert early.rule == "28 days"

    # a new time limit, new wording and a new SMS gateway, saved one after the other
    _edit(rules / "workflow.toml", 'respond_within = "28 days"', 'respond_within = "20 working days"')
    _edit(templates / "acknowledgement.txt.j2", "What happens next:",
          "Thank you for taking the time to tell us.\n\nWhat happens next:")
    add_sms_gateway(rules / "channels.toml", "textco.example")
    applied = _wait_for_letter(smtp_server, ADMIN, "changed rules taken up")
    body = _text(applied)
    for name in ("rules/workflow.toml", "rules/channels.toml", "templates/acknowledgement.txt.j2"):
        assert f"changed {name}" in body
    assert thread.is_alive()

    dovecot.append(_complaint("late"))
    ack = _wait_for_letter(smtp_server, "late@example.com", "We have received your complaint")
    assert "Thank you for taking the time to tell us." in _text(ack)
    assert "(20 working days under our complaints policy)" in _text(ack)
    assert _deadlines(app, "late@example.com")["respond"].rule == "20 working days"
    # the case opened before keeps the date it was given
    kept = _deadlines(app, "early@example.com")["respond"]
    assert (kept.rule, kept.due_at) == ("28 days", early.due_at)

    # the classifier was switched too: the new gateway's texts are recognised
    dovecot.append(make_mail(sender="Relay <alerts@relay.textco.example>", subject="Message from 07700900123",
                             body="I want to complain, the minibus didnt turn up again today to take my "
                                  "son to the club. Not good enough"))
    reply = _wait_for_letter(smtp_server, "alerts@relay.textco.example")
    assert "cannot take complaints by text" in _text(reply)
    with app.db.session() as s:
        assert s.exec(select(Case).where(col(Case.complainant) == "alerts@relay.textco.example")).first() is None
        assert [e.action for e in s.exec(select(Event).where(col(Event.action).like("rules_%"))).all()] == ["rules_reloaded"]


def test_the_app_outlives_its_daemon(live, dovecot, smtp_server):
    """After the daemon stops, its snapshot is gone and the App reads the admin's files again
    (a `--once` run or a test may go on using it)."""
    app, daemon, thread, rules, templates = live
    dovecot.append(_complaint("first"))
    _wait_for_letter(smtp_server, "first@example.com", "We have received your complaint")
    snapshot = daemon.rules_watch.current.snapshot.root
    assert app.letters.directory != templates and snapshot.is_dir()
    daemon.stop()
    thread.join(60)
    daemon.close()
    assert not snapshot.exists()
    assert app.letters.directory == templates and app.rules.path == rules
    assert app.letters.exists("acknowledgement")

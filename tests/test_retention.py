"""Retention and erasure: exactly what is due goes (database and mailbox folders), a minimal
record of each case stays, a dry run changes nothing, and the audit trail still verifies."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlmodel import select

from mailbot.app import App
from mailbot.cases.models import Case, Message, utcnow
from mailbot.daemon import Daemon
from tests.mailkit import make_mail, run_cli, write_config


def _fill(dovecot, people):
    for i, who in enumerate(people):
        dovecot.append(make_mail(sender=f"{who.title()} <{who}@example.com>", subject=f"Complaint {i}",
                                 message_id=f"<c{i}@example.com>",
                                 body="I want to complain, the session was cancelled again and nobody "
                                      "told us. This is not good enough."))
    dovecot.append(make_mail(sender="Robot <robot@example.net>", subject="Automatic reply: hello",
                             message_id="<oof@example.net>", headers={"Auto-Submitted": "auto-replied"},
                             body="I am away."))


def _age_cases(config, closed_days_ago: dict[str, int], records_days_ago: int | None = None):
    app = App.load(config)
    with app.db.session() as s:
        for case in s.exec(select(Case)).all():
            days = closed_days_ago.get(case.complainant.split("@")[0])
            if days is not None:
                case.status, case.closed_at = "closed", utcnow() - timedelta(days=days)
                s.add(case)
        if records_days_ago is not None:
            for msg in s.exec(select(Message).where(Message.case_id.is_(None))).all():
                msg.at = utcnow() - timedelta(days=records_days_ago)
                s.add(msg)
    app.close()


def test_purge_removes_exactly_what_is_due(tmp_path, dovecot, smtp_server, db_url):
    _fill(dovecot, ["ann", "bob", "cat"])
    config = write_config(tmp_path, db_url=db_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    # ann's case closed 7 years ago (due), bob's 1 year ago (kept), cat's still open (kept);
    # the auto-reply was recorded a year ago (due: records are kept 180 days)
    _age_cases(config, {"ann": 7 * 365, "bob": 365}, records_days_ago=365)
    processed = dovecot.folder_name("mailbot", "processed")
    assert len(dovecot.uids(processed)) == 4

    dry = run_cli("purge", "--dry-run", "--json", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert [c["reference"] for c in plan["cases"]] and len(plan["cases"]) == 1 and len(plan["records"]) == 1
    assert len(dovecot.uids(processed)) == 4  # a dry run changes nothing

    done = run_cli("purge", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mailbox_copies_removed"] == 2
    raws = dovecot.fetch_raw(processed)
    assert len(raws) == 2 and not any(b"<c0@example.com>" in r or b"<oof@example.net>" in r for r in raws)

    app = App.load(config)
    with app.db.session() as s:
        cases = {c.reference: c for c in s.exec(select(Case)).all()}
        purged = cases[plan["cases"][0]["reference"]]
        assert purged.complainant == "[erased]" and purged.subject == "" and purged.kind == "complaint"
        assert purged.closed_at is not None  # the minimal record: reference, kind, dates
        kept = [c for c in cases.values() if c.complainant in ("bob@example.com", "cat@example.com")]
        assert len(kept) == 2
        for msg in s.exec(select(Message).where(Message.case_id == purged.id)).all():
            assert msg.raw == b"" and msg.sender == "[erased]"
        others = s.exec(select(Message).where(Message.case_id != purged.id)).all()
        assert all(m.raw for m in others if m.case_id is not None)
    app.close()
    verify = run_cli("audit", "verify", "--config", str(config))
    assert verify.returncode == 0, verify.stderr
    again = json.loads(run_cli("purge", "--dry-run", "--json", "--config", str(config)).stdout)
    assert again["cases"] == [] and again["records"] == []


def test_erasure_of_one_person_on_request(tmp_path, dovecot, smtp_server, sqlite_url):
    _fill(dovecot, ["ann", "ann", "bob"])
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    app = App.load(config)
    daemon = Daemon(app)
    daemon.run_once()
    daemon.close()
    app.close()
    result = run_cli("erase-person", "ann@example.com", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["cases"]) == 2
    app = App.load(config)
    with app.db.session() as s:
        assert {c.complainant for c in s.exec(select(Case)).all()} == {"[erased]", "bob@example.com"}
        assert not s.exec(select(Message).where(Message.sender == "ann@example.com")).all()
    app.close()
    assert run_cli("audit", "verify", "--config", str(config)).returncode == 0
    export = run_cli("export-person", "ann@example.com", "--out", str(tmp_path / "sar"), "--config", str(config))
    assert export.returncode == 0 and "0 case(s)" in export.stdout
    # the same mail arriving again is still recognised, not made a new case
    dovecot.append(make_mail(sender="Ann <ann@example.com>", subject="Complaint 0", message_id="<c0@example.com>",
                             body="I want to complain, the session was cancelled again."))
    again = run_cli("run", "--once", "--config", str(config))
    assert again.returncode == 0 and "duplicate" in again.stdout
    app = App.load(config)
    with app.db.session() as s:
        assert len(s.exec(select(Case)).all()) == 3
    app.close()

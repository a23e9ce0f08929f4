"""Data protection: a subject access bundle for one person, and a tamper-evident audit trail."""

from __future__ import annotations

import json

from sqlalchemy import text

from mailbot.app import App
from mailbot.daemon import Daemon
from tests.mailkit import make_mail, run_cli, write_config


def _run(tmp_path, db_url, mails):
    inbox = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(mails):
        (inbox / "new" / f"17000000{i:02d}.M{i}P1.test").write_bytes(raw)
    config = write_config(tmp_path, db_url=db_url, maildir=inbox, staff=["team@example.org"])
    app = App.load(config)
    daemon = Daemon(app)
    daemon.run_once()
    daemon.close()
    app.close()
    return config


def test_subject_access_bundle_for_a_person_with_several_cases(tmp_path, db_url):
    person = "kim.lee@example.com"
    mails = [
        make_mail(sender=f"Kim Lee <{person}>", subject="Complaint about the youth club",
                  body="I want to complain: the youth club was cancelled again last Thursday without "
                       "any notice, and my neighbour bob@example.net saw Marcus lock the doors early "
                       "while children were still arriving. This is not good enough."),
        make_mail(sender=f"Kim Lee <{person}>", subject="Another complaint: the minibus",
                  body="I want to make a second complaint. The minibus left without my son again on Friday "
                       "and he waited outside the centre for forty minutes. Nobody rang me. This is "
                       "unacceptable and I want to know what you will do about it."),
        make_mail(sender="Someone Else <other@example.com>", subject="My own complaint",
                  body="I want to complain about the receptionist at the training centre, who was rude "
                       "to me in front of other people on Tuesday. I felt humiliated and I would like "
                       "an apology."),
    ]
    config = _run(tmp_path, db_url, mails)
    out = tmp_path / "sar"
    result = run_cli("export-person", person, "--out", str(out), "--redact", "Marcus", "--config", str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "data.json").read_text())
    assert len(data["cases"]) == 2 and all(c["reference"].startswith("CMP-") for c in data["cases"])
    everything = json.dumps(data)
    assert "other@example.com" not in everything and "rude receptionist" not in everything
    assert "bob@example.net" not in everything and "[address redacted]" in everything
    assert "Marcus" not in everything and "[name redacted]" in everything
    originals = sorted((out / "messages").glob("*.eml"))
    # two complaints in, two acknowledgements out; staff notifications are text only
    assert len(originals) == 4
    assert any(p.read_bytes() == mails[0] for p in originals)
    staff_mail = [m for m in data["messages"] if m["to"] == "team@example.org"]
    assert len(staff_mail) == 2 and all(m["original"] is None for m in staff_mail)
    page = (out / "index.html").read_text()
    for case in data["cases"]:
        assert case["reference"] in page
    assert data["events"] and all(e["case"] in {c["reference"] for c in data["cases"]} for e in data["events"])


def test_audit_verify_detects_edited_and_deleted_rows(tmp_path, db_url):
    config = _run(tmp_path, db_url, [make_mail(sender=f"P{i} <p{i}@example.com>", subject="Complaint",
                                               body="I want to complain, the service was unacceptable.")
                                     for i in range(3)])
    ok = run_cli("audit", "verify", "--config", str(config))
    assert ok.returncode == 0 and "audit trail intact" in ok.stdout, ok.stderr

    app = App.load(config)
    with app.db.engine.begin() as conn:
        conn.execute(text("UPDATE event SET detail = 'nothing happened' WHERE id = 2"))
    edited = run_cli("audit", "verify", "--config", str(config))
    assert edited.returncode == 1 and "event 2" in edited.stderr and "edited" in edited.stderr

    with app.db.engine.begin() as conn:
        conn.execute(text("UPDATE event SET detail = :d WHERE id = 2"),
                     {"d": conn.execute(text("SELECT detail FROM event WHERE id = 3")).scalar()})
    with app.db.engine.begin() as conn:
        last = conn.execute(text("SELECT max(id) FROM event")).scalar()
        conn.execute(text("DELETE FROM event WHERE id = :i"), {"i": last})
    deleted_tail = run_cli("audit", "verify", "--config", str(config))
    assert deleted_tail.returncode == 1 and "deleted" in deleted_tail.stderr
    with app.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM event WHERE id = 4"))
    deleted = run_cli("audit", "verify", "--config", str(config))
    assert deleted.returncode == 1 and "event 5" in deleted.stderr
    app.close()


def test_files_holding_personal_data_are_owner_only(tmp_path, sqlite_url):
    import stat

    config = _run(tmp_path, sqlite_url, [make_mail(sender="Kim <kim@example.com>", subject="Complaint",
                                                   body="I want to complain, the session was cancelled.")])
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    out = tmp_path / "sar"
    assert run_cli("export-person", "kim@example.com", "--out", str(out), "--config", str(config)).returncode == 0
    database = tmp_path / "mailbot.db"
    files = [database, *tmp_path.glob("mailbot.db-*"), *(tmp_path / "outbox").glob("*.eml"),
             out / "index.html", out / "data.json", *(out / "messages").glob("*.eml")]
    assert len(files) >= 5
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path

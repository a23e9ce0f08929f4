"""Exactly once: restarts in the middle, a mail server that refuses for a while, and two
daemons drawing registration numbers from one PostgreSQL database."""

from __future__ import annotations

import multiprocessing
import re

from sqlmodel import select

from mailbot.app import App
from mailbot.cases.models import Case, Message
from mailbot.daemon import Daemon
from mailbot.pipeline import process
from mailbot.transport.base import Incoming, TransportError
from tests.mailkit import make_mail, write_config


class MoveFailsOnce:
    """Wraps a real mailbox; the first move fails as if the daemon died right after commit."""

    def __init__(self, inner):
        self.inner, self.failed = inner, False
        self.description = inner.description

    def fetch(self, limit, max_bytes=None):
        return self.inner.fetch(limit, max_bytes)

    def move(self, uids, destination):
        if not self.failed and uids:
            self.failed = True
            raise TransportError("connection lost before MOVE")
        self.inner.move(uids, destination)

    def wait(self, timeout):
        return self.inner.wait(timeout)

    def close(self):
        self.inner.close()


def _complaints(n: int) -> list[bytes]:
    return [make_mail(sender=f"Person {i} <person{i}@example.com>", subject=f"Complaint {i}",
                      body=f"I want to complain about the service on day {i}. It was unacceptable.")
            for i in range(n)]


def test_restart_after_commit_before_move_creates_nothing_twice(tmp_path, dovecot, smtp_server, db_url):
    for raw in _complaints(3):
        dovecot.append(raw)
    app = App.load(write_config(tmp_path, db_url=db_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon = Daemon(app, mailbox=MoveFailsOnce(app.open_mailbox()))
    try:
        daemon.run_once()
        raise AssertionError("the move failure should have surfaced")
    except TransportError:
        pass
    finally:
        daemon.close()
    # the cases are committed but the mail is still in the inbox, and nothing was sent yet
    assert len(dovecot.uids("INBOX")) == 3
    with app.db.session() as s:
        assert len(s.exec(select(Case)).all()) == 3

    restarted = Daemon(app)  # a fresh process would do exactly this
    report = restarted.run_once()
    restarted.close()
    assert sorted(o.action for o in report.outcomes) == ["duplicate"] * 3
    assert dovecot.uids("INBOX") == []
    sent = smtp_server.wait_for(3)
    assert sorted(m.rcpt_tos[0] for m in sent) == [f"person{i}@example.com" for i in range(3)]
    with app.db.session() as s:
        assert len(s.exec(select(Case)).all()) == 3
    app.close()


def test_smtp_refusing_keeps_acknowledgements_queued_until_it_recovers(tmp_path, dovecot, smtp_server,
                                                                       sqlite_url):
    for raw in _complaints(2):
        dovecot.append(raw)
    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    smtp_server.refuse(451, "4.3.0 Try again later")
    daemon = Daemon(app)
    report = daemon.run_once()
    daemon.close()
    assert report.sent == 0 and report.send_retries >= 1
    assert dovecot.uids("INBOX") == []  # handled and committed, so moved
    with app.db.session() as s:
        queued = s.exec(select(Message).where(Message.direction == "out")).all()
        assert [m.delivery for m in queued] == ["queued", "queued"]
        assert all(m.attempts <= 1 and "451" in m.last_error for m in queued)
        for m in queued:  # make the retry due now instead of in 30 s
            m.next_attempt_at = None
            s.add(m)

    smtp_server.accept()
    daemon = Daemon(app)
    report = daemon.run_once()
    report_again = daemon.run_once()
    daemon.close()
    assert report.sent == 2 and report_again.sent == 0
    assert len(smtp_server.wait_for(2)) == 2
    assert len(smtp_server.messages) == 2
    app.close()


def test_unreadable_mail_is_quarantined_with_reason_and_run_continues(tmp_path, dovecot, smtp_server,
                                                                      sqlite_url):
    dovecot.append(b"Subject: broken\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\nFrom: x@example.com\r\n\r\n"
                   + bytes(range(128, 256)) * 20 + b"\r\n")
    dovecot.append(_complaints(1)[0])
    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon = Daemon(app)
    report = daemon.run_once()
    daemon.close()
    actions = sorted(o.action for o in report.outcomes)
    assert actions == ["case_opened", "quarantined"]
    assert len(dovecot.uids(dovecot.folder_name("mailbot", "quarantine"))) == 1
    with app.db.session() as s:
        row = s.exec(select(Message).where(Message.outcome == "quarantined")).one()
        assert "undecodable" in row.reason and row.raw.startswith(b"Subject: broken")
    app.close()


def _make_cases(url: str, rules_dir: str, templates: str, worker: int, count: int) -> None:
    from mailbot.config import Config

    config = Config.model_validate({
        "mailbox": {"kind": "maildir", "path": "/nonexistent"},
        "outgoing": {"kind": "folder", "path": "/nonexistent"},
        "database": {"url": url}, "rules": {"path": rules_dir, "templates": templates}})
    app = App.from_config(config)
    for i in range(count):
        raw = make_mail(sender=f"W{worker} <w{worker}-{i}@example.com>", subject=f"Complaint {i}",
                        body="This is a complaint: the service was unacceptable.")
        outcome = process(app, Incoming(uid=f"test:{worker}:{i}", raw=raw))
        assert outcome.action == "case_opened", outcome
    app.close()


def test_two_processes_get_unique_gap_free_numbers_on_postgresql(pg_url):
    from tests.mailkit import REPO

    App.from_config  # noqa: B018 - imported in the children too
    ctx = multiprocessing.get_context("spawn")
    count = 25
    procs = [ctx.Process(target=_make_cases, args=(pg_url, str(REPO / "rules"), str(REPO / "templates"),
                                                    w, count)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    from mailbot.db import Database

    db = Database(pg_url)
    with db.session() as s:
        refs = [c.reference for c in s.exec(select(Case)).all()]
    db.close()
    numbers = sorted(int(re.search(r"-(\d+)$", r).group(1)) for r in refs)
    assert numbers == list(range(1, 2 * count + 1))


def test_daemon_idles_and_answers_new_mail_as_it_arrives(tmp_path, dovecot, smtp_server, sqlite_url):
    import threading

    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon = Daemon(app)
    thread = threading.Thread(target=daemon.run_forever, daemon=True)
    thread.start()
    try:
        for i, raw in enumerate(_complaints(2)):
            dovecot.append(raw)
            sent = smtp_server.wait_for(i + 1, timeout=15)
            assert sent[-1].rcpt_tos == [f"person{i}@example.com"]
        assert "IDLE" in daemon.mailbox.capabilities
    finally:
        daemon.stop()
        thread.join(30)
        daemon.close()
    assert not thread.is_alive()
    assert dovecot.uids("INBOX") == []
    app.close()

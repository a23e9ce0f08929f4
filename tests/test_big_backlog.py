"""A backlog of mail with big attachments is taken a few messages at a time (``batch_megabytes``),
so the daemon's memory stays bounded, and the daemon goes straight on to the next few instead of
waiting for the next poll: nothing is left behind and nothing waits."""

from __future__ import annotations

import os
import signal
import time
from email.message import EmailMessage
from email.policy import SMTP

from sqlmodel import select

from mailbot.app import App
from mailbot.cases.models import Case
from mailbot.daemon import Daemon
from tests.mailkit import start_daemon, write_config

PHOTO_BYTES = 450_000  # about 600 KB once base64-encoded: two do not fit in one megabyte


def _with_photos(i: int) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Parent {i} <parent{i}@example.com>"
    msg["To"] = "complaints@example.org"
    msg["Subject"] = f"Complaint about the broken gate ({i})"
    msg["Message-ID"] = f"<gate-{i}@example.com>"
    msg.set_content("I want to complain: the playground gate is broken again and children can get "
                    "out onto the road. Photos attached.")
    msg.add_attachment(os.urandom(PHOTO_BYTES), maintype="image", subtype="jpeg", filename=f"gate{i}.jpg")
    return msg.as_bytes()


def _config(tmp_path, dovecot, smtp_server, sqlite_url, poll_seconds: int):
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    config.write_text(config.read_text().replace(
        "poll_seconds = 1", f"poll_seconds = {poll_seconds}\nbatch_megabytes = 1"))
    return config


class Recording:
    """The real mailbox, noting how many bytes each fetch brought into memory."""

    def __init__(self, inner):
        self.inner, self.description, self.fetched = inner, inner.description, []

    def fetch(self, limit, max_bytes=None):
        batch = self.inner.fetch(limit, max_bytes)
        self.fetched.append(sum(len(m.raw) for m in batch))
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_backlog_of_big_mails_is_handled_a_megabyte_at_a_time(tmp_path, dovecot, smtp_server, sqlite_url):
    for i in range(4):
        dovecot.append(_with_photos(i))
    app = App.load(_config(tmp_path, dovecot, smtp_server, sqlite_url, poll_seconds=1))
    mailbox = Recording(app.open_mailbox())
    daemon = Daemon(app, mailbox=mailbox)
    report = daemon.run_once()
    daemon.close()
    assert [o.action for o in report.outcomes] == ["case_opened"] * 4
    assert max(mailbox.fetched) <= 1024 * 1024  # never more than batch_megabytes in memory at once
    assert dovecot.uids("INBOX") == []
    with app.db.session() as s:
        assert len(s.exec(select(Case)).all()) == 4
    assert len(smtp_server.wait_for(4)) == 4
    app.close()


def test_the_daemon_goes_straight_on_to_the_rest_of_a_big_backlog(tmp_path, dovecot, smtp_server, sqlite_url):
    """With a 60 s poll interval, the messages the first round left for lack of room are
    handled at once, not a poll (or an IDLE timeout) later."""
    for i in range(4):
        dovecot.append(_with_photos(i))
    proc = start_daemon(_config(tmp_path, dovecot, smtp_server, sqlite_url, poll_seconds=60))
    try:
        started = time.monotonic()
        deadline = started + 50
        while len(smtp_server.messages) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        took = time.monotonic() - started
        answered = len(smtp_server.messages)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            proc.kill()
    assert answered == 4, f"only {answered} of 4 answered in {took:.0f} s (the poll interval is 60 s)"
    assert dovecot.uids("INBOX") == []

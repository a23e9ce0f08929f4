"""Stopping the daemon (`systemctl stop`, Ctrl-C) ends it promptly, even while it waits on
IMAP IDLE with a long poll interval, and it leaves cleanly (exit status 0)."""

from __future__ import annotations

import signal
import time

from tests.mailkit import make_mail, start_daemon, write_config


def test_sigterm_while_idling_stops_the_daemon_without_waiting_for_the_next_poll(
        tmp_path, dovecot, smtp_server, sqlite_url):
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    config.write_text(config.read_text().replace("poll_seconds = 1", "poll_seconds = 60"))
    dovecot.append(make_mail(sender="Sam <sam@example.com>", subject="Complaint about the minibus",
                             body="I want to complain: the minibus did not come again today."))
    proc = start_daemon(config)
    try:
        deadline = time.monotonic() + 90
        while not smtp_server.messages and time.monotonic() < deadline:
            time.sleep(0.2)
        assert smtp_server.messages, "the daemon never answered"
        time.sleep(2)  # now it is idling (IDLE), with up to 60 s before its next poll
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
        took = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status == 0
    assert took < 20, f"the daemon took {took:.0f} s to stop (its poll interval is 60 s)"

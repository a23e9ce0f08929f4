"""Mail loops and floods: a badly behaved autoresponder on loopback answers every letter the
bot sends with a new message that looks like a fresh complaint (no RFC 3834 headers, no case
tag).  The reply limits in rules/policy.toml must bound the duel."""

from __future__ import annotations

import shutil
import threading
import time
from email.utils import make_msgid

from sqlmodel import select

from mailbot.app import App
from mailbot.cases.models import Event
from mailbot.daemon import Daemon
from tests.mailkit import REPO, make_mail, write_config

ROBOT = "helpdesk@robot.example.net"


def test_autoresponder_duel_is_bounded(tmp_path, dovecot, smtp_server, sqlite_url):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
    policy = rules / "policy.toml"
    policy.write_text(policy.read_text().replace("replies_per_sender_per_day = 10", "replies_per_sender_per_day = 3"))
    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[],
                                rules=rules))
    assert app.rules.limits.replies_per_sender_per_day == 3

    stop = threading.Event()

    def autoresponder() -> None:
        """Answers each letter the bot sends to the robot, as a broken helpdesk would."""
        answered = 0
        while not stop.is_set():
            mine = [m for m in smtp_server.messages if ROBOT in m.rcpt_tos]
            for _ in mine[answered:]:
                dovecot.append(make_mail(
                    sender=f"Helpdesk <{ROBOT}>", message_id=make_msgid(domain="robot.example.net"),
                    subject="Your ticket has been logged",
                    body="I want to complain: your message was not good enough and has been logged "
                         "as a complaint. This is unacceptable. Reply to update your ticket."))
                answered += 1
            time.sleep(0.1)

    responder = threading.Thread(target=autoresponder, daemon=True)
    responder.start()
    dovecot.append(make_mail(sender=f"Helpdesk <{ROBOT}>", subject="Complaint about your service",
                             body="I want to complain about the service. It was not good enough and "
                                  "completely unacceptable."))
    daemon = Daemon(app)
    thread = threading.Thread(target=daemon.run_forever, daemon=True)
    thread.start()
    try:
        time.sleep(12)  # many rounds of the duel, were it unbounded
    finally:
        stop.set()
        daemon.stop()
        thread.join(60)
        daemon.close()
    to_robot = [m for m in smtp_server.messages if ROBOT in m.rcpt_tos]
    assert len(to_robot) == 3  # exactly the limit, then silence
    with app.db.session() as s:
        suppressed = s.exec(select(Event).where(Event.action == "reply_suppressed")).all()
    assert len(suppressed) >= 1 and "possible mail loop" in suppressed[0].detail
    assert dovecot.uids("INBOX") == []  # every message still recorded and moved
    app.close()

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


def test_a_complaint_whose_acknowledgement_is_held_back_stays_due(tmp_path, smtp_server, sqlite_url):
    """In a flood the hourly limit holds letters back. A genuine complaint that arrives then
    gets no acknowledgement, so its case must not say it was acknowledged: it stays
    "received", its acknowledgement deadline stays open for staff, and they are told why."""
    from mailbot.cases.models import Case, Deadline
    from mailbot.transport.maildir import MaildirMailbox

    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("presets", "training"))
    policy = rules / "policy.toml"
    policy.write_text(policy.read_text().replace("replies_per_hour = 500", "replies_per_hour = 2"))
    app = App.load(write_config(tmp_path, db_url=sqlite_url, smtp=smtp_server, staff=["team@example.org"],
                                rules=rules))
    inbox = MaildirMailbox(tmp_path / "inbox", "processed", "quarantine")
    for i in range(3):
        inbox._inbox.add(make_mail(sender=f"Parent {i} <parent{i}@example.com>",
                                   subject=f"Complaint about the youth club ({i})",
                                   body="I want to make a formal complaint: the youth club was cancelled "
                                        "again without notice. This is not good enough."))
    inbox.close()
    daemon = Daemon(app)
    daemon.run_once()
    daemon.close()
    acknowledged = [m for m in smtp_server.messages if any("parent" in r for r in m.rcpt_tos)]
    assert len(acknowledged) == 2  # the limit
    with app.db.session() as s:
        cases = s.exec(select(Case).order_by(Case.id)).all()
        assert [c.status for c in cases] == ["acknowledged", "acknowledged", "received"]
        held = cases[2]
        ack = s.exec(select(Deadline).where(Deadline.case_id == held.id, Deadline.name == "acknowledge")).one()
        assert ack.met_at is None  # still due: staff see it among the acknowledgements to send
        assert s.exec(select(Event).where(Event.case_id == held.id, Event.action == "reply_suppressed")).all()
    to_staff = [m for m in smtp_server.messages if "team@example.org" in m.rcpt_tos
                and held.reference in str(m.message["Subject"])]
    assert to_staff and "possible flood" in to_staff[0].message.get_body(("plain",)).get_content()
    app.close()

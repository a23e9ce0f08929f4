"""Tests of the test servers themselves (tests/servers, tests/conftest.py).

Why: every IMAP/SMTP/storage test of mailbot relies on these fixtures; if a
fixture quietly misbehaved (mail lost on restart, a refusal that is not
really sent, a database that is not dropped) those tests would pass or fail
for the wrong reason.  These tests pin down the behaviour the rest of the
suite counts on, against the real servers.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import socket
import time
from email.message import EmailMessage

import pytest
import sqlalchemy as sa
from imap_tools import MailBoxUnencrypted
from imap_tools.errors import MailboxFolderCreateError, MailboxLoginError

from tests.servers import DovecotServer, SmtpCapture, throwaway_database
from tests.servers.dovecot import DovecotStartError
from tests.servers.postgres import database_exists

# CRLF line ends: IMAP transfers CRLF, so this is what comes back.
MSG1 = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: complaints@example.net\r\n"
    b"Subject: The bus was late again\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"Date: Mon, 03 Mar 2025 09:00:00 +0100\r\n"
    b"\r\n"
    b"Third time this week.\r\n"
    b".A line starting with a dot.\r\n"
)
MSG2 = (
    b"From: =?utf-8?q?Bj=C3=B6rn?= <bjorn@example.org>\r\n"
    b"To: complaints@example.net\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <m2@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Sehr geehrte Damen und Herren, \xc3\xa4\xc3\xb6\xc3\xbc\r\n"
)


# -- Dovecot ----------------------------------------------------------------


def test_dovecot_append_and_read_back(dovecot: DovecotServer) -> None:
    uid1 = dovecot.append(MSG1)
    uid2 = dovecot.append(MSG2, flags=["\\Seen"])
    assert [uid1, uid2] == dovecot.uids() == ["1", "2"]

    # Exact bytes, in UID order.
    assert dovecot.fetch_raw() == [MSG1, MSG2]
    assert "\\Seen" in dovecot.flags()["2"]
    assert "\\Seen" not in dovecot.flags()["1"]

    # And through a plain imap-tools client, as mailbot will read them.
    with MailBoxUnencrypted(dovecot.host, dovecot.port).login(dovecot.user, dovecot.password) as mb:
        msgs = list(mb.fetch(mark_seen=False))
    assert [m.uid for m in msgs] == ["1", "2"]
    assert [m.subject for m in msgs] == ["The bus was late again", "Grüße"]
    assert msgs[1].from_values.name == "Björn"
    assert "äöü" in msgs[1].text
    assert [m.size_rfc822 for m in msgs] == [len(MSG1), len(MSG2)]
    # fetch(mark_seen=False) and fetch_raw (PEEK) leave \Seen alone.
    assert "\\Seen" not in dovecot.flags()["1"]


def test_dovecot_folders_use_server_delimiter(dovecot: DovecotServer) -> None:
    # Maildir++ on Dovecot: the separator is "." -- code must ask, not assume "/".
    assert dovecot.delimiter == "."
    processed = dovecot.folder_name("mailbot", "processed")
    assert processed == "mailbot.processed"

    uid = dovecot.append(MSG1, folder=processed)
    assert uid == "1"
    assert processed in dovecot.folders()
    assert dovecot.uids(processed) == ["1"]
    assert dovecot.uids() == []
    assert dovecot.fetch_raw(processed) == [MSG1]

    with dovecot.client() as mb:
        with pytest.raises(MailboxFolderCreateError):
            mb.folder.create("mailbot/rejected")


def test_dovecot_bad_password_is_refused_quickly(dovecot: DovecotServer) -> None:
    # auth_failure_delay = 0 and no anvil penalty.  Stock Dovecot answers a
    # failure after 2 s and then penalises the address (1.5 s, 6 s, ... even
    # for the next *good* login).  Dovecot 2.3.19 still sends each failure
    # on its next 500 ms failure-queue tick, so each refusal takes ~0.5 s.
    for user in (dovecot.user, "nobody"):
        t0 = time.monotonic()
        with pytest.raises(MailboxLoginError) as exc:
            dovecot.client(user, "wrong")
        assert time.monotonic() - t0 < 1.0
        assert "AUTHENTICATIONFAILED" in str(exc.value)
    t0 = time.monotonic()
    with dovecot.client() as mb:
        assert mb.uids() == []
    assert time.monotonic() - t0 < 0.5
    assert "Password mismatch" in dovecot.log_text()


def test_dovecot_add_user_gets_own_mailbox(dovecot: DovecotServer) -> None:
    dovecot.client().logout()  # a login just before: the new user must still work
    dovecot.add_user("feedback", "pw2")
    dovecot.append(MSG2, user="feedback")
    assert dovecot.uids(user="feedback") == ["1"]
    assert dovecot.uids() == []
    with dovecot.client("feedback", "pw2") as mb:
        assert [m.subject for m in mb.fetch(mark_seen=False)] == ["Grüße"]
    # Password change while running is picked up (passwd-file mtime).
    dovecot.add_user("feedback", "pw3")
    with pytest.raises(MailboxLoginError):
        dovecot.client("feedback", "pw2")
    dovecot.client("feedback", "pw3").logout()


def test_dovecot_restart_keeps_mail_and_port(dovecot: DovecotServer) -> None:
    dovecot.append(MSG1)
    dovecot.append(MSG2, folder=dovecot.folder_name("mailbot", "processed"))
    port = dovecot.port
    before = dovecot.client()

    dovecot.stop()
    assert not dovecot.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dovecot.host, port), timeout=2).close()
    # A connection open across the outage is dead afterwards.
    try:
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            before.uids()
    finally:
        before.client.shutdown()

    t0 = time.monotonic()
    dovecot.start()
    assert time.monotonic() - t0 < 2
    assert dovecot.port == port
    assert dovecot.fetch_raw() == [MSG1]
    assert dovecot.fetch_raw("mailbot.processed") == [MSG2]

    dovecot.restart()
    assert dovecot.port == port and dovecot.uids() == ["1"]


def test_dovecot_start_failure_is_reported(dovecot: DovecotServer) -> None:
    dovecot.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((dovecot.host, dovecot.port))
        squatter.listen()
        with pytest.raises(DovecotStartError, match="in use"):
            dovecot.start()
    dovecot.start()
    assert dovecot.uids() == []


def test_dovecot_close_removes_everything() -> None:
    server = DovecotServer()
    try:
        server.start()
        pid = server._proc.pid
        server.append(MSG1)
    finally:
        server.close()
    assert not server.dir.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    server.close()  # idempotent


# -- SMTP -------------------------------------------------------------------


def _ack(to: str = "alice@example.org", subject: str = "We received your message") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Complaints <complaints@example.net>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<ack1@example.net>"
    msg.set_content("Thank you.\n.\nA line with only a dot above.\nGrüße\n")
    return msg


def _send(server: SmtpCapture, msg: EmailMessage, **kw) -> dict:
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        return smtp.send_message(msg, **kw)


def test_smtp_capture_records_envelope_and_message(smtp_server: SmtpCapture) -> None:
    _send(smtp_server, _ack(), from_addr="bounces@example.net",
          to_addrs=["alice@example.org", "archive@example.net"])
    [got] = smtp_server.wait_for(1)
    assert got.mail_from == "bounces@example.net"
    assert got.rcpt_tos == ["alice@example.org", "archive@example.net"]
    assert got.message["Subject"] == "We received your message"
    assert got.message["Message-ID"] == "<ack1@example.net>"
    # Parsed from the wire bytes, so the body text keeps CRLF line ends.
    body = got.message.get_content().replace("\r\n", "\n")
    assert ".\nA line with only a dot above." in body  # dot-stuffing undone
    assert "Grüße" in body
    assert got.raw.startswith(b"From: Complaints <complaints@example.net>\r\n")
    assert got.auth_login is None

    smtp_server.clear()
    assert smtp_server.messages == []
    _send(smtp_server, _ack(subject="second"))
    assert [m.message["Subject"] for m in smtp_server.wait_for(1)] == ["second"]


def test_smtp_wait_for_times_out_clearly(smtp_server: SmtpCapture) -> None:
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"expected 1 message\(s\) within 0.2 s, got 0"):
        smtp_server.wait_for(1, timeout=0.2)
    assert time.monotonic() - t0 < 1


def test_smtp_refuse_and_accept(smtp_server: SmtpCapture) -> None:
    smtp_server.refuse()  # 451 at end of DATA
    with pytest.raises(smtplib.SMTPDataError) as exc:
        _send(smtp_server, _ack())
    assert exc.value.smtp_code == 451
    assert exc.value.smtp_error == b"4.3.0 Try again later"

    smtp_server.refuse(550, "5.1.1 No such user", stage="rcpt")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
        _send(smtp_server, _ack())
    assert exc.value.recipients == {"alice@example.org": (550, b"5.1.1 No such user")}

    smtp_server.refuse(421, "4.7.0 Go away", stage="mail")
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPServerDisconnected)):
        _send(smtp_server, _ack())

    assert smtp_server.messages == []
    smtp_server.accept()
    _send(smtp_server, _ack())
    assert len(smtp_server.wait_for(1)) == 1


def test_smtp_refuse_a_number_of_times(smtp_server: SmtpCapture) -> None:
    smtp_server.refuse(451, "4.3.0 Busy", times=2)
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError):
            _send(smtp_server, _ack())
    _send(smtp_server, _ack())
    assert len(smtp_server.wait_for(1)) == 1
    assert smtp_server.refused_count == 2


def test_smtp_stop_and_start_on_same_port(smtp_server: SmtpCapture) -> None:
    port = smtp_server.port
    smtp_server.stop()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(smtp_server.host, port, timeout=5)
    smtp_server.start()
    assert smtp_server.port == port
    _send(smtp_server, _ack())
    assert len(smtp_server.wait_for(1)) == 1


def test_smtp_auth() -> None:
    server = SmtpCapture(auth_user="mailbot", auth_password="s3cret")
    server.start()
    try:
        with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
            smtp.ehlo()
            assert {"PLAIN", "LOGIN"} <= set(smtp.esmtp_features["auth"].upper().split())
            with pytest.raises(smtplib.SMTPSenderRefused) as exc:
                smtp.send_message(_ack())
            assert exc.value.smtp_code == 530
            with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
                smtp.login("mailbot", "wrong")
            assert exc.value.smtp_code == 535
        for method in ("PLAIN", "LOGIN"):
            with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
                smtp.ehlo()
                smtp.esmtp_features["auth"] = method  # force this mechanism
                smtp.login("mailbot", "s3cret")
                smtp.send_message(_ack())
        got = server.wait_for(2)
        assert [m.auth_login for m in got] == ["mailbot", "mailbot"]
    finally:
        server.stop()


# -- PostgreSQL / SQLite ----------------------------------------------------


def test_throwaway_database_is_usable_and_dropped() -> None:
    with throwaway_database() as url:
        name = url.rsplit("/", 1)[1]
        assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:5432/mailbot_t_")
        assert database_exists(name)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE cases (id serial PRIMARY KEY, subject text)"))
            conn.execute(sa.text("INSERT INTO cases (subject) VALUES (:s)"), {"s": "Grüße"})
        # Deliberately leave a pooled connection open: cleanup must cope.
        conn = engine.connect()
        assert conn.execute(sa.text("SELECT subject FROM cases")).scalar_one() == "Grüße"
    assert not database_exists(name)
    conn.invalidate()  # its backend was terminated: close without ROLLBACK
    conn.close()
    engine.dispose()


def test_db_url_fixture(db_url: str, request: pytest.FixtureRequest) -> None:
    expected = request.node.callspec.id
    assert expected in ("sqlite", "postgresql")
    engine = sa.create_engine(db_url)
    try:
        assert engine.dialect.name == expected
        meta = sa.MetaData()
        cases = sa.Table("cases", meta, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("subject", sa.Text))
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(cases.insert(), [{"subject": "a"}, {"subject": "ö"}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(cases.c.subject).order_by(cases.c.id)).scalars().all() == ["a", "ö"]
    finally:
        engine.dispose()


def test_sqlite_url_is_a_file_in_tmp_path(sqlite_url: str, tmp_path) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path}/mailbot.db"
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x int)"))
    engine.dispose()
    assert (tmp_path / "mailbot.db").exists()


def test_slow_marker_is_registered(request: pytest.FixtureRequest) -> None:
    assert any(line.startswith("slow:") for line in request.config.getini("markers"))

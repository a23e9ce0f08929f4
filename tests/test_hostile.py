"""Hostile and broken mail: every message is handled or quarantined with a reason, the run
never crashes or hangs, and nothing we send can carry an injected header."""

from __future__ import annotations

import email
import os
from email.policy import default

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from mailbot.app import App
from mailbot.cases.models import Message
from mailbot.classify import Classifier
from mailbot.daemon import Daemon
from mailbot.intake.parse import ParseError, parse
from mailbot.letters import Letter, build_email, header_safe
from mailbot.policy.rules import load_rules
from tests.mailkit import REPO, SHARED, make_mail, write_config

HOSTILE_DIR = SHARED / "hostile-mail"


def _odd_messages() -> dict[str, bytes]:
    big_attachment = os.urandom(3 * 1024 * 1024)
    import base64

    b64 = base64.encodebytes(big_attachment)
    return {
        "zero-bytes": b"",
        "bad-boundary": (b"From: a@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
                         b"Content-Type: multipart/mixed; boundary=\"NOPE\"\r\n\r\n--OTHER\r\n"
                         b"Content-Type: text/plain\r\n\r\nThe staff were rude.\r\n--OTHER--\r\n"),
        "unknown-charset": (b"From: b@example.com\r\nSubject: complaint\r\n"
                            b"Content-Type: text/plain; charset=x-mac-klingon\r\n\r\n"
                            b"The minibus never came and my son waited alone.\r\n"),
        "8bit-headers": ("From: Zo\u00eb <zoe@example.com>\r\nSubject: Caf\u00e9 complaint \u2014 rude staff\r\n"
                         "Content-Type: text/plain; charset=utf-8\r\n\r\nThe caf\u00e9 staff were rude to me.\r\n"
                         ).encode("utf-8"),
        "nested-rfc822": (b"From: c@example.com\r\nSubject: Fwd: complaint\r\nMIME-Version: 1.0\r\n"
                          b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
                          b"See below\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n"
                          b"From: d@example.com\r\nSubject: inner\r\n\r\nI want to complain.\r\n--B--\r\n"),
        "huge-header": (b"From: e@example.com\r\nSubject: " + b"A" * 200_000 + b"\r\nX-Long: "
                        + b"b " * 100_000 + b"\r\n\r\nshort body\r\n"),
        "control-chars-in-name": (b"From: f@example.com\r\nSubject: photos\r\nMIME-Version: 1.0\r\n"
                                  b"Content-Type: multipart/mixed; boundary=Z\r\n\r\n--Z\r\n"
                                  b"Content-Type: text/plain\r\n\r\nAttached.\r\n--Z\r\n"
                                  b"Content-Type: image/png; name=\"../../etc/\x01passwd\r\n\"\r\n"
                                  b"Content-Disposition: attachment; filename=\"..\\\\..\\\\win\x7f.ini\"\r\n"
                                  b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--Z--\r\n"),
        "html-with-script": make_mail(body=None, html="<html><script>document.location='x'</script>"
                                      "<body onload=alert(1)><p>The course was cancelled.</p></body></html>"),
        "3mb-attachment": (b"From: g@example.com\r\nSubject: evidence\r\nMIME-Version: 1.0\r\n"
                           b"Content-Type: multipart/mixed; boundary=Q\r\n\r\n--Q\r\nContent-Type: text/plain\r\n\r\n"
                           b"Evidence attached of the damage.\r\n--Q\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Disposition: attachment; filename=video.bin\r\n"
                           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64.replace(b"\n", b"\r\n") + b"--Q--\r\n"),
    }


def test_odd_and_hostile_mail_through_the_real_pipeline(tmp_path, dovecot, smtp_server, sqlite_url):
    corpus = _odd_messages()
    if HOSTILE_DIR.is_dir():
        for path in sorted(HOSTILE_DIR.rglob("*.msg")):
            corpus[f"corpus:{path.name}"] = path.read_bytes()
    appended = 0
    for raw in corpus.values():
        if raw:
            dovecot.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
            appended += 1
    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon = Daemon(app)
    report = daemon.run_once()
    daemon.close()
    assert len(report.outcomes) == appended
    assert dovecot.uids("INBOX") == []  # nothing stuck, nothing lost
    moved = (len(dovecot.uids(dovecot.folder_name("mailbot", "processed")))
             + len(dovecot.uids(dovecot.folder_name("mailbot", "quarantine"))))
    assert moved == appended
    with app.db.session() as s:
        rows = s.exec(select(Message).where(Message.direction == "in")).all()
        quarantined = [r for r in rows if r.outcome == "quarantined"]
        assert all(r.reason for r in quarantined)
        assert not [r for r in quarantined if r.reason.startswith("internal error")], \
            [r.reason for r in quarantined]
    for captured in smtp_server.messages:
        msg = email.message_from_bytes(captured.raw, policy=default)
        assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])
    app.close()


def test_zero_byte_message_is_a_clear_parse_error():
    with pytest.raises(ParseError, match="zero bytes"):
        parse(_odd_messages()["zero-bytes"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_parser_never_raises_anything_but_parse_error_on_random_bytes(raw):
    try:
        msg = parse(raw)
    except ParseError:
        return
    assert isinstance(msg.text, str) and isinstance(msg.subject, str)


_classifier: list[Classifier] = []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(max_size=200), body=st.text(max_size=3000),
       sender=st.sampled_from(["a@example.com", "+447700900123@sms.example.net", "noreply@facebookmail.com",
                               "wordpress@example.org", "mailer-daemon@example.net"]))
def test_classifier_handles_any_text(subject, body, sender):
    if not _classifier:
        _classifier.append(Classifier(load_rules(REPO / "rules")))
    raw = make_mail(sender=sender, subject=header_safe(subject),
                    body=body.replace("\r", "") or "x")
    result = _classifier[0].classify(parse(raw))
    assert result.label in ("complaint", "compliment", "appeal", "withdrawal", "other")
    assert 0.0 <= result.confidence <= 1.0


@given(st.text(max_size=300))
def test_outgoing_subject_cannot_inject_headers(subject):
    msg = build_email(Letter(subject=subject + "\r\nBcc: victim@example.com\u2028X: y", text="body", html=None),
                      sender="Team <team@example.org>", to=["x@example.com"])
    parsed = email.message_from_bytes(msg.as_bytes(), policy=default)
    assert parsed["Bcc"] is None and parsed["Cc"] is None
    assert parsed["To"] == "x@example.com"
    assert "\n" not in str(parsed["Subject"])


@pytest.mark.slow
def test_fifty_megabyte_mail_is_handled(tmp_path, dovecot, smtp_server, sqlite_url):
    import base64

    payload = base64.encodebytes(os.urandom(37 * 1024 * 1024)).replace(b"\n", b"\r\n")  # ~50 MB encoded
    raw = (b"From: Big Sender <big@example.com>\r\nTo: complaints@example.org\r\nSubject: complaint with video\r\n"
           b"Message-ID: <big@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=Q\r\n\r\n"
           b"--Q\r\nContent-Type: text/plain\r\n\r\nI want to complain: the video shows the minibus leaving "
           b"my son behind. This is not good enough.\r\n--Q\r\nContent-Type: video/mp4\r\n"
           b"Content-Disposition: attachment; filename=evidence.mp4\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + payload + b"--Q--\r\n")
    assert len(raw) > 50 * 1000 * 1000
    dovecot.append(raw)
    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon = Daemon(app)
    report = daemon.run_once()
    daemon.close()
    assert [o.action for o in report.outcomes] == ["case_opened"]
    with app.db.session() as s:
        row = s.exec(select(Message).where(Message.direction == "in")).one()
        assert len(row.raw) == len(raw)  # nothing lost: the original is kept whole
    assert len(smtp_server.wait_for(1)) == 1
    app.close()

"""Parsing real-world mail: odd charsets, HTML-only bodies, attachments, machine mail, damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailbot.intake.parse import ParseError, parse
from tests.mailkit import SHARED, make_mail


def test_headers_threading_and_plain_text():
    raw = make_mail(sender='"Siân Llewelyn" <Sian@Example.co.uk>', subject="Re: my complaint",
                    message_id="<abc@example.co.uk>", body="Still waiting.",
                    headers={"In-Reply-To": "<ack1@example.org>",
                             "References": "<orig@example.co.uk> <ack1@example.org>",
                             "Reply-To": "sian.home@example.com"})
    msg = parse(raw)
    assert msg.from_name == "Siân Llewelyn" and msg.from_addr == "sian@example.co.uk"
    assert msg.reply_address == "sian.home@example.com"
    assert msg.message_id == "<abc@example.co.uk>"
    assert msg.thread_ids == ["<ack1@example.org>", "<orig@example.co.uk>"]
    assert msg.text.strip() == "Still waiting."
    assert msg.machine_generated is None
    assert msg.date is not None and msg.date.tzinfo is not None


def test_html_only_body_becomes_text():
    raw = make_mail(body=None, html="<html><body><p>The <b>minibus</b> never came.</p>"
                                    "<script>alert(1)</script></body></html>")
    msg = parse(raw)
    assert "The minibus never came." in msg.text
    assert "alert" not in msg.text and "<b>" not in msg.text


def test_latin1_and_unknown_charsets_decode_without_loss():
    raw = (b"From: a@example.com\r\nSubject: =?iso-8859-1?q?r=E9clamation?=\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nI am \xa340 out of pocket\r\n")
    msg = parse(raw)
    assert msg.subject == "réclamation" and "£40" in msg.text
    raw = (b"From: a@example.com\r\nSubject: x\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\n"
           b"plain words\r\n")
    msg = parse(raw)
    assert "plain words" in msg.text and any("x-klingon" in d for d in msg.defects)


def test_attachment_metadata_and_hostile_names():
    raw = (b"From: a@example.com\r\nSubject: photos\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
           b"See attached.\r\n--XX\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=\"..\\\\..\\\\evil\x07.pdf\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n")
    msg = parse(raw)
    assert msg.text.strip() == "See attached."
    (att,) = msg.attachments
    assert att.filename == "evil.pdf" and att.content_type == "application/pdf"
    assert att.size == len(b"%PDF-1.4\n") and len(att.sha256) == 64


@pytest.mark.parametrize("headers, reason", [
    ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted"),
    ({"Precedence": "bulk"}, "Precedence"),
    ({"List-Id": "<news.example.org>"}, "List-Id"),
    ({"X-Autoreply": "yes"}, "X-Autoreply"),
    ({"Return-Path": "<>"}, "Return-Path"),
])
def test_machine_generated_mail_is_recognised(headers, reason):
    assert reason in parse(make_mail(headers=headers)).machine_generated


def test_auto_submitted_no_is_a_person():
    assert parse(make_mail(headers={"Auto-Submitted": "no"})).machine_generated is None


def test_mailer_daemon_is_machine_generated():
    msg = parse(make_mail(sender="MAILER-DAEMON@mx.example.net"))
    assert "mailer-daemon" in msg.machine_generated


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty"),
    (b"   \r\n\r\n", "empty"),
    (b"\x00\x01\x02 not mail at all", "no header"),
])
def test_unusable_bytes_raise_parse_error_with_reason(raw, reason):
    with pytest.raises(ParseError, match=reason):
        parse(raw)


def test_header_injection_characters_are_removed():
    raw = b"From: a@example.com\r\nSubject: =?utf-8?q?hello=0D=0ABcc=3A_victim=40example=2Ecom?=\r\n\r\nx\r\n"
    msg = parse(raw)
    assert "\r" not in msg.subject and "\n" not in msg.subject


HOSTILE = sorted((SHARED / "hostile-mail").rglob("*.msg")) if (SHARED / "hostile-mail").is_dir() else []


@pytest.mark.skipif(not HOSTILE, reason="shared/hostile-mail corpus not beside this checkout")
def test_hostile_corpus_parses_or_is_refused_with_a_reason():
    parsed = refused = 0
    for path in HOSTILE:
        try:
            msg = parse(path.read_bytes())
        except ParseError as exc:
            assert str(exc), path
            refused += 1
            continue
        assert isinstance(msg.text, str) and isinstance(msg.subject, str), path
        parsed += 1
    assert parsed + refused == len(HOSTILE) and parsed > len(HOSTILE) // 2


@pytest.mark.parametrize("header, name, address", [
    ("jane@example.org <attacker@evil.example>", "jane@example.org", "attacker@evil.example"),
    ('"Smith, Jane" <Jane@Example.org>', "Smith, Jane", "jane@example.org"),
    ("=?utf-8?q?Si=C3=A2n?= <s@example.com>", "Siân", "s@example.com"),
    ("plain@example.com", "", "plain@example.com"),
])
def test_sender_is_the_angle_address_never_a_display_name(header, name, address):
    msg = parse(f"From: {header}\r\nSubject: x\r\n\r\nbody\r\n".encode())
    assert (msg.from_name, msg.from_addr) == (name, address)

"""Foundation end to end: a real Dovecot mailbox, a real SMTP server, SQLite and PostgreSQL.

Complaints APPENDed to the mailbox become cases with registration numbers, complainants get
one acknowledgement each by SMTP, auto-replies get nothing, and a second run does nothing.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from tests.mailkit import make_mail, run_cli, write_config

REF = re.compile(r"\[(CMP-\d{4}-\d{5})\]")


def _fill_mailbox(dovecot) -> dict[str, bytes]:
    mails = {
        "complaint1": make_mail(
            sender="Joanne Price <joanne.price@example.com>",
            subject="Youth club cancelled again without telling us",
            message_id="<cmp-one@example.com>",
            body="I want to make a formal complaint. The Thursday session was cancelled for the "
                 "third week running and nobody told the parents. This is not good enough."),
        "complaint2": make_mail(
            sender="Daniel Okafor <d.okafor@example.net>",
            subject="Rude adviser at the drop-in",
            body="The adviser was rude to me and refused to look at my CV. I am disappointed "
                 "and I would like an apology."),
        "compliment": make_mail(
            sender="Priya Shah <priya@example.com>", subject="Thank you to Marcus",
            body="A huge thank you to Marcus, he was brilliant with my son."),
        "out_of_office": make_mail(
            sender="Alan Hughes <alan@example.com>",
            subject="Automatic reply: Youth club cancelled again",
            headers={"Auto-Submitted": "auto-replied"},
            body="I am out of the office until Monday. I will complain about nothing."),
        "bounce": make_mail(
            sender="Mail Delivery System <MAILER-DAEMON@mx.example.net>",
            subject="Undelivered Mail Returned to Sender",
            body="This is the mail system. Your complaint acknowledgement could not be delivered."),
    }
    for raw in mails.values():
        dovecot.append(raw)
    # the same complaint delivered twice (e.g. sent to two addresses that both land here)
    dovecot.append(mails["complaint1"])
    return mails


def _cases(config) -> list[dict]:
    result = run_cli("cases", "list", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_mailbox_to_acknowledged_cases_exactly_once(tmp_path, dovecot, smtp_server, db_url):
    mails = _fill_mailbox(dovecot)
    config = write_config(tmp_path, db_url=db_url, dovecot=dovecot, smtp=smtp_server,
                          staff=["team@example.org"])

    first = run_cli("run", "--once", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "6 message(s) handled" in first.stdout

    cases = _cases(config)
    assert sorted((c["kind"], c["complainant"]) for c in cases) == [
        ("complaint", "d.okafor@example.net"),
        ("complaint", "joanne.price@example.com"),
        ("compliment", "priya@example.com"),
    ]
    year = datetime.now().year
    assert sorted(c["reference"] for c in cases) == [f"CMP-{year}-0000{i}" for i in (1, 2, 3)]
    for case in cases:
        assert case["status"] in ("acknowledged", "received")
        assert datetime.fromisoformat(case["opened_at"]).year == year

    sent = smtp_server.wait_for(6)
    to_people = [m for m in sent if m.rcpt_tos != ["team@example.org"]]
    to_staff = [m for m in sent if m.rcpt_tos == ["team@example.org"]]
    assert len(to_staff) == 3, [m.message["Subject"] for m in sent]
    assert sorted(m.rcpt_tos[0] for m in to_people) == [
        "d.okafor@example.net", "joanne.price@example.com", "priya@example.com"]
    by_case = {c["complainant"]: c["reference"] for c in cases}
    for captured in to_people:
        msg = captured.message
        reference = by_case[captured.rcpt_tos[0]]
        assert f"[{reference}]" in msg["Subject"]
        assert msg["Auto-Submitted"] == "auto-replied"
        assert msg["Message-ID"] and msg["Message-ID"].endswith("@example.org>")
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        assert reference in text and reference in html
        assert captured.mail_from == "complaints@example.org"
    ack = next(m.message for m in to_people if m.rcpt_tos == ["joanne.price@example.com"])
    assert ack["In-Reply-To"] == "<cmp-one@example.com>"
    assert "<cmp-one@example.com>" in ack["References"]
    assert "received your complaint" in ack["Subject"]
    thanks = next(m.message for m in to_people if m.rcpt_tos == ["priya@example.com"])
    assert "Thank you" in thanks["Subject"]
    assert not any("alan@example.com" in m.rcpt_tos or "mailer-daemon@mx.example.net" in m.rcpt_tos
                   for m in sent)

    # everything left the inbox, into the processed folder (named with the server's delimiter)
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.uids(dovecot.folder_name("mailbot", "processed"))) == 6

    # a second run, and the same complaint arriving again later: nothing new
    dovecot.append(mails["complaint1"])
    smtp_server.clear()
    second = run_cli("run", "--once", "--config", str(config))
    assert second.returncode == 0, second.stderr
    assert len(_cases(config)) == 3
    assert smtp_server.messages == []
    assert dovecot.uids("INBOX") == []

    third = run_cli("run", "--once", "--config", str(config))
    assert third.returncode == 0 and "0 message(s) handled" in third.stdout
    assert smtp_server.messages == []


def test_cases_show_prints_timeline(tmp_path, dovecot, smtp_server, sqlite_url):
    dovecot.append(make_mail(sender="Kim Lee <kim@example.com>", subject="Broken promise",
                             body="I want to complain: nobody called me back as promised."))
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server)
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    reference = _cases(config)[0]["reference"]
    shown = run_cli("cases", "show", reference, "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    for expected in (reference, "kim@example.com", "case_opened", "mail in", "mail out",
                     "acknowledgement_queued", "[sent]"):
        assert expected in shown.stdout
    missing = run_cli("cases", "show", "CMP-1999-00001", "--config", str(config))
    assert missing.returncode == 2 and "no case with reference CMP-1999-00001" in missing.stderr


@pytest.mark.parametrize("problem, expected", [
    ('[mailbox]\nkind = "imap"\nhost = "x"\nport = 99999\nusername = "u"\npassword = "p"\n'
     '[outgoing]\nkind = "folder"\npath = "o"\n', "mailbox.port"),
    ('[mailbox]\nkind = "maildir"\npath = "in"\ncolour = "red"\n[outgoing]\nkind = "folder"\npath = "o"\n',
     "mailbox.colour: unknown key"),
    ('[mailbox]\nkind = "pop3"\npath = "in"\n[outgoing]\nkind = "folder"\npath = "o"\n', "mailbox.kind"),
    ('[mailbox]\nkind = "maildir"\npath = "in"\n[outgoing]\nkind = "smtp"\nfrom = "nobody"\n',
     "outgoing.from"),
    ('[mailbox]\nkind = "maildir"\n[outgoing]\nkind = "folder"\npath = "o"\n', "path is required"),
    ('[mailbox\nkind = "maildir"\n', "not valid TOML"),
])
def test_invalid_config_names_the_key(tmp_path, problem, expected):
    path = tmp_path / "bad.toml"
    path.write_text(problem)
    result = run_cli("run", "--once", "--config", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_password_from_environment(tmp_path, dovecot, sqlite_url, monkeypatch):
    from mailbot.config import ConfigError, load_config

    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot)
    text = config.read_text().replace(f'password = "{dovecot.password}"',
                                      'password_env = "MAILBOT_TEST_IMAP_PW"')
    config.write_text(text)
    monkeypatch.delenv("MAILBOT_TEST_IMAP_PW", raising=False)
    with pytest.raises(ConfigError, match="MAILBOT_TEST_IMAP_PW is not set"):
        load_config(config).mailbox.resolve_password()
    monkeypatch.setenv("MAILBOT_TEST_IMAP_PW", dovecot.password)
    assert load_config(config).mailbox.resolve_password() == dovecot.password


def test_wrong_imap_password_is_a_clear_error(tmp_path, dovecot, sqlite_url):
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot)
    config.write_text(config.read_text().replace(f'password = "{dovecot.password}"',
                                                 'password = "wrong"'))
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 2
    assert "login refused for complaints" in result.stderr
    assert "Traceback" not in result.stderr

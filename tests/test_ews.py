"""Exchange-specific behaviour on top of the shared transport contract: throttling, refusals,
configuration, and the whole daemon against the EWS fake.

The fake (tests/servers/ews_fake.py) answers exchangelib's real SOAP requests and fails the test
on any request it does not expect, so these tests also pin down *which* EWS operations mailbot
uses: never a delete, never an UpdateItem (nothing is marked read), never a restriction that
would skip read mail.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from email import message_from_bytes

import pytest

from mailbot.config import ConfigError, load_config
from mailbot.transport.base import PermanentSendError, TransportError
from mailbot.transport.ews import EwsMailbox, EwsSender
from tests.mailkit import REPO, make_mail, run_cli
from tests.servers.ews_fake import mailbox_config
from tests.test_transport_contract import ews_settings

REF = re.compile(r"\[(CMP-\d{4}-\d{5})\]")


def _box(fake, **overrides) -> EwsMailbox:
    return EwsMailbox(ews_settings(fake, **overrides), poll_seconds=0.05)


# -- throttling ----------------------------------------------------------------------------------
def test_server_busy_is_waited_out_without_losing_or_duplicating(ews_server):
    mails = [make_mail(subject=f"busy {i}") for i in range(3)]
    for raw in mails:
        ews_server.append(raw)
    box = _box(ews_server)
    sender = EwsSender(ews_settings(ews_server))
    try:
        ews_server.busy(3)  # the very first requests: folder lookups
        ews_server.busy(2, operation="GetItem")
        got = box.fetch(10)
        assert [m.raw for m in got] == mails
        ews_server.busy(2, operation="MoveItem")
        box.move([m.uid for m in got], "processed")
        ews_server.busy(2, operation="CreateItem")
        sender.send(make_mail(to="jo@example.com", subject="Re: busy 0"), "complaints@example.org",
                    ["jo@example.com"])
    finally:
        box.close()
        sender.close()
    assert ews_server.busy_answered == 2 + 2 + 2  # every busy answer was retried, not skipped
    assert ews_server.messages("inbox") == []
    assert ews_server.messages("mailbot/processed") == mails  # each exactly once
    assert [s.headers["Subject"] for s in ews_server.sent] == ["Re: busy 0"]


def test_back_off_longer_than_allowed_gives_up_for_now_and_moves_nothing(ews_server):
    ews_server.append(make_mail(subject="later"))
    box = _box(ews_server, max_wait=0.5)
    try:
        [msg] = box.fetch(10)
        ews_server.busy(1, back_off_ms=60_000, operation="MoveItem")
        with pytest.raises(TransportError, match="busy"):
            box.move([msg.uid], "processed")
        assert len(ews_server.messages("inbox")) == 1  # still there, for the next round
        box.move([msg.uid], "processed")  # the next round works
    finally:
        box.close()
    assert ews_server.messages("inbox") == [] and len(ews_server.messages("mailbot/processed")) == 1


# -- refusals ------------------------------------------------------------------------------------
def test_wrong_password_is_a_transport_error_at_once(ews_server):
    box = _box(ews_server, password="wrong")
    try:
        with pytest.raises(TransportError, match="login refused"):
            box.fetch(10)
    finally:
        box.close()
    assert ews_server.operations == []  # 401 before any operation, and not retried as "busy"


def test_refused_letter_is_permanent_and_busy_letter_is_temporary(ews_server):
    sender = EwsSender(ews_settings(ews_server, max_wait=0))
    letter = make_mail(to="nobody@invalid", subject="Re: x")
    try:
        ews_server.fail("CreateItem", "ErrorInvalidRecipients", "At least one recipient isn't valid.")
        with pytest.raises(PermanentSendError, match="ErrorInvalidRecipients"):
            sender.send(letter, "complaints@example.org", ["nobody@invalid"])
        ews_server.busy(1, operation="CreateItem")
        with pytest.raises(TransportError):
            sender.send(letter, "complaints@example.org", ["nobody@invalid"])
    finally:
        sender.close()
    assert ews_server.sent == []


def test_envelope_recipient_missing_from_headers_is_added_as_bcc(ews_server):
    sender = EwsSender(ews_settings(ews_server))
    try:
        sender.send(make_mail(to="jo@example.com"), "complaints@example.org",
                    ["jo@example.com", "copy@example.org"])
    finally:
        sender.close()
    [sent] = ews_server.sent
    assert sorted(sent.recipients) == ["copy@example.org", "jo@example.com"]
    assert sent.headers["Bcc"] == "copy@example.org"


# -- configuration -------------------------------------------------------------------------------
OUT_EWS = '[outgoing]\nkind = "ews"\nfrom = "Complaints Team <complaints@example.org>"\n'


@pytest.mark.parametrize("text, expected", [
    ('[mailbox]\nkind = "ews"\nprimary_smtp_address = "a@b.org"\nusername = "u"\n' + OUT_EWS,
     "ews_url and primary_smtp_address are required"),
    ('[mailbox]\nkind = "ews"\news_url = "https://x/EWS/Exchange.asmx"\nprimary_smtp_address = "a@b.org"\n'
     'auth_type = "oauth2"\nclient_id = "c"\n' + OUT_EWS, "client_id, tenant_id and client_secret_env"),
    ('[mailbox]\nkind = "ews"\news_url = "https://x/EWS/Exchange.asmx"\nprimary_smtp_address = "a@b.org"\n'
     'auth_type = "basic"\n' + OUT_EWS, "username is required"),
    ('[mailbox]\nkind = "maildir"\npath = "in"\n' + OUT_EWS, "needs mailbox.kind = \"ews\""),
    ('[mailbox]\nkind = "ews"\news_url = "https://x/EWS/Exchange.asmx"\nprimary_smtp_address = "a@b.org"\n'
     'username = "u"\news_version = "fifteen"\n' + OUT_EWS, "mailbox.ews_version"),
])
def test_ews_config_mistakes_are_named(tmp_path, text, expected):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


# -- the whole daemon ----------------------------------------------------------------------------
def write_ews_config(tmp_path, fake, db_url: str) -> str:
    text = (mailbox_config(fake) + OUT_EWS
            + f'\n[database]\nurl = "{db_url}"\n\n[rules]\npath = "{REPO / "rules"}"\n'
              f'templates = "{REPO / "templates"}"\n\n[staff]\nnotify = ["team@example.org"]\n')
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_exchange_mailbox_end_to_end(tmp_path, ews_server, sqlite_url):
    ews_server.append(make_mail(
        sender="Joanne Price <joanne.price@example.com>", message_id="<cmp-ews-1@example.com>",
        subject="Youth club cancelled again without telling us",
        body="I want to make a formal complaint. The Thursday session was cancelled for the third "
             "week running and nobody told the parents. This is not good enough."))
    ews_server.append(make_mail(
        sender="Daniel Okafor <d.okafor@example.net>", message_id="<cmp-ews-2@example.net>",
        subject="Drop-in session cancelled again without telling us",
        body="I want to make a formal complaint. The Tuesday drop-in was cancelled for the third "
             "week running and nobody told us. This is not good enough."),
        is_read=True)  # already opened in Outlook: still handled
    ews_server.append(make_mail(
        sender="Alan Hughes <alan@example.com>", subject="Automatic reply: Youth club",
        headers={"Auto-Submitted": "auto-replied"}, body="I am out of the office until Monday."))
    config = write_ews_config(tmp_path, ews_server, sqlite_url)

    first = run_cli("run", "--once", "--config", config)
    assert first.returncode == 0, first.stderr
    assert "3 message(s) handled" in first.stdout, first.stdout

    listed = run_cli("cases", "list", "--json", "--config", config)
    cases = json.loads(listed.stdout)
    year = datetime.now().year
    assert sorted((c["complainant"], c["reference"][:8]) for c in cases) == [
        ("d.okafor@example.net", f"CMP-{year}"), ("joanne.price@example.com", f"CMP-{year}")]

    # acknowledgements went out through Exchange and are in Sent Items, threaded
    sent = ews_server.sent
    assert ews_server.messages("sentitems") == [s.mime for s in sent]
    to_people = [(s.recipients, message_from_bytes(s.mime)) for s in sent
                 if s.recipients != ["team@example.org"]]
    acknowledged = {c["complainant"]: c["reference"] for c in cases if c["status"] == "acknowledged"}
    assert "joanne.price@example.com" in acknowledged  # the plain complaint is answered at once
    assert sorted(r[0] for r, _ in to_people) == sorted(acknowledged)  # one letter per case
    asked = {"joanne.price@example.com": "<cmp-ews-1@example.com>",
             "d.okafor@example.net": "<cmp-ews-2@example.net>"}
    for (person,), ack in to_people:
        assert ack["In-Reply-To"] == asked[person]
        assert REF.search(ack["Subject"]).group(1) == acknowledged[person]
    assert sum(s.recipients == ["team@example.org"] for s in sent) == 2
    assert not any("alan@example.com" in s.recipients for s in sent)

    # the inbox is empty; everything is in the processed folder next to the Inbox
    assert ews_server.messages("inbox") == []
    assert len(ews_server.messages("mailbot/processed")) == 3
    assert set(ews_server.operations) <= {"GetFolder", "FindFolder", "CreateFolder", "FindItem",
                                          "GetItem", "MoveItem", "CreateItem"}

    before = len(ews_server.sent)
    second = run_cli("run", "--once", "--config", config)
    assert second.returncode == 0, second.stderr
    assert "0 message(s) handled" in second.stdout
    assert len(ews_server.sent) == before
    assert len(json.loads(run_cli("cases", "list", "--json", "--config", config).stdout)) == 2

"""The transport contract, once, for every mailbox kind: maildir, IMAP (a real Dovecot) and
Exchange (the EWS fake), and for every way out: SMTP (aiosmtpd), folder and Exchange.

The daemon relies on exactly these promises (transport/base.py): fetch returns the waiting
messages byte for byte, oldest first, with ids that stay the same until the message is moved
(also for a new transport instance after a restart); move moves exactly the ids it is given
into the processed or quarantine folder, creating them when missing, and a second move of the
same id is harmless; wait notices new mail.  If one kind breaks a promise, the pipeline's
exactly-once guarantee breaks with it, so each kind runs the same tests.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import uuid
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mailbot.transport.base import Incoming
from tests.mailkit import make_mail

PROCESSED, QUARANTINE = "mailbot/processed", "mailbot/quarantine"


# -- one harness per mailbox kind: deliver mail, open the transport, look into folders ----------
class MaildirHarness:
    kind = "maildir"

    def __init__(self, tmp_path: Path):
        self._seq = itertools.count()
        self.path = tmp_path / "inbox"
        for sub in ("new", "cur", "tmp"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def deliver(self, raw: bytes) -> None:
        # as a delivery agent does: a "time.unique.host" name in tmp/, then rename into new/
        name = f"{time.time_ns()}.M{next(self._seq)}P{os.getpid()}.mailbot-test"
        (self.path / "tmp" / name).write_bytes(raw)
        os.rename(self.path / "tmp" / name, self.path / "new" / name)

    def open(self):
        from mailbot.transport.maildir import MaildirMailbox
        return MaildirMailbox(self.path, PROCESSED, QUARANTINE)

    def _dir(self, folder: str) -> Path:
        return self.path if folder == "INBOX" else self.path / ("." + folder.replace("/", "."))

    def folder_exists(self, folder: str) -> bool:
        return self._dir(folder).is_dir()

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        files = [p for sub in ("new", "cur") for p in (self._dir(folder) / sub).glob("*")]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.stat().st_mtime_ns)]

    def expected(self, raw: bytes) -> bytes:
        return raw


class ImapHarness:
    kind = "imap"

    def __init__(self, dovecot):
        self.dovecot = dovecot

    def deliver(self, raw: bytes) -> None:
        self.dovecot.append(raw)

    def open(self):
        from mailbot.transport.imap import ImapMailbox
        d = self.dovecot
        return ImapMailbox(d.host, d.port, "none", d.user, d.password, "INBOX", PROCESSED,
                           QUARANTINE, poll_seconds=0.2, timeout=10)

    def _name(self, folder: str) -> str:
        return folder if folder == "INBOX" else self.dovecot.folder_name(*folder.split("/"))

    def folder_exists(self, folder: str) -> bool:
        return self._name(folder) in self.dovecot.folders()

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.dovecot.fetch_raw(self._name(folder)) if self.folder_exists(folder) else []

    def expected(self, raw: bytes) -> bytes:
        # IMAP transfers every message with CRLF line ends (RFC 3501), whatever was stored.
        return re.sub(rb"\r?\n", b"\r\n", raw)


class EwsHarness:
    kind = "ews"

    def __init__(self, fake):
        self.fake = fake

    def deliver(self, raw: bytes) -> None:
        self.fake.append(raw)

    def open(self):
        from mailbot.transport.ews import EwsMailbox
        return EwsMailbox(ews_settings(self.fake), "INBOX", PROCESSED, QUARANTINE, poll_seconds=0.05)

    def folder_exists(self, folder: str) -> bool:
        return self.fake.folder(folder) is not None

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.fake.messages("inbox" if folder == "INBOX" else folder)

    def expected(self, raw: bytes) -> bytes:
        return raw


class ImapOAuth2Harness(ImapHarness):
    """IMAP with SASL XOAUTH2 against Dovecot's oauth2 passdb (JWTs validated by Dovecot)."""

    kind = "imap-oauth2"

    def open(self):
        from mailbot.transport.imap import ImapMailbox
        from mailbot.transport.oauth import StaticTokenProvider
        d = self.dovecot
        return ImapMailbox(d.host, d.port, "none", d.user, "", "INBOX", PROCESSED, QUARANTINE,
                           poll_seconds=0.2, timeout=10,
                           token_provider=StaticTokenProvider(d.oauth2_token()))


class GraphHarness:
    """Microsoft Graph (the strict HTTPS fake); the delta state is kept in a SQLite database
    that outlives each transport instance, as mailbot's database does across restarts."""

    kind = "graph"

    def __init__(self, fake, tls, tmp_path: Path):
        from mailbot.db import Database
        self.fake, self.tls = fake, tls
        self.db = Database(f"sqlite:///{tmp_path / 'graph-state.db'}")

    def deliver(self, raw: bytes) -> None:
        self.fake.append(raw)

    def open(self):
        from mailbot.transport.graph import DatabaseDeltaStore, GraphMailbox
        from mailbot.transport.oauth import StaticTokenProvider
        return GraphMailbox(graph_settings(self.fake), StaticTokenProvider(self.fake.token()),
                            state=DatabaseDeltaStore(self.db), processed_folder=PROCESSED,
                            quarantine_folder=QUARANTINE, poll_seconds=0.05,
                            session=self.tls.session())

    def folder_exists(self, folder: str) -> bool:
        return self.fake.folder(folder) is not None

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.fake.messages("inbox" if folder == "INBOX" else folder)

    def expected(self, raw: bytes) -> bytes:
        return raw


def graph_settings(fake, **overrides):
    from mailbot.transport.graph import GraphSettings
    values = dict(mailbox=fake.mailbox, base_url=fake.url, timeout=10, max_wait=5)
    values.update(overrides)
    return GraphSettings(**values)


def ews_settings(fake, **overrides):
    from mailbot.transport.ews import EwsSettings
    values = dict(url=fake.url, primary_smtp_address=fake.mailbox, auth_type="basic",
                  username="complaints", password="secret", version="15.1.2507.6", timeout=10,
                  max_wait=5)
    values.update(overrides)
    return EwsSettings(**values)


@pytest.fixture(params=["maildir", "imap", "ews", "imap-oauth2", "graph"])
def harness(request, tmp_path):
    if request.param == "maildir":
        return MaildirHarness(tmp_path)
    if request.param == "imap":
        return ImapHarness(request.getfixturevalue("dovecot"))
    if request.param == "imap-oauth2":
        return ImapOAuth2Harness(request.getfixturevalue("dovecot_oauth2"))
    if request.param == "graph":
        return GraphHarness(request.getfixturevalue("graph_server"),
                            request.getfixturevalue("oauth_tls"), tmp_path)
    return EwsHarness(request.getfixturevalue("ews_server"))


@pytest.fixture
def transport(harness):
    box = harness.open()
    yield box
    box.close()


def _mails(n: int, tag: str = "m") -> list[bytes]:
    return [make_mail(subject=f"{tag} {i}", body=f"Complaint number {i}.") for i in range(n)]


# -- fetch ---------------------------------------------------------------------------------------
def test_fetch_returns_exact_bytes_oldest_first(harness, transport):
    mails = _mails(3)
    for raw in mails:
        harness.deliver(raw)
    got = transport.fetch(10)
    assert [m.raw for m in got] == [harness.expected(raw) for raw in mails]
    assert len({m.uid for m in got}) == 3
    assert all(isinstance(m, Incoming) and m.uid for m in got)


def test_fetch_respects_limit_and_leaves_the_rest(harness, transport):
    mails = _mails(3)
    for raw in mails:
        harness.deliver(raw)
    first = transport.fetch(2)
    assert [m.raw for m in first] == [harness.expected(r) for r in mails[:2]]
    assert len(transport.fetch(10)) == 3  # fetching marks nothing and removes nothing
    assert harness.messages() == [harness.expected(r) for r in mails]


def _with_attachment(i: int, size: int) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"], msg["Subject"] = f"P{i} <p{i}@example.com>", "complaints@example.org", f"Photos {i}"
    msg["Message-ID"] = f"<photos-{i}@example.com>"
    msg.set_content("Photos of the broken gate attached.")
    msg.add_attachment(os.urandom(size), maintype="image", subtype="jpeg", filename=f"gate{i}.jpg")
    return msg.as_bytes()


def test_fetch_keeps_to_a_byte_budget_but_always_takes_one(harness, transport):
    mails = [_with_attachment(i, 250_000) for i in range(3)]
    for raw in mails:
        harness.deliver(raw)
    expected = [harness.expected(raw) for raw in mails]
    size = max(len(raw) for raw in expected)
    got = transport.fetch(10, max_bytes=2 * size + size // 2)
    assert [m.raw for m in got] == expected[:2]
    assert got.more  # the budget, not the inbox, ended it
    alone = transport.fetch(10, max_bytes=size // 10)  # bigger than the budget: still taken, alone
    assert [m.raw for m in alone] == expected[:1] and alone.more
    everything = transport.fetch(10, max_bytes=10 * size)
    assert [m.raw for m in everything] == expected and not getattr(everything, "more", False)
    assert harness.messages() == expected  # fetching under a budget removes nothing


def test_empty_inbox_gives_nothing(harness, transport):
    assert transport.fetch(10) == []


# -- move ----------------------------------------------------------------------------------------
def test_move_to_processed_and_quarantine_moves_exactly_those(harness):
    mails = _mails(4)
    assert not harness.folder_exists(PROCESSED) and not harness.folder_exists(QUARANTINE)
    for raw in mails:
        harness.deliver(raw)
    box = harness.open()
    try:
        got = box.fetch(10)
        box.move([got[0].uid, got[2].uid], "processed")
        box.move([got[3].uid], "quarantine")
    finally:
        box.close()
    # folders were created when missing
    assert harness.folder_exists(PROCESSED) and harness.folder_exists(QUARANTINE)
    exp = [harness.expected(r) for r in mails]
    assert harness.messages() == [exp[1]]
    assert sorted(harness.messages(PROCESSED)) == sorted([exp[0], exp[2]])
    assert harness.messages(QUARANTINE) == [exp[3]]


def test_move_is_harmless_twice_and_for_nothing(harness, transport):
    harness.deliver(_mails(1)[0])
    [msg] = transport.fetch(10)
    transport.move([], "processed")
    transport.move([msg.uid], "processed")
    transport.move([msg.uid], "processed")  # already gone: no error, nothing else moved
    assert harness.messages() == []
    assert harness.messages(PROCESSED) == [msg.raw]


def test_existing_folders_are_reused(harness):
    first = harness.open()
    harness.deliver(_mails(1, "a")[0])
    [a] = first.fetch(10)
    first.move([a.uid], "processed")
    first.close()
    second = harness.open()  # folders exist now: found, not created twice
    harness.deliver(_mails(1, "b")[0])
    try:
        [b] = second.fetch(10)
        second.move([b.uid], "processed")
    finally:
        second.close()
    assert sorted(harness.messages(PROCESSED)) == sorted([a.raw, b.raw])


# -- restart -------------------------------------------------------------------------------------
def test_restart_sees_only_what_was_not_moved_with_the_same_ids(harness):
    mails = _mails(3)
    for raw in mails:
        harness.deliver(raw)
    before = harness.open()
    try:
        got = before.fetch(10)
        before.move([got[1].uid], "processed")
    finally:
        before.close()
    after = harness.open()
    try:
        again = after.fetch(10)
        assert [(m.uid, m.raw) for m in again] == [(got[0].uid, got[0].raw), (got[2].uid, got[2].raw)]
        after.move([m.uid for m in again], "processed")  # ids from before the restart work too
        assert after.fetch(10) == []
    finally:
        after.close()


# -- waiting -------------------------------------------------------------------------------------
def test_wait_notices_new_mail(harness, transport):
    """Used as the daemon does: wait, then fetch.  A True that turns out to be nothing new is
    allowed ("new mail *may* have arrived"); sleeping through new mail is not."""
    assert transport.fetch(10) == []
    late = _mails(1, "late")[0]
    timer = threading.Timer(0.3, harness.deliver, args=(late,))
    timer.start()
    got: list[Incoming] = []
    deadline = time.monotonic() + 10
    try:
        while not got and time.monotonic() < deadline:
            if transport.wait(deadline - time.monotonic()):
                got = transport.fetch(10)
    finally:
        timer.cancel()
    assert [m.raw for m in got] == [harness.expected(late)]


@pytest.mark.parametrize("then_move", [False, True], ids=["then-wait", "then-move-and-wait"])
def test_wait_notices_mail_that_came_since_the_last_fetch(harness, transport, then_move):
    """Mail that arrives while the daemon is busy with a round (after its fetch, before it
    waits again) must end the next wait at once, not sleep through it until the timeout.  On
    IMAP the server announces it with its answer to the next command (here the move), or as
    IDLE starts, in the same packet as its "+ idling", which imaplib then holds in its buffer
    where a poll of the socket does not see it."""
    harness.deliver(_mails(1, "first")[0])
    got = transport.fetch(10)
    late = _mails(1, "between")[0]
    harness.deliver(late)
    time.sleep(0.2)
    if then_move:
        transport.move([m.uid for m in got], "processed")
    start = time.monotonic()
    woke = transport.wait(30)
    assert woke and time.monotonic() - start < 5
    handled = {m.uid for m in got}
    assert [m.raw for m in transport.fetch(10) if m.uid not in handled] == [harness.expected(late)]


# -- big and odd messages ------------------------------------------------------------------------
def _big_mail() -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"], msg["Subject"] = "Big <big@example.com>", "complaints@example.org", "Photos"
    msg["Message-ID"] = "<big-one@example.com>"
    msg.set_content("Photos of the broken playground attached.")
    msg.add_attachment(os.urandom(5 * 1024 * 1024), maintype="application", subtype="octet-stream",
                       filename="evidence.bin")
    return msg.as_bytes()


ODD = {
    "8bit-headers": ("From: Zoë Ångström <zoe@example.com>\r\nTo: complaints@example.org\r\n"
                     "Subject: Beschwerde über den Jugendclub – äöü\r\nMessage-ID: <odd1@example.com>\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                     "Sehr geehrte Damen und Herren, ich möchte mich beschweren.\r\n").encode("utf-8"),
    "no-message-id": (b"From: nobody@example.com\r\nTo: complaints@example.org\r\nSubject: no id\r\n\r\n"
                      b"There is no Message-ID header here.\r\n"),
    "lf-only": (b"From: lf@example.com\nTo: complaints@example.org\nSubject: unix line ends\n"
                b"Message-ID: <lf@example.com>\n\nline one\nline two\n"),
    "latin1-body": (b"From: l1@example.com\r\nTo: complaints@example.org\r\nSubject: caf\xe9\r\n"
                    b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nCaf\xe9 cr\xe8me\r\n"),
}


@pytest.mark.parametrize("name", ["big", *ODD])
def test_big_and_odd_messages_round_trip(harness, transport, name):
    raw = _big_mail() if name == "big" else ODD[name]
    harness.deliver(raw)
    [msg] = transport.fetch(10)
    assert msg.raw == harness.expected(raw)
    transport.move([msg.uid], "processed")
    assert harness.messages(PROCESSED) == [harness.expected(raw)]
    assert harness.messages() == []


# -- senders -------------------------------------------------------------------------------------
def _letter(to: str = "jo@example.com", attachment: bytes | None = None) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Complaints Team <complaints@example.org>"
    msg["To"] = to
    msg["Subject"] = "[CMP-2026-00001] We have received your complaint"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    msg["In-Reply-To"] = "<cmp-one@example.com>"
    msg["References"] = "<cmp-one@example.com>"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content("Thank you. Your reference is CMP-2026-00001.\n")
    msg.add_alternative("<p>Thank you. Your reference is <b>CMP-2026-00001</b>.</p>", subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="policy.pdf")
    return msg.as_bytes()


class SmtpOut:
    def __init__(self, server):
        self.server = server

    def open(self):
        from mailbot.transport.smtp import SmtpSender
        return SmtpSender(self.server.host, self.server.port, "none", timeout=10)

    def delivered(self, n: int) -> list[tuple[bytes, list[str]]]:
        return [(m.raw, m.rcpt_tos) for m in self.server.wait_for(n)]


class FolderOut:
    def __init__(self, path: Path):
        self.path = path

    def open(self):
        from mailbot.transport.folder import FolderSender
        return FolderSender(self.path)

    def delivered(self, n: int) -> list[tuple[bytes, list[str]]]:
        out = []
        for file in sorted(self.path.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
            data = file.read_bytes()
            envelope, raw = data.split(b"\r\n", 2)[:2], data.split(b"\r\n", 2)[2]
            out.append((raw, envelope[1].decode().removeprefix("X-Envelope-To: ").split(", ")))
        return out


class EwsOut:
    def __init__(self, fake):
        self.fake = fake

    def open(self):
        from mailbot.transport.ews import EwsSender
        return EwsSender(ews_settings(self.fake))

    def delivered(self, n: int) -> list[tuple[bytes, list[str]]]:
        # what Exchange sent, and the copy it kept in Sent Items must be the same letter
        assert self.fake.messages("sentitems") == [s.mime for s in self.fake.sent]
        return [(s.mime, s.recipients) for s in self.fake.sent]


class SmtpOAuth2Out(SmtpOut):
    """SMTP AUTH XOAUTH2 against aiosmtpd checking the JWT."""

    def open(self):
        from mailbot.transport.oauth import StaticTokenProvider
        from mailbot.transport.smtp import SmtpSender
        return SmtpSender(self.server.host, self.server.port, "none", "complaints@example.org",
                          timeout=10, token_provider=StaticTokenProvider(self.server.oauth2_token()))

    def delivered(self, n: int) -> list[tuple[bytes, list[str]]]:
        out = super().delivered(n)
        assert self.server.oauth2_logins and set(self.server.oauth2_logins) == {"complaints@example.org"}
        return out


class GraphOut:
    #: Graph takes at most 4 MB per request: a bigger letter is refused for good, in words
    size_limit = 4 * 1024 * 1024

    def __init__(self, fake, tls):
        self.fake, self.tls = fake, tls

    def open(self):
        from mailbot.transport.graph import GraphSender
        from mailbot.transport.oauth import StaticTokenProvider
        return GraphSender(graph_settings(self.fake), StaticTokenProvider(self.fake.token()),
                           session=self.tls.session())

    def delivered(self, n: int) -> list[tuple[bytes, list[str]]]:
        # what was sent, and the copy kept in Sent Items, must be the same letter
        assert self.fake.messages("sentitems") == [s.mime for s in self.fake.sent]
        return [(s.mime, s.recipients) for s in self.fake.sent]


@pytest.fixture(params=["smtp", "folder", "ews", "smtp-oauth2", "graph"])
def outgoing(request, tmp_path):
    if request.param == "smtp":
        return SmtpOut(request.getfixturevalue("smtp_server"))
    if request.param == "smtp-oauth2":
        return SmtpOAuth2Out(request.getfixturevalue("smtp_oauth2"))
    if request.param == "graph":
        return GraphOut(request.getfixturevalue("graph_server"), request.getfixturevalue("oauth_tls"))
    if request.param == "folder":
        return FolderOut(tmp_path / "outbox")
    return EwsOut(request.getfixturevalue("ews_server"))


def _same_letter(sent: bytes, original: bytes) -> None:
    a, b = message_from_bytes(sent), message_from_bytes(original)
    for header in ("Message-ID", "In-Reply-To", "References", "Subject", "From", "To",
                   "Auto-Submitted"):
        assert a[header] == b[header], header
    assert [p.get_payload(decode=True) for p in a.walk() if not p.is_multipart()] == \
           [p.get_payload(decode=True) for p in b.walk() if not p.is_multipart()]


def test_sender_delivers_the_letter_unchanged(outgoing):
    letters = [_letter("jo@example.com"), _letter("sam@example.net")]
    sender = outgoing.open()
    try:
        for raw in letters:
            sender.send(raw, "complaints@example.org", [str(message_from_bytes(raw)["To"])])
    finally:
        sender.close()
    delivered = outgoing.delivered(2)
    assert len(delivered) == 2
    for (raw, rcpts), original in zip(delivered, letters):
        _same_letter(raw, original)
        assert rcpts == [str(message_from_bytes(original)["To"])]


def test_sender_handles_a_large_letter(outgoing):
    raw = _letter(attachment=os.urandom(5 * 1024 * 1024))
    sender = outgoing.open()
    try:
        if len(raw) > getattr(outgoing, "size_limit", len(raw)):
            from mailbot.transport.base import PermanentSendError
            with pytest.raises(PermanentSendError, match="at most 4 MB"):
                sender.send(raw, "complaints@example.org", ["jo@example.com"])
            assert outgoing.delivered(0) == []
            return
        sender.send(raw, "complaints@example.org", ["jo@example.com"])
    finally:
        sender.close()
    [(sent, rcpts)] = outgoing.delivered(1)
    _same_letter(sent, raw)
    assert rcpts == ["jo@example.com"]

"""Helpers for stories in which staff work cases by email: a policy preset (tests/policy_story.py)
whose staff list and trusted mail server are set in ``staff.toml``, and staff mail written the
way Outlook writes it (reply prefixes, a quoted "From:/Sent:/To:/Subject:" block, an HTML
alternative, Thread-Index) with the receiving server's Authentication-Results on top."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from html import escape

from mailbot.app import App
from mailbot.cases import models
from tests.policy_story import Story

MX = "mx.example.org"
STAFF_TOML = f'''[staff]
members = ["jane@example.org"]
trusted_authserv_ids = ["{MX}"]
'''


def verified(address: str) -> str:
    """What our receiving server writes for a message really sent from ``address``'s domain."""
    domain = address.rsplit("@", 1)[1]
    return (f"{MX}; dkim=pass (2048-bit key; unprotected) header.d={domain} header.s=selector1 "
            f"header.b=AbCdEf12; spf=pass (mx.example.org: domain of {address} designates 192.0.2.10 "
            f"as permitted sender) smtp.mailfrom={address}; dmarc=pass (p=REJECT) header.from={domain}")


def with_staff(story: Story, staff_toml: str = STAFF_TOML) -> Story:
    """Configure the story's rules for staff commands (as an admin would) and reload them."""
    (story.config.parent / "rules" / "staff.toml").write_text(staff_toml)
    story.app.close()
    story.app = App.load(story.config)
    return story


def outlook(*, sender: str, subject: str, body: str, in_reply_to: str | None = None,
            references: str | None = None, quoted: str = "", auth: str | None = None,
            headers: dict[str, str] | None = None, html_only: bool = False,
            reply_to: str | None = None) -> bytes:
    """A reply as Outlook sends it: text and HTML alternatives, the quoted mail below a
    From/Sent/To/Subject block, and (``auth``) our server's Authentication-Results on top."""
    msg = EmailMessage(policy=SMTP)
    if auth is not None:
        msg["Authentication-Results"] = auth
    msg["From"] = sender
    msg["To"] = "Complaints Team <complaints@example.org>"
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Thread-Topic"] = subject.split("] ", 1)[-1]
    msg["Thread-Index"] = "AQHbVw1tq3s0y4mJnUmXz7nG5w=="
    msg["Date"] = format_datetime(models.utcnow())
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[1].strip(">"))
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = references or in_reply_to
    msg["X-MS-Has-Attach"] = ""
    msg["X-MS-TNEF-Correlator"] = ""
    msg["Content-Language"] = "en-GB"
    for name, value in (headers or {}).items():
        msg[name] = value
    text = body + ("\n\n" + quoted if quoted else "")
    html = ("<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\"></head>"
            "<body><div class=\"WordSection1\">"
            + "".join(f"<p class=\"MsoNormal\">{escape(line) or '&nbsp;'}</p>" for line in body.split("\n"))
            + ("<div style=\"border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm\">"
               + "".join(f"<p class=\"MsoNormal\">{escape(line) or '&nbsp;'}</p>" for line in quoted.split("\n"))
               + "</div>" if quoted else "")
            + "</div></body></html>")
    if html_only:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def quote(captured_subject: str, captured_text: str, to: str = "Line Manager") -> str:
    """Outlook's quoted block for a message mailbot sent."""
    return ("________________________________\n"
            "From: Complaints Team <complaints@example.org>\n"
            "Sent: Friday, August 28, 2026 11:02 AM\n"
            f"To: {to}\n"
            f"Subject: {captured_subject}\n\n" + captured_text)


class Mail:
    """A letter mailbot sent, as captured by the SMTP server."""

    def __init__(self, captured):
        self.to = captured.rcpt_tos
        self.message = captured.message
        self.subject = str(captured.message["Subject"])
        self.message_id = str(captured.message["Message-ID"])
        self.text = captured.message.get_body(("plain",)).get_content().replace("\r\n", "\n")

    def __repr__(self) -> str:
        return f"<Mail to={self.to} subject={self.subject!r}>"


def deliver(story: Story, raw: bytes) -> list[Mail]:
    """Put ``raw`` in the story's mailbox, run the daemon once (in this process, on the story's
    clock) and return what it sent."""
    import mailbox

    from mailbot.daemon import Daemon

    mailbox.Maildir(story.inbox, create=False).add(raw)
    story.smtp.clear()
    daemon = Daemon(story.app)
    try:
        report = daemon.run_once()
    finally:
        daemon.close()
    story.last_outcomes = report.outcomes
    if report.sent:
        story.smtp.wait_for(report.sent)
    return [Mail(m) for m in story.smtp.messages]


def to(sent: list[Mail], address: str) -> Mail:
    found = [m for m in sent if address in m.to]
    assert len(found) == 1, f"expected one letter to {address}, got {sent}"
    return found[0]

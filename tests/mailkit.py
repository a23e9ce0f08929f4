"""Helpers to write realistic test mail and mailbot config files for tests."""

from __future__ import annotations

import itertools
import subprocess
import sys
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
_counter = itertools.count(1)


def make_mail(*, sender: str = "Jo Bloggs <jo@example.com>", to: str = "complaints@example.org",
              subject: str = "A complaint", body: str = "I want to complain.",
              message_id: str | None = None, headers: dict[str, str] | None = None,
              html: str | None = None, date: datetime | None = None) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime(2026, 11, 20, 10, next(_counter) % 60,
                                                   tzinfo=timezone.utc))
    msg["Message-ID"] = message_id or make_msgid(domain=sender.split("@")[-1].strip(">"))
    for name, value in (headers or {}).items():
        msg[name] = value
    if body is not None:
        msg.set_content(body)
    if html is not None:
        if body is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def write_config(tmp_path: Path, *, db_url: str, dovecot=None, smtp=None, maildir: Path | None = None,
                 staff: list[str] | None = None, extra: str = "", rules: Path | None = None) -> Path:
    """A config file for a test: IMAP on the given Dovecot (or a maildir), SMTP capture (or folder)."""
    if dovecot is not None:
        mailbox = f'''[mailbox]
kind = "imap"
host = "{dovecot.host}"
port = {dovecot.port}
security = "none"
username = "{dovecot.user}"
password = "{dovecot.password}"
poll_seconds = 1
timeout_seconds = 10
'''
    else:
        mailbox = f'[mailbox]\nkind = "maildir"\npath = "{maildir or tmp_path / "inbox"}"\n'
    if smtp is not None:
        outgoing = f'''[outgoing]
kind = "smtp"
host = "{smtp.host}"
port = {smtp.port}
security = "none"
from = "Complaints Team <complaints@example.org>"
timeout_seconds = 10
'''
    else:
        outgoing = f'[outgoing]\nkind = "folder"\npath = "{tmp_path / "outbox"}"\nfrom = "Complaints Team <complaints@example.org>"\n'
    staff_list = ", ".join(f'"{s}"' for s in (staff if staff is not None else ["team@example.org"]))
    text = f'''{mailbox}
{outgoing}
[database]
url = "{db_url}"

[rules]
path = "{rules or REPO / "rules"}"
templates = "{REPO / "templates"}"

[staff]
notify = [{staff_list}]
{extra}'''
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``mailbot`` command line in a child process."""
    return subprocess.run([sys.executable, "-m", "mailbot", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def start_daemon(config: Path) -> subprocess.Popen:
    """A real `mailbot run` daemon in its own process group (so a test can SIGKILL all of it)."""
    return subprocess.Popen([sys.executable, "-m", "mailbot", "run", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def set_batch_size(config: Path, size: int) -> None:
    config.write_text(config.read_text().replace("poll_seconds = 1", f"poll_seconds = 1\nbatch_size = {size}"))


def add_sms_gateway(path: Path, domain: str) -> None:
    """An admin adds a gateway domain to [sms_gateway] (whatever else the shipped file holds)."""
    head, _, tail = path.read_text().partition("[sms_gateway]\n")
    assert tail, f"no [sms_gateway] in {path}"
    if "sender_domains = [" in tail.split("\n[", 1)[0]:
        tail = tail.replace("sender_domains = [", f'sender_domains = ["{domain}", ', 1)
    else:
        tail = f'sender_domains = ["{domain}"]\n' + tail
    path.write_text(head + "[sms_gateway]\n" + tail)

"""Letters: the wording lives in ``templates/`` (jinja2), never in Python.

A letter NAME is up to three files: ``NAME.subject.j2`` (one line), ``NAME.txt.j2`` (the plain
text part, required) and ``NAME.html.j2`` (optional, autoescaped).  Templates run in Jinja's
sandbox with ``StrictUndefined``: a misspelt variable is an error at ``rules check`` time, not
a blank in a letter to an upset person, and text a complainant wrote is only ever data, never
template code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from mailbot.cases.models import utcnow

_LINEBREAKS = re.compile(r"[\r\n\t\x00-\x1f\x7f]+")


class LetterError(Exception):
    """A template is missing or cannot be rendered with the data given."""


@dataclass
class Letter:
    subject: str
    text: str
    html: str | None


def header_safe(value: str, limit: int = 250) -> str:
    """Collapse anything that could break out of a header line (CR/LF injection)."""
    # splitlines() also breaks on \x85, \u2028 and \u2029, which the email package refuses
    value = " ".join((value or "").splitlines())
    return " ".join(_LINEBREAKS.sub(" ", value).split())[:limit]


class Letters:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        loader = FileSystemLoader(str(self.directory))
        common = dict(loader=loader, undefined=StrictUndefined, keep_trailing_newline=True,
                      trim_blocks=True, lstrip_blocks=True)
        self._text = SandboxedEnvironment(autoescape=False, **common)
        self._html = SandboxedEnvironment(autoescape=True, **common)

    def exists(self, name: str) -> bool:
        return (self.directory / f"{name}.txt.j2").is_file()

    def render(self, name: str, context: dict) -> Letter:
        try:
            subject = self._text.get_template(f"{name}.subject.j2").render(context)
            text = self._text.get_template(f"{name}.txt.j2").render(context)
        except TemplateNotFound as exc:
            raise LetterError(f"template {exc.name} not found in {self.directory}") from None
        except Exception as exc:  # noqa: BLE001 - any template bug becomes one clear error
            raise LetterError(f"template {name}: {type(exc).__name__}: {exc}") from None
        html = None
        if (self.directory / f"{name}.html.j2").is_file():
            try:
                html = self._html.get_template(f"{name}.html.j2").render(context)
            except Exception as exc:  # noqa: BLE001
                raise LetterError(f"template {name}.html.j2: {type(exc).__name__}: {exc}") from None
        return Letter(subject=header_safe(subject), text=text, html=html)


def build_email(letter: Letter, *, sender: str, to: list[str], in_reply_to: str | None = None,
                references: list[str] | None = None, auto_reply: bool = True) -> EmailMessage:
    """An outgoing message with a Message-ID of our own and threading to the mail it answers."""
    msg = EmailMessage(policy=SMTP)
    name, addr = parseaddr(sender)
    msg["From"] = formataddr((header_safe(name), addr))
    msg["To"] = ", ".join(header_safe(a) for a in to)
    msg["Subject"] = header_safe(letter.subject)  # again here: no caller can forget it
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain=addr.rsplit("@", 1)[-1] or "mailbot.invalid")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    refs = list(dict.fromkeys((references or []) + ([in_reply_to] if in_reply_to else [])))
    if refs:
        msg["References"] = " ".join(refs[-20:])
    if auto_reply:
        msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: other robots must not answer us
        msg["X-Auto-Response-Suppress"] = "All"  # and Exchange out-of-office must not either
    msg["X-Mailer"] = "mailbot"
    msg.set_content(letter.text)
    if letter.html:
        msg.add_alternative(letter.html, subtype="html")
    return msg

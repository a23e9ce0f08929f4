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
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
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


_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP  # readable in any mail client's "view source", unlike base64
_UTF8_QP.header_encoding = QP
_SMTP_LINES = compat32.clone(linesep="\r\n")


def _text_part(text: str, subtype: str) -> Message:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, charset=_UTF8_QP)
    return part


def _header(value: str) -> str:
    """Encode non-ASCII text, keeping a leading ASCII run (the "[CMP-2026-00042]" tag) readable
    in the raw header for gateways and filters that never decode encoded-words."""
    if value.isascii():
        return value
    words = value.split(" ")
    n = 0
    while n < len(words) and words[n].isascii():
        n += 1
    header = Header(charset="us-ascii")
    if n:
        header.append(" ".join(words[:n]) + " ", "us-ascii")
    header.append(" ".join(words[n:]), _UTF8_QP)
    return header.encode()


def build_email(letter: Letter, *, sender: str, to: list[str], in_reply_to: str | None = None,
                references: list[str] | None = None, auto_reply: bool = True) -> Message:
    """An outgoing message with a Message-ID of our own and threading to the mail it answers.

    Built with the stdlib's compat32 MIME classes, which are several times faster than
    ``EmailMessage`` with ``policy.SMTP`` for the same bytes; every header value passes through
    ``header_safe`` so nothing a complainant wrote can add a header line.
    """
    name, addr = parseaddr(sender)
    if letter.html:
        msg: Message = MIMEMultipart("alternative")
        msg.attach(_text_part(letter.text, "plain"))
        msg.attach(_text_part(letter.html, "html"))
    else:
        msg = _text_part(letter.text, "plain")
    msg["From"] = formataddr((header_safe(name), addr), charset="utf-8")
    msg["To"] = ", ".join(header_safe(a) for a in to)
    msg["Subject"] = _header(header_safe(letter.subject))  # again here: no caller can forget it
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain=addr.rsplit("@", 1)[-1] or "mailbot.invalid")
    if in_reply_to:
        msg["In-Reply-To"] = header_safe(in_reply_to, 998)
    refs = list(dict.fromkeys((references or []) + ([in_reply_to] if in_reply_to else [])))
    if refs:
        msg["References"] = header_safe(" ".join(refs[-20:]), 4000)
    if auto_reply:
        msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: other robots must not answer us
        msg["X-Auto-Response-Suppress"] = "All"  # and Exchange out-of-office must not either
    msg["X-Mailer"] = "mailbot"
    return msg


def as_smtp_bytes(msg: Message) -> bytes:
    """The message as it goes on the wire (CRLF line ends)."""
    return msg.as_bytes(policy=_SMTP_LINES)

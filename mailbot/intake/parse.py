"""Turn raw RFC 5322 bytes into a ``ParsedMessage`` the rest of the pipeline can trust.

Real complainants' mail is messy: wrong or unknown charsets, broken boundaries, 8-bit headers,
HTML-only bodies. Parsing therefore never raises for ordinary damage: it decodes as best it
can and records *defects*. It raises ``ParseError`` only when there is no usable message at
all, and the caller quarantines the mail with that reason instead of crashing or looping.

The stdlib parser runs with the ``compat32`` policy and headers are decoded explicitly: it is
several times faster than ``policy.default`` and never raises on a malformed address header.
"""

from __future__ import annotations

import codecs
import email
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from inscriptis import get_text
from inscriptis.model.config import ParserConfig

from mailbot.intake.attachments import attachment_text

MAX_TEXT_CHARS = 200_000  # the classifier and the letters never need more than this
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MSGID = re.compile(r"<[^<>\s]+>")
_HTML_CONFIG = ParserConfig(display_links=False, display_images=False)


class ParseError(Exception):
    """The bytes are not a usable email; the message is the quarantine reason."""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    text: str = ""  # the words of an attached letter (PDF, Word, text), see mailbot.intake.attachments


@dataclass
class ParsedMessage:
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    subject: str
    from_name: str
    from_addr: str
    reply_to: str | None
    to: list[str]
    cc: list[str]
    date: datetime | None
    text: str
    html: str | None
    attachments: list[Attachment]
    headers: dict[str, list[str]]
    machine_generated: str | None
    size: int
    sha256: str
    defects: list[str] = field(default_factory=list)

    @property
    def attachment_text(self) -> str:
        """The words of the attached letters, each under its file name ("" when none has any)."""
        return "\n\n".join(f"[{a.filename}]\n{a.text}" for a in self.attachments if a.text)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def reply_address(self) -> str:
        """Where an answer to the sender goes: Reply-To when given, else From."""
        return self.reply_to or self.from_addr

    @property
    def thread_ids(self) -> list[str]:
        return list(dict.fromkeys(self.in_reply_to + self.references))


def decode_header_value(value: str | None) -> str:
    """Decode RFC 2047 words; undecodable bytes become U+FFFD rather than an exception."""
    if value is None:
        return ""
    value = str(value)
    try:
        text = str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError, TypeError, AssertionError):
        parts = []
        try:
            for chunk, charset in decode_header(value):
                if isinstance(chunk, bytes):
                    parts.append(chunk.decode(_known_charset(charset) or "utf-8", "replace"))
                else:
                    parts.append(chunk)
        except Exception:  # noqa: BLE001 - header damage must not stop parsing
            parts = [value]
        text = "".join(parts)
    return " ".join(_CONTROL.sub(" ", text).split())


def _known_charset(charset: str | None) -> str | None:
    if not charset:
        return None
    charset = charset.strip().strip('"').lower()
    aliases = {"unknown-8bit": None, "x-unknown": None, "default": None, "us-ascii": "ascii"}
    if charset in aliases:
        return aliases[charset]
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return None


_SINGLE_MAILBOX = re.compile(r'^(?P<display>[^<>]*)<(?P<addr>[^<>@\s]+@[^<>\s]+)>\s*$')


def _addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    values = [str(v) for v in (msg.get_all(name) or [])]
    pairs = []
    for value in values:
        # "jane@example.org <attacker@evil.example>" is one mailbox whose display name looks
        # like an address: the mail comes from the address in angle brackets, never the name
        single = _SINGLE_MAILBOX.match(" ".join(value.split()))
        if single and single.group("display").count('"') % 2 == 0:
            pairs.append((single.group("display").strip().strip('"').strip(), single.group("addr")))
            continue
        try:
            pairs.extend(getaddresses([value]))
        except Exception:  # noqa: BLE001
            continue
    out = []
    for display, addr in pairs:
        addr = _CONTROL.sub("", addr).strip().strip("<>").lower()
        if "@" in addr:
            out.append((decode_header_value(display), addr))
    return out


def _message_ids(value: str | None) -> list[str]:
    return _MSGID.findall(str(value)) if value else []


def _decode_part(part: Message, defects: list[str]) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    declared = part.get_content_charset()
    charset = _known_charset(declared)
    if declared and charset is None and declared.lower() not in ("us-ascii",):
        defects.append(f"unknown charset {declared!r}")
    for candidate in [charset, "utf-8"] if charset else ["utf-8"]:
        try:
            return payload.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
    if charset:
        defects.append(f"text is not valid {charset}")
        text = payload.decode(charset, "replace")
        if text.count("\ufffd") > max(8, len(text) // 5):
            raise ParseError(f"undecodable text: body is not valid {declared}")
        return text
    return payload.decode("cp1252", "replace")


def _html_to_text(html: str) -> str:
    try:
        return get_text(html, _HTML_CONFIG)
    except Exception:  # noqa: BLE001 - fall back to crude tag stripping
        return re.sub(r"<[^>]+>", " ", html)


def _safe_filename(name: str) -> str:
    name = decode_header_value(_CONTROL.sub("", str(name)))
    name = _CONTROL.sub("", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = name.strip(" .") or "attachment"
    return name[:200]


def _detect_machine(msg: Message, from_addr: str, content_type: str) -> str | None:
    """RFC 3834 and the de-facto signs of mail that no human typed: never reply to it."""
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    precedence = str(msg.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Auto-Response",
                 "X-Failed-Recipients"):
        if msg.get(name) is not None:
            return f"{name} header"
    if msg.get("List-Id") is not None:
        return "List-Id header (mailing list)"
    suppress = str(msg.get("X-Auto-Response-Suppress", "")).lower()
    if "oof" in suppress or "autoreply" in suppress or suppress.strip() == "all":
        return f"X-Auto-Response-Suppress: {suppress.strip()}"
    return_path = msg.get("Return-Path")
    if return_path is not None and str(return_path).strip() in ("<>", ""):
        return "empty Return-Path (bounce)"
    local = from_addr.split("@", 1)[0]
    if local in ("mailer-daemon", "postmaster", "mail-daemon"):
        return f"sender is {local}"
    if content_type == "multipart/report":
        return "delivery or read report (multipart/report)"
    return None


def parse(raw: bytes) -> ParsedMessage:
    """Parse raw bytes; raise ParseError only when nothing usable can be recovered."""
    if not raw or not raw.strip():
        raise ParseError("empty message (zero bytes)")
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as exc:  # noqa: BLE001 - the stdlib parser is not supposed to raise
        raise ParseError(f"MIME structure cannot be parsed: {exc}") from None
    if not msg.keys():
        raise ParseError("no header fields: not an email message")
    defects = [type(d).__name__ for d in msg.defects]

    senders = _addresses(msg, "From") or _addresses(msg, "Sender")
    from_name, from_addr = senders[0] if senders else ("", "")
    if not from_addr:
        defects.append("no sender address")
    reply_to = _addresses(msg, "Reply-To")
    date = None
    try:
        if msg.get("Date"):
            date = parsedate_to_datetime(str(msg["Date"]))
            if date.tzinfo is None:
                date = date.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError, IndexError):
        defects.append("unreadable Date header")

    text_parts: list[str] = []
    html_parts: list[str] = []
    attachments: list[Attachment] = []
    try:
        for part in msg.walk():
            if part.is_multipart():
                continue
            ctype = part.get_content_type()
            disposition = (part.get_content_disposition() or "").lower()
            filename = part.get_filename()
            if disposition == "attachment" or filename or ctype not in ("text/plain", "text/html"):
                # calendars, vCards, CSV and the like are attachments, not what the person wrote
                if ctype == "message/rfc822" or part.get_payload() is None:
                    continue
                data = part.get_payload(decode=True) or b""
                safe_name = _safe_filename(filename or "attachment")
                attachments.append(Attachment(
                    filename=safe_name, content_type=ctype, size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    text=attachment_text(safe_name, ctype, data)))
                continue
            if ctype == "text/html":
                html_parts.append(_decode_part(part, defects))
            else:
                text_parts.append(_decode_part(part, defects))
    except ParseError:
        raise
    except (RecursionError, Exception) as exc:  # noqa: BLE001
        raise ParseError(f"MIME structure cannot be walked: {type(exc).__name__}: {exc}") from None

    html = "\n".join(html_parts) if html_parts else None
    text = "\n".join(t for t in text_parts if t.strip())
    if not text.strip() and html:
        text = _html_to_text(html)
    text = text.replace("\r\n", "\n")[:MAX_TEXT_CHARS]

    headers: dict[str, list[str]] = {}
    for name, value in msg.items():
        headers.setdefault(name.lower(), []).append(decode_header_value(value))

    return ParsedMessage(
        message_id=(_message_ids(msg.get("Message-ID")) or [None])[0],
        in_reply_to=_message_ids(msg.get("In-Reply-To")),
        references=_message_ids(msg.get("References")),
        subject=decode_header_value(msg.get("Subject")),
        from_name=from_name,
        from_addr=from_addr,
        reply_to=reply_to[0][1] if reply_to else None,
        to=[a for _n, a in _addresses(msg, "To")],
        cc=[a for _n, a in _addresses(msg, "Cc")],
        date=date,
        text=text,
        html=html,
        attachments=attachments,
        headers=headers,
        machine_generated=_detect_machine(msg, from_addr, msg.get_content_type()),
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        defects=defects,
    )

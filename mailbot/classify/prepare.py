"""Text preparation: what did the person write *now*?

Before any model sees a message we keep only the new part of a reply and set aside what is
quoted (``>`` lines, "On ... wrote:" blocks, Outlook's From/Sent/To/Subject blocks, forwarded
headers), signatures, "Sent from my iPhone" lines and legal disclaimers.  The quoted part is
kept, because it still matters: it may carry the registration number being appealed or the
outcome letter being disputed.  Web-form relays and social-network notifications wrap the
person's words in boilerplate; the words are lifted out of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import quotequail

_ZERO_WIDTH = re.compile(r"[\u200b-\u200f\u2028\u2029\ufeff\u00ad]")
_REPLY_HEADERS = [
    re.compile(r"^\s*-{2,}\s*(original message|forwarded message|message d'origine|ursprüngliche nachricht)\s*-{2,}\s*$",
               re.I | re.M),
    re.compile(r"^\s*(begin forwarded message|forwarded message)\s*:?\s*$", re.I | re.M),
    re.compile(r"^\s*_{8,}\s*$\n(?=\s*(from|von|de)\s*:)", re.I | re.M),
    # Outlook: From: ... then Sent:/Date: within the next lines, then Subject:
    re.compile(r"^\s*\**(from|von|de)\**\s*:.*\n(\s*\**(sent|date|gesendet|envoyé)\**\s*:.*\n)"
               r"(.*\n){0,4}?\s*\**(subject|betreff|objet)\**\s*:", re.I | re.M),
    re.compile(r"^\s*on\b.{4,250}?\bwrote\s*:\s*$", re.I | re.M | re.S),
    re.compile(r"^\s*(le|am)\b.{4,200}?\b(a écrit|schrieb)\s*:\s*$", re.I | re.M | re.S),
]
_UNUSUAL_QUOTE_HINT = re.compile(r"\b(wrote|schrieb|écrit|escribió|scritto|napisał|skrev|geschreven)\b|^-{3,}",
                                 re.I | re.M)
_SIGNATURE_STARTS = [
    re.compile(r"^-- ?$", re.M),
    re.compile(r"^\s*(sent from my|sent from outlook|get outlook for|sent via|sent using|sent from yahoo|"
               r"sent from samsung|sent from mail for)\b.*$", re.I | re.M),
    re.compile(r"^\s*(disclaimer|confidentiality notice|important notice)\b.*$", re.I | re.M),
    re.compile(r"^\s*(this (e-?mail|message)(,| and| including)? (any )?(attachments?|files?)?.{0,40}"
               r"(confidential|intended (solely|only)))", re.I | re.M),
    re.compile(r"^\s*the information (contained )?in this (e-?mail|message)\b", re.I | re.M),
    re.compile(r"^\s*(registered (charity|company)|charity (no|number)|company (no|number))\b.*$", re.I | re.M),
]
_FORM_FIELD = re.compile(r"^\s*([A-Z][A-Za-z /()'?-]{1,40})\s*:\s*(.*)$", re.M)
_MESSAGE_FIELDS = re.compile(
    r"^\s*(message|message body|message text|text|sms|sms text|body|your message|comments?|enquiry|"
    r"your enquiry|details|description|feedback|your feedback|tell us more|what happened|"
    r"your (complaint|comments?)|how can we help( you)?|question|your question)\s*[:?]?\s*$", re.I)
_FORM_FOOTER = re.compile(r"^\s*(response id|submitted|submission id|view all|source page|ip address|"
                          r"sent from|user agent|entry id|form id|referrer|-{3,})\b", re.I)
_SOCIAL_BOILERPLATE = re.compile(
    r"(https?://|unsubscribe|this (message|email) was sent to|notification|reply in (inbox|messenger)|"
    r"view (message|conversation|on)|manage (your )?(email|notification)|privacy policy|"
    r"sent (you )?a (new )?message|you have (a )?new message|meta platforms|linkedin corporation|"
    r"©|\bnew message from\b|download the app|^\s*(reply|view|open)\s*$)", re.I)


@dataclass
class Prepared:
    new_text: str
    quoted: str = ""
    signature: str = ""
    form_fields: dict[str, str] = field(default_factory=dict)

    def model_text(self, subject: str) -> str:
        subject = re.sub(r"^\s*((re|fw|fwd|aw|wg|sv|tr)\s*:\s*|\[external\]\s*)+", "", subject or "", flags=re.I)
        return f"{subject}\n{self.new_text}".strip()


def _first_match(patterns, text: str) -> int | None:
    best = None
    for pattern in patterns:
        match = pattern.search(text)
        if match and (best is None or match.start() < best):
            best = match.start()
    return best


def split_quoted(text: str) -> tuple[str, str]:
    """(new text, quoted history)."""
    cut = _first_match(_REPLY_HEADERS, text)
    head, tail = (text[:cut], text[cut:]) if cut is not None else (text, "")
    parts = [(True, head)]
    if _UNUSUAL_QUOTE_HINT.search(head):
        # quotequail knows many more reply-header shapes (wrapped, other languages) but is
        # slow on long mail, so it is asked only when such a header may be left uncut
        try:
            parts = quotequail.quote(head)
        except Exception:  # noqa: BLE001 - a library hiccup must not stop classification
            parts = [(True, head)]
    new = "\n".join(p for keep, p in parts if keep)
    quoted = "\n".join(p for keep, p in parts if not keep)
    lines = new.split("\n")
    kept = [ln for ln in lines if not ln.lstrip().startswith(">")]
    quoted_lines = [ln for ln in lines if ln.lstrip().startswith(">")]
    quoted = "\n".join(filter(None, [quoted, "\n".join(quoted_lines), tail]))
    return "\n".join(kept), quoted


def split_signature(text: str) -> tuple[str, str]:
    cut = _first_match(_SIGNATURE_STARTS, text)
    if cut is None or not text[:cut].strip():
        return text, ""
    return text[:cut], text[cut:]


def form_message(text: str) -> str | None:
    """The message a form relay carries, whether as ``Message: ...`` or as a label line
    ("Your message") followed by the text; ``None`` when there is no such field."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        label, sep, rest = line.partition(":")
        inline = bool(sep) and _MESSAGE_FIELDS.match(label) and rest.strip()
        if not inline and not _MESSAGE_FIELDS.match(line):
            continue
        body = [rest.strip()] if inline else []
        for following in lines[i + 1:]:
            if _FORM_FOOTER.match(following) or (
                    _FORM_FIELD.match(following) and not following.lower().startswith(("http", "ps"))
                    and len(following.split(":", 1)[0].split()) <= 4 and body):
                break
            body.append(following)
        found = "\n".join(body).strip()
        if found:
            return found
    return None


def form_fields(text: str) -> dict[str, str]:
    """``Field: value`` pairs of a web-form relay; a multi-line value runs to the next field."""
    fields: dict[str, str] = {}
    matches = list(_FORM_FIELD.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = (match.group(2) + text[match.end():end]).strip()
        fields[match.group(1).strip()] = value
    return fields


def prepare(text: str, channel: str = "email") -> Prepared:
    text = _ZERO_WIDTH.sub("", text or "").replace("\r\n", "\n").replace("\xa0", " ")
    new, quoted = split_quoted(text)
    fields: dict[str, str] = {}
    if channel in ("web_form", "sms_gateway", "social_media"):
        fields = form_fields(new)
        message = form_message(new)
        if message:
            new = message
    new, signature = split_signature(new)
    if channel == "social_media":
        lines = [ln for ln in new.split("\n") if not _SOCIAL_BOILERPLATE.search(ln)]
        new = "\n".join(lines).strip().strip('"“”')
    if len(new.split()) < 8 and quoted and re.search(r"forward", quoted[:300], re.I):
        # "FYI, see below": the forwarded mail is what matters
        new = f"{new}\n{quoted}"
    new = re.sub(r"\n{3,}", "\n\n", new).strip()
    return Prepared(new_text=new, quoted=quoted.strip(), signature=signature.strip(), form_fields=fields)

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
    re.compile(r"^-{2,3} ?$", re.M),  # "-- " by the standard; gateways and phones use "---" too
    re.compile(r"^\s*(sent from my|sent from outlook|get outlook for|sent via|sent using|sent from yahoo|"
               r"sent from samsung|sent from mail for)\b.*$", re.I | re.M),
    re.compile(r"^\s*(disclaimer|confidentiality notice|important notice)\b.*$", re.I | re.M),
    re.compile(r"^\s*(this (e-?mail|message)(,| and| including)? (any )?(attachments?|files?)?.{0,40}"
               r"(confidential|intended (solely|only)))", re.I | re.M),
    re.compile(r"^\s*the information (contained )?in this (e-?mail|message)\b", re.I | re.M),
    re.compile(r"^\s*(registered (charity|company)|charity (no|number)|company (no|number))\b.*$", re.I | re.M),
    re.compile(r"^\s*_{8,}\s*$", re.M),  # Outlook's rule line (a reply header after it is cut as quoted first)
    re.compile(r"^[\w&'’.,() -]{2,80}\b(is|are) (registered in|authorised and regulated|a (registered )?(charity|company)"
               r" registered|a company limited by)", re.I | re.M),
]
# A sign-off ("Kind regards," "Yours sincerely") followed only by a few short lines (name, job title,
# phone): what follows is the sender's details, not the message.
_VALEDICTION = re.compile(r"^\s*((kind|best|warm|warmest|many|with (best|kind|warm))\s+(regards|wishes)|regards|"
                          r"best wishes|yours (sincerely|faithfully|truly)|sincerely|respectfully)\b[ ,.!]*$", re.I | re.M)
_NUMBER = r"(\[\d{1,2}\]|\(\d{1,2}\)|[Qq]?\d{1,2}[.):]|[a-z][.)])"
_NUMBERED = re.compile(r"^\s*" + _NUMBER + r"\s+\S")
_FORM_FIELD = re.compile(r"^[ \t]*([A-Z][A-Za-z /()'?-]{1,40})[ \t]*:[ \t]*(.*)$", re.M)
_MESSAGE_WORDS = re.compile(r"\b(message|messages|comments?|concerns?|complaint|feedback|enquiry|details|"
                            r"description|tell us|tell me|what happened|going well|could (we|be) (do )?better|"
                            r"explain|explanation|reasons?|your story|your words|want to say|like to say|say to us|"
                            r"anything else|question|reply|sms|text|body|how can we help)\b", re.I)
_RELAY_LABEL = re.compile(r"^\s*(message|message body|message text|sms|sms text|text|reply|body)\s*$", re.I)
_NOT_MESSAGE_WORDS = re.compile(r"\b(about|type|category|topic|subject|regarding|relate[sd]?|id|number|"
                                r"date|time|phone|e-?mail|name|rate|rating|would you like|from|received|"
                                r"sent|in reply to|original)\b", re.I)
_CONTACT_LABEL = re.compile(r"\b(name|e-?mail|phone|mobile|tel|address|post ?code|zip|date|time|ip|url|page|"
                            r"id|number|ref(erence)?|agent|referr?er|browser|consent|gdpr|privacy)\b", re.I)
_FORM_FOOTER = re.compile(r"^\s*(response id|submitted|submission id|view all|source page|ip address|"
                          r"sent from|user agent|entry id|form id|referrer|-{3,})\b", re.I)
_SOCIAL_BOILERPLATE = re.compile(
    r"(https?://|unsubscribe|this (message|email) was sent to|notification|reply in (inbox|messenger)|"
    r"view (message|conversation|on)|manage (your )?(email|notification)|privacy policy|"
    r"sent (you )?a (new )?message|you have (a )?new message|meta platforms|linkedin corporation|"
    r"©|\bnew message from\b|download the app|^\s*(reply|view|open)\s*$)", re.I)


# Where the relayed words end: a gateway's or network's footer.
_RELAY_FOOTER = re.compile(
    r"^\s*([-=*_~]+\s*)?(end of (the )?(message|sms|text|post|comment)|end)\s*([-=*_~]+)?\s*$"
    r"|^\s*(to reply\b|reply (to this|from|directly|by|in|on|now)\b|reply\s*[·|:]|respond to this\b|"
    r"manage (this|your|email|notification)|do not reply|don't reply|you('re| are) receiving|you received this|"
    r"you've received this|this (message|email|notification) was (sent|generated|intended)|unsubscribe|"
    r"view (on|comment|conversation|message|reply|profile|post)\b|see (full|more|activity|all)\b|"
    r"reply\s+(repost|retweet|like|share))", re.I | re.M)
# A relay's own lines around the words: separators, "From: +447700...", "Received: 20/01/2025",
# "Sender .... +44 7700 900118", "[Gateway] LINE | +447700900463 | 13-Mar-2025".
_RELAY_META = re.compile(
    r"^\s*[-=_*~#]{3,}.*$|^.*[-=_*~#]{3,}\s*$"
    r"|^\s*(from|to|received|time|date|sent|segments?|parts|sender|originator|recipient|number|mobile|"
    r"keyword|line|encoding|message id|msg id|status|via)\s*(\.{2,}|:)\s*.{0,60}$"
    r"|^\s*\[[^\]]{1,40}\].*\|.*$|^\s*(sms|text|txt)\s+\+?\d[\d ]{8,}\b.{0,30}$"
    r"|^\s*you have (received )?(a )?new (text|sms|message)\b.{0,40}$"
    r"|^\s*(reviewed|rating|rated|visited)\b.{0,100}$|^.{0,60}\b(has a new review|left (you )?a \S{0,8} ?review)\b.{0,40}$"
    r"|^\s*\d{1,2}[:.]\d{2}\s*(am|pm)?\s*[-·,]\s*\w{3,9} \d{1,2},? \d{4}\s*$", re.I)


def relay_words(text: str) -> str:
    """The person's words inside an SMS-gateway or social-network notification."""
    footer = _RELAY_FOOTER.search(text)
    if footer and text[:footer.start()].strip():
        text = text[:footer.start()]
    lines = [ln for ln in text.split("\n") if not _RELAY_META.match(ln)]
    return "\n".join(lines).strip()


_FORWARD_NOTE = re.compile(r"\b(forward(ed|ing)?|passing (this |it )?on|pass(ed)? (this |it )?on|see below|"
                           r"below|came in(to)?|received this|sent (this )?to me|log (it|this)|fyi)\b", re.I)


def split_valediction(text: str) -> tuple[str, str]:
    """Cut at the last sign-off when only a few short lines (name, title, phone) follow it."""
    matches = list(_VALEDICTION.finditer(text))
    if not matches:
        return text, ""
    cut = matches[-1].start()
    tail = [ln for ln in text[cut:].split("\n")[1:] if ln.strip()]
    if text[:cut].strip() and len(tail) <= 8 and all(len(ln.strip()) <= 70 for ln in tail):
        return text[:cut], text[cut:]
    return text, ""


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


def _is_message_label(label: str) -> bool:
    label = re.sub(r"^\s*" + _NUMBER + r"\s*", "", label.strip()).rstrip(":?* ").strip()
    return (0 < len(label.split()) <= 8 and bool(_MESSAGE_WORDS.search(label))
            and not _NOT_MESSAGE_WORDS.search(label))


def _looks_like_label_line(line: str) -> bool:
    bare = re.sub(r"^\s*" + _NUMBER + r"\s*", "", line.strip()).lower()
    if not 0 < len(bare.split()) <= (8 if bare.endswith(("?", ":")) else 6):
        return False
    return (line.rstrip().endswith(("?", ":")) or bare.startswith(("your ", "tell us", "what ", "please "))
            or bool(_NUMBERED.match(line))
            or bare.rstrip(":?* ") in ("message", "comments", "comment", "details", "feedback", "enquiry",
                                       "reply", "description", "concern", "message body"))


def form_message(text: str, standalone_labels: bool = True) -> str | None:
    """The free text a form relay carries, whether as ``Message: ...`` or as a label line
    ("4. Tell us more") followed by the text; several free-text fields are joined.
    ``None`` when there is no such field."""
    lines = text.split("\n")
    numbered = sum(1 for ln in lines if _NUMBERED.match(ln)) >= 2
    found: list[str] = []
    i = 0
    previous = ""
    while i < len(lines):
        line = lines[i]
        label, sep, rest = line.partition(":")
        inline = bool(sep) and rest.strip() and (
            _is_message_label(label) if standalone_labels else bool(_RELAY_LABEL.match(label)))
        relay_label = line.rstrip().endswith(":") and bool(_RELAY_LABEL.match(line.rstrip()[:-1]))
        standalone = relay_label or (standalone_labels and _looks_like_label_line(line) and _is_message_label(line)
                      and not previous.rstrip().endswith(("?", ":"))  # that line is a value, not a label
                      and (not numbered or _NUMBERED.match(line)))
        if line.strip():
            previous = line
        if not inline and not standalone:
            i += 1
            continue
        body = [rest.strip()] if inline else []
        j = i + 1
        indent = None  # a value written indented under its label ends where the indentation does
        while j < len(lines):
            following = lines[j]
            if following.strip() and indent is None and not inline:
                indent = len(following) - len(following.lstrip())
            if _FORM_FOOTER.match(following) or (
                    body and (_FORM_FIELD.match(following) or _NUMBERED.match(following))
                    and len(following.split(":", 1)[0].split()) <= 8) or (
                    indent and following.strip() and len(following) - len(following.lstrip()) < indent):
                break
            body.append(following)
            j += 1
        value = "\n".join(body).strip()
        if value and value.lower() not in ("(not provided)", "n/a", "none", "-", "(left blank)", "yes", "no") \
                and not re.match(r"https?://", value):
            found.append(value)
        i = j
    if found and standalone_labels:
        # Forms ask for free text under many labels ("Outcome sought", "Have you sought any
        # external advice?"): any other answer written as prose is the sender's words too.
        for label, value in form_fields(text).items():
            value = value.strip()
            if (len(value.split()) >= 6 and not _CONTACT_LABEL.search(label) and value not in found
                    and not any(value in f or f in value for f in found) and not re.match(r"https?://", value)):
                found.append(value)
    return "\n".join(found) if found else None


def form_fields(text: str) -> dict[str, str]:
    """``Field: value`` pairs of a web-form relay; a multi-line value runs to the next field."""
    fields: dict[str, str] = {}
    matches = list(_FORM_FIELD.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = (match.group(2) + text[match.end():end]).strip()
        fields[match.group(1).strip()] = value
    return fields


def prepare(text: str, channel: str = "email", subject: str = "") -> Prepared:
    text = _ZERO_WIDTH.sub("", text or "").replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
    text = re.sub(r"[ \t]+\n", "\n", text)  # HTML tables leave lines padded with thousands of spaces
    new, quoted = split_quoted(text)
    fields: dict[str, str] = {}
    if channel in ("web_form", "sms_gateway", "social_media"):
        fields = form_fields(new)
        message = form_message(new, standalone_labels=channel == "web_form")
        if message:
            new = message
    if channel in ("sms_gateway", "social_media"):
        new = relay_words(new) or new
    new, signature = split_signature(new)
    new, valediction = split_valediction(new)
    signature = f"{valediction}\n{signature}".strip()
    if channel == "social_media":
        lines = [ln for ln in new.split("\n") if not _SOCIAL_BOILERPLATE.search(ln)]
        new = "\n".join(lines).strip() or new
    if channel in ("sms_gateway", "social_media"):
        new = new.strip().strip('"“”').strip()
    forwarded = re.match(r"^\s*(fw|fwd|wg|tr)\s*:", subject or "", re.I)
    if quoted and (len(new.split()) < 8 and re.search(r"forward", quoted[:300], re.I)
                   or len(new.split()) < 60 and (forwarded or _FORWARD_NOTE.search(new))
                   and re.search(r"forward|^\s*\**from\**\s*:", quoted[:300], re.I | re.M)):
        # "FYI, see below" / "this came in, please log it": the forwarded mail is what matters
        new = f"{new}\n{quoted}"
    new = re.sub(r"\n{3,}", "\n\n", new).strip()
    return Prepared(new_text=new, quoted=quoted.strip(), signature=signature.strip(), form_fields=fields)

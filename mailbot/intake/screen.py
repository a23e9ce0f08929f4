"""Screen: which channel did a message arrive through?

Channel signs (SMS-to-email gateways, social-network notifications, web-form relays,
auto-replies) live in ``rules/channels.toml``.  Whether a message may be *answered* is a
separate question (``ParsedMessage.machine_generated``): a newsletter is ordinary email by
channel, yet nobody replies to it.
"""

from __future__ import annotations

import re
try:
    import re._constants as _sre
    import re._parser as _sre_parse
except ImportError:  # Python < 3.11
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]
from dataclasses import dataclass, field
from functools import lru_cache

from mailbot.intake.parse import ParsedMessage
from mailbot.policy.rules import ChannelRule, Rules

# Order matters: a machine-generated notification from a social network is social media,
# an SMS relay often looks automated, so specific channels are tested before auto_reply.
CHANNEL_ORDER = ("sms_gateway", "social_media", "web_form", "auto_reply")


@dataclass
class Screening:
    channel: str
    reasons: list[str] = field(default_factory=list)


@lru_cache(maxsize=512)
def _compile(pattern: str, multiline: bool = False) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | (re.MULTILINE if multiline else 0))


@lru_cache(maxsize=128)
def _any(patterns: tuple[str, ...], multiline: bool = False) -> re.Pattern[str] | None:
    """All of a rule's patterns as one regex: one search per text instead of one per pattern
    (the pattern that matched is looked up only when one did, for the reason)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE | (re.MULTILINE if multiline else 0))


def _literals(items) -> list[str] | None:
    """Words a pattern cannot match without (any one of them), from its parse tree; None: unknown."""
    best: list[str] | None = None
    run = ""

    def offer(options: list[str] | None) -> None:
        nonlocal best
        if options and all(len(o) >= 3 for o in options) and (
                best is None or min(map(len, options)) > min(map(len, best))):
            best = options

    for op, arg in items:
        if op is _sre.LITERAL:
            run += chr(arg).lower()
            continue
        offer([run] if run else None)
        run = ""
        if op is _sre.SUBPATTERN:
            offer(_literals(arg[-1]))
        elif op is _sre.BRANCH:
            branches = [_literals(b) for b in arg[1]]
            if all(branches):
                offer([w for b in branches for w in b])
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT) and arg[0] >= 1:
            offer(_literals(arg[2]))
    offer([run] if run else None)
    return best


@lru_cache(maxsize=512)
def _needs(pattern: str) -> tuple[str, ...] | None:
    try:
        return tuple(_literals(_sre_parse.parse(pattern, re.IGNORECASE)) or ()) or None
    except Exception:  # noqa: BLE001 - no shortcut for a pattern we cannot read; it is still searched
        return None


@lru_cache(maxsize=256)
def _prepared(patterns: tuple[str, ...], multiline: bool) -> list[tuple[str, tuple[str, ...] | None, re.Pattern[str]]]:
    return [(p, _needs(p), _compile(p, multiline)) for p in patterns]


def _first(patterns: list[str], texts: list[str], multiline: bool = False) -> str | None:
    """The first pattern that matches one of the texts.  A pattern is only searched when a word it
    cannot match without is in the texts (a plain substring test, far cheaper than the search;
    one across all the texts at once may let a pattern through that then finds nothing)."""
    lowered = "\n".join(texts).lower()
    for pattern, needs, rx in _prepared(tuple(patterns), multiline):
        if needs is not None and not any(w in lowered for w in needs):
            continue
        if any(rx.search(t) for t in texts):
            return pattern
    return None


@lru_cache(maxsize=64)
def _domains(wanted: tuple[str, ...]) -> frozenset[str]:
    return frozenset(w.lower() for w in wanted)


_QUOTE_START = re.compile(
    r"^\s*(-{2,}\s*(original message|forwarded message)\s*-{2,}|begin forwarded message\s*:?|_{8,})\s*$"
    r"|^\s*\**from\**\s*:.*\n\s*\**(sent|date)\**\s*:"
    r"|^\s*on\b.{4,250}?\bwrote\s*:\s*$", re.IGNORECASE | re.MULTILINE)


def _own_text(text: str) -> str:
    """The text before any quoted or forwarded mail: a staff member forwarding a web-form relay
    or quoting an SMS is writing email, so body signs count only in what the sender wrote."""
    match = _QUOTE_START.search(text)
    if match and text[:match.start()].strip():
        return text[:match.start()]
    return text


def _matches(rule: ChannelRule, msg: ParsedMessage) -> str | None:
    domain = msg.from_addr.rsplit("@", 1)[-1].lower()
    if rule.sender_domains:
        wanted = _domains(tuple(rule.sender_domains))
        parts = domain.split(".")
        # the domain itself or any parent of it ("mail.example.com" is at "example.com")
        if any(".".join(parts[i:]) in wanted for i in range(len(parts))):
            return f"sender domain {domain}"
    labels = set(domain.split("."))
    for word in rule.sender_domain_words:
        if word.lower() in labels:
            return f"sender domain {domain} ({word})"
    if rule.header_patterns:
        combined = _any(tuple(rule.header_patterns))
        for name in msg.headers:
            if combined.search(name):
                pattern = next(p for p in rule.header_patterns if _compile(p).search(name))
                return f"header {name} matches {pattern!r}"
    for sign in rule.headers:
        # "Name" (present, any value but "no") or "Name: pattern" (present with a matching value)
        name, colon, wanted = sign.partition(":")
        value = msg.header(name.strip())
        if value is None:
            continue
        if colon:
            if _compile(wanted.strip()).search(value.strip()):
                return f"header {name.strip()}: {value.strip()[:60]}"
        elif value.strip().lower() != "no":  # "Auto-Submitted: no" is human
            return f"header {name}"
    # the address, and 'Name <address>': a robot is often known by its display name ("X", "Mail
    # Delivery System") while its address is anything
    senders = [msg.from_addr] + ([f"{msg.from_name.strip()} <{msg.from_addr}>"] if msg.from_name.strip() else [])
    pattern = _first(rule.sender_patterns, senders)
    if pattern:
        return f"sender matches {pattern!r}"
    pattern = _first(rule.subject_patterns, [msg.subject])
    if pattern:
        return f"subject matches {pattern!r}"
    if rule.body_patterns:
        pattern = _first(rule.body_patterns, [_own_text(msg.text[:4000])], multiline=True)
        if pattern:
            return f"body matches {pattern!r}"
    return None


def screen(msg: ParsedMessage, rules: Rules) -> Screening:
    for channel in CHANNEL_ORDER:
        rule = rules.channels.get(channel)
        if rule is None:
            continue
        why = _matches(rule, msg)
        if why:
            return Screening(channel, [f"channel {channel}: {why}"])
    return Screening("email", [])

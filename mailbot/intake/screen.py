"""Screen: which channel did a message arrive through?

Channel signs (SMS-to-email gateways, social-network notifications, web-form relays,
auto-replies) live in ``rules/channels.toml``.  Whether a message may be *answered* is a
separate question (``ParsedMessage.machine_generated``): a newsletter is ordinary email by
channel, yet nobody replies to it.
"""

from __future__ import annotations

import re
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


def _first(patterns: list[str], texts: list[str], multiline: bool = False) -> str | None:
    combined = _any(tuple(patterns), multiline)
    if combined is None or not any(combined.search(t) for t in texts):
        return None
    return next(p for p in patterns if any(_compile(p, multiline).search(t) for t in texts))


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
    domain = msg.from_addr.rsplit("@", 1)[-1]
    for wanted in rule.sender_domains:
        wanted = wanted.lower()
        if domain == wanted or domain.endswith("." + wanted):
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

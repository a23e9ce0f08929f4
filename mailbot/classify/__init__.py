"""Classify a message: what it is (label), how it came (channel), what risks it carries (flags),
which case it refers to (reference), and why.

``classify(message) -> Classification`` is the stable interface; the stage behind it can be
replaced (keyword rules today, a trained spaCy pipeline later) without touching callers.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from mailbot.intake.parse import ParsedMessage
from mailbot.intake.screen import screen
from mailbot.policy.rules import LABELS, Rules


@dataclass
class Classification:
    label: str
    channel: str
    flags: list[str]
    reference: str | None
    confidence: float
    reasons: list[str] = field(default_factory=list)
    needs_review: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@lru_cache(maxsize=1024)
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.MULTILINE)


def find_reference(msg: ParsedMessage, rules: Rules) -> str | None:
    """The registration number the message refers to: subject first, then body."""
    pattern = rules.reference.pattern()
    for text in (msg.subject, msg.text):
        match = pattern.search(text or "")
        if match:
            return match.group(0).upper()
    return None


def _keyword_scores(text: str, rules: Rules) -> tuple[dict[str, int], list[str]]:
    scores: dict[str, int] = {}
    reasons: list[str] = []
    for label, patterns in rules.keywords.labels.items():
        for pattern in patterns:
            hits = len(_rx(pattern).findall(text))
            if hits:
                scores[label] = scores.get(label, 0) + hits
                reasons.append(f"{label}: {pattern!r} x{hits}")
    return scores, reasons


def detect_flags(text: str, rules: Rules) -> tuple[list[str], list[str]]:
    flags, reasons = [], []
    for flag, patterns in rules.keywords.flags.items():
        for pattern in patterns:
            match = _rx(pattern).search(text)
            if match:
                flags.append(flag)
                reasons.append(f"flag {flag}: {match.group(0)!r}")
                break
    return flags, reasons


def classify(msg: ParsedMessage, rules: Rules, review_below: float = 0.6) -> Classification:
    screening = screen(msg, rules)
    reasons = list(screening.reasons)
    reference = find_reference(msg, rules)
    text = f"{msg.subject}\n{msg.text}"

    if screening.channel == "auto_reply" or msg.machine_generated:
        label, confidence = "other", 1.0
        reasons.append(f"other: machine-generated ({msg.machine_generated or screening.channel})")
        flags: list[str] = []
    else:
        scores, why = _keyword_scores(text, rules)
        reasons += why
        # appeal and withdrawal are about an existing complaint: they outrank the generic
        # complaint/compliment words that such letters also contain.
        priority = {"appeal": 3, "withdrawal": 3, "complaint": 1, "compliment": 1}
        if scores:
            label = max(scores, key=lambda k: (scores[k] * priority.get(k, 1), -LABELS.index(k)))
            total = sum(scores.values())
            confidence = round(0.5 + 0.5 * scores[label] / total, 3)
        else:
            label, confidence = "other", 0.5
            reasons.append("other: no label keyword found")
        flags, why = detect_flags(text, rules)
        reasons += why
    return Classification(
        label=label, channel=screening.channel, flags=flags, reference=reference,
        confidence=confidence, reasons=reasons, needs_review=confidence < review_below)

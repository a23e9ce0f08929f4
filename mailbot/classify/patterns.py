"""The rule layer of the classifier, read from ``rules/classifier/patterns.toml``.

Admins write *phrases* (matched as whole words, any case, by spaCy's PhraseMatcher) and, if
they want more control, spaCy token patterns (Matcher).  A label rule nudges the model's
score for that label by its ``weight``; a flag rule raises the flag outright, because for
safeguarding a false alarm costs a minute of someone's time and a miss can cost much more.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from spacy.language import Language
from spacy.matcher import Matcher, PhraseMatcher

from mailbot.policy.rules import FLAGS, LABELS, RulesError

PATTERNS_FILE = "classifier/patterns.toml"
_WORD = re.compile(r"\w+")
_CONDITIONAL = {"if", "unless", "otherwise", "else", "until"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Together(_Strict):
    """Fires when a phrase from *every* group appears in the message (e.g. a child + a harm)."""

    name: str
    groups: list[list[str]] = Field(min_length=2)
    # None: anywhere in the message.  A number: a phrase of every group within that many words of
    # a phrase of the first group ("my son" ... "crying" in one or two sentences, not a page apart)
    within: int | None = Field(None, ge=1, le=500)
    # False: not counted in newsletters and list posts (Precedence: bulk, List-Id), where a broad
    # lexicon ("children", "grooming") is the topic of a bulletin rather than a concern
    in_bulk_mail: bool = True


class PatternRule(_Strict):
    phrases: list[str] = Field(default_factory=list)
    together: list[Together] = Field(default_factory=list)
    patterns: list[list[dict[str, Any]]] = Field(default_factory=list)
    weight: float = Field(0.3, ge=0, le=5)  # labels only
    threshold: float = Field(0.5, gt=0, lt=1)  # flags only: model probability that raises it
    # flags only: a hit with one of these words just before it does not count ("I am NOT going
    # to sue"), unless the word after the negation is an exception ("no choice but to sue")
    negations: list[str] = Field(default_factory=list)
    negation_window: int = Field(3, ge=1, le=10)
    negation_exceptions: list[str] = Field(default_factory=list)

    @field_validator("phrases")
    @classmethod
    def _not_blank(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.strip():
                raise ValueError("a phrase is empty")
        return values


class ContextRules(_Strict):
    """Evidence outside the new text: the subject and the quoted history of a reply."""

    outcome_phrases: list[str] = Field(default_factory=list)
    outcome_appeal_weight: float = Field(0.0, ge=0, le=5)
    # words in the *new* text that dispute an answer already given; they count only together with a
    # registration number, because a case that has had an answer is what an appeal is about
    dispute_phrases: list[str] = Field(default_factory=list)
    dispute_appeal_weight: float = Field(0.0, ge=0, le=5)
    # Without a registration number: the new text names an answer already given ("got a letter
    # saying it had been addressed", "your chair's decision", "I complained in March") *and* asks
    # for it to be looked at again or higher up.  Both must be there; each alone is a complaint.
    earlier_answer_phrases: list[str] = Field(default_factory=list)
    earlier_dispute_phrases: list[str] = Field(default_factory=list)
    earlier_appeal_weight: float = Field(0.0, ge=0, le=5)

    @staticmethod
    def _pattern(phrases: list[str]) -> re.Pattern[str] | None:
        if not phrases:
            return None
        words = sorted((re.escape(p.lower()) for p in phrases), key=len, reverse=True)
        return re.compile(r"(?<![\w'])(" + "|".join(words) + r")(?![\w'])")

    def dispute_pattern(self) -> re.Pattern[str] | None:
        return self._pattern(self.dispute_phrases)

    def earlier_patterns(self) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
        answer, dispute = self._pattern(self.earlier_answer_phrases), self._pattern(self.earlier_dispute_phrases)
        return (answer, dispute) if answer is not None and dispute is not None else None


class PatternRules(_Strict):
    review_below: float | None = Field(None, ge=0, le=1)
    context: ContextRules = ContextRules()
    labels: dict[str, PatternRule] = Field(default_factory=dict)
    flags: dict[str, PatternRule] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value):
        for key in value:
            if key not in LABELS:
                raise ValueError(f"unknown label {key!r}; labels are {', '.join(LABELS)}")
        return value

    @field_validator("flags")
    @classmethod
    def _flags(cls, value):
        for key in value:
            if key not in FLAGS:
                raise ValueError(f"unknown flag {key!r}; flags are {', '.join(FLAGS)}")
        return value


def load_patterns(rules_dir: Path) -> PatternRules:
    path = Path(rules_dir) / PATTERNS_FILE
    if not path.is_file():
        return PatternRules()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RulesError([f"{path}: this is not valid TOML: {exc}"]) from None
    try:
        return PatternRules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (check the spelling)"
            problems.append(f"{path}: {key}: {msg}")
        raise RulesError(problems) from None


class RuleMatcher:
    """Compiled phrase and token patterns; ``match(doc)`` -> {"label:appeal": [hits], "flag:legal": [...]}"""

    def __init__(self, nlp: Language, rules: PatternRules, source: str = PATTERNS_FILE):
        self.rules = rules
        self.phrases = PhraseMatcher(nlp.vocab, attr="LOWER")
        self.tokens: dict[str, Matcher] = {}  # one per rule with token patterns, see match()
        problems = []
        for kind, table in (("label", rules.labels), ("flag", rules.flags)):
            for name, rule in table.items():
                key = f"{kind}:{name}"
                if rule.phrases:
                    self.phrases.add(key, [nlp.make_doc(p) for p in rule.phrases])
                for t in rule.together:
                    for g, group in enumerate(t.groups):
                        self.phrases.add(f"{key}|{t.name}|{g}", [nlp.make_doc(p) for p in group])
                for i, pattern in enumerate(rule.patterns):
                    try:
                        self.tokens.setdefault(key, Matcher(nlp.vocab)).add(key, [pattern])
                    except Exception as exc:  # noqa: BLE001 - spaCy's own validation message
                        problems.append(f"{source}: {kind}s.{name}.patterns[{i}]: {exc}")
        if problems:
            raise RulesError(problems)
        self._vocab = nlp.vocab
        self._keys: dict[int, tuple[str, str | None, int]] = {}
        self._together = {(f"{kind}:{name}", t.name): (rule, t)
                          for kind, table in (("label", rules.labels), ("flag", rules.flags))
                          for name, rule in table.items() for t in rule.together}
        self._token_gates = {f"{kind}:{name}": self._gate(rule)
                             for kind, table in (("label", rules.labels), ("flag", rules.flags))
                             for name, rule in table.items() if rule.patterns}

    @staticmethod
    def _gate(rule: PatternRule):
        """A cheap word test that must pass before the (slow) token Matcher runs for a rule: a
        pattern can only match a text holding every word its required tokens insist on (a fixed
        word or a list of words), so each pattern becomes a few word searches; the Matcher runs
        when the words of any one pattern are all there.  ``None``: some pattern has no fixed
        word, always run."""
        gates: list[list[tuple[frozenset[str], tuple[str, ...]]]] = []
        for pattern in rule.patterns:
            groups = []
            for token in pattern:
                if token.get("OP") in ("?", "*") or str(token.get("OP", "")).startswith("{0"):
                    continue
                lower = token.get("LOWER")
                words = [lower] if isinstance(lower, str) else (
                    lower.get("IN") if isinstance(lower, dict) and isinstance(lower.get("IN"), list) else None)
                if words:
                    words = {str(w).lower() for w in words}
                    plain = frozenset(w for w in words if w.isalnum())
                    groups.append((plain, tuple(w for w in words if not w.isalnum())))
            if not groups:
                return None
            gates.append(groups)
        return gates

    @staticmethod
    def _gate_passes(gate, text: str, words: set[str]) -> bool:
        if gate is None:
            return True
        # words with an apostrophe or a sign ("n't", "you're") are looked for as plain substrings
        return any(all(plain & words or any(o in text for o in other) for plain, other in groups)
                   for groups in gate)

    def _token_hits(self, doc, text: str, decided: set[str]) -> list:
        """Token patterns of the rules the phrases have not already decided: a flag raised by a
        phrase needs no slower second proof (the hits only ever add reasons)."""
        found: list = []
        words = None
        for key, matcher in self.tokens.items():
            if key in decided:
                continue
            words = words if words is not None else set(_WORD.findall(text))
            if self._gate_passes(self._token_gates[key], text, words):
                found += list(matcher(doc))
        return found

    def match(self, doc, text: str | None = None) -> dict[str, list[str]]:
        """``text``: the doc's text when the caller already has it (``doc.text`` rebuilds it)."""
        hits: dict[str, list[str]] = {}
        groups: dict[tuple[str, str], dict[int, str]] = {}
        found = list(self.phrases(doc))
        if self.tokens:
            decided = {self._key(m)[0] for m, _s, _e in found}
            decided = {k for k in decided if k.startswith("flag:") and not self.rules.flags[k[5:]].negations}
            found += self._token_hits(doc, (doc.text if text is None else text).lower(), decided)
        for match_id, start, end in found:
            key, name, group = self._key(match_id)
            if name is not None:
                groups.setdefault((key, name), {}).setdefault(group, []).append((start, end))
            elif not self._negated(doc, start, key):
                hits.setdefault(key, []).append(doc[start:end].text)
        for (rule_key, name), found in groups.items():
            rule, together = self._together[(rule_key, name)]
            if len(found) != len(together.groups):
                continue
            if rule.negations:
                found = {g: [s for s in spans if not self._negated(doc, s[0], rule_key)]
                         for g, spans in found.items()}
                if not all(found.values()):
                    continue
            if together.within is None:
                chosen = {g: spans[0] for g, spans in found.items()}
            else:
                chosen = self._near(found, together.within)
                if chosen is None:
                    continue
            hits.setdefault(rule_key, []).append(
                f"{name}: " + " + ".join(doc[chosen[g][0]:chosen[g][1]].text for g in sorted(chosen)))
        return hits

    def _key(self, match_id: int) -> tuple[str, str | None, int]:
        """(rule key, together-rule name or None, group number) of a match, worked out once."""
        parsed = self._keys.get(match_id)
        if parsed is None:
            key = self._vocab.strings[match_id]
            if "|" in key:
                rule_key, name, group = key.split("|")
                parsed = (rule_key, name, int(group))
            else:
                parsed = (key, None, -1)
            self._keys[match_id] = parsed
        return parsed

    def _negated(self, doc, start: int, key: str) -> bool:
        """Whether a negation of the flag rule ``key`` stands just before token ``start``, in the
        same clause.  A negation inside a condition is no negation of the threat: "if this is
        not sorted I will sue", "if not, I will go to a lawyer"."""
        if not key.startswith("flag:"):
            return False
        rule = self.rules.flags[key.split(":", 1)[1]]
        if not rule.negations:
            return False
        negations = {w.lower() for w in rule.negations}
        exceptions = {w.lower() for w in rule.negation_exceptions}
        for i in range(start - 1, max(-1, start - 1 - rule.negation_window), -1):
            token = doc[i]
            if token.is_punct:
                return False
            if token.lower_ in negations and (i + 1 >= len(doc) or doc[i + 1].lower_ not in exceptions):
                return not any(t.lower_ in _CONDITIONAL for t in doc[max(0, i - 4):i])
        return False

    @staticmethod
    def _near(found: dict[int, list[tuple[int, int]]], within: int) -> dict[int, tuple[int, int]] | None:
        """A span of the first group with a span of every other group at most ``within`` tokens away
        and not the same words: "older lads" does not count as a young person ("lads") as well."""
        for anchor in found[0]:
            chosen = {0: anchor}
            for g, spans in found.items():
                if g == 0:
                    continue
                near = next((s for s in spans if s[0] - anchor[1] <= within and anchor[0] - s[1] <= within
                             and all(s[1] <= c[0] or c[1] <= s[0] for c in chosen.values())), None)
                if near is None:
                    break
                chosen[g] = near
            else:
                return chosen
        return None

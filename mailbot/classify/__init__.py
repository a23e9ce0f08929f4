"""Classify a message: what it is (label), how it came (channel), what risks it carries (flags),
which case it refers to (reference), how sure we are, and why.

``Classifier.classify(message) -> Classification`` is the stable interface.  Behind it:
screen (channel rules) -> text preparation (new text only) -> spaCy pipeline (a trained
bag-of-words text classifier plus the admin's phrase rules from ``rules/classifier/``).
``classify_many`` runs a batch through ``nlp.pipe`` for throughput.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mailbot.intake.parse import ParsedMessage
from mailbot.intake.screen import screen
from mailbot.policy.rules import FLAGS, LABELS, Rules


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


_SHORT_REFERENCE = re.compile(r"\b(?:complaint\s+)?ref(?:erence)?(?:\s*(?:no\.?|number|#))?\s*[:.#-]?\s*(\d{3,6})\b",
                              re.IGNORECASE)


def find_reference(rules: Rules, *texts: str) -> str | None:
    """The registration number a message refers to: the rules' full format first, in the given
    texts in order (subject, new text, quoted text); else a bare "ref 00144" as written."""
    pattern = rules.reference.pattern()
    for text in texts:
        match = pattern.search(text or "")
        if match:
            return match.group(0).upper()
    for text in texts:
        match = _SHORT_REFERENCE.search(text or "")
        if match:
            return match.group(1)
    return None


# Signs that the writer keeps their identity back: a sender named after a role, not a person
# ("Concerned neighbour", "A worried parent", "Anonymous"), an address made for the purpose
# ("concerned.parent@", "anon1234@", a throwaway-mail domain), a form's name field left empty or
# "anonymous", or a letter signed only with a role ("A volunteer driver").
_ROLE = (r"(parent|mum|mom|mother|dad|father|nan|gran|grandparent|carer|neighbour|neighbor|resident|local|volunteer|"
         r"driver|member|user|service user|learner|student|client|customer|worker|employee|member of (the )?public|"
         r"member of staff|staff member|ex[- ]?employee|former (volunteer|employee|member of staff)|whistle-?blower|"
         r"well-?wisher|friend|supporter|donor|taxpayer|citizen|person|reader|visitor|passenger|tenant|patient|"
         r"colleague|young person|teenager|participant|family member|relative)s?")
_QUALIFIER = (r"(concerned|worried|anxious|upset|angry|frustrated|unhappy|disappointed|disgusted|fed[- ]up|local|"
              r"fellow|ex|former|anonymous|anon)")
# "Concerned parent", "A worried mum", "Anonymous": a role with a qualifier or an article, never a
# bare role word ("Parent <parent@...>" may well be how a real person set up their mailbox)
_ANON_NAME = re.compile(r"^\s*((a|an|one|just a|from a|the)\s+)?(" + _QUALIFIER + r"\s+)+" + _ROLE + r"\s*$|"
                        r"^\s*(a|an|one|just a|from a)\s+" + _ROLE + r"(\s+(who|that|at|of|from|in|on)\b[^@<>]{0,60})?\s*$|"
                        r"^\s*(anon|anonymous|anonymous user|anonymous reviewer|a google user|name withheld|withheld|"
                        r"not given|no name|a friend|whistle-?blower)\s*\.?\s*$", re.I)
_ANON_ADDRESS = re.compile(r"(^|[._-])(anon|anonymous|anonymously|concerned|worried|throwaway|burner|noname|nameless|"
                           r"nobody|incognito|whistle-?blower|withheld|notmyname)([._-]|\d|@|$)", re.I)
_THROWAWAY_DOMAINS = ("mailinator.", "guerrillamail.", "sharklasers.", "10minutemail.", "temp-mail.", "tempmail.",
                      "yopmail.", "trashmail.", "dispostable.", "maildrop.", "getnada.", "throwawaymail.",
                      "mailnesia.", "fakeinbox.", "emailondeck.", "burnermail.", "spamgourmet.", "tempr.email",
                      "mohmal.", "mintemail.", "33mail.", "anonaddy.", "simplelogin.", "duck.com")
_SIGNED_AS_ROLE = re.compile(r"^\s*[-–—~]*\s*((a|an|one|just a|from a|signed,?)\s+((concerned|worried|anxious|upset|"
                             r"angry|frustrated|unhappy|disappointed|fed[- ]up|local|fellow|ex|former|regular|long[- ]?time|"
                             r"loyal|volunteer)\s+)*" + _ROLE + r"(\s+(who|that|at|of|from|in)\b[^@<>]{0,60})?"
                             r"|anon|anonymous|name withheld|a friend)\s*[.!x]*\s*$", re.I)
_EMPTY_NAME = re.compile(r"^\s*(|-+|n/?a|none|\(none\)|empty|\(empty\)|blank|\(blank\)|\(no answer\)|no answer|"
                         r"\(no response\)|\(skipped\)|skipped|anon|anonymous|not given|\(not given\)|\(not provided\)|not provided|"
                         r"\(left blank\)|withheld|prefer not to say|rather not say|no|not telling|not saying|won'?t say|wont say|"
                         r"rather not|i'?d rather not|private|confidential|none of your business|nah|nope|unknown|"
                         r"secret|no name|nameless|x+|\?+|\.+|-)\s*$", re.I)


# a name field answered with a refusal and more words: "Rather not say - just a grateful family"
_DECLINED_NAME = re.compile(r"^\s*(i'?d )?(rather not (say|give it)|prefer not to (say|give it)|anonymous|anon|withheld|"
                            r"not telling|not saying|no name|none given)\b", re.I)
_NAME_ON_ITS_OWN_LINE = re.compile(r"(?im)^[ \t]*(?:\d{1,2}[ \t]*[.):→>-]*[ \t]*)?(?:what(?:'s| is)[ \t]+)?(?:your |full )?"
                                   r"name[ \t]*(?:\((?:optional|not required)\))?[ \t]*[:?]?[ \t]*\n"
                                   r"(?:[ \t]*\n)?[ \t]*([^\n]*?)[ \t]*$")
# review sites and survey tools that name the writer on a line of their own: "by Anonymous, GB",
# "Respondent: Anonymous", "Posted by: anonymous user"
_BY_ANONYMOUS = re.compile(r"(?im)^[ \t]*(?:[-–—]\s*)?(?:by|from|posted by|reviewed by|review by|written by|submitted by|"
                           r"left by|respondent|reviewer|author|submitter|responder)[ \t]*:?[ \t]+(anonymous|anon|"
                           r"an anonymous (?:user|reviewer|customer|parent|member)|anonymous (?:user|reviewer|customer)|"
                           r"a google user|name withheld|withheld|not given|unknown)\b[^\n]{0,40}$")
# social-media accounts made to expose or accuse, not to be known by: "@tees_truth_77",
# "lhs_truth_2025", "centre_exposed", "anon_parent_22", "insider_leaks"
_HIDING_HANDLE = re.compile(r"(?<![\w@])@?([a-z0-9._]*?(?:truth|exposed|expose|whistle-?blower|whistleblow|anon|"
                            r"concerned|throwaway|burner|insider|leaks?|secret)[a-z0-9._]*)\b", re.I)
# "Fed Up Parent commented on your post", "Concerned Mum left a 1-star review"
_SOCIAL_ACTOR = re.compile(r"^\s*(.{2,40}?)\s+(commented|replied|posted|recommends|reviewed|left|mentioned|tagged|"
                           r"sent|shared|wrote|reacted|messaged|tweeted)\b", re.I)
_NEWSLETTER = re.compile(r"^(precedence: (bulk|list)|list-id)", re.I)


def anonymous_signs(msg: ParsedMessage, prep, channel: str = "email") -> str | None:
    """Why the writer looks anonymous, or None."""
    name = (msg.from_name or "").strip().strip('"')
    if name and _ANON_NAME.match(name):
        return f"the sender calls themselves {name!r}"
    local, _, domain = (msg.from_addr or "").lower().partition("@")
    if _ANON_ADDRESS.search(local + "@"):
        return f"the address {msg.from_addr!r} is made to hide a name"
    if any(domain.startswith(d) or ("." + d) in ("." + domain) for d in _THROWAWAY_DOMAINS):
        return f"a throwaway address ({domain})"
    for key, value in prep.form_fields.items():
        first = value.split("\n")[0]
        if re.fullmatch(r"\s*(your |full )?name\s*(\((optional|not required|if you wish|if you like)\))?\s*", key, re.I) and (
                _EMPTY_NAME.match(first) or _DECLINED_NAME.match(first)):
            return f"the form's {key!r} field is {first.strip() or 'empty'!r}"
    for key, value in prep.form_fields.items():
        if re.fullmatch(r"\s*(respondent|reviewer|submitted by|posted by|author|submitter|responder)(\s*name)?\s*",
                        key, re.I) and _EMPTY_NAME.match(value.split("\n")[0]):
            return f"the {key!r} is {value.split(chr(10))[0].strip() or 'empty'!r}"
    named = any(re.fullmatch(r"\s*(your |full )?name\s*", k, re.I) and v.strip() and not _EMPTY_NAME.match(v.split("\n")[0])
                for k, v in prep.form_fields.items())
    by = None if named else _BY_ANONYMOUS.search((msg.text or "")[:3000])
    if by and "not verified" not in by.group(0).lower():
        return f"the notification names the writer {by.group(1)!r}"
    # forms that put the field's name on one line and its value on the next ("Name" / "not telling")
    field = _NAME_ON_ITS_OWN_LINE.search((msg.text or "")[:3000])
    if field and (_EMPTY_NAME.match(field.group(1)) or _DECLINED_NAME.match(field.group(1))):
        return f"the form's name field is {field.group(1).strip() or 'empty'!r}"
    if channel == "social_media":
        named = _SOCIAL_ACTOR.match(msg.subject or "")
        if named and _ANON_NAME.match(named.group(1)):
            return f"the account is called {named.group(1).strip()!r}"
        # the account's handle, as the notification names it in the subject or its first lines
        head = f"{msg.subject}\n" + "\n".join((msg.text or "").split("\n")[:6])
        for handle in _HIDING_HANDLE.finditer(head):
            word = handle.group(1)
            if "_" in word or "." in word or any(ch.isdigit() for ch in word) or word.lower() in ("anon", "anonymous"):
                return f"the account {word!r} is made to hide a name"
    tail = [ln for ln in f"{prep.new_text}\n{prep.signature}".split("\n") if ln.strip()][-2:]
    for line in tail:
        if _SIGNED_AS_ROLE.match(line):
            return f"signed {line.strip()!r}"
    return None


# A body this short beside an attached letter ("Please see my attached complaint") is a covering
# note: the letter is what the person wrote.
COVERING_NOTE_WORDS = 60


def _what_they_wrote(msg: ParsedMessage, prep) -> str:
    text = prep.model_text(msg.subject)
    if msg.attachment_text and len(prep.new_text.split()) < COVERING_NOTE_WORDS:
        text = f"{text}\n{msg.attachment_text}"
    return text


class Classifier:
    def __init__(self, rules: Rules, model_dir: Path | None = None, review_below: float = 0.6):
        from mailbot.classify import model
        from mailbot.classify.patterns import RuleMatcher, load_patterns

        self.rules = rules
        self.nlp = model.load(model_dir)
        self.patterns = load_patterns(rules.path) if rules.path else None
        if self.patterns is not None and self.patterns.review_below is not None:
            review_below = self.patterns.review_below
        self.review_below = review_below
        self.matcher = RuleMatcher(self.nlp, self.patterns) if self.patterns else None
        self._dispute = self.patterns.context.dispute_pattern() if self.patterns else None
        self._earlier = self.patterns.context.earlier_patterns() if self.patterns else None

    def classify(self, msg: ParsedMessage) -> Classification:
        return self.classify_many([msg])[0]

    def classify_many(self, messages: list[ParsedMessage]) -> list[Classification]:
        from mailbot.classify.model import normalise
        from mailbot.classify.prepare import prepare

        screenings = [screen(m, self.rules) for m in messages]
        prepared = [prepare(m.text, s.channel, m.subject) for m, s in zip(messages, screenings)]
        texts = [normalise(_what_they_wrote(m, p)) for m, p in zip(messages, prepared)]
        results = []
        for msg, scr, prep, text, doc in zip(messages, screenings, prepared, texts,
                                             self.nlp.pipe(texts, batch_size=128)):
            results.append(self._decide(msg, scr, prep, doc, text))
        return results

    def _decide(self, msg, scr, prep, doc, text: str | None = None) -> Classification:
        reasons = list(scr.reasons)
        text = (doc.text if text is None else text).lower()
        hits = self.matcher.match(doc, text) if self.matcher else {}
        reference = find_reference(self.rules, msg.subject, prep.new_text, prep.quoted, msg.attachment_text)

        scores = {label: float(doc.cats.get(label, 0.0)) for label in LABELS}
        top_model = max(scores, key=scores.get)
        reasons.append("model: " + ", ".join(f"{l} {scores[l]:.2f}" for l in
                                             sorted(scores, key=scores.get, reverse=True)[:3]))
        for label, rule in (self.patterns.labels.items() if self.patterns else []):
            found = hits.get(f"label:{label}")
            if found:
                scores[label] += rule.weight
                reasons.append(f"rule {label} +{rule.weight}: {', '.join(sorted(set(found))[:3])!r}")
        context = self.patterns.context if self.patterns else None
        if context and context.outcome_appeal_weight and reference:
            around = f"{msg.subject}\n{prep.quoted[:3000]}".lower()
            cue = next((p for p in context.outcome_phrases if p.lower() in around), None)
            if cue:
                scores["appeal"] += context.outcome_appeal_weight
                reasons.append(f"context appeal +{context.outcome_appeal_weight}: reference {reference} "
                               f"with {cue!r} in the subject or quoted letter")
        if context and context.dispute_appeal_weight and reference and self._dispute is not None:
            cue = self._dispute.search(text)
            if cue:
                scores["appeal"] += context.dispute_appeal_weight
                reasons.append(f"context appeal +{context.dispute_appeal_weight}: reference {reference} "
                               f"with {cue.group(0)!r} in the new text")
        if context and context.earlier_appeal_weight and not reference and self._earlier is not None:
            answer, dispute = self._earlier[0].search(text), self._earlier[1].search(text)
            if answer and dispute:
                scores["appeal"] += context.earlier_appeal_weight
                reasons.append(f"context appeal +{context.earlier_appeal_weight}: an earlier answer "
                               f"({answer.group(0)!r}) disputed ({dispute.group(0)!r})")
        if scr.channel == "auto_reply":
            label, confidence = "other", 1.0
            reasons.append(f"other: {scr.channel} mail is never a case")
        else:
            label = max(scores, key=scores.get)
            # the model's probability plus the weight of the rules that spoke for it: an explicit
            # "I want to complain" makes us surer, whatever else the model hesitated between
            confidence = round(min(1.0, scores[label]), 3)
            if label != top_model:
                reasons.append(f"rules changed the label from {top_model} to {label}")

        flags = []
        newsletter = scr.channel == "email" and bool(_NEWSLETTER.match(msg.machine_generated or ""))
        for flag in FLAGS:
            rule = self.patterns.flags.get(flag) if self.patterns else None
            threshold = rule.threshold if rule else 0.5
            found = hits.get(f"flag:{flag}")
            if found and newsletter and flag == "safeguarding" and rule:
                # a bulletin that mentions safeguarding training or exploitation awareness is not a
                # concern: in bulk mail only the rules that need a child and a harm close together count
                near = {t.name for t in rule.together if t.within and t.in_bulk_mail}
                found = [h for h in found if h.split(":", 1)[0] in near]
            probability = float(doc.cats.get(flag, 0.0))
            if found:
                flags.append(flag)
                reasons.append(f"flag {flag}: rule {', '.join(sorted(set(found))[:3])!r}")
            elif probability >= threshold:
                flags.append(flag)
                reasons.append(f"flag {flag}: model {probability:.2f} >= {threshold}")
        if scr.channel == "web_form" and "anonymous" not in flags and not msg.reply_to and any(
                re.search(r"e-?mail", k, re.I) and not v.strip() for k, v in prep.form_fields.items()):
            flags.append("anonymous")
            reasons.append("flag anonymous: the form was sent without an email address")
        if "anonymous" not in flags and (label != "other" or (scr.channel in ("email", "web_form")
                                                              and not msg.machine_generated)):
            why = anonymous_signs(msg, prep, scr.channel)
            if why:
                flags.append("anonymous")
                reasons.append(f"flag anonymous: {why}")
        if label == "other" and scr.channel == "auto_reply":
            flags = [f for f in flags if f == "safeguarding"]  # a bounce is nobody's concern, but never drop a risk
        needs_review = confidence < self.review_below
        if label == "other" and "safeguarding" in flags:
            # never let a possible risk of harm be filed away as "not a case" by the model alone
            needs_review = True
            reasons.append("review: safeguarding signs in a message the model sees as 'other'")
        return Classification(label=label, channel=scr.channel, flags=flags, reference=reference,
                               confidence=confidence, reasons=reasons, needs_review=needs_review)

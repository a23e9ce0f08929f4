"""Compliments and feedback: pass praise on, publish only with consent, ask how we did.

- **Compliments.**  Each compliment case gets a ``Compliment`` row: who and what it praises (the
  staff and teams of ``rules/people.toml``, and roles of ``roles.toml`` with a name or
  ``known_as`` words).  The sender is thanked (``[compliment] letter``); the scheduler's
  "compliment passed on" follow-up writes to the people it names, their line managers, and the
  teams it names and their managers (``compliment_targets``).
- **Consent to publish.**  Unless ``[compliment] publish = "never"``, the thank-you asks whether
  the words may be quoted, anonymised, in reports and publicity.  The sender answers by replying
  in plain words ("yes that's fine", "happy for you to use it", "no thanks", "please don't");
  ``parse_consent`` reads only what they wrote now (``mailbot.classify.prepare``: the quoted
  thank-you is set aside).  Consent is stored with the compliment, each change is an Event, it
  can be withdrawn the same way, and the sender gets a short confirmation
  (``[compliment] consent_letter``).  Nothing is quoted anywhere without ``consent = "yes"``.
- **Satisfaction survey.**  ``[survey]`` in ``workflow.toml``: after a complaint closes (and after
  an appeal outcome) the complainant gets one short survey letter, answered by a reply (a word of
  the scale, a number, or a sentence: ``parse_rating``).  Never to anonymous, abusive, withdrawn
  (or otherwise excluded) cases, never twice to one person: the ``Survey`` row, unique per
  person, is written in the same transaction as the outbox letter.  ``sweep_surveys`` is run by
  the follow-up sweep (``mailbot.scheduler.sweep``).

The pipeline calls ``before_act`` and ``after_act`` around its letters for each message that
belongs to a case (``mailbot.pipeline``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailbot.cases.models import Case, CaseProgress, Compliment, Event, Message, Survey, utcnow
from mailbot.classify.prepare import prepare
from mailbot.letters import LetterError, build_email
from mailbot.outbox import queue
from mailbot.policy.rules import STAFF_ROLE, Rules, parse_duration

log = logging.getLogger(__name__)

CONSENT_YES, CONSENT_NO, CONSENT_ASKED = "yes", "no", "asked"
SURVEY_LOOKBACK = timedelta(days=60)  # closures older than this when surveys start are history
COMPLAINT_KINDS = ("complaint", "appeal")


# ---------------------------------------------------------------------------------------------
# Who a compliment praises


@dataclass
class Praised:
    kind: str  # person | team | role
    name: str  # "Marcus Reid", "Youth Club", "Line Manager"
    addresses: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # role keys to write to (a role praised)
    managers: list[str] = field(default_factory=list)  # role keys or people's names
    manager_label: str = ""

    def view(self) -> dict:
        return {"kind": self.kind, "name": self.name}


def _mentions(words: list[str], text: str, *, case_sensitive: bool = False) -> bool:
    flags = 0 if case_sensitive else re.IGNORECASE
    return any(re.search(r"(?<!\w)" + re.escape(w.strip()) + r"(?!\w)", text, flags)
               for w in words if len(w.strip()) >= 2)


def recognise(rules: Rules, text: str) -> list[Praised]:
    """The people, teams and roles a compliment names.  A person is recognised by their full
    name or ``known_as`` words (any letter case), or by their first name alone, written with a
    capital, when nobody else in people.toml shares it."""
    from mailbot.cases.workflow import named_roles

    found: list[Praised] = []
    firsts: dict[str, int] = {}
    for p in rules.people:
        first = p.name.split()[0]
        firsts[first] = firsts.get(first, 0) + 1
    for p in rules.people:
        first = p.name.split()[0]
        by_first = len(p.name.split()) > 1 and firsts[first] == 1 and len(first) >= 3 \
            and _mentions([first], text, case_sensitive=True)
        if _mentions([p.name, *p.known_as], text) or by_first:
            found.append(Praised("person", p.name, p.addresses,
                                 managers=[p.line_manager] if p.line_manager else []))
    teams = {t.name.strip().lower(): t for t in rules.teams}
    for t in rules.teams:
        if _mentions([t.name, *t.known_as], text):
            found.append(Praised("team", t.name, t.addresses, managers=[t.manager] if t.manager else []))
    for person in [f for f in found if f.kind == "person"]:
        p = next(x for x in rules.people if x.name == person.name)
        team = teams.get(p.team.strip().lower()) if p.team else None
        if team is not None and not person.managers and team.manager:
            person.managers = [team.manager]  # no line manager of their own: the team's manager
    for key in named_roles(rules, text):
        if key != STAFF_ROLE:
            found.append(Praised("role", rules.role_title(key), roles=[key]))
    return found


def _manager_addresses(rules: Rules, ref: str, fallback: list[str]) -> tuple[list[str], list[str]]:
    """(role keys, addresses) for a manager given as a role key or a person's name."""
    if ref in rules.roles or ref == STAFF_ROLE:
        return [ref], []
    person = next((p for p in rules.people if p.name.strip().lower() == ref.strip().lower()), None)
    return ([], person.addresses) if person is not None else ([], [])


def compliment_targets(rules: Rules, text: str) -> tuple[list[str], list[str], str]:
    """Who a compliment goes to: (role keys, addresses, who in words).  The people and teams it
    names, their line managers / team managers, and the roles it names (as before people.toml)."""
    roles: list[str] = []
    addresses: list[str] = []
    who: list[str] = []
    for praised in recognise(rules, text):
        roles += praised.roles
        addresses += praised.addresses
        label = praised.name
        for ref in praised.managers:
            keys, addrs = _manager_addresses(rules, ref, [])
            roles += keys
            addresses += addrs
            label += f" (and {rules.role_title(ref) if keys else ref})"
        who.append(label)
    return (list(dict.fromkeys(roles)), list(dict.fromkeys(a for a in addresses if a)),
            ", ".join(who))


# ---------------------------------------------------------------------------------------------
# Reading a reply: consent, and survey answers


def _norm(text: str) -> str:
    text = (text or "").replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", text).strip().lower()


# Phrases that contain a "no" word but say yes, and the other way round; the earliest (then the
# longest) phrase in the first few sentences decides.
_CONSENT_YES = [
    r"no problem", r"not a problem", r"no worries", r"no objection", r"(?:i )?don'?t mind",
    r"do not mind", r"why not", r"happy for (?:you|it|them|us)", r"happy to (?:share|help|be|let)",
    r"more than happy", r"(?:that'?s|that is|it'?s|it is|all|this is) (?:absolutely |totally |perfectly |completely )?(?:fine|ok|okay|alright|good)",
    r"fine by me", r"ok by me", r"go ahead", r"please do", r"by all means", r"feel free",
    r"you (?:may|can) (?:use|quote|share|publish|print|put)", r"i (?:give|grant) (?:my |you )?(?:permission|consent)",
    r"(?:you have|you've got) my (?:permission|consent|blessing)", r"i consent", r"i agree",
    r"permission (?:granted|given)", r"go for it", r"(?:yes|of course),? (?:you )?(?:can|may)",
    r"use (?:it|them|my words|what i (?:wrote|said))",
]
_CONSENT_NO = [
    r"please (?:don'?t|do not)", r"(?:don'?t|do not|never) (?:use|quote|share|publish|print|put|display)",
    r"(?:you )?(?:can'?t|cannot|can not|may not|mustn'?t|must not) (?:use|quote|share|publish|print|put|display)",
    r"(?:i'?d|i would|i'd much) (?:rather|prefer)(?: (?:not|you didn'?t|you did not|if you didn'?t))?",
    r"rather (?:not|you didn'?t|you did not)", r"prefer (?:not|you didn'?t|you did not|it (?:stays?|kept|to stay))",
    r"not (?:happy|comfortable|keen|willing|ok|okay) (?:for|with|to|about)", r"(?:i'?m|i am) not (?:happy|comfortable|keen)",
    r"no,? thank(?:s| you)", r"no thanks", r"not for publication", r"keep (?:it|this|them|my \w+) private",
    r"(?:withdraw|take back|revoke|cancel) (?:my )?(?:permission|consent)", r"withdraw", r"changed? my mind",
    r"(?:remove|take down|delete) (?:it|them|my)", r"(?:do not|don'?t|dont) (?:give|consent|agree)",
    r"i do not consent", r"no permission", r"(?:don'?t|do not) want (?:it|them|my|you|anyone|this)",
]
_LEADING_YES = r"^(?:yes|yeah|yep|yup|yea|ok|okay|sure|fine|certainly|absolutely|of course|aye|y)\b"
_LEADING_NO = r"^(?:no|nope|nah|n)\b"


def _first_part(text: str, limit: int = 400) -> str:
    return _norm(text)[:limit]


def parse_consent(text: str) -> str | None:
    """"yes", "no" or None (the reply says neither) for a reply to the thank-you's question
    whether the compliment may be quoted.  ``text`` is what the sender wrote now (no quotes)."""
    t = _first_part(text)
    if not t:
        return None
    found: list[tuple[int, int, str]] = []
    for answer, patterns in ((CONSENT_YES, _CONSENT_YES), (CONSENT_NO, _CONSENT_NO)):
        for pattern in patterns:
            for m in re.finditer(r"(?<!\w)" + pattern + r"(?!\w)", t):
                found.append((m.start(), -(m.end() - m.start()), answer))
    # a yes or no at the very start counts, unless a longer phrase starting there says otherwise
    for answer, pattern in ((CONSENT_YES, _LEADING_YES), (CONSENT_NO, _LEADING_NO)):
        m = re.match(r"[\W_]*" + pattern, t)
        if m:
            found.append((m.start(), -(m.end() - m.start()) + 100, answer))  # weaker than a phrase there
    if not found:
        return None
    found.sort()
    return found[0][2]


_RATING_SYNONYMS: list[tuple[str, float]] = [
    (r"not (?:very |so |that |particularly |at all )?(?:good|great|helpful|satisfied|happy)", 0.0),
    (r"not (?:too |that |so )?bad", 0.5),
    (r"(?:outstanding|fantastic|brilliant|superb|amazing|wonderful|perfect|exceptional|first[- ]class|"
     r"top notch|couldn'?t have been better|could not have been better|10 out of 10)", 1.0),
    (r"(?:really|very|extremely|so) (?:good|helpful|pleased|happy)|great", 0.75),
    (r"(?:good|pleased|happy|satisfied|helpful)", 0.5),
    (r"(?:ok|okay|alright|all right|fair|fine|so-so|so so|mediocre|average|reasonable|mixed)", 0.25),
    (r"(?:poor|bad|terrible|awful|dreadful|rubbish|appalling|useless|disappointing|disappointed|"
     r"unhappy|dissatisfied|unsatisfied|shocking|atrocious|worst)", 0.0),
]


def parse_rating(text: str, scale: list[str]) -> tuple[str, int] | None:
    """(the scale's word, score) for a survey answer, or None when it gives no rating.  Score
    is 1 (the scale's last, worst word) to len(scale) (its first, best word).  Understands a word
    of the scale ("very good"), a number as the survey letter lists them ("4"), a mark ("4/5",
    "8 out of 10") and everyday words ("brilliant", "not very good", "rubbish")."""
    n = len(scale)
    t = _first_part(text, 300)
    if not t:
        return None

    def at(score: int) -> tuple[str, int]:
        score = max(1, min(n, score))
        return scale[n - score], score

    mark = re.search(r"(?<![\w.])(\d{1,2})\s*(?:/|out of)\s*(5|10)(?!\w)", t)
    if mark and int(mark.group(1)) <= int(mark.group(2)):
        return at(int(int(mark.group(1)) / int(mark.group(2)) * n + 0.5))
    bare = re.match(r"[\W_]*(\d{1,2})(?![\d/.,:]|\s*(?:out of|%|days?|weeks?|hours?|months?|years?|times?|am|pm)\b)", t)
    if bare and 1 <= int(bare.group(1)) <= n:
        return at(int(bare.group(1)))
    said = re.search(r"\b(?:say|give (?:you |it |us )?(?:an? )?|rate (?:you |it |us )?(?:an? |as )?)(\d{1,2})(?![\d/])", t)
    if said and 1 <= int(said.group(1)) <= n:
        return at(int(said.group(1)))
    candidates: list[tuple[int, int, int]] = []  # (start, -length, score)
    for i, word in enumerate(scale):
        for m in re.finditer(r"(?<!\w)" + re.escape(_norm(word)) + r"(?!\w)", t):
            negated = re.search(r"\bnot (?:very |so |that |particularly )?$", t[:m.start()])
            if not negated:
                candidates.append((m.start(), -(m.end() - m.start()) - 1, n - i))  # the scale's own word wins a tie
    for pattern, fraction in _RATING_SYNONYMS:
        for m in re.finditer(r"(?<!\w)(?:" + pattern + r")(?!\w)", t):
            candidates.append((m.start(), -(m.end() - m.start()), int(fraction * (n - 1) + 0.5) + 1))
    if not candidates:
        return None
    candidates.sort()
    return at(candidates[0][2])


def new_text(msg, channel: str = "email") -> str:
    """What the person wrote now: the quoted thank-you or survey letter is set aside."""
    return prepare(msg.text or "", channel, msg.subject or "").new_text


def person_key(address: str) -> str:
    return hashlib.sha256((address or "").strip().lower().encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The pipeline's hooks


def _from_complainant(msg, case: Case) -> bool:
    return bool(case.complainant) and case.complainant.lower() in (
        (msg.reply_address or "").lower(), (msg.from_addr or "").lower())


def _replies_to(msg, session: Session, message_id: int | None) -> bool:
    if message_id is None:
        return False
    out = session.get(Message, message_id)
    if out is None or not out.message_id:
        return False
    return out.message_id in set(msg.in_reply_to or []) | set(msg.references or [])


def before_act(app, session: Session, msg, cls, case: Case | None, route, row: Message) -> None:
    """A reply to our survey: record the answer.  A reply to the survey is not taken for a late
    request for a review (the case is closed by then): staff are told and judge it."""
    if case is None or route.action != "add_to_case" or not _from_complainant(msg, case):
        return
    survey = session.exec(select(Survey).where(col(Survey.case_id) == case.id)).first()
    if survey is None or survey.answered_at is not None:
        return
    text = new_text(msg, cls.channel)
    replying = _replies_to(msg, session, survey.message_id)
    rating = parse_rating(text, app.rules.survey.scale)
    if not replying and rating is None:
        return
    if not text.strip():
        return
    now = utcnow()
    survey.answered_at, survey.answer_message_id = now, row.id
    survey.rating, survey.score = (rating if rating else ("", None))
    survey.comment = text[:4000]
    session.add(survey)
    session.add(Event(case_id=case.id, message_id=row.id, actor=msg.from_addr or "unknown",
                      action="survey_answered",
                      detail=json.dumps({"rating": survey.rating, "score": survey.score})))
    route.reasons.append("an answer to our satisfaction survey: recorded"
                         + (f" ({survey.rating})" if survey.rating else ""))
    if replying and route.handling in ("appeal_late", "appeal_no_further") and route.letter:
        route.letter = None
        route.reasons.append("not answered as a request for a review: it replies to the survey; "
                             "staff to judge whether it is one")


def after_act(app, session: Session, msg, cls, case: Case | None, route, row: Message) -> None:
    """A new compliment: record who it praises and whether consent was asked.  A reply from the
    sender of a compliment: their consent (or its withdrawal), confirmed to them."""
    if case is None or case.kind != "compliment":
        return
    rules = app.rules
    compliment = session.get(Compliment, case.id)
    if route.action == "new_case":
        if compliment is None:
            text = f"{msg.subject}\n{new_text(msg, cls.channel)}"
            asked = bool(route.letter) and rules.compliment.publish != "never"
            compliment = Compliment(case_id=case.id,
                                    praised=json.dumps([p.view() for p in recognise(rules, text)]),
                                    consent=CONSENT_ASKED if asked else "",
                                    consent_asked_at=utcnow() if asked else None)
            session.add(compliment)
        return
    if compliment is None or not compliment.consent or not _from_complainant(msg, case):
        return  # never asked (publish = "never", or no thank-you went), or someone else writing
    answer = parse_consent(new_text(msg, cls.channel))
    if answer is None:
        return
    before = compliment.consent
    compliment.consent, compliment.consent_at, compliment.consent_message_id = answer, utcnow(), row.id
    session.add(compliment)
    action = ("publication_consent_given" if answer == CONSENT_YES else
              "publication_consent_withdrawn" if before == CONSENT_YES else "publication_consent_refused")
    session.add(Event(case_id=case.id, message_id=row.id, actor=msg.from_addr or "unknown",
                      action=action, detail=json.dumps({"from": before, "to": answer})))
    route.reasons.append(f"publication consent: {answer} (was {before})")
    letter_name = rules.compliment.consent_letter
    if not letter_name:
        return
    from mailbot.pipeline import reply_limit_reached

    if reply_limit_reached(session, app, case.complainant, utcnow()):
        return
    context = case_context(app, session, case)
    context["consent"] = {"answer": answer, "before": before, "withdrawn": before == CONSENT_YES and answer == CONSENT_NO}
    try:
        letter = app.letters.render(letter_name, context)
    except LetterError as exc:
        raise RuntimeError(f"cannot write the {letter_name} letter: {exc}") from exc
    email = build_email(letter, sender=app.config.outgoing.from_, to=[case.complainant],
                        in_reply_to=msg.message_id, references=msg.references)
    queue(session, email, case_id=case.id, purpose=letter_name, mail_from=app.config.outgoing.from_address)
    session.add(Event(case_id=case.id, message_id=row.id, actor="system", action=f"{letter_name}_queued"))


def case_context(app, session: Session, case: Case) -> dict:
    from mailbot.cases.workflow import deadlines_of
    from mailbot.policy.context import build_context
    from mailbot.scheduler import _subs, aware

    progress = session.get(CaseProgress, case.id)
    return build_context(
        app.rules, case=case, sender_name=case.complainant_name, sender_addr=case.complainant,
        subject=case.subject, body="", label=case.kind, channel=case.channel, flags=case.flag_list,
        confidence=case.confidence, needs_review=case.needs_review, received=aware(case.opened_at),
        acknowledged=True, handling="normal", deadlines=deadlines_of(session, case),
        stage=progress.stage if progress else 0, substitutions=_subs(progress),
        owner_role=progress.owner_role if progress and progress.owner_role else None,
        publish=progress.publish if progress else "")


# ---------------------------------------------------------------------------------------------
# Passing a compliment on (the scheduler's "compliment passed on" follow-up)


def pass_on(app, session: Session, item, case: Case, now: datetime) -> int | None:
    """The compliment letter to the roles and addresses the follow-up names; the message id."""
    from mailbot.scheduler import _anonymised_compliment, follow_up_context

    rules = app.rules
    to = rules.addresses(item.to_roles, [a for a in app.config.staff.notify if a]) if item.to_roles else []
    to = list(dict.fromkeys(to + list(item.data.get("addresses", []))))
    if not to:
        return None
    context = follow_up_context(app, session, item, case, now,
                                {"compliment_text": _anonymised_compliment(session, case)})
    name = "compliment_passed_on"
    try:
        letter = app.letters.render(name, context)
    except LetterError as exc:
        raise RuntimeError(f"cannot write the {name} letter: {exc}") from exc
    email = build_email(letter, sender=app.config.outgoing.from_, to=to)
    out = queue(session, email, case_id=case.id, purpose=name, mail_from=app.config.outgoing.from_address)
    session.flush()
    return out.id


# ---------------------------------------------------------------------------------------------
# The survey


@dataclass
class SurveyDue:
    case_id: int
    reference: str
    trigger: str  # closed | appeal_outcome
    at: datetime
    person: str


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def surveys_due(session: Session, rules: Rules, now: datetime) -> list[SurveyDue]:
    """Every survey that is due now (one per person, none to excluded cases)."""
    s = rules.survey
    if not s.letter:
        return []
    from mailbot.policy.calendar import Calendar
    from mailbot.scheduler import after, reachable

    calendar = Calendar.for_rules(rules)
    since = now - SURVEY_LOOKBACK
    moments: dict[int, tuple[datetime, str, Case]] = {}
    if "closed" in s.on:
        for case in session.exec(select(Case).where(col(Case.kind).in_(COMPLAINT_KINDS),
                                                    col(Case.status) == "closed",
                                                    col(Case.closed_at).is_not(None))):
            closed = _aware(case.closed_at)
            if closed is not None and closed >= since:
                moments[case.id] = (closed, "closed", case)
    if "appeal_outcome" in s.on:
        for event, case in session.exec(
                select(Event, Case).join(Case, col(Case.id) == col(Event.case_id))
                .where(col(Event.action) == "outcome_recorded", col(Event.at) >= since,
                       col(Case.kind).in_(COMPLAINT_KINDS))):
            try:
                stage = int(json.loads(event.detail or "{}").get("stage", 0))
            except (ValueError, TypeError, AttributeError):
                stage = 0
            moment = _aware(event.at)
            if stage >= 1 and (case.id not in moments or moment < moments[case.id][0]):
                moments[case.id] = (moment, "appeal_outcome", case)
    if not moments:
        return []
    ids = sorted(moments)
    surveyed_cases = set(session.exec(select(Survey.case_id).where(col(Survey.case_id).in_(ids))).all())
    people = {person_key(c.complainant) for _, _, c in moments.values()}
    surveyed_people = set(session.exec(select(Survey.person).where(col(Survey.person).in_(sorted(people)))).all())
    never = set(session.exec(select(Event.case_id).where(
        col(Event.case_id).in_(ids), col(Event.action) == "status_changed",
        col(Event.detail).contains('"to": "withdrawn"') | col(Event.detail).contains('"to": "no_response"'))).all())
    staff = {a.lower() for a in _staff_addresses(rules)}
    excluded = set(s.exclude_flags) | {"anonymous", "abusive"}
    delay = parse_duration(s.after) if s.after else None
    due: list[SurveyDue] = []
    for case_id, (moment, trigger, case) in sorted(moments.items(), key=lambda kv: kv[1][0]):
        person = person_key(case.complainant)
        if (case_id in surveyed_cases or person in surveyed_people or case_id in never
                or excluded & set(case.flag_list) or not reachable(case)
                or case.complainant.lower() in staff):
            continue
        at = after(calendar, moment, delay) if delay else calendar.clock_start(moment)
        if at <= now:
            surveyed_people.add(person)
            due.append(SurveyDue(case_id, case.reference, trigger, at, person))
    return due


def _staff_addresses(rules: Rules) -> list[str]:
    out = [a for r in rules.roles.values() for a in r.addresses] + list(rules.staff.members)
    return out + [a for p in rules.people for a in p.addresses] + [a for t in rules.teams for a in t.addresses]


def survey_view(rules: Rules) -> dict:
    scale = rules.survey.scale
    n = len(scale)
    return {"scale": [{"number": n - i, "word": w} for i, w in enumerate(scale)],
            "question": rules.survey.question, "best": scale[0], "worst": scale[-1]}


def send_survey(app, session: Session, due: SurveyDue, now: datetime) -> int | None:
    """The Survey row, the letter and the event, in the caller's transaction; the unique
    ``person`` refuses a second survey to the same person (IntegrityError)."""
    from mailbot.scheduler import _first_message

    case = session.get(Case, due.case_id)
    row = Survey(person=due.person, case_id=case.id, trigger=due.trigger, sent_at=now)
    session.add(row)
    session.flush()
    context = case_context(app, session, case)
    context["survey"] = survey_view(app.rules)
    name = app.rules.survey.letter
    try:
        letter = app.letters.render(name, context)
    except LetterError as exc:
        raise RuntimeError(f"cannot write the {name} letter: {exc}") from exc
    first = _first_message(session, case)
    email = build_email(letter, sender=app.config.outgoing.from_, to=[case.complainant],
                        in_reply_to=first.message_id if first else None,
                        references=first.references.split() if first and first.references else None)
    out = queue(session, email, case_id=case.id, purpose=name, mail_from=app.config.outgoing.from_address)
    session.flush()
    row.message_id = out.id
    session.add(row)
    session.add(Event(case_id=case.id, message_id=out.id, actor="system", action="survey_sent",
                      detail=json.dumps({"trigger": due.trigger})))
    return out.id


def sweep_surveys(app, now: datetime | None = None) -> list[SurveyDue]:
    """Send every survey that is due, each in its own transaction; what was sent."""
    now = now or utcnow()
    sent: list[SurveyDue] = []
    if not app.rules.survey.letter:
        return sent
    with app.db.session() as session:
        due = surveys_due(session, app.rules, now)
    for item in due:
        try:
            with app.db.session() as session:
                send_survey(app, session, item, now)
            sent.append(item)
            log.info("survey sent for %s (%s)", item.reference, item.trigger)
        except IntegrityError:
            continue  # another sweep surveyed this person first
        except Exception:  # noqa: BLE001 - one bad letter must not stop the others
            log.exception("survey for %s failed", item.reference)
    return sent


# ---------------------------------------------------------------------------------------------
# `mailbot rules check`


def check_feedback_letters(rules: Rules, templates) -> list[str]:
    from pathlib import Path

    from mailbot.letters import Letters
    from mailbot.policy.context import sample_contexts

    templates = Path(templates)
    letters = Letters(templates)
    used = []
    if rules.compliment.consent_letter and rules.compliment.publish != "never":
        used.append(("compliment.consent_letter", rules.compliment.consent_letter,
                     [{"consent": {"answer": a, "before": b, "withdrawn": w}}
                      for a, b, w in (("yes", "asked", False), ("no", "yes", True))]))
    if rules.survey.letter:
        used.append(("survey.letter", rules.survey.letter, [{"survey": survey_view(rules)}]))
    problems = []
    for key, name, extras in used:
        if not letters.exists(name):
            problems.append(f"{rules.path or 'rules'}: {key}: the letter {name!r} does not exist: "
                            f"create {templates / name}.subject.j2 and {templates / name}.txt.j2")
            continue
        try:
            for base in sample_contexts(rules):
                for extra in extras:
                    letters.render(name, dict(base, **extra))
        except LetterError as exc:
            problems.append(f"{templates / name}: cannot be written ({key}): {exc}")
    return problems


__all__ = ["recognise", "compliment_targets", "parse_consent", "parse_rating", "before_act",
           "after_act", "pass_on", "surveys_due", "sweep_surveys", "check_feedback_letters"]

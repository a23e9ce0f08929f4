"""The organisation's policy as data: load and validate the TOML files under ``rules/``.

Admins edit these files, not Python.  Every problem is reported with the file and the key in
plain words, all at once, so one ``mailbot rules check`` run shows everything to fix.

The files (each optional, all merged into one ``Rules``):

- ``policy.toml``: the organisation, its nation (bank holidays), office hours, the registration
  number format, and what is reported to whom.
- ``roles.toml``: the people the procedure names (line manager, chief executive, chair of
  trustees, safeguarding lead, ...), with their addresses.
- ``workflow.toml``: the procedure: deadlines for each stage, appeal stages, which channels are
  accepted, and what happens to anonymous, abusive, legal, safeguarding and conflict-of-interest
  complaints, withdrawals and compliments.
- ``channels.toml``: how to recognise SMS gateways, social media, web forms and auto-replies.

Durations are written as people write them (``"3 working days"``, ``"28 days"``, ``"48 hours"``,
``"by return"``) because the people maintaining these files are not programmers; the same words
then appear, unchanged, in audit records and letters.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer,
                      ValidationError, field_validator, model_validator)

from mailbot.policy.people import Person, SurveyRules, Team

LABELS = ("complaint", "compliment", "appeal", "withdrawal", "other")
FLAGS = ("safeguarding", "legal", "abusive", "anonymous")
CHANNELS = ("email", "sms_gateway", "social_media", "auto_reply", "web_form")
# A channel whose sender address is a notification robot: nothing sent there reaches a person.
NEVER_ANSWERABLE_CHANNELS = ("social_media", "auto_reply")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# The built-in role: the addresses in config.toml's [staff] notify.  Always defined, and the
# fallback for any role in roles.toml that has no address yet.
STAFF_ROLE = "staff"
# Upper limits that catch typos ("280 days" for "28 days") without forbidding odd policies.
MAX_AMOUNT = {"hours": 24 * 90, "days": 366, "working_days": 260}

class RulesError(Exception):
    """The rules directory cannot be used; ``problems`` lists each as 'file: key: message'."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_DURATION = re.compile(r"^\s*(\d+)\s*(hours?|days?|working[ _-]?days?)\s*$", re.IGNORECASE)
_DURATION_HELP = ('write a number and one of hours, days or working days, e.g. "48 hours", '
                  '"28 days" or "5 working days" (or "by return")')


@dataclass(frozen=True)
class Duration:
    """A time limit as the policy states it.  ``by_return`` is "at once": the clock's start."""

    amount: int
    unit: Literal["hours", "days", "working_days"]

    @property
    def by_return(self) -> bool:
        return self.amount == 0

    def __str__(self) -> str:
        if self.by_return:
            return "by return"
        unit = self.unit.replace("_", " ")
        return f"{self.amount} {unit[:-1] if self.amount == 1 else unit}"


def parse_duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time limit: {_DURATION_HELP}")
    if value.strip().lower() in ("by return", "at once", "immediately"):
        return Duration(0, "hours")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a time limit: {_DURATION_HELP}")
    amount, word = int(match.group(1)), match.group(2).lower()
    unit = "working_days" if word.startswith("working") else ("hours" if word.startswith("hour") else "days")
    if amount <= 0:
        raise ValueError(f"{value!r}: a time limit must be more than 0 (write \"by return\" for at once)")
    if amount > MAX_AMOUNT[unit]:
        raise ValueError(f"{value!r} is longer than {MAX_AMOUNT[unit]} {unit.replace('_', ' ')}: "
                         f"please check the number")
    return Duration(amount, unit)


DurationText = Annotated[Duration, BeforeValidator(parse_duration), PlainSerializer(str)]
RoleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
TemplateName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]


class Organisation(_Strict):
    name: str = "Our organisation"
    nation: Literal["england-and-wales", "scotland", "northern-ireland"] = "england-and-wales"
    website: str = ""
    phone: str = ""
    address: str = ""


class ReferenceRules(_Strict):
    format: str = "CMP-{year}-{seq:05d}"

    @field_validator("format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        try:
            sample = value.format(year=2026, seq=42)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"cannot be filled in ({exc}); use {{year}} and {{seq}}, e.g. CMP-{{year}}-{{seq:05d}}"
            ) from None
        if "{seq" not in value:
            raise ValueError("must contain {seq} (the running number), e.g. CMP-{year}-{seq:05d}")
        if not re.fullmatch(r"[A-Za-z0-9/_.-]+", sample):
            raise ValueError(f"gives {sample!r}: use only letters, digits and - / _ .")
        return value

    def make(self, year: int, seq: int) -> str:
        return self.format.format(year=year, seq=seq)

    def pattern(self) -> re.Pattern[str]:
        """A regex that finds references of this format in subjects and bodies."""
        out, pos = [], 0
        for match in re.finditer(r"\{(\w+)(?::[^}]*)?\}", self.format):
            out.append(re.escape(self.format[pos:match.start()]))
            out.append(r"\d{4}" if match.group(1) == "year" else r"\d{1,9}")
            pos = match.end()
        out.append(re.escape(self.format[pos:]))
        return re.compile(r"(?<![A-Za-z0-9])" + "".join(out) + r"(?![0-9])", re.IGNORECASE)


class OfficeHours(_Strict):
    """Mail that arrives outside these hours counts as received at the next opening time."""

    days: list[Literal[WEEKDAYS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(WEEKDAYS[:5]), min_length=1)
    start: str = Field("09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field("17:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")

    @model_validator(mode="after")
    def _order(self) -> "OfficeHours":
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be later than start ({self.start})")
        return self


class Role(_Strict):
    """Someone the procedure names.  ``known_as``: words by which a complaint may name them."""

    title: str = ""
    name: str = ""
    address: str | list[str] = Field(default_factory=list)
    known_as: list[str] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _addresses_valid(cls, value: str | list[str]) -> str | list[str]:
        for item in [value] if isinstance(value, str) else value:
            if not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+", item):
                raise ValueError(f"{item!r} is not an email address (write just name@example.org)")
        return value

    @property
    def addresses(self) -> list[str]:
        return [self.address] if isinstance(self.address, str) else list(self.address)


class ReportRule(_Strict):
    """What is reported to whom how often; ``mailbot.scheduler`` sends it when it falls due.

    ``every = "trustee_meeting"`` has no fixed rhythm: list the meeting dates in ``meetings``
    (TOML dates, 2026-12-10) and the report goes out ``send_before`` each of them."""

    name: str
    to: list[RoleName] = Field(min_length=1)
    every: Literal["week", "month", "quarter", "year", "trustee_meeting"] | None = None
    after_outcome: DurationText | None = None  # e.g. 000: the CEO reports 28 days after an outcome
    only_if_no_appeal: bool = False
    contents: list[Literal["count", "nature", "outcomes", "remedial_actions", "compliments",
                           "misunderstandings", "timeliness"]] = Field(default_factory=lambda: ["count"])
    publish_on_website: bool = False
    meetings: list[date] = Field(default_factory=list)  # every = "trustee_meeting" only
    send_before: DurationText = Duration(5, "working_days")  # before each meeting

    @model_validator(mode="after")
    def _when(self) -> "ReportRule":
        if (self.every is None) == (self.after_outcome is None):
            raise ValueError('give exactly one of every = "quarter" (or week, month, year, '
                             'trustee_meeting) and after_outcome = "28 days"')
        return self


class Stage(_Strict):
    """The first stage of a complaint: who owns it and the time limits the policy promises."""

    owner: RoleName = STAFF_ROLE
    investigator: RoleName | None = None
    inform: list[RoleName] = Field(default_factory=list)
    pass_to_owner_within: DurationText | None = None
    acknowledge_within: DurationText | None = None
    acknowledgement_letter: TemplateName | None = "acknowledgement"
    respond_within: DurationText | None = None
    escalate_to: list[RoleName] = Field(default_factory=list)  # told when a time limit is missed

    @property
    def investigated_by(self) -> str:
        return self.investigator or self.owner


class AppealStage(_Strict):
    """One review after an outcome: a second review, an appeal, a final appeal."""

    name: str = "review"
    window: DurationText | None = None  # after the outcome letter; None: no limit
    reviewer: RoleName = STAFF_ROLE
    inform: list[RoleName] = Field(default_factory=list)
    acknowledge_within: DurationText | None = None
    respond_within: DurationText | None = None
    letter: TemplateName | None = "appeal_acknowledgement"
    late_letter: TemplateName | None = "appeal_out_of_time"
    escalate_to: list[RoleName] = Field(default_factory=list)  # told when a time limit is missed


class ComplaintWorkflow(Stage):
    appeals: list[AppealStage] = Field(default_factory=list)
    no_further_appeal_letter: TemplateName | None = "appeal_no_further_stage"


FOLLOWED_DEADLINES = ("pass_to_owner", "acknowledge", "respond", "appeal_acknowledge", "appeal_respond")


class Reminders(_Strict):
    """Follow-ups to staff for our own time limits (never the complainant's appeal window):
    reminders to the case owner ``before`` each due date, and an escalation to the stage's
    ``escalate_to`` roles (and the owner) the working day after a date is missed."""

    before: list[DurationText] = Field(default_factory=list)  # e.g. ["2 working days", "1 day"]
    letter: TemplateName = "staff_reminder"
    escalation_letter: TemplateName = "staff_escalation"
    escalate: bool = True


class HoldingLetter(_Strict):
    """A letter to the complainant when our answer is late: 000 "let the complainant know why
    there are delays", 002 "explain this in writing within the 28 days", 003 progress updates.

    ``before``: sent this long before the date first promised, if the answer has not gone out;
    without it, the working day after that date.  ``every``: and again this often after that
    date while the answer is still outstanding (progress updates)."""

    letter: TemplateName | None = None  # None: no holding letters
    before: DurationText | None = None
    every: DurationText | None = None
    deadlines: list[Literal["acknowledge", "respond", "appeal_acknowledge", "appeal_respond"]] = \
        Field(default_factory=lambda: ["respond", "appeal_respond"])


class ChannelPolicy(_Strict):
    accepted: bool = True
    reply: TemplateName | None = None  # rejected channels only: the letter sent back
    notify: list[RoleName] = Field(default_factory=list)


class AnonymousRules(_Strict):
    handling: Literal["record_and_consider", "no_response"] = "record_and_consider"
    notify: list[RoleName] = Field(default_factory=list)


class AbusiveRules(_Strict):
    handling: Literal["no_response", "respond"] = "respond"
    notify: list[RoleName] = Field(default_factory=list)


class LegalRules(_Strict):
    handling: Literal["stop", "pause", "continue"] = "continue"
    notify: list[RoleName] = Field(default_factory=list)
    letter: TemplateName | None = None


class SafeguardingRules(_Strict):
    lead: RoleName = STAFF_ROLE
    inform: list[RoleName] = Field(default_factory=list)
    letter: TemplateName | None = "safeguarding_acknowledgement"


class ConflictRule(_Strict):
    if_named: RoleName
    instead: RoleName

    @model_validator(mode="after")
    def _different(self) -> "ConflictRule":
        if self.if_named == self.instead:
            raise ValueError(f"if_named and instead are both {self.if_named!r}: name another role")
        return self


class WithdrawalRules(_Strict):
    allowed: bool = True
    letter: TemplateName | None = "withdrawal_acknowledgement"
    keep_open_flags: list[str] = Field(default_factory=lambda: ["safeguarding"])
    kept_open_letter: TemplateName | None = "withdrawal_kept_open"
    notify: list[RoleName] = Field(default_factory=list)

    @field_validator("keep_open_flags")
    @classmethod
    def _flags_known(cls, value: list[str]) -> list[str]:
        for flag in value:
            if flag not in FLAGS:
                raise ValueError(f"unknown flag {flag!r}; flags are {', '.join(FLAGS)}")
        return value


class ComplimentRules(_Strict):
    letter: TemplateName | None = "thank_you"
    pass_to: list[RoleName] = Field(default_factory=list)
    publish: Literal["never", "anonymised", "with_permission"] = "anonymised"
    # mailbot.feedback: unless publish = "never", the thank-you asks whether the words may be
    # quoted (anonymised); a reply saying yes or no is confirmed with this letter
    consent_letter: TemplateName | None = "consent_noted"


class StaffRules(_Strict):
    """Working a case by email (``mailbot.staffmail``): who counts as staff, which receiving
    server's ``Authentication-Results`` are believed, who is warned about a forged command, and
    the letters staff commands send.  Kept in ``staff.toml`` (a ``[staff]`` table)."""

    # besides every address in roles.toml and [staff] notify in config.toml
    members: list[str] = Field(default_factory=list)
    # the authserv-id our own receiving server writes first in Authentication-Results
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    # who is told about a forged or unverified command; empty: [staff] notify and the safeguarding lead
    warn: list[RoleName] = Field(default_factory=list)
    reply_letter: TemplateName = "staff_reply"  # #reply
    outcome_letter: TemplateName = "outcome"  # #outcome
    extension_letter: TemplateName = "deadline_extended"  # #extend

    @field_validator("members")
    @classmethod
    def _members_valid(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+", item):
                raise ValueError(f"{item!r} is not an email address (write just name@example.org)")
        return value

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _ids_valid(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", item.strip()):
                raise ValueError(f"{item!r} is not an authserv-id: write the host name your mail "
                                 f"server puts first in Authentication-Results, e.g. mx.example.org")
        return value


class ChannelRule(_Strict):
    """Signs that a message came through a channel other than a person's own email."""

    sender_domains: list[str] = Field(default_factory=list)
    # a word that is one whole part of the sender's domain, e.g. "nextdoor" in rs.email.nextdoor.co.uk
    sender_domain_words: list[str] = Field(default_factory=list)
    sender_patterns: list[str] = Field(default_factory=list)  # regexes on the From address
    headers: list[str] = Field(default_factory=list)  # presence of any of these headers
    header_patterns: list[str] = Field(default_factory=list)  # regexes on header *names*
    subject_patterns: list[str] = Field(default_factory=list)  # regexes on the subject
    body_patterns: list[str] = Field(default_factory=list)  # regexes on the body text

    @field_validator("sender_patterns", "header_patterns", "subject_patterns", "body_patterns")
    @classmethod
    def _compiles(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid pattern: {exc}") from None
        return values


class ReplyLimits(_Strict):
    """Bounds on automatic letters, so a duel with another autoresponder or a mail bomb can
    never turn into an unbounded stream of mail.  Cases are still recorded; only letters stop."""

    replies_per_sender_per_day: int = Field(10, ge=1, le=1000)
    replies_per_hour: int = Field(500, ge=1, le=100000)


class RetentionRules(_Strict):
    """How long personal data is kept (UK GDPR storage limitation).  When the time is up,
    ``mailbot purge`` erases names, addresses and mail, and keeps a minimal record: the
    reference, kind, status, channel and dates of the case."""

    closed_cases_days: int = Field(2190, ge=30, le=36500)  # after the case closed (6 years)
    records_days: int = Field(180, ge=7, le=36500)  # mail that never became a case


class Rules(_Strict):
    organisation: Organisation = Organisation()
    limits: ReplyLimits = ReplyLimits()
    retention: RetentionRules = RetentionRules()
    reference: ReferenceRules = ReferenceRules()
    office_hours: OfficeHours = OfficeHours()
    reporting: list[ReportRule] = Field(default_factory=list)
    # report themes: a heading and the words that put a case under it (subject and text)
    themes: dict[str, list[str]] = Field(default_factory=dict)
    roles: dict[RoleName, Role] = Field(default_factory=dict)
    complaint: ComplaintWorkflow = ComplaintWorkflow()
    compliment: ComplimentRules = ComplimentRules()
    intake: dict[str, ChannelPolicy] = Field(default_factory=dict)
    anonymous: AnonymousRules = AnonymousRules()
    abusive: AbusiveRules = AbusiveRules()
    legal_action: LegalRules = LegalRules()
    safeguarding: SafeguardingRules = SafeguardingRules()
    conflict_of_interest: list[ConflictRule] = Field(default_factory=list)
    withdrawal: WithdrawalRules = WithdrawalRules()
    staff: StaffRules = StaffRules()
    reminders: Reminders = Reminders()
    holding_letter: HoldingLetter = HoldingLetter()
    channels: dict[str, ChannelRule] = Field(default_factory=dict)
    # mailbot.feedback: staff and teams compliments may name (people.toml), the survey (workflow.toml)
    people: list[Person] = Field(default_factory=list)
    teams: list[Team] = Field(default_factory=list)
    survey: SurveyRules = SurveyRules()
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("channels")
    @classmethod
    def _channels_known(cls, value: dict[str, ChannelRule]) -> dict[str, ChannelRule]:
        for key in value:
            if key not in CHANNELS or key == "email":
                raise ValueError(f"unknown channel {key!r}; use one of {', '.join(CHANNELS[1:])}")
        return value

    @field_validator("intake")
    @classmethod
    def _intake_known(cls, value: dict[str, ChannelPolicy]) -> dict[str, ChannelPolicy]:
        known = [c for c in CHANNELS if c != "auto_reply"]
        for key, policy in value.items():
            if key not in known:
                raise ValueError(f"unknown channel {key!r}; use one of {', '.join(known)}")
            if policy.accepted and policy.reply:
                raise ValueError(f"{key}: reply is only for channels that are not accepted "
                                 f"(accepted ones get the normal acknowledgement)")
            if policy.reply and key in NEVER_ANSWERABLE_CHANNELS:
                raise ValueError(f"{key}: a reply cannot be sent: the sender of a {key.replace('_', ' ')} "
                                 f"notification is a robot address; remove reply and tell staff (notify)")
        return value

    # -- questions the workflow asks ----------------------------------------------------------

    def accepts(self, channel: str) -> bool:
        policy = self.intake.get(channel)
        return policy is None or policy.accepted

    def role(self, name: str) -> Role:
        if name == STAFF_ROLE and name not in self.roles:
            return Role(title="Complaints team")
        return self.roles.get(name) or Role(title=name.replace("_", " ").capitalize())

    def role_title(self, name: str) -> str:
        role = self.role(name)
        return role.title or name.replace("_", " ").capitalize()

    def addresses(self, role_names: list[str], fallback: list[str]) -> list[str]:
        """Who to write to for these roles: their addresses, or [staff] notify for a role that
        has none yet (so a new install tells someone from the first day)."""
        out: list[str] = []
        for name in role_names:
            found = self.role(name).addresses if name in self.roles else []
            out += found or fallback
        return list(dict.fromkeys(a for a in out if a))

    def used_roles(self) -> list[tuple[str, str]]:
        """Every role reference in the rules, as (key, role name), for ``rules check``."""
        refs: list[tuple[str, str]] = []
        c = self.complaint
        refs += [("complaint.owner", c.owner)]
        if c.investigator:
            refs.append(("complaint.investigator", c.investigator))
        refs += [("complaint.inform", r) for r in c.inform]
        refs += [("complaint.escalate_to", r) for r in c.escalate_to]
        for i, stage in enumerate(c.appeals, 1):
            refs.append((f"complaint.appeals#{i}.reviewer", stage.reviewer))
            refs += [(f"complaint.appeals#{i}.inform", r) for r in stage.inform]
            refs += [(f"complaint.appeals#{i}.escalate_to", r) for r in stage.escalate_to]
        refs += [("compliment.pass_to", r) for r in self.compliment.pass_to]
        for channel, policy in self.intake.items():
            refs += [(f"intake.{channel}.notify", r) for r in policy.notify]
        for key in ("anonymous", "abusive", "legal_action", "withdrawal"):
            refs += [(f"{key}.notify", r) for r in getattr(self, key).notify]
        refs.append(("safeguarding.lead", self.safeguarding.lead))
        refs += [("safeguarding.inform", r) for r in self.safeguarding.inform]
        for i, rule in enumerate(self.conflict_of_interest, 1):
            refs += [(f"conflict_of_interest#{i}.if_named", rule.if_named),
                     (f"conflict_of_interest#{i}.instead", rule.instead)]
        for i, report in enumerate(self.reporting, 1):
            refs += [(f"reporting#{i}.to", r) for r in report.to]
        refs += [("staff.warn", r) for r in self.staff.warn]
        return refs

    def letters_used(self) -> list[tuple[str, str]]:
        """Every letter (template) the rules name, as (key, template name)."""
        found: list[tuple[str, str | None]] = [
            ("complaint.acknowledgement_letter", self.complaint.acknowledgement_letter),
            ("complaint.no_further_appeal_letter", self.complaint.no_further_appeal_letter),
            ("compliment.letter", self.compliment.letter),
            ("legal_action.letter", self.legal_action.letter),
            ("safeguarding.letter", self.safeguarding.letter),
            ("withdrawal.letter", self.withdrawal.letter),
            ("withdrawal.kept_open_letter", self.withdrawal.kept_open_letter),
        ]
        for i, stage in enumerate(self.complaint.appeals, 1):
            found += [(f"complaint.appeals#{i}.letter", stage.letter),
                      (f"complaint.appeals#{i}.late_letter", stage.late_letter)]
        found += [(f"intake.{ch}.reply", p.reply) for ch, p in self.intake.items()]
        found += [(f"(built in) {name}", name) for name in STAFF_LETTERS]
        found += [("staff.reply_letter", self.staff.reply_letter),
                  ("staff.outcome_letter", self.staff.outcome_letter),
                  ("staff.extension_letter", self.staff.extension_letter)]
        found += [(f"(built in, staff commands) {name}", name) for name in STAFF_COMMAND_LETTERS]
        return [(key, name) for key, name in found if name]


# Letters to staff; their names are fixed, their wording is in templates/ like any other.
STAFF_LETTERS = ("staff_new_case", "staff_case_update", "staff_safeguarding", "staff_channel_rejected")
# Answers to staff who work a case by email (mailbot.staffmail), and the warnings about forgeries.
STAFF_COMMAND_LETTERS = ("staff_command_result", "staff_assigned", "staff_escalated",
                         "staff_security_warning", "staff_not_verified")


# file (relative to the rules directory) -> key in the Rules model it fills
RULE_FILES = {
    "policy.toml": None,  # top-level tables: organisation, reference, office_hours, reporting, limits, retention
    "roles.toml": "roles",
    "workflow.toml": None,  # top-level tables: complaint, compliment, intake, anonymous, ...
    "channels.toml": "channels",
    "staff.toml": None,  # top-level table: [staff] (working a case by email)
    "people.toml": None,  # top-level arrays: [[people]], [[teams]] (who compliments may name)
}


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: this is not valid TOML: {exc}")
        return {}


_PLAIN_MESSAGES = {
    "missing": "this setting is missing and is required",
    "extra_forbidden": "unknown setting (check the spelling)",
    "string_pattern_mismatch": "use only lower-case letters, digits and _ (e.g. line_manager)",
}


def _key(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"#{part + 1}"  # [[complaint.appeals]] number 2 -> complaint.appeals#2
        else:
            out += ("." if out else "") + str(part)
    return out


def load_rules(directory: str | Path) -> Rules:
    """Read every rules file in ``directory``; raise RulesError listing all problems."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RulesError([f"{directory}: rules directory not found"])
    problems: list[str] = []
    data: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for name, key in RULE_FILES.items():
        path = directory / name
        content = _read_toml(path, problems)
        if key is None:
            for top in content:
                if top in origin:
                    problems.append(f"{path}: {top}: is also set in {origin[top]}; keep it in one file")
            data.update(content)
            origin.update({k: path for k in content})
        elif content:
            data[key] = content
            origin[key] = path
    rules = None
    try:
        rules = Rules.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = list(err["loc"])
            if err["type"] == "string_pattern_mismatch" and loc and loc[-1] == "[key]":
                loc = loc[:-1]
            loc = [p for p in loc if p != "[key]"]
            file = origin.get(str(loc[0]), directory) if loc else directory
            if loc and RULE_FILES.get(_relative(file, directory)):
                loc = loc[1:]
            msg = _PLAIN_MESSAGES.get(err["type"]) or err["msg"].removeprefix("Value error, ")
            last = str(loc[-1]) if loc else ""
            if err["type"] == "string_pattern_mismatch" and ("letter" in last or last == "reply"):
                msg = ("a letter is named by the start of its file names in templates/, e.g. "
                       "acknowledgement for acknowledgement.txt.j2")
            elif err["type"] == "string_pattern_mismatch" and last in ("start", "end"):
                msg = "write the time as HH:MM on the 24-hour clock, e.g. 09:00 or 17:30"
            problems.append(f"{file}: {_key(loc) or '(top level)'}: {msg}")
    if rules is not None:
        problems += _cross_check(rules, directory, origin)
    if problems:
        raise RulesError(problems)
    rules.path = directory
    return rules


def _cross_check(rules: Rules, directory: Path, origin: dict[str, Path]) -> list[str]:
    """Problems no single setting shows: roles used but never defined, conflict-of-interest
    rules that cannot recognise the person named."""
    problems = []
    roles_file = origin.get("roles", directory / "roles.toml")
    defined = set(rules.roles) | {STAFF_ROLE}
    for key, role in rules.used_roles():
        if role not in defined:
            top = key.split(".")[0].split("#")[0]
            file = origin.get(top, directory / ("policy.toml" if top == "reporting" else "workflow.toml"))
            problems.append(
                f"{file}: {key}: the role {role!r} is not defined; add a [{role}] table to "
                f"{roles_file} (with its address), or use one of: {', '.join(sorted(defined))}")
    for channel, policy in rules.intake.items():
        if not policy.accepted and channel != "email" and channel not in rules.channels:
            problems.append(
                f"{origin.get('intake', directory / 'workflow.toml')}: intake.{channel}: this channel is "
                f"not accepted, but {directory / 'channels.toml'} has no [{channel}] signs to recognise "
                f"it, so such mail would be taken for ordinary email; copy channels.toml from rules/")
    for i, rule in enumerate(rules.conflict_of_interest, 1):
        named = rules.roles.get(rule.if_named)
        if named is not None and not (named.name or named.known_as):
            problems.append(
                f"{roles_file}: {rule.if_named}: give this role a name or known_as words "
                f"(e.g. known_as = [\"chief executive\"]) so that conflict_of_interest#{i} can "
                f"recognise a complaint that names them")
    from mailbot.policy.people import person_problems

    problems += person_problems(rules)
    return problems


def _relative(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)

"""What a letter template can use: one builder for real letters and for ``rules check``.

Templates run with StrictUndefined, so every variable must exist in every letter.  Real
letters (``mailbot.pipeline``) and the sample letters ``mailbot rules check`` renders both come
from ``build_context``: a template that passes the check cannot fail later for want of a
variable.  Views are plain objects with words ready for a letter (dates as "Thursday
3 September 2026", limits as "28 working days"); the wording around them stays in templates/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from mailbot.policy.calendar import describe, describe_time
from mailbot.policy.rules import CHANNELS, AppealStage, Rules


@dataclass
class RoleView:
    key: str
    title: str
    name: str = ""
    addresses: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.addresses[0] if self.addresses else ""

    @property
    def display(self) -> str:
        """"Sarah Sturmey, Chief Executive" or just "Chief Executive"."""
        return f"{self.name}, {self.title}" if self.name else self.title

    def __str__(self) -> str:
        return self.display


@dataclass
class StageView:
    number: int
    name: str
    reviewer: RoleView
    window: str = ""  # "14 days", "" when there is no time limit
    acknowledge_within: str = ""
    respond_within: str = ""


@dataclass
class DeadlineView:
    name: str
    rule: str
    date: str  # "Thursday 3 September 2026"
    when: str  # "Thursday 3 September 2026 at 17:00"
    met: bool = False

    def __str__(self) -> str:
        return self.date


@dataclass
class ResultView:
    """One staff command and what became of it, for the answer to staff."""

    command: str  # "#extend 10 working days: ..." as written
    ok: bool
    message: str
    name: str = ""  # "extend": what a subject line may show (never with "#": see staff_command_result)

    def __str__(self) -> str:
        return f"{'done' if self.ok else 'NOT DONE'}: {self.command}: {self.message}"


@dataclass
class CommandView:
    """What letters written because of a staff command (``mailbot.staffmail``) may use, as
    ``command.*``.  Every letter gets one (empty when no command is involved), so a template
    that uses it passes ``rules check`` like any other."""

    text: str = ""  # staff's words for the complainant: a reply, an outcome, an extension's reason
    author: str = ""  # "Jane Smith, Line Manager"
    author_address: str = ""
    results: list[ResultView] = field(default_factory=list)
    not_understood: list[str] = field(default_factory=list)
    help: list[str] = field(default_factory=list)  # the valid commands, one per line
    done: bool = True  # everything asked for was done
    previous_date: str = ""  # an extension: the date promised before
    new_date: str = ""
    window_closes: str = ""  # an outcome: the last day to ask for the next stage
    final: bool = False  # an outcome at the last stage of the procedure
    problem: str = ""  # a refused or unverified message: why
    attempted: str = ""  # a refused message: its subject and commands
    new_reference: str = ""  # #log: the case it registered


def role_view(rules: Rules, key: str) -> RoleView:
    role = rules.role(key)
    return RoleView(key=key, title=rules.role_title(key), name=role.name, addresses=role.addresses)


def stage_view(rules: Rules, number: int, substitutions: dict[str, str] | None = None) -> StageView | None:
    stages = rules.complaint.appeals
    if not 1 <= number <= len(stages):
        return None
    stage: AppealStage = stages[number - 1]
    reviewer = (substitutions or {}).get(stage.reviewer, stage.reviewer)
    return StageView(number=number, name=stage.name, reviewer=role_view(rules, reviewer),
                     window=str(stage.window) if stage.window else "",
                     acknowledge_within=str(stage.acknowledge_within or ""),
                     respond_within=str(stage.respond_within or ""))


def deadline_views(deadlines: Iterable[Any], stage: int) -> dict[str, DeadlineView]:
    """Deadlines of the current stage by short name: acknowledge, respond, window.  Appeal-stage
    deadlines lose their "appeal_" prefix so one template serves every stage."""
    out = {}
    for d in deadlines:
        if d.stage != stage or d.due_at is None:
            continue
        name = d.name.removeprefix("appeal_")
        out[name] = DeadlineView(name=name, rule=d.rule, date=describe(d.due_at),
                                 when=describe_time(d.due_at), met=d.met_at is not None)
    return out


def build_context(rules: Rules, *, case: Any, sender_name: str, sender_addr: str, subject: str,
                  body: str, label: str, channel: str, flags: list[str], confidence: float,
                  needs_review: bool, received: datetime, acknowledged: bool, handling: str,
                  deadlines: Iterable[Any] = (), stage: int = 0,
                  substitutions: dict[str, str] | None = None, owner_role: str | None = None,
                  staff_roles: Iterable[str] = (), reasons: Iterable[str] = (),
                  publish: str = "", command: CommandView | None = None,
                  attached: str = "") -> dict[str, Any]:
    subs = substitutions or {}
    complaint = rules.complaint
    owner = owner_role or subs.get(complaint.owner, complaint.owner)
    investigator = subs.get(complaint.investigated_by, complaint.investigated_by)
    name = sender_name.strip()
    complainant = getattr(case, "complainant", None) or sender_addr
    return {
        "org": rules.organisation,
        "case": case,
        "greeting_name": name or "Sir or Madam",
        "their_subject": subject,
        "complainant_display": f"{name} <{complainant}>" if name else complainant,
        "sender_display": f"{name} <{sender_addr}>" if name else sender_addr,
        "received": received.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "flags": list(flags),
        "label": label,
        "channel": channel,
        "needs_review": needs_review,
        "confidence": confidence,
        "acknowledged": acknowledged,
        "body": body[:20000],
        "attached": attached[:8000],  # the words of attached letters (PDF, Word), for staff
        "handling": handling,
        "reasons": list(reasons),
        "owner": role_view(rules, owner),
        "investigator": role_view(rules, investigator),
        "roles_told": [rules.role_title(r) for r in staff_roles],
        "limits": {"acknowledge": str(complaint.acknowledge_within or ""),
                   "respond": str(complaint.respond_within or "")},
        "deadlines": deadline_views(deadlines, stage),
        "stage": stage_view(rules, stage, subs),
        "next_stage": stage_view(rules, stage + 1, subs),
        "accepted_channels": [c for c in CHANNELS if c != "auto_reply" and rules.accepts(c)],
        "kept_open_flags": list(rules.withdrawal.keep_open_flags),
        "publish": publish,
        "command": command or CommandView(),
    }


@dataclass
class _SampleCase:
    reference: str
    kind: str = "complaint"
    status: str = "acknowledged"
    complainant: str = "jo.bloggs@example.com"
    complainant_name: str = "Jo Bloggs"
    subject: str = "The youth club was cancelled without notice"
    channel: str = "email"
    flags: str = ""
    flag_list: list[str] = field(default_factory=list)


@dataclass
class _SampleDeadline:
    name: str
    stage: int
    rule: str
    due_at: datetime
    met_at: datetime | None = None


def sample_contexts(rules: Rules, *, with_case: bool = True) -> list[dict[str, Any]]:
    """Two contexts for trying templates: one with everything (an appeal at stage 1 with all its
    deadlines), one as bare as a real letter can be (no deadlines, no appeal stages).  A
    template must render with both."""
    when = datetime(2026, 8, 28, 10, 0, tzinfo=timezone.utc)
    case = _SampleCase(reference=rules.reference.make(2026, 42)) if with_case else None
    common = dict(case=case, sender_name="Jo Bloggs", sender_addr="jo.bloggs@example.com",
                  subject="The youth club was cancelled without notice",
                  body="I want to complain: the session was cancelled and nobody told us.",
                  label="complaint", channel="email", flags=["legal"], confidence=0.91,
                  needs_review=False, received=when, acknowledged=True, handling="normal",
                  staff_roles=[rules.complaint.owner], reasons=["sample reason"], publish="anonymised")
    full_deadlines = [_SampleDeadline(n, s, "5 working days", when) for n, s in (
        ("acknowledge", 0), ("respond", 0), ("appeal_window", 1), ("appeal_acknowledge", 1),
        ("appeal_respond", 1))]
    stage = 1 if rules.complaint.appeals else 0
    command = CommandView(
        text="We have spoken to the staff concerned and the sessions will be announced in advance.",
        author="Sam Sample, Line Manager", author_address="sam@example.org",
        results=[ResultView("#note", True, "recorded", "note"), ResultView("#close", False, "sample refusal", "close")],
        not_understood=["#outcom (did you mean #outcome?)"], help=["#reply  send the text below"],
        done=False, previous_date="Friday 25 September 2026", new_date="Friday 9 October 2026",
        window_closes="Monday 19 October 2026", problem="sample problem",
        attempted="RE: [sample] #close", new_reference=rules.reference.make(2026, 43))
    rich = build_context(rules, deadlines=full_deadlines, stage=stage, command=command,
                         attached="[letter.pdf]\nDear Sir or Madam, I wish to complain about the cancelled session.",
                         **common)
    if not rich["deadlines"]:
        rich["deadlines"] = deadline_views(full_deadlines, 0)
    bare_common = dict(common, flags=[], sender_name="", needs_review=True, acknowledged=False,
                       confidence=0.4, staff_roles=[], reasons=[], publish="")
    bare = build_context(rules, deadlines=[], stage=len(rules.complaint.appeals), **bare_common)
    return [rich, bare]

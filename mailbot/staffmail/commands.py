"""Reading staff commands out of a mail written in Outlook (or any other client).

Staff work a case by replying to the complaints mailbox in the case's thread.  Commands are
hashtags, in one of two places:

- in the subject, after the case tag: ``RE: [CMP-2026-00042] New complaint: ... #assign
  jane@example.org``.  The subject also carries the complainant's own words, so here only the
  names of commands count (``#fail`` in "Terrible service #fail" is the complainant's); a near
  miss such as ``#outcom`` is reported, never silently ignored;
- as lines at the top of the new text, each starting with ``#``: ``#extend 10 working days:
  waiting for a witness``.  Every such line is a command, and one we do not know is an error.

What follows the command lines (the quoted history and the signature cut off with
``mailbot.classify.prepare``'s ``split_quoted``/``split_signature``, the same code that finds
what a complainant wrote *now*) is the *content*: the words of a ``#reply`` or an ``#outcome``,
the text of a ``#note``, the account of a ``#log``.

Parsing is pure (no database, no rules beyond the reference format), so it can be tested and
explained on its own; ``mailbot.staffmail.actions`` carries the commands out.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from mailbot.classify.prepare import split_quoted, split_signature


@dataclass(frozen=True)
class Spec:
    name: str
    usage: str
    help: str
    needs_case: bool = True
    sends_content: bool = False  # the content goes to the complainant (one such per message)


SPECS: dict[str, Spec] = {s.name: s for s in [
    Spec("reply", "#reply", "send the text below to the complainant, in our letter", sends_content=True),
    Spec("outcome", "#outcome", "send the text below as the outcome letter; opens the window for the "
         "next stage of appeal (or closes the case after the last one)", sends_content=True),
    Spec("extend", "#extend 10 working days: reason", "move the response date; the complainant is told "
         "the new date and the reason (also: #extend to 2026-10-30: reason)"),
    Spec("assign", "#assign someone@example.org", "give the case to a member of staff (or a role, e.g. "
         "#assign ceo); they are told and get its updates"),
    Spec("note", "#note", "an internal note on the case; never sent to the complainant"),
    Spec("escalate", "#escalate [role]", "pass the case up (by default to the reviewer of the next "
         "stage), with the text below"),
    Spec("safeguarding", "#safeguarding", "hand the case to the safeguarding lead, outside normal "
         "complaint handling"),
    Spec("withdraw", "#withdraw", "the complainant withdrew (e.g. on the phone); they get the policy's "
         "withdrawal letter"),
    Spec("investigate", "#investigate", "mark the case as under investigation"),
    Spec("resume", "#resume", "continue a case paused or stopped for legal action"),
    Spec("close", "#close", "close the case (nothing is sent)"),
    Spec("reopen", "#reopen", "reopen a closed or withdrawn case"),
    Spec("log", "#log phone complaint", "register a complaint (or compliment) received by phone or in "
         "person: Name:, Email: and what they said below; they are acknowledged if an email is given",
         needs_case=False, sends_content=True),
    Spec("reclassify", "#reclassify compliment", "correct what the case is (complaint, compliment, "
         "appeal, withdrawal, other); kept for retraining"),
    Spec("help", "#help", "this list", needs_case=False),
]}

_COMMAND_LINE = re.compile(r"^#([^\s:#]+)[ \t:]*(.*)$")
_SUBJECT_TAG = re.compile(r"(?<![\w#])#([A-Za-z][A-Za-z_-]*)(?![\w@.-])")
# Lines some organisations put at the top of mail (external-sender banners): never content
_BANNER = re.compile(r"^\s*(\[?(external|extern|ext)\]?\s*[:!-]?\s*$|caution\s*:|warning\s*:\s*this (e-?mail|message)|"
                     r"this (e-?mail|message) (originated|came|was sent) from outside)", re.I)
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2028\u2029\ufeff\u00ad]")


@dataclass
class Command:
    name: str
    argument: str = ""
    where: str = "body"  # "subject" | "body"
    raw: str = ""  # as written, for answers

    @property
    def spec(self) -> Spec:
        return SPECS[self.name]


@dataclass
class Parsed:
    commands: list[Command] = field(default_factory=list)
    content: str = ""  # the new text below the commands, without quotes and signature
    quoted: str = ""  # the history under it (for #log of a forwarded mail)
    unknown: list[str] = field(default_factory=list)  # "#outcom (did you mean #outcome?)"
    problems: list[str] = field(default_factory=list)  # e.g. two different #assign
    inherited: list[Command] = field(default_factory=list)  # see ``drop_inherited``

    @property
    def mentions_commands(self) -> bool:
        """Anything that looks like a command, known or not (for refusing forged ones)."""
        return bool(self.commands or self.unknown)

    @property
    def ok(self) -> bool:
        return not self.unknown and not self.problems


def _suggest(word: str) -> str:
    close = difflib.get_close_matches(word.lower(), list(SPECS), n=1, cutoff=0.75)
    return f" (did you mean #{close[0]}?)" if close else ""


def _canonical(word: str) -> str | None:
    word = word.lower()
    return word if word in SPECS else None


def subject_commands(subject: str, tag: re.Pattern[str] | None) -> tuple[list[Command], list[str]]:
    """Commands written in the subject after the case tag (or anywhere, without a tag)."""
    subject = _INVISIBLE.sub("", subject or "")
    start = 0
    if tag is not None:
        match = tag.search(subject)
        if match:
            start = match.end()
    rest = subject[start:]
    marks = []
    unknown = []
    for match in _SUBJECT_TAG.finditer(rest):
        name = _canonical(match.group(1))
        if name:
            marks.append((match, name))
        elif _suggest(match.group(1)):
            unknown.append(f"#{match.group(1)} in the subject{_suggest(match.group(1))}")
    commands = []
    for i, (match, name) in enumerate(marks):
        end = marks[i + 1][0].start() if i + 1 < len(marks) else len(rest)
        argument = rest[match.end():end].strip().lstrip(":").strip()
        commands.append(Command(name, argument, "subject", rest[match.start():end].strip()))
    return commands, unknown


def body_commands(text: str) -> tuple[list[Command], list[str], str, str]:
    """(commands, unknown, content, quoted) from the body: ``#`` lines at the top of the new
    text, then the content."""
    text = _INVISIBLE.sub("", text or "").replace("\r\n", "\n").replace("\xa0", " ")
    new, quoted = split_quoted(text)
    lines = new.split("\n")
    commands: list[Command] = []
    unknown: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or (not commands and _BANNER.match(line)):
            i += 1
            continue
        match = _COMMAND_LINE.match(line)
        if not match:
            break
        name = _canonical(match.group(1))
        if name:
            commands.append(Command(name, match.group(2).strip(), "body", line))
        else:
            unknown.append(f"#{match.group(1)}{_suggest(match.group(1))}")
        i += 1
    content, _signature = split_signature("\n".join(lines[i:]))
    content = re.sub(r"\n{3,}", "\n\n", content).strip()
    return commands, unknown, content, quoted.strip()


def parse(subject: str, text: str, tag: re.Pattern[str] | None = None) -> Parsed:
    """Everything a staff message asks for.  ``tag`` finds the case tag in the subject (the
    rules' reference pattern); commands before it in the subject are not read."""
    from_subject, unknown_subject = subject_commands(subject, tag)
    from_body, unknown_body, content, quoted = body_commands(text)
    parsed = Parsed(content=content, quoted=quoted, unknown=unknown_subject + unknown_body)
    seen: dict[str, Command] = {}
    for command in from_subject + from_body:
        earlier = seen.get(command.name)
        if earlier is not None:
            if earlier.argument.lower() != command.argument.lower() and command.name != "note":
                parsed.problems.append(f"#{command.name} is given twice, differently "
                                       f"({earlier.raw!r} and {command.raw!r}): say it once")
            if command.name != "note" or not command.argument or earlier.argument == command.argument:
                continue
        seen[command.name] = command
        parsed.commands.append(command)
    senders = [c for c in parsed.commands if c.spec.sends_content]
    if len(senders) > 1:
        parsed.problems.append("only one of " + ", ".join(f"#{c.name}" for c in senders)
                               + " can be used in one message (each would send the same text): "
                                 "send them separately")
    return parsed


_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|vs|ref|fw|fwd|wg|tr|rv)\s*(\[\d+\])?\s*:\s*|\[?external\]?\s*:?\s*)+",
                           re.I)


def is_reply_subject(subject: str) -> bool:
    return bool(_REPLY_PREFIX.match(subject or ""))


def same_subject(a: str, b: str) -> bool:
    """The same subject once reply and forward prefixes are taken off ("RE: AW: x" is "x")."""
    def bare(text: str) -> str:
        return " ".join(_REPLY_PREFIX.sub("", _INVISIBLE.sub("", text or "")).split()).lower()
    return bare(a) == bare(b)


def drop_inherited(parsed: Parsed, earlier_subjects: list[str], tag: re.Pattern[str] | None) -> None:
    """Take out the subject commands that came with the subject of the message being answered.

    Outlook keeps the subject on Reply All: a manager who answers a colleague's
    "[CMP-2026-00042] #reply" gets "RE: [CMP-2026-00042] #reply", and their "looks good, thanks"
    must not become a second letter to the complainant.  A command counts in a reply's subject
    only when the member of staff added it; a command in the body is always their own (the
    quoted history is cut off before commands are read)."""
    def key(command: Command) -> tuple[str, str]:
        return command.name, " ".join(command.argument.lower().split())

    before = {key(c) for subject in earlier_subjects for c in subject_commands(subject, tag)[0]}
    if not before:
        return
    kept = []
    for command in parsed.commands:
        if command.where == "subject" and key(command) in before:
            parsed.inherited.append(command)
        else:
            kept.append(command)
    parsed.commands = kept


_ANY_COMMAND = re.compile(r"(?<![\w#])#(" + "|".join(SPECS) + r")(?![\w@.-])", re.I)


def looks_like_commands(subject: str, text: str) -> bool:
    """A cheap first look: does a known command word appear at all (subject or first lines)?"""
    return bool(_ANY_COMMAND.search(subject or "") or _ANY_COMMAND.search((text or "")[:3000]))


def help_lines() -> list[str]:
    return [f"{spec.usage:<36} {spec.help}" for spec in SPECS.values()]

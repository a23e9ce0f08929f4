"""The organisation's policy as data: load and validate the TOML files under ``rules/``.

Admins edit these files, not Python.  Every problem is reported with the file and the key in
plain words, all at once, so one ``mailbot rules check`` run shows everything to fix.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

LABELS = ("complaint", "compliment", "appeal", "withdrawal", "other")
FLAGS = ("safeguarding", "legal", "abusive", "anonymous")
CHANNELS = ("email", "sms_gateway", "social_media", "auto_reply", "web_form")


class RulesError(Exception):
    """The rules directory cannot be used; ``problems`` lists each as 'file: key: message'."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class KeywordRules(_Strict):
    """First-stage classifier: phrases that suggest a label or a flag (regexes, case-insensitive)."""

    labels: dict[str, list[str]] = Field(default_factory=dict)
    flags: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels_known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, patterns in value.items():
            if key not in LABELS:
                raise ValueError(f"unknown label {key!r}; labels are {', '.join(LABELS)}")
            ChannelRule._compiles(patterns)
        return value

    @field_validator("flags")
    @classmethod
    def _flags_known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, patterns in value.items():
            if key not in FLAGS:
                raise ValueError(f"unknown flag {key!r}; flags are {', '.join(FLAGS)}")
            ChannelRule._compiles(patterns)
        return value


class Rules(_Strict):
    organisation: Organisation = Organisation()
    reference: ReferenceRules = ReferenceRules()
    channels: dict[str, ChannelRule] = Field(default_factory=dict)
    keywords: KeywordRules = KeywordRules()
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("channels")
    @classmethod
    def _channels_known(cls, value: dict[str, ChannelRule]) -> dict[str, ChannelRule]:
        for key in value:
            if key not in CHANNELS or key == "email":
                raise ValueError(f"unknown channel {key!r}; use one of {', '.join(CHANNELS[1:])}")
        return value


# file (relative to the rules directory) -> key in the Rules model it fills
RULE_FILES = {
    "policy.toml": None,  # top-level tables: organisation, reference
    "channels.toml": "channels",
    "classifier/keywords.toml": "keywords",
}


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: this is not valid TOML: {exc}")
        return {}


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
            data.update(content)
            origin.update({k: path for k in content})
        elif content:
            data[key] = content
            origin[key] = path
    try:
        rules = Rules.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            file = origin.get(loc[0], directory) if loc else directory
            if loc and RULE_FILES.get(_relative(file, directory)):
                loc = loc[1:]
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (check the spelling)"
            problems.append(f"{file}: {'.'.join(loc) or '(top level)'}: {msg}")
    if problems:
        raise RulesError(problems)
    rules.path = directory
    return rules


def _relative(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)

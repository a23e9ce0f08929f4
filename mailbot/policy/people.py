"""Who a compliment can name: the staff and teams in ``rules/people.toml``, and the rules for
the satisfaction survey (``[survey]`` in ``workflow.toml``).  Used by ``mailbot.feedback``.

``people.toml`` lists members of staff and teams with the words a member of the public may use
for them, where to write to them, and who manages them::

    [[people]]
    name = "Marcus Reid"              # full name; "Marcus" alone counts too if no one else is called Marcus
    known_as = ["Mr Reid"]            # other words people use for them
    address = "marcus.reid@example.org"
    team = "Youth Club"               # a [[teams]] name (optional)
    line_manager = "line_manager"     # a role in roles.toml, or another person's name (optional)

    [[teams]]
    name = "Youth Club"
    known_as = ["youth club team", "youth workers"]
    address = "youthclub@example.org"
    manager = "line_manager"          # a role in roles.toml, or a person's name (optional)

A compliment that names a person is passed on to them and to their line manager; one that names
a team, to the team's address and its manager.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ADDRESS = re.compile(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+")


def _check_addresses(value: str | list[str]) -> str | list[str]:
    for item in [value] if isinstance(value, str) else value:
        if not _ADDRESS.fullmatch(item):
            raise ValueError(f"{item!r} is not an email address (write just name@example.org)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Addressed(_Strict):
    """A person or a team: ``address`` is one address or a list, checked the same way."""

    address: str | list[str] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _addresses_valid(cls, value: str | list[str]) -> str | list[str]:
        return _check_addresses(value)

    @property
    def addresses(self) -> list[str]:
        return [self.address] if isinstance(self.address, str) else list(self.address)


class Person(_Addressed):
    """A member of staff (or a volunteer) a compliment may name."""

    name: str = Field(min_length=2)
    known_as: list[str] = Field(default_factory=list)
    team: str = ""
    line_manager: str = ""  # a role key (roles.toml) or another person's name


class Team(_Addressed):
    name: str = Field(min_length=2)
    known_as: list[str] = Field(default_factory=list)
    manager: str = ""  # a role key (roles.toml) or a person's name


DEFAULT_SCALE = ["Excellent", "Very Good", "Good", "Average", "Poor"]


class SurveyRules(_Strict):
    """One short satisfaction survey to the complainant after their case closes (or after an
    appeal outcome): never to anonymous, abusive or withdrawn cases, never twice to one person.

    ``letter``: the survey letter (None: no surveys).  ``scale``: best first, as the policy
    writes it.  ``after``: how long after the case closes (nothing: the next office opening).
    ``exclude_flags``: cases with any of these flags are never surveyed (anonymous and abusive
    always are excluded)."""

    letter: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    scale: list[str] = Field(default_factory=lambda: list(DEFAULT_SCALE), min_length=2, max_length=10)
    question: str = "Is there anything we could have done better?"
    after: str | None = None  # a time limit in words ("2 working days"); parsed by rules.py
    on: list[Literal["closed", "appeal_outcome"]] = Field(
        default_factory=lambda: ["closed", "appeal_outcome"])
    exclude_flags: list[str] = Field(default_factory=lambda: ["anonymous", "abusive", "legal", "safeguarding"])

    @field_validator("after")
    @classmethod
    def _after_is_a_time_limit(cls, value: str | None) -> str | None:
        if value is not None:
            from mailbot.policy.rules import parse_duration

            parse_duration(value)
        return value

    @field_validator("exclude_flags")
    @classmethod
    def _flags_known(cls, value: list[str]) -> list[str]:
        from mailbot.policy.rules import FLAGS

        for flag in value:
            if flag not in FLAGS:
                raise ValueError(f"unknown flag {flag!r}; flags are {', '.join(FLAGS)}")
        return value

    @field_validator("scale")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        lowered = [v.strip().lower() for v in value]
        if len(set(lowered)) != len(lowered) or not all(lowered):
            raise ValueError("the scale's answers must be different words, best first, e.g. "
                             '["Excellent", "Very Good", "Good", "Average", "Poor"]')
        return value


def person_problems(rules) -> list[str]:
    """Cross-references in people.toml that point at nobody (for ``rules check``)."""
    problems = []
    names = {p.name.strip().lower() for p in rules.people}
    teams = {t.name.strip().lower() for t in rules.teams}
    where = (rules.path / "people.toml") if rules.path else "people.toml"

    def known(ref: str) -> bool:
        return ref in rules.roles or ref.strip().lower() in names or ref == "staff"

    for i, person in enumerate(rules.people, 1):
        if person.team and person.team.strip().lower() not in teams:
            problems.append(f"{where}: people#{i}.team: no [[teams]] entry is called {person.team!r}")
        if person.line_manager and not known(person.line_manager):
            problems.append(f"{where}: people#{i}.line_manager: {person.line_manager!r} is neither a "
                            f"role in roles.toml nor the name of someone in people.toml")
    for i, team in enumerate(rules.teams, 1):
        if team.manager and not known(team.manager):
            problems.append(f"{where}: teams#{i}.manager: {team.manager!r} is neither a role in "
                            f"roles.toml nor the name of someone in people.toml")
    return problems

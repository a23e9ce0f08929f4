"""``mailbot simulate FILE.eml [--rules DIR] [--at DATETIME]``: the whole route of one message
(classification, the case it joins or opens, the letters to whom with which subject, the due
dates) as the daemon would take it now, against the case book as it is, with nothing sent or
stored.

Also the setup the other admin commands share: an ``App`` for another rules set (its own
rules, letters and classifier; the installation's config) and a read-only view of the
database, so that trying rules out can never change a case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import Engine, make_url
from sqlmodel import SQLModel, create_engine

from mailbot.admin.plan import Plan, plan_message, read_only_engine, read_session
from mailbot.admin.ruleset import RuleSet, load_rule_set, templates_for
from mailbot.app import App
from mailbot.cases.models import utcnow
from mailbot.config import Config
from mailbot.intake.parse import parse
from mailbot.policy.calendar import LONDON


@dataclass
class TrialApp:
    """An App for a rules set being tried out, and the set (its files and snapshot)."""

    app: App
    ruleset: RuleSet

    def close(self) -> None:
        self.ruleset.close()


def trial_app(config: Config, rules_dir: Path | None = None, templates_dir: Path | None = None,
              model_dir: Path | None = None) -> TrialApp:
    """The installation's config with another rules set (default: the configured one), fully
    checked; raises RuleSetError listing every problem of the set.  ``templates_dir``
    defaults to DIR/templates when the set has its own, else the configured templates (as
    ``mailbot rules check`` chooses).  The database is not opened here (see ``case_book``)."""
    rules_dir = Path(rules_dir or config.rules.path)
    templates_dir = Path(templates_dir) if templates_dir else (
        templates_for(rules_dir, config.rules.templates) if rules_dir != Path(config.rules.path)
        else Path(config.rules.templates))
    ruleset = load_rule_set(rules_dir, templates_dir, model_dir=model_dir, snapshot=True)
    trial = config.model_copy(deep=True)
    if model_dir is not None:
        trial.classifier.model_path = Path(model_dir)
    app = App(config=trial, rules=ruleset.rules, letters=ruleset.letters, db=None)  # type: ignore[arg-type]
    return TrialApp(app, ruleset)


def case_book(config: Config) -> Engine:
    """A read-only engine on the installation's database.  A SQLite file that does not exist
    yet (a new install) is an empty case book in memory: nothing is created on disk."""
    url = config.database.url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or not Path(database).exists():
            engine = create_engine("sqlite://")
            SQLModel.metadata.create_all(engine)
            return engine
    return read_only_engine(url)


def parse_when(text: str | None) -> datetime:
    """--at: "2026-09-04 18:30" or ISO 8601; without a zone it is London time, as people mean it."""
    if not text:
        return utcnow()
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LONDON)
    return moment.astimezone(timezone.utc)


def simulate(app: App, engine: Engine, raw: bytes, at: datetime | None = None) -> Plan:
    """The plan for one message arriving at ``at`` (default now); raises ParseError for mail the
    daemon would quarantine as unreadable."""
    from sqlmodel import col, select

    from mailbot.cases.models import Message
    from mailbot.pipeline import dedupe_key, erased_key

    msg = parse(raw)
    now = at or utcnow()
    cls = app.classifier.classify(msg)
    with read_session(engine) as session:
        try:
            key = dedupe_key(msg, msg.sha256)
            seen = session.exec(select(Message.id).where(
                col(Message.dedupe_key).in_([key, erased_key(key)]))).first()
            if seen is not None:  # the pipeline's exactly-once check comes before anything else
                return Plan(label=cls.label, channel=cls.channel, flags=list(cls.flags),
                            reference=cls.reference, confidence=cls.confidence,
                            needs_review=cls.needs_review, classification_reasons=list(cls.reasons),
                            action="duplicate", received=now,
                            reasons=[f"already handled (message {seen}): a second copy does nothing"])
            return plan_message(app, session, msg, cls, now)
        finally:
            session.rollback()

"""Live reload: the running daemon takes up an admin's change to ``rules/``, ``templates/`` or
the trained model without a restart, and never runs on a set that does not pass the checks.

How (and why this way):

- **Notice**: between two batches of mail the daemon looks at the size and modification time
  of every file of the set (a few dozen ``stat`` calls: cheaper than a watcher thread, and it
  works on network shares where file-change notification does not).  A change is taken up
  once the files have been still for ``settle`` seconds, so an editor that saves in several
  steps, or ``mailbot train`` writing a model, is read once, complete.  A file saved without
  a change of content is not a change.
- **Check**: the whole set is copied to a private snapshot and checked as ``mailbot rules
  check`` does (rules, every letter with sample data, the classifier's patterns), and the
  classifier is built from it.  What was checked is exactly what will be used.
- **Switch**: rules, letters and classifier are replaced together, between messages (the
  daemon calls ``check`` between batches, and the follow-up scheduler's lock keeps its sweep
  from seeing half a switch).  A batch is classified and routed by one set.
- **Refuse**: a set with any problem is not used.  The problems are logged, recorded as an
  audit event and mailed to the admin (the ``admin`` role in roles.toml, else ``[staff]
  notify``), written with the letters of the set still in force, so a broken template cannot
  stop the news that it is broken.  The daemon carries on with the last good set.

Cases keep the due dates they were given: deadlines are stored when a clock starts and never
worked out again, so a new time limit applies to clocks that start after the switch.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from mailbot.admin.ruleset import (RuleSet, RuleSetError, Sources, changed_files, digest_of,
                                   load_rule_set, prune_stale_snapshots)
from mailbot.cases.models import Event, utcnow
from mailbot.letters import Letter, LetterError, build_email
from mailbot.policy.calendar import describe_time

if TYPE_CHECKING:
    from mailbot.app import App

log = logging.getLogger(__name__)
ADMIN_ROLE = "admin"
REFUSED_LETTER = "staff_rules_refused"
APPLIED_LETTER = "staff_rules_applied"
MAX_SETTLE_ROUNDS = 30  # a directory that never stops changing is read anyway, eventually


@dataclass
class ReloadResult:
    applied: bool
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    told: list[str] = field(default_factory=list)  # addresses a letter was queued for
    at_start: bool = False


class RulesWatch:
    """Owned by the daemon; ``start`` once, then ``check`` between batches."""

    def __init__(self, app: "App", *, settle: float = 1.0,
                 wait: Callable[[float], Any] = time.sleep,
                 lock: Callable[[], ContextManager] | None = None):
        self.app = app
        cfg = app.config
        self.origin = Sources(Path(cfg.rules.path), Path(cfg.rules.templates), cfg.classifier.model_path)
        self.settle = settle
        self.wait = wait
        self.lock = lock or nullcontext
        self.current: RuleSet | None = None
        self.in_force: dict[str, str] = {}  # content of the set in use
        self.seen: dict[str, str] = {}  # content last looked at (in use, or refused)
        self.stamp: dict[str, tuple[int, int]] = {}
        self.since: datetime = utcnow()
        self.last: ReloadResult | None = None

    # -- the daemon's two calls ------------------------------------------------------------------

    def start(self) -> ReloadResult:
        """Take the set the daemon starts with into a snapshot.  If it does not pass the checks
        the daemon still runs (it always did: the rules loaded), on the files as they are, and
        the admin is told what to fix."""
        prune_stale_snapshots()
        self.stamp = self.origin.stamp()
        try:
            ruleset = load_rule_set(self.origin.rules, self.origin.templates,
                                    model_dir=self.origin.model, snapshot=True)
        except RuleSetError as exc:
            self.in_force = self.seen = self.origin.digests()
            return self._refused(exc.problems, [], at_start=True)
        # the classifier, if it was not built yet, is built on first use from these rules
        self._switch(ruleset, classifier=None)
        self.last = ReloadResult(applied=True, at_start=True)
        return self.last

    def check(self) -> ReloadResult | None:
        """Take up a change of the files, if there is one; None when nothing changed.  Never
        raises: whatever goes wrong, the daemon keeps the set it has."""
        try:
            return self._check()
        except Exception:  # noqa: BLE001 - a reload problem must not stop the mailbox
            log.exception("could not look for changed rules; carrying on with the rules in force")
            return None

    def close(self) -> None:
        """Remove the snapshot, and point the App back at the admin's directories first: the
        App outlives its daemon (tests, `--once` runs after a daemon), and letters or a
        classifier built later must not look for files in a snapshot that is gone."""
        if self.current is None:
            return
        from mailbot.letters import Letters

        with self.lock():
            if self.app.letters is self.current.letters:
                self.app.letters = Letters(self.origin.templates)
            if self.app.rules is self.current.rules:
                self.app.rules.path = self.origin.rules
        self.current.close()
        self.current = None

    # -- inside ------------------------------------------------------------------------------

    def _check(self) -> ReloadResult | None:
        stamp = self.origin.stamp()
        if stamp == self.stamp:
            return None
        for _ in range(MAX_SETTLE_ROUNDS):  # wait until the editor (or mailbot train) is done
            self.wait(self.settle)
            again = self.origin.stamp()
            if again == stamp:
                break
            stamp = again
        self.stamp = stamp
        digests = self.origin.digests()
        if digest_of(digests) == digest_of(self.seen):
            return None  # saved without a change, or touched
        if digest_of(digests) == digest_of(self.in_force):
            self.seen = digests  # put back as it was: the set in force is that set
            log.info("rules changed back to the set in force; nothing to reload")
            return None
        changed = changed_files(self.in_force, digests)
        log.info("rules changed (%s): checking the new set", "; ".join(changed))
        try:
            ruleset = load_rule_set(self.origin.rules, self.origin.templates,
                                    model_dir=self.origin.model, snapshot=True)
        except RuleSetError as exc:
            self.seen = digests
            return self._refused(exc.problems, changed)
        try:
            classifier = ruleset.build_classifier(self.origin.model, self.app.config.classifier.review_below)
        except Exception as exc:  # noqa: BLE001 - e.g. a model written half-way
            ruleset.close()
            self.seen = digests
            return self._refused([f"the classifier could not be built from {self.origin.model or 'the shipped model'}"
                                  f" and {self.origin.rules}: {type(exc).__name__}: {exc}"], changed)
        changed = changed_files(self.in_force, ruleset.files)
        self._switch(ruleset, classifier)
        log.info("rules reloaded: %s", "; ".join(changed) or "no change of content")
        result = ReloadResult(applied=True, changed=changed)
        result.told = self._tell_admin(APPLIED_LETTER, "rules_reloaded", result)
        self.last = result
        return result

    def _switch(self, ruleset: RuleSet, classifier) -> None:
        """Replace rules, letters and classifier together (see the module docstring)."""
        with self.lock():
            self.app.rules = ruleset.rules
            self.app.letters = ruleset.letters
            if classifier is not None:
                self.app.classifier = classifier  # replaces the App's cached_property value
        old, self.current = self.current, ruleset
        self.in_force = self.seen = dict(ruleset.files)
        self.since = utcnow()
        if old is not None:
            old.close()

    def _refused(self, problems: list[str], changed: list[str], at_start: bool = False) -> ReloadResult:
        where = "at start" if at_start else "after a change"
        log.error("rules in %s and templates in %s %s have %d problem(s); %s", self.origin.rules,
                  self.origin.templates, where, len(problems),
                  "running on them as they are" if at_start else
                  f"still running on the rules in force since {describe_time(self.since)}")
        for problem in problems:
            log.error("  - %s", problem)
        result = ReloadResult(applied=False, changed=changed, problems=list(problems), at_start=at_start)
        result.told = self._tell_admin(REFUSED_LETTER, "rules_refused", result)
        self.last = result
        return result

    # -- telling the admin ----------------------------------------------------------------------

    def admin_addresses(self) -> list[str]:
        """The ``admin`` role's address, else ``[staff] notify`` (Rules.addresses' fallback)."""
        return self.app.rules.addresses([ADMIN_ROLE], [a for a in self.app.config.staff.notify if a])

    def _tell_admin(self, name: str, action: str, result: ReloadResult) -> list[str]:
        """An audit event, and a letter to the admin in the same transaction (sent by the
        daemon's next delivery).  Written with the set now in force: after a refusal that is
        the last good one, so the news never depends on the templates that are broken."""
        from mailbot.outbox import queue

        app = self.app
        to = self.admin_addresses()
        context = {
            "org": app.rules.organisation, "problems": result.problems, "changed": result.changed,
            "rules_dir": str(self.origin.rules), "templates_dir": str(self.origin.templates),
            "when": describe_time(utcnow()), "in_force_since": describe_time(self.since),
            "at_start": result.at_start,
        }
        letter = self._letter(name, context)
        try:
            with app.db.session() as session:
                session.add(Event(actor="system", action=action, detail=json.dumps(
                    {"changed": result.changed, "problems": result.problems[:200],
                     "rules": str(self.origin.rules), "templates": str(self.origin.templates),
                     "digest": digest_of(self.in_force), "at_start": result.at_start})))
                if to:
                    email = build_email(letter, sender=app.config.outgoing.from_, to=to, auto_reply=True)
                    queue(session, email, case_id=None, purpose=name, mail_from=app.config.outgoing.from_address)
        except Exception:  # noqa: BLE001 - the database may be away; the log has it all
            log.exception("could not record the rules %s or tell the admin", action.split("_")[-1])
            return []
        if not to:
            log.warning("no admin address (an [admin] role in roles.toml or [staff] notify): "
                        "nobody was mailed about the rules")
        return to

    def _letter(self, name: str, context: dict) -> Letter:
        """The admin's letter from templates/ (NAME.subject.j2, NAME.txt.j2); a plain fallback
        when the organisation's own templates do not have it (or it is itself broken), so
        the admin always hears."""
        try:
            if self.app.letters.exists(name):
                return self.app.letters.render(name, context)
        except LetterError:
            log.warning("the %s letter could not be written; sending the plain version", name)
        org = context["org"].name
        if name == REFUSED_LETTER:
            lines = [f"The rules or letters of {org} have {len(context['problems'])} problem(s), so mailbot "
                     f"did not take them up.", ""]
            lines += [f"  - {p}" for p in context["problems"]]
            lines += ["", "mailbot is still running on the rules in force since "
                      f"{context['in_force_since']}. Fix the problems above (`mailbot rules check` "
                      "lists them too) and save: the corrected rules are taken up by themselves."]
            return Letter(subject=f"mailbot: rules NOT taken up ({len(context['problems'])} problem(s))",
                          text="\n".join(lines) + "\n", html=None)
        lines = [f"mailbot now uses the changed rules of {org} (since {context['when']}):", ""]
        lines += [f"  - {c}" for c in context["changed"]] + [""]
        return Letter(subject="mailbot: changed rules taken up", text="\n".join(lines), html=None)

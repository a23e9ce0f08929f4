"""One complete set of rules, as the daemon uses it: the rules directory, the letter templates
and the classifier built from them, checked *together*.

Why a set and not single files: a workflow.toml that names a letter, the template that writes
it and the patterns the classifier reads only make sense together, and an admin's edit often
touches two of them.  ``check_rule_set`` finds every problem in one pass (the same checks as
``mailbot rules check``, plus the classifier's phrase patterns, which the rules loader does
not read), so the admin gets one complete list.

Why a snapshot: jinja2 reads templates lazily and reloads them when their file changes, and
the classifier reads ``classifier/patterns.toml`` when it is built.  A daemon reading the live
directories would pick up a half-saved or broken edit before anyone checked it.  ``take_snapshot``
copies the files a set consists of into a private directory; what is checked is exactly what
is then used, and the admin's directory can change at any moment without touching a letter in
progress.  Problems are reported with the admin's own paths, never the snapshot's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailbot.letters import Letters
from mailbot.policy.rules import Rules, RulesError, load_rules

if TYPE_CHECKING:
    from mailbot.classify import Classifier

log = logging.getLogger(__name__)

# Read by ``mailbot train`` and by people adopting a preset, never by the running daemon: a
# change there is not a change of the rules in force.
NOT_RUN_TIME = ("presets", "training")
SNAPSHOT_PREFIX = "mailbot-ruleset-"


def templates_for(rules_dir: Path, configured: Path | None) -> Path:
    """The templates that go with a rules directory, as ``mailbot rules check`` chooses them:
    DIR/templates when the admin keeps a copy there, else the configured ones."""
    own = Path(rules_dir) / "templates"
    if own.is_dir():
        return own
    return Path(configured) if configured is not None else Path("templates")


def _rule_files(rules_dir: Path) -> list[Path]:
    out = []
    for path in sorted(Path(rules_dir).rglob("*.toml")):
        rel = path.relative_to(rules_dir)
        if rel.parts[0] in NOT_RUN_TIME or any(p.startswith(".") for p in rel.parts):
            continue
        out.append(path)
    return out


def _template_files(templates_dir: Path) -> list[Path]:
    return [p for p in sorted(Path(templates_dir).rglob("*.j2"))
            if not any(part.startswith(".") for part in p.relative_to(templates_dir).parts)]


def _model_files(model_dir: Path | None) -> list[Path]:
    if model_dir is None or not (Path(model_dir) / "meta.json").is_file():
        return []
    return sorted(p for p in Path(model_dir).rglob("*") if p.is_file())


@dataclass(frozen=True)
class Sources:
    """The directories a set is read from (the admin's, or a snapshot's)."""

    rules: Path
    templates: Path
    model: Path | None = None

    def files(self) -> dict[str, Path]:
        """Every file that makes up the set, by a name an admin recognises ("rules/workflow.toml",
        "templates/acknowledgement.txt.j2", "model/meta.json").  Editor backups and hidden
        files are not part of it, so saving in vim does not count as a change."""
        found: dict[str, Path] = {}
        for prefix, root, paths in (("rules", self.rules, _rule_files(self.rules) if Path(self.rules).is_dir() else []),
                                    ("templates", self.templates,
                                     _template_files(self.templates) if Path(self.templates).is_dir() else []),
                                    ("model", self.model, _model_files(self.model))):
            for path in paths:
                found[f"{prefix}/{path.relative_to(root).as_posix()}"] = path
        return found

    def stamp(self) -> dict[str, tuple[int, int]]:
        """(size, mtime) of every file: cheap enough to take between two batches of mail."""
        out = {}
        for name, path in self.files().items():
            try:
                st = path.stat()
            except OSError:  # removed while we looked: the next look sees it gone
                continue
            out[name] = (st.st_size, st.st_mtime_ns)
        return out

    def digests(self) -> dict[str, str]:
        """Content hashes: a file saved without a change (or only touched) is not a change."""
        out = {}
        for name, path in self.files().items():
            try:
                out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
        return out


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """"changed rules/workflow.toml", "added templates/x.txt.j2", "removed ..." lines."""
    out = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            out.append(f"added {name}")
        elif name not in after:
            out.append(f"removed {name}")
        elif before[name] != after[name]:
            out.append(f"changed {name}")
    return out


def digest_of(digests: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(digests.items())).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Checking


def check_patterns(rules_dir: Path) -> list[str]:
    """Problems in ``classifier/patterns.toml``: its settings and every token pattern compiled
    by spaCy, as the classifier will compile them.  ``rules check`` did not read this file, so
    a typo there only showed when the daemon built its classifier."""
    from mailbot.classify.patterns import PATTERNS_FILE, RuleMatcher, load_patterns

    try:
        patterns = load_patterns(Path(rules_dir))
    except RulesError as exc:
        return list(exc.problems)
    try:
        import spacy

        RuleMatcher(spacy.blank("en"), patterns, source=str(Path(rules_dir) / PATTERNS_FILE))
    except RulesError as exc:
        return list(exc.problems)
    return []


def check_rule_set(rules_dir: Path, templates_dir: Path) -> tuple[Rules | None, list[str]]:
    """Everything ``mailbot rules check`` reports, plus the classifier's patterns, all at once.
    Returns the rules (None when they cannot be loaded) and the problems."""
    from mailbot.policy.check import check_templates

    problems: list[str] = []
    rules = None
    try:
        rules = load_rules(rules_dir)
    except RulesError as exc:
        problems += exc.problems
    if rules is not None:
        try:
            problems += check_templates(rules, templates_dir)
        except RulesError as exc:
            problems += exc.problems
    problems += check_patterns(rules_dir)
    return rules, problems


# ---------------------------------------------------------------------------------------------
# Snapshots


@dataclass
class Snapshot:
    """A private copy of the files of a set (see the module docstring for why)."""

    root: Path
    origin: Sources
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def sources(self) -> Sources:
        return Sources(self.root / "rules", self.root / "templates", self.origin.model)

    def real(self, text: str) -> str:
        """A problem as the admin should read it: with their paths, not the snapshot's."""
        for mine, theirs in ((self.sources.rules, self.origin.rules),
                             (self.sources.templates, self.origin.templates)):
            text = text.replace(str(mine), str(theirs))
        return text

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _snapshot_parent() -> Path:
    return Path(tempfile.gettempdir())


def prune_stale_snapshots() -> None:
    """Remove snapshots left by daemons that were killed (their process is gone)."""
    for path in _snapshot_parent().glob(f"{SNAPSHOT_PREFIX}*"):
        try:
            pid = int(path.name[len(SNAPSHOT_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # someone else's live process


def take_snapshot(origin: Sources) -> Snapshot:
    """Copy the set's rules and templates into a new private directory (0700).  The model is
    not copied: spaCy reads it into memory whole when the classifier is built."""
    root = Path(tempfile.mkdtemp(prefix=f"{SNAPSHOT_PREFIX}{os.getpid()}-", dir=_snapshot_parent()))
    snap = Snapshot(root, origin)
    try:
        # a directory that does not exist is not created: the check must say it is missing
        for prefix, there in (("rules", origin.rules), ("templates", origin.templates)):
            if Path(there).is_dir():
                (root / prefix).mkdir()
        for name, path in origin.files().items():
            prefix, rel = name.split("/", 1)
            if prefix == "model":
                continue
            target = root / prefix / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = path.read_bytes()
            except OSError:
                continue  # removed while we copied: the set is taken without it
            target.write_bytes(data)
            snap.digests[name] = hashlib.sha256(data).hexdigest()
        for name, digest in origin.digests().items():
            if name.startswith("model/"):
                snap.digests[name] = digest
    except BaseException:
        snap.remove()
        raise
    return snap


# ---------------------------------------------------------------------------------------------
# A loaded set


class RuleSetError(RulesError):
    """The set cannot be used; ``problems`` lists each, with the admin's file names."""


@dataclass
class RuleSet:
    rules: Rules
    letters: Letters
    sources: Sources  # where it came from (the admin's directories)
    snapshot: Snapshot | None = None
    digest: str = ""
    files: dict[str, str] = field(default_factory=dict)  # name -> content hash

    def build_classifier(self, model_dir: Path | None, review_below: float) -> "Classifier":
        from mailbot.classify import Classifier

        return Classifier(self.rules, model_dir, review_below)

    def close(self) -> None:
        if self.snapshot is not None:
            self.snapshot.remove()


def load_rule_set(rules_dir: Path, templates_dir: Path, *, model_dir: Path | None = None,
                  snapshot: bool = False, check: bool = True) -> RuleSet:
    """Load (and, with ``check``, fully check) a set; raise RuleSetError with every problem.

    With ``snapshot`` the files are copied first and everything is read from the copy, so the
    set stays as it was checked whatever happens to the admin's files afterwards."""
    origin = Sources(Path(rules_dir), Path(templates_dir), Path(model_dir) if model_dir else None)
    snap = take_snapshot(origin) if snapshot else None
    where = snap.sources if snap is not None else origin
    try:
        if check:
            rules, problems = check_rule_set(where.rules, where.templates)
        else:
            rules, problems = None, []
            try:
                rules = load_rules(where.rules)
            except RulesError as exc:
                problems = list(exc.problems)
        if problems or rules is None:
            raise RuleSetError([snap.real(p) for p in problems] if snap else problems)
    except BaseException:
        if snap is not None:
            snap.remove()
        raise
    files = snap.digests if snap is not None else origin.digests()
    return RuleSet(rules=rules, letters=Letters(where.templates), sources=origin, snapshot=snap,
                   digest=digest_of(files), files=dict(files))

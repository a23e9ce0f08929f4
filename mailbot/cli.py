"""Command line: ``mailbot run``, ``mailbot cases ...``, ``mailbot classify``, ``mailbot rules check``.

Errors a user can fix (bad config, broken rules, unreachable server) are printed as one plain
sentence and exit code 2, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mailbot.config import ConfigError
from mailbot.policy.rules import RulesError
from mailbot.transport.base import TransportError

app = typer.Typer(help="Runs the complaints and feedback mailbox.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@app.callback()
def _owner_only_files() -> None:
    """Everything mailbot writes (database, outgoing mail, subject-access bundles) holds
    personal data, so it is created readable by its owner only."""
    os.umask(0o077)


cases_app = typer.Typer(help="Look at cases.", no_args_is_help=True)
rules_app = typer.Typer(help="Check the rules directory.", no_args_is_help=True)
app.add_typer(cases_app, name="cases")
app.add_typer(rules_app, name="rules")

console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, soft_wrap=True)  # never break a file path or a key in two
TABLE_ROWS = 50  # a backlog of thousands is summarised, not printed line by line
DEFAULT_CONFIG = os.environ.get("MAILBOT_CONFIG", "config.toml")
ConfigOption = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Config file (TOML).")


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _load(config: str):
    from mailbot.app import App

    try:
        return App.load(config)
    except ConfigError as exc:
        _fail(str(exc))
    except RulesError as exc:
        _fail("the rules are not valid:\n" + "\n".join(f"  - {p}" for p in exc.problems))


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def run(config: str = ConfigOption,
        once: bool = typer.Option(False, "--once", help="Handle what is waiting, then exit."),
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the daemon (or one pass with --once)."""
    from mailbot.daemon import Daemon
    from mailbot.pipeline import InternalError, StorageUnavailable

    _logging(verbose)
    application = _load(config)
    try:
        daemon = Daemon(application)
    except (TransportError, ConfigError) as exc:
        _fail(str(exc))
    try:
        if not once:
            daemon.install_signal_handlers()
            daemon.serve_metrics()
            daemon.run_forever()
            return
        try:
            report = daemon.run_once()
        except (TransportError, StorageUnavailable, InternalError) as exc:
            _fail(str(exc))
        table = Table(title=f"mailbot: {len(report.outcomes)} message(s) handled")
        for column in ("#", "action", "reference", "label", "channel"):
            table.add_column(column, no_wrap=True)
        table.add_column("why", overflow="fold")
        for number, o in enumerate(report.outcomes[:TABLE_ROWS], 1):
            table.add_row(str(number), o.action, o.reference or "", o.label, o.channel,
                          escape(o.detail[:120]))
        if len(report.outcomes) > TABLE_ROWS:
            table.caption = f"(first {TABLE_ROWS} shown)"
        console.print(table)
        counts: dict[str, int] = {}
        for o in report.outcomes:
            counts[o.action] = counts.get(o.action, 0) + 1
        if counts:
            console.print("; ".join(f"{action}: {n}" for action, n in sorted(counts.items())))
        console.print(f"sent {report.sent} message(s)"
                      + (f", {report.send_retries} to retry" if report.send_retries else "")
                      + (f", {report.send_failures} failed" if report.send_failures else ""))
    finally:
        daemon.close()
        application.close()


@cases_app.command("list")
def cases_list(config: str = ConfigOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """List cases, newest first."""
    from sqlmodel import col, select

    from mailbot.cases.models import Case

    application = _load(config)
    with application.db.session() as session:
        rows = session.exec(select(Case).order_by(col(Case.id).desc())).all()
    if as_json:
        print(json.dumps([{
            "reference": c.reference, "kind": c.kind, "status": c.status,
            "complainant": c.complainant, "channel": c.channel, "flags": c.flag_list,
            "subject": c.subject, "opened_at": c.opened_at.isoformat(),
        } for c in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} case(s)")
    for column in ("reference", "kind", "status", "complainant", "flags", "opened", "subject"):
        table.add_column(column, overflow="fold")
    for c in rows:
        table.add_row(c.reference, c.kind, c.status, escape(c.complainant), ",".join(c.flag_list),
                      c.opened_at.strftime("%Y-%m-%d %H:%M"), escape(c.subject[:60]))
    console.print(table)


@cases_app.command("show")
def cases_show(reference: str, config: str = ConfigOption) -> None:
    """Show one case: its details and a timeline of messages and events."""
    from sqlmodel import col, select

    from mailbot.cases.models import Event, Message
    from mailbot.cases.registry import case_by_reference

    application = _load(config)
    with application.db.session() as session:
        case = case_by_reference(session, reference)
        if case is None:
            _fail(f"no case with reference {reference}")
        messages = session.exec(select(Message).where(col(Message.case_id) == case.id)).all()
        events = session.exec(select(Event).where(col(Event.case_id) == case.id)).all()
        from mailbot.cases.workflow import deadlines_of

        deadlines = deadlines_of(session, case)
    console.print(f"[bold]{case.reference}[/]  {case.kind}  status: {case.status}")
    console.print(escape(f"complainant: {case.complainant_name} <{case.complainant}>  channel: "
                         f"{case.channel}  flags: {', '.join(case.flag_list) or '-'}"))
    console.print(escape(f"subject: {case.subject}"))
    timeline = [(m.at, "mail " + ("in " if m.direction == "in" else "out"),
                 f"{m.sender} -> {m.recipients}: {m.subject}"
                 + (f" [{m.delivery}]" if m.direction == "out" else "")) for m in messages]
    timeline += [(e.at, "event", f"{e.action} by {e.actor}") for e in events]
    table = Table(title="timeline")
    for column in ("when (UTC)", "what", "detail"):
        table.add_column(column, overflow="fold")
    for at, what, detail in sorted(timeline, key=lambda t: t[0]):
        table.add_row(at.strftime("%Y-%m-%d %H:%M:%S"), what, escape(detail))
    console.print(table)
    if deadlines:  # the policy's time limits, as computed when each clock started
        from mailbot.policy.calendar import describe_time

        due = Table(title="deadlines (London time)")
        for column in ("deadline", "stage", "policy", "due", "met"):
            due.add_column(column, overflow="fold")
        for d in deadlines:
            due.add_row(d.name, str(d.stage), d.rule, describe_time(d.due_at)
                        + (f" (was {describe_time(d.extended_from)})" if d.extended_from else ""),
                        describe_time(d.met_at) if d.met_at else "-")
        console.print(due)


ModelOption = typer.Option(None, "--model", help="Trained model directory (default: classifier.model_path, else the shipped model).")


def _classifier(config: str, rules: Optional[Path], model: Optional[Path] = None):
    """A Classifier from the config (or just a rules directory, for trying rules out)."""
    from mailbot.classify import Classifier
    from mailbot.config import load_config
    from mailbot.policy.rules import load_rules

    model_dir, review_below, rules_dir = None, 0.6, rules
    try:
        cfg = load_config(config)
        model_dir, review_below = cfg.classifier.model_path, cfg.classifier.review_below
        rules_dir = rules_dir or cfg.rules.path
    except ConfigError as exc:
        if Path(config).exists():
            _fail(str(exc))
    try:
        return Classifier(load_rules(rules_dir or Path("rules")), model or model_dir, review_below)
    except RulesError as exc:
        _fail("the rules are not valid:\n" + "\n".join(f"  - {p}" for p in exc.problems))
    except FileNotFoundError as exc:
        _fail(str(exc))


@app.command()
def classify(files: list[Path], config: str = ConfigOption,
             as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
             explain: bool = typer.Option(False, "--explain", help="Show the rules and scores that decided it."),
             rules: Optional[Path] = typer.Option(None, "--rules", help="Rules directory to use."),
             model: Optional[Path] = ModelOption) -> None:
    """Classify .eml files without storing or sending anything."""
    from mailbot.intake.parse import ParseError, parse

    classifier = _classifier(config, rules, model)
    for path in files:
        try:
            msg = parse(path.read_bytes())
        except (OSError, ParseError) as exc:
            if as_json:
                print(json.dumps({"file": str(path), "error": str(exc)}))
            else:
                err.print(escape(f"{path}: {exc}"))
            continue
        c = classifier.classify(msg)
        result = {"file": str(path), "label": c.label, "channel": c.channel, "flags": c.flags,
                  "reference": c.reference, "confidence": c.confidence,
                  "needs_review": c.needs_review, "reasons": c.reasons}
        if as_json:
            print(json.dumps(result))
            continue
        console.print(f"[bold]{escape(str(path))}[/]: {c.label} via {c.channel}, flags "
                      f"{', '.join(c.flags) or '-'}, reference {c.reference or '-'}, "
                      f"confidence {c.confidence:.2f}{' (needs review)' if c.needs_review else ''}")
        if explain:
            for reason in c.reasons:
                console.print(f"   - {escape(reason)}", highlight=False)


@app.command()
def train(config: str = ConfigOption,
          rules: Optional[Path] = typer.Option(None, "--rules", help="Rules directory (training data in its training/)."),
          out: Optional[Path] = typer.Option(None, "--out", help="Where to write the model (default: classifier.model_path)."),
          epochs: int = typer.Option(25, min=1, max=200),
          include_corrections: bool = typer.Option(
              False, "--include-corrections",
              help="Also learn from staff corrections (#reclassify) stored in the database."),
          eval_folder: Optional[Path] = typer.Option(
              None, "--eval", help="Measure the model before and after on this labelled folder.")) -> None:
    """Retrain the classifier from rules/training/*.jsonl and write the model."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mailbot.classify import model
    from mailbot.config import load_config

    rules_dir, out_dir, cfg = rules, out, None
    try:
        cfg = load_config(config)
        rules_dir, out_dir = rules_dir or cfg.rules.path, out_dir or cfg.classifier.model_path
    except ConfigError as exc:
        if Path(config).exists():
            _fail(str(exc))
    rules_dir, out_dir = rules_dir or Path("rules"), out_dir or Path("var/model")
    try:
        examples = model.load_training(Path(rules_dir) / "training")
    except model.TrainingDataError as exc:
        _fail(f"the training data has problems:\n{exc}")
    if include_corrections:  # mailbot.admin.corrections: read from the database, never copied
        from mailbot.admin.corrections import from_config

        if cfg is None:
            _fail(f"--include-corrections reads the database named in {config}, which was not found")
        corrections = from_config(cfg)
        examples += corrections
        console.print(f"including {len(corrections)} staff correction(s) from the database")
    before = None
    if eval_folder is not None:
        from mailbot.admin.corrections import measure

        before = measure(Path(rules_dir), out_dir, eval_folder)
    with Progress(TextColumn("training"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
                  TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("train", total=epochs, loss="")
        nlp = model.train(examples, epochs=epochs, progress=lambda e, n, losses: bar.update(
            task, completed=e, loss=f"loss {sum(losses.values()):.3f}"))
    model.save(nlp, out_dir, model.training_fingerprint(examples), len(examples))
    console.print(f"trained on {len(examples)} examples; model written to {out_dir}")
    if before is not None:
        from mailbot.admin.corrections import before_after, measure

        table = Table(title=f"{eval_folder}: before and after ({before['messages']} messages)")
        for column in ("measure", "before", "after", "change"):
            table.add_column(column, justify="right")
        for row in before_after(before, measure(Path(rules_dir), out_dir, eval_folder)):
            table.add_row(*row)
        console.print(table)


@app.command("eval")
def evaluate_cmd(directory: Path, config: str = ConfigOption,
                 as_json: bool = typer.Option(False, "--json"),
                 rules: Optional[Path] = typer.Option(None, "--rules", help="Rules directory to use."),
                 show_mistakes: bool = typer.Option(False, "--mistakes", help="List every wrong answer."),
                 model: Optional[Path] = ModelOption) -> None:
    """Measure classification on a folder of .eml files with a labels.csv."""
    from mailbot.classify.evaluate import EvalDataError, evaluate

    classifier = _classifier(config, rules, model)
    try:
        result = evaluate(classifier, directory)
    except EvalDataError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['messages']} messages: macro-F1 {result['macro_f1']:.3f}")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for label, m in result["labels"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    confusion = Table(title="confusion (rows: expected, columns: predicted)")
    confusion.add_column("")
    labels = list(result["confusion"])
    for label in labels:
        confusion.add_column(label[:10], justify="right")
    for label in labels:
        confusion.add_row(label, *[str(result["confusion"][label][p]) for p in labels])
    console.print(confusion)
    flags = Table(title="flags")
    for column in ("flag", "precision", "recall", "support"):
        flags.add_column(column, justify="right")
    for flag, m in result["flags"].items():
        flags.add_row(flag, f"{m['precision']:.3f}", f"{m['recall']:.3f}", str(m["support"]))
    console.print(flags)
    console.print(f"channel accuracy {result['channel_accuracy']:.3f}; reference accuracy "
                  f"{result['reference_accuracy']:.3f}; {result['needs_review']} would go to staff review")
    if show_mistakes:
        for m in result["mistakes"]:
            console.print(escape(f"  {m['file']}: expected {m['expected']} got {m['got']} ({m['confidence']}) "
                                 f"channel {m['channel']} flags {m['flags']}"), highlight=False)


@app.command()
def status(config: str = ConfigOption, as_json: bool = typer.Option(False, "--json"),
           mailbox: bool = typer.Option(True, "--mailbox/--no-mailbox",
                                        help="Also count what waits in the mailbox (connects to it).")) -> None:
    """Backlog, last poll of each daemon, outbox queue, recent quarantines, cases by status."""
    from mailbot.observe import status_report

    application = _load(config)
    with application.db.session() as session:
        report = status_report(session)
    report["inbox_waiting"] = None
    if mailbox:
        try:
            box = application.open_mailbox()
            counter = getattr(box, "count", None)
            report["inbox_waiting"] = counter() if counter else None
            box.close()
        except (TransportError, ConfigError, NotImplementedError) as exc:
            report["inbox_error"] = str(exc)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    waiting = report["inbox_waiting"]
    console.print(f"inbox: {waiting if waiting is not None else 'unknown'} message(s) waiting"
                  + (f" ({escape(report['inbox_error'])})" if report.get("inbox_error") else ""))
    out = report["outbox"]
    console.print(f"outbox: {out['queued']} queued"
                  + (f" (oldest {out['oldest_queued'][:16]})" if out["oldest_queued"] else "")
                  + f", {out['sent']} sent, {out['failed']} failed")
    console.print(f"quarantined in the last 7 days: {report['quarantined_last_7_days']}")
    console.print("cases: " + (", ".join(f"{k} {v}" for k, v in sorted(report["cases_by_status"].items()))
                               or "none"))
    table = Table(title="daemons")
    for column in ("name", "running", "last poll", "handled", "last error"):
        table.add_column(column, overflow="fold")
    for d in report["daemons"][:10]:
        ago = d["seconds_since_poll"]
        table.add_row(d["name"], "yes" if d["running"] else "no",
                      f"{ago} s ago" if ago is not None else "never", str(d["handled"]),
                      escape(d["last_error"][:100]))
    console.print(table)


@app.command("export-person")
def export_person_cmd(address: str, out: Path = typer.Option(..., "--out", help="Folder to write the bundle to."),
                      config: str = ConfigOption,
                      notes: bool = typer.Option(True, "--notes/--no-notes",
                                                 help="Include staff-only notes (default) or leave them out."),
                      redact: list[str] = typer.Option([], "--redact", help="A third party's name to redact (repeatable).")) -> None:
    """Everything held about one person (subject access request): HTML index, original .eml files, JSON."""
    from mailbot.privacy import export_person

    application = _load(config)
    domains = {application.config.outgoing.from_address.rsplit("@", 1)[-1]}
    domains |= {a.rsplit("@", 1)[-1] for a in application.config.staff.notify if "@" in a}
    summary = export_person(application.db, address, out, organisation_domains=domains,
                            include_notes=notes, redact=redact)
    console.print(f"{summary.cases} case(s), {summary.messages} message(s) ({summary.originals} original .eml), "
                  f"{summary.events} event(s) written to {summary.path}/index.html")


def _erase(application, plan, dry_run: bool, as_json: bool) -> None:
    from mailbot.retention import execute, remove_from_mailbox

    summary = plan.summary()
    if dry_run:
        if as_json:
            print(json.dumps({"dry_run": True, **summary}, indent=2))
            return
        console.print(f"would erase {len(plan.cases)} case(s) and {len(plan.records)} other record(s) "
                      f"({plan.reason}); nothing changed (dry run)")
        for case in summary["cases"]:
            console.print(f"  {case['reference']}  closed {str(case['closed_at'])[:10]}")
        return
    result = execute(application.db, plan)
    removed = None
    if result.message_ids:
        try:
            box = application.open_mailbox()
            removed = remove_from_mailbox(box, result.message_ids)
            box.close()
        except (TransportError, NotImplementedError) as exc:
            err.print(escape(f"warning: the mailbox copies could not be removed now: {exc}"))
    if as_json:
        print(json.dumps({"dry_run": False, **summary, "messages_erased": result.messages,
                          "events_erased": result.events, "mailbox_copies_removed": removed}, indent=2))
        return
    console.print(f"erased {result.cases} case(s) and {len(plan.records)} other record(s): "
                  f"{result.messages} message(s), {result.events} event(s); "
                  f"{removed if removed is not None else 'no'} mailbox copies removed")


@app.command()
def requeue(config: str = ConfigOption) -> None:
    """Give quarantined mail another try: move it back to the inbox and forget its quarantine
    outcome (the record stays in the timeline).  Use after fixing what made it fail."""
    from sqlmodel import col, select

    from mailbot.cases.models import Event, Message

    application = _load(config)
    box = application.open_mailbox()
    mover = getattr(box, "requeue", None)
    if mover is None:
        _fail(f"{box.description}: this mailbox kind cannot requeue yet; move the mail by hand")
    with application.db.session() as session:
        rows = session.exec(select(Message).where(col(Message.direction) == "in",
                                                  col(Message.outcome) == "quarantined")).all()
        for row in rows:
            row.dedupe_key = f"requeued:{row.id}:{row.dedupe_key}"[:500]
            row.outcome = "requeued"
            session.add(row)
            session.add(Event(message_id=row.id, actor="admin", action="requeued",
                              detail=row.reason[:500]))
    try:
        moved = mover()
    finally:
        box.close()
    console.print(f"{moved} message(s) moved back to the inbox; {len(rows)} quarantine record(s) "
                  "cleared for another try")


@app.command()
def purge(config: str = ConfigOption,
          dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be erased."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Erase personal data whose retention period (rules [retention]) is over; keep a minimal record."""
    from mailbot.retention import plan_purge

    application = _load(config)
    with application.db.session() as session:
        plan = plan_purge(session, application.rules)
    _erase(application, plan, dry_run, as_json)


@app.command("erase-person")
def erase_person(address: str, config: str = ConfigOption,
                 dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be erased."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Erase everything held about one person (right to erasure), keeping minimal case records."""
    from mailbot.retention import plan_erasure

    application = _load(config)
    with application.db.session() as session:
        plan = plan_erasure(session, address)
    _erase(application, plan, dry_run, as_json)


audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(config: str = ConfigOption) -> None:
    """Check the hash chain of every event; exit 1 if any row was edited or deleted."""
    from mailbot.audit import verify

    application = _load(config)
    with application.db.session() as session:
        result = verify(session)
    if result.ok:
        console.print(f"audit trail intact: {result.events} event(s) verified")
        return
    err.print(f"[bold red]audit trail broken:[/] {len(result.problems)} problem(s)")
    for problem in result.problems:
        err.print(f"  - {escape(problem)}", highlight=False)
    raise typer.Exit(1)


@rules_app.command("check")
def rules_check(directory: Path = typer.Argument(Path("rules")),
                templates: Optional[Path] = typer.Option(
                    None, "--templates", help="Letter templates to check (default: DIR/templates if "
                    "it exists, else [rules] templates of the config, else ./templates).")) -> None:
    """Validate a rules directory and the letters it names; every problem is listed with its
    file and key."""
    from mailbot.policy.check import check_templates, roles_without_address
    from mailbot.policy.rules import load_rules

    if templates is None:
        templates = directory / "templates"
        if not templates.is_dir():
            templates = Path("templates")
            try:
                from mailbot.config import load_config

                templates = load_config(DEFAULT_CONFIG).rules.templates
            except ConfigError:
                pass
    try:
        rules = load_rules(directory)
        problems = check_templates(rules, templates)
    except RulesError as exc:
        problems = exc.problems
    from mailbot.admin.ruleset import check_patterns  # the classifier's phrases and patterns

    problems += check_patterns(directory)
    if problems:
        err.print(f"[bold red]{len(problems)} problem(s) in {escape(str(directory))}:[/]")
        for problem in problems:
            err.print(f"  - {escape(problem)}", highlight=False)
        raise typer.Exit(1)
    console.print(f"{directory}: rules are valid; letters checked in {templates}", highlight=False)
    for role in roles_without_address(rules):
        console.print(escape(f"  note: role {role!r} has no address yet: its mail goes to [staff] "
                             f"notify in config.toml"), highlight=False)


@app.command()
def doctor(config: str = ConfigOption,
           send_test: Optional[str] = typer.Option(
               None, "--send-test", metavar="ADDRESS",
               help="Also send a test message to ADDRESS through the outgoing settings.")) -> None:
    """Check the mailbox and outgoing mail settings for real, and explain each problem."""
    from mailbot.config import load_config
    from mailbot.doctor import run as run_doctor

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    checks = run_doctor(cfg, send_test)
    for check in checks:
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {check.section}: {escape(check.step)}: {escape(check.detail)}")
        if not check.ok and check.advice:
            console.print(f"     what to do: {escape(check.advice)}", highlight=False)
    failed = [c for c in checks if not c.ok]
    console.print("all checks passed" if not failed else f"{len(failed)} check(s) failed")
    raise typer.Exit(1 if failed else 0)


schedule_app = typer.Typer(help="Follow-ups: reminders, escalations, holding letters, reports.",
                           no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("list")
def schedule_list(config: str = ConfigOption,
                  days: int = typer.Option(30, "--days", min=1, help="How far ahead to look."),
                  show_all: bool = typer.Option(False, "--all", help="Also list what was overtaken or cannot be sent."),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """What follow-up is due, when (London time), and why: worked out from the case book."""
    from datetime import timedelta

    from mailbot.cases.models import utcnow
    from mailbot.policy.calendar import LONDON
    from mailbot.scheduler import plan, stored_job_times

    application = _load(config)
    now = utcnow()
    with application.db.session() as session:
        items = [p for p in plan(session, application.rules, now)
                 if p.at <= now + timedelta(days=days) and (show_all or p.state in ("due", "upcoming"))]
    jobs = set(stored_job_times(application.db.engine))
    rules = application.rules
    if as_json:
        print(json.dumps([{"when": p.at.isoformat(), "state": p.state, "kind": p.kind,
                           "reference": p.reference or None, "to": [rules.role_title(r) for r in p.to_roles],
                           "why": p.why, "key": p.key} for p in items], indent=2))
        return
    table = Table(title=f"{len(items)} follow-up(s) due now or in the next {days} days")
    for column in ("when (London)", "state", "what", "case", "to"):
        table.add_column(column, no_wrap=column != "to", overflow="fold")
    table.add_column("why", overflow="fold")
    for p in items:
        state = p.state if p.state != "due" else "[bold]due now[/]"
        if p.state == "upcoming" and p.at in jobs:
            state = "upcoming (job set)"
        to = "the complainant" if p.kind == "holding_letter" else ", ".join(rules.role_title(r) for r in p.to_roles)
        table.add_row(p.at.astimezone(LONDON).strftime("%a %d %b %Y %H:%M"), state, p.kind.replace("_", " "),
                      p.reference or "-", escape(to or "-"), escape(p.why))
    console.print(table)


@schedule_app.command("run")
def schedule_run(config: str = ConfigOption) -> None:
    """Carry out the follow-ups that are due now and send them (what the daemon does each
    round; for installations that run `mailbot run --once` from cron)."""
    from mailbot import outbox
    from mailbot.scheduler import sweep

    application = _load(config)
    result = sweep(application)
    counts = {"sent": 0, "retry": 0, "failed": 0}
    if result.done:
        sender = application.open_sender()
        try:
            counts = outbox.deliver(application.db, sender)
        finally:
            sender.close()
    for p in result.done:
        console.print(escape(f"{p.kind.replace('_', ' ')} {p.reference or ''}: {p.why}"), highlight=False)
    console.print(f"{len(result.done)} follow-up(s) done; sent {counts['sent']} message(s)")
    for problem in result.errors:
        err.print(escape(f"  - {problem}"), highlight=False)
    if result.errors:
        raise typer.Exit(1)


@app.command()
def report(what: Optional[str] = typer.Argument(None, help="Nothing: the board report; \"compliments\": "
                                                "the compliments board (consented, anonymised quotes)."),
           date_from: str = typer.Option(..., "--from", help="First day (YYYY-MM-DD)."),
           date_to: str = typer.Option(..., "--to", help="Last day, included (YYYY-MM-DD)."),
           out: Path = typer.Option(..., "--out", help="File to write."),
           fmt: Optional[str] = typer.Option(None, "--format", help="html, pdf or csv (default: from --out)."),
           title: str = typer.Option("Complaints and compliments report", "--title"),
           config: str = ConfigOption) -> None:
    """The statistical report for a period, as the board reads it (no personal data)."""
    from datetime import date, timedelta

    from mailbot.reports import build_report, render_csv, render_html, render_pdf

    try:
        start, last = date.fromisoformat(date_from), date.fromisoformat(date_to)
    except ValueError as exc:
        _fail(f"dates are written YYYY-MM-DD, e.g. 2026-04-01 ({exc})")
    if last < start:
        _fail(f"--to ({last}) is before --from ({start})")
    fmt = (fmt or out.suffix.lstrip(".") or "html").lower()
    if fmt not in ("html", "pdf", "csv"):
        _fail(f"--format must be html, pdf or csv, not {fmt!r}")
    if what not in (None, "compliments"):
        _fail(f"mailbot report {what}: unknown report; use `mailbot report --from ...` for the board "
              f"report or `mailbot report compliments --from ...` for the compliments board")
    application = _load(config)
    if what == "compliments":
        from mailbot.reports.compliments import build_board, render_board_html, render_board_pdf

        if fmt == "csv":
            _fail("the compliments board is made as html or pdf")
        with application.db.session() as session:
            board = build_board(session, application.rules, start, last + timedelta(days=1),
                                **({"title": title} if title != "Complaints and compliments report" else {}))
        if fmt == "pdf":
            out.write_bytes(render_board_pdf(board))
        else:
            out.write_text(render_board_html(board), encoding="utf-8")
        console.print(escape(f"{len(board.quotes)} compliment(s) from {board.period}: {fmt.upper()} "
                             f"written to {out}"), highlight=False)
        return
    with application.db.session() as session:
        data = build_report(session, application.rules, start, last + timedelta(days=1), title=title)
    if fmt == "pdf":
        out.write_bytes(render_pdf(data))
    else:
        out.write_text(render_html(data) if fmt == "html" else render_csv(data), encoding="utf-8")
    console.print(escape(f"{data.cases} case(s) from {data.period}: {fmt.upper()} written to {out}"),
                  highlight=False)


auth_app = typer.Typer(help="OAuth2 sign-in for Microsoft 365 mailboxes (device-code flow).",
                        no_args_is_help=True)
app.add_typer(auth_app, name="auth")


def _auth_provider(config: str, section: str):
    """The token provider of [mailbox] or [outgoing] (the kind decides IMAP/SMTP or Graph)."""
    from mailbot.config import load_config
    from mailbot.transport.oauth import provider_from_config

    try:
        cfg = load_config(config)
        use = "graph" if cfg.mailbox.kind == "graph" else "outlook"
        if section == "outgoing" and cfg.outgoing.auth != "oauth2" and cfg.outgoing.kind != "graph":
            _fail("outgoing.auth is not \"oauth2\": nothing to sign in for")
        if section == "mailbox" and cfg.mailbox.kind != "graph" and cfg.mailbox.auth != "oauth2":
            _fail("mailbox.auth is not \"oauth2\" (and mailbox.kind is not \"graph\"): nothing "
                  "to sign in for")
        return provider_from_config(cfg, "mailbox" if cfg.outgoing.kind == "graph" else section, use)
    except ConfigError as exc:
        _fail(str(exc))


@auth_app.command("login")
def auth_login(config: str = ConfigOption,
               section: str = typer.Option("mailbox", "--for", help="mailbox or outgoing")) -> None:
    """Sign in once with a code shown here (oauth_flow = "device_code"); the daemon then renews
    the token from the token cache by itself."""
    from mailbot.transport.oauth import OAuthError

    if section not in ("mailbox", "outgoing"):
        _fail("--for must be mailbox or outgoing")
    provider = _auth_provider(config, section)
    try:
        claims = provider.login(lambda text: console.print(text, highlight=False))
    except OAuthError as exc:
        _fail(escape(str(exc)))
    who = claims.get("preferred_username") or provider.settings.username or "?"
    console.print(f"signed in as {escape(str(who))}; the token is kept in "
                  f"{provider.settings.token_cache} (readable by this user only)", highlight=False)


@auth_app.command("status")
def auth_status(config: str = ConfigOption,
                section: str = typer.Option("mailbox", "--for", help="mailbox or outgoing")) -> None:
    """Get a token now (from the cache or Microsoft Entra ID) and say what it allows."""
    from mailbot.transport.oauth import OAuthError, describe_claims, token_claims

    provider = _auth_provider(config, section)
    try:
        token = provider.token()
    except OAuthError as exc:
        _fail(escape(str(exc)))
    claims = token_claims(token)
    console.print(f"{escape(provider.description)}: token ok"
                  + (f" ({escape(describe_claims(claims))})" if claims else ""), highlight=False)


from mailbot.admin.cli import register as _register_admin_commands  # noqa: E402

_register_admin_commands(app)  # replay, simulate, templates preview, corrections


def main() -> None:  # pragma: no cover
    app()

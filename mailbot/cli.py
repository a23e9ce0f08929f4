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
cases_app = typer.Typer(help="Look at cases.", no_args_is_help=True)
rules_app = typer.Typer(help="Check the rules directory.", no_args_is_help=True)
app.add_typer(cases_app, name="cases")
app.add_typer(rules_app, name="rules")

console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)
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
    from mailbot.pipeline import StorageUnavailable

    _logging(verbose)
    application = _load(config)
    try:
        daemon = Daemon(application)
    except (TransportError, ConfigError) as exc:
        _fail(str(exc))
    try:
        if not once:
            daemon.install_signal_handlers()
            daemon.run_forever()
            return
        try:
            report = daemon.run_once()
        except (TransportError, StorageUnavailable) as exc:
            _fail(str(exc))
        table = Table(title=f"mailbot: {len(report.outcomes)} message(s) handled")
        for column in ("#", "action", "reference", "label", "channel"):
            table.add_column(column, no_wrap=True)
        table.add_column("why", overflow="fold")
        for number, o in enumerate(report.outcomes, 1):
            table.add_row(str(number), o.action, o.reference or "", o.label, o.channel,
                          escape(o.detail[:120]))
        console.print(table)
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


@app.command()
def classify(files: list[Path], config: str = ConfigOption,
             as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
             explain: bool = typer.Option(False, "--explain", help="Show the rules that decided it."),
             rules: Optional[Path] = typer.Option(None, "--rules", help="Rules directory to use.")) -> None:
    """Classify .eml files without storing or sending anything."""
    from mailbot.classify import classify as run_classify
    from mailbot.config import load_config
    from mailbot.intake.parse import ParseError, parse
    from mailbot.policy.rules import load_rules

    review_below = 0.6
    rules_dir = rules
    if rules_dir is None:
        try:
            cfg = load_config(config)
            rules_dir, review_below = cfg.rules.path, cfg.classifier.review_below
        except ConfigError:
            rules_dir = Path("rules")
    try:
        loaded = load_rules(rules_dir)
    except RulesError as exc:
        _fail("the rules are not valid:\n" + "\n".join(f"  - {p}" for p in exc.problems))
    for path in files:
        try:
            msg = parse(path.read_bytes())
        except (OSError, ParseError) as exc:
            result = {"file": str(path), "error": str(exc)}
            print(json.dumps(result)) if as_json else err.print(f"{path}: {exc}")
            continue
        c = run_classify(msg, loaded, review_below)
        result = {"file": str(path), "label": c.label, "channel": c.channel, "flags": c.flags,
                  "reference": c.reference, "confidence": c.confidence,
                  "needs_review": c.needs_review, "reasons": c.reasons}
        if as_json:
            print(json.dumps(result))
        else:
            console.print(f"[bold]{escape(str(path))}[/]: {c.label} via {c.channel}, flags "
                          f"{', '.join(c.flags) or '-'}, reference {c.reference or '-'}, "
                          f"confidence {c.confidence:.2f}{' (needs review)' if c.needs_review else ''}")
            if explain:
                for reason in c.reasons:
                    console.print(f"   - {reason}", highlight=False)


@rules_app.command("check")
def rules_check(directory: Path = typer.Argument(Path("rules"))) -> None:
    """Validate a rules directory; every problem is listed with its file and key."""
    from mailbot.policy.rules import load_rules

    try:
        load_rules(directory)
    except RulesError as exc:
        err.print(f"[bold red]{len(exc.problems)} problem(s) in {directory}:[/]")
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False)
        raise typer.Exit(1)
    console.print(f"{directory}: rules are valid")


def main() -> None:  # pragma: no cover
    app()

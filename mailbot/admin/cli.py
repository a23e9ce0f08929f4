"""The admin commands: ``replay``, ``simulate``, ``templates preview``, ``corrections``.

Kept out of ``mailbot/cli.py`` (which only calls ``register``) so the commands for trying rules
out live beside the code they drive.  They share its conventions: an error a user can fix is
one plain sentence and exit code 2; nothing here sends mail or writes to the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table


def register(app: typer.Typer) -> None:
    from mailbot import cli as base

    console, err, fail = base.console, base.err, base._fail
    config_option = typer.Option(base.DEFAULT_CONFIG, "--config", "-c", help="Config file (TOML).")

    def load(config: str):
        from mailbot.config import ConfigError, load_config

        try:
            return load_config(config)
        except ConfigError as exc:
            fail(str(exc))

    def trial(cfg, rules: Optional[Path], templates: Optional[Path], model: Optional[Path] = None):
        from mailbot.admin.ruleset import RuleSetError
        from mailbot.admin.simulate import trial_app

        try:
            return trial_app(cfg, rules, templates, model)
        except RuleSetError as exc:
            fail(f"the rules in {rules or cfg.rules.path} are not valid:\n"
                 + "\n".join(f"  - {p}" for p in exc.problems))

    # -- simulate ----------------------------------------------------------------------------

    @app.command()
    def simulate(file: Path,
                 rules: Optional[Path] = typer.Option(None, "--rules", help="Rules directory to try (default: the configured one)."),
                 templates: Optional[Path] = typer.Option(None, "--templates", help="Letter templates (default: DIR/templates, else the configured ones)."),
                 model: Optional[Path] = typer.Option(None, "--model", help="Trained model to try."),
                 at: Optional[str] = typer.Option(None, "--at", help="When it arrives: 2026-09-04T18:30 (London time), default now."),
                 as_json: bool = typer.Option(False, "--json"),
                 show_letters: bool = typer.Option(False, "--letters", help="Also print each letter's text."),
                 config: str = config_option) -> None:
        """What one .eml file would do now: its case, letters (to whom, subject) and due dates.
        Nothing is sent or stored."""
        from mailbot.admin.simulate import case_book, parse_when, simulate as run
        from mailbot.intake.parse import ParseError

        cfg = load(config)
        try:
            when = parse_when(at)
        except ValueError:
            fail(f"--at {at!r}: write a date and time such as 2026-09-04T18:30 (London time)")
        try:
            raw = file.read_bytes()
        except OSError as exc:
            fail(f"{file}: {exc.strerror or exc}")
        tried = trial(cfg, rules, templates, model)
        engine = case_book(cfg)
        try:
            plan = run(tried.app, engine, raw, when)
        except ParseError as exc:
            fail(f"{file}: the daemon could not read this mail and would quarantine it: {exc}")
        finally:
            engine.dispose()
            tried.close()
        if as_json:
            print(json.dumps({"file": str(file), **plan.to_json()}, indent=2))
            return
        _print_plan(console, file, plan, show_letters)

    # -- replay ------------------------------------------------------------------------------

    @app.command()
    def replay(rules: Path = typer.Option(..., "--rules", help="The rules directory to try."),
               templates: Optional[Path] = typer.Option(None, "--templates", help="Its letter templates (default: DIR/templates, else the configured ones)."),
               model: Optional[Path] = typer.Option(None, "--model", help="A trained model to try with it."),
               against: Optional[Path] = typer.Option(None, "--against", help="Compare with this rules directory instead of the configured one."),
               since: Optional[str] = typer.Option(None, "--since", help="Only mail received from this date (YYYY-MM-DD)."),
               limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the N most recent messages."),
               as_json: bool = typer.Option(False, "--json"),
               config: str = config_option) -> None:
        """Run stored mail through another rules set and list what would be handled differently
        (label, flags, channel, route, letters, deadlines). Nothing is sent or changed."""
        from mailbot.admin.plan import read_session
        from mailbot.admin.replay import describe_change, received_text, replay as run
        from mailbot.admin.simulate import case_book, parse_when

        cfg = load(config)
        try:
            start = parse_when(since) if since else None
        except ValueError:
            fail(f"--since {since!r}: write a date such as 2026-04-01")
        now_set = trial(cfg, against, None)
        new_set = trial(cfg, rules, templates, model)
        engine = case_book(cfg)
        try:
            with read_session(engine) as session:
                report = run(now_set.app, new_set.app, session, since=start, limit=limit)
                session.rollback()
        finally:
            engine.dispose()
            now_set.close()
            new_set.close()
        if as_json:
            print(json.dumps({"rules": str(rules), "against": str(against or cfg.rules.path),
                              **report.to_json()}, indent=2))
            return
        if report.differences:
            table = Table(title=f"{len(report.differences)} message(s) would be handled differently "
                                f"with {rules}")
            for column in ("message", "received (London)", "case", "subject"):
                table.add_column(column, overflow="fold")
            table.add_column("what would change (now -> new)", overflow="fold")
            for d in report.differences:
                lines = [line for k, (a, b) in d.changes.items() for line in describe_change(k, a, b)]
                table.add_row(str(d.message_id), received_text(d.received), d.case or "-",
                              escape(d.subject[:60]), escape("\n".join(lines)))
            console.print(table)
        skipped = sum(report.skipped.values())
        summary = (f"replayed {report.replayed} message(s): {len(report.differences)} would be handled "
                   f"differently, {report.replayed - len(report.differences)} the same")
        if report.by_field:
            summary += " (" + ", ".join(f"{k}: {n}" for k, n in sorted(report.by_field.items())) + ")"
        if skipped:
            summary += "; skipped " + ", ".join(f"{n} {k}" for k, n in sorted(report.skipped.items()))
        console.print(summary, highlight=False)
        if report.drift:
            console.print(f"note: {len(report.drift)} message(s) were handled differently when they "
                          "arrived than the rules in force would handle them now (the rules or the "
                          "model changed since); the comparison above is with the rules in force.",
                          highlight=False)
        console.print("nothing was sent or changed.")

    # -- templates preview ---------------------------------------------------------------------

    templates_app = typer.Typer(help="Letter templates.", no_args_is_help=True)
    app.add_typer(templates_app, name="templates")

    @templates_app.command("preview")
    def templates_preview(name: str,
                          case: Optional[str] = typer.Option(None, "--case", help="Write it for this case (default: a sample case)."),
                          rules: Optional[Path] = typer.Option(None, "--rules", help="Rules directory (default: the configured one)."),
                          templates: Optional[Path] = typer.Option(None, "--templates", help="Templates (default: DIR/templates, else the configured ones)."),
                          handling: Optional[str] = typer.Option(None, "--handling", help="What the policy made of it, e.g. legal_stop, anonymous_considered."),
                          text: str = typer.Option("", "--text", help="Staff's words, for letters that carry them (outcome, staff_reply)."),
                          html: Optional[Path] = typer.Option(None, "--html", help="Write the HTML part to this file."),
                          config: str = config_option) -> None:
        """Write one letter with a real case or the sample case, to check its wording."""
        from mailbot.admin.plan import read_session
        from mailbot.admin.preview import PreviewError, case_context, render, sample_context
        from mailbot.admin.simulate import case_book
        from mailbot.letters import LetterError

        cfg = load(config)
        tried = trial(cfg, rules, templates)
        try:
            if case:
                engine = case_book(cfg)
                try:
                    with read_session(engine) as session:
                        context = case_context(session, tried.app.rules, case, handling or "normal", text)
                        session.rollback()
                finally:
                    engine.dispose()
            else:
                context = sample_context(tried.app.rules, handling, text)
            letter = render(tried.app.letters, name, context)
        except (PreviewError, LetterError) as exc:
            fail(str(exc))
        finally:
            tried.close()
        console.print(f"[bold]Subject:[/] {escape(letter.subject)}", highlight=False)
        console.print()
        console.print(escape(letter.text), highlight=False, soft_wrap=True)
        if html is not None:
            if letter.html is None:
                err.print(f"{name} has no HTML part ({name}.html.j2): only the text is sent")
            else:
                html.write_text(letter.html, encoding="utf-8")
                console.print(f"HTML written to {html}", highlight=False)

    # -- corrections -------------------------------------------------------------------------

    @app.command("corrections")
    def corrections_cmd(as_json: bool = typer.Option(False, "--json"),
                        export: Optional[Path] = typer.Option(None, "--export", help="Write them as a training file (owner-only)."),
                        config: str = config_option) -> None:
        """Staff corrections of classifications (#reclassify), which
        `mailbot train --include-corrections` learns from."""
        from mailbot.admin import corrections as corr
        from mailbot.admin.plan import read_session
        from mailbot.admin.simulate import case_book

        cfg = load(config)
        engine = case_book(cfg)
        try:
            with read_session(engine) as session:
                found = corr.corrections(session)
                examples = corr.training_examples(session) if export else []
                session.rollback()
        finally:
            engine.dispose()
        if export:
            corr.export(examples, export)
        if as_json:
            print(json.dumps([{"case": c.case, "message": c.message_id, "was": c.was, "label": c.label,
                               "by": c.by, "at": c.at.isoformat(), "erased": c.erased} for c in found], indent=2))
            return
        table = Table(title=f"{len(found)} correction(s)")
        for column in ("case", "message", "classified as", "corrected to", "by", "when (UTC)"):
            table.add_column(column, overflow="fold")
        for c in found:
            table.add_row(c.case, str(c.message_id), c.was, c.label + (" (text erased)" if c.erased else ""),
                          escape(c.by), c.at.strftime("%Y-%m-%d %H:%M"))
        console.print(table)
        if export:
            console.print(f"{len(examples)} training example(s) written to {export}", highlight=False)


def _print_plan(console, file: Path, plan, show_letters: bool) -> None:
    from mailbot.policy.calendar import describe_time

    console.print(f"[bold]{escape(str(file))}[/]: {plan.label} via {plan.channel}, flags "
                  f"{', '.join(plan.flags) or '-'}, reference {plan.reference or '-'}, confidence "
                  f"{plan.confidence:.2f}{' (needs review)' if plan.needs_review else ''}", highlight=False)
    console.print(f"  arrives: {describe_time(plan.received)} (London time)", highlight=False)
    if plan.action == "case_opened":
        what = f"open a new {plan.kind} case {plan.case} (next number), status {plan.status_after}"
    elif plan.action == "added_to_case":
        what = f"join case {plan.case} ({plan.kind}), status {plan.status_before} -> {plan.status_after}"
    elif plan.action == "staff":
        what = f"staff mail{f' about {plan.case}' if plan.case else ''}"
    elif plan.action == "duplicate":
        what = "nothing: this very message was handled before"
    elif plan.action == "own_mail":
        what = "our own mail coming back: recorded, never answered"
    else:
        what = "record it (no case)"
    console.print(f"  would: {escape(what)}; handling {plan.handling}", highlight=False)
    for reason in plan.reasons:
        console.print(f"    - {escape(reason)}", highlight=False)
    if plan.letters:
        console.print("  letters:", highlight=False)
        for letter in plan.letters:
            note = f"  [NOT SENT: {letter.suppressed}]" if letter.suppressed else ""
            console.print(escape(f"    {letter.template} to {', '.join(letter.to)}: \"{letter.subject}\"{note}"),
                          highlight=False)
            if show_letters and letter.text:
                console.print(escape("      | " + letter.text.rstrip().replace("\n", "\n      | ")), highlight=False)
    else:
        console.print("  letters: none", highlight=False)
    if plan.deadlines:
        console.print("  deadlines (London time):", highlight=False)
        for d in plan.deadlines:
            console.print(escape(f"    {d.key()}"), highlight=False)
    if plan.met:
        console.print(f"  meets: {', '.join(plan.met)}", highlight=False)
    for problem in plan.problems:
        console.print(f"  [bold red]problem:[/] {escape(problem)}", highlight=False)
    console.print("  nothing was sent or stored.", highlight=False)

"""``mailbot rules check``: everything that can be known to be wrong before the first mail.

Beyond what loading the rules already checks (spelling of settings, time limits, roles that
exist), this renders every letter the rules name, with sample data and strict variables, in
the two shapes a real letter can take (with and without deadlines and appeal stages).  A typo
in a template is then found by the admin who made it, not by a complainant.
"""

from __future__ import annotations

from pathlib import Path

from mailbot.letters import LetterError, Letters
from mailbot.policy.context import sample_contexts
from mailbot.policy.rules import Rules

# Template names the pipeline uses for messages that have no case (nothing to refer to).
HANDLINGS = ("normal", "compliment", "no_response_abusive", "no_response_anonymous",
             "anonymous_considered", "legal_stop", "legal_pause", "safeguarding", "appeal",
             "appeal_late", "appeal_no_further", "appeal_before_outcome", "appeal_unmatched",
             "withdrawn", "withdrawal_kept_open", "channel_rejected")


def check_templates(rules: Rules, templates: Path) -> list[str]:
    """Problems with the letters the rules name, as 'templates/NAME: message' lines."""
    templates = Path(templates)
    if not templates.is_dir():
        return [f"{templates}: templates directory not found (set [rules] templates in config.toml, "
                f"or give --templates)"]
    letters = Letters(templates)
    problems: list[str] = []
    seen: set[str] = set()
    for key, name in rules.letters_used():
        if name in seen:
            continue
        seen.add(name)
        missing = [f"{name}.{part}.j2" for part in ("subject", "txt")
                   if not (templates / f"{name}.{part}.j2").is_file()]
        if missing:
            problems.append(f"{rules.path or 'rules'}: {key}: the letter {name!r} does not exist: "
                            f"create {' and '.join(str(templates / m) for m in missing)}, "
                            f"or correct the name")
            continue
        error = _first_render_error(letters, rules, name, with_case=not key.startswith("intake."))
        if error:
            problems.append(f"{templates / name}: cannot be written ({key}): {error}")
    from mailbot.scheduler import check_follow_up_letters  # reminders, escalations, reports

    problems += check_follow_up_letters(rules, templates)
    from mailbot.feedback import check_feedback_letters  # consent confirmation, survey

    problems += check_feedback_letters(rules, templates)
    return problems


def roles_without_address(rules: Rules) -> list[str]:
    """Roles the rules use that have no address yet: their mail goes to [staff] notify."""
    used = {role for _, role in rules.used_roles()}
    return sorted(r for r in used if r in rules.roles and not rules.roles[r].addresses)


def _first_render_error(letters: Letters, rules: Rules, name: str, *, with_case: bool) -> str | None:
    """Render the letter in every shape it can take; the first failure, in plain words."""
    channels = ["sms_gateway", "social_media", "email", "web_form"] if not with_case else ["email"]
    for context in sample_contexts(rules, with_case=with_case):
        for handling in HANDLINGS:
            for channel in channels:
                try:
                    letters.render(name, dict(context, handling=handling, channel=channel))
                except LetterError as exc:
                    return str(exc)
    return None

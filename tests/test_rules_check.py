"""`mailbot rules check`: a broken rules directory gets messages a non-programmer can act on,
naming the file and the setting, all problems at once; every preset passes."""

from __future__ import annotations

import shutil

import pytest

from mailbot.policy.rules import RulesError, load_rules, parse_duration
from tests.mailkit import REPO, run_cli

PRESETS = sorted(p.name for p in (REPO / "rules" / "presets").iterdir() if p.is_dir())


def test_there_is_a_preset_for_each_seed_policy():
    assert sorted(p[-3:] for p in PRESETS) == ["000", "001", "002", "003", "004"]


@pytest.mark.parametrize("directory", ["rules"] + [f"rules/presets/{p}" for p in PRESETS])
def test_shipped_rules_and_presets_pass(directory):
    result = run_cli("rules", "check", directory)
    assert result.returncode == 0, result.stderr
    assert "rules are valid" in result.stdout


def _broken(tmp_path, **files: str):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules" / "presets" / "youth-service-000", rules)
    for name, text in files.items():
        path = rules / name.replace("__", ".")
        path.write_text(text)
    return rules


def test_many_mistakes_are_listed_at_once_with_file_and_setting(tmp_path):
    rules = _broken(tmp_path, workflow__toml='''
[complaint]
owner = "line_manger"
acknowledge_within = "3 workdays"
respond_within = "400 days"
acknowledgment_letter = "acknowledgement"

[[complaint.appeals]]
reviewer = "ceo"
window = "0 days"

[legal_action]
handling = "ignore"
''')
    result = run_cli("rules", "check", str(rules))
    assert result.returncode == 1
    out = " ".join(result.stderr.split())
    assert "Traceback" not in out
    wf = f"{rules}/workflow.toml"
    assert (f"{wf}: complaint.acknowledge_within: '3 workdays' is not a time limit: write a number "
            "and one of hours, days or working days") in out, out
    assert f"{wf}: complaint.respond_within: '400 days' is longer than 366 days" in out
    assert f"{wf}: complaint.acknowledgment_letter: unknown setting (check the spelling)" in out
    assert f"{wf}: complaint.appeals#1.window: '0 days': a time limit must be more than 0" in out
    assert f"{wf}: legal_action.handling: Input should be 'stop', 'pause' or 'continue'" in out


def test_an_undefined_role_says_where_to_define_it(tmp_path):
    rules = _broken(tmp_path, workflow__toml='[complaint]\nowner = "line_manger"\n')
    with pytest.raises(RulesError) as caught:
        load_rules(rules)
    assert caught.value.problems == [
        f"{rules}/workflow.toml: complaint.owner: the role 'line_manger' is not defined; add a "
        f"[line_manger] table to {rules}/roles.toml (with its address), or use one of: board, ceo, "
        "line_manager, safeguarding_lead, staff"]


def test_a_missing_template_is_named_with_the_files_to_create(tmp_path):
    rules = _broken(tmp_path)
    text = (rules / "workflow.toml").read_text().replace('late_letter = "appeal_out_of_time"',
                                                        'late_letter = "appeal_too_late"')
    (rules / "workflow.toml").write_text(text)
    result = run_cli("rules", "check", str(rules), "--templates", str(REPO / "templates"))
    assert result.returncode == 1
    out = " ".join(result.stderr.split())
    assert "complaint.appeals#1.late_letter: the letter 'appeal_too_late' does not exist: create" in out
    assert "appeal_too_late.subject.j2 and" in out and "appeal_too_late.txt.j2" in out


def test_a_template_with_a_misspelt_variable_fails_the_check(tmp_path):
    rules = _broken(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    (templates / "thank_you.txt.j2").write_text("Dear {{ greting_name }},\nThank you.\n")
    result = run_cli("rules", "check", str(rules), "--templates", str(templates))
    assert result.returncode == 1
    assert "thank_you: cannot be written (compliment.letter)" in result.stderr
    assert "greting_name" in result.stderr


def test_a_reply_to_social_media_is_refused(tmp_path):
    rules = _broken(tmp_path)
    text = (rules / "workflow.toml").read_text().replace(
        "[intake.social_media]\naccepted = false", '[intake.social_media]\naccepted = false\nreply = "channel_not_accepted"')
    (rules / "workflow.toml").write_text(text)
    with pytest.raises(RulesError) as caught:
        load_rules(rules)
    assert any("intake: social_media: a reply cannot be sent" in p for p in caught.value.problems)


def test_a_refused_channel_needs_signs_to_recognise_it(tmp_path):
    rules = _broken(tmp_path)
    (rules / "channels.toml").unlink()
    with pytest.raises(RulesError) as caught:
        load_rules(rules)
    assert any("intake.sms_gateway: this channel is not accepted, but" in p
               and "has no [sms_gateway] signs" in p for p in caught.value.problems), caught.value.problems


def test_settings_in_two_files_and_bad_times(tmp_path):
    rules = _broken(tmp_path)
    with open(rules / "workflow.toml", "a") as f:
        f.write('\n[office_hours]\nstart = "9am"\n')
    with pytest.raises(RulesError) as caught:
        load_rules(rules)
    joined = "\n".join(caught.value.problems)
    assert f"{rules}/workflow.toml: office_hours: is also set in {rules}/policy.toml" in joined


@pytest.mark.parametrize("text, expected", [
    ("3 working days", "3 working days"), ("1 working day", "1 working day"), ("28 DAYS", "28 days"),
    ("48 hours", "48 hours"), ("by return", "by return"), ("5 working_days", "5 working days"),
])
def test_durations_read_as_written(text, expected):
    assert str(parse_duration(text)) == expected


@pytest.mark.parametrize("text", ["three days", "0 hours", "-1 days", "400 days", "2 weeks", ""])
def test_durations_that_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("preset", sorted(d.name for d in (REPO / "rules" / "presets").iterdir() if d.is_dir()))
def test_presets_recognise_channels_with_the_shipped_signs(preset):
    """An admin who copies a preset into rules/ must not lose channel signs added since the
    preset was written: the signs are recognition, not policy, and are the same everywhere."""
    shipped = (REPO / "rules" / "channels.toml").read_text()
    assert (REPO / "rules" / "presets" / preset / "channels.toml").read_text() == shipped, (
        f"rules/presets/{preset}/channels.toml differs from rules/channels.toml: copy it over")

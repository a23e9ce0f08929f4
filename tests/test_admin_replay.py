"""`mailbot replay`: stored mail through another rules set lists exactly the messages whose
handling would change, and changes nothing.

A history is made through the real pipeline with a controlled clock (tests/policy_story.py):
complaints, a compliment, a relayed text message not yet recognised as one, a legal threat,
an outcome and an appeal inside its window, an out-of-office reply.  Then one rule changes in
a copy of the rules, and replay (the real command line, in a child process) must name those
messages and no others.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from sqlalchemy import inspect, text

from tests.mailkit import run_cli, add_sms_gateway
from tests.policy_story import london, record_outcome_now

COMPLAINT = ("Complaint about the Thursday youth club",
             "I want to make a formal complaint. The Thursday youth club session was cancelled for "
             "the third week running and nobody told the parents. This is not good enough and I "
             "expect an explanation.")
LEGAL = ("Complaint about cancelled sessions", "I wish to complain about the cancelled sessions this "
         "month, which nobody told us about. I have spoken to a solicitor and will be taking legal "
         "action if this is not resolved.")
APPEAL = ("I am not satisfied with the outcome of my complaint and I would like to appeal. Please "
          "pass it to someone more senior for a review of the outcome.")
RELAYED_TEXT = ("Minibus again", "I want to complain, the minibus didnt turn up again today "
                "to take my son to the club. Not good enough")


@pytest.fixture
def history(tmp_path, smtp_server, db_url):
    """A stored history; returns (story, {name: message id})."""
    from tests.policy_story import Story

    story = Story(tmp_path, "youth-service-000", smtp_server, db_url)
    ids = {}

    def mail(name, subject, body, sender, **kw):
        story.mail(subject, body, sender=sender, **kw)
        ids[name] = _last_inbound_id(story)

    story.at(london(2026, 8, 28, 11, 0))
    mail("complaint", *COMPLAINT, sender="Parent <parent@example.com>", expect=("complaint", []))
    story.at(london(2026, 8, 28, 11, 5))
    mail("compliment", "Thank you to Marcus", "A huge thank you to Marcus, he was brilliant with my "
         "son and really helped him get his first job.", sender="Priya <priya@example.com>",
         expect=("compliment", []))
    story.at(london(2026, 8, 28, 11, 10))
    mail("relayed_text", *RELAYED_TEXT, sender="Relay <alerts@relay.textco.example>",
         expect=("complaint", []))
    story.at(london(2026, 8, 28, 11, 15))
    mail("legal", *LEGAL, sender="Litigant <litigant@example.com>", expect=("complaint", ["legal"]))
    ref = story.latest_case().reference  # the legal one
    first = _case_of(story, ids["complaint"])
    story.at(london(2026, 10, 5, 10, 0))
    record_outcome_now(story, first)
    story.at(london(2026, 10, 15, 14, 0))
    mail("appeal", f"Re: [{first}] outcome of my complaint", APPEAL, sender="Parent <parent@example.com>",
         expect=("appeal", []))
    story.at(london(2026, 10, 16, 9, 0))
    mail("out_of_office", "Automatic reply: your complaint", "I am out of the office until Monday.",
         sender="Alan <alan@example.com>", headers={"Auto-Submitted": "auto-replied"})
    assert story.case(first).status == "appeal_acknowledged" and story.case(ref).status == "stopped_legal"
    yield story, ids
    story.close()


def _last_inbound_id(story) -> int:
    from sqlmodel import col, select

    from mailbot.cases.models import Message

    with story.app.db.session() as s:
        return s.exec(select(Message.id).where(col(Message.direction) == "in").order_by(col(Message.id).desc())).first()


def _case_of(story, message_id: int) -> str:
    from mailbot.cases.models import Case, Message

    with story.app.db.session() as s:
        return s.get(Case, s.get(Message, message_id).case_id).reference


def _copy_rules(story, tmp_path, name: str):
    target = tmp_path / name
    shutil.copytree(story.app.config.rules.path, target)
    return target


def _replay(story, rules, *extra) -> dict:
    result = run_cli("replay", "--rules", str(rules), "--json", "--config", str(story.config), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _database_digest(story) -> str:
    """Every row of every table: replay must leave all of it as it was."""
    engine = story.app.db.engine
    digest = hashlib.sha256()
    with engine.connect() as conn:
        for table in sorted(inspect(engine).get_table_names()):
            for row in conn.execute(text(f'SELECT * FROM "{table}" ORDER BY 1')).all():
                digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def test_replay_lists_exactly_the_messages_a_rule_change_affects(history, tmp_path):
    story, ids = history
    before = _database_digest(story)

    # the same rules: nothing would change, and the rules in force reproduce what was done
    same = _replay(story, _copy_rules(story, tmp_path, "same"))
    assert same["replayed"] == len(ids) and same["changed"] == 0 and same["messages"] == []
    assert same["drift"] == 0, same["drift_messages"]

    # a new time limit: only the complaints whose clock to respond started change
    slower = _copy_rules(story, tmp_path, "slower")
    workflow = slower / "workflow.toml"
    workflow.write_text(workflow.read_text().replace('respond_within = "28 days"', 'respond_within = "20 working days"'))
    report = _replay(story, slower)
    assert sorted(m["message"] for m in report["messages"]) == sorted([ids["complaint"], ids["relayed_text"]])
    assert report["changed"] == 2 and report["unchanged"] == len(ids) - 2
    for message in report["messages"]:
        assert set(message["changes"]) == {"deadlines"}
        now, new = message["changes"]["deadlines"]["now"], message["changes"]["deadlines"]["new"]
        assert any("respond: 28 days, due Friday 25 September 2026 at 17:00" in d for d in now)
        assert any("respond: 20 working days, due Friday 25 September 2026" not in d for d in new)
        assert any("respond: 20 working days, due" in d for d in new)

    # a new SMS gateway: only the relayed text message changes, and how
    gateway = _copy_rules(story, tmp_path, "gateway")
    channels = gateway / "channels.toml"
    add_sms_gateway(channels, "textco.example")
    report = _replay(story, gateway)
    assert [m["message"] for m in report["messages"]] == [ids["relayed_text"]]
    changes = report["messages"][0]["changes"]
    assert changes["channel"] == {"now": "email", "new": "sms_gateway"}
    assert changes["action"] == {"now": "case_opened", "new": "recorded"}
    assert changes["handling"]["new"] == "channel_rejected"
    assert any(letter.startswith("channel_not_accepted_sms to alerts@relay.textco.example")
               for letter in changes["letters"]["new"])
    assert changes["deadlines"]["new"] == []

    # the table and its summary, for people
    table = run_cli("replay", "--rules", str(gateway), "--config", str(story.config))
    assert table.returncode == 0, table.stderr
    out = " ".join(table.stdout.split())
    assert "1 message(s) would be handled differently" in out
    assert f"replayed {len(ids)} message(s): 1 would be handled differently, {len(ids) - 1} the same" in out
    assert "nothing was sent or changed" in out

    # --since and --limit narrow it to recent mail
    recent = _replay(story, slower, "--since", "2026-08-28T11:08")
    assert [m["message"] for m in recent["messages"]] == [ids["relayed_text"]]
    assert _replay(story, slower, "--limit", "2")["replayed"] == 2

    assert _database_digest(story) == before  # nothing written, whatever was replayed


def test_replay_judges_an_old_appeal_against_the_case_as_it_stood(history, tmp_path):
    """The appeal arrived inside its 14-day window; the case has moved on since (appeal
    acknowledged).  Replay must meet it with the case as it was then (outcome sent, window
    open): only then does a new reviewer change who is told.  The window itself was stored
    when the outcome went out, so a shorter window in the new rules does not make it late."""
    story, ids = history
    other = _copy_rules(story, tmp_path, "other")
    workflow = other / "workflow.toml"
    workflow.write_text(workflow.read_text().replace('window = "14 days"', 'window = "7 days"')
                        .replace('reviewer = "ceo"', 'reviewer = "board"'))
    report = _replay(story, other)
    changed = {m["message"]: m["changes"] for m in report["messages"]}
    assert set(changed) == {ids["appeal"]}
    assert set(changed[ids["appeal"]]) == {"letters"}  # still an appeal in time, same deadlines
    letters = changed[ids["appeal"]]["letters"]
    assert any(x.startswith("staff_case_update to ceo@example.org") for x in letters["now"])
    assert any(x.startswith("staff_case_update to trustees@example.org") for x in letters["new"])


def test_replay_refuses_a_broken_rules_set(history, tmp_path):
    story, _ = history
    broken = _copy_rules(story, tmp_path, "broken")
    (broken / "workflow.toml").write_text((broken / "workflow.toml").read_text().replace(
        'respond_within = "28 days"', 'respond_within = "28 dayz"'))
    result = run_cli("replay", "--rules", str(broken), "--config", str(story.config))
    assert result.returncode == 2
    assert "workflow.toml: complaint.respond_within" in " ".join(result.stderr.split())
    assert str(broken) in result.stderr and "mailbot-ruleset-" not in result.stderr

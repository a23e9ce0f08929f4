"""The retraining loop: staff correct a classification by email (#reclassify), `mailbot
corrections` lists it, and `mailbot train --include-corrections --eval FOLDER` learns from the
corrected message's prepared text (read from the database, never copied into the repository)
and shows the before and after on a labelled folder."""

from __future__ import annotations

import json
import os

import pytest

from tests.mailkit import REPO, run_cli
from tests.policy_story import Story, london

MESSAGE = ("Marcus", "I must complain that Marcus has been far too kind to my son, he will never want to "
           "leave the club now! Seriously, thank you for everything you do.\n\n"
           "On Mon, 1 Jun 2026 at 10:00, Youth Club <club@example.org> wrote:\n"
           "> Dear parents, the summer programme starts on Monday.\n")


@pytest.fixture
def story(tmp_path, smtp_server, sqlite_url):
    story = Story(tmp_path, "youth-service-000", smtp_server, sqlite_url)
    staff = story.app.config.rules.path / "staff.toml"  # trust our own receiving server's verdict
    staff.write_text(staff.read_text().replace("trusted_authserv_ids = []", 'trusted_authserv_ids = ["mx.example.org"]'))
    from mailbot.app import App

    story.app.close()
    story.app = App.load(story.config)
    yield story
    story.close()


def test_staff_corrections_feed_retraining(story, tmp_path):
    story.at(london(2026, 9, 1, 10, 0))
    story.mail(*MESSAGE, sender="Parent <parent@example.com>")
    case = story.latest_case()
    was = case.kind
    corrected = "compliment" if was != "compliment" else "complaint"

    # a member of staff corrects it from Outlook, in the case's thread
    story.at(london(2026, 9, 1, 11, 0))
    story.mail(f"RE: [{case.reference}] New {was}: Marcus", f"#reclassify {corrected}\n",
               sender="Line Manager <line.manager@example.org>",
               headers={"Authentication-Results": "mx.example.org; dkim=pass header.d=example.org"})
    assert "reclassified" in story.events(case.reference)

    listed = run_cli("corrections", "--json", "--config", str(story.config))
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert (item["case"], item["was"], item["label"], item["by"]) == (
        case.reference, was, corrected, "line.manager@example.org")

    exported = tmp_path / "private" / "corrections.jsonl"
    run = run_cli("corrections", "--export", str(exported), "--config", str(story.config))
    assert run.returncode == 0, run.stderr
    [line] = [json.loads(x) for x in exported.read_text().splitlines()]
    assert line["label"] == corrected and "far too kind" in line["body"]
    assert "summer programme" not in line["body"]  # the prepared text: the quoted history is not theirs
    assert oct(os.stat(exported).st_mode & 0o777) == "0o600"

    training = sorted(p.name for p in (REPO / "rules" / "training").iterdir())
    model_dir = tmp_path / "model"
    result = run_cli("train", "--include-corrections", "--epochs", "2", "--rules", str(REPO / "rules"),
                     "--out", str(model_dir), "--eval", str(REPO / "tests" / "data" / "unseen-mail"),
                     "--config", str(story.config), timeout=900)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "including 1 staff correction(s) from the database" in out
    assert "before and after (150 messages)" in out and "macro-F1" in out and "recall safeguarding" in out
    assert (model_dir / "meta.json").is_file()
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["mailbot"]["examples"] == int(out.split("trained on ")[1].split()[0])
    assert sorted(p.name for p in (REPO / "rules" / "training").iterdir()) == training  # nothing copied

    # the new model is used like any other (mailbot eval --model, or classifier.model_path)
    evaluated = run_cli("eval", str(REPO / "tests" / "data" / "unseen-mail"), "--model", str(model_dir),
                        "--rules", str(REPO / "rules"), "--json", "--config", str(story.config))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["messages"] == 150

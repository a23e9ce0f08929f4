"""Classification: text preparation, the JSON contract of `mailbot classify`, rules errors,
training, and regression guards measured on mail the project never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailbot.classify import Classifier, find_reference
from mailbot.classify import model as model_mod
from mailbot.classify.prepare import prepare
from mailbot.intake.parse import parse
from mailbot.policy.rules import RulesError, load_rules
from tests.mailkit import REPO, make_mail, run_cli

UNSEEN = REPO / "tests" / "data" / "unseen-mail"


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(load_rules(REPO / "rules"))


def test_gmail_reply_keeps_only_new_text_and_quoted_part_stays_available():
    text = ("I'm still not happy, please pass this to someone more senior.\n\n"
            "On Tue, 3 Mar 2026 at 10:02, Complaints Team <complaints@example.org> wrote:\n"
            "> Dear Ms Shah,\n> The outcome of complaint CMP-2026-00042 is that...\n")
    prepared = prepare(text)
    assert prepared.new_text == "I'm still not happy, please pass this to someone more senior."
    assert "CMP-2026-00042" in prepared.quoted


def test_outlook_block_signature_and_disclaimer_are_cut():
    text = ("Please withdraw my complaint, it has been sorted.\n\nKind regards\nJo\n"
            "Sent from my iPhone\n\n"
            "________________________________\nFrom: Complaints Team <complaints@example.org>\n"
            "Sent: 02 March 2026 09:00\nTo: Jo <jo@example.com>\nSubject: [CMP-2026-00007] received\n\n"
            "We have received your complaint.\n")
    prepared = prepare(text)
    assert "Sent from my iPhone" not in prepared.new_text
    assert "We have received" not in prepared.new_text and "We have received" in prepared.quoted
    assert prepared.new_text.startswith("Please withdraw my complaint")
    disclaimer = ("The room was filthy.\n\nThis email and any attachments are confidential and "
                  "intended solely for the addressee.\n")
    assert prepare(disclaimer).new_text == "The room was filthy."


def test_web_form_and_sms_relays_yield_the_persons_words():
    form = ("You have a new response to your form \"Get in touch\".\n\nYour name\nSam Reid\n\n"
            "Your email\nsam@example.com\n\nYour message\nThe minibus left my son behind.\n\n"
            "Response ID: 991\n")
    assert prepare(form, "web_form").new_text == "The minibus left my son behind."
    sms = "appt cancelled again not good enough\n\n--\nSent via TextRelay SMS.\nMessage ID: TR-1234\n"
    assert prepare(sms, "sms_gateway").new_text == "appt cancelled again not good enough"


def test_reference_found_in_subject_body_or_quote_only(classifier):
    rules = classifier.rules
    assert find_reference(rules, "Re: [CMP-2026-00042] outcome", "", "") == "CMP-2026-00042"
    assert find_reference(rules, "Re: your letter", "new text", "> ref cmp-2025-00117") == "CMP-2025-00117"
    assert find_reference(rules, "withdraw", "pls withdraw complaint ref 00144 thx", "") == "00144"
    assert find_reference(rules, "hi", "call me on 07700 900123", "") is None


def test_classify_json_contract_on_sample_inbox():
    files = sorted((REPO / "examples" / "inbox" / "new").iterdir())
    result = run_cli("classify", "--json", "--config", "/nonexistent.toml", *map(str, files))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(files)
    for row in rows:
        assert set(row) == {"file", "label", "channel", "flags", "reference", "confidence",
                            "needs_review", "reasons"}
        assert 0 <= row["confidence"] <= 1 and isinstance(row["needs_review"], bool)
        assert isinstance(row["flags"], list) and isinstance(row["reasons"], list)
    by_name = {Path(r["file"]).name.split(".")[0]: r for r in rows}
    assert by_name["1763900001"]["label"] == "complaint"
    assert by_name["1763900003"]["label"] == "compliment"
    assert by_name["1763900004"]["channel"] == "auto_reply" and by_name["1763900004"]["label"] == "other"
    assert by_name["1763900005"]["label"] == "other"


def test_explain_names_the_rules_and_scores(tmp_path):
    path = tmp_path / "m.eml"
    path.write_bytes(make_mail(subject="my son", body="My son came home with bruises from the club "
                                                     "and the leader told him not to tell anyone."))
    result = run_cli("classify", "--explain", "--config", "/nonexistent.toml", str(path))
    assert result.returncode == 0, result.stderr
    assert "safeguarding" in result.stdout and "model:" in result.stdout and "flag safeguarding" in result.stdout


def test_safeguarding_errs_on_the_side_of_flagging(classifier):
    for body in ("The volunteer keeps messaging my 14 year old daughter on Snapchat late at night.",
                 "Nobody was there to collect the kids so my girl walked home alone in the dark.",
                 "Mum has dementia and your volunteer keeps asking her for her bank card."):
        result = classifier.classify(parse(make_mail(subject="concern", body=body)))
        assert "safeguarding" in result.flags, (body, result.reasons)


def test_broken_pattern_rules_give_file_and_key(tmp_path):
    rules = tmp_path / "rules"
    (rules / "classifier").mkdir(parents=True)
    (rules / "classifier" / "patterns.toml").write_text(
        '[labels.apeal]\nphrases = ["x"]\n[flags.legal]\nthreshold = 2\n')
    from mailbot.classify.patterns import load_patterns

    with pytest.raises(RulesError) as err:
        load_patterns(rules)
    text = "\n".join(err.value.problems)
    assert "patterns.toml: labels: unknown label 'apeal'" in text
    assert "flags.legal.threshold" in text


def test_train_writes_a_model_that_classifies(tmp_path):
    rules = tmp_path / "rules"
    (rules / "training").mkdir(parents=True)
    lines = []
    for i in range(8):
        lines.append({"subject": "", "body": f"The staff were rude and the session was cancelled {i}",
                      "label": "complaint", "flags": []})
        lines.append({"subject": "", "body": f"Thank you so much, the team were brilliant {i}",
                      "label": "compliment", "flags": []})
    (rules / "training" / "mine.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    out = tmp_path / "model"
    result = run_cli("train", "--rules", str(rules), "--out", str(out), "--epochs", "5",
                     "--config", "/nonexistent.toml")
    assert result.returncode == 0, result.stderr
    assert "trained on 16 examples" in result.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["mailbot"]["examples"] == 16
    c = Classifier(load_rules(REPO / "rules"), out)
    assert c.classify(parse(make_mail(body="Thank you, brilliant team"))).label == "compliment"
    (rules / "training" / "bad.jsonl").write_text('{"body": "x", "label": "complaynt"}\n')
    bad = run_cli("train", "--rules", str(rules), "--out", str(out), "--config", "/nonexistent.toml")
    assert bad.returncode == 2 and "bad.jsonl:1: label 'complaynt'" in bad.stderr


def test_shipped_model_is_trained_on_the_current_training_data():
    examples = model_mod.load_training(REPO / "rules" / "training")
    meta = json.loads((model_mod.SHIPPED_MODEL / "meta.json").read_text())
    assert meta["mailbot"]["training_fingerprint"] == model_mod.training_fingerprint(examples), (
        "rules/training changed: run `mailbot train --out mailbot/classify/model` and commit it")


def test_quality_on_mail_never_trained_on():
    """A regression guard on the project's own held-out mail (see tests/data/unseen-mail)."""
    result = run_cli("eval", str(UNSEEN), "--json", "--config", "/nonexistent.toml")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["messages"] == 150
    assert report["macro_f1"] >= 0.93
    assert report["flags"]["safeguarding"]["recall"] == 1.0  # a missed concern is a serious harm
    assert report["flags"]["legal"]["recall"] >= 0.95
    assert report["channel_accuracy"] >= 0.98
    assert set(report["confusion"]) == {"complaint", "compliment", "appeal", "withdrawal", "other"}


@pytest.mark.parametrize("sender, subject, headers, body, channel", [
    ("+447700900123 <447700900123@relay.example.net>", "SMS from +447700900123", {}, "late again", "sms_gateway"),
    ("Hub <inbound@hub.example.net>", "message", {"X-Hub-SMS-From": "+447700900954"}, "thanks", "sms_gateway"),
    ("Nextdoor <no-reply@rs.email.nextdoor.example.com>", "posts", {}, "digest", "social_media"),
    ("Typeform <notifications@typeform.example.com>", "Contact us: New response from Eleri", {}, "x", "web_form"),
    ("Site <wordpress@org.example.org>", "[Site] Concern", {}, "Message Body:\nhelp\n", "web_form"),
    ("Jo <jo@example.com>", "Automatic reply: your letter", {}, "away", "auto_reply"),
    ("Jo <jo@example.com>", "My complaint", {}, "I was sent by SMS a reminder that never came true.", "email"),
    ("Jo <jo@example.com>", "My complaint", {"Auto-Submitted": "no"}, "rude staff", "email"),
])
def test_channel_rules(classifier, sender, subject, headers, body, channel):
    msg = parse(make_mail(sender=sender, subject=subject, headers=headers, body=body))
    assert classifier.classify(msg).channel == channel


def _shingles(text: str, n: int = 4) -> set[str]:
    import re

    words = re.findall(r"[a-z0-9']+", text.lower())
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_training_data_does_not_copy_held_out_mail():
    """Held-out mail must stay unseen: no training example may share 30% of its word 4-grams
    with a message of the project's held-out sets (unseen-mail, fresh-mail, or shared/eval-dev
    when present)."""
    held = []
    for folder in (UNSEEN, REPO / "tests" / "data" / "final-mail", REPO / "tests" / "data" / "fresh-mail", REPO.parent / "shared" / "eval-dev"):
        for path in sorted(folder.glob("*.eml")) if folder.is_dir() else []:
            msg = parse(path.read_bytes())
            held.append((path.name, _shingles(f"{msg.subject} {msg.text}")))
    copies = []
    for ex in model_mod.load_training(REPO / "rules" / "training"):
        grams = _shingles(f"{ex.subject} {ex.body}")
        for name, other in held:
            if grams and len(grams & other) / len(grams) >= 0.3:
                copies.append(f"{ex.source} ~ {name}")
                break
    assert copies == []

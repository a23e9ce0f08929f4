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


@pytest.mark.parametrize("sender, subject, headers, body, channel", [
    # SMS gateways: a phone number in the address, the subject or the relay's own lines; a gateway header
    ("ReplyHub <sms+447700900311@replyhub.example.net>", "Inbound", {}, "bus late again", "sms_gateway"),
    ("Gateway <relay@gw.example.net>", "Text from +447700900412", {}, "where is my refund", "sms_gateway"),
    ("Gateway <relay@gw.example.net>", "Forwarded", {}, "07700 900 515 (03/02/2026 09:14):\nno one came", "sms_gateway"),
    ("Relay <in@relay.example.net>", "message", {"X-Relay-Virtual-Number": "07700900010"}, "hi", "sms_gateway"),
    ("5550104477@vtext.com", "", {}, "driver never showed", "sms_gateway"),
    # social networks and review sites, directly or through a social inbox tool
    ("X <info@x.example.com>", "Your highlights this week", {}, "Top posts", "social_media"),
    ("Desk <alerts@desk.example.com>", "New Instagram comment from sam_k", {}, "x", "social_media"),
    ("Trustpilot <noreply@trustpilot.com>", "Someone reviewed you", {}, "1 star", "social_media"),
    ("Desk <alerts@desk.example.com>", "Update", {"X-Desk-Social-Network": "tiktok"}, "x", "social_media"),
    # web-form services
    ("Google Forms <forms-receipts-noreply@google.com>", "Feedback form", {}, "x", "web_form"),
    ("Microsoft Forms <no-reply@forms.office.com>", "New responses have been received for your form", {}, "x",
     "web_form"),
    ("Site <noreply@club.example.org>", "Website message", {}, "Message: hi\n\nPowered by Jotform", "web_form"),
    ("Formspree <noreply@formspree.io>", "Club site", {}, "x", "web_form"),
    # auto-replies in other languages, and by their headers
    ("Ana <ana@example.es>", "Respuesta automática: su queja", {}, "x", "auto_reply"),
    ("Aled <aled@example.cymru>", "Ateb awtomatig: CMP-2026-00001", {}, "x", "auto_reply"),
    ("Jo <jo@example.com>", "Re: your letter", {"Precedence": "auto_reply"}, "x", "auto_reply"),
    ("Jo <jo@example.com>", "Re: your letter", {"X-Autorespond": "yes"}, "x", "auto_reply"),
    ("Jo <jo@example.com>", "Read: Outcome of your complaint", {}, "x", "auto_reply"),
    # people who write about texts, posts and forms are still writing email; so is a newsletter
    ("Jo <jo@example.com>", "No reply", {}, "I tried to text 07700 900123 three times and nobody answered.", "email"),
    ("Jo <jo@example.com>", "Your Facebook post", {}, "Your Facebook post about the fun day named my son.", "email"),
    ("Jo <jo@example.com>", "Your website", {}, "Your contact form doesn't work, so I'm emailing.", "email"),
    ("News <news@charity.example.org>", "Winter newsletter", {"Precedence": "bulk"}, "Our news", "email"),
])
def test_channel_signs_generalise(classifier, sender, subject, headers, body, channel):
    msg = parse(make_mail(sender=sender, subject=subject, headers=headers, body=body))
    assert classifier.classify(msg).channel == channel


def test_a_read_receipt_or_delivery_report_is_an_auto_reply(classifier):
    raw = (b"From: Sam <sam@example.net>\r\nTo: complaints@example.org\r\nSubject: Your letter\r\n"
           b"Message-ID: <r1@example.net>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/report; report-type=disposition-notification; boundary=\"b\"\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nThe message was displayed.\r\n"
           b"--b\r\nContent-Type: message/disposition-notification\r\n\r\nDisposition: manual-action/MDN-sent-manually; displayed\r\n"
           b"--b--\r\n")
    result = classifier.classify(parse(raw))
    assert (result.channel, result.label) == ("auto_reply", "other")


@pytest.mark.parametrize("subject, body", [
    ("Feedback on the holiday club", "The lunches were fine and the trips were fun. The booking site was slow. "
     "One more thing: Mia (6) said a helper locked her in the store cupboard for being naughty. Thanks, Dee"),
    ("Dad's day centre", "My father has dementia. He was given another client's tablets at lunch and slept all evening."),
    ("", "my lad is 13 and he says hes scared to go home cos of his stepdad. he told the youth worker and nothing happened"),
    ("Mentoring", "The mentor keeps sending my daughter messages at midnight and asked her to keep it between them."),
    ("Camp", "Our son came home with unexplained bruises on his back and the leaders say they know nothing about it."),
    ("", "Your worker was alone with the children in the minibus for hours and wouldn't let them call home."),
    ("Still waiting", "Four months on your waiting list. Honestly I don't want to be here anymore. Nobody calls back."),
    ("After school club", "A 5 year old went missing from the club on Tuesday and was found by a stranger on the main road."),
])
def test_safeguarding_signs_are_flagged_in_any_wording(classifier, subject, body):
    msg = parse(make_mail(subject=subject, body=body))
    assert "safeguarding" in classifier.classify(msg).flags


def test_a_bulletin_about_safeguarding_training_is_not_a_concern(classifier):
    body = ("Spring bulletin. Safeguarding training for volunteers: recognising abuse, neglect, grooming and "
            "exploitation, 4 March, online. Book your place. Small grants for children's projects reopen in April.")
    msg = parse(make_mail(sender="News <news@network.example.org>", subject="Spring bulletin", body=body,
                          headers={"Precedence": "bulk"}))
    assert "safeguarding" not in classifier.classify(msg).flags


@pytest.mark.parametrize("body, abusive", [
    ("Pay my deposit back or I'll be waiting for you outside when you lock up.", True),
    ("Tell your manager to watch his back. People round here know where he drinks.", True),
    ("You'll regret the day you crossed me, all of you.", True),
    ("Your so-called team are spineless cowards covering for each other.", True),
    ("shes a stuck up cow and a liar", True),
    ("Two faced snake, that's what your manager is.", True),
    ("Tell the caretaker if he blocks my van in again I'll put his windows through.", True),
    ("Your warden is a vindictive little man who enjoys making people wait.", True),
    ("that receptionist is a b*tch and everyone knows where she parks", True),
    ("Your handling of my case was incompetent, slow and unfair. I am furious and want a senior review.", False),
    ("This service is a shambles and your letter is a disgrace to the charity.", False),
])
def test_abuse_aimed_at_staff_not_strong_criticism(classifier, body, abusive):
    msg = parse(make_mail(subject="Complaint", body=body))
    assert ("abusive" in classifier.classify(msg).flags) is abusive


@pytest.mark.parametrize("sender, body, anonymous", [
    ("Concerned parent <cp.2026@example.com>", "The club gate is left open every evening.", True),
    ("worried.resident@example.net", "The hall bins are overflowing again.", True),
    ("Sam <sam@mailinator.com>", "The volunteer on the till overcharges people.", True),
    ("Jo Bloggs <jo@example.com>", "The shop prices keep changing.\n\nA regular volunteer", True),
    ("Jo Bloggs <jo@example.com>", "I don't want to be identified, but the rota is unfair.", True),
    ("Parent <parent@example.com>", "The bus to the holiday club was late again.", False),
    ("Farah Siddiqui <farah@example.com>", "Please keep this confidential from the team for now. The rota is unfair.\n\n"
     "Farah Siddiqui", False),
])
def test_anonymous_writers_are_recognised(classifier, sender, body, anonymous):
    msg = parse(make_mail(sender=sender, subject="Complaint", body=body))
    assert ("anonymous" in classifier.classify(msg).flags) is anonymous


def test_a_form_sent_without_a_name_is_anonymous(classifier):
    body = "Name: (not given)\nEmail: reply@example.net\nMessage: The toilets at the hall have been broken for a month.\n"
    msg = parse(make_mail(sender="WordPress <wordpress@club.example.org>", subject="New submission", body=body))
    result = classifier.classify(msg)
    assert result.channel == "web_form" and "anonymous" in result.flags


def _shingles(text: str, n: int = 4) -> set[str]:
    import re

    words = re.findall(r"[a-z0-9']+", text.lower())
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_training_data_does_not_copy_held_out_mail():
    """Held-out mail must stay unseen: no training example may share 30% of its word 4-grams
    with a message of any of the project's held-out sets (every folder of tests/data, and
    shared/eval-dev when present)."""
    held = []
    folders = sorted(d for d in (REPO / "tests" / "data").iterdir() if d.is_dir())
    assert UNSEEN in folders and len(folders) >= 6
    for folder in (*folders, REPO.parent / "shared" / "eval-dev"):
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


@pytest.mark.parametrize("body, flag, expected", [
    # safeguarding, understated: a partner who watches, a frail adult's fall, a young carer, consent
    ("Please drop my complaint. My boyfriend goes through my phone and doesn't like me talking to you.",
     "safeguarding", True),
    ("My gran lives alone and she fell twice this month; she lay on the floor for an hour before anyone came.",
     "safeguarding", True),
    ("My aunt has Alzheimer's and a collector signed her up to a direct debit on the doorstep.", "safeguarding", True),
    # legal, in the words people use rather than "solicitor"
    ("If the deposit is not returned I will pursue this through the courts.", "legal", True),
    ("I've signed up with a no win no fee firm about my fall on your steps.", "legal", True),
    ("I am reserving my position regarding a claim under the Equality Act.", "legal", True),
    ("My solicitor friend said it was not worth the bother, so please close it.", "legal", False),
    ("Thanks to your adviser I won my employment tribunal last week.", "legal", False),
    # abusive: threats and insults aimed at a person, not criticism of the service
    ("If that man rings my dad again he'll regret it.", "abusive", True),
    ("Your receptionist is a judgmental cow.", "abusive", True),
    ("The worker is a snake and a liar.", "abusive", True),
    ("She should go back to wherever she came from.", "abusive", True),
    ("Your reply was slow, muddled and frankly insulting. I want a senior manager to look again.", "abusive", False),
    # anonymous, reported by staff or said plainly
    ("Phone complaint logged by reception: the caller would not give her name.", "anonymous", True),
    ("I don't want to say who I am, but the café fridge is never checked.", "anonymous", True),
])
def test_flag_wording_families_generalise(classifier, body, flag, expected):
    msg = parse(make_mail(subject="About the centre", body=body))
    assert (flag in classifier.classify(msg).flags) is expected


@pytest.mark.parametrize("body, flag, expected", [
    # safeguarding by structure: a person who may be at risk near a strong sign of harm, whatever the words
    ("My grandad came home from your day centre with a cut on his head and nobody could tell us how.",
     "safeguarding", True),
    ("Our little girl (4) was found on her own in the car park at pick-up. No one had noticed she'd gone.",
     "safeguarding", True),
    ("My mum (79) was sent home at midnight in her nightie and left in a taxi with nobody there to meet her.",
     "safeguarding", True),
    ("The man next door wasn't answering, the neighbours got in and he was on the floor, he'd been there all night.",
     "safeguarding", True),
    # kind letters use the same words: a death in a hospice, a mum who cried with happiness
    ("Thank you to the hospice nurses. Dad died peacefully and Mum cried when she read your card.",
     "safeguarding", False),
    # legal: a step towards the courts and the intent to take it, in one sentence
    ("I will be taking advice on bringing proceedings under the Equality Act.", "legal", True),
    ("My union rep and I are preparing an unfair dismissal claim to the employment tribunal.", "legal", True),
    ("I was at my solicitor's all week sorting out Mum's will, so I could not chase you sooner.", "legal", False),
    ("The hall at Willow Court was left filthy after the party and I want to complain.", "legal", False),
    # abusive: a member of staff watched or threatened, not a service criticised
    ("I know what time that receptionist finishes and which way she walks home. Think about it.", "abusive", True),
    ("Your adviser wants a good slap. Tell him to watch himself at the bus stop.", "abusive", True),
    ("Your service is a joke and the letter was a disgrace. I want a proper answer.", "abusive", False),
])
def test_structural_flag_rules(classifier, body, flag, expected):
    msg = parse(make_mail(subject="About the centre", body=body))
    assert (flag in classifier.classify(msg).flags) is expected


def test_a_bulletin_about_grooming_and_neglect_is_not_a_concern(classifier):
    body = ("Partner bulletin. New course: spotting neglect and grooming of children and young people, online, 3 May. "
            "Places are free for member organisations.")
    msg = parse(make_mail(sender="News <news@network.example.org>", subject="Partner bulletin", body=body,
                          headers={"List-Id": "<partners.network.example.org>"}))
    assert "safeguarding" not in classifier.classify(msg).flags


@pytest.mark.parametrize("body, expected", [
    # an answer already given, disputed, with no registration number: an appeal
    ("I had a letter from your manager saying the matter was dealt with. It hasn't been, and I want someone "
     "higher up to look at it again.", "appeal"),
    # an earlier complaint mentioned but no answer disputed: still a complaint
    ("I want to complain about the state of the toilets at the community centre, they were filthy on Saturday.",
     "complaint"),
])
def test_an_earlier_answer_disputed_is_an_appeal(classifier, body, expected):
    msg = parse(make_mail(subject="The centre", body=body))
    assert classifier.classify(msg).label == expected


def test_review_site_anonymous_writer_but_not_a_named_form(classifier):
    review = parse(make_mail(sender="Reviews <noreply@reviews.example.com>", subject="You have a new review",
                             body="Two stars\n\nby Anonymous, GB\n\nWaited three weeks for a call back that never came."))
    assert "anonymous" in classifier.classify(review).flags
    parent = parse(make_mail(sender="Parent <parent.smith@example.com>", subject="Swimming",
                             body="The pool was freezing again on Tuesday and the session was cut short. Please sort it."))
    assert "anonymous" not in classifier.classify(parent).flags


def test_social_accounts_made_to_accuse_are_anonymous_but_a_person_called_x_writes_email(classifier):
    post = parse(make_mail(sender="X <notify@x.com>", subject="You were mentioned in a post by @town_truth_99",
                           body="@town_truth_99 mentioned you\n\n\"the staff on the desk at the hub are rude to everyone\""))
    result = classifier.classify(post)
    assert result.channel == "social_media" and "anonymous" in result.flags
    mail = parse(make_mail(sender="x <starlight.x2010@gmail.com>", subject="thanks",
                           body="this is for the lady at the youth club. i wont put my name but thank u for listening."))
    result = classifier.classify(mail)
    assert result.channel == "email" and "anonymous" in result.flags


def test_a_neighbour_not_seen_for_days_is_a_safeguarding_concern(classifier):
    msg = parse(make_mail(subject="flat 9", body="The lady in flat 9 hasn't been seen for days, her curtains are shut "
                                                  "and her neighbours are worried. Your warden hasn't been round."))
    assert "safeguarding" in classifier.classify(msg).flags


@pytest.mark.parametrize("body, expected", [
    # by category, mentioned in passing inside a letter about something else
    ("The car park is always full by 9 so I end up late. Also my wife has started locking me out of the house when "
     "I'm late back and I've slept in the shed twice this month. I'm 74.", True),
    ("can u send the form again, my stepdad ripped the last one up. he says if i go to counselling ill be out on my "
     "ear. im 16", True),
    ("The 7pm bus from the youth club has been cut. My daughter waits at the stop in the dark and last week a car "
     "kept circling and a man asked if she wanted to earn some money.", True),
    ("Re the hardship grant - please pay it into my sister's account. My partner has access to mine and took my "
     "last payment, I had to borrow for the baby's milk.", True),
    ("Your tenancy worker hasn't visited for a month. Mum's new lodger has moved his friends in and she's living in "
     "her bedroom, frightened to come out.", True),
    ("Lovely staff at the craft club. I should mention my dad's new carer takes him to the bookies with his pension "
     "and he comes home with nothing.", True),
    ("My dad can't use the stairs and the lift at the hall is broken again. Please fix it.", False),
    ("Someone keeps parking in the disabled bay at the centre. My husband is a blue badge holder.", False),
])
def test_safeguarding_categories_in_passing(classifier, body, expected):
    msg = parse(make_mail(subject="About the centre", body=body))
    assert ("safeguarding" in classifier.classify(msg).flags) is expected


def test_flags_only_examples_are_checked_and_fingerprinted(tmp_path):
    line = {"subject": "", "body": "He checks my phone.", "label": "complaint", "flags": ["safeguarding"]}
    (tmp_path / "a.jsonl").write_text(json.dumps({**line, "flags_only": True}) + "\n")
    flagged = model_mod.load_training(tmp_path)
    assert flagged[0].flags_only
    (tmp_path / "a.jsonl").write_text(json.dumps(line) + "\n")
    plain = model_mod.load_training(tmp_path)
    assert model_mod.training_fingerprint(flagged) != model_mod.training_fingerprint(plain)
    (tmp_path / "a.jsonl").write_text(json.dumps({**line, "flags_only": "yes"}) + "\n")
    with pytest.raises(model_mod.TrainingDataError, match="flags_only"):
        model_mod.load_training(tmp_path)


@pytest.mark.parametrize("body, expected", [
    # a threat said under a condition is still a threat
    ("If the damage to my car is not paid for by Friday I will take you to the small claims court.", True),
    ("If not, I will go to lawyer about this.", True),
    # a threat said not to be one is not
    ("I'm not going to sue anyone, I just want the heating fixed and an apology.", False),
    ("No legal action from me, I only want my son's place back.", False),
    ("I have no choice but to take legal action now.", True),
    # someone called Sue is not a lawsuit
    ("Sue contacted me on Tuesday and said the coordinator would ring back, she never did.", False),
    # legal advice in more words
    ("I went to the law centre yesterday and they say your notice was not served properly.", True),
    ("If I hear nothing by the 10th I will be taking advice on a claim for the fees.", True),
    ("My brother-in-law read your letter and says it would not stand up for a minute.", True),
    ("My solicitor said the house sale will complete in May, so I can start on the 1st.", False),
])
def test_legal_threats_in_their_many_words(classifier, body, expected):
    msg = parse(make_mail(subject="The centre", body=body))
    assert ("legal" in classifier.classify(msg).flags) is expected


def test_a_forms_other_prose_answers_are_read_too(classifier):
    """A review form whose threat of a claim sits in a field not called "message"."""
    body = ("Submission from: Ask for a review\n\nName: Tomasz Nowak\nEmail: t.nowak@example.com\n"
            "Reason for review: The outcome ignores the water damage to my sofa and carpet.\n"
            "Outcome sought: Repair\n"
            "Have you taken any advice?: Yes, I have instructed solicitors to act for me on the damage.\n")
    msg = parse(make_mail(sender="Jotform <noreply@jotform.com>", subject="Form submission: Ask for a review",
                          body=body))
    result = classifier.classify(msg)
    assert result.channel == "web_form" and "legal" in result.flags
    assert "instructed solicitors" in prepare(msg.text, "web_form", msg.subject).new_text


@pytest.mark.parametrize("sender, subject, body", [
    # a social notification that names a role, not a person
    ("Facebook <notification@facebookmail.com>", "Angry Dad commented on your post",
     "Angry Dad commented on your post:\n\"nobody turned up to coach the under 9s again\""),
    # a form's name answer written "(Empty)" on the line under the question
    ("Website <noreply@club.example.org>", "New Entry: Feedback",
     "Name\n(Empty)\n\nYour feedback\nThe new coach is brilliant and the kids love the Friday sessions."),
    # a numbered form question "What's your name?" answered "Anonymous"
    ("Typeform <notifications@typeform.example.com>", "New response to Feedback",
     "1 → What's your name?\nAnonymous\n\n2 → What went wrong?\nThe lift was broken and nobody told us."),
    # a role with a clause after it, as sender name and signature
    ("a mum who sees everything <sees.all@example.com>", "the nursery",
     "Staff are on their phones in the garden while the toddlers climb the fence.\n\nA mum who sees everything"),
])
def test_anonymous_in_more_shapes(classifier, sender, subject, body):
    msg = parse(make_mail(sender=sender, subject=subject, body=body))
    assert "anonymous" in classifier.classify(msg).flags


def test_an_enquiry_can_be_anonymous_too(classifier):
    msg = parse(make_mail(sender="A well-wisher <wellwisher22@example.com>", subject="Giving quietly",
                          body="Could I give £200 to the food bank without my name going on any list? How do I do it?"
                               "\n\nA well-wisher"))
    assert "anonymous" in classifier.classify(msg).flags


@pytest.mark.parametrize("body", [
    "pls drop it, he says he'll get sacked. he's the only one who gets me. dont tell him i messaged",
    "Thanks to the night team. Last winter I'd had enough and took all my tablets, and your worker found me and "
    "waited with me for the ambulance.",
    # an overdose told in passing, by a carer asking to stop her complaint
    "Please close my complaint for now. I'm in hospital, I took too many of my dad's painkillers on Friday.",
    # a teenager and a much older man met online
    "cancel it, i dont need your help. im 16 and im moving in with my boyfriend, hes 29, met him on snapchat",
    # an old man's nephew holds his pension card and keeps visitors away
    "My uncle is 88. His nephew keeps his pension card now and doesn't like people coming round when he's in.",
    # a mother moved against her will, her account signed over to a son
    "Please withdraw it. Her son has had her sign something at the bank and is moving her against her will.",
    # a baby ill in a damp, mouldy flat the landlord will not fix
    "The mould in the bedroom is back and water comes in round the window. The baby is 5 months old and the "
    "GP says his wheezing is from the damp. Please send someone.",
    # a life saved, told as thanks
    "Please thank Dom from the night line. In March he stayed on the phone with me until the crisis team came.",
    # money taken from a man with a learning disability, with silence demanded
    "My brother has a learning disability. His support worker asks him for money most weeks and says he'll be "
    "in trouble if he tells.",
])
def test_safeguarding_signs_told_in_passing(classifier, body):
    msg = parse(make_mail(subject="hi", body=body))
    assert "safeguarding" in classifier.classify(msg).flags


@pytest.mark.parametrize("sender, body", [
    ("Parent <p.k.2231@example.com>", "Please don't ask for my name, I don't want it coming back on my daughter. "
                                      "The new coach shouts at the girls."),
    ("Website <no-reply@centre.example.org>", "Your name\nRather not say - a grateful neighbour\n\nYour feedback\n"
                                              "The lunch club has been a lifeline for my neighbour this winter."),
])
def test_declining_to_give_a_name_is_anonymous(classifier, sender, body):
    msg = parse(make_mail(sender=sender, subject="Feedback", body=body))
    assert "anonymous" in classifier.classify(msg).flags


def test_a_ruler_of_stars_under_a_signature_is_not_starred_swearing(classifier):
    body = ("Thank you to your outreach team for the joined-up work with our surgery this winter.\n\nBest wishes,\n"
            "Sam Patel\nPractice Manager\n" + "*" * 120 + "\nThis email is confidential.\n" + "*" * 120)
    result = classifier.classify(parse(make_mail(subject="Thank you", body=body)))
    assert result.label == "compliment" and "abusive" not in result.flags
"""Staff mail, read without a database: commands out of Outlook-style subjects and bodies, case
tags in any position and format, and who counts as authenticated staff (mailbot.staffmail)."""

from __future__ import annotations

import pytest

from mailbot.intake.parse import parse
from mailbot.policy.rules import ReferenceRules, Role, Rules, StaffRules
from mailbot.staffmail import commands
from mailbot.staffmail.auth import verify
from mailbot.staffmail.threads import references_in
from tests.mailkit import make_mail

TAG = ReferenceRules().pattern()
OUTLOOK_QUOTE = """
From: Complaints Team <complaints@example.org>
Sent: Friday, August 28, 2026 11:00 AM
To: Line Manager <line.manager@example.org>
Subject: [CMP-2026-00042] New complaint: Youth club cancelled

A new complaint has been registered as CMP-2026-00042.
#close
"""


# -- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", [
    "RE: [CMP-2026-00042] New complaint: Youth club cancelled #assign jane@example.org",
    "AW: RE: [EXTERNAL] [CMP-2026-00042] New complaint #assign jane@example.org",
    "[EXTERNAL] SV: WG: FW: [cmp-2026-00042] #assign jane@example.org",
    "Re: Re: [CMP-2026-00042]#assign jane@example.org",
])
def test_subject_commands_after_the_tag(subject):
    parsed = commands.parse(subject, "Jane, please take this one.", TAG)
    assert [(c.name, c.argument, c.where) for c in parsed.commands] == [
        ("assign", "jane@example.org", "subject")]
    assert parsed.content == "Jane, please take this one." and parsed.ok


def test_body_commands_at_the_top_quoted_history_and_signature_cut_off():
    body = ("#extend 10 working days: waiting for a witness statement\n"
            "#note called the parent\n\n"
            "She was upset about the lack of notice.\n\n"
            "-- \nJane Smith | Line Manager\n" + OUTLOOK_QUOTE)
    parsed = commands.parse("RE: [CMP-2026-00042] New complaint: Youth club", body, TAG)
    assert [(c.name, c.argument) for c in parsed.commands] == [
        ("extend", "10 working days: waiting for a witness statement"), ("note", "called the parent")]
    assert parsed.content == "She was upset about the lack of notice."
    assert "#close" in parsed.quoted  # a command in the quoted mail is history, never obeyed
    assert parsed.ok


def test_hashtags_of_the_complainant_in_the_subject_are_theirs():
    parsed = commands.parse("RE: [CMP-2026-00042] New complaint: Terrible service #fail #sad", "ok", TAG)
    assert parsed.commands == [] and parsed.unknown == [] and not parsed.mentions_commands


def test_commands_before_the_tag_are_not_read():
    parsed = commands.parse("#close RE: [CMP-2026-00042] x", "", TAG)
    assert parsed.commands == []


def test_unknown_and_misspelt_commands_are_reported():
    parsed = commands.parse("RE: [CMP-2026-00042] x #outcom", "#frobnicate\n#clsoe\nText", TAG)
    assert parsed.unknown == ["#outcom in the subject (did you mean #outcome?)", "#frobnicate",
                              "#clsoe (did you mean #close?)"]
    assert not parsed.ok and parsed.content == "Text"


def test_conflicting_and_double_content_commands_are_problems():
    twice = commands.parse("RE: [CMP-2026-00042] #assign a@example.org", "#assign b@example.org", TAG)
    assert not twice.ok and "given twice" in twice.problems[0]
    same = commands.parse("RE: [CMP-2026-00042] #close", "#close", TAG)
    assert same.ok and [c.name for c in same.commands] == ["close"]
    both = commands.parse("RE: [CMP-2026-00042] x", "#reply\n#outcome\nText", TAG)
    assert not both.ok and "only one of #reply, #outcome" in both.problems[0]


def test_banner_lines_before_the_commands_are_skipped():
    body = "[EXTERNAL]\n\u200b#note checked the register\nnothing else"
    parsed = commands.parse("RE: [CMP-2026-00042] x", body, TAG)
    assert [(c.name, c.argument) for c in parsed.commands] == [("note", "checked the register")]
    assert parsed.content == "nothing else"


def test_a_markdown_heading_is_content_not_a_command():
    parsed = commands.parse("RE: [CMP-2026-00042] x", "# Summary\nAll fine", TAG)
    assert parsed.commands == [] and parsed.unknown == [] and parsed.content.startswith("# Summary")


def test_cheap_first_look():
    assert commands.looks_like_commands("RE: [CMP-2026-00042] #Close", "")
    assert commands.looks_like_commands("x", "Hello\n#reply\nthanks")
    assert not commands.looks_like_commands("Terrible #fail", "see issue #42 and me@x.org#note")


# -- case tags --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, subject, expected", [
    ("CMP-{year}-{seq:05d}", "RE: AW: [EXTERNAL] [CMP-2026-00042] Outcome", ["CMP-2026-00042"]),
    ("CMP-{year}-{seq:05d}", "re: cmp-2026-00042 and [CMP-2026-00007]", ["CMP-2026-00042", "CMP-2026-00007"]),
    ("WFU-{year}-{seq:04d}", "SV: [WFU-2026-0001] Your complaint", ["WFU-2026-0001"]),
    ("CMP-{year}-{seq:05d}", "XCMP-2026-000421 not a tag", []),
])
def test_references_follow_the_rules_format(fmt, subject, expected):
    rules = Rules(reference=ReferenceRules(format=fmt))
    assert references_in(rules, subject) == expected


# -- who is authenticated staff ---------------------------------------------------------------


def _rules(**staff) -> Rules:
    return Rules(roles={"line_manager": Role(title="Line Manager", address="line.manager@example.org")},
                 staff=StaffRules(members=["jane@example.org"], trusted_authserv_ids=["mx.example.org"],
                                  **staff))


def _verdict(sender: str, results: list[str] | None = None, *, rules: Rules | None = None,
             headers: dict | None = None, kind: str = "imap", notify=("team@example.org",)):
    raw = make_mail(sender=sender, subject="RE: [CMP-2026-00042] #close", body="#close",
                    headers=headers or {})
    if results:
        head, _, rest = raw.partition(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.partition(b"\n\n")
        sep = b"\r\n" if b"\r\n" in head else b"\n"
        added = sep.join(f"Authentication-Results: {r}".encode() for r in results)
        raw = added + sep + raw  # a receiving server adds its header on top
    return verify(rules or _rules(), parse(raw), notify=list(notify), mailbox_kind=kind)


PASS = "mx.example.org; dkim=pass header.d=example.org header.s=sel; spf=pass smtp.mailfrom=jane@example.org"


@pytest.mark.parametrize("sender, results, ok, why", [
    ("Jane Staff <jane@example.org>", [PASS], True, "dkim=pass header.d=example.org"),
    ("Jane Staff <jane@example.org>", ["mx.example.org; dkim=none; spf=pass smtp.mailfrom=example.org"], True, "spf=pass"),
    ("Jane Staff <jane@example.org>", ["mx.example.org; auth=pass smtp.auth=jane@example.org"], True, "auth=pass"),
    ("Line Manager <Line.Manager@Example.org>", ["MX.Example.org; dkim=pass header.d=EXAMPLE.org"], True, "dkim"),
    ("Team <team@example.org>", [PASS], True, "dkim"),  # [staff] notify counts as staff
    # forged: our server saw the signature fail
    ("Jane Staff <jane@example.org>", ["mx.example.org; dkim=fail header.d=example.org; spf=softfail "
                                       "smtp.mailfrom=evil.example"], False, "did not confirm"),
    # unauthenticated: nothing from a trusted server
    ("Jane Staff <jane@example.org>", None, False, "no Authentication-Results from a trusted"),
    # a trusted server's verdict that passes someone else's domain
    ("Jane Staff <jane@example.org>", ["mx.example.org; dkim=pass header.d=evil.example; spf=pass "
                                       "smtp.mailfrom=bounce@evil.example"], False, "did not confirm"),
    ("Jane Staff <jane@example.org>", ["mx.example.org; dkim=pass header.d=mail.example.org"], False, "did not confirm"),
    ("Jane Staff <jane@example.org>", ["mx.example.org; auth=pass smtp.auth=bob@example.org"], False, "did not confirm"),
    # untrusted authserv-id: whatever it says
    ("Jane Staff <jane@example.org>", ["mx.evil.example; dkim=pass header.d=example.org"], False,
     "no Authentication-Results from a trusted"),
    ("Jane Staff <jane@example.org>", ["mx.example.org.evil.example; dkim=pass header.d=example.org"], False,
     "no Authentication-Results from a trusted"),
    # only the topmost trusted header counts: the one below came with the message
    ("Jane Staff <jane@example.org>", ["mx.example.org; dkim=none; spf=none",
                                       "mx.example.org; dkim=pass header.d=example.org"], False, "did not confirm"),
    ("Jane Staff <jane@example.org>", ["mx.example.org;;; ===", PASS], False, "cannot be read"),
    # an untrusted header above the trusted one is skipped, not a reason to stop
    ("Jane Staff <jane@example.org>", ["relay.evil.example; dkim=fail", PASS], True, "dkim"),
])
def test_authentication(sender, results, ok, why):
    verdict = _verdict(sender, results)
    assert verdict.staff
    assert verdict.authenticated is ok, verdict.problem
    assert why in (verdict.how if ok else verdict.problem)


@pytest.mark.parametrize("sender", [
    "Jane Staff <jane@evil.example>",  # spoofed display name
    '"jane@example.org" <attacker@evil.example>',  # an address as the display name
    "Jane Staff <jane@examp1e.org>",  # look-alike domain
    "Jane Staff <jane@example.org.evil.example>",
])
def test_not_staff_whatever_the_display_name(sender):
    domain = sender.rsplit("@", 1)[1].rstrip(">")
    verdict = _verdict(sender, [f"mx.example.org; dkim=pass header.d={domain}"])
    assert not verdict.staff and not verdict.obeyed


@pytest.mark.parametrize("sender", ["jane@example.org, attacker@evil.example",
                                    "jane@example.org <attacker@evil.example>"])  # read as two
def test_two_from_addresses_are_never_verified(sender):
    verdict = _verdict(sender, [PASS])
    assert not verdict.authenticated and "single From" in verdict.problem


def test_nothing_is_verified_without_a_trusted_server():
    verdict = _verdict("Jane Staff <jane@example.org>", [PASS],
                       rules=_rules().model_copy(update={"staff": StaffRules(members=["jane@example.org"])}))
    assert not verdict.authenticated and "no trusted mail server is configured" in verdict.problem
    configured = verify(_rules().model_copy(update={"staff": StaffRules(members=["jane@example.org"])}),
                        parse(b"Authentication-Results: " + PASS.encode() + b"\n" + make_mail(
                            sender="Jane <jane@example.org>")), trusted=["mx.example.org"])
    assert configured.authenticated  # the authserv-id may come from config.toml instead


EXCHANGE = {"X-MS-Exchange-Organization-AuthAs": "Internal",
            "X-MS-Exchange-Organization-AuthSource": "EXCH01.example.org"}


def test_exchange_internal_marks_count_only_for_an_exchange_mailbox():
    assert _verdict("Jane <jane@example.org>", headers=EXCHANGE, kind="ews").authenticated
    assert _verdict("Jane <jane@example.org>", headers=EXCHANGE, kind="graph").authenticated
    assert _verdict("Jane <jane@example.org>", headers=EXCHANGE, kind="exchange-imap").authenticated
    assert not _verdict("Jane <jane@example.org>", headers=EXCHANGE, kind="imap").authenticated
    assert not _verdict("Jane <jane@example.org>", headers=EXCHANGE, kind="maildir").authenticated
    half = {"X-MS-Exchange-Organization-AuthAs": "Internal"}
    assert not _verdict("Jane <jane@example.org>", headers=half, kind="ews").authenticated
    anonymous = dict(EXCHANGE, **{"X-MS-Exchange-Organization-AuthAs": "Anonymous"})
    assert not _verdict("Jane <jane@example.org>", headers=anonymous, kind="ews").authenticated


def test_staff_rules_mistakes_name_the_file_and_key(tmp_path):
    from mailbot.policy.rules import RulesError, load_rules

    (tmp_path / "staff.toml").write_text('[staff]\nmembers = ["Jane Staff <jane@example.org>"]\n'
                                         'trusted_authserv_ids = ["mx example"]\n')
    with pytest.raises(RulesError) as caught:
        load_rules(tmp_path)
    problems = "\n".join(caught.value.problems)
    assert "staff.toml: staff.members: 'Jane Staff <jane@example.org>' is not an email address" in problems
    assert "staff.toml: staff.trusted_authserv_ids: 'mx example' is not an authserv-id" in problems
    (tmp_path / "staff.toml").write_text('[staff]\nwarn = ["nobody"]\n')
    with pytest.raises(RulesError) as caught:
        load_rules(tmp_path)
    assert "staff.warn: the role 'nobody' is not defined" in "\n".join(caught.value.problems)


def test_exchange_online_imap_is_known_by_its_host():
    from types import SimpleNamespace

    from mailbot.staffmail.auth import mailbox_kind_of

    assert mailbox_kind_of(SimpleNamespace(kind="imap", host="outlook.office365.com")) == "exchange-imap"
    assert mailbox_kind_of(SimpleNamespace(kind="imap", host="imap.example.org")) == "imap"
    assert mailbox_kind_of(SimpleNamespace(kind="graph", host="127.0.0.1")) == "graph"

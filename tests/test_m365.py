"""Microsoft 365 set-ups end to end, through the real ``mailbot`` command line and msal:

* Graph (``mailbox.kind = "graph"``, ``outgoing.kind = "graph"``) with an app registration's
  client secret: tokens from the local OAuth2 authority (HTTPS, msal), mail from the Graph fake;
  the token expires in the middle of the run;
* IMAP and SMTP with OAuth2 (XOAUTH2), client-credentials flow, against Dovecot's oauth2 passdb
  and aiosmtpd;
* IMAP and SMTP with the device-code flow: ``mailbot auth login`` once, then the daemon renews
  its tokens from the token cache;
* ``mailbot doctor`` explaining a missing permission, a wrong secret, a refused token;
* the configuration mistakes of these set-ups.

The CLI runs in a child process that trusts the test CA through ``REQUESTS_CA_BUNDLE``; the
client secret comes from an environment variable, as the README tells admins to do.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from email import message_from_bytes

import pytest

from mailbot.config import ConfigError, load_config
from tests.mailkit import REPO, make_mail
from tests.servers.oauth_jwt import CLIENT_ID, GRAPH, OUTLOOK

SECRET_ENV = "MAILBOT_TEST_CLIENT_SECRET"
SECRET = "s3cret-value~from.the.portal"
REF = re.compile(r"\[(CMP-\d{4}-\d{5})\]")


def cli(tls, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = tls.env()
    env[SECRET_ENV] = SECRET
    return subprocess.run([sys.executable, "-m", "mailbot", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def _toml(section: str, values: dict) -> str:
    lines = [f"[{section}]"]
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def write_config(tmp_path, mailbox: dict, outgoing: dict, db_url: str | None = None) -> str:
    text = (_toml("mailbox", mailbox) + "\n" + _toml("outgoing", outgoing)
            + f'\n[database]\nurl = "{db_url or f"sqlite:///{tmp_path}/mailbot.db"}"\n\n'
              f'[rules]\npath = "{REPO / "rules"}"\ntemplates = "{REPO / "templates"}"\n\n'
              '[staff]\nnotify = ["team@example.org"]\n')
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def app_registration(authority, **overrides) -> dict:
    values = {"tenant_id": authority.tenant, "client_id": CLIENT_ID, "client_secret_env": SECRET_ENV,
              "oauth_authority": authority.authority}
    values.update(overrides)
    return values


def graph_mailbox(fake, authority, **overrides) -> dict:
    values = {"kind": "graph", "primary_smtp_address": fake.mailbox, "graph_url": fake.url,
              "poll_seconds": 1, "timeout_seconds": 10, "graph_max_wait_seconds": 5,
              **app_registration(authority)}
    values.update(overrides)
    return values


GRAPH_OUT = {"kind": "graph", "from": "Complaints Team <complaints@example.org>"}


def imap_oauth2_mailbox(dovecot, authority, **overrides) -> dict:
    values = {"kind": "imap", "host": dovecot.host, "port": dovecot.port, "security": "none",
              "username": dovecot.user, "auth": "oauth2", "poll_seconds": 1, "timeout_seconds": 10,
              **app_registration(authority)}
    values.update(overrides)
    return values


def smtp_oauth2_out(server, **overrides) -> dict:
    values = {"kind": "smtp", "host": server.host, "port": server.port, "security": "none",
              "auth": "oauth2", "from": "Complaints Team <complaints@example.org>",
              "timeout_seconds": 10}
    values.update(overrides)
    return values


def _complaints(deliver) -> None:
    deliver(make_mail(
        sender="Joanne Price <joanne.price@example.com>", message_id="<cmp-m365-1@example.com>",
        subject="Youth club cancelled again without telling us",
        body="I want to make a formal complaint. The Thursday session was cancelled for the third "
             "week running and nobody told the parents. This is not good enough."))
    deliver(make_mail(
        sender="Daniel Okafor <d.okafor@example.net>", message_id="<cmp-m365-2@example.net>",
        subject="Drop-in session cancelled again without telling us",
        body="I want to make a formal complaint. The Tuesday drop-in was cancelled for the third "
             "week running and nobody told us. This is not good enough."))
    deliver(make_mail(
        sender="Alan Hughes <alan@example.com>", subject="Automatic reply: Youth club",
        headers={"Auto-Submitted": "auto-replied"}, body="I am out of the office until Monday."))


# -- Graph end to end ----------------------------------------------------------------------------
def test_graph_mailbox_end_to_end_with_a_token_expiring_mid_run(tmp_path, graph_server,
                                                                 oauth_authority, oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={GRAPH: ["Mail.ReadWrite", "Mail.Send"]})
    _complaints(graph_server.append)
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority), GRAPH_OUT)
    graph_server.expire_tokens_after(9)  # about half-way through the run

    first = cli(oauth_tls, "run", "--once", "--config", config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 message(s) handled" in first.stdout, first.stdout
    assert graph_server.expired_answered == 1  # the expired token was refused once ...
    assert [g for g, _c, _s in oauth_authority.token_requests] == ["client_credentials"] * 2  # ... renewed

    cases = json.loads(cli(oauth_tls, "cases", "list", "--json", "--config", config).stdout)
    assert sorted(c["complainant"] for c in cases) == ["d.okafor@example.net",
                                                        "joanne.price@example.com"]
    # acknowledgements went out through Graph with their MIME (threaded), copies in Sent Items
    sent = graph_server.sent
    assert graph_server.messages("sentitems") == [s.mime for s in sent]
    acknowledged = {c["complainant"]: c["reference"] for c in cases if c["status"] == "acknowledged"}
    to_people = [(s.recipients, message_from_bytes(s.mime)) for s in sent
                 if s.recipients != ["team@example.org"]]
    assert sorted(r[0] for r, _ in to_people) == sorted(acknowledged)  # one letter per case
    asked = {"joanne.price@example.com": "<cmp-m365-1@example.com>",
             "d.okafor@example.net": "<cmp-m365-2@example.net>"}
    for (person,), ack in to_people:
        assert ack["In-Reply-To"] == asked[person]
        assert REF.search(ack["Subject"]).group(1) == acknowledged[person]
    assert not any("alan@example.com" in s.recipients for s in sent)
    assert graph_server.messages("inbox") == []
    assert len(graph_server.messages("mailbot/processed")) == 3

    before = len(graph_server.sent)
    second = cli(oauth_tls, "run", "--once", "--config", config)
    assert second.returncode == 0, second.stderr
    assert "0 message(s) handled" in second.stdout
    assert len(graph_server.sent) == before
    assert graph_server.initial_rounds == 1  # the second run continued from the stored delta link


# -- IMAP and SMTP with OAuth2 ----------------------------------------------------------------------
def test_imap_and_smtp_with_oauth2_client_credentials_end_to_end(tmp_path, dovecot_oauth2, smtp_oauth2,
                                                                 oauth_authority, oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={OUTLOOK: ["IMAP.AccessAsApp", "SMTP.SendAsApp"]},
                                 email=dovecot_oauth2.user)
    _complaints(dovecot_oauth2.append)
    config = write_config(tmp_path, imap_oauth2_mailbox(dovecot_oauth2, oauth_authority),
                          smtp_oauth2_out(smtp_oauth2))
    run = cli(oauth_tls, "run", "--once", "--config", config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 message(s) handled" in run.stdout
    acks = [m for m in smtp_oauth2.messages if m.rcpt_tos != ["team@example.org"]]
    assert sorted(m.rcpt_tos[0] for m in acks) == ["d.okafor@example.net", "joanne.price@example.com"]
    assert set(smtp_oauth2.oauth2_logins) == {dovecot_oauth2.user}
    assert dovecot_oauth2.uids() == []
    assert "method=XOAUTH2" in dovecot_oauth2.log_text()
    # one app registration, one scope (https://outlook.office365.com/.default) for both
    assert {s for _g, _c, s in oauth_authority.token_requests} == {f"{OUTLOOK}/.default"}


def test_device_code_sign_in_then_the_daemon_renews_by_itself(tmp_path, dovecot_oauth2, smtp_oauth2,
                                                               oauth_authority, oauth_tls):
    oauth_authority.register_app("mailbot-public-client", public=True)
    oauth_authority.user = dovecot_oauth2.user  # who signs in at Microsoft's page
    cache = tmp_path / "var" / "token-cache.json"
    mailbox = imap_oauth2_mailbox(dovecot_oauth2, oauth_authority, client_id="mailbot-public-client",
                                  oauth_flow="device_code", client_secret_env=None,
                                  token_cache="var/token-cache.json")
    config = write_config(tmp_path, mailbox, smtp_oauth2_out(smtp_oauth2))

    before = cli(oauth_tls, "doctor", "--config", config)
    assert before.returncode == 1 and "mailbot auth login" in " ".join(before.stdout.split())

    login = cli(oauth_tls, "auth", "login", "--config", config)
    assert login.returncode == 0, login.stdout + login.stderr
    assert "enter the code" in login.stdout and f"signed in as {dovecot_oauth2.user}" in login.stdout
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600  # it holds a refresh token
    status = cli(oauth_tls, "auth", "status", "--config", config)
    assert "delegated permissions IMAP.AccessAsUser.All, SMTP.Send" in " ".join(status.stdout.split())

    _complaints(dovecot_oauth2.append)
    run = cli(oauth_tls, "run", "--once", "--config", config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 message(s) handled" in run.stdout
    assert dovecot_oauth2.uids() == [] and set(smtp_oauth2.oauth2_logins) == {dovecot_oauth2.user}
    grants = [g for g, _c, _s in oauth_authority.token_requests]
    assert grants[0].endswith("device_code") and "refresh_token" in grants
    assert "client_credentials" not in grants


# -- doctor -----------------------------------------------------------------------------------------
def _doctor(tls, config: str, *args: str):
    result = cli(tls, "doctor", "--config", config, *args)
    return result.returncode, " ".join(result.stdout.split()), result


def test_doctor_graph_all_good_and_sends_a_test_message(tmp_path, graph_server, oauth_authority, oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={GRAPH: ["Mail.ReadWrite", "Mail.Send"]})
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority), GRAPH_OUT)
    code, out, result = _doctor(oauth_tls, config, "--send-test", "admin@example.org")
    assert code == 0, result.stdout + result.stderr
    assert "application permissions Mail.ReadWrite, Mail.Send; for https://graph.microsoft.com" in out
    assert "delta query works" in out and "mailbot/quarantine ready" in out
    assert "the token carries Mail.Send" in out and "all checks passed" in out
    [sent] = graph_server.sent
    assert sent.recipients == ["admin@example.org"]


def test_doctor_explains_a_graph_app_without_mail_readwrite(tmp_path, graph_server, oauth_authority,
                                                           oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={GRAPH: ["Mail.Send"]})
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority), GRAPH_OUT)
    code, out, _ = _doctor(oauth_tls, config)
    assert code == 1
    assert ("the app registration lacks Mail.ReadWrite for this mailbox, or the application access "
            "policy excludes it") in out
    assert "the token carries no Mail.ReadWrite permission (it has: Mail.Send)" in out
    assert "Grant admin consent" in out.replace("grant admin consent", "Grant admin consent")


def test_doctor_explains_a_mailbox_outside_the_access_policy(tmp_path, graph_server, oauth_authority,
                                                            oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={GRAPH: ["Mail.ReadWrite", "Mail.Send"]})
    graph_server.excluded = True
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority), GRAPH_OUT)
    code, out, _ = _doctor(oauth_tls, config)
    assert code == 1
    assert "or the application access policy excludes it" in out
    assert "does carry Mail.ReadWrite, so Exchange's access policy or RBAC scope leaves" in out
    assert "Test-ApplicationAccessPolicy -Identity complaints@example.org" in out


def test_doctor_explains_a_graph_app_without_mail_send(tmp_path, graph_server, oauth_authority, oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={GRAPH: ["Mail.ReadWrite"]})
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority), GRAPH_OUT)
    code, out, _ = _doctor(oauth_tls, config)
    assert code == 1
    assert "ok mailbox: folder mailbot/quarantine" in out
    assert "FAIL outgoing: Microsoft Graph permission to send: the app registration lacks Mail.Send" in out


def test_doctor_explains_a_wrong_client_secret(tmp_path, graph_server, oauth_authority, oauth_tls):
    oauth_authority.register_app(secret="the-real-secret", roles={GRAPH: ["Mail.ReadWrite"]})
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority), GRAPH_OUT)
    code, out, _ = _doctor(oauth_tls, config)
    assert code == 1
    assert "Microsoft Entra ID refused the client secret (AADSTS7000215" in out
    assert "not its Secret ID" in out and "mailbox.client_secret_env" in out
    assert graph_server.log == []  # nothing reached Graph without a token


def test_doctor_explains_an_unknown_client_id(tmp_path, graph_server, oauth_authority, oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={GRAPH: ["Mail.ReadWrite"]})
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority,
                                                  client_id="99999999-0000-0000-0000-000000000000"),
                          GRAPH_OUT)
    code, out, _ = _doctor(oauth_tls, config)
    assert code == 1
    assert "knows no app with this client_id in this tenant (AADSTS700016)" in out


def test_doctor_explains_an_imap_token_the_server_refuses(tmp_path, dovecot_oauth2, oauth_authority,
                                                          oauth_tls):
    # the app gets tokens, but not for this mailbox (in Exchange: no FullAccess for its principal)
    oauth_authority.register_app(secret=SECRET, roles={OUTLOOK: ["IMAP.AccessAsApp"]},
                                 email="someone-else")
    config = write_config(tmp_path, imap_oauth2_mailbox(dovecot_oauth2, oauth_authority),
                          {"kind": "folder", "path": str(tmp_path / "outbox"),
                           "from": "Complaints Team <complaints@example.org>"})
    code, out, _ = _doctor(oauth_tls, config)
    assert code == 1
    assert "ok mailbox: get an OAuth2 token" in out and "application permissions IMAP.AccessAsApp" in out
    assert "FAIL mailbox: log in as complaints" in out
    assert "the server refused the OAuth2 token for 'complaints' (XOAUTH2)" in out
    assert "IMAP.AccessAsApp" in out and "Add-MailboxPermission" in out


def test_doctor_explains_an_smtp_token_the_server_refuses(tmp_path, dovecot_oauth2, smtp_oauth2,
                                                          oauth_authority, oauth_tls):
    oauth_authority.register_app(secret=SECRET, roles={OUTLOOK: ["IMAP.AccessAsApp"]},
                                 email=dovecot_oauth2.user)
    config = write_config(tmp_path, imap_oauth2_mailbox(dovecot_oauth2, oauth_authority),
                          smtp_oauth2_out(smtp_oauth2, username="complaints@example.org"))
    code, out, _ = _doctor(oauth_tls, config)
    assert code == 1
    assert "logged in as complaints with OAuth2 (XOAUTH2)" in out
    assert "FAIL outgoing: connect to" in out
    assert "the SMTP server refused the OAuth2 token" in out and "SMTP.SendAsApp" in out
    assert "SmtpClientAuthenticationDisabled" in out


# -- configuration -----------------------------------------------------------------------------------
FOLDER_OUT = {"kind": "folder", "path": "out", "from": "Complaints Team <complaints@example.org>"}


@pytest.mark.parametrize("mailbox, outgoing, expected", [
    ({"kind": "graph", "client_id": "c", "tenant_id": "t", "client_secret_env": "S"}, FOLDER_OUT,
     "primary_smtp_address (the mailbox address) is required when kind = \"graph\""),
    ({"kind": "graph", "primary_smtp_address": "a@b.org", "tenant_id": "t", "client_secret_env": "S"},
     FOLDER_OUT, "mailbox: client_id is required for OAuth2"),
    ({"kind": "imap", "username": "a@b.org", "auth": "oauth2", "client_id": "c", "tenant_id": "t"},
     FOLDER_OUT, "client_secret_env (or client_certificate) is required for OAuth2"),
    ({"kind": "maildir", "path": "in"}, GRAPH_OUT, "needs mailbox.kind = \"graph\""),
    ({"kind": "maildir", "path": "in"}, {**FOLDER_OUT, "kind": "smtp", "auth": "oauth2",
                                         "username": "a@b.org"},
     "client_id and tenant_id and client_secret_env (or client_certificate) are required"),
    ({"kind": "imap", "username": "a@b.org", "auth": "oauth2", "client_id": "c", "tenant_id": "t",
      "client_secret_env": "S", "oauth_authority": "http://login.example"}, FOLDER_OUT,
     "mailbox.oauth_authority"),
])
def test_oauth2_and_graph_config_mistakes_are_named(tmp_path, mailbox, outgoing, expected):
    path = write_config(tmp_path, mailbox, outgoing)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


def test_outgoing_oauth2_takes_the_app_registration_of_the_mailbox(tmp_path):
    from mailbot.transport.oauth import settings_from_config

    path = write_config(tmp_path, {"kind": "imap", "username": "complaints@example.org", "auth": "oauth2",
                                   "client_id": "c", "tenant_id": "t", "client_secret_env": SECRET_ENV,
                                   "token_cache": "var/cache.json"},
                        {"kind": "smtp", "auth": "oauth2", "from": "Complaints <complaints@example.org>"})
    config = load_config(path)
    os.environ[SECRET_ENV] = SECRET
    try:
        settings = settings_from_config(config, "outgoing", "outlook")
    finally:
        del os.environ[SECRET_ENV]
    assert (settings.client_id, settings.tenant_id, settings.client_secret) == ("c", "t", SECRET)
    assert settings.scopes == ("https://outlook.office365.com/.default",)
    assert settings.username == "complaints@example.org"
    assert settings.token_cache == tmp_path / "var" / "cache.json"


def test_graph_staff_commands_are_trusted_by_exchanges_internal_marks(tmp_path, graph_server,
                                                                        oauth_authority, oauth_tls):
    """In Microsoft 365 mail between colleagues carries no Authentication-Results, but Exchange
    marks it as sent inside the organisation (and strips those marks from outside mail): through
    Graph a member of staff's command is obeyed on those marks, and a copy without them is not."""
    oauth_authority.register_app(secret=SECRET, roles={GRAPH: ["Mail.ReadWrite", "Mail.Send"]})
    _complaints(graph_server.append)
    config = write_config(tmp_path, graph_mailbox(graph_server, oauth_authority), GRAPH_OUT)
    assert cli(oauth_tls, "run", "--once", "--config", config).returncode == 0
    cases = json.loads(cli(oauth_tls, "cases", "list", "--json", "--config", config).stdout)
    first, second = sorted(c["reference"] for c in cases)
    internal = {"X-MS-Exchange-Organization-AuthAs": "Internal",
                "X-MS-Exchange-Organization-AuthSource": "AM0PR01MB1234.eurprd01.prod.outlook.com"}
    graph_server.append(make_mail(sender="Team <team@example.org>", subject=f"RE: [{first}] New complaint #close",
                                  body="Resolved on the phone with the parent.", headers=internal))
    graph_server.append(make_mail(sender="Team <team@example.org>", subject=f"RE: [{second}] New complaint #close",
                                  body="Resolved on the phone with the parent."))  # no marks: from outside
    assert cli(oauth_tls, "run", "--once", "--config", config).returncode == 0
    status = {c["reference"]: c["status"] for c in json.loads(
        cli(oauth_tls, "cases", "list", "--json", "--config", config).stdout)}
    assert status[first] == "closed"
    assert status[second] == "acknowledged"

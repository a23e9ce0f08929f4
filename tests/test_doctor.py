"""``mailbot doctor`` against real servers: Dovecot, aiosmtpd and the EWS fake.

What matters to the person installing mailbot is the printed explanation: which step failed,
why, and what to change.  So each test breaks one thing and checks that the output names it
in plain words and points at the config key to fix, and that the exit code says "failed".
"""

from __future__ import annotations

from email import message_from_bytes

from tests.mailkit import REPO, run_cli
from tests.servers.dovecot import free_port
from tests.servers.ews_fake import mailbox_config


def _config(tmp_path, mailbox: str, outgoing: str | None = None) -> str:
    outgoing = outgoing or (f'[outgoing]\nkind = "folder"\npath = "{tmp_path / "outbox"}"\n'
                            'from = "Complaints Team <complaints@example.org>"\n')
    path = tmp_path / "config.toml"
    path.write_text(f'{mailbox}\n{outgoing}\n[database]\nurl = "sqlite:///{tmp_path}/db.sqlite"\n'
                    f'[rules]\npath = "{REPO / "rules"}"\ntemplates = "{REPO / "templates"}"\n')
    return str(path)


def _imap(dovecot, **overrides) -> str:
    values = {"host": dovecot.host, "port": dovecot.port, "password": dovecot.password}
    values.update(overrides)
    return (f'[mailbox]\nkind = "imap"\nhost = "{values["host"]}"\nport = {values["port"]}\n'
            f'security = "none"\nusername = "{dovecot.user}"\npassword = "{values["password"]}"\n'
            'timeout_seconds = 5\n')


def _smtp(server) -> str:
    return (f'[outgoing]\nkind = "smtp"\nhost = "{server.host}"\nport = {server.port}\n'
            'security = "none"\nfrom = "Complaints Team <complaints@example.org>"\n'
            'timeout_seconds = 5\n')


def _doctor(config: str, *args: str):
    result = run_cli("doctor", "--config", config, *args, timeout=60)
    return result.returncode, " ".join(result.stdout.split()), result


def test_all_good_imap_and_smtp_sends_a_test_message(tmp_path, dovecot, smtp_server):
    config = _config(tmp_path, _imap(dovecot), _smtp(smtp_server))
    code, out, result = _doctor(config, "--send-test", "admin@example.org")
    assert code == 0, result.stdout + result.stderr
    assert "all checks passed" in out
    assert "logged in as complaints" in out and "INBOX: 0 message(s) waiting" in out
    # the folders mailbot needs now exist
    assert dovecot.folder_name("mailbot", "processed") in dovecot.folders()
    [test] = smtp_server.wait_for(1)
    assert test.rcpt_tos == ["admin@example.org"]
    assert test.message["Subject"] == "mailbot doctor: test message"
    assert test.message["Auto-Submitted"] == "auto-generated"  # never answered by a bot


def test_wrong_imap_port_is_explained(tmp_path, dovecot):
    config = _config(tmp_path, _imap(dovecot, port=free_port()))
    code, out, _ = _doctor(config)
    assert code == 1
    assert "FAIL mailbox: connect to" in out
    assert "connection refused" in out and "mailbox.port" in out
    assert "log in" not in out  # later steps are not tried after the first failure


def test_wrong_imap_password_is_explained(tmp_path, dovecot):
    config = _config(tmp_path, _imap(dovecot, password="not-the-password"))
    code, out, _ = _doctor(config)
    assert code == 1
    assert "ok mailbox: connect to" in out
    assert "FAIL mailbox: log in as complaints" in out
    assert "refused the user name 'complaints' or its password" in out
    assert "check mailbox.username and the password" in out


def test_smtp_refusing_the_test_message_is_explained(tmp_path, dovecot, smtp_server):
    smtp_server.refuse(550, "5.7.1 Relaying denied", stage="rcpt")
    config = _config(tmp_path, _imap(dovecot), _smtp(smtp_server))
    code, out, _ = _doctor(config, "--send-test", "admin@example.org")
    assert code == 1
    assert "ok outgoing: connect to" in out
    assert "FAIL outgoing: send a test message to admin@example.org" in out
    assert "refused the recipient" in out and "relay" in out


def test_ews_all_good_sends_through_exchange(tmp_path, ews_server):
    config = _config(tmp_path, mailbox_config(ews_server),
                     '[outgoing]\nkind = "ews"\nfrom = "Complaints Team <complaints@example.org>"\n')
    code, out, result = _doctor(config, "--send-test", "admin@example.org")
    assert code == 0, result.stdout + result.stderr
    assert "mailbot/processed ready" in out and "mailbot/quarantine ready" in out
    assert ews_server.folder("mailbot/quarantine") is not None
    [sent] = ews_server.sent
    assert sent.recipients == ["admin@example.org"]
    assert message_from_bytes(sent.mime)["Subject"] == "mailbot doctor: test message"


def test_ews_wrong_password_is_explained(tmp_path, ews_server):
    config = _config(tmp_path, mailbox_config(ews_server, password="wrong"))
    code, out, _ = _doctor(config)
    assert code == 1
    assert "FAIL mailbox: connect to" in out
    assert "Exchange refused the login (HTTP 401)" in out
    assert "check mailbox.username" in out
    assert ews_server.operations == []


def test_ews_folder_creation_denied_is_explained(tmp_path, ews_server):
    ews_server.fail("CreateFolder", "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    config = _config(tmp_path, mailbox_config(ews_server))
    code, out, _ = _doctor(config)
    assert code == 1
    assert "ok mailbox: open INBOX: INBOX: 0 message(s) waiting" in out
    assert "FAIL mailbox: folder mailbot/processed" in out
    assert "Exchange denied access while trying to find or create the folder 'mailbot/processed'" in out
    assert "create the folder by hand in Outlook" in out
    assert ews_server.folder("mailbot") is None  # nothing half-made


def test_ews_nothing_listening_is_explained(tmp_path, ews_server):
    port = free_port()
    config = _config(tmp_path, mailbox_config(
        ews_server, ews_url=f"http://127.0.0.1:{port}/EWS/Exchange.asmx"))
    code, out, _ = _doctor(config)
    assert code == 1
    assert f"nothing accepts connections on 127.0.0.1:{port}" in out and "mailbox.ews_url" in out

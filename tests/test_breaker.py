"""A bug that strikes every message (here: a broken letter template) must not empty the inbox
into quarantine: after a few in a row the daemon stops and leaves the rest where they are, and
`mailbot requeue` gives the quarantined ones another try once the cause is fixed."""

from __future__ import annotations

import json
import shutil

from tests.mailkit import REPO, make_mail, run_cli, write_config


def test_circuit_breaker_and_requeue(tmp_path, dovecot, smtp_server, sqlite_url):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    good = (templates / "acknowledgement.txt.j2").read_text()
    (templates / "acknowledgement.txt.j2").write_text(good + "\n{{ no_such_variable }}\n")
    for i in range(6):
        dovecot.append(make_mail(sender=f"P{i} <p{i}@example.com>", subject=f"Complaint {i}",
                                 body="I want to complain: the session was cancelled again and nobody "
                                      "told us. This is not good enough."))
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    config.write_text(config.read_text().replace(f'templates = "{REPO / "templates"}"',
                                                 f'templates = "{templates}"'))
    broken = run_cli("run", "--once", "--config", str(config))
    assert broken.returncode == 2 and "no_such_variable" in broken.stderr
    quarantine = dovecot.folder_name("mailbot", "quarantine")
    assert len(dovecot.uids(quarantine)) == 3  # the breaker opened after three
    assert len(dovecot.uids("INBOX")) == 3  # the rest were left alone
    assert smtp_server.messages == []

    (templates / "acknowledgement.txt.j2").write_text(good)  # the admin fixes the template
    requeued = run_cli("requeue", "--config", str(config))
    assert requeued.returncode == 0 and "3 message(s) moved back" in requeued.stdout, requeued.stderr
    fixed = run_cli("run", "--once", "--config", str(config))
    assert fixed.returncode == 0, fixed.stderr
    assert dovecot.uids("INBOX") == [] and dovecot.uids(quarantine) == []
    cases = json.loads(run_cli("cases", "list", "--json", "--config", str(config)).stdout)
    assert len(cases) == 6
    assert len(smtp_server.wait_for(6)) == 6

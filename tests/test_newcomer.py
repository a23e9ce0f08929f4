"""The README's first command works on a fresh checkout: the sample Maildir inbox becomes cases
and acknowledgements appear as .eml files in var/outbox."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import sys
from email.policy import default

from tests.mailkit import REPO


def test_sample_inbox_with_example_config(tmp_path):
    for name in ("config.example.toml", "examples", "rules", "templates"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    shutil.copytree(tmp_path / "examples" / "inbox", tmp_path / "var" / "inbox")

    def mailbot(*args):
        return subprocess.run([sys.executable, "-m", "mailbot", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    run = mailbot("run", "--once", "--config", "config.example.toml")
    assert run.returncode == 0, run.stderr
    cases = json.loads(mailbot("cases", "list", "--json", "--config", "config.example.toml").stdout)
    kinds = sorted(c["kind"] for c in cases)
    assert kinds == ["complaint", "complaint", "complaint", "compliment"]
    outbox = sorted((tmp_path / "var" / "outbox").glob("*.eml"))
    letters = [email.message_from_bytes(p.read_bytes(), policy=default) for p in outbox]
    to_people = [m for m in letters if m["To"] != "complaints-team@example.org"]
    assert len(to_people) == 4 and len(letters) == 8
    refs = {c["reference"] for c in cases}
    assert {next(r for r in refs if r in m["Subject"]) for m in to_people} == refs
    # nothing is left in the inbox, and a second run changes nothing
    assert not any((tmp_path / "var" / "inbox" / "new").iterdir())
    again = mailbot("run", "--once", "--config", "config.example.toml")
    assert again.returncode == 0 and "0 message(s) handled" in again.stdout
    assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == 8

"""Several daemons on one PostgreSQL database and one mailbox share the work without double
handling, and a killed one's work is picked up by the other (real processes)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from sqlmodel import select

from bench.generate import backlog
from mailbot.cases.models import Case, Message
from mailbot.db import Database
from tests.mailkit import set_batch_size, start_daemon, write_config


@pytest.mark.slow
def test_two_daemons_share_one_mailbox_and_survive_a_kill(tmp_path, dovecot, smtp_server, pg_url):
    messages = backlog(200, seed=5)
    for raw in messages:
        dovecot.append(raw)
    config = write_config(tmp_path, db_url=pg_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    set_batch_size(config, 25)
    first, second = start_daemon(config), start_daemon(config)
    try:
        time.sleep(5)
        os.killpg(first.pid, signal.SIGKILL)  # one dies mid-work; the other carries on
        first.wait()
        deadline = time.monotonic() + 180
        while dovecot.uids("INBOX") and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(60)
    assert dovecot.uids("INBOX") == []
    db = Database(pg_url)
    with db.session() as s:
        inbound = s.exec(select(Message).where(Message.direction == "in")).all()
        cases = s.exec(select(Case)).all()
        outbound = s.exec(select(Message).where(Message.direction == "out")).all()
    db.close()
    assert len(inbound) == len(messages)
    assert len({c.reference for c in cases}) == len(cases)
    assert Counter(m.delivery for m in outbound) == {"sent": len(outbound)}
    sent = Counter(c.message["Message-ID"] for c in smtp_server.messages)
    assert set(sent) == {m.message_id for m in outbound}
    assert sum(n - 1 for n in sent.values()) <= 1  # at most the one letter in flight at the kill

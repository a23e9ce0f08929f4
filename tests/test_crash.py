"""Crash safety: a daemon handling a backlog is killed with SIGKILL at random moments and
restarted each time.  At the end every message has exactly one inbound record (a case or a
recorded non-case outcome), nothing is left in the inbox, no case is duplicated, and the
duplicate acknowledgements are at most the number of kills (a kill between SMTP acceptance and
the commit that marks the letter sent is the only way to send one twice)."""

from __future__ import annotations

import os
import random
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
def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path, dovecot, smtp_server, db_url):
    messages = backlog(240, seed=99)
    for raw in messages:
        dovecot.append(raw)
    config = write_config(tmp_path, db_url=db_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    set_batch_size(config, 20)
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 240
    while dovecot.uids("INBOX") and time.monotonic() < deadline and kills < 12:
        proc = start_daemon(config)
        time.sleep(rng.uniform(1.5, 4.0))  # model loading, fetch, classify, commit, send, move...
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    final = start_daemon(config)
    try:
        while dovecot.uids("INBOX") and time.monotonic() < deadline + 120:
            time.sleep(0.5)
        time.sleep(2)  # let the last letters go out
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(60)

    assert dovecot.uids("INBOX") == []
    db = Database(db_url)
    with db.session() as s:
        inbound = s.exec(select(Message).where(Message.direction == "in")).all()
        cases = s.exec(select(Case)).all()
        outbound = s.exec(select(Message).where(Message.direction == "out")).all()
    db.close()
    assert len(inbound) == len(messages)  # every message recorded exactly once
    assert all(m.outcome for m in inbound)
    references = [c.reference for c in cases]
    assert len(references) == len(set(references))
    case_messages = Counter(m.case_id for m in inbound if m.outcome == "case_opened")
    assert all(n == 1 for n in case_messages.values())
    assert all(m.delivery == "sent" for m in outbound), Counter(m.delivery for m in outbound)
    sent_ids = Counter(c.message["Message-ID"] for c in smtp_server.messages)
    duplicates = sum(n - 1 for n in sent_ids.values())
    assert set(sent_ids) == {m.message_id for m in outbound}
    assert duplicates <= kills
    print(f"\ncrash test: {kills} kills survived, {len(messages)} messages, {len(cases)} cases, "
          f"{len(outbound)} letters, {duplicates} duplicate acknowledgement(s)")

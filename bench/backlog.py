"""Backlog benchmark: mailbot end to end against the raw IMAP limit, on the same mailbox.

    python bench/backlog.py [--messages 10000] [--db sqlite,postgresql] [--json]

For each database: a fresh Dovecot is filled with N generated messages (bench/generate.py);
then, side by side in one run,
  1. the physical limit: imap-tools bulk fetch of every message + stdlib parse
     (``email.message_from_bytes`` with ``policy.default``), and
  2. ``mailbot run --once`` handling all of them end to end (parse, classify, case,
     acknowledgement accepted by a local aiosmtpd, moved out of the inbox),
and prints both rates, their ratio and mailbot's peak RSS. Needs Dovecot (apt-get install
dovecot-imapd) and, for postgresql, the server on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.generate import backlog  # noqa: E402
from tests.mailkit import write_config  # noqa: E402
from tests.servers import DovecotServer, SmtpCapture, throwaway_database  # noqa: E402


def fill(server: DovecotServer, messages: list[bytes]) -> None:
    with server.client() as mb:
        for raw in messages:
            mb.client.append("INBOX", None, None, raw)


def raw_limit(server: DovecotServer) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    with server.client() as mb:
        for msg in mb.fetch(mark_seen=False, bulk=1000):
            email.message_from_bytes(msg.obj.as_bytes(), policy=email.policy.default)
            count += 1
    return time.perf_counter() - start, count


def run_mailbot(config: Path) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mailbot", "run", "--once", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"mailbot run failed ({status}):\n{out[-2000:]}")
    return elapsed, usage.ru_maxrss // 1024, out


def one(db: str, messages: list[bytes]) -> dict:
    server, smtp = DovecotServer(), SmtpCapture()
    server.start()
    smtp.start()
    try:
        fill(server, messages)
        raw_seconds, fetched = raw_limit(server)
        with tempfile.TemporaryDirectory() as tmp:
            if db == "postgresql":
                with throwaway_database() as url:
                    config = write_config(Path(tmp), db_url=url, dovecot=server, smtp=smtp, staff=[],
                                          rules=bench_rules(Path(tmp)))
                    _patch_batch(config)
                    seconds, rss_mb, out = run_mailbot(config)
            else:
                config = write_config(Path(tmp), db_url=f"sqlite:///{tmp}/bench.db", dovecot=server,
                                      smtp=smtp, staff=[], rules=bench_rules(Path(tmp)))
                _patch_batch(config)
                seconds, rss_mb, out = run_mailbot(config)
        left = len(server.uids("INBOX"))
        return {"db": db, "messages": len(messages), "raw_fetch_parse_per_s": round(fetched / raw_seconds, 1),
                "mailbot_per_s": round(len(messages) / seconds, 1),
                "ratio": round((len(messages) / seconds) / (fetched / raw_seconds), 3),
                "peak_rss_mb": rss_mb, "acknowledgements": len(smtp.messages), "left_in_inbox": left,
                "mailbot_seconds": round(seconds, 2), "raw_seconds": round(raw_seconds, 2)}
    finally:
        smtp.stop()
        server.close()


def bench_rules(tmp: Path) -> Path:
    """The shipped rules, with the flood limit (replies per hour) raised: a backlog import is
    exactly the burst that limit exists to stop, and the benchmark wants every letter sent."""
    rules = tmp / "rules"
    shutil.copytree(REPO / "rules", rules)
    policy = rules / "policy.toml"
    text = policy.read_text()
    assert "replies_per_hour = 500" in text, "rules/policy.toml [limits] changed: update the bench"
    policy.write_text(text.replace("replies_per_hour = 500", "replies_per_hour = 100000"))
    return rules


def _patch_batch(config: Path) -> None:
    text = config.read_text().replace("poll_seconds = 1", "poll_seconds = 1\nbatch_size = 500")
    config.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    messages = backlog(args.messages)
    rows = [one(db, messages) for db in args.db.split(",")]
    if args.json:
        print(json.dumps({"backlog": rows}))
        return
    print(f"{'db':<11}{'msgs':>7}{'raw msg/s':>11}{'bot msg/s':>11}{'ratio':>7}{'RSS MB':>8}{'acks':>6}{'left':>6}")
    for r in rows:
        print(f"{r['db']:<11}{r['messages']:>7}{r['raw_fetch_parse_per_s']:>11.0f}{r['mailbot_per_s']:>11.0f}"
              f"{r['ratio']:>7.2f}{r['peak_rss_mb']:>8}{r['acknowledgements']:>6}{r['left_in_inbox']:>6}")
    print("targets: ratio >= 0.5 (sqlite), >= 0.4 (postgresql); peak RSS <= 300 MB")


if __name__ == "__main__":
    main()

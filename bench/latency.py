"""Latency benchmark: from a message's arrival to its acknowledgement, with the daemon idling.

    python bench/latency.py [--messages 200] [--interval 0.25] [--jitter 0.5] [--db sqlite]
                            [--json] [--details FILE.csv] [--py-spy FILE.json]

For each database (``--db sqlite``, ``postgresql`` or ``sqlite,postgresql``): a fresh Dovecot
and a local aiosmtpd capture are started, and ``mailbot run`` as a real daemon process on them
(rules and templates copied, so that edits in the working tree do not make it reload). IDLE is
not a config switch: the daemon waits with IMAP IDLE whenever the server offers it after login
(mailbot/transport/imap.py), which the bench checks, and polls every ``poll_seconds``
otherwise. ``poll_seconds`` is set to 30 (``--poll-seconds``), so only IDLE can wake the
daemon within a second. Once the daemon has looked at the mailbox (its heartbeat row) and
handled a few warm-up messages (not measured: the first one loads the classifier), N generated
messages (bench/generate.py: complaints, compliments, replies, texts, auto-replies,
newsletters) are APPENDed over one IMAP connection, one every ``--interval`` seconds
(+-``--jitter`` of it, from a fixed seed).

The latency of a message runs from just before its APPEND command to the moment the SMTP
capture receives the end of DATA of the letter to its sender that answers it (``In-Reply-To``
is its Message-ID, the recipient its From address). All messages are load, but only those
mailbot decided to answer count (an outgoing row to the sender in the database): robots get no
letter, and a complaint the classifier is unsure of goes to staff triage first. Prints p50,
p95 and max (nearest rank), how many answers arrived, and the server's own share: the median
time from APPEND to the EXISTS a plain IDLE client is told of (Dovecot 2.3 holds IDLE
notifications back by 0.5 s). ``--json`` prints one JSON object. Target: p95 < 1 s. The daemon
is stopped with SIGTERM at the end (it leaves its IDLE at the next re-issue, so this takes up to
``poll_seconds``) and must exit 0. Needs Dovecot (apt-get install dovecot-imapd) and, for
postgresql, the server on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import getaddresses
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.generate import message  # noqa: E402
from tests.mailkit import write_config  # noqa: E402
from tests.servers import DovecotServer, SmtpCapture, throwaway_database  # noqa: E402

READY_TIMEOUT = 120  # daemon start + first look at the mailbox
WARMUP_TIMEOUT = 120  # the first message loads the classifier


@dataclass
class Sent:
    message_id: str
    sender: str
    robot: bool  # auto-reply, list or bulk mail: never answered
    appended_at: float = 0.0


def _percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p of all values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def make_messages(n: int, seed: int, first: int = 0) -> tuple[list[bytes], list[Sent]]:
    rng = random.Random(seed)
    raws, sent = [], []
    for i in range(first, first + n):
        raw = message(i, rng)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        robot = any(parsed.get(h) for h in ("Auto-Submitted", "List-Id")) or \
            str(parsed.get("Precedence", "")).lower() in ("bulk", "list", "junk")
        address = getaddresses([str(parsed["From"])])[0][1].lower()
        raws.append(raw)
        sent.append(Sent(str(parsed["Message-ID"]).strip(), address, robot))
    return raws, sent


def answer_times(smtp: SmtpCapture, sent: list[Sent]) -> dict[str, float]:
    """Message-ID -> when the first letter answering it (to its sender) reached the capture."""
    wanted = {s.message_id: s.sender for s in sent}
    times: dict[str, float] = {}
    for letter in smtp.messages:
        in_reply_to = str(letter.message.get("In-Reply-To", "")).strip()
        sender = wanted.get(in_reply_to)
        if sender is None or in_reply_to in times:
            continue
        if sender in (r.lower() for r in letter.rcpt_tos):
            times[in_reply_to] = letter.received_at
    return times


def letters_to_senders(engine, sent: list[Sent]) -> set[str]:
    """Message-IDs of the measured messages that mailbot decided to answer (an outgoing row to
    the sender in reply to it, in the database), whatever the kind of mail: a complaint the
    classifier is unsure of goes to staff triage without a letter, robots get none."""
    from sqlmodel import Session, col, select

    from mailbot.cases.models import Message

    wanted = {s.message_id: s.sender for s in sent}
    with Session(engine) as session:
        rows = session.exec(select(Message.in_reply_to, Message.recipients).where(
            col(Message.direction) == "out", col(Message.in_reply_to).in_(list(wanted)))).all()
    found = set()
    for in_reply_to, recipients in rows:
        if wanted[in_reply_to] in (a.lower() for _, a in getaddresses(recipients.split(","))):
            found.add(in_reply_to)
    return found


def last_poll(engine) -> datetime | None:
    """The newest heartbeat of any daemon (mailbot.observe.DaemonState), as aware UTC."""
    from sqlmodel import Session, func, select

    from mailbot.observe import DaemonState

    try:
        with Session(engine) as session:
            value = session.exec(select(func.max(DaemonState.last_poll_at))).one()
    except Exception:  # noqa: BLE001 - the daemon has not created its tables yet
        return None
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise SystemExit(f"mailbot run exited ({proc.returncode}) while waiting for {what}:\n"
                             + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}:\n"
                             + log.read_text()[-3000:])
        time.sleep(0.05)


def check_idle(server: DovecotServer) -> None:
    """The daemon waits with IDLE when the server lists it after login (transport/imap.py)."""
    with server.client() as mb:
        typ, data = mb.client.capability()
    caps = data[-1].decode().upper().split() if typ == "OK" and data and data[-1] else []
    if "IDLE" not in caps:
        raise SystemExit(f"Dovecot does not offer IDLE after login ({caps}): the daemon would poll")


def idle_floor(server: DovecotServer, rounds: int = 5) -> float:
    """The server's own share: median time from APPEND to the EXISTS a plain IDLE client is told
    of (in a folder of its own, so the daemon never sees these messages). Dovecot 2.3 holds
    IDLE notifications back by 0.5 s (NOTIFY_DELAY_MSECS in src/lib-storage/mailbox-watch.c)."""
    folder = "latency-probe"
    times = []
    with server.client() as idler, server.client() as appender:
        if not idler.folder.exists(folder):
            idler.folder.create(folder)
        idler.folder.set(folder)
        for i in range(rounds):
            idler.idle.start()
            time.sleep(0.2)
            start = time.monotonic()
            appender.client.append(folder, None, None, message(10**7 + i, random.Random(i)))
            got = idler.idle.poll(timeout=10)
            times.append(time.monotonic() - start)
            idler.idle.stop()
            if not any(b"EXISTS" in r for r in got):
                raise SystemExit(f"the probe's IDLE was not told of its APPEND: {got!r}")
    return sorted(times)[len(times) // 2]


def measure(config: Path, db_url: str, server: DovecotServer, smtp: SmtpCapture, args) -> dict:
    from sqlalchemy import create_engine

    raws, sent = make_messages(args.messages, args.seed)
    warm_raws, warm = make_messages(args.warmup, args.seed + 1, first=10**6)

    def settled(batch: list[Sent]) -> bool:
        """The inbox is empty (every message recorded, its letters queued in the same
        transaction) and every letter to a sender of ``batch`` has reached the capture."""
        return not server.uids("INBOX") and \
            set(answer_times(smtp, batch)) >= letters_to_senders(engine, batch)

    log = config.parent / "daemon.log"
    engine = create_engine(db_url)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "mailbot", "run", "--config", str(config)],
                                cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: last_poll(engine) is not None, READY_TIMEOUT,
                   "the daemon's first look at the mailbox", proc, log)
        before = last_poll(engine)
        with server.client() as mb:
            for raw in warm_raws:
                mb.client.append("INBOX", None, None, raw)
        wait_until(lambda: settled(warm), WARMUP_TIMEOUT, "the warm-up messages", proc, log)
        # back to waiting: the heartbeat is written after a round, just before IDLE
        wait_until(lambda: last_poll(engine) > before, 30, "the daemon to go back to waiting",
                   proc, log)
        time.sleep(1)

        spy = None
        if args.py_spy:  # wall-clock profile of the daemon during the measured part
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--idle",
                                    "--rate", "250", "--format", "speedscope", "-o", args.py_spy],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        rng = random.Random(args.seed)
        with server.client() as mb:
            start = next_at = time.monotonic()
            for raw, s in zip(raws, sent):
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                s.appended_at = time.monotonic()
                typ, data = mb.client.append("INBOX", None, None, raw)
                if typ != "OK":
                    raise SystemExit(f"APPEND refused: {data!r}")
                next_at += args.interval * rng.uniform(1 - args.jitter, 1 + args.jitter)
        appending = time.monotonic() - start
        deadline = time.monotonic() + args.drain
        while not settled(sent) and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"mailbot run exited ({proc.returncode}):\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        answerable = letters_to_senders(engine, sent)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    finally:
        stop_started = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(args.poll_seconds + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        stop_seconds = time.monotonic() - stop_started
        engine.dispose()

    times = answer_times(smtp, sent)
    latencies = [times[s.message_id] - s.appended_at for s in sent if s.message_id in times]
    if args.details:  # one line per message, seconds from the first APPEND
        with open(args.details, "w") as out:
            out.write("message_id,appended_s,answered_s,latency_s\n")
            for s in sent:
                done = times.get(s.message_id)
                out.write(f"{s.message_id},{s.appended_at - start:.4f},"
                          f"{'' if done is None else f'{done - start:.4f}'},"
                          f"{'' if done is None else f'{done - s.appended_at:.4f}'}\n")
    if not latencies:
        raise SystemExit("no acknowledgement arrived:\n" + log.read_text()[-3000:])
    return {
        "messages": len(sent), "robots": sum(1 for s in sent if s.robot),
        "answerable": len(answerable), "received": len(latencies),
        "p50_s": round(_percentile(latencies, 0.50), 4), "p95_s": round(_percentile(latencies, 0.95), 4),
        "max_s": round(max(latencies), 4), "min_s": round(min(latencies), 4),
        "mean_s": round(sum(latencies) / len(latencies), 4),
        "over_1s": sum(1 for v in latencies if v >= 1.0),
        "appending_s": round(appending, 2), "letters_total": len(smtp.messages),
        "left_in_inbox": len(server.uids("INBOX")), "daemon_exit": code,
        "stop_s": round(stop_seconds, 2),
    }


def own_rules(tmp: Path) -> tuple[Path, Path]:
    """A copy of the shipped rules and templates: the daemon takes up edits of the files it
    runs on (a reload takes seconds), and edits in the working tree are not part of the
    measurement. The flood limit (letters per hour) is raised so that every letter is sent."""
    rules, templates = tmp / "rules", tmp / "templates"
    shutil.copytree(REPO / "rules", rules)
    shutil.copytree(REPO / "templates", templates)
    policy = rules / "policy.toml"
    policy.write_text(re.sub(r"(?m)^replies_per_hour = \d+", "replies_per_hour = 100000",
                             policy.read_text()))
    return rules, templates


def one(db: str, args) -> dict:
    server, smtp = DovecotServer(), SmtpCapture()
    server.start()
    smtp.start()
    try:
        check_idle(server)
        floor = idle_floor(server)
        with tempfile.TemporaryDirectory() as tmp:
            def run(url: str) -> dict:
                rules, templates = own_rules(Path(tmp))
                config = write_config(Path(tmp), db_url=url, dovecot=server, smtp=smtp, rules=rules)
                text = config.read_text().replace(
                    "poll_seconds = 1", f"poll_seconds = {args.poll_seconds:g}")
                config.write_text(text.replace(f'templates = "{REPO / "templates"}"',
                                               f'templates = "{templates}"'))
                return measure(config, url, server, smtp, args)

            if db == "postgresql":
                with throwaway_database() as url:
                    row = run(url)
            else:
                row = run(f"sqlite:///{tmp}/bench.db")
        return {"db": db, "interval_s": args.interval, "jitter": args.jitter, "wait": "imap idle",
                "poll_seconds": args.poll_seconds, "server_idle_notify_s": round(floor, 4), **row}
    finally:
        smtp.stop()
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between APPENDs (mean)")
    ap.add_argument("--jitter", type=float, default=0.5,
                    help="each interval is drawn from interval * [1 - jitter, 1 + jitter]")
    ap.add_argument("--db", default="sqlite", help="sqlite, postgresql or both, comma-separated")
    ap.add_argument("--poll-seconds", type=float, default=30,
                    help="the daemon's poll_seconds (its IDLE is re-issued this often)")
    ap.add_argument("--warmup", type=int, default=3, help="messages answered before the clock starts")
    ap.add_argument("--drain", type=float, default=60,
                    help="how long to wait for the last acknowledgements after the last APPEND")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--details", metavar="FILE.csv", help="write each message's times to FILE.csv")
    ap.add_argument("--py-spy", metavar="FILE.json",
                    help="record a wall-clock py-spy profile (speedscope) of the measured part")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 0 <= args.jitter < 1:
        ap.error("--jitter must be in [0, 1)")
    rows = [one(db, args) for db in args.db.split(",")]
    if args.json:
        print(json.dumps({"latency": rows}))
        return
    print(f"{'db':<11}{'msgs':>6}{'answered':>10}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}{'>=1s':>6}"
          f"{'IDLE ms':>9}{'left':>6}{'exit':>6}")
    for r in rows:
        print(f"{r['db']:<11}{r['messages']:>6}{str(r['received']) + '/' + str(r['answerable']):>10}"
              f"{r['p50_s'] * 1000:>8.0f}{r['p95_s'] * 1000:>8.0f}{r['max_s'] * 1000:>8.0f}"
              f"{r['over_1s']:>6}{r['server_idle_notify_s'] * 1000:>9.0f}{r['left_in_inbox']:>6}"
              f"{r['daemon_exit']:>6}")
    print("IDLE ms: the server alone, from APPEND to the EXISTS an idle client is told of (median)")
    print(f"one message every {args.interval:g} s (+-{args.jitter:.0%}), daemon waiting with IMAP IDLE "
          f"(poll_seconds = {args.poll_seconds:g}); target: p95 < 1 s")


if __name__ == "__main__":
    main()

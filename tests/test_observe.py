"""Observability: `mailbot status` and the Prometheus endpoint show what the daemon is doing."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from mailbot.app import App
from mailbot.daemon import Daemon
from tests.mailkit import make_mail, run_cli, write_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_and_metrics_of_a_running_daemon(tmp_path, dovecot, smtp_server, sqlite_url):
    port = _free_port()
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[],
                          extra=f"\n[metrics]\nport = {port}\n")
    for i in range(3):
        dovecot.append(make_mail(sender=f"P{i} <p{i}@example.com>", subject="Complaint",
                                 body="I want to complain, the session was cancelled again. Not good enough."))
    dovecot.append(b"From: x@example.com\r\nSubject: broken\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n\r\n" + bytes(range(128, 256)) * 20 + b"\r\n")
    app = App.load(config)
    daemon = Daemon(app)
    daemon.serve_metrics()
    thread = threading.Thread(target=daemon.run_forever, daemon=True)
    thread.start()
    try:
        smtp_server.wait_for(3, timeout=30)
        time.sleep(1.5)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'mailbot_messages_total{action="case_opened"} 3.0' in metrics
        assert 'mailbot_messages_total{action="quarantined"} 1.0' in metrics
        assert 'mailbot_letters_total{result="sent"} 3.0' in metrics
        assert "mailbot_last_poll_timestamp_seconds" in metrics
        dovecot.append(make_mail(sender="Late <late@example.com>", subject="Complaint",
                                 body="I want to complain about the minibus, it never came."))
        result = run_cli("status", "--json", "--config", str(config))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        running = [d for d in report["daemons"] if d["running"]]
        assert len(running) == 1 and running[0]["handled"] >= 4 and running[0]["seconds_since_poll"] < 30
        assert report["outbox"]["sent"] >= 3 and report["quarantined_last_7_days"] == 1
        assert report["inbox_waiting"] in (0, 1)
        assert report["cases_by_status"]
        text = run_cli("status", "--no-mailbox", "--config", str(config))
        assert "outbox:" in text.stdout and "quarantined in the last 7 days: 1" in text.stdout
    finally:
        daemon.stop()
        thread.join(30)
        daemon.close()
    stopped = json.loads(run_cli("status", "--json", "--no-mailbox", "--config", str(config)).stdout)
    assert not any(d["running"] for d in stopped["daemons"])
    app.close()

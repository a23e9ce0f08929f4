"""Outages: the IMAP server goes away and comes back, the mail server refuses for a while, the
database becomes unreachable.  The daemon logs, backs off, recovers and drains the backlog, and
no message leaves the inbox before it is handled."""

from __future__ import annotations

import socket
import threading
import time

from sqlmodel import select

from mailbot.app import App
from mailbot.cases.models import Case
from mailbot.daemon import Daemon
from tests.mailkit import make_mail, write_config


class TcpProxy:
    """A loopback TCP forwarder we can cut and restore, standing in for a network outage."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(50)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Cut the line: refuse new connections and break the open ones."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                except OSError:
                    pass
            self._conns.clear()


def _complaint(i: int) -> bytes:
    return make_mail(sender=f"Person {i} <p{i}@example.com>", subject=f"Complaint about session {i}",
                     body=f"I want to complain. The session on day {i} was cancelled without notice "
                          "and nobody told us. This is not good enough.")


def _start(app: App) -> tuple[Daemon, threading.Thread]:
    daemon = Daemon(app)
    thread = threading.Thread(target=daemon.run_forever, daemon=True)
    thread.start()
    return daemon, thread


def _stop(daemon: Daemon, thread: threading.Thread) -> None:
    daemon.stop()
    thread.join(60)
    daemon.close()
    assert not thread.is_alive()


def _wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_imap_server_restarted_mid_run(tmp_path, dovecot, smtp_server, sqlite_url):
    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon, thread = _start(app)
    try:
        for i in range(3):
            dovecot.append(_complaint(i))
        smtp_server.wait_for(3, timeout=30)
        dovecot.stop()
        time.sleep(2)  # the daemon meets a dead connection and backs off
        assert thread.is_alive()
        dovecot.start()
        for i in range(3, 6):
            dovecot.append(_complaint(i))
        smtp_server.wait_for(6, timeout=40)
    finally:
        _stop(daemon, thread)
    assert dovecot.uids("INBOX") == []
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [f"p{i}@example.com" for i in range(6)]
    app.close()


def test_smtp_refusing_for_a_while_then_everything_goes_once(tmp_path, dovecot, smtp_server, sqlite_url):
    config = write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[])
    config.write_text(config.read_text().replace('from = "Complaints Team <complaints@example.org>"\ntimeout',
                                                 'from = "Complaints Team <complaints@example.org>"\nretry_seconds = 0.5\ntimeout'))
    app = App.load(config)
    assert app.config.outgoing.retry_seconds == 0.5
    smtp_server.refuse(451, "4.3.0 Try again later")
    daemon, thread = _start(app)
    try:
        for i in range(4):
            dovecot.append(_complaint(i))
        _wait_for(lambda: dovecot.uids("INBOX") == [])  # handled and committed while SMTP refuses
        time.sleep(3)
        assert smtp_server.messages == [] and smtp_server.refused_count >= 2
        smtp_server.accept()
        smtp_server.wait_for(4, timeout=40)
        time.sleep(2)
    finally:
        _stop(daemon, thread)
    ids = [m.message["Message-ID"] for m in smtp_server.messages]
    assert len(ids) == 4 == len(set(ids))
    app.close()


def test_database_unreachable_for_a_while(tmp_path, dovecot, smtp_server, pg_url):
    proxy = TcpProxy(5432)
    proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    app = App.load(write_config(tmp_path, db_url=url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon, thread = _start(app)
    try:
        for i in range(2):
            dovecot.append(_complaint(i))
        smtp_server.wait_for(2, timeout=30)
        proxy.stop()
        for i in range(2, 5):
            dovecot.append(_complaint(i))
        time.sleep(4)
        assert thread.is_alive()
        assert len(dovecot.uids("INBOX")) == 3  # nothing moved while nothing could be recorded
        proxy.start()
        smtp_server.wait_for(5, timeout=60)
        _wait_for(lambda: dovecot.uids("INBOX") == [], timeout=30)
    finally:
        _stop(daemon, thread)
        proxy.stop()
    app.close()
    direct = App.load(write_config(tmp_path, db_url=pg_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    with direct.db.session() as s:
        assert len(s.exec(select(Case)).all()) == 5
    direct.close()
    assert len({m.message["Message-ID"] for m in smtp_server.messages}) == 5


def test_sqlite_locked_by_another_writer_for_a_while(tmp_path, dovecot, smtp_server, sqlite_url):
    import sqlite3

    app = App.load(write_config(tmp_path, db_url=sqlite_url, dovecot=dovecot, smtp=smtp_server, staff=[]))
    daemon, thread = _start(app)
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # e.g. a backup or a report holding the database
    try:
        for i in range(3):
            dovecot.append(_complaint(i))
        time.sleep(3)
        assert smtp_server.messages == [] and len(dovecot.uids("INBOX")) == 3
        blocker.execute("COMMIT")
        smtp_server.wait_for(3, timeout=40)
        _wait_for(lambda: dovecot.uids("INBOX") == [])
    finally:
        blocker.close()
        _stop(daemon, thread)
    assert len({m.message["Message-ID"] for m in smtp_server.messages}) == 3
    app.close()

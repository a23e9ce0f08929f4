"""Observability: what is the daemon doing, and is anything stuck?

- A heartbeat row per running daemon (``DaemonState``), written once per loop, so
  ``mailbot status`` can say when each daemon last looked at the mailbox and what went wrong
  last, even from another machine.
- Optional Prometheus metrics (``[metrics] port``): messages handled by action, letters sent
  and failed, the outbox queue, the last poll time.
- ``status_report`` gathers the figures ``mailbot status`` prints (references and counts only:
  no names or mail bodies).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import Optional

from sqlmodel import Field, Session, SQLModel, col, func, select

from mailbot.cases.models import Case, Message, utcnow


class DaemonState(SQLModel, table=True):
    name: str = Field(primary_key=True)  # host:pid
    started_at: datetime = Field(default_factory=utcnow)
    last_poll_at: Optional[datetime] = None
    handled: int = 0
    last_error: str = ""
    last_error_at: Optional[datetime] = None
    stopped_at: Optional[datetime] = None


def daemon_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    def __init__(self, db):
        self.db = db
        self.name = daemon_name()
        try:
            with db.session() as session:
                session.merge(DaemonState(name=self.name, started_at=utcnow()))
        except Exception:  # noqa: BLE001 - the database may be busy or down: the loop copes
            pass

    def beat(self, handled: int = 0, error: str | None = None) -> None:
        try:
            with self.db.session() as session:
                state = session.get(DaemonState, self.name) or DaemonState(name=self.name)
                state.last_poll_at = utcnow()
                state.handled += handled
                if error:
                    state.last_error, state.last_error_at = error[:500], utcnow()
                session.add(state)
        except Exception:  # noqa: BLE001 - a heartbeat must never stop the daemon
            pass

    def stopped(self) -> None:
        try:
            with self.db.session() as session:
                state = session.get(DaemonState, self.name)
                if state is not None:
                    state.stopped_at = utcnow()
                    session.add(state)
        except Exception:  # noqa: BLE001
            pass


class Metrics:
    """Prometheus counters and gauges; a no-op when no port is configured."""

    def __init__(self, port: int = 0, address: str = "127.0.0.1"):
        self.enabled = bool(port)
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.messages = Counter("mailbot_messages", "Inbound messages handled, by outcome",
                                ["action"], registry=self.registry)
        self.letters = Counter("mailbot_letters", "Outgoing letters, by result", ["result"],
                               registry=self.registry)
        self.outbox = Gauge("mailbot_outbox_queued", "Letters waiting to be sent", registry=self.registry)
        self.last_poll = Gauge("mailbot_last_poll_timestamp_seconds", "When the mailbox was last read",
                               registry=self.registry)
        self.errors = Counter("mailbot_loop_errors", "Outages and errors met by the daemon loop",
                              registry=self.registry)
        self.server, _thread = start_http_server(port, addr=address, registry=self.registry)

    def handled(self, action: str) -> None:
        if self.enabled:
            self.messages.labels(action=action).inc()

    def sent(self, sent: int, retry: int, failed: int) -> None:
        if self.enabled:
            self.letters.labels(result="sent").inc(sent)
            self.letters.labels(result="retry").inc(retry)
            self.letters.labels(result="failed").inc(failed)

    def polled(self, queued: int) -> None:
        if self.enabled:
            self.last_poll.set(utcnow().timestamp())
            self.outbox.set(queued)

    def error(self) -> None:
        if self.enabled:
            self.errors.inc()

    def close(self) -> None:
        if self.enabled:
            self.server.shutdown()


def status_report(session: Session) -> dict:
    now = utcnow()
    outbox = dict(session.exec(select(Message.delivery, func.count()).where(
        col(Message.direction) == "out").group_by(Message.delivery)).all())
    oldest = session.exec(select(func.min(Message.at)).where(
        col(Message.direction) == "out", col(Message.delivery) == "queued")).one()
    quarantined = session.exec(select(func.count()).select_from(Message).where(
        col(Message.direction) == "in", col(Message.outcome) == "quarantined",
        col(Message.at) >= now - timedelta(days=7))).one()
    cases = dict(session.exec(select(Case.status, func.count()).group_by(Case.status)).all())
    daemons = [{"name": d.name, "started_at": d.started_at.isoformat(),
                "last_poll_at": d.last_poll_at.isoformat() if d.last_poll_at else None,
                "seconds_since_poll": round((now - d.last_poll_at).total_seconds()) if d.last_poll_at else None,
                "handled": d.handled, "last_error": d.last_error,
                "last_error_at": d.last_error_at.isoformat() if d.last_error_at else None,
                "running": d.stopped_at is None}
               for d in session.exec(select(DaemonState).order_by(col(DaemonState.started_at).desc())).all()]
    return {
        "daemons": daemons,
        "outbox": {"queued": outbox.get("queued", 0), "sent": outbox.get("sent", 0),
                   "failed": outbox.get("failed", 0),
                   "oldest_queued": oldest.isoformat() if oldest else None},
        "quarantined_last_7_days": quarantined,
        "cases_by_status": cases,
    }

"""The daemon loop: fetch -> process (commit) -> move -> deliver, forever or once.

Order is what makes it safe: a message is moved out of the inbox only after ``process``
committed its outcome, and mail is sent only from the committed outbox.  Any trouble with the
mailbox, the mail server or the database is logged and retried with growing pauses; it never
turns into a crash loop and never moves a message that was not handled.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from mailbot import outbox
from mailbot.app import App
from mailbot.observe import Heartbeat, Metrics
from mailbot.classify import Classification
from mailbot.intake.parse import ParsedMessage, ParseError, parse
from mailbot.pipeline import (STORAGE_ERRORS, Breaker, InternalError, Lookup, Outcome, StorageUnavailable, dedupe_key,
                              lookup, process_batch)
from mailbot.transport.base import Incoming, Mailbox, Sender, TransportError

log = logging.getLogger(__name__)
PURGE_EVERY_SECONDS = 24 * 3600
BREAKER_LIMIT = 3  # after this many bugs in a row, stop quarantining and back off
# Messages committed together (each in its own savepoint): fewer commits and lock round trips
# per message, while a batch still leaves the inbox soon after it was committed.
TRANSACTION_SIZE = 100


@dataclass
class RunReport:
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0
    send_retries: int = 0
    send_failures: int = 0
    errors: list[str] = field(default_factory=list)


class Daemon:
    def __init__(self, app: App, mailbox: Mailbox | None = None, sender: Sender | None = None):
        self.app = app
        self.mailbox = mailbox or app.open_mailbox()
        self.sender = sender or app.open_sender()
        self.stopping = threading.Event()
        self.mailbox.stopping = self.stopping  # its wait ends at once when we stop
        self.batch_size = app.config.mailbox.batch_size
        self.batch_bytes = app.config.mailbox.batch_megabytes * 1024 * 1024
        self.more_waiting = False
        self.heartbeat = Heartbeat(app.db)
        self.breaker = Breaker(limit=BREAKER_LIMIT)
        self._last_purge = -PURGE_EVERY_SECONDS
        self.metrics = Metrics()  # switched on by serve_metrics(), for the long-running daemon
        self.follow_ups = None  # mailbot.scheduler.FollowUpScheduler, started by run_forever
        self.rules_watch = None  # mailbot.admin.reload.RulesWatch, started by run_forever

    def serve_metrics(self) -> None:
        cfg = self.app.config.metrics
        if cfg.port:
            self.metrics = Metrics(cfg.port, cfg.address)
            log.info("metrics on http://%s:%s/metrics", cfg.address, cfg.port)

    @property
    def internal_errors(self) -> int:
        """Consecutive messages that met a bug (the circuit breaker's count)."""
        return self.breaker.in_a_row

    def handle_batch(self, report: RunReport, seen: set[str]) -> int:
        """One round; returns how many messages were new in it, and sets ``more_waiting`` when
        more mail may be waiting right now (a full batch, or one the byte budget cut short).
        Messages are committed ``TRANSACTION_SIZE`` at a time and each group leaves the inbox
        right after its commit."""
        batch = self.mailbox.fetch(self.batch_size, self.batch_bytes)
        fresh = [m for m in batch if m.uid not in seen]
        self.more_waiting = bool(fresh) and (len(batch) >= self.batch_size or getattr(batch, "more", False))
        prepared, checked = self.prepare(fresh)
        for start in range(0, len(fresh), TRANSACTION_SIZE):
            if self.stopping.is_set():
                break
            group = fresh[start:start + TRANSACTION_SIZE]
            items = [(m, *prepared.get(m.uid, (None, None))) for m in group]
            outcomes = process_batch(self.app, items, self.breaker, checked)
            done: dict[str, list[str]] = {"processed": [], "quarantine": []}
            for outcome in outcomes:
                self.metrics.handled(outcome.action)
                seen.add(outcome.uid)
                report.outcomes.append(outcome)
                done[outcome.destination].append(outcome.uid)
            # what was committed leaves the inbox, even if the breaker stopped the group
            for destination, uids in done.items():
                self.mailbox.move(uids, destination)
            if self.breaker.error is not None:
                self.deliver(report)
                raise self.breaker.error
        self.deliver(report)
        return len(fresh)

    def prepare(self, batch: list[Incoming]) -> tuple[dict[str, tuple[ParsedMessage, Classification | None]],
                                                      Lookup | None]:
        """Parse the batch, look up in one query which messages are already recorded (and
        which are our own letters), and classify the rest in one ``nlp.pipe`` run.  Anything
        that fails here is simply left for ``process_batch`` to handle (and quarantine)."""
        parsed: dict[str, ParsedMessage] = {}
        for incoming in batch:
            try:
                parsed[incoming.uid] = parse(incoming.raw)
            except ParseError:
                continue
        try:
            checked = lookup(self.app, list(parsed.values()))
        except Exception:  # noqa: BLE001 - process_batch() will meet the same trouble and report it
            return {}, None
        todo = [(uid, m) for uid, m in parsed.items() if dedupe_key(m, m.sha256) not in checked.known]
        results: dict[str, tuple[ParsedMessage, Classification | None]] = {
            uid: (m, None) for uid, m in parsed.items()}
        try:
            classified = self.app.classifier.classify_many([m for _, m in todo])
        except Exception:  # noqa: BLE001
            log.exception("batch classification failed; classifying one by one")
            return results, checked
        for (uid, msg), cls in zip(todo, classified):
            results[uid] = (msg, cls)
        return results, checked

    def deliver(self, report: RunReport) -> None:
        try:
            counts = outbox.deliver(self.app.db, self.sender,
                                    retry_seconds=self.app.config.outgoing.retry_seconds)
        except STORAGE_ERRORS as exc:
            raise StorageUnavailable(f"database unavailable while sending: {exc}") from exc
        report.sent += counts["sent"]
        report.send_retries += counts["retry"]
        report.send_failures += counts["failed"]
        self.metrics.sent(counts["sent"], counts["retry"], counts["failed"])

    def run_once(self) -> RunReport:
        """Handle everything waiting in the inbox, send what is due, and return."""
        report = RunReport()
        seen: set[str] = set()
        while not self.stopping.is_set():
            if self.handle_batch(report, seen) == 0:
                break
        return report

    def start_follow_up_scheduler(self) -> None:
        """APScheduler wakes the follow-up sweep at the moments things fall due, also while the
        loop waits for mail; without it (it failed to start) the loop's own sweep still sends
        everything, only up to one poll later."""
        from mailbot.scheduler import FollowUpScheduler

        runner = None
        try:
            runner = FollowUpScheduler(self.app, sender_factory=self.app.open_sender)
            runner.start()
            self.follow_ups = runner
        except Exception:  # noqa: BLE001
            log.exception("follow-up scheduler not started; follow-ups are sent every round instead")
            if runner is not None:
                try:
                    runner.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            self.follow_ups = None

    def run_follow_ups(self, report: RunReport | None = None):
        """Carry out the follow-ups that are due (mailbot.scheduler: reminders, escalations,
        holding letters, reports), send them, and bring the scheduler's jobs up to date.  The
        same sweep as APScheduler's job: the database makes each follow-up happen once."""
        from contextlib import nullcontext

        from mailbot.scheduler import sweep

        try:
            with self.follow_ups.lock if self.follow_ups is not None else nullcontext():
                result = sweep(self.app)
        except STORAGE_ERRORS as exc:  # the database is away: the loop waits and tries again
            raise StorageUnavailable(str(exc)) from exc
        if result.done:
            self.deliver(report or RunReport())
        if self.follow_ups is not None:
            try:
                self.follow_ups.sync(items=result.upcoming)
            except Exception:  # noqa: BLE001 - the next round sweeps anyway
                log.exception("could not update the follow-up jobs")
        return result

    def run_forever(self) -> None:
        pause = 1.0
        report = RunReport()
        seen: set[str] = set()
        self.start_follow_up_scheduler()
        self.start_rules_watch()
        while not self.stopping.is_set():
            try:
                self.reload_rules(report)
                while self.handle_batch(report, seen) and self.more_waiting:
                    self.reload_rules(report)
                seen.clear()
                self.run_follow_ups(report)
                pause = 1.0
                self.heartbeat.beat(len(report.outcomes))
                self.purge_if_due()
                if self.metrics.enabled:
                    self.metrics.polled(outbox.pending_count(self.app.db))
                self.mailbox.wait(self.app.config.mailbox.poll_seconds)
            except InternalError as exc:
                log.error("the same kind of failure on %s messages in a row (%s): leaving the rest "
                          "in the inbox and retrying in %.0f s; fix the cause, then `mailbot requeue`",
                          self.internal_errors, exc, pause)
                self.heartbeat.beat(error=f"circuit breaker open: {exc}")
                self.metrics.error()
                self.stopping.wait(pause)
                pause = min(pause * 2, 300)
            except (TransportError, StorageUnavailable) as exc:
                log.warning("%s; retrying in %.0f s", exc, pause)
                self.heartbeat.beat(error=str(exc))
                self.metrics.error()
                self.stopping.wait(pause)
                pause = min(pause * 2, 300)
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the daemon or spin it
                log.exception("unexpected error in the daemon loop; retrying in %.0f s", pause)
                self.heartbeat.beat(error=f"{type(exc).__name__}: {exc}")
                self.metrics.error()
                self.stopping.wait(pause)
                pause = min(pause * 2, 300)
            report.outcomes.clear()

    def start_rules_watch(self) -> None:
        """Live reload of rules/, templates/ and the model (mailbot.admin.reload): the set the
        daemon starts with is checked and kept in a snapshot; a later edit is taken up between
        batches if it passes the checks, else refused (the admin is told) and the daemon keeps
        the set it has.  Without it (it failed to start) the daemon runs as before."""
        from contextlib import nullcontext

        from mailbot.admin.reload import RulesWatch

        def lock():
            return self.follow_ups.lock if self.follow_ups is not None else nullcontext()

        try:
            self.rules_watch = RulesWatch(self.app, wait=self.stopping.wait, lock=lock)
            started = self.rules_watch.start()
        except Exception:  # noqa: BLE001
            log.exception("live reload of the rules not started; restart the daemon after a change")
            self.rules_watch = None
            return
        if started.told:  # the rules had problems at start: tell the admin now
            try:
                self.deliver(RunReport())
            except Exception:  # noqa: BLE001 - queued: the loop's next delivery sends it
                log.warning("the admin's letter about the rules waits for the next delivery")

    def reload_rules(self, report: RunReport) -> None:
        """Between batches: take up changed rules (or refuse them) and send the admin's letter."""
        if self.rules_watch is not None and self.rules_watch.check() is not None:
            self.deliver(report)

    def purge_if_due(self) -> None:
        """Once a day, erase what the retention rules say is due (idempotent, so a restart that
        purges again does no harm)."""
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        from mailbot.retention import execute, plan_purge, remove_from_mailbox

        with self.app.db.session() as session:
            plan = plan_purge(session, self.app.rules)
        if plan.cases or plan.records:
            result = execute(self.app.db, plan)
            removed = remove_from_mailbox(self.mailbox, result.message_ids)
            log.info("retention: erased %s case(s), %s record(s), %s mailbox copies", result.cases,
                     len(plan.records), removed)

    def stop(self, *_args) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def close(self) -> None:
        if self.follow_ups is not None:
            self.follow_ups.shutdown()
        if self.rules_watch is not None:
            self.rules_watch.close()
        self.heartbeat.stopped()
        self.metrics.close()
        for part in (self.mailbox, self.sender):
            try:
                part.close()
            except Exception:  # noqa: BLE001
                log.debug("close failed", exc_info=True)

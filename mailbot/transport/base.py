"""The transport contract: every mailbox kind (maildir, IMAP, Exchange) offers the same small API.

The daemon only ever needs three things from a mailbox: the messages waiting in it (each with
an id that stays stable until the message is moved), a way to move handled messages to the
processed or quarantine folder, and a way to wait for new mail.  Outgoing mail is a separate,
even smaller contract.
"""

from __future__ import annotations

import time

from dataclasses import dataclass
from typing import Literal, Protocol

Destination = Literal["processed", "quarantine"]


class TransportError(Exception):
    """The mailbox or mail server could not be used right now (network, login, server error).

    The daemon backs off and reconnects; nothing has been moved or lost."""


@dataclass(frozen=True)
class Incoming:
    uid: str  # stable while the message sits in the inbox, e.g. "imap:INBOX:1700000000:42"
    raw: bytes


class Batch(list):
    """The messages one ``fetch`` returned, oldest first.  ``more`` is True when the byte
    budget, not the inbox, ended the batch: the daemon then fetches again at once."""

    def __init__(self, items=(), more: bool = False):
        super().__init__(items)
        self.more = more


def within_budget(sizes: list[int], max_bytes: int | None) -> int:
    """How many of the first messages (``sizes`` in order) fit in ``max_bytes`` together;
    always at least one, so a single message bigger than the budget is still handled (alone)
    and never blocks the inbox."""
    if max_bytes is None:
        return len(sizes)
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > max_bytes and count > 0:
            return count
    return len(sizes)


class Mailbox(Protocol):
    description: str

    def fetch(self, limit: int, max_bytes: int | None = None) -> list[Incoming]:
        """Up to ``limit`` waiting messages, oldest first, together at most ``max_bytes`` but
        always at least one (IMAP and maildir know the sizes before fetching; Exchange and Graph
        find out as the messages come and drop the one that overflows): a backlog of big attachments is taken a few at a time instead of
        all at once into memory.  May return a ``Batch`` whose ``more`` says the budget cut it."""
        ...

    def move(self, uids: list[str], destination: Destination) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Block until new mail may have arrived (True) or the timeout passed (False).  Ends
        early, returning False, once ``stopping`` (see ``pause``) is set."""
        ...

    def close(self) -> None: ...


class Sender(Protocol):
    description: str

    def send(self, raw: bytes, mail_from: str, recipients: list[str]) -> None:
        """Hand one message to the next hop; raise on failure (temporary or permanent)."""
        ...

    def close(self) -> None: ...


class PermanentSendError(Exception):
    """The server refused the message for good (5xx): retrying would not help."""


def pause(mailbox: object, seconds: float) -> None:
    """Sleep in a mailbox's ``wait``, but wake at once when the daemon is told to stop: the
    daemon gives its mailbox its ``stopping`` event, so `systemctl stop` does not wait up to
    ``poll_seconds`` for the next poll."""
    stopping = getattr(mailbox, "stopping", None)
    if stopping is None:
        time.sleep(seconds)
    else:
        stopping.wait(seconds)


def stopping_now(mailbox: object) -> bool:
    stopping = getattr(mailbox, "stopping", None)
    return stopping is not None and stopping.is_set()

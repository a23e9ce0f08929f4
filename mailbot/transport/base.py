"""The transport contract: every mailbox kind (maildir, IMAP, Exchange) offers the same small API.

The daemon only ever needs three things from a mailbox: the messages waiting in it (each with
an id that stays stable until the message is moved), a way to move handled messages to the
processed or quarantine folder, and a way to wait for new mail.  Outgoing mail is a separate,
even smaller contract.
"""

from __future__ import annotations

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


class Mailbox(Protocol):
    description: str

    def fetch(self, limit: int) -> list[Incoming]: ...

    def move(self, uids: list[str], destination: Destination) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Block until new mail may have arrived (True) or the timeout passed (False)."""
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

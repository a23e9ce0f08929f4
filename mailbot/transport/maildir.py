"""A local Maildir as the mailbox: the embedded default and what the README's first run uses.

Handled mail is moved into Maildir++ subfolders (``.mailbot.processed``) with a single
``rename``, so a crash never leaves a message in two places or in none.
"""

from __future__ import annotations

import mailbox
import os
import time
from pathlib import Path

from mailbot.transport.base import Batch, Destination, Incoming, pause, stopping_now, TransportError


class MaildirMailbox:
    def __init__(self, path: Path, processed_folder: str, quarantine_folder: str):
        self.path = Path(path)
        self.description = f"maildir {self.path}"
        try:
            for sub in ("new", "cur", "tmp"):  # git keeps no empty directories
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            self._inbox = mailbox.Maildir(self.path, factory=None, create=True)
        except OSError as exc:
            raise TransportError(f"cannot open maildir {self.path}: {exc}") from exc
        self._folders = {
            "processed": self._subfolder(processed_folder),
            "quarantine": self._subfolder(quarantine_folder),
        }
        self._seen_mtime = 0.0

    def _subfolder(self, name: str) -> mailbox.Maildir:
        maildir_name = name.replace("/", ".").strip(".")
        try:
            return self._inbox.get_folder(maildir_name)
        except mailbox.NoSuchMailboxError:
            return self._inbox.add_folder(maildir_name)

    def fetch(self, limit: int, max_bytes: int | None = None) -> list[Incoming]:
        self._inbox._refresh()  # pick up mail delivered since the last look
        out, total = Batch(), 0
        for key in sorted(self._inbox.iterkeys()):
            if len(out) >= limit:
                break
            try:
                size = os.path.getsize(os.path.join(self._inbox._path, self._inbox._lookup(key)))
                if out and max_bytes is not None and total + size > max_bytes:
                    out.more = True
                    break
                raw = self._inbox.get_bytes(key)
            except (KeyError, FileNotFoundError):
                continue  # moved by someone else meanwhile
            total += len(raw)
            out.append(Incoming(uid=f"maildir:{key}", raw=raw))
        return out

    def count(self) -> int:
        """Messages waiting in the inbox (for `mailbot status`)."""
        self._inbox._refresh()
        return len(self._inbox)

    def requeue(self) -> int:
        """Put every quarantined message back into the inbox (after the cause was fixed)."""
        folder = self._folders["quarantine"]
        folder._refresh()
        moved = 0
        for key in list(folder.iterkeys()):
            try:
                src = os.path.join(folder._path, folder._lookup(key))
            except KeyError:
                continue
            os.rename(src, os.path.join(self._inbox._path, "new", os.path.basename(src).split(":")[0]))
            moved += 1
        return moved

    def delete_handled(self, message_ids: list[str]) -> int:
        """Remove handled copies (processed and quarantine folders) with these Message-IDs:
        retention and erasure must not leave the mail behind in the mailbox."""
        from email.parser import BytesHeaderParser

        wanted = {m.strip().lower() for m in message_ids}
        parser, removed = BytesHeaderParser(), 0
        for folder in self._folders.values():
            folder._refresh()
            for key in list(folder.iterkeys()):
                try:
                    headers = parser.parsebytes(folder.get_bytes(key))
                except (KeyError, OSError):
                    continue
                if str(headers.get("Message-ID", "")).strip().lower() in wanted:
                    folder.discard(key)
                    removed += 1
        return removed

    def move(self, uids: list[str], destination: Destination) -> None:
        target = self._folders[destination]
        for uid in uids:
            key = uid.removeprefix("maildir:")
            try:
                src = os.path.join(self._inbox._path, self._inbox._lookup(key))
            except KeyError:
                continue  # already gone: moving is idempotent
            name = os.path.basename(src)
            sub = "cur" if os.path.basename(os.path.dirname(src)) == "cur" else "new"
            os.rename(src, os.path.join(target._path, sub, name))
            self._inbox._toc.pop(key, None)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mtime = max(os.stat(self.path / d).st_mtime for d in ("new", "cur"))
            if mtime != self._seen_mtime:
                self._seen_mtime = mtime
                return True
            pause(self, min(1.0, max(0.0, deadline - time.monotonic())))
            if stopping_now(self):
                return False
        return False

    def close(self) -> None:
        self._inbox.close()

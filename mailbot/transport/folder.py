"""Outgoing mail written to a folder, one ``.eml`` per message: for trying mailbot out and for
organisations whose mail server picks up a pickup directory."""

from __future__ import annotations

import os
import re
import tempfile
from email.parser import BytesHeaderParser
from pathlib import Path


class FolderSender:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.description = f"folder {self.path}"

    def send(self, raw: bytes, mail_from: str, recipients: list[str]) -> None:
        headers = BytesHeaderParser().parsebytes(raw)
        msgid = str(headers.get("Message-ID", "")).strip("<> ")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", msgid)[:120] or f"mail-{os.getpid()}"
        envelope = (f"X-Envelope-From: {mail_from}\r\n"
                    f"X-Envelope-To: {', '.join(recipients)}\r\n").encode()
        # write then rename: a reader never sees half a message, and a resend overwrites
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(envelope + raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path / f"{name}.eml")

    def close(self) -> None:
        pass

"""The application context: config, rules, letters and database, built once and passed along
(no module-level singletons configured by import side effects)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from mailbot.config import Config, load_config
from mailbot.db import Database
from mailbot.letters import Letters
from mailbot.policy.rules import Rules, load_rules
from mailbot.transport.base import Mailbox, Sender

if TYPE_CHECKING:
    from mailbot.classify import Classifier


@dataclass
class App:
    config: Config
    rules: Rules
    letters: Letters
    db: Database

    @classmethod
    def from_config(cls, config: Config) -> "App":
        rules = load_rules(config.rules.path)
        return cls(config=config, rules=rules, letters=Letters(config.rules.templates),
                   db=Database(config.database.url))

    @classmethod
    def load(cls, path: str | Path) -> "App":
        return cls.from_config(load_config(path))

    @cached_property
    def classifier(self) -> "Classifier":
        """Loaded on first use: commands that never classify do not pay for spaCy."""
        from mailbot.classify import Classifier

        return Classifier(self.rules, self.config.classifier.model_path,
                          self.config.classifier.review_below)

    @cached_property
    def _token_providers(self) -> dict:
        return {}

    def token_provider(self, section: str, use: str):
        """The OAuth2 token provider for [mailbox] or [outgoing] ("outlook" for IMAP/SMTP,
        "graph"); one per app registration and scopes, so the mailbox and the sender of one
        Microsoft 365 mailbox share their token."""
        from mailbot.transport.oauth import MsalTokenProvider, settings_from_config

        settings = settings_from_config(self.config, section, use)
        if settings not in self._token_providers:
            self._token_providers[settings] = MsalTokenProvider(settings)
        return self._token_providers[settings]

    def open_mailbox(self) -> Mailbox:
        box = self.config.mailbox
        if box.kind == "maildir":
            from mailbot.transport.maildir import MaildirMailbox
            return MaildirMailbox(box.path, box.processed_folder, box.quarantine_folder)
        if box.kind == "imap" and box.auth == "oauth2":
            from mailbot.transport.imap import ImapMailbox
            return ImapMailbox(box.host, box.port, box.security, box.username or "", "",
                               box.folder, box.processed_folder, box.quarantine_folder,
                               box.poll_seconds, box.timeout_seconds,
                               token_provider=self.token_provider("mailbox", "outlook"))
        if box.kind == "imap":
            from mailbot.transport.imap import ImapMailbox
            return ImapMailbox(box.host, box.port, box.security, box.username or "",
                               box.resolve_password(), box.folder, box.processed_folder,
                               box.quarantine_folder, box.poll_seconds, box.timeout_seconds)
        if box.kind == "graph":
            from mailbot.transport import graph
            return graph.GraphMailbox(
                graph.settings_from_config(box), self.token_provider("mailbox", "graph"),
                state=graph.DatabaseDeltaStore(self.db), folder=box.folder,
                processed_folder=box.processed_folder, quarantine_folder=box.quarantine_folder,
                poll_seconds=box.poll_seconds)
        if box.kind == "ews":
            from mailbot.transport.ews import EwsMailbox, settings_from_config
            return EwsMailbox(settings_from_config(box), box.folder, box.processed_folder,
                              box.quarantine_folder, box.poll_seconds)
        raise NotImplementedError(f"mailbox.kind = {box.kind!r} is not available in this version")

    def open_sender(self) -> Sender:
        out = self.config.outgoing
        if out.kind == "folder":
            from mailbot.transport.folder import FolderSender
            return FolderSender(out.path)
        if out.kind == "ews":  # through the Exchange mailbox configured in [mailbox]
            from mailbot.transport.ews import EwsSender, settings_from_config
            return EwsSender(settings_from_config(self.config.mailbox))
        if out.kind == "graph":  # through the Microsoft 365 mailbox configured in [mailbox]
            from mailbot.transport import graph
            return graph.GraphSender(graph.settings_from_config(self.config.mailbox),
                                     self.token_provider("mailbox", "graph"))
        from mailbot.transport.smtp import SmtpSender
        if out.auth == "oauth2":
            box = self.config.mailbox
            return SmtpSender(out.host, out.port, out.security,
                              out.username or box.username or box.primary_smtp_address, None,
                              out.timeout_seconds,
                              token_provider=self.token_provider("outgoing", "outlook"))
        return SmtpSender(out.host, out.port, out.security, out.username, out.resolve_password(),
                          out.timeout_seconds)

    def close(self) -> None:
        self.db.close()

"""Deployment configuration: where mail comes from, where replies go, which database.

Read from one TOML file with ``tomllib`` and validated with pydantic, so a typo gives one clear
error that names the key (``mailbox.port: ...``) instead of a stack trace at 3 a.m.
Policy (deadlines, wording, channels) is *not* here: it lives in the rules directory.
Relative paths are resolved against the config file's directory, so the same file works
from any working directory.
"""

from __future__ import annotations

import os
import tomllib
from email.utils import parseaddr
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MailboxConfig(_Section):
    kind: Literal["maildir", "imap", "ews"] = "maildir"
    path: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(993, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "ssl"
    username: str | None = None
    password: str | None = None
    password_env: str | None = None
    folder: str = "INBOX"
    processed_folder: str = "mailbot/processed"
    quarantine_folder: str = "mailbot/quarantine"
    poll_seconds: float = Field(30, gt=0)
    batch_size: int = Field(200, ge=1, le=10000)
    timeout_seconds: float = Field(60, gt=0)
    # Exchange Web Services (used when kind = "ews")
    ews_url: str | None = None
    primary_smtp_address: str | None = None
    auth_type: Literal["basic", "ntlm", "oauth2", "none"] = "basic"
    impersonation: bool = False
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret_env: str | None = None
    # Exchange build such as "15.1.2507.6" (Exchange 2016 CU23): skips exchangelib's version
    # probe; empty means ask the server on first use.
    ews_version: str | None = Field(None, pattern=r"^\d+(\.\d+){1,3}$")
    # How long, in total, to honour Exchange's "server busy, back off N ms" answers within one
    # round before giving up until the next round (0: never wait, fail at once).
    ews_max_wait_seconds: float = Field(120, ge=0)

    @model_validator(mode="after")
    def _check_kind(self) -> "MailboxConfig":
        if self.kind == "maildir" and self.path is None:
            raise ValueError("path is required when kind = \"maildir\"")
        if self.kind == "imap" and not self.username:
            raise ValueError("username is required when kind = \"imap\"")
        if self.kind == "ews":
            if not self.ews_url or not self.primary_smtp_address:
                raise ValueError("ews_url and primary_smtp_address are required when kind = \"ews\"")
            if self.auth_type == "oauth2" and not (self.client_id and self.tenant_id
                                                   and self.client_secret_env):
                raise ValueError("client_id, tenant_id and client_secret_env are required when "
                                 "auth_type = \"oauth2\"")
            if self.auth_type in ("basic", "ntlm") and not self.username:
                raise ValueError(f"username is required when auth_type = \"{self.auth_type}\"")
        return self

    def resolve_client_secret(self) -> str:
        """The OAuth2 client secret, read from the environment variable client_secret_env."""
        if self.client_secret_env and self.client_secret_env in os.environ:
            return os.environ[self.client_secret_env]
        raise ConfigError(f"mailbox.client_secret_env: environment variable "
                          f"{self.client_secret_env} is not set")

    def resolve_password(self) -> str:
        return _secret(self.password, self.password_env, "mailbox")


class OutgoingConfig(_Section):
    # "ews": send through the Exchange mailbox of [mailbox] (kind = "ews" there), with its
    # connection settings; letters are saved in its Sent Items and thread in Outlook.
    kind: Literal["folder", "smtp", "ews"] = "folder"
    path: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(587, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username: str | None = None
    password: str | None = None
    password_env: str | None = None
    from_: str = Field("Complaints Team <complaints@example.org>", alias="from")
    timeout_seconds: float = Field(60, gt=0)

    @field_validator("from_")
    @classmethod
    def _check_from(cls, value: str) -> str:
        _name, addr = parseaddr(value)
        if "@" not in addr or any(c in value for c in "\r\n"):
            raise ValueError(f"not an email address: {value!r}")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> "OutgoingConfig":
        if self.kind == "folder" and self.path is None:
            raise ValueError("path is required when kind = \"folder\"")
        return self

    @property
    def from_address(self) -> str:
        return parseaddr(self.from_)[1]

    def resolve_password(self) -> str | None:
        if self.password is None and self.password_env is None:
            return None
        return _secret(self.password, self.password_env, "outgoing")


class DatabaseConfig(_Section):
    url: str = "sqlite:///var/mailbot.db"


class RulesConfig(_Section):
    path: Path = Path("rules")
    templates: Path = Path("templates")


class StaffConfig(_Section):
    # Who hears about every new case until the rules name roles for it.
    notify: list[str] = Field(default_factory=list)


class ClassifierConfig(_Section):
    model_path: Path = Path("var/model")
    review_below: float = Field(0.5, ge=0, le=1)


class Config(_Section):
    mailbox: MailboxConfig
    outgoing: OutgoingConfig
    database: DatabaseConfig = DatabaseConfig()
    rules: RulesConfig = RulesConfig()
    staff: StaffConfig = StaffConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check_outgoing_ews(self) -> "Config":
        if self.outgoing.kind == "ews" and self.mailbox.kind != "ews":
            raise ValueError("outgoing.kind = \"ews\" sends through the Exchange mailbox, so it "
                             "needs mailbox.kind = \"ews\"")
        return self


def _secret(value: str | None, env: str | None, section: str) -> str:
    if value is not None:
        return value
    if env:
        if env in os.environ:
            return os.environ[env]
        raise ConfigError(f"{section}.password_env: environment variable {env} is not set")
    raise ConfigError(f"{section}.password: no password given (set password or password_env)")


def _key_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def load_config(path: str | os.PathLike) -> Config:
    """Load and validate a config file; every problem becomes one ConfigError naming the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _key_path(err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling against config.example.toml)"
            problems.append(f"{key}: {msg}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    return _resolve_paths(config, path.resolve().parent, path)


def _resolve_paths(config: Config, base: Path, source: Path) -> Config:
    def rel(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    if config.mailbox.path is not None:
        config.mailbox.path = rel(config.mailbox.path)
    if config.outgoing.path is not None:
        config.outgoing.path = rel(config.outgoing.path)
    config.rules.path = rel(config.rules.path) or config.rules.path
    config.rules.templates = rel(config.rules.templates) or config.rules.templates
    config.classifier.model_path = rel(config.classifier.model_path) or config.classifier.model_path
    url = config.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        config.database.url = "sqlite:///" + str(base / url.removeprefix("sqlite:///"))
    config.source = source
    return config

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
    kind: Literal["maildir", "imap", "ews", "graph"] = "maildir"
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
    # A round also stops at this many megabytes of mail, so a backlog of big attachments is taken
    # a few at a time rather than all at once into memory (a single bigger message still goes).
    batch_megabytes: int = Field(50, ge=1, le=4096)
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
    # OAuth 2.0 (IMAP with auth = "oauth2", and kind = "graph"): tokens from Microsoft Entra ID
    # for the app registration client_id in tenant_id, see mailbot/transport/oauth.py.
    auth: Literal["password", "oauth2"] = "password"
    oauth_flow: Literal["client_credentials", "device_code"] = "client_credentials"
    client_certificate: Path | None = None  # PEM: private key + certificate (instead of a secret)
    client_certificate_password_env: str | None = None
    oauth_authority: str = Field("https://login.microsoftonline.com", pattern=r"^https://")
    oauth_scopes: list[str] | None = None  # default: the right ones for IMAP/SMTP or Graph
    token_cache: Path = Path("var/oauth-token-cache.json")  # device_code: the kept sign-in
    # Microsoft Graph (kind = "graph")
    graph_url: str = Field("https://graph.microsoft.com/v1.0", pattern=r"^https?://")
    # How long, in total, to honour Graph's "429 Too Many Requests, Retry-After: N" (and 503/504)
    # within one round before giving up until the next round.
    graph_max_wait_seconds: float = Field(120, ge=0)

    @model_validator(mode="after")
    def _check_oauth(self) -> "MailboxConfig":
        if self.kind == "graph" and not self.primary_smtp_address:
            raise ValueError("primary_smtp_address (the mailbox address) is required when "
                             "kind = \"graph\"")
        if self.kind == "graph" or (self.kind == "imap" and self.auth == "oauth2"):
            _check_app_registration(self, "mailbox")
        return self

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
    # "graph": send through the Microsoft 365 mailbox of [mailbox] (kind = "graph" there).
    kind: Literal["folder", "smtp", "ews", "graph"] = "folder"
    path: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(587, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username: str | None = None
    password: str | None = None
    password_env: str | None = None
    from_: str = Field("Complaints Team <complaints@example.org>", alias="from")
    # first pause before a refused letter is tried again; it doubles each time (up to an hour)
    retry_seconds: float = Field(30, gt=0, le=3600)
    timeout_seconds: float = Field(60, gt=0)
    # SMTP AUTH XOAUTH2 with auth = "oauth2".  Keys left out here are taken from [mailbox], so one
    # app registration can serve both; username defaults to mailbox.username.
    auth: Literal["password", "oauth2"] = "password"
    oauth_flow: Literal["client_credentials", "device_code"] | None = None
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret_env: str | None = None
    client_certificate: Path | None = None
    client_certificate_password_env: str | None = None
    oauth_authority: str | None = Field(None, pattern=r"^https://")
    oauth_scopes: list[str] | None = None
    token_cache: Path | None = None

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
    # The authserv-id(s) of this installation's own receiving mail server: only its
    # Authentication-Results header can prove that a staff command really comes from staff
    # (added to those in the rules' staff.toml; see README "Working a case from Outlook").
    trusted_authserv_ids: list[str] = Field(default_factory=list)


class ClassifierConfig(_Section):
    model_path: Path = Path("var/model")
    review_below: float = Field(0.5, ge=0, le=1)


class MetricsConfig(_Section):
    # A Prometheus endpoint on the daemon (0 = off). Bound to loopback unless told otherwise.
    port: int = Field(0, ge=0, le=65535)
    address: str = "127.0.0.1"


class Config(_Section):
    mailbox: MailboxConfig
    outgoing: OutgoingConfig
    database: DatabaseConfig = DatabaseConfig()
    rules: RulesConfig = RulesConfig()
    staff: StaffConfig = StaffConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    metrics: MetricsConfig = MetricsConfig()
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check_outgoing_oauth(self) -> "Config":
        out, box = self.outgoing, self.mailbox
        if out.kind == "graph" and box.kind != "graph":
            raise ValueError("outgoing.kind = \"graph\" sends through the Microsoft 365 mailbox, "
                             "so it needs mailbox.kind = \"graph\"")
        if out.kind == "smtp" and out.auth == "oauth2":
            merged = _Merged(out, box)
            _check_app_registration(merged, "outgoing")
            if not (out.username or box.username or box.primary_smtp_address):
                raise ValueError("outgoing.username (the mailbox to send as) is required when "
                                 "auth = \"oauth2\"")
        return self

    @model_validator(mode="after")
    def _check_outgoing_ews(self) -> "Config":
        if self.outgoing.kind == "ews" and self.mailbox.kind != "ews":
            raise ValueError("outgoing.kind = \"ews\" sends through the Exchange mailbox, so it "
                             "needs mailbox.kind = \"ews\"")
        return self


class _Merged:
    """[outgoing] OAuth keys, falling back to [mailbox]'s (for validation)."""

    def __init__(self, own, fallback):
        self._own, self._fallback = own, fallback

    def __getattr__(self, name):
        value = getattr(self._own, name, None)
        return getattr(self._fallback, name, None) if value is None else value


def _check_app_registration(section, name: str) -> None:
    missing = [key for key in ("client_id", "tenant_id") if not getattr(section, key)]
    flow = getattr(section, "oauth_flow") or "client_credentials"
    if flow == "client_credentials" and not (getattr(section, "client_secret_env")
                                             or getattr(section, "client_certificate")):
        missing.append("client_secret_env (or client_certificate)")
    if missing:
        raise ValueError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         f"required for OAuth2 (the app registration in Microsoft Entra ID)")


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
    for section in (config.mailbox, config.outgoing):  # OAuth2 files
        section.client_certificate = rel(section.client_certificate)
        section.token_cache = rel(section.token_cache)
    config.rules.path = rel(config.rules.path) or config.rules.path
    config.rules.templates = rel(config.rules.templates) or config.rules.templates
    config.classifier.model_path = rel(config.classifier.model_path) or config.classifier.model_path
    url = config.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        config.database.url = "sqlite:///" + str(base / url.removeprefix("sqlite:///"))
    config.source = source
    return config

"""A throwaway Dovecot IMAP server on loopback, for tests.

Why a real Dovecot and not a fake: mailbot's IMAP code has to cope with what a
real server does -- the Maildir hierarchy separator is ``.`` (``a/b`` is
refused), MOVE is not in the pre-login capabilities, failed logins are
penalised, connections drop when the server restarts.  A fake would hide all
of that.  Dovecot starts in about 25 ms, so one server per test is affordable.

What is known to work on this machine is written down in
``/work/shared/design/dovecot-in-tests.md``; the choices below follow it:

* the whole instance lives in a short ``/tmp/dvXXXXXXXX`` directory, because
  Dovecot's unix sockets live there and socket paths are limited to 107
  bytes (a pytest ``tmp_path`` is too deep);
* that directory is chmod 0755 because Dovecot's unprivileged processes must
  be able to traverse it ("Temporary authentication failure" otherwise);
* mail is owned by an unprivileged system user (Dovecot refuses uid 0 for
  mail); as root we create one with ``useradd --system``, as non-root we run
  the whole instance as the current user;
* ``auth_failure_delay = 0`` and the anvil penalty socket disabled, because
  tests try bad passwords and would otherwise wait 1.5-6 s per login;
* ``ssl = no`` and plain IMAP on a free port, so clients must use
  ``imap_tools.MailBoxUnencrypted`` (``MailBox`` is TLS on 993).
"""

from __future__ import annotations

import atexit
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Iterable

import pytest
from imap_tools import MailBoxUnencrypted

DOVECOT_BIN = "/usr/sbin/dovecot"
NOT_INSTALLED = "dovecot-imapd is not installed: run apt-get install -y dovecot-imapd"

#: System user that owns the test mail when the tests run as root.
MAIL_SYSTEM_USER = "mailbot-testmail"

HOST = "127.0.0.1"

# Every server that may still have a process: killed at interpreter exit, so
# an interrupted test run (Ctrl-C, internal error) does not leave Dovecot
# instances listening on loopback.
_LIVE: "weakref.WeakSet[DovecotServer]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - only runs at interpreter exit
    for server in list(_LIVE):
        try:
            server.close()
        except Exception:
            pass


class DovecotStartError(RuntimeError):
    """Dovecot did not come up; the message carries the tail of its log."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port that is free on ``host`` right now.

    There is an unavoidable window between this check and the server binding
    the port; :meth:`DovecotServer.start` retries with another port when the
    first start loses that race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_is_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as Dovecot itself uses it: a port whose old connections
    # are in TIME_WAIT counts as free (that is the restart case), a port with
    # a listener does not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _ensure_system_user(name: str) -> tuple[int, int]:
    """uid/gid of ``name``, creating it as a system user if missing (root only).

    Two test processes (pytest-xdist) may race to create it; the loser's
    ``useradd`` fails with "already exists", which is fine.
    """
    try:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True,
    )
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"could not create system user {name!r} for Dovecot's test mail: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        ) from None
    return pw.pw_uid, pw.pw_gid


def _check_passwd_field(kind: str, value: str) -> None:
    # passwd-file is colon-separated, one user per line, and the user name
    # becomes a directory name under the mail root.
    bad = ":\n\r\0" + ("/" if kind == "user name" else "")
    if not value or any(c in value for c in bad):
        raise ValueError(f"{kind} {value!r} cannot be used in Dovecot's passwd-file")


class DovecotServer:
    """One private Dovecot instance: plain IMAP on ``127.0.0.1:<free port>``.

    Usage (the ``dovecot`` fixture does this for you)::

        server = DovecotServer()
        try:
            server.start()
            server.append(raw_bytes)
            with server.client() as mb: ...
        finally:
            server.close()

    ``stop()`` / ``start()`` / ``restart()`` keep the port, the users and the
    mail, so outage tests can take the server away and bring it back.
    ``close()`` stops it for good and deletes its directory.
    """

    def __init__(
        self,
        user: str = "complaints",
        password: str = "secret",
        *,
        binary: str = DOVECOT_BIN,
        start_timeout: float = 10.0,
        oauth2=False,
    ) -> None:
        if not os.path.exists(binary):
            # CI installs it; silently skipping would make IMAP tests look
            # green while testing nothing.
            pytest.fail(NOT_INSTALLED, pytrace=False)
        _check_passwd_field("user name", user)
        _check_passwd_field("password", password)
        self.binary = binary
        self.start_timeout = start_timeout
        self._user = user
        self._password = password
        self._users: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._port: int = free_port()
        self._started_once = False
        self._closed = False
        self._delimiter: str | None = None
        self._mtimes: dict[str, int] = {}
        # OAuth2 (SASL XOAUTH2/OAUTHBEARER): Dovecot's oauth2 passdb validating JWTs locally
        # with the public key of a tests.servers.oauth_jwt.JwtIssuer (oauth2=True: a new one).
        # Passwords keep working for PLAIN/LOGIN (the test helpers below use them).
        self.oauth2_issuer = None
        if oauth2:
            from tests.servers.oauth_jwt import JwtIssuer
            self.oauth2_issuer = oauth2 if isinstance(oauth2, JwtIssuer) else JwtIssuer()

        self.dir = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        try:
            self._prepare_dir()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        _LIVE.add(self)

    def _prepare_dir(self) -> None:
        # mkdtemp makes 0700; Dovecot's login/auth processes run as other
        # users and must traverse it.
        os.chmod(self.dir, 0o755)
        self._as_root = os.geteuid() == 0
        if self._as_root:
            self._mail_uid, self._mail_gid = _ensure_system_user(MAIL_SYSTEM_USER)
        else:
            self._mail_uid, self._mail_gid = os.geteuid(), os.getegid()
        (self.dir / "state").mkdir()
        (self.dir / "passwd.d").mkdir()
        self.mail_root.mkdir()
        # Explicit modes: a restrictive umask must not lock Dovecot out.
        os.chmod(self.dir / "passwd.d", 0o755)
        os.chmod(self.mail_root, 0o755)
        if self._as_root:
            os.chown(self.mail_root, self._mail_uid, self._mail_gid)
        self.add_user(self._user, self._password)
        if self.oauth2_issuer is not None:
            self._prepare_oauth2()

    def _prepare_oauth2(self) -> None:
        """Key file and oauth2 passdb settings (design note oauth2-in-tests.md): the key lives at
        ``keys/<azp or default>/<ALG>/<kid>``; the test tokens carry no ``azp``."""
        issuer = self.oauth2_issuer
        kid = issuer.kid.replace("%", "%25").replace("/", "%2f")
        key_dir = self.dir / "keys" / "default" / "RS256"
        key_dir.mkdir(parents=True)
        for d in (self.dir / "keys", self.dir / "keys" / "default", key_dir):
            os.chmod(d, 0o755)
        (key_dir / kid).write_text(issuer.public_pem)
        os.chmod(key_dir / kid, 0o644)
        conf = self.dir / "dovecot-oauth2.conf.ext"
        conf.write_text(f"introspection_mode = local\n"
                        f"local_validation_key_dict = fs:posix:prefix={self.dir}/keys/\n"
                        f"username_attribute = email\n"
                        f"issuers = {issuer.issuer}\n")
        os.chmod(conf, 0o644)

    def oauth2_token(self, user: str | None = None, *, ttl: float = 3600, **claims) -> str:
        """A token this server accepts for ``user`` (default user if omitted) via XOAUTH2."""
        from tests.servers.oauth_jwt import OUTLOOK
        if self.oauth2_issuer is None:
            raise RuntimeError("start the server with oauth2=True to use OAuth2 tokens")
        return self.oauth2_issuer.issue(OUTLOOK, email=user or self._user, ttl=ttl,
                                        roles=["IMAP.AccessAsApp"], **claims)

    # -- properties -------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def user(self) -> str:
        """The default user (``complaints``)."""
        return self._user

    @property
    def password(self) -> str:
        return self._password

    @property
    def mail_root(self) -> Path:
        """Directory holding one Maildir per user (``mail_root / user``)."""
        return self.dir / "mail"

    @property
    def config_path(self) -> Path:
        return self.dir / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "dovecot.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DovecotServer {self.host}:{self.port} {state} dir={self.dir}>"

    # -- users and config -------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add an IMAP user, or change a user's password; works while running.

        Each user gets its own Maildir under :attr:`mail_root`.  Dovecot
        lowercases login names (``auth_username_format = %Lu``), so names are
        stored lowercased.

        Why one passwd file per user: Dovecot re-checks a passwd-file at most
        once per second (per file), so a user added to a shared file right
        after any login would stay unknown for up to a second.  A new file is
        read on first use.  Changing the password of an existing user still
        hits that rule, so then this call waits for the next full second
        (only while the server runs).
        """
        _check_passwd_field("user name", name)
        _check_passwd_field("password", password)
        key = name.lower()
        existed = key in self._users
        self._users[key] = password
        if key == self._user.lower():
            self._password = password
        self._write_user(key)
        if existed and self.running:
            time.sleep(1.0 - time.time() % 1.0 + 0.01)

    def _write_user(self, key: str) -> None:
        path = self.dir / "passwd.d" / key
        tmp = self.dir / f".passwd-{key}.tmp"
        tmp.write_text(f"{key}:{{PLAIN}}{self._users[key]}\n")
        # Test credentials only; the auth process must be able to read it.
        os.chmod(tmp, 0o644)
        # Dovecot notices a changed passwd-file by mtime (whole seconds) and
        # size: make the mtime strictly increase even for a rewrite within the
        # same second with the same size (a changed password).
        st = os.stat(tmp)
        mtime_ns = max(st.st_mtime_ns, self._mtimes.get(key, 0) + 1_000_000_000)
        os.utime(tmp, ns=(st.st_atime_ns, mtime_ns))
        self._mtimes[key] = mtime_ns
        os.replace(tmp, path)

    def _config(self) -> str:
        d = self.dir
        if self._as_root:
            userdb_args = f"uid={self._mail_uid} gid={self._mail_gid}"
            run_as = ""
            chroot = ""
        else:
            # Non-root variant (design doc): every Dovecot process runs as us.
            me = pwd.getpwuid(self._mail_uid).pw_name
            group = grp.getgrgid(self._mail_gid).gr_name
            userdb_args = ""
            run_as = (
                f"default_login_user = {me}\n"
                f"default_internal_user = {me}\n"
                f"default_internal_group = {group}\n"
            )
            chroot = "  chroot =\n"
        passwd_mechanisms = oauth2_passdb = ""
        if self.oauth2_issuer is not None:
            passwd_mechanisms = "  mechanisms = plain login\n"
            oauth2_passdb = (
                "# OAuth2 bearer tokens (JWT), validated locally with the test issuer's key.\n"
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {d}/dovecot-oauth2.conf.ext\n}}\n")
        return f"""\
# Generated by tests/servers/dovecot.py -- throwaway test instance.
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = {HOST}
protocols = imap
ssl = no
{run_as}
# Plain LOGIN over a non-TLS loopback port is the point of this instance.
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.oauth2_issuer else ""}
# Tests try bad passwords: no refusal delay (see anvil below as well).
auth_failure_delay = 0
auth_verbose = yes
mail_location = maildir:{d}/mail/%u
# The mail uid is a system user (uid < 500): allow it.
first_valid_uid = {self._mail_uid}
# Throwaway mail: no fsync, appends are faster.
mail_fsync = never

# One file per user, see add_user().
passdb {{
  driver = passwd-file
  args = {d}/passwd.d/%{{user}}
{passwd_mechanisms}}}
{oauth2_passdb}userdb {{
  driver = static
  args = {userdb_args}
}}
service imap-login {{
{chroot}  inet_listener imap {{
    port = {self._port}
  }}
}}
service anvil {{
{chroot}  # No growing per-IP penalty after failed logins.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

    # -- lifecycle --------------------------------------------------------

    def start(self) -> "DovecotServer":
        """Start Dovecot and wait until the port greets with ``* OK``.

        Raises :class:`DovecotStartError` with the tail of Dovecot's log if it
        exits or does not greet within ``start_timeout`` seconds.  On the very
        first start a port lost to another process is replaced by a new free
        one; later starts keep the port (clients reconnect to it).
        """
        if self._closed:
            raise RuntimeError("this DovecotServer was closed; make a new one")
        if self.running:
            return self
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            if not _port_is_free(HOST, self._port):
                if attempt + 1 < attempts:
                    self._port = free_port()
                    continue
                raise DovecotStartError(
                    f"port {HOST}:{self._port} is in use by another process; "
                    f"cannot (re)start Dovecot on it"
                )
            try:
                self._spawn_and_wait()
            except DovecotStartError:
                in_use = "Address already in use" in self.log_text()
                if in_use and attempt + 1 < attempts:
                    self._port = free_port()
                    continue
                raise
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        # A stale base_dir (sockets of the previous run) makes the new
        # instance wait on dead anvil/auth sockets for seconds: start clean.
        shutil.rmtree(self.dir / "run", ignore_errors=True)
        self.config_path.write_text(self._config())
        with open(self.dir / "dovecot.stderr", "ab") as err:
            # -F: stay in the foreground so we own the master process.
            # New session: stop() signals the whole process group, i.e. the
            # master and every login/auth/imap child.
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True, close_fds=True,
            )
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise DovecotStartError(
                    f"dovecot exited with code {rc} during start\n" + self._log_tail()
                )
            try:
                greeting = self._greeting(timeout=0.5)
                if greeting.startswith(b"* OK"):
                    return
                last_error = RuntimeError(f"unexpected greeting {greeting!r}")
            except OSError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self._kill()
                raise DovecotStartError(
                    f"dovecot did not answer '* OK' on {HOST}:{self._port} within "
                    f"{self.start_timeout:g} s (last error: {last_error})\n"
                    + self._log_tail()
                )
            time.sleep(0.02)

    def _greeting(self, timeout: float) -> bytes:
        with socket.create_connection((HOST, self._port), timeout=timeout) as s:
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
            return data

    def stop(self) -> None:
        """SIGTERM the process group and wait until every process is gone.

        Keeps directory, port, users and mail, so :meth:`start` brings the
        same mailbox back.  Safe to call when not running.
        """
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # session leader: pgid == pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            proc.wait(timeout=5)
        # Children (imap-login holds the listening socket) may outlive the
        # master by a few ms; a restart on the same port must wait for them.
        deadline = time.monotonic() + 2
        while _signal_group(pgid, 0) and time.monotonic() < deadline:
            time.sleep(0.005)
        _signal_group(pgid, signal.SIGKILL)

    def restart(self) -> "DovecotServer":
        """Stop and start again on the same port with the same mail."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop for good and delete the temporary directory.  Idempotent."""
        if self._closed:
            return
        try:
            self._kill()
        finally:
            self._closed = True
            shutil.rmtree(self.dir, ignore_errors=True)
            _LIVE.discard(self)

    # -- logs -------------------------------------------------------------

    def log_text(self) -> str:
        """Dovecot's log plus anything it wrote to stderr (config errors).

        Note: stopping with SIGTERM logs "Killed with signal 15" warnings.
        """
        parts = []
        for name in ("dovecot.stderr", "dovecot.log"):
            p = self.dir / name
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)

    def _log_tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- last lines of dovecot log ({self.dir}) ---\n" + "\n".join(text)

    # -- IMAP helpers -----------------------------------------------------

    def client(self, user: str | None = None, password: str | None = None,
               *, timeout: float = 10) -> MailBoxUnencrypted:
        """A logged-in ``MailBoxUnencrypted`` (INBOX selected); caller closes it.

        Use it as a context manager (``with server.client() as mb:``), which
        logs out.  Note that imap-tools does not refresh capabilities after
        login, so ``mb.move()`` falls back to COPY+EXPUNGE on Dovecot.
        """
        if user is None:
            user, password = self._user, self._password
        elif password is None:
            password = self._users[user.lower()]
        mb = MailBoxUnencrypted(HOST, self._port, timeout=timeout)
        try:
            mb.login(user, password)
        except BaseException:
            _close_quietly(mb)
            raise
        return mb

    @property
    def delimiter(self) -> str:
        """Hierarchy delimiter as ``LIST "" ""`` reports it (``.`` for Maildir)."""
        if self._delimiter is None:
            with self.client() as mb:
                typ, data = mb.client.list('""', '""')
            if typ != "OK" or not data or data[0] is None:
                raise RuntimeError(f"LIST \"\" \"\" failed: {typ} {data!r}")
            m = re.match(rb'\([^)]*\) (?:"((?:[^"\\]|\\.)*)"|NIL)', data[0])
            if not m:
                raise RuntimeError(f"cannot parse LIST response {data[0]!r}")
            self._delimiter = (m.group(1) or b"").decode()
        return self._delimiter

    def folder_name(self, *parts: str) -> str:
        """Join folder name parts with the server's delimiter."""
        return self.delimiter.join(parts)

    def folders(self, user: str | None = None) -> list[str]:
        """Names of all folders of ``user`` (default user if omitted)."""
        with self.client(user) as mb:
            return [f.name for f in mb.folder.list()]

    def append(self, raw: bytes, folder: str = "INBOX", flags: Iterable[str] = (),
               *, user: str | None = None) -> str | None:
        """APPEND ``raw`` to ``folder`` (created if missing); returns the new UID.

        The UID comes from Dovecot's ``APPENDUID`` response (UIDPLUS).  Give
        ``raw`` with CRLF line ends: IMAP always transfers CRLF, so that is
        what :meth:`fetch_raw` returns.
        """
        with self.client(user) as mb:
            if folder.upper() != "INBOX" and not mb.folder.exists(folder):
                mb.folder.create(folder)
            typ, data = mb.append(raw, folder, flag_set=list(flags) or None)
        m = re.search(rb"\[APPENDUID \d+ (\d+)\]", b" ".join(x for x in data if x))
        return m.group(1).decode() if m else None

    def uids(self, folder: str = "INBOX", *, user: str | None = None) -> list[str]:
        """UIDs of all messages in ``folder``, ascending."""
        with self.client(user) as mb:
            mb.folder.set(folder, readonly=True)
            return sorted(mb.uids(), key=int)

    def fetch_raw(self, folder: str = "INBOX", *, user: str | None = None) -> list[bytes]:
        """Exact bytes (``BODY.PEEK[]``, \\Seen untouched) of every message, by UID."""
        return [raw for _, raw, _ in self._fetch(folder, user, "BODY.PEEK[]")]

    def flags(self, folder: str = "INBOX", *, user: str | None = None) -> dict[str, tuple[str, ...]]:
        """``{uid: flags}`` for every message in ``folder`` (e.g. to check \\Seen)."""
        return {uid: fl for uid, _, fl in self._fetch(folder, user, "")}

    def _fetch(self, folder: str, user: str | None, part: str):
        with self.client(user) as mb:
            mb.folder.set(folder, readonly=True)
            uids = mb.uids()
            if not uids:
                return []
            items = f"(UID FLAGS {part})" if part else "(UID FLAGS)"
            typ, data = mb.client.uid("FETCH", ",".join(uids), items)
        if typ != "OK":
            raise RuntimeError(f"UID FETCH failed: {typ} {data!r}")
        out = []
        for item in data:
            meta, body = (item[0], item[1]) if isinstance(item, tuple) else (item, b"")
            if not meta or meta == b")":
                continue
            uid = re.search(rb"UID (\d+)", meta)
            fl = re.search(rb"FLAGS \(([^)]*)\)", meta)
            if uid is None:
                continue
            out.append((uid.group(1).decode(), body,
                        tuple(fl.group(1).decode().split()) if fl else ()))
        out.sort(key=lambda t: int(t[0]))
        return out


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _close_quietly(mb: MailBoxUnencrypted) -> None:
    try:
        mb.client.shutdown()
    except Exception:
        pass

"""Is this message really from a member of staff?  Only then is a command in it obeyed.

Anyone can write ``From: Jane Staff <jane@example.org>``: the From header is typed by the
sender.  What a sender cannot forge is what *our own* receiving server wrote about the message
when it arrived, so a command is obeyed only when both hold:

1. the From address is on the staff list: every address in ``roles.toml``, the ``[staff]
   members`` of the rules, and ``[staff] notify`` in config.toml (they are already sent every
   case, so they are staff by definition); the display name counts for nothing;
2. the message is authenticated, in one of these ways:

   - an ``Authentication-Results`` header (RFC 8601, read with ``authres``) written by a server
     we trust (its authserv-id is in ``trusted_authserv_ids``, in the rules' ``[staff]`` or in
     config.toml's ``[staff]``) that shows ``dkim=pass`` with ``header.d`` equal to the From
     domain, ``spf=pass`` with the ``smtp.mailfrom`` domain equal to the From domain, or
     ``auth=pass`` with ``smtp.auth`` equal to the From address (the sender logged in to our
     own submission server).  Alignment is strict (same domain, not just a parent domain), so
     ``examp1e.org`` or ``example.org.evil.example`` never pass for ``example.org``;
   - when the mailbox is Exchange (read through EWS or Microsoft Graph, or Exchange Online's
     own IMAP server, outlook.office365.com): Exchange's own marks of mail sent inside the
     organisation, ``X-MS-Exchange-Organization-AuthAs: Internal`` together with
     ``X-MS-Exchange-Organization-AuthSource`` (Exchange's header firewall removes these headers
     from mail that arrives from outside, so a sender cannot bring their own; any other IMAP
     server keeps whatever the sender wrote, so there they count for nothing).

Only the *topmost* Authentication-Results header from a trusted authserv-id counts: a receiving
server adds its header on top of the ones already there, so anything below it with the same
authserv-id came with the message and may be the sender's own invention.  Headers from servers
we do not trust are skipped whatever they say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import TYPE_CHECKING

import authres

from mailbot.intake.parse import ParsedMessage
from mailbot.policy.rules import Rules

if TYPE_CHECKING:
    from mailbot.app import App


@dataclass
class Verdict:
    address: str  # the From address, lower case
    staff: bool  # on the staff list
    authenticated: bool = False
    how: str = ""  # what proved it, e.g. "dkim=pass header.d=example.org (mx.example.org)"
    problem: str = ""  # why it is not proved, in words staff (and admins) can act on
    seen: list[str] = field(default_factory=list)  # what the trusted header said, for the record

    @property
    def obeyed(self) -> bool:
        return self.staff and self.authenticated


def staff_addresses(rules: Rules, notify: list[str] | tuple[str, ...] = ()) -> set[str]:
    """Everyone who may work a case by email (lower case)."""
    found: set[str] = set()
    for role in rules.roles.values():
        found.update(role.addresses)
    found.update(rules.staff.members)
    found.update(notify)
    return {a.strip().lower() for a in found if a and "@" in a}


def trusted_authserv_ids(rules: Rules, configured: list[str] | tuple[str, ...] = ()) -> set[str]:
    return {a.strip().lower().rstrip(".") for a in [*rules.staff.trusted_authserv_ids, *configured]
            if a.strip()}


def _domain(value: str) -> str:
    """'<Jane@Example.org>' -> 'example.org'; '@example.org' -> 'example.org'."""
    value = (value or "").strip().strip('"').strip("<>").strip()
    return value.rsplit("@", 1)[-1].lower().rstrip(".")


def _address(value: str) -> str:
    return (value or "").strip().strip('"').strip("<>").strip().lower()


def _authserv_id(value: str) -> str:
    """The first token of an Authentication-Results value, read without a full parse so that
    a header we cannot parse is still recognised as coming from a trusted server."""
    head = re.sub(r"\([^()]*\)", " ", value.split(";", 1)[0])  # drop RFC 5322 comments
    parts = head.split()
    return parts[0].lower().rstrip(".") if parts else ""


def from_addresses(msg: ParsedMessage) -> list[str]:
    values = msg.headers.get("from", [])
    return [addr.lower() for _name, addr in getaddresses(values) if "@" in addr]


EXCHANGE_MAILBOXES = ("ews", "graph", "exchange-imap")  # where Exchange's header firewall stands
EXCHANGE_ONLINE_IMAP_HOSTS = ("outlook.office365.com", "outlook.office.com")


def verify(rules: Rules, msg: ParsedMessage, *, notify: list[str] | tuple[str, ...] = (),
           trusted: list[str] | tuple[str, ...] = (), mailbox_kind: str = "") -> Verdict:
    """Who sent ``msg``, and whether that is proved (see the module docstring for the rules)."""
    addresses = from_addresses(msg)
    address = msg.from_addr.lower()
    verdict = Verdict(address=address, staff=address in staff_addresses(rules, notify))
    if len(msg.headers.get("from", [])) != 1 or len(set(addresses)) != 1:
        verdict.problem = "the message has no single From address"
        return verdict
    domain = _domain(address)

    if mailbox_kind in EXCHANGE_MAILBOXES:
        auth_as = (msg.header("x-ms-exchange-organization-authas") or "").strip().lower()
        source = (msg.header("x-ms-exchange-organization-authsource") or "").strip()
        if auth_as == "internal" and source:
            verdict.authenticated = True
            verdict.how = f"Exchange: sent inside the organisation (AuthSource {source})"
            return verdict

    ids = trusted_authserv_ids(rules, trusted)
    if not ids:
        verdict.problem = ("no trusted mail server is configured (trusted_authserv_ids under [staff]), "
                           "so no message can be verified")
        return verdict
    for value in msg.headers.get("authentication-results", []):
        server = _authserv_id(value)
        if server not in ids:
            continue  # written by someone else, perhaps the sender: ignored
        try:
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception as exc:  # noqa: BLE001 - authres raises its own SyntaxError and others
            verdict.problem = f"the Authentication-Results of {server} cannot be read ({exc})"
            return verdict
        for result in header.results:
            props = {f"{p.type}.{p.name}".lower(): str(p.value or "") for p in result.properties}
            method, outcome = str(result.method).lower(), str(result.result).lower()
            verdict.seen.append(f"{method}={outcome}" + "".join(f" {k}={v}" for k, v in props.items()
                                                                  if k in ("header.d", "smtp.mailfrom", "smtp.auth")))
            if outcome != "pass":
                continue
            if method == "dkim" and _domain(props.get("header.d", "")) == domain:
                verdict.how = f"dkim=pass header.d={domain} ({server})"
            elif method == "spf" and _domain(props.get("smtp.mailfrom", "")) == domain:
                verdict.how = f"spf=pass smtp.mailfrom domain {domain} ({server})"
            elif method == "auth" and _address(props.get("smtp.auth", "")) == address:
                verdict.how = f"auth=pass smtp.auth={address} ({server})"
            if verdict.how:
                verdict.authenticated = True
                return verdict
        said = "; ".join(verdict.seen) or "no results"
        verdict.problem = (f"{server} did not confirm that it comes from {domain} "
                           f"(it found: {said}; needed dkim=pass with header.d={domain}, spf=pass "
                           f"with smtp.mailfrom at {domain}, or auth=pass as {address})")
        return verdict
    verdict.problem = ("it carries no Authentication-Results from a trusted mail server "
                       f"({', '.join(sorted(ids))})")
    return verdict


def mailbox_kind_of(mailbox) -> str:
    """"ews", "graph", "exchange-imap" (Exchange Online's IMAP server) or the configured kind."""
    if mailbox.kind == "imap" and (mailbox.host or "").lower().rstrip(".") in EXCHANGE_ONLINE_IMAP_HOSTS:
        return "exchange-imap"
    return mailbox.kind


def verify_for(app: "App", msg: ParsedMessage) -> Verdict:
    """``verify`` with this installation's rules and config."""
    staff = app.config.staff
    return verify(app.rules, msg, notify=[a for a in staff.notify if a],
                  trusted=list(getattr(staff, "trusted_authserv_ids", []) or []),
                  mailbox_kind=mailbox_kind_of(app.config.mailbox))

"""Microsoft Graph behaviour on top of the shared transport contract: delta rounds kept across
restarts, throttling and transient errors, a token that expires in the middle of a run,
permissions, sending.

The Graph fake (tests/servers/graph_fake.py) checks every request -- the bearer token as a
signed JWT, ``Prefer: IdType="ImmutableId"``, the exact query options -- and fails the test on
anything it does not expect; it pages delta results three at a time, so paging is always used.
"""

from __future__ import annotations

import time

import pytest

from mailbot.db import Database
from mailbot.transport.base import PermanentSendError, TransportError
from mailbot.transport.graph import (DatabaseDeltaStore, GraphClient, GraphError, GraphMailbox,
                                     GraphSender, MemoryDeltaStore)
from mailbot.transport.oauth import MsalTokenProvider, OAuthSettings, StaticTokenProvider
from tests.mailkit import make_mail
from tests.servers.oauth_jwt import CLIENT_ID, GRAPH
from tests.test_transport_contract import PROCESSED, QUARANTINE, graph_settings


def _box(fake, tls, tokens=None, state=None, **settings) -> GraphMailbox:
    return GraphMailbox(graph_settings(fake, **settings), tokens or StaticTokenProvider(fake.token()),
                        state=state or MemoryDeltaStore(), processed_folder=PROCESSED,
                        quarantine_folder=QUARANTINE, poll_seconds=0.05, session=tls.session())


def _sender(fake, tls, tokens=None, **settings) -> GraphSender:
    return GraphSender(graph_settings(fake, **settings), tokens or StaticTokenProvider(fake.token()),
                       session=tls.session())


def _mails(n: int, tag: str = "m") -> list[bytes]:
    return [make_mail(subject=f"{tag} {i}", body=f"Complaint number {i}.") for i in range(n)]


def _msal(authority, tls, **kwargs) -> MsalTokenProvider:
    settings = OAuthSettings(tenant_id=authority.tenant, client_id=CLIENT_ID,
                             scopes=(f"{GRAPH}/.default",), client_secret="s3cret",
                             authority=authority.authority)
    return MsalTokenProvider(settings, http_client=tls.session(), **kwargs)


# -- delta rounds --------------------------------------------------------------------------------
def test_many_messages_over_many_pages_oldest_first_and_changes_do_not_duplicate(graph_server, oauth_tls):
    mails = _mails(25)
    ids = [graph_server.append(raw) for raw in mails]
    box = _box(graph_server, oauth_tls)
    try:
        got = box.fetch(100)
        assert [m.raw for m in got] == mails  # 9 delta pages of 3, newest first on the wire
        graph_server.mark_read(ids[3])  # opened in Outlook: reported by the next round as a change
        graph_server.delete(ids[5])  # deleted by someone: reported as removed
        again = box.fetch(100)
    finally:
        box.close()
    assert [m.raw for m in again] == mails[:5] + mails[6:]
    assert len({m.uid for m in again}) == 24
    assert graph_server.initial_rounds == 1


def test_restart_continues_from_the_delta_link_in_the_database(graph_server, oauth_tls, tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    mails = _mails(4)
    for raw in mails[:3]:
        graph_server.append(raw)
    first = _box(graph_server, oauth_tls, state=DatabaseDeltaStore(db))
    try:
        got = first.fetch(10)
        first.move([got[0].uid], "processed")
    finally:
        first.close()
    graph_server.append(mails[3])
    before = len(graph_server.requests("delta"))
    second = _box(graph_server, oauth_tls, state=DatabaseDeltaStore(db))
    try:
        again = second.fetch(10)
    finally:
        second.close()
    assert [m.raw for m in again] == mails[1:]
    assert [m.uid for m in again[:2]] == [m.uid for m in got[1:]]  # the same ids after a restart
    assert graph_server.initial_rounds == 1  # no second full listing: one cheap delta request
    assert len(graph_server.requests("delta")) - before == 1
    db.close()


def test_expired_delta_link_starts_a_full_round_without_losing_anything(graph_server, oauth_tls):
    mails = _mails(5)
    ids = [graph_server.append(raw) for raw in mails[:4]]
    box = _box(graph_server, oauth_tls)
    try:
        assert len(box.fetch(10)) == 4
        graph_server.expire_delta_tokens()  # Exchange dropped the sync state
        graph_server.delete(ids[1])
        graph_server.append(mails[4])
        again = box.fetch(10)
    finally:
        box.close()
    assert [m.raw for m in again] == [mails[0], mails[2], mails[3], mails[4]]
    assert graph_server.initial_rounds == 2
    assert ("GET", "delta", 410) in graph_server.log


def test_message_gone_before_its_mime_is_read_is_skipped_not_forgotten(graph_server, oauth_tls):
    mails = _mails(2)
    for raw in mails:
        graph_server.append(raw)
    box = _box(graph_server, oauth_tls)
    try:
        graph_server.fail(404, "ErrorItemNotFound", "The specified object was not found in the store.",
                          match="/$value")
        assert [m.raw for m in box.fetch(10)] == mails[1:]
        assert [m.raw for m in box.fetch(10)] == mails  # a lone 404 never hides a waiting message
    finally:
        box.close()


# -- throttling and transient errors ------------------------------------------------------------
def test_throttling_is_waited_out_as_asked_without_losing_or_duplicating(graph_server, oauth_tls):
    mails = _mails(4)
    for raw in mails:
        graph_server.append(raw)
    box = _box(graph_server, oauth_tls)
    sender = _sender(graph_server, oauth_tls)
    try:
        graph_server.throttle(1, retry_after=1, match="/messages/delta")
        graph_server.throttle(1, retry_after=1, status=503, match="/$value")
        started = time.monotonic()
        got = box.fetch(10)
        waited = time.monotonic() - started
        assert [m.raw for m in got] == mails
        assert waited >= 2  # Retry-After was honoured, twice
        graph_server.throttle(2, retry_after=0, match="/move")
        box.move([m.uid for m in got], "processed")
        graph_server.throttle(1, retry_after=0, match="/sendMail")
        sender.send(make_mail(sender="complaints@example.org", to="jo@example.com",
                              subject="Re: m 0"), "complaints@example.org", ["jo@example.com"])
    finally:
        box.close()
        sender.close()
    statuses = [status for _m, _r, status in graph_server.log]
    assert statuses.count(429) == 4 and statuses.count(503) == 1
    assert graph_server.messages("inbox") == []
    assert graph_server.messages(PROCESSED) == mails  # each exactly once
    assert [s.headers["Subject"] for s in graph_server.sent] == ["Re: m 0"]


def test_back_off_longer_than_allowed_gives_up_for_now_and_moves_nothing(graph_server, oauth_tls):
    graph_server.append(make_mail(subject="later"))
    box = _box(graph_server, oauth_tls, max_wait=0.5)
    try:
        [msg] = box.fetch(10)
        graph_server.throttle(1, retry_after=60, match="/move")
        started = time.monotonic()
        with pytest.raises(TransportError, match="busy"):
            box.move([msg.uid], "processed")
        assert time.monotonic() - started < 30  # did not sit out the 60 s
        assert len(graph_server.messages("inbox")) == 1  # still there, for the next round
        box.move([msg.uid], "processed")  # the next round works
    finally:
        box.close()
    assert graph_server.messages("inbox") == [] and len(graph_server.messages(PROCESSED)) == 1


def test_transient_server_errors_are_retried_for_reads_but_a_send_is_never_repeated(graph_server, oauth_tls):
    graph_server.append(make_mail(subject="flaky"))
    box = _box(graph_server, oauth_tls)
    sender = _sender(graph_server, oauth_tls)
    try:
        graph_server.fail(502, "BadGateway", "Bad gateway.", times=2, match="/$value")
        assert len(box.fetch(10)) == 1
        graph_server.fail(500, "InternalServerError", "Something went wrong.", match="/sendMail")
        with pytest.raises(TransportError, match="500"):  # the outbox tries again later
            sender.send(make_mail(sender="complaints@example.org", to="jo@example.com"),
                        "complaints@example.org", ["jo@example.com"])
    finally:
        box.close()
        sender.close()
    assert len(graph_server.requests("send_mail")) == 1  # not sent twice on an ambiguous answer
    assert graph_server.sent == []


# -- tokens ----------------------------------------------------------------------------------------
def test_token_expiring_mid_run_is_refreshed_without_losing_or_repeating(graph_server, oauth_tls,
                                                                          oauth_authority):
    oauth_authority.register_app(secret="s3cret", roles={GRAPH: ["Mail.ReadWrite", "Mail.Send"]})
    tokens = _msal(oauth_authority, oauth_tls)
    mails = _mails(7)
    for raw in mails:
        graph_server.append(raw)
    box = _box(graph_server, oauth_tls, tokens=tokens)
    handled: list[str] = []
    try:
        graph_server.expire_tokens_after(6)  # somewhere in the second batch
        while batch := box.fetch(3):
            handled += [m.uid for m in batch]
            box.move([m.uid for m in batch], "processed")
    finally:
        box.close()
    assert len(handled) == len(set(handled)) == 7
    assert graph_server.messages(PROCESSED) == mails and graph_server.messages("inbox") == []
    assert graph_server.expired_answered == 1  # refused once, then a new token
    assert len(graph_server.tokens_seen) == 2 and tokens.acquired == 2
    assert [g for g, _c, _s in oauth_authority.token_requests] == ["client_credentials"] * 2


def test_a_refused_token_is_tried_once_more_then_reported(graph_server, oauth_tls):
    stale = graph_server.token(ttl=-60)  # always expired
    tokens = StaticTokenProvider(stale)
    box = _box(graph_server, oauth_tls, tokens=tokens)
    try:
        with pytest.raises(GraphError, match="401 InvalidAuthenticationToken") as caught:
            box.fetch(10)
    finally:
        box.close()
    assert caught.value.status == 401 and tokens.refused == [stale]  # the provider was told


def test_missing_permission_is_a_403(graph_server, oauth_tls):
    box = _box(graph_server, oauth_tls, tokens=StaticTokenProvider(graph_server.token(roles=["Mail.Send"])))
    try:
        with pytest.raises(GraphError, match="403 ErrorAccessDenied"):
            box.fetch(10)
    finally:
        box.close()


def test_a_link_to_another_host_is_never_followed(graph_server, oauth_tls):
    client = GraphClient(graph_settings(graph_server), StaticTokenProvider(graph_server.token()),
                         oauth_tls.session())
    with pytest.raises(GraphError, match="another host"):
        client.request("GET", "https://attacker.example/v1.0/users/x/messages/delta?$deltatoken=1")


# -- sending -------------------------------------------------------------------------------------
def test_letter_keeps_its_mime_and_a_copy_is_in_sent_items(graph_server, oauth_tls):
    letter = make_mail(sender="Complaints Team <complaints@example.org>", to="jo@example.com",
                       subject="Re: [CMP-2026-00001] Youth club", message_id="<ack-1@example.org>",
                       headers={"In-Reply-To": "<cmp-1@example.com>", "References": "<cmp-1@example.com>"})
    sender = _sender(graph_server, oauth_tls)
    try:
        sender.send(letter, "complaints@example.org", ["jo@example.com", "copy@example.org"])
    finally:
        sender.close()
    [sent] = graph_server.sent
    assert sent.headers["In-Reply-To"] == "<cmp-1@example.com>"
    assert sent.headers["Message-ID"] == "<ack-1@example.org>"
    assert sorted(sent.recipients) == ["copy@example.org", "jo@example.com"]  # Bcc added
    assert graph_server.messages("sentitems") == [sent.mime]


def test_sending_as_another_address_is_refused_for_good(graph_server, oauth_tls):
    sender = _sender(graph_server, oauth_tls)
    try:
        with pytest.raises(PermanentSendError, match="ErrorSendAsDenied"):
            sender.send(make_mail(sender="someone@example.org", to="jo@example.com"),
                        "someone@example.org", ["jo@example.com"])
    finally:
        sender.close()
    assert graph_server.sent == []


def test_wait_notices_mail_and_is_cheap(graph_server, oauth_tls):
    box = _box(graph_server, oauth_tls)
    try:
        assert box.fetch(10) == []
        assert box.wait(0.2) is False
        graph_server.append(make_mail(subject="new"))
        assert box.wait(5) is True
    finally:
        box.close()
    routes = {route for _m, route, _s in graph_server.log}
    assert routes <= {"delta", "child_folders", "create_folder", "mime"}


# -- retention and requeue ---------------------------------------------------------------------------
def test_erasure_deletes_the_handled_copies_for_good_and_requeue_brings_quarantine_back(
        graph_server, oauth_tls):
    mails = [make_mail(subject=f"r {i}", message_id=f"<r{i}@example.com>") for i in range(5)]
    for raw in mails:
        graph_server.append(raw)
    box = _box(graph_server, oauth_tls)
    try:
        got = box.fetch(10)
        box.move([m.uid for m in got[:4]], "processed")
        box.move([got[4].uid], "quarantine")
        assert box.count() == 0
        # r0 and r1 erased (one with, one without angle brackets); r9 was never there
        assert box.delete_handled(["<r0@example.com>", "r1@example.com", "<r9@example.com>"]) == 2
        assert box.requeue() == 1
        again = box.fetch(10)
    finally:
        box.close()
    assert graph_server.messages(PROCESSED) == mails[2:4]
    assert [m.raw for m in again] == [mails[4]] and again[0].uid == got[4].uid
    assert graph_server.messages(QUARANTINE) == []

"""qmgr's remote transport: the targets of one queue file for one nexthop go to the smtp
service in one request, its per-recipient results become outcomes, and a service that
fails defers (never resends)."""
from __future__ import annotations

import asyncio

from store.queue import Envelope, Recipient
from store.resolve import Remote
from workers._jsonlines import Lost, Unreachable
from workers.qmgr.message import MessageFile
from workers.qmgr.transports.base import Delivery
from workers.qmgr.transports.remote import REMOTE_PENDING, RemoteTransport


class FakeChannel:
    """Records the requests; answers each with results(request) or raises failure."""

    def __init__(self, results=None, failure: Exception | None = None):
        self.requests: list[dict] = []
        self.results = results or (lambda request: [{"address": r["address"], "outcome": "sent", "code": 250,
                                                     "status": "2.0.0", "text": "250 2.0.0 Ok: queued as X",
                                                     "relay": "mx.example.org[192.0.2.1]:25"}
                                                    for r in request["recipients"]])
        self.failure = failure

    async def ask(self, request: dict) -> dict:
        self.requests.append(request)
        await asyncio.sleep(0)
        if self.failure:
            raise self.failure
        return {"id": 1, "results": self.results(request)}


ENVELOPE = Envelope("alice@example.test", [Recipient("bob@example.org", ["SUCCESS", "FAILURE"], "rfc822;bob@example.org"),
                                           Recipient("list@example.test")], ret="HDRS", envid="E1", body="8BITMIME")
MESSAGE = MessageFile("/nonexistent", 321, 1000)


def delivery(queue_id: str, address: str, original: str, rcpt: Recipient) -> Delivery:
    return Delivery(queue_id, Remote(address), "alice@example.test", address, original, MESSAGE, ENVELOPE, rcpt)


def deliver_all(transport, deliveries):
    async def run():
        return await asyncio.gather(*(transport.deliver(d) for d in deliveries))
    return asyncio.run(run())


def test_one_request_per_queue_file_and_nexthop_with_the_dsn_parameters():
    channel = FakeChannel()
    transport = RemoteTransport(channel, None)
    outcomes = deliver_all(transport, [
        delivery("Q1", "bob@example.org", "bob@example.org", ENVELOPE.recipients[0]),
        delivery("Q1", "carol@EXAMPLE.org", "list@example.test", ENVELOPE.recipients[1]),
        delivery("Q1", "dave@example.net", "list@example.test", ENVELOPE.recipients[1]),
        delivery("Q2", "erin@example.org", "list@example.test", ENVELOPE.recipients[1])])
    assert all(o.ok and o.relay == "mx.example.org[192.0.2.1]:25" and o.detail == "250 2.0.0 Ok: queued as X" for o in outcomes)
    by_hop = sorted((r["queue_id"], r["nexthop"], [x["address"] for x in r["recipients"]]) for r in channel.requests)
    assert by_hop == [("Q1", "example.net", ["dave@example.net"]),
                      ("Q1", "example.org", ["bob@example.org", "carol@EXAMPLE.org"]),
                      ("Q2", "example.org", ["erin@example.org"])]
    first = next(r for r in channel.requests if r["nexthop"] == "example.org" and r["queue_id"] == "Q1")
    assert (first["offset"], first["size"], first["sender"], first["ret"], first["envid"], first["body"]) == \
        (321, 1000, "alice@example.test", "HDRS", "E1", "8BITMIME")
    assert first["recipients"] == [
        {"address": "bob@example.org", "notify": ["SUCCESS", "FAILURE"], "orcpt": "rfc822;bob@example.org"},
        {"address": "carol@EXAMPLE.org", "notify": None, "orcpt": "rfc822;list@example.test"}]   # an alias's


def test_relayhost_is_the_nexthop_of_every_domain():
    channel = FakeChannel()
    transport = RemoteTransport(channel, ("smtp.isp.example", 587))
    deliver_all(transport, [delivery("Q1", "bob@example.org", "bob@example.org", ENVELOPE.recipients[0]),
                            delivery("Q1", "dave@example.net", "list@example.test", ENVELOPE.recipients[1])])
    assert [(r["nexthop"], len(r["recipients"])) for r in channel.requests] == [("[smtp.isp.example]:587", 2)]
    assert transport.destination(Remote("x@y.example")) == "[smtp.isp.example]:587"


def test_each_recipients_result_is_its_outcome():
    replies = {"bob@example.org": ("sent", 250, "2.0.0"), "carol@example.org": ("bounced", 550, "5.1.1"),
               "dave@example.org": ("deferred", 451, "4.3.0")}
    channel = FakeChannel(lambda request: [
        {"address": r["address"], "outcome": replies[r["address"]][0], "code": replies[r["address"]][1],
         "status": replies[r["address"]][2], "text": f"host mx said: {replies[r['address']][1]} the far side",
         "relay": "mx[192.0.2.1]:25"}
        for r in request["recipients"]])
    sent, bounced, deferred = deliver_all(RemoteTransport(channel, None), [
        delivery("Q1", a, a, ENVELOPE.recipients[1]) for a in replies])
    assert sent.ok and not bounced.ok and bounced.permanent and not deferred.ok and not deferred.permanent
    assert (bounced.status, bounced.detail) == ("5.1.1", "host mx said: 550 the far side")
    assert deferred.status == "4.3.0" and not deferred.unavailable


def test_a_failing_service_defers_every_recipient_and_nothing_is_sent_twice():
    for failure in (Lost(), Unreachable("cannot reach the smtp service at /run/x.sock: No such file")):
        channel = FakeChannel(failure=failure)
        outcomes = deliver_all(RemoteTransport(channel, None), [
            delivery("Q1", "bob@example.org", "bob@example.org", ENVELOPE.recipients[0]),
            delivery("Q1", "carol@example.org", "carol@example.org", ENVELOPE.recipients[1])])
        assert [(o.ok, o.permanent, o.status) for o in outcomes] == [(False, False, "4.3.0")] * 2
        assert len(channel.requests) == 1
    wrong = FakeChannel(lambda request: [])                      # fewer results than recipients
    [outcome] = deliver_all(RemoteTransport(wrong, None), [delivery("Q1", "bob@example.org", "bob@example.org", None)])
    assert (outcome.ok, outcome.permanent, outcome.detail) == (False, False, "smtp service: bad reply")


def test_without_an_smtp_service_remote_mail_waits():
    [outcome] = deliver_all(RemoteTransport(None, None), [delivery("Q1", "bob@example.org", "bob@example.org", None)])
    assert outcome.unavailable and outcome.detail == REMOTE_PENDING


def test_a_nexthop_nobody_could_talk_to_is_not_asked_again_for_a_while(monkeypatch):
    from workers.qmgr.transports import remote
    down = {"example.org": True}
    channel = FakeChannel(lambda request: [
        {"address": r["address"], "outcome": "deferred", "status": "4.4.1", "code": None,
         "text": "connect to mx.example.org[192.0.2.1]:25: Connection refused", "relay": ""}
        if down[request["nexthop"]] else
        {"address": r["address"], "outcome": "sent", "status": "2.0.0", "code": 250, "text": "Ok", "relay": "mx"}
        for r in request["recipients"]])
    transport = RemoteTransport(channel, None)
    bob = delivery("Q1", "bob@example.org", "bob@example.org", ENVELOPE.recipients[0])
    [first] = deliver_all(transport, [bob])
    assert not first.ok and "Connection refused" in first.detail and len(channel.requests) == 1
    [second] = deliver_all(transport, [delivery("Q2", "carol@example.org", "carol@example.org", None)])
    assert second.detail.startswith("delivery temporarily suspended: ") and len(channel.requests) == 1
    later = remote._clock() + remote.DEAD_TIME + 1
    monkeypatch.setattr(remote, "_clock", lambda: later)
    down["example.org"] = False
    [third] = deliver_all(transport, [delivery("Q3", "carol@example.org", "carol@example.org", None)])
    assert third.ok and len(channel.requests) == 2


def test_a_connection_lost_mid_message_is_no_dead_destination():
    channel = FakeChannel(lambda request: [{"address": r["address"], "outcome": "deferred", "status": "4.4.2",
                                            "code": 0, "text": "lost connection with mx while sending the message",
                                            "relay": "mx"} for r in request["recipients"]])
    transport = RemoteTransport(channel, None)
    deliver_all(transport, [delivery("Q1", "bob@example.org", "bob@example.org", None)])
    deliver_all(transport, [delivery("Q2", "bob@example.org", "bob@example.org", None)])
    assert len(channel.requests) == 2


def test_a_reply_from_the_far_side_is_no_dead_destination():
    channel = FakeChannel(lambda request: [{"address": r["address"], "outcome": "deferred", "status": "4.7.1",
                                            "code": 451, "text": "greylisted", "relay": "mx"}
                                           for r in request["recipients"]])
    transport = RemoteTransport(channel, None)
    deliver_all(transport, [delivery("Q1", "bob@example.org", "bob@example.org", None)])
    deliver_all(transport, [delivery("Q2", "bob@example.org", "bob@example.org", None)])
    assert len(channel.requests) == 2

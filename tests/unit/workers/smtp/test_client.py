"""The SMTP client (workers/smtp/client.py) and the delivery of one request
(workers/smtp/deliver.py) against the fake server of fakesmtp.py: the commands and
extensions (PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN, STARTTLS at each security level),
per-recipient outcomes, the next host after a failing one, connection reuse and the
per-nexthop limit.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from store.queue import new_queue_id
from tests.fakes import FakeLog
from tests.unit.workers.smtp.fakesmtp import FakeSMTP, make_certificate
from workers.smtp.client import Session, SessionFailed, Settings
from workers.smtp.deliver import Deliverer
from workers.smtp.message import MessageSource
from workers.smtp.mx import Host
from workers.smtp.request import parse_request

MESSAGE = (b"Received: from a by b; Tue, 1 Dec 2026 00:00:00 +0000\r\n"
           b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nbare lf\nend\r\n")
SETTINGS = Settings("client.test", "none", "", 5, 5, 5, 5, 5, 5, 5)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


@pytest.fixture
def queue(tmp_path):
    """(queue_directory, write(message) -> request fields for it)."""
    directory = tmp_path / "queue"
    (directory / "active").mkdir(parents=True)

    def write(message: bytes = MESSAGE) -> dict:
        queue_id = new_queue_id()
        prefix = b'{"envelope": "in front of the message"}\n'
        (directory / "active" / queue_id).write_bytes(prefix + message)
        return {"queue_id": queue_id, "offset": len(prefix), "size": len(message)}
    return str(directory), write


def request(fields: dict, recipients=("bob@example.test",), **changes):
    data = {"id": 1, "sender": "alice@here.test", "ret": None, "envid": None, "body": None,
            "smtputf8": False, "nexthop": "[127.0.0.1]", **fields,
            "recipients": [r if isinstance(r, dict) else {"address": r, "notify": None, "orcpt": None}
                           for r in recipients], **changes}
    return parse_request(json.dumps(data).encode())


async def deliver_to(server: FakeSMTP, directory: str, req, settings: Settings = SETTINGS, host="127.0.0.1",
                     credentials=None):
    message = await MessageSource.open(directory, req.queue_id, req.offset, req.size)
    try:
        session = await Session.open(Host(host, "127.0.0.1", server.port), settings, FakeLog(), credentials)
        results = await session.send(req, message)
        await session.quit()
        return results
    finally:
        message.close()


def one(server, directory, req, settings=SETTINGS, host="127.0.0.1", credentials=None):
    async def go():
        async with server:
            return await deliver_to(server, directory, req, settings, host, credentials)
    return run(go())


# ---------------------------------------------------------------- the transaction

def test_pipelined_transaction_sends_the_message_dot_stuffed_with_crlf(queue):
    directory, write = queue
    server = FakeSMTP(strict_pipelining=True)      # a client waiting for MAIL's reply would hang
    results = one(server, directory, request(write(), ["bob@example.test", "carol@example.test"]))
    assert [(r.outcome, r.status, r.code) for r in results] == [("sent", "2.0.0", 250)] * 2
    assert results[0].text == "250 2.0.0 Ok: queued as ABC" and results[0].relay.startswith("127.0.0.1[127.0.0.1]:")
    assert server.commands[1:5] == [f"MAIL FROM:<alice@here.test> SIZE={len(MESSAGE)}",
                                    "RCPT TO:<bob@example.test>", "RCPT TO:<carol@example.test>", "DATA"]
    assert server.messages == [MESSAGE.replace(b"bare lf\n", b"bare lf\r\n")]
    assert b"\r\n..leading dot\r\n...two dots\r\n" in server.raw_data[0]
    assert server.raw_data[0].endswith(b"end\r\n.\r\n")
    assert server.commands[-1] == "QUIT"


def test_without_pipelining_each_command_waits_and_no_data_without_recipients(queue):
    directory, write = queue
    server = FakeSMTP(extensions=["8BITMIME"], replies={"RCPT": "550 5.1.1 no such user"})
    results = one(server, directory, request(write(), ["x@example.test", "y@example.test"]))
    assert [(r.outcome, r.status, r.code) for r in results] == [("bounced", "5.1.1", 550)] * 2
    assert results[0].text == ("host 127.0.0.1[127.0.0.1] said: 550 5.1.1 no such user "
                               "(in reply to RCPT TO command)")
    assert "DATA" not in server.commands and server.commands[1] == "MAIL FROM:<alice@here.test>"


def test_each_recipient_gets_its_own_outcome_and_derived_status_codes(queue):
    directory, write = queue
    answers = {"<a@x.test>": "250 ok", "<b@x.test>": "550 unknown", "<c@x.test>": "452 4.2.2 mailbox full",
               "<d@x.test>": "250 2.1.5 ok"}
    server = FakeSMTP(replies={"RCPT": lambda arg: answers[arg.split(":", 1)[1]],
                               ".": "554 5.6.0 content rejected"})
    results = one(server, directory, request(write(), ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]))
    assert [(r.outcome, r.status, r.code) for r in results] == [
        ("bounced", "5.6.0", 554), ("bounced", "5.0.0", 550), ("deferred", "4.2.2", 452), ("bounced", "5.6.0", 554)]
    assert results[0].text.endswith("(in reply to end of DATA command)")


def test_a_421_defers_the_rest_and_data_refusal_applies_to_the_accepted(queue):
    directory, write = queue
    server = FakeSMTP(replies={"DATA": "451 4.3.0 try later"})
    results = one(server, directory, request(write(), ["a@x.test", "b@x.test"]))
    assert [(r.outcome, r.status) for r in results] == [("deferred", "4.3.0")] * 2
    server = FakeSMTP(extensions=[], replies={"RCPT": lambda arg: "421 4.4.2 bye" if "b@" in arg else "250 ok"})

    async def go():
        async with server:
            message = await MessageSource.open(directory, req.queue_id, req.offset, req.size)
            session = await Session.open(Host("h", "127.0.0.1", server.port), SETTINGS, FakeLog())
            results = await session.send(req, message)
            message.close()
            session.abort()
            return results, session.usable
    req = request(write(), ["a@x.test", "b@x.test", "c@x.test"])
    results, usable = run(go())
    assert [(r.outcome, r.code) for r in results] == [("deferred", 421)] * 3 and not usable


def test_size_8bitmime_and_smtputf8_limits_refuse_before_any_command(queue):
    directory, write = queue
    fields = write()
    server = FakeSMTP(extensions=["SIZE 10"])
    results = one(server, directory, request(fields))
    assert (results[0].outcome, results[0].status) == ("bounced", "5.3.4")
    assert "exceeds size limit 10" in results[0].text
    assert not any(c.startswith("MAIL") for c in server.commands)
    server = FakeSMTP(extensions=["SIZE"])
    assert one(server, directory, request(fields, body="8BITMIME"))[0].status == "5.6.3"
    server = FakeSMTP(extensions=["8BITMIME"])
    assert one(server, directory, request(fields, smtputf8=True))[0].status == "5.6.7"
    assert one(FakeSMTP(extensions=["8BITMIME"]), directory, request(fields, sender="j\u00fcrgen@x.test"))[0].status \
        == "5.6.7"
    server = FakeSMTP(extensions=["8BITMIME", "SMTPUTF8"])
    assert one(server, directory, request(fields, body="8BITMIME", smtputf8=True))[0].outcome == "sent"
    assert server.commands[1] == "MAIL FROM:<alice@here.test> BODY=8BITMIME SMTPUTF8"


def test_dsn_parameters_go_only_to_a_peer_that_offers_dsn(queue):
    directory, write = queue
    fields = write()
    recipient = {"address": "bob@x.test", "notify": ["SUCCESS", "FAILURE"], "orcpt": "rfc822;b+o=b@x.test"}
    server = FakeSMTP(extensions=["DSN"])
    one(server, directory, request(fields, [recipient], ret="HDRS", envid="id 1+"))
    assert server.commands[1:3] == ["MAIL FROM:<alice@here.test> RET=HDRS ENVID=id+201+2B",
                                    "RCPT TO:<bob@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bo+3Db@x.test"]
    server = FakeSMTP(extensions=[])
    one(server, directory, request(fields, [recipient], ret="HDRS", envid="id"))
    assert server.commands[1:3] == ["MAIL FROM:<alice@here.test>", "RCPT TO:<bob@x.test>"]


def test_a_refusing_greeting_or_helo_fails_the_host_with_a_temporary_status(queue):
    directory, write = queue
    for server in (FakeSMTP(greeting="554 5.7.1 go away"), FakeSMTP(ehlo_reply="421 4.7.0 not now")):
        with pytest.raises(SessionFailed) as failure:
            one(server, directory, request(write()))
        assert failure.value.status in ("4.7.1", "4.7.0") and failure.value.code in (554, 421)


def test_helo_when_ehlo_is_refused_and_a_null_sender(queue):
    directory, write = queue
    server = FakeSMTP(ehlo_reply="502 5.5.2 no EHLO here")
    results = one(server, directory, request(write(), sender=""))
    assert results[0].outcome == "sent"
    assert server.commands[:3] == ["EHLO client.test", "HELO client.test", "MAIL FROM:<>"]


def test_lost_connection_in_the_message_defers(queue):
    directory, write = queue
    results = one(FakeSMTP(close_after_354=True), directory, request(write()))
    assert results[0].outcome == "deferred" and "lost connection" in results[0].text


@pytest.mark.parametrize("reply, problem", [
    ("250-" + "x" * 3000, "longer than"),
    ("\n".join(["250 fake"] * 150), "longer than 100 lines"),
    ("hello there", "bad reply"),
])
def test_bad_replies_fail_the_host(queue, reply, problem):
    directory, write = queue
    server = FakeSMTP(ehlo_reply=reply)
    with pytest.raises(SessionFailed, match=problem) as failure:
        one(server, directory, request(write()))
    assert failure.value.status == "4.4.2"


# ---------------------------------------------------------------- STARTTLS

def test_starttls_may_encrypts_drops_injected_bytes_and_says_ehlo_again(queue, tmp_path):
    directory, write = queue
    server = FakeSMTP(extensions=["PIPELINING", "STARTTLS"], tls=make_certificate(tmp_path),
                      inject_after_starttls=b"250 injected\r\n")
    results = one(server, directory, request(write()), dataclasses.replace(SETTINGS, tls_level="may"))
    assert results[0].outcome == "sent" and server.tls_used
    assert server.commands[:3] == ["EHLO client.test", "STARTTLS", "EHLO client.test"]


def test_starttls_refused_under_may_goes_on_in_clear_text(queue, tmp_path):
    directory, write = queue
    server = FakeSMTP(extensions=["STARTTLS"], tls=make_certificate(tmp_path), replies={"STARTTLS": "454 4.7.0 no"})
    results = one(server, directory, request(write()), dataclasses.replace(SETTINGS, tls_level="may"))
    assert results[0].outcome == "sent" and not server.tls_used


def test_encrypt_needs_starttls_and_none_never_uses_it(queue, tmp_path):
    directory, write = queue
    with pytest.raises(SessionFailed, match="TLS is required") as failure:
        one(FakeSMTP(extensions=[]), directory, request(write()), dataclasses.replace(SETTINGS, tls_level="encrypt"))
    assert failure.value.status == "4.7.4"
    server = FakeSMTP(extensions=["STARTTLS"], tls=make_certificate(tmp_path))
    assert one(server, directory, request(write()))[0].outcome == "sent" and not server.tls_used


def test_verify_checks_the_certificate_against_the_ca_file_and_the_host_name(queue, tmp_path):
    directory, write = queue
    cert, key = make_certificate(tmp_path, "mx.example.test")
    verify = dataclasses.replace(SETTINGS, tls_level="verify", ca_file=cert)
    server = FakeSMTP(extensions=["STARTTLS"], tls=(cert, key))
    assert one(server, directory, request(write()), verify, host="mx.example.test")[0].outcome == "sent"
    assert server.tls_used
    system_cas = dataclasses.replace(verify, ca_file="")
    for settings, host in ((verify, "other.example.test"), (system_cas, "mx.example.test")):
        with pytest.raises(SessionFailed, match="Cannot start TLS") as failure:
            one(FakeSMTP(extensions=["STARTTLS"], tls=(cert, key)), directory, request(write()), settings, host)
        assert failure.value.status == "4.7.5"


# ---------------------------------------------------------------- hosts, reuse, limits

def deliverer(cache_time=30.0, concurrency=20, log=None):
    return Deliverer(SETTINGS, None, 5, cache_time, concurrency, log or FakeLog())


def test_a_refusing_or_unreachable_host_moves_on_to_the_next(queue):
    directory, write = queue
    req = request(write())

    async def go():
        async with FakeSMTP(greeting="421 4.3.2 busy") as busy, FakeSMTP() as good:
            message = await MessageSource.open(directory, req.queue_id, req.offset, req.size)
            log = FakeLog()
            d = deliverer(0, log=log)
            with socket_closed_port() as closed:
                hosts = [Host("down", "127.0.0.1", closed), Host("busy", "127.0.0.1", busy.port),
                         Host("good", "127.0.0.1", good.port)]
                results = await d._try_hosts(req, message, hosts)
                failed = await d._try_hosts(req, message, hosts[:2])
            message.close()
            await d.closed()
            return results, failed, log.lines, good.messages
    results, failed, lines, messages = run(go())
    assert results[0].outcome == "sent" and results[0].relay.startswith("good[127.0.0.1]:")
    assert len(messages) == 1
    assert failed[0].outcome == "deferred" and "refused to talk to me: 421 4.3.2 busy" in failed[0].text
    assert failed[0].status == "4.3.2" and failed[0].code == 421
    assert any("down[127.0.0.1]" in line and "connect to" in line for line in lines)


class socket_closed_port:
    """A port on 127.0.0.1 where nothing listens."""

    def __enter__(self) -> int:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_connections_are_reused_for_the_same_nexthop_with_rset(queue):
    directory, write = queue

    async def go():
        async with FakeSMTP() as server:
            d = deliverer(cache_time=30)
            outcomes = []
            for _ in range(3):
                req = request(write(), nexthop=f"[127.0.0.1]:{server.port}")
                message = await MessageSource.open(directory, req.queue_id, req.offset, req.size)
                outcomes += [r.outcome for r in await d.deliver(req, message)]
                message.close()
            d.close_idle()
            await d.closed()
            return outcomes, server
    outcomes, server = run(go())
    assert outcomes == ["sent"] * 3
    assert server.connections == 1 and server.commands.count("RSET") == 2 and server.commands[-1] == "QUIT"


def test_at_most_the_concurrency_limit_of_connections_per_nexthop(queue):
    directory, write = queue

    async def go():
        async with FakeSMTP() as server:
            d = deliverer(cache_time=30, concurrency=2)
            requests = [request(write(), nexthop=f"[127.0.0.1]:{server.port}") for _ in range(8)]

            async def one_delivery(req):
                message = await MessageSource.open(directory, req.queue_id, req.offset, req.size)
                try:
                    return (await d.deliver(req, message))[0].outcome
                finally:
                    message.close()
            outcomes = await asyncio.gather(*(one_delivery(req) for req in requests))
            d.close_idle()
            await d.closed()
            return outcomes, server
    outcomes, server = run(go())
    assert outcomes == ["sent"] * 8
    assert server.most_at_once <= 2 and server.connections <= 2 and len(server.messages) == 8


def test_a_queue_file_cut_short_ends_the_connection_without_the_final_dot(queue):
    directory, write = queue
    req = request(write())

    async def go():
        async with FakeSMTP() as server:
            message = await MessageSource.open(directory, req.queue_id, req.offset, req.size)
            with open(f"{directory}/active/{req.queue_id}", "r+b") as f:
                f.truncate(req.offset + 10)
            session = await Session.open(Host("h", "127.0.0.1", server.port), SETTINGS, FakeLog())
            results = await session.send(req, message)
            message.close()
            await asyncio.sleep(0.1)                 # let the server see the end of the connection
            return results, server.messages, session.usable
    results, messages, usable = run(go())
    assert (results[0].outcome, results[0].status) == ("deferred", "4.3.0") and "cannot read" in results[0].text
    assert messages == [] and not usable


# ---------------------------------------------------------------- SMTP AUTH, wrapper mode, loops

CAROL = ("carol", "carol:pw")


@pytest.mark.parametrize("offered, chosen", [
    (["LOGIN", "PLAIN", "SCRAM-SHA-256", "CRAM-MD5"], "SCRAM-SHA-256"),
    (["CRAM-MD5", "LOGIN", "PLAIN"], "PLAIN"),
    (["LOGIN"], "LOGIN"),
])
def test_auth_after_ehlo_with_the_best_mechanism_offered(queue, offered, chosen):
    directory, write = queue
    server = FakeSMTP(auth=dict([CAROL]), auth_mechanisms=offered)
    results = one(server, directory, request(write()), credentials=CAROL)    # 127.0.0.1: no TLS needed
    assert results[0].outcome == "sent" and server.authenticated == [("carol", chosen)]
    assert server.commands[1].startswith(f"AUTH {chosen}") and server.commands[0] == "EHLO client.test"
    assert not any("carol:pw" in c for c in server.commands)


def test_no_auth_without_a_password_or_an_offer(queue):
    directory, write = queue
    server = FakeSMTP(auth=dict([CAROL]))
    assert one(server, directory, request(write()))[0].outcome == "sent" and server.authenticated == []
    server = FakeSMTP()
    assert one(server, directory, request(write()), credentials=CAROL)[0].outcome == "sent"


def test_a_refused_password_fails_the_host_with_4_7_8(queue):
    directory, write = queue
    for mechanism in ("SCRAM-SHA-256", "PLAIN", "LOGIN"):
        with pytest.raises(SessionFailed, match=r"SASL authentication failed; server 127.0.0.1\[127.0.0.1\] "
                                                r"said: 535 5.7.8") as failure:
            one(FakeSMTP(auth={"carol": "other"}, auth_mechanisms=[mechanism]), directory, request(write()),
                credentials=CAROL)
        assert failure.value.status == "4.7.8" and failure.value.code == 535


def test_no_password_in_clear_text_to_a_host_that_is_not_loopback(queue, tmp_path, monkeypatch):
    directory, write = queue
    monkeypatch.setattr("workers.smtp.client._loopback", lambda address: False)
    server = FakeSMTP(auth=dict([CAROL]))
    with pytest.raises(SessionFailed, match="not sending a password to host .* without TLS") as failure:
        one(server, directory, request(write()), credentials=CAROL)
    assert failure.value.status == "4.7.0" and not any(c.startswith("AUTH") for c in server.commands)
    server = FakeSMTP(extensions=["STARTTLS"], tls=make_certificate(tmp_path), auth=dict([CAROL]))
    results = one(server, directory, request(write()), dataclasses.replace(SETTINGS, tls_level="may"),
                  credentials=CAROL)
    assert results[0].outcome == "sent" and server.authenticated == [("carol", "SCRAM-SHA-256")]
    assert server.commands[:4] == ["EHLO client.test", "STARTTLS", "EHLO client.test", server.commands[3]]
    assert server.commands[3].startswith("AUTH SCRAM-SHA-256 ")
    monkeypatch.undo()
    with pytest.raises(SessionFailed, match="no mechanism in common"):
        one(FakeSMTP(auth=dict([CAROL]), auth_mechanisms=["CRAM-MD5"]), directory, request(write()),
            credentials=CAROL)


def test_wrapper_mode_speaks_tls_from_the_first_byte(queue, tmp_path):
    directory, write = queue
    cert, key = make_certificate(tmp_path, "mx.example.test")
    wrapper = dataclasses.replace(SETTINGS, tls_level="encrypt", wrappermode=True)
    server = FakeSMTP(extensions=["STARTTLS", "PIPELINING"], tls=(cert, key), wrapper=True, auth=dict([CAROL]))
    results = one(server, directory, request(write()), wrapper, credentials=CAROL)
    assert results[0].outcome == "sent" and server.authenticated == [("carol", "SCRAM-SHA-256")]
    assert "STARTTLS" not in server.commands
    verify = dataclasses.replace(wrapper, tls_level="verify", ca_file=cert)
    assert one(FakeSMTP(tls=(cert, key), wrapper=True), directory, request(write()), verify,
               host="mx.example.test")[0].outcome == "sent"
    with pytest.raises(SessionFailed, match="Cannot start TLS with other.example.test") as failure:
        one(FakeSMTP(tls=(cert, key), wrapper=True), directory, request(write()), verify, host="other.example.test")
    assert failure.value.status == "4.7.5"


def test_a_host_answering_ehlo_with_my_own_name_bounces_the_mail_as_a_loop(queue):
    directory, write = queue
    req = request(write(), nexthop="example.test")

    async def go():
        async with FakeSMTP() as server:
            message = await MessageSource.open(directory, req.queue_id, req.offset, req.size)
            log = FakeLog()
            d = Deliverer(dataclasses.replace(SETTINGS, myhostname="fake.test"), None, 5, 0, 20, log)
            try:
                return await d._try_hosts(req, message, [Host("mx.example.test", "127.0.0.1", server.port)]), log
            finally:
                message.close()
    [result], log = run(go())
    assert (result.outcome, result.status, result.text) == ("bounced", "5.4.6",
                                                            "mail for example.test loops back to myself")
    assert any("replied to EHLO with my own hostname fake.test" in line for line in log.lines)

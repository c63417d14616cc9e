"""The smtp service (workers/smtp) through the real master: a request on its socket
($run_directory/smtp.sock) delivers a queue file's message into a second mail system's
smtpd, by a bracketed nexthop and by an MX lookup against tests/dnsserver.py; the message
arrives byte-identical after the receiver's own Received header (and its local delivery's
Return-Path and Delivered-To). Also: per-recipient
outcomes of the receiver's refusals, and a null MX bounced without a connection.
"""
from __future__ import annotations

import json
import os
import random
import socket

import pytest

from store.queue import new_queue_id
from tests.dnsserver import DNSServer
from tests.integration.delivery_support import inboxes  # noqa: F401, F811  (a fixture)

pytestmark = pytest.mark.integration

MESSAGE = (b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: outgoing\r\n"
           b"Message-ID: <1@sender.test>\r\n\r\n.a line with a leading dot\r\n..and two\r\n.\r\n"
           + b"body line\r\n" * 5000 + b"the end\r\n")


@pytest.fixture
def dns_server():
    with DNSServer() as server:
        yield server


def sender_system(mailsystem, dns_server, **main):
    system = mailsystem(main={"myhostname": "sender.test", "mydomain": "sender.test",
                              "dns_resolver": f"127.0.0.1:{dns_server.port}", **main})
    system.add_smtp_service()
    system.start()
    return system


def receiver_system(mailsystem, host: str = "127.0.0.1", port: int | None = None, tls: bool = True):
    system = mailsystem()
    system.add_service("smtpd", name="smtpd", host=host, port=port)
    system.add_unix_service("qmgr", wakeup=60)
    system.write_config()
    if tls:
        system.mailctl("tls", "selfsigned")
    system.mailctl("user", "add", "bob", "--password", "bob-pw")
    system.start()
    return system


def queue_message(system, message: bytes = MESSAGE) -> dict:
    """Put a queue file into the sender's active/ (as qmgr would have it) and return the
    request's message fields."""
    active = system.var / "queue" / "active"
    active.mkdir(parents=True, exist_ok=True)
    queue_id = new_queue_id()
    prefix = b'{"a queue file": "with its envelope in front"}\n'
    (active / queue_id).write_bytes(prefix + message)
    return {"queue_id": queue_id, "offset": len(prefix), "size": len(message)}


def ask(system, *requests: dict, timeout: float = 60) -> dict:
    path = str(system.var / "run" / "smtp.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        stream = sock.makefile("rb")
        return {reply["id"]: reply for reply in (json.loads(stream.readline()) for _ in requests)}


def request(fields: dict, nexthop: str, *recipients: str, request_id: int = 1) -> dict:
    return {"id": request_id, **fields, "sender": "alice@sender.test", "ret": None, "envid": None, "body": None,
            "smtputf8": False, "nexthop": nexthop,
            "recipients": [{"address": r, "notify": None, "orcpt": None} for r in recipients]}


def assert_arrived_identical(stored: bytes) -> None:
    """The receiver's own header lines (Return-Path, Delivered-To, Received), then the message."""
    assert stored.endswith(MESSAGE)
    added = stored[: len(stored) - len(MESSAGE)].split(b"\r\n")[:-1]
    assert all(line.startswith((b"Return-Path: ", b"Delivered-To: ", b"Received: ", b" ", b"\t")) for line in added)
    assert sum(line.startswith(b"Received: ") for line in added) == 1


def test_delivery_to_a_bracketed_nexthop_arrives_byte_identical(mailsystem, dns_server, inboxes):
    receiver = receiver_system(mailsystem)
    sender = sender_system(mailsystem, dns_server)
    fields = queue_message(sender)
    nexthop = f"[127.0.0.1]:{receiver.port('smtpd')}"
    reply = ask(sender, request(fields, nexthop, "bob@example.test", "nobody@example.test"))[1]
    sent, refused = reply["results"]
    assert (sent["outcome"], sent["code"]) == ("sent", 250) and sent["relay"] == f"127.0.0.1[127.0.0.1]:" \
        f"{receiver.port('smtpd')}"
    assert (refused["outcome"], refused["status"], refused["code"]) == ("bounced", "5.1.1", 550)
    assert "(in reply to RCPT TO command)" in refused["text"]
    inbox = inboxes(receiver)
    messages = inbox.wait("bob", 1)
    assert len(messages) == 1
    assert_arrived_identical(messages[0])
    assert "TLS" in sender.wait_for_log("smtp", "TLS")


def test_delivery_by_mx_lookup_to_port_25(mailsystem, dns_server, inboxes):
    address = f"127.0.0.{random.randint(2, 250)}"
    receiver = receiver_system(mailsystem, host=address, port=25, tls=False)
    dns_server.add("example.test", mx=[(10, "mx.example.test")])
    dns_server.add("mx.example.test", a=address)
    dns_server.add("nomail.test", mx=[(0, ".")])
    sender = sender_system(mailsystem, dns_server)
    fields = queue_message(sender)
    replies = ask(sender, request(fields, "example.test", "bob@example.test"),
                  request(fields, "nomail.test", "x@nomail.test", request_id=2))
    assert replies[1]["results"][0]["outcome"] == "sent"
    assert replies[1]["results"][0]["relay"] == f"mx.example.test[{address}]:25"
    assert replies[2]["results"][0]["status"] == "5.1.10" and replies[2]["results"][0]["outcome"] == "bounced"
    assert ("example.test", "MX") in dns_server.queries
    inbox = inboxes(receiver)
    messages = inbox.wait("bob", 1)
    assert len(messages) == 1
    assert_arrived_identical(messages[0])
    assert os.path.exists(sender.var / "queue" / "active" / fields["queue_id"])   # qmgr's to remove

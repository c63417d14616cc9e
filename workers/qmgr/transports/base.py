"""What every transport speaks: the delivery it is handed, the outcome it returns, its shape.

Delivery(queue_id, target, sender, recipient, original, message, envelope, rcpt): one target
of one queue file; recipient is the final address (Delivered-To:, the log's to=), original
the envelope recipient it came from, message the queue file's message
(workers.qmgr.message.MessageFile), envelope the queue file's Envelope and rcpt the envelope
Recipient (their DSN parameters, for the remote transport).
Outcome(ok, permanent, status, detail, unavailable, relay): ok, or a failure that is permanent
(a bounce) or temporary (a retry); unavailable: nothing can deliver it yet (remote mail
without an smtp service): it waits, without delay warnings and without expiring; relay: the
log's relay= when the transport knows better than its own name (the remote host).
Transport: one way of delivering, as a Postfix master.cf transport:
    name                        its queue in the scheduler
    relay                       the log's relay= ("local": delivered here, and the target
                                is checked against the message's Delivered-To: lines, as
                                local(8) does)
    kind                        the resolver's target class it delivers
    idempotent                  True when delivering the same target of the same queue file
                                again changes nothing (the mailbox store keeps delivery ids):
                                its targets need no done mark before the file is removed.
    key(target)                 its done mark in the queue file's state log ("t:...")
    destination(target)         what the per-destination concurrency limit counts
    address(target, original)   the final recipient address
    describe(target)            the log's text (and the done mark's detail) once delivered
    await deliver(delivery)     -> Outcome; a failure of the target is an Outcome, only a
                                bug or a failing queue raises
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from store.queue import Envelope, Recipient
from workers.qmgr.message import MessageFile


@dataclass(frozen=True)
class Outcome:
    ok: bool
    permanent: bool = False
    status: str = "2.0.0"
    detail: str = ""
    unavailable: bool = False
    relay: str = ""


@dataclass(frozen=True)
class Delivery:
    queue_id: str
    target: object
    sender: str
    recipient: str
    original: str
    message: MessageFile
    envelope: Envelope | None = None
    rcpt: Recipient | None = None


class Transport(Protocol):
    name: str
    relay: str
    kind: type
    idempotent: bool

    def key(self, target) -> str: ...
    def destination(self, target) -> str: ...
    def address(self, target, original: str) -> str: ...
    def describe(self, target) -> str: ...
    async def deliver(self, delivery: Delivery) -> Outcome: ...

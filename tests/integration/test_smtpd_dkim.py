"""DKIM signing through the real master: keys made by `mailctl dkim keygen`, real messages
of the shared corpus submitted over SMTP and delivered by qmgr into a local mailbox.

An authenticated user's message (from outside mynetworks) and a mynetworks client's
message arrive with a DKIM-Signature that dkimpy verifies against the records keygen
printed; the same kind of message from a client outside mynetworks that did not log in
(inbound mail for a local user) arrives unsigned.
"""
from __future__ import annotations

import email

import dkim
import pytest

from tests.conftest import SHARED_CORPUS
from tests.integration.delivery_support import delivery_system, inboxes, smtpd_port  # noqa: F401
from tests.integration.smtpd_support import client
from tests.unit.master.ctl.test_dkim_ctl import parse_zone_line

pytestmark = pytest.mark.integration

INSIDE, OUTSIDE = "127.0.0.1", "127.0.0.3"
BASIC = SHARED_CORPUS / "messages/mikel-mail/basic_email_lf.eml"      # From: test@lindsaar.net
GMAIL = SHARED_CORPUS / "messages/mimekit/dkim-gmail.eml"             # From: ...@gmail.com, signed by gmail


def test_authenticated_and_mynetworks_mail_is_signed_inbound_mail_is_not(mailsystem, inboxes):
    system = delivery_system(mailsystem, main={"mynetworks": f"{INSIDE}/32"}, smtpd=True, users={"bob": ()})
    records = {}
    for domain, kind in (("lindsaar.net", "rsa"), ("gmail.com", "ed25519")):
        printed = system.mailctl("dkim", "keygen", domain, "--type", kind).stdout.splitlines()[-1]
        name, strings = parse_zone_line(printed)
        records[name.encode()] = "".join(strings).encode()
    system.start()
    port = smtpd_port(system)

    with client(port, source=OUTSIDE) as smtp:          # a user submitting (AUTH in clear: loopback)
        smtp.login("bob", "bob-pw")
        smtp.sendmail("authenticated@lindsaar.net", ["bob@example.test"], BASIC.read_bytes())
    with client(port, source=INSIDE) as smtp:           # a mynetworks host relaying
        smtp.sendmail("mynetworks@gmail.com", ["bob@example.test"], GMAIL.read_bytes())
    with client(port, source=OUTSIDE) as smtp:          # the world sending to a local user
        smtp.sendmail("inbound@lindsaar.net", ["bob@example.test"], BASIC.read_bytes())

    delivered = inboxes(system).wait("bob", 3)
    assert len(delivered) == 3
    by_sender = {email.message_from_bytes(raw)["Return-Path"]: raw for raw in delivered}

    def verify(raw: bytes) -> bool:
        return dkim.verify(raw, dnsfunc=lambda name, timeout=5: records.get(name))

    signed = by_sender["<authenticated@lindsaar.net>"]
    assert signed.count(b"DKIM-Signature:") == 1 and b"d=lindsaar.net;" in signed and verify(signed)
    signed = by_sender["<mynetworks@gmail.com>"]
    top = signed.index(b"DKIM-Signature:")
    assert signed.count(b"DKIM-Signature:") == 2 and b"a=ed25519-sha256" in signed[top:top + 200]
    assert verify(signed)                               # the top signature: ours
    assert top < signed.index(b"\r\nReceived: ")        # above smtpd's Received:
    assert b"DKIM-Signature:" not in by_sender["<inbound@lindsaar.net>"]
    system.wait_for_log("smtp", "DKIM-Signature d=lindsaar.net s=mail a=rsa-sha256")

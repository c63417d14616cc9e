"""Mailbox names between the wire and the store.

mailbox_name(session, token) -> str   an astring argument as the store's name: modified
    UTF-7 decoded (RFC 3501 5.1.3) unless UTF8=ACCEPT or IMAP4rev2 is enabled (then UTF-8),
    INBOX in any case folded to INBOX; Bad for a name the store cannot hold (empty part,
    control characters, too deep) or invalid modified UTF-7.
wire_name(session, name) -> bytes     the store's name as a quoted string or literal for a
    response, encoded the same way back.
DELIMITER is the hierarchy delimiter of every namespace: "/".
"""
from __future__ import annotations

from store.layout import SEPARATOR, BadMailboxName, normalise_mailbox
from workers.imapd.mime import imap_string
from workers.imapd.parser import Bad, astring, mutf7_decode, mutf7_encode

DELIMITER = SEPARATOR


def utf8_names(session) -> bool:
    return bool(session.enabled & {"UTF8=ACCEPT", "IMAP4REV2"})


def mailbox_name(session, token) -> str:
    text = astring(token)
    if not utf8_names(session):
        text = mutf7_decode(text)
    try:
        return normalise_mailbox(text)
    except BadMailboxName as e:
        raise Bad(f"Invalid mailbox name: {e}", status="NO", code="CANNOT") from None


def wire_name(session, name: str) -> bytes:
    return imap_string(name if utf8_names(session) else mutf7_encode(name))

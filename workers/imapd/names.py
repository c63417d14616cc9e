"""Mailbox names between the wire and the store, and the namespaces (RFC 2342).

Namespaces: the personal one, prefix "" (the user's own mailboxes), and for users named in
imap_admins the "Other Users" one, prefix "user/": `user/NAME` is user NAME's INBOX and
`user/NAME/rest` NAME's mailbox `rest`. Names under `user` are reserved for it: for anyone
else (and where another user's mailbox cannot be used) they do not exist.
mailbox_name(session, token) -> str   an astring argument as the name of one of the user's
    own mailboxes: modified UTF-7 decoded (RFC 3501 5.1.3) unless UTF8=ACCEPT or IMAP4rev2
    is enabled (then UTF-8), INBOX in any case folded to INBOX. Bad(status="NO"): code
    CANNOT for a name the store cannot hold (empty part, control characters, too deep) or
    that is not valid modified UTF-7 (a mailbox that cannot exist, not a syntax error, as
    Dovecot); NONEXISTENT for a name under `user`.
mailbox_ref(session, token) -> (owner, name)   the same, but an admin's `user/NAME/...`
    names user NAME's mailbox (SELECT, EXAMINE, STATUS).
other_name(owner, name) -> str        the name an admin sees for another user's mailbox.
is_admin(session) -> bool             the user is in imap_admins.
name_text(token) -> str               the argument as sent (NIL is the name "NIL").
wire_name(session, name) -> bytes     a name as a quoted string or literal for a response,
    encoded the same way back.
DELIMITER is the hierarchy delimiter of every namespace: "/"; OTHER_USERS the prefix "user".
"""
from __future__ import annotations

from store.layout import INBOX, SEPARATOR, BadMailboxName, normalise_mailbox
from workers.imapd.mime import imap_string
from workers.imapd.parser import NIL, Bad, astring, mutf7_decode, mutf7_encode

DELIMITER = SEPARATOR
OTHER_USERS = "user"


def utf8_names(session) -> bool:
    return bool(session.enabled & {"UTF8=ACCEPT", "IMAP4REV2"})


def is_admin(session) -> bool:
    return session.user in {name.lower() for name in session.backend.params.imap_admins}


def reserved(name: str) -> bool:
    """The name belongs to the Other Users namespace, not to the user's own mailboxes."""
    return name == OTHER_USERS or name.startswith(OTHER_USERS + DELIMITER)


def _normalised(text: str) -> str:
    try:
        return normalise_mailbox(text)
    except BadMailboxName as e:
        raise Bad(f"Invalid mailbox name: {e}", status="NO", code="CANNOT") from None


def name_text(token) -> str:
    """A mailbox name or LIST pattern argument as sent: an astring, where NIL is the atom "NIL"."""
    return "NIL" if token is NIL else astring(token)


def _text(session, token) -> str:
    text = name_text(token)
    if utf8_names(session):
        return text
    try:
        return mutf7_decode(text)
    except Bad as e:
        raise Bad(f"Invalid mailbox name: {e.text}", status="NO", code="CANNOT") from None


def _own(text: str) -> str:
    name = _normalised(text)
    if reserved(name):
        raise Bad("Mailbox does not exist", status="NO", code="NONEXISTENT")
    return name


def mailbox_name(session, token) -> str:
    return _own(_text(session, token))


def mailbox_ref(session, token) -> tuple[str, str]:
    text = _text(session, token)
    if is_admin(session) and text.startswith(OTHER_USERS + DELIMITER):
        owner, _, rest = text[len(OTHER_USERS) + 1:].partition(DELIMITER)
        if owner:
            return owner, _normalised(rest or INBOX)
    return session.user, _own(text)


def other_name(owner: str, name: str) -> str:
    return f"{OTHER_USERS}{DELIMITER}{owner}" + ("" if name == INBOX else DELIMITER + name)


def wire_name(session, name: str) -> bytes:
    return imap_string(name if utf8_names(session) else mutf7_encode(name))

"""Mailbox names between the wire and the store, and the namespaces (RFC 2342).

Namespaces: the personal one, prefix "" (the user's own mailboxes); "Other Users", prefix
"user/": `user/NAME` is user NAME's INBOX and `user/NAME/rest` NAME's mailbox `rest`; and
"Shared", prefix "shared/": `shared/rest` is the mailbox `rest` of the store's pseudo-user
SHARED_OWNER ("_shared", which no user name can be: store/users.py NAME). Names under `user`
and `shared` are reserved for them; who may use a mailbox there is workers/imapd/acl.py's
question (a user's own `user/SELF/...` is not theirs to use that way unless an admin).
mailbox_name(session, token) -> str   an astring argument as the name of one of the user's
    own mailboxes: modified UTF-7 decoded (RFC 3501 5.1.3) unless UTF8=ACCEPT or IMAP4rev2
    is enabled (then UTF-8), INBOX in any case folded to INBOX. Bad(status="NO"): code
    CANNOT for a name the store cannot hold (empty part, control characters, too deep) or
    that is not valid modified UTF-7 (a mailbox that cannot exist, not a syntax error, as
    Dovecot); NONEXISTENT for a name under `user`.
mailbox_ref(session, token) -> (owner, name)   the same, but `user/NAME/...` names user
    NAME's mailbox and `shared/...` SHARED_OWNER's (rights are checked by the caller).
other_name(owner, name) -> str        the name others see for a user's mailbox.
shown_name(session, owner, name) -> str   the name the session sees for owner's mailbox.
is_admin(session) -> bool             the user is in imap_admins.
name_text(token) -> str               the argument as sent (NIL is the name "NIL").
wire_name(session, name) -> bytes     a name as a quoted string or literal for a response,
    encoded the same way back.
DELIMITER is the hierarchy delimiter of every namespace: "/"; OTHER_USERS the prefix "user",
SHARED the prefix "shared".
"""
from __future__ import annotations

from store.layout import INBOX, SEPARATOR, BadMailboxName, normalise_mailbox
from workers.imapd.mime import imap_string
from workers.imapd.parser import NIL, Bad, astring, mutf7_decode, mutf7_encode

DELIMITER = SEPARATOR
OTHER_USERS = "user"
SHARED = "shared"
SHARED_OWNER = "_shared"       # the store user holding the Shared namespace's mailboxes


def utf8_names(session) -> bool:
    return bool(session.enabled & {"UTF8=ACCEPT", "IMAP4REV2"})


def is_admin(session) -> bool:
    return session.user in {name.lower() for name in session.backend.params.imap_admins}


def reserved(name: str) -> bool:
    """The name belongs to the Other Users or Shared namespace, not to the user's own mailboxes."""
    return name.partition(DELIMITER)[0] in (OTHER_USERS, SHARED)


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
    head, _, rest = text.partition(DELIMITER)
    if head == OTHER_USERS:
        owner, _, rest = rest.partition(DELIMITER)
        owner = owner.lower()
        if owner and owner != SHARED_OWNER and (owner != session.user or is_admin(session)):
            return owner, _normalised(rest or INBOX)
    elif head == SHARED and rest:
        return SHARED_OWNER, _normalised(rest)
    return session.user, _own(text)


def other_name(owner: str, name: str) -> str:
    return f"{OTHER_USERS}{DELIMITER}{owner}" + ("" if name == INBOX else DELIMITER + name)


def shown_name(session, owner: str, name: str) -> str:
    if owner == session.user:
        return name
    if owner == SHARED_OWNER:
        return SHARED + DELIMITER + name
    return other_name(owner, name)


def wire_name(session, name: str) -> bytes:
    return imap_string(name if utf8_names(session) else mutf7_encode(name))

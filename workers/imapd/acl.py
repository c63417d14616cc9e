"""Access control (ACL, RFC 4314): who may do what to a mailbox, and the ACL commands.

Rights are RFC 4314's letters ALL = "lrswipkxtea": l listed, r SELECT/FETCH/SEARCH/STATUS
and COPY from, s keep \\Seen, w other flags, i APPEND/COPY into, p (accepted, unused), k
CREATE below, x DELETE, t \\Deleted, e EXPUNGE, a administer (the ACL commands). A
mailbox's ACL (identifier -> rights, identifiers a user name or `anyone`) lives in the
store (MailStore.acl / set_acl: the index and the .mailbox file). Whose rights:
    rights(session, owner, name) -> str   the owner has ALL on their own mailboxes, an
        imap_admins user ALL in the Shared namespace (workers/imapd/names.py) and at least
        "lr" on every user's (read access as before ACLs); anyone else the union of the
        entries for their name and for `anyone`.
    require(session, owner, name, needed) -> rights   Bad NO [NONEXISTENT] when the
        mailbox does not exist or the user may neither list nor read it, NO [NOPERM]
        (RFC 5530) when a needed right is missing.
    require_create(session, owner, name)   CREATE: k on the nearest existing parent
        (`user/NAME`, the INBOX, tops NAME's tree); admins create anywhere in Shared,
        owners in their own.
    create_inheriting(mail, owner, name, special_use)   such a CREATE (store thread): the
        new mailbox gets its parent's ACL.
    read_write(rights) -> bool             SELECT is read-write (one of s, t, w, e).
    may_read(session, info) -> bool        r on that mailbox (LIST-STATUS).
    flag_rights(mode, flags) -> str        the rights a STORE needs (s, t, w; all for "=").
    visible_others(session) -> [(listed name, MailboxInfo)]   for LIST: the other users'
        and Shared mailboxes the user has l on (an admin: all of them).
Commands (CAPABILITIES "ACL", "RIGHTS=texk"): SETACL (replace, `+` add, `-` remove; the
obsolete c and d are read as k and xte), DELETEACL, GETACL, LISTRIGHTS (all need a),
MYRIGHTS (any right).
The owner's own entry cannot be changed (NO [CANNOT]), nor can negative identifiers be set.
Store writes run in the store thread. Diagnostics: a store failure while changing an ACL
is logged to imap.log and answered NO [UNAVAILABLE].
"""
from __future__ import annotations

import re

from store.fsio import StorageError
from store.index import NoSuchMailbox
from store.layout import INBOX, SEPARATOR
from store.users import NAME
from workers.imapd.names import (
    SHARED_OWNER,
    is_admin,
    mailbox_ref,
    shown_name,
    wire_name,
)
from workers.imapd.parser import Bad, astring

CAPABILITIES = ("ACL", "RIGHTS=texk")

ALL = "lrswipkxtea"
ANYONE = "anyone"
ADMIN_READ = "lr"          # what an admin may do in any user's mailbox
OBSOLETE = {"c": "k", "d": "xte"}
_RIGHTS = re.compile(r"[lrswipkxteacd]*")


def ordered(letters) -> str:
    """Rights as a string in ALL's order, each once."""
    return "".join(r for r in ALL if r in letters)


def _identity_rights(session, owner: str) -> str | None:
    """The rights that do not depend on the ACL, or None when the ACL decides."""
    if owner == session.user or (owner == SHARED_OWNER and is_admin(session)):
        return ALL
    return None


def rights(session, owner: str, name: str) -> str:
    """The session's rights on owner's mailbox; NoSuchMailbox when it does not exist."""
    acl = session.backend.mail.acl(owner, name)
    fixed = _identity_rights(session, owner)
    if fixed is not None:
        return fixed
    granted = acl.get(session.user, "") + acl.get(ANYONE, "")
    if is_admin(session):
        granted += ADMIN_READ
    return ordered(granted)


def may_read(session, info) -> bool:
    """r on the mailbox info describes (False when it went away meanwhile)."""
    try:
        return "r" in rights(session, info.user, info.name)
    except NoSuchMailbox:
        return False


def _refuse(have: str) -> Bad:
    if "l" not in have and "r" not in have:
        return Bad("Mailbox does not exist", status="NO", code="NONEXISTENT")
    return Bad("Permission denied", status="NO", code="NOPERM")


def require(session, owner: str, name: str, needed: str) -> str:
    try:
        have = rights(session, owner, name)
    except NoSuchMailbox:
        raise Bad("Mailbox does not exist", status="NO", code="NONEXISTENT") from None
    if any(r not in have for r in needed):
        raise _refuse(have)
    return have


def require_create(session, owner: str, name: str) -> None:
    if _identity_rights(session, owner) is not None:
        return
    parts = name.split(SEPARATOR)
    parents = [SEPARATOR.join(parts[:depth]) for depth in range(len(parts) - 1, 0, -1)]
    if owner != SHARED_OWNER:
        parents.append(INBOX)             # `user/NAME`, NAME's INBOX, tops NAME's tree
    mail = session.backend.mail
    parent = next((p for p in parents if mail.mailbox(owner, p) is not None), parents[-1] if parents else None)
    if parent is None:
        raise Bad("Permission denied", status="NO", code="NOPERM")
    require(session, owner, parent, "k")


def create_inheriting(mail, owner: str, name: str, special_use: str) -> None:
    """CREATE in another user's or the Shared namespace: the new mailbox gets its parent's
    ACL, so whoever could use the parent can use the child (store thread)."""
    mail.create_mailbox(owner, name, special_use)
    parent = name.rpartition(SEPARATOR)[0]
    inherited = mail.acl(owner, parent) if parent and mail.mailbox(owner, parent) is not None else {}
    for identifier, letters in inherited.items():
        mail.set_acl(owner, name, identifier, letters)


def read_write(have: str) -> bool:
    """SELECT opens the mailbox read-write when some change is allowed (RFC 4314 4)."""
    return any(r in have for r in "stwe")


def _right_of(flag: str) -> str:
    """The right that sets or clears flag: s for \\Seen, t for \\Deleted, w for the others."""
    return "s" if flag == "\\Seen" else "t" if flag == "\\Deleted" else "w"


def flag_rights(mode: str, flags) -> str:
    if mode == "=":
        return "stw"
    return ordered({_right_of(f) for f in flags})


def settable(have: str, flags) -> tuple[str, ...]:
    """Of the flags APPEND or COPY/MOVE would give a message, those rights `have` let the
    user set in the target (RFC 4314 4); the others are dropped without a word."""
    return tuple(f for f in flags if _right_of(f) in have)


def visible_others(session) -> list:
    """(listed name, MailboxInfo) of the mailboxes of other owners the user may list."""
    mail = session.backend.mail
    if is_admin(session):
        boxes = [info for owner in mail.users() if owner != session.user for info in mail.list_mailboxes(owner)]
    else:
        boxes = [info for info in mail.shared_with((session.user, ANYONE)) if info.user != session.user]
    out = []
    for info in boxes:
        try:
            if "l" in rights(session, info.user, info.name):
                out.append((shown_name(session, info.user, info.name), info))
        except NoSuchMailbox:
            continue                  # deleted meanwhile
    return out


# ---------------------------------------------------------------- commands

def _identifier(token) -> str:
    text = astring(token)
    if text.startswith("-"):
        raise Bad("Negative rights are not supported", status="NO", code="CANNOT")
    identifier = text.lower()
    if identifier != ANYONE and not NAME.fullmatch(identifier):
        raise Bad(f"Invalid identifier {text}", status="NO", code="CANNOT")
    return identifier


def _letters(text: str) -> str:
    if not _RIGHTS.fullmatch(text):
        raise Bad(f"Unknown rights in {text}")
    return ordered("".join(OBSOLETE.get(c, c) for c in text))


def _mailbox(session, token, needed: str):
    owner, name = mailbox_ref(session, token)
    have = require(session, owner, name, needed)
    return owner, name, have


def _apply(mail, owner: str, name: str, identifier: str, mode: str, letters: str) -> None:
    """Change identifier's entry (store thread): mode "=" sets, "+" adds, "-" removes letters."""
    current = mail.acl(owner, name).get(identifier, "")
    if mode == "+":
        letters = ordered(current + letters)
    elif mode == "-":
        letters = ordered(r for r in current if r not in letters)
    mail.set_acl(owner, name, identifier, letters)


async def _change(session, mailbox_token, identifier: str, mode: str, letters: str) -> None:
    owner, name, _ = _mailbox(session, mailbox_token, "a")
    if identifier == owner:
        raise Bad("The owner's rights cannot be changed", status="NO", code="CANNOT")
    try:
        await session.backend.run(_apply, session.backend.mail, owner, name, identifier, mode, letters)
    except NoSuchMailbox:
        raise Bad("Mailbox does not exist", status="NO", code="NONEXISTENT") from None
    except (StorageError, OSError) as e:
        session.log.error(f"acl change failed: user={session.user} command={session.command.name}: {e}")
        raise Bad("The ACL cannot be changed now, try again later", status="NO", code="UNAVAILABLE") from None


async def setacl(session, command) -> None:
    if len(command.args) != 3:
        raise Bad("SETACL takes a mailbox name, an identifier and rights")
    identifier = _identifier(command.args[1])
    text = astring(command.args[2])
    mode = text[:1] if text[:1] in ("+", "-") else "="
    await _change(session, command.args[0], identifier, mode, _letters(text if mode == "=" else text[1:]))
    await session.ok("SETACL completed")


async def deleteacl(session, command) -> None:
    if len(command.args) != 2:
        raise Bad("DELETEACL takes a mailbox name and an identifier")
    await _change(session, command.args[0], _identifier(command.args[1]), "=", "")
    await session.ok("DELETEACL completed")


def _response(session, verb: str, owner: str, name: str, *words: str) -> bytes:
    return (verb.encode() + b" " + wire_name(session, shown_name(session, owner, name))
            + b"".join(b" " + wire_name(session, w) for w in words))


async def getacl(session, command) -> None:
    if len(command.args) != 1:
        raise Bad("GETACL takes a mailbox name")
    owner, name, _ = _mailbox(session, command.args[0], "a")
    entries = session.backend.mail.acl(owner, name)
    if owner != SHARED_OWNER:
        entries = {owner: ALL, **entries}
    words = [w for identifier, letters in entries.items() for w in (identifier, letters)]
    await session.untagged(_response(session, "ACL", owner, name, *words))
    await session.ok("GETACL completed")


async def listrights(session, command) -> None:
    if len(command.args) != 2:
        raise Bad("LISTRIGHTS takes a mailbox name and an identifier")
    identifier = _identifier(command.args[1])
    owner, name, _ = _mailbox(session, command.args[0], "a")
    if identifier == owner:
        words = [ALL]                       # the owner has them all, always
    else:
        words = ["", *ALL]                  # nothing required; each right on its own
    await session.untagged(_response(session, "LISTRIGHTS", owner, name, identifier, *words))
    await session.ok("LISTRIGHTS completed")


async def myrights(session, command) -> None:
    if len(command.args) != 1:
        raise Bad("MYRIGHTS takes a mailbox name")
    owner, name, have = _mailbox(session, command.args[0], "")
    if not have:
        raise _refuse(have)
    await session.untagged(_response(session, "MYRIGHTS", owner, name, have))
    await session.ok("MYRIGHTS completed")

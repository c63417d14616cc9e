"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA, SETQUOTA with the STORAGE resource.

Every user has one quota root: "" (their own mail, all mailboxes). Its STORAGE resource is
in KiB: usage = the store's usage of the user, limit = the user's quota (store/directory.py:
their own, else default_quota); a user without a quota has the root with no resources,
`* QUOTA "" ()`. Users named in imap_admins may also name another user's root by the
user's name, and SETQUOTA a root: `(STORAGE n)` sets the user's quota to n KiB, `()` removes
it (unlimited); SETQUOTA by anyone else is NO [NOPERM]. Unknown roots are NO [NONEXISTENT],
other resources NO [CANNOT].
Diagnostics: a user database that cannot be written is logged to imap.log and answered
NO [UNAVAILABLE]; quota changes are logged.
"""
from __future__ import annotations

import dataclasses

from store.fsio import StorageError
from store.users import UserError
from workers.imapd.mime import imap_string
from workers.imapd.names import is_admin, mailbox_name, wire_name
from workers.imapd.parser import Atom, Bad, astring

CAPABILITIES = ("QUOTA", "QUOTA=RES-STORAGE")
OWN_ROOT = ""


def _root_user(session, root: str) -> str:
    """The user whose quota root this is."""
    if root == OWN_ROOT:
        return session.user
    if is_admin(session):
        record = session.backend.store.users.get(root)
        if record is not None:
            return record.name
    raise Bad("No such quota root", status="NO", code="NONEXISTENT")


async def _send_quota(session, root: str, user: str) -> None:
    limit = session.backend.quota(user)
    resources = f"STORAGE {session.backend.mail.usage(user) // 1024} {limit // 1024}" if limit else ""
    await session.untagged(b"QUOTA " + imap_string(root) + f" ({resources})".encode())


async def getquotaroot(session, command) -> None:
    if len(command.args) != 1:
        raise Bad("GETQUOTAROOT takes a mailbox name")
    name = mailbox_name(session, command.args[0])
    if session.backend.mail.mailbox(session.user, name) is None:
        raise Bad("Mailbox does not exist", status="NO", code="NONEXISTENT")
    await session.untagged(b"QUOTAROOT " + wire_name(session, name) + b" " + imap_string(OWN_ROOT))
    await _send_quota(session, OWN_ROOT, session.user)
    await session.ok("GETQUOTAROOT completed")


async def getquota(session, command) -> None:
    if len(command.args) != 1:
        raise Bad("GETQUOTA takes a quota root")
    root = astring(command.args[0])
    await _send_quota(session, root, _root_user(session, root))
    await session.ok("GETQUOTA completed")


def _storage_limit(token) -> int:
    """SETQUOTA's resource list -> the limit in bytes (0: none)."""
    if not isinstance(token, list) or len(token) % 2 or not all(isinstance(t, Atom) for t in token):
        raise Bad("SETQUOTA takes a quota root and a list of resource limits")
    limit = 0
    for resource, value in zip(token[::2], token[1::2]):
        if not value.isdigit() or len(value) > 15:
            raise Bad("Invalid resource limit")
        if resource.upper() != "STORAGE":
            raise Bad(f"Resource {resource} is not supported", status="NO", code="CANNOT")
        limit = int(value) * 1024
    return limit


def _set_quota(users, name: str, limit: int) -> None:
    users.update(dataclasses.replace(users.get(name), quota=limit))


async def setquota(session, command) -> None:
    if len(command.args) != 2:
        raise Bad("SETQUOTA takes a quota root and a list of resource limits")
    root = astring(command.args[0])
    limit = _storage_limit(command.args[1])
    if not is_admin(session):
        raise Bad("Only administrators may set quotas", status="NO", code="NOPERM")
    user = _root_user(session, root)
    try:
        await session.backend.run(_set_quota, session.backend.store.users, user, limit)
    except (StorageError, UserError, OSError) as e:
        session.log.error(f"setquota failed: user={session.user} root={user}: {e}")
        raise Bad("The quota cannot be changed now, try again later", status="NO", code="UNAVAILABLE") from None
    session.log.info(f"setquota: user={session.user} root={user} storage={limit}")
    await _send_quota(session, root, user)
    await session.ok("SETQUOTA completed")

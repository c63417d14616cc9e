"""Mailbox commands: SELECT/EXAMINE, NAMESPACE, LIST, LSUB, CREATE, DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE, STATUS (RFC 3501 6.3).

SELECT and EXAMINE open a mailbox (workers/imapd/selected.py) and answer FLAGS, EXISTS,
RECENT, UNSEEN, PERMANENTFLAGS, UIDVALIDITY, UIDNEXT and READ-WRITE / READ-ONLY; a failed
SELECT leaves no mailbox selected (RFC 3501 6.3.1).
"""
from __future__ import annotations

from store.index import SEEN, NoSuchMailbox
from workers.imapd.names import mailbox_name
from workers.imapd.parser import Bad
from workers.imapd.selected import Selected

CAPABILITIES = ("NAMESPACE", "CHILDREN", "SPECIAL-USE")


async def select(session, command) -> None:
    if len(command.args) != 1:
        raise Bad(f"{command.name} takes a mailbox name")
    name = mailbox_name(session, command.args[0])
    readonly = command.name == "EXAMINE"
    session.unselect()
    try:
        selected = Selected(session, name, readonly)
    except NoSuchMailbox:
        await session.no("Mailbox does not exist", "NONEXISTENT")
        return
    view = selected.view.view
    await session.untagged(b"FLAGS " + Selected.flag_set(view.keywords))
    permanent = b"()" if readonly else Selected.flag_set(view.keywords)[:-1] + b" \\*)"
    await session.untagged(b"OK [PERMANENTFLAGS " + permanent + b"] Limited" if readonly
                           else b"OK [PERMANENTFLAGS " + permanent + b"] Flags permitted")
    await session.untagged(f"{len(view)} EXISTS")
    await session.untagged("0 RECENT")
    unseen = next((seq for seq in range(1, len(view) + 1) if not view.flag_bits(seq) & SEEN), 0)
    if unseen:
        await session.untagged(f"OK [UNSEEN {unseen}] First unseen")
    info = selected.info
    await session.untagged(f"OK [UIDVALIDITY {info.uidvalidity}] UIDs valid")
    await session.untagged(f"OK [UIDNEXT {info.uidnext}] Predicted next UID")
    session.select(selected)
    await session.ok(f"{command.name} completed", "READ-ONLY" if readonly else "READ-WRITE")


async def _not_yet(session, command) -> None:
    await session.no(f"{command.name} is not available yet", "CANNOT")


namespace = list_ = lsub = create = delete = rename = subscribe = unsubscribe = status = _not_yet

"""Commands that change messages: STORE, EXPUNGE, CLOSE, UNSELECT, COPY, MOVE, APPEND
(RFC 3501 6.3.11, 6.4; UIDPLUS RFC 4315; MOVE RFC 6851; UNSELECT RFC 3691; MULTIAPPEND
RFC 3502; UTF8=ACCEPT's APPEND, RFC 6855 4).

Every write runs in the store thread through store.mailstore.MailStore: STORE, EXPUNGE and
APPEND through backend.writer (workers/imapd/writer.py: group commit with the other
sessions' writes), COPY / MOVE through backend.run:
    STORE / UID STORE      set_flags over the UID ranges of the client's snapshot; each
                           message named is answered `* n FETCH (FLAGS (...))` (with UID for
                           UID STORE) as the index has it now, unless .SILENT; the changes
                           are recorded with selected.own_change, so the mailbox updates
                           do not repeat them. Refused on a read-only mailbox (NO
                           [READ-ONLY]); \\Recent and unknown system flags are BAD.
                           CONDSTORE (RFC 7162): `(UNCHANGEDSINCE n)` leaves alone the
                           messages whose modseq is above n (even when nothing would
                           change) and ends OK [MODIFIED set]; once CONDSTORE is on the
                           FETCHes carry MODSEQ, and .SILENT still tells each changed
                           message's MODSEQ.
    EXPUNGE / UID EXPUNGE  expunge (\\Deleted messages of the snapshot; UID EXPUNGE: of the
                           set too); the EXPUNGE responses are the mailbox updates
                           (selected.send_updates), so own and other sessions' expunges are
                           each reported once, highest sequence number first; once
                           CONDSTORE is on the tagged OK has [HIGHESTMODSEQ n].
    CLOSE                  expunges without responses when read-write; UNSELECT does not.
    COPY / MOVE (+ UID)    copy(..., move=) -> OK [COPYUID uidvalidity source-uids
                           target-uids]; MOVE sends that code untagged before the EXPUNGEs.
                           A missing target is NO [TRYCREATE]; a COPY past the user's quota
                           is NO [OVERQUOTA] (a MOVE adds no usage).
    APPEND                 one or more messages (MULTIAPPEND), each `[(flags)] [date-time]
                           {n}` or, once UTF8=ACCEPT is enabled, `... UTF8 (~{n})`; all
                           checked before any is stored, then stored together (one
                           deliver_many batch with other sessions' appends), all or nothing (when one fails the others stored are expunged
                           again) -> OK [APPENDUID uidvalidity uid-set]; NO [TRYCREATE], NO
                           [OVERQUOTA] (for them together), NO for an empty message (the
                           parser refuses one over message_size_limit with NO [TOOBIG]). A
                           literal8 (`~{n}`, RFC 3516) is stored as given, except that
                           leaf parts holding NUL are re-encoded as base64
                           (base64_nul_parts).
ACL (workers/imapd/acl.py) on a mailbox of another user or the Shared namespace: STORE
needs s for \\Seen, t for \\Deleted, w for the rest; EXPUNGE e (CLOSE skips its expunge
without it); MOVE t and e on the source; COPY, MOVE and APPEND i on the target (across
owners too: the store links the files into the target owner's mailbox, whose quota
counts them); a missing right is NO [NOPERM].
A target mailbox that is the selected one announces its new messages (EXISTS) through the
mailbox updates before the tagged OK.
Diagnostics: a StorageError of the store (disk full, I/O) is logged and answered NO
[UNAVAILABLE]; TooManyKeywords is NO [LIMIT].
"""
from __future__ import annotations

import binascii
import calendar
import re
from dataclasses import replace

from master.proto import is_low
from store.fsio import StorageError
from store.index import TooManyKeywords
from store.mailstore import DeliveryRequest, NoSuchMailbox
from workers.imapd import acl, condstore, general, mime
from workers.imapd.names import mailbox_ref
from workers.imapd.parser import NIL, Atom, Bad, Literal, String

CAPABILITIES = ("UNSELECT", "UIDPLUS", "MOVE", "MULTIAPPEND")

SYSTEM_FLAGS = {name.lower(): name for name in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
STORE_MODES = {"FLAGS": "=", "+FLAGS": "+", "-FLAGS": "-"}
MONTHS = {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_KEYWORD = re.compile(r'[^\x00-\x20\x7f(){%*"\\\]]+')   # atom (RFC 3501 9)
_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:(?:[^\r\n]|\r?\n[ \t])*\r?\n")
_DATE_TIME = re.compile(r"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


# ---------------------------------------------------------------- shared helpers

async def _write(session, pending):
    """Await a store write (the writer's, or backend.run's); a temporary store failure
    becomes NO [UNAVAILABLE]."""
    try:
        return await pending
    except StorageError as e:
        session.log.error(f"store failure: user={session.user} command={session.command.name}: {e}")
        raise Bad("The mail store failed; try again later", status="NO", code="UNAVAILABLE") from None
    except TooManyKeywords:
        raise Bad("Too many keywords in this mailbox", status="NO", code="LIMIT") from None


def _flags(tokens) -> tuple[str, ...]:
    """Flag tokens (already out of their parentheses) -> names, system flags capitalised."""
    names = []
    for token in tokens:
        if not isinstance(token, Atom) and token is not NIL:
            raise Bad("Invalid flag")
        name = "NIL" if token is NIL else str(token)      # the atom NIL is a keyword here
        if name.startswith("\\"):
            if name.lower() not in SYSTEM_FLAGS:
                raise Bad(f"{name} cannot be set")
            name = SYSTEM_FLAGS[name.lower()]
        elif not _KEYWORD.fullmatch(name):
            raise Bad(f"Invalid keyword {name}")
        names.append(name)
    return tuple(names)


def _require_writable(session, needed: str = "") -> None:
    """Selected read-write, and the ACL grants the needed rights (NO [NOPERM] otherwise)."""
    if session.selected.readonly:
        raise Bad("The mailbox is selected read-only", status="NO", code="READ-ONLY")
    if any(r not in session.selected.rights for r in needed):
        raise Bad("Permission denied", status="NO", code="NOPERM")


async def _check_quota(session, owner: str, adding: int) -> None:
    """Room for `adding` more bytes of owner's: the disk guard's flag (NO [UNAVAILABLE]: try
    later) and the owner's quota (NO [OVERQUOTA])."""
    if is_low(session.params):
        raise Bad("Disk space is low on the server, try again later", status="NO", code="UNAVAILABLE")
    limit = session.backend.quota(owner)
    if limit and session.backend.mail.usage(owner) + adding > limit:
        raise Bad("Quota exceeded", status="NO", code="OVERQUOTA")


def _target(session, token) -> tuple[str, str, int, str]:
    """A COPY/MOVE/APPEND target: its owner, name, UIDVALIDITY and the user's rights there;
    NO [TRYCREATE] when missing; another owner's needs the i right (workers/imapd/acl.py)."""
    owner, name = mailbox_ref(session, token)
    info = session.backend.mail.mailbox(owner, name)
    if info is None:
        raise Bad("No such mailbox", status="NO", code="TRYCREATE")
    have = acl.require(session, owner, name, "i")
    return owner, name, info.uidvalidity, have


# ---------------------------------------------------------------- STORE

def _unchanged_since(token) -> int:
    """STORE's modifier list: `(UNCHANGEDSINCE modseq)` (RFC 7162)."""
    if len(token) != 2 or not isinstance(token[0], Atom) or token[0].upper() != "UNCHANGEDSINCE":
        raise Bad("The only STORE modifier is (UNCHANGEDSINCE modseq)")
    return condstore.modseq_value(token[1], "UNCHANGEDSINCE")


async def store(session, command) -> None:
    uid = command.name.startswith("UID ")
    args = list(command.args)
    unchanged_since = _unchanged_since(args.pop(1)) if len(args) > 1 and isinstance(args[1], list) else None
    if len(args) < 3 or not isinstance(args[1], Atom):
        raise Bad(f"{command.name} takes a message set, an item and flags")
    item = str(args[1]).upper()
    silent = item.endswith(".SILENT")
    mode = STORE_MODES.get(item.removesuffix(".SILENT"))
    if mode is None:
        raise Bad(f"Unknown STORE item {args[1]}")
    values = args[2:]
    if len(values) == 1 and isinstance(values[0], list):
        values = values[0]
    flags = _flags(values)
    selected = session.selected
    seqs = selected.resolve(args[0], uid)
    _require_writable(session, acl.flag_rights(mode, flags))
    if unchanged_since is not None:
        await condstore.enable(session)
    snapshot = selected.view.view
    if not seqs:
        await session.ok(f"{command.name} completed, no messages")
        return
    changes = await _write(session, session.backend.writer.set_flags(session, selected.user, selected.name,
                           snapshot.uid_ranges(seqs), mode, flags, unchanged_since))
    session.counts["store"] += len(changes)
    changed = {record.uid: record.modseq for record in changes}
    modified = set(changes.conflicts)
    with_modseq = condstore.enabled(session)
    now = None
    if not silent or unchanged_since is not None:
        now = session.backend.mail.open_mailbox(selected.user, selected.name).view
    if unchanged_since is not None:
        # a STORE that changes nothing still fails on a message modified since (RFC 7162 3.1.3)
        modified.update(u for u in map(snapshot.uid, seqs) if u not in changed and now.seq(u)
                        and now.record(now.seq(u)).modseq > unchanged_since)
    if silent:
        for record_uid, modseq in changed.items():
            selected.own_change(record_uid, modseq)
            if with_modseq and snapshot.seq(record_uid):    # the client's cache needs it even when silent
                prefix = f"UID {record_uid} " if uid else ""
                await session.untagged(f"{snapshot.seq(record_uid)} FETCH ({prefix}MODSEQ ({modseq}))")
    else:
        await selected.announce_flags(session, now.keywords)
        for seq in seqs:
            message_uid = snapshot.uid(seq)
            current = now.seq(message_uid)
            if not current or message_uid in modified:
                continue          # expunged meanwhile: its EXPUNGE comes with the updates
            record = now.record(current)
            selected.own_change(message_uid, record.modseq)
            prefix = f"UID {message_uid} " if uid else ""
            suffix = f" MODSEQ ({record.modseq})" if with_modseq else ""
            await session.untagged(
                f"{seq} FETCH ({prefix}FLAGS ({' '.join(selected.flag_names(current, now))}){suffix})")
    if modified:
        numbers = sorted(modified) if uid else sorted(snapshot.seq(u) for u in modified)
        await session.ok(f"Conditional {command.name} failed for some messages",
                         f"MODIFIED {condstore.number_set(numbers)}")
    else:
        await session.ok(f"{command.name} completed")


# ---------------------------------------------------------------- EXPUNGE, CLOSE, UNSELECT

async def _expunge_snapshot(session, uid_token=None) -> None:
    """Expunge the \\Deleted messages of the client's snapshot (of uid_token's set if given)."""
    selected = session.selected
    snapshot = selected.view.view
    if uid_token is not None:
        ranges = snapshot.uid_ranges(selected.resolve(uid_token, True))
    else:
        ranges = [(1, selected.info.uidnext - 1)]
    if not ranges or ranges[0][1] < 1:
        return
    try:
        removed = await _write(session, session.backend.writer.expunge(session, selected.user, selected.name, ranges))
    except NoSuchMailbox:
        return                # deleted meanwhile: the updates end the session
    session.counts["expunge"] += len(removed)


async def expunge(session, command) -> None:
    uid = command.name == "UID EXPUNGE"
    if len(command.args) != (1 if uid else 0):
        raise Bad("UID EXPUNGE takes a UID set" if uid else "EXPUNGE takes no arguments")
    _require_writable(session, "e")
    await _expunge_snapshot(session, command.args[0] if uid else None)
    if condstore.enabled(session):       # the expunges moved HIGHESTMODSEQ: tell it after them
        await session.send_updates()
        await session.ok(f"{command.name} completed", f"HIGHESTMODSEQ {session.selected.info.highestmodseq}")
    else:
        await session.ok(f"{command.name} completed")


async def close(session, command) -> None:
    if command.args:
        raise Bad("CLOSE takes no arguments")
    if session.selected.may("e"):
        await _expunge_snapshot(session)
    session.unselect()
    await session.ok("CLOSE completed")


async def unselect(session, command) -> None:
    if command.args:
        raise Bad("UNSELECT takes no arguments")
    session.unselect()
    await session.ok("UNSELECT completed")


# ---------------------------------------------------------------- COPY, MOVE

async def copy(session, command) -> None:
    uid = command.name.startswith("UID ")
    move = command.name.endswith("MOVE")
    if len(command.args) != 2:
        raise Bad(f"{command.name} takes a message set and a mailbox name")
    selected = session.selected
    seqs = selected.resolve(command.args[0], uid)
    owner, target, uidvalidity, have = _target(session, command.args[1])
    if move:
        _require_writable(session, "te")
    snapshot = selected.view.view
    if not move or owner != selected.user:
        await _check_quota(session, owner, sum(snapshot.record(seq).size for seq in seqs))
    try:
        pairs = await _write(session, session.backend.run(
            session.backend.mail.copy, selected.user, selected.name, snapshot.uid_ranges(seqs), target, move, owner,
            lambda flags: acl.settable(have, flags)))
    except NoSuchMailbox:
        raise Bad("No such mailbox", status="NO", code="TRYCREATE") from None
    verb = "MOVE" if move else "COPY"
    if not pairs:
        await session.ok(f"{command.name} completed, no messages {verb.lower()}d")
        return
    sources, targets = condstore.number_set(s for s, _ in pairs), condstore.number_set(t for _, t in pairs)
    code = f"COPYUID {uidvalidity} {sources} {targets}"
    if move:
        await session.untagged(f"OK [{code}] Moved")
        await session.ok(f"{command.name} completed")
    else:
        await session.ok(f"{command.name} completed", code)


# ---------------------------------------------------------------- APPEND

def _internal_date(token) -> int:
    """An APPEND date-time ("dd-Mon-yyyy hh:mm:ss +zzzz") -> epoch seconds."""
    match = _DATE_TIME.fullmatch(str(token)) if isinstance(token, String) else None
    month = MONTHS.get(match.group(2).lower()) if match else None
    if month is None:
        raise Bad("Invalid date-time")
    day, _, year, hour, minute, second, sign, zone_hours, zone_minutes = match.groups()
    try:
        local = calendar.timegm((int(year), month, int(day), int(hour), int(minute), int(second)))
        if int(day) > calendar.monthrange(int(year), month)[1] or int(hour) > 23 or int(minute) > 59 \
                or int(second) > 60 or int(zone_minutes) > 59:
            raise ValueError
    except (ValueError, OverflowError):
        raise Bad("Invalid date-time") from None
    offset = (int(zone_hours) * 3600 + int(zone_minutes) * 60) * (1 if sign == "+" else -1)
    return local - offset


def base64_nul_parts(raw: bytes) -> bytes:
    """A literal8 message (RFC 3516 4.2) with each leaf part whose body holds NUL re-encoded
    as base64, so BODY[...] never carries NUL while BINARY[...] gives the octets back."""
    leaves = []
    pending = [mime.Structure.parse(raw).root]
    while pending:
        part = pending.pop()
        pending.extend(part.children)
        if not part.children and b"\0" in raw[part.body:part.end]:
            leaves.append(part)
    for part in sorted(leaves, key=lambda p: p.header, reverse=True):
        body = raw[part.body:part.end]
        encoded = b"".join(binascii.b2a_base64(body[i:i + 57]).replace(b"\n", b"\r\n")
                           for i in range(0, len(body), 57))
        header = _CTE_FIELD.sub(b"", raw[part.header:part.body])
        if not header.strip(b"\r\n"):
            header = b"\r\n"      # a part without header lines: only the blank line
        raw = raw[:part.header] + b"Content-Transfer-Encoding: base64\r\n" + header + encoded + raw[part.end:]
    return raw


def _utf8_literal(session, tokens: list, i: int) -> Literal | None:
    """RFC 6855's `UTF8 (literal8)` at tokens[i], if that is what is there."""
    if not (isinstance(tokens[i], Atom) and tokens[i].upper() == "UTF8"):
        return None
    if not general.utf8_accept(session):
        raise Bad("APPEND UTF8 needs ENABLE UTF8=ACCEPT")
    inner = tokens[i + 1] if i + 1 < len(tokens) else None
    if not isinstance(inner, list) or len(inner) != 1 or not isinstance(inner[0], Literal):
        raise Bad("APPEND UTF8 takes a message literal in parentheses")
    return inner[0]


def _messages(session, tokens: list) -> list[DeliveryRequest]:
    """APPEND's arguments after the mailbox name: one or more `[(flags)] [date-time] message`
    (RFC 3502), as requests with user and mailbox left empty."""
    messages = []
    i = 0
    while i < len(tokens):
        flags: tuple[str, ...] = ()
        if isinstance(tokens[i], list):
            flags = _flags(tokens[i])
            i += 1
        date = None
        if i < len(tokens) and isinstance(tokens[i], String):
            date = _internal_date(tokens[i])
            i += 1
        if i < len(tokens) and isinstance(tokens[i], Literal):
            literal = tokens[i]
            i += 1
        elif i < len(tokens) and (literal := _utf8_literal(session, tokens, i)) is not None:
            i += 2
        else:
            raise Bad("APPEND takes a mailbox name and messages, each with optional flags and date-time"
                      " (CATENATE is not offered)")
        message = bytes(literal)
        if literal.binary and b"\0" in message:
            message = base64_nul_parts(message)
        if not message:
            raise Bad("An empty message cannot be appended", status="NO")
        messages.append(DeliveryRequest("", "", message, None, flags, date))
    return messages


async def append(session, command) -> None:
    args = list(command.args)
    if len(args) < 2:
        raise Bad("APPEND takes a mailbox name, optional flags and date-time, and a message literal")
    owner, target, uidvalidity, have = _target(session, args[0])
    messages = [replace(m, flags=acl.settable(have, m.flags)) for m in _messages(session, args[1:])]
    await _check_quota(session, owner, sum(len(m.source) for m in messages))
    try:
        uids = await _write(session, session.backend.writer.append(session, owner, target, messages))
    except NoSuchMailbox:
        raise Bad("No such mailbox", status="NO", code="TRYCREATE") from None
    session.counts["append"] += len(uids)
    await session.ok("APPEND completed", f"APPENDUID {uidvalidity} {condstore.number_set(uids)}")

"""CONDSTORE and QRESYNC (RFC 7162): what the command handlers share to show modseqs.

The store keeps a modseq per message and a HIGHESTMODSEQ per mailbox (store/_index_*.py),
and every expunge in a history the mailbox keeps for its life (Index.expunged_since), so
VANISHED (EARLIER) is always exact and QRESYNC's sequence match data is checked, not used.
    enabled(session), qresync(session)   whether the session has turned them on (ENABLE, or
        for CONDSTORE any CONDSTORE-enabling command)
    await enable(session)                a CONDSTORE-enabling command (FETCH MODSEQ or
        CHANGEDSINCE, STORE UNCHANGEDSINCE, SEARCH MODSEQ): the first one while a mailbox is
        selected sends `* OK [HIGHESTMODSEQ n]` for it
    modseq_value(token, what) -> int     a mod-sequence argument (BAD otherwise)
    select_parameters(session, tokens) -> SelectParams | None   SELECT/EXAMINE's
        `(CONDSTORE)` / `(QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]]))`;
        BAD for anything else, and for QRESYNC before ENABLE QRESYNC
    await close_selected(session)        a SELECT's implicit close: `* OK [CLOSED]` when a
        mailbox was selected
    await report_selected(session, selected, params)   the end of SELECT's responses:
        `* OK [HIGHESTMODSEQ n]` once CONDSTORE is on; with QRESYNC and the client's
        UIDVALIDITY still valid, `* VANISHED (EARLIER)` of the known UIDs expunged since the
        client's modseq and `* n FETCH (UID FLAGS MODSEQ)` of the known messages changed since
    await send_vanished(session, selected, modseq, uid_ranges)   `* VANISHED (EARLIER) set`
        of the UIDs in uid_ranges expunged after modseq (nothing when none)
    number_set(numbers) -> str           ascending UIDs or sequence numbers as a compact set
Diagnostics: none of its own.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from store.index import parse_sequence_set, ranges_from_values
from workers.imapd.parser import Atom, Bad

CAPABILITIES = ("CONDSTORE", "QRESYNC")

MAX_MODSEQ = 2**63 - 1
SEND_CHUNK = 64 * 1024          # octets of QRESYNC's FETCH responses per send
_NUMBER = re.compile(r"[0-9]{1,19}\Z")


@dataclass
class Resync:
    uidvalidity: int
    modseq: int
    known: str | None            # the known-uids set as sent (None: every UID)


@dataclass
class SelectParams:
    resync: Resync | None        # None for a bare (CONDSTORE)


def enabled(session) -> bool:
    return "CONDSTORE" in session.enabled


def qresync(session) -> bool:
    return "QRESYNC" in session.enabled


async def enable(session) -> None:
    if enabled(session):
        return
    session.enabled.add("CONDSTORE")
    if session.selected is not None:
        await _highestmodseq(session, session.selected)


async def _highestmodseq(session, selected) -> None:
    await session.untagged(f"OK [HIGHESTMODSEQ {selected.info.highestmodseq}] Highest mailbox modseq")


def modseq_value(token, what: str) -> int:
    if not isinstance(token, Atom) or not _NUMBER.match(token) or int(token) > MAX_MODSEQ:
        raise Bad(f"{what} needs a mod-sequence value")
    return int(token)


def number_set(numbers) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges_from_values(numbers))


def _set_text(token, what: str) -> str:
    if not isinstance(token, Atom):
        raise Bad(f"QRESYNC: invalid {what}")
    try:
        parse_sequence_set(str(token), 2**32 - 1)
    except ValueError as e:
        raise Bad(f"QRESYNC: invalid {what}: {e}") from None
    return str(token)


def _resync(token) -> Resync:
    if not isinstance(token, list) or not 2 <= len(token) <= 4:
        raise Bad("QRESYNC takes (uidvalidity modseq [known-uids [(sequences uids)]])")
    validity = token[0]
    if not isinstance(validity, Atom) or not _NUMBER.match(validity) or not 0 < int(validity) < 2**32:
        raise Bad("QRESYNC: invalid UIDVALIDITY")
    known = _set_text(token[2], "known UIDs") if len(token) > 2 else None
    if len(token) == 4:
        match = token[3]
        if not isinstance(match, list) or len(match) != 2:
            raise Bad("QRESYNC: the sequence match data is (sequence-set uid-set)")
        _set_text(match[0], "sequence match set")
        _set_text(match[1], "sequence match UIDs")
    return Resync(int(validity), modseq_value(token[1], "QRESYNC"), known)


def select_parameters(session, tokens) -> SelectParams | None:
    if not tokens:
        return None
    if len(tokens) != 1 or not isinstance(tokens[0], list) or not tokens[0]:
        raise Bad("SELECT parameters are one parenthesised list")
    items = tokens[0]
    params = SelectParams(None)
    i = 0
    while i < len(items):
        word = items[i].upper() if isinstance(items[i], Atom) else ""
        if word == "CONDSTORE":
            i += 1
        elif word == "QRESYNC":
            if not qresync(session):
                raise Bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
            if i + 1 == len(items) or params.resync is not None:
                raise Bad("QRESYNC takes one parameter list")
            params.resync = _resync(items[i + 1])
            i += 2
        else:
            raise Bad("Unknown SELECT parameter")
    return params


async def close_selected(session) -> None:
    if session.selected is not None:
        session.unselect()
        await session.untagged("OK [CLOSED] Previous mailbox closed")


async def report_selected(session, selected, params: SelectParams | None) -> None:
    if params is not None:
        session.enabled.add("CONDSTORE")
    if not enabled(session):
        return
    await _highestmodseq(session, selected)
    resync = params.resync if params is not None else None
    largest = selected.info.uidnext - 1
    if resync is None or resync.uidvalidity != selected.info.uidvalidity or largest < 1:
        return
    known = parse_sequence_set(resync.known, largest) if resync.known else [(1, largest)]
    await send_vanished(session, selected, resync.modseq, known)
    view = selected.view.view
    out = bytearray()
    for seq in view.seqs_in_uid_ranges(known):
        record = view.record(seq)
        if record.modseq > resync.modseq:
            out += b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, record.uid, selected.flags_list(seq),
                                                                    record.modseq)
            if len(out) >= SEND_CHUNK:
                await session.send(bytes(out))
                out.clear()
    if out:
        await session.send(bytes(out))


async def send_vanished(session, selected, modseq: int, uid_ranges) -> None:
    expunged = selected.mail.index.expunged_since(selected.user, selected.name, modseq)
    starts = [lo for lo, _ in uid_ranges]
    gone = []
    for uid in expunged:
        i = bisect.bisect_right(starts, uid) - 1
        if i >= 0 and uid <= uid_ranges[i][1]:
            gone.append(uid)
    if gone:
        await session.untagged("VANISHED (EARLIER) " + number_set(gone))

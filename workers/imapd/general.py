"""Commands of any state that touch no mailbox: NOOP, CHECK, LOGOUT, ID (RFC 2971), ENABLE
(RFC 5161), and which protocol flavour a session asked for.

NOOP and CHECK only let the mailbox updates out (session.ok sends them). ID answers the
server's name and logs what the client says of itself (bounded: 30 fields of 1024 octets,
as RFC 2971 allows). ENABLE turns on what this server has (ENABLABLE) and answers
`* ENABLED` with those newly enabled; unknown names are ignored, as the RFC says. QRESYNC
turns CONDSTORE on too (workers/imapd/condstore.py). IMAP4rev2 (RFC 9051) and UTF8=ACCEPT
(RFC 6855) change what the other modules say, keyed on session.enabled (upper case):
    rev2(session) -> bool         IMAP4rev2 is on: no RECENT responses or \\Recent flag
        (selected.py), no UNSEEN code but a LIST response at SELECT, \\NonExistent in any
        LIST, DELETE's HASCHILDREN (folders.py), ESEARCH for SEARCH (search.py)
    utf8_accept(session) -> bool  UTF8=ACCEPT is on: APPEND's UTF8 (literal8) form
        (messages.py), no CHARSET but UTF-8 in SEARCH/SORT/THREAD (search.py)
Either one makes mailbox names UTF-8 instead of modified UTF-7 (names.py utf8_names).
"""
from __future__ import annotations

from workers.imapd import condstore
from workers.imapd.parser import NIL, Atom, Bad, astring

CAPABILITIES = ("UTF8=ACCEPT",)        # IMAP4rev2 is announced next to IMAP4rev1 (capability.py)
# what ENABLE takes, upper case -> as `* ENABLED` spells it
ENABLABLE: dict[str, str] = {"CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC", "IMAP4REV2": "IMAP4rev2",
                             "UTF8=ACCEPT": "UTF8=ACCEPT"}
ID_MAX_FIELDS = 30
ID_MAX_VALUE = 1024


def rev2(session) -> bool:
    return "IMAP4REV2" in session.enabled


def utf8_accept(session) -> bool:
    return "UTF8=ACCEPT" in session.enabled


async def noop(session, command) -> None:
    if command.args:
        raise Bad("NOOP takes no arguments")
    await session.ok("NOOP completed")


async def check(session, command) -> None:
    if command.args:
        raise Bad("CHECK takes no arguments")
    await session.ok("CHECK completed")


async def logout(session, command) -> None:
    if command.args:
        raise Bad("LOGOUT takes no arguments")
    await session.untagged("BYE Logging out")
    session.enter_logout()
    await session.tagged("OK", "Logout completed")


async def id_(session, command) -> None:
    if len(command.args) != 1:
        raise Bad("ID takes one argument: a list or NIL")
    fields = command.args[0]
    if fields is not NIL:
        if not isinstance(fields, list) or len(fields) % 2 or len(fields) > 2 * ID_MAX_FIELDS:
            raise Bad("ID: invalid field list")
        pairs = []
        for i in range(0, len(fields), 2):
            key = astring(fields[i])
            value = "NIL" if fields[i + 1] is NIL else astring(fields[i + 1])
            if len(key) > 30 or len(value) > ID_MAX_VALUE:
                raise Bad("ID: field too long")
            pairs.append(f"{key}={value!r}")
        session.log.info(f"id: ip={session.conn.peer_ip} " + " ".join(pairs))
    await session.untagged(b'ID ("name" "mailhouse" "vendor" "mailhouse")')
    await session.ok("ID completed")


async def enable(session, command) -> None:
    if not command.args or not all(isinstance(a, Atom) for a in command.args):
        raise Bad("ENABLE needs capability names")
    newly = []
    for name in (str(a).upper() for a in command.args):
        if name in ENABLABLE and name not in session.enabled:
            if name in ("CONDSTORE", "QRESYNC"):      # QRESYNC implies CONDSTORE (RFC 7162 3.2.3)
                await condstore.enable(session)
            session.enabled.add(name)
            newly.append(ENABLABLE[name])
    await session.untagged(" ".join(["ENABLED", *newly]))
    await session.ok("ENABLE completed")

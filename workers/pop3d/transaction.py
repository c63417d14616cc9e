"""The TRANSACTION state's commands (RFC 1939 5, 7) and QUIT (which enters UPDATE).

STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP work on session.maildrop (maildrop.py);
STAT, LIST and UIDL answer from its snapshot and size records, without opening a message.
RETR and TOP stream the message file through workers.pop3d.wire, so a message of any size
goes out in bounded memory with exactly the octets LIST announced: a thread reads and
converts about WRITE_SIZE octets at a time (the file is never read on the event loop), and
each piece is one write, awaited until the client takes it (plain or TLS alike); the +OK
line rides on the first piece and the final "." line on the last, so a message of usual
size is one write.
QUIT in AUTHORIZATION just ends; in TRANSACTION it commits the DELE marks (UPDATE state)
and drops the maildrop lock before it answers, so a client that logs in again right after
the reply (fetchmail's next poll, a test) never meets its own old session's [IN-USE].
A commit that fails (disk full, index error) answers `-ERR [SYS/TEMP]` and keeps every
message; reads never need free space.
Diagnostics: `-ERR No such message` for numbers out of range or marked deleted; pop.log
`logout: ...` with the counts, `update failed: ...` as an error.
"""
from __future__ import annotations

import asyncio
from typing import Iterator

from store.fsio import StorageError
from workers.pop3d.maildrop import Entry
from workers.pop3d.wire import CHUNK, top_chunks, wire_chunks

MAX_NUMBER_DIGITS = 10
WRITE_SIZE = CHUNK           # octets of the message per write (a last block may add up to CHUNK)


def _number(text: str) -> int | None:
    if text.isdigit() and text.isascii() and len(text) <= MAX_NUMBER_DIGITS:
        return int(text)
    return None


async def _entry(session, text: str) -> Entry | None:
    number = _number(text)
    entry = session.maildrop.get(number) if number is not None else None
    if entry is None:
        await session.err("No such message")
    return entry


async def stat(session, args: list[str]) -> None:
    count, octets = session.maildrop.stat()
    await session.ok(f"{count} {octets}")


async def _listing(session, args: list[str], field) -> None:
    """LIST and UIDL: one message with an argument, else a multi-line list."""
    if args:
        entry = await _entry(session, args[0])
        if entry:
            await session.ok(f"{entry.number} {field(entry)}")
        return
    live = session.maildrop.live()
    await session.ok(f"{len(live)} messages")
    await session.send("".join(f"{e.number} {field(e)}\r\n" for e in live).encode() + b".\r\n")


async def list_(session, args: list[str]) -> None:
    await _listing(session, args, lambda e: e.pop_size)


async def uidl(session, args: list[str]) -> None:
    await _listing(session, args, session.maildrop.unique_id)


async def _send_message(session, entry: Entry, body_lines: int | None) -> None:
    try:
        file = session.maildrop.open_message(entry)
    except FileNotFoundError:
        await session.err("[SYS/PERM] The message was removed by another client")
        return
    with file:
        status = f"{entry.pop_size} octets" if body_lines is None else "Top of message follows"
        pending = f"+OK {status}\r\n".encode()
        chunks = wire_chunks(file)
        if body_lines is not None:
            chunks = top_chunks(chunks, body_lines)
        ended = False
        while not ended:
            piece, ended = await asyncio.to_thread(_gather, chunks)
            await session.send(pending + piece + (b".\r\n" if ended else b""))
            pending = b""


def _gather(chunks: Iterator[bytes]) -> tuple[bytes, bool]:
    """The next WRITE_SIZE octets or so of a wire stream, and whether it ended (a thread's work)."""
    parts, size = [], 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= WRITE_SIZE:
            return b"".join(parts), False
    return b"".join(parts), True


async def retr(session, args: list[str]) -> None:
    entry = await _entry(session, args[0])
    if entry:
        await _send_message(session, entry, None)
        session.counts["retr"] += 1


async def top(session, args: list[str]) -> None:
    lines = _number(args[1])
    if lines is None:
        await session.bad_command("Syntax error in TOP: the line count must be a number")
        return
    entry = await _entry(session, args[0])
    if entry:
        await _send_message(session, entry, lines)
        session.counts["top"] += 1


async def dele(session, args: list[str]) -> None:
    entry = await _entry(session, args[0])
    if entry:
        session.maildrop.delete(entry)
        session.counts["dele"] += 1
        await session.ok(f"Message {entry.number} deleted")


async def rset(session, args: list[str]) -> None:
    session.maildrop.reset()
    count, octets = session.maildrop.stat()
    await session.ok(f"Maildrop has {count} messages ({octets} octets)")


async def noop(session, args: list[str]) -> None:
    await session.ok()


async def quit(session, args: list[str]) -> None:
    if session.maildrop is None:  # AUTHORIZATION: nothing to update
        session.closing = True
        await session.ok("Bye")
        return
    session.enter_update()
    c = session.counts
    try:
        removed = session.maildrop.commit()
    except StorageError as e:
        session.maildrop.release()
        session.log.error(f"update failed: user={session.user} ip={session.conn.peer_ip}: {e}; "
                          f"every message kept")
        await session.err("[SYS/TEMP] Deleted messages could not be removed (server storage problem); "
                          "all messages kept")
        return
    session.maildrop.release()      # before the reply: a client may log in again at once
    count, octets = session.maildrop.stat()
    session.log.info(f"logout: user={session.user} ip={session.conn.peer_ip} retr={c['retr']} top={c['top']} "
                     f"dele={c['dele']} deleted={removed} left={count}")
    await session.ok(f"Logging out, {removed} messages deleted, {count} left")

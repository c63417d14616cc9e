"""IDLE (RFC 2177): mailbox updates pushed while the client waits.

idle(session, command): `+ idling`, then the session waits, without polling, for the first of
    - the client's line: `DONE` ends IDLE with the tagged OK; any other line ends it with BAD
    - the mailbox's change signal (store/notify.py; the subscription is kept on the Selected
      until the mailbox is closed, so a change between two IDLEs is not lost): the updates
      (EXISTS, EXPUNGE, FETCH FLAGS) go out at once and the wait goes on
    - the master's graceful stop (conn.draining): `* BYE Server shutting down`
    - imapd_timeout without a line (RFC 9051: at least 30 minutes, which is why clients
      re-IDLE every 29): `* BYE Disconnected for inactivity`, as between commands.
In the AUTHENTICATED state it only waits for the line (or the stop, or the timeout).
After NOTIFY SET the session's notifier is the change source instead (workers/imapd/notify.py):
IDLE then tells what NOTIFY asked for. read_pushing(session, source) is that wait for a line
while pushing updates, which session.serve() also uses between commands after NOTIFY.
A mailbox deleted or renamed meanwhile ends the session (selected.send_updates).
Diagnostics: the session's (imap.log): timeouts, the master's stop.
"""
from __future__ import annotations

import asyncio

from store import notify
from workers._limits import STREAM_LIMIT, LineTooLong
from workers._session import Close
from workers.imapd.parser import Bad

CAPABILITIES = ()   # IDLE is in capability.ALWAYS


async def idle(session, command) -> None:
    if command.args:
        raise Bad("IDLE takes no arguments")
    selected = session.selected
    if selected is not None and selected.watch is None and session.notifier is None:
        selected.watch = notify.Watcher.for_loop().watch(selected.directory)
    await session.continuation("idling")
    if selected is not None:
        await session.send_updates()        # what came before the watch began
    source = session.notifier or (_SelectedChanges(session) if selected is not None else None)
    try:
        text = await read_pushing(session, source)  # TimeoutError: the session says goodbye
    except LineTooLong:
        await session.bad("Line too long; IDLE ended")
        return
    await _done(session, text)


class _SelectedChanges:
    """IDLE's change source without NOTIFY: the selected mailbox's signal and updates."""

    def __init__(self, session):
        self.session = session

    async def wait(self, timeout: float) -> bool:
        return await self.session.selected.watch.wait(timeout)

    async def push(self) -> None:
        await self.session.send_updates()


async def read_pushing(session, source) -> bytes | None:
    """The next line (as conn.read_command: None when the master stops; LineTooLong and
    TimeoutError raised), while each change signal of source (await .wait(timeout) -> bool;
    None: no source) has its updates sent at once (await .push(), then session.flush())."""
    await session.flush()                   # what the command sent before the wait (IDLE's updates)
    line = asyncio.ensure_future(session.conn.read_command(STREAM_LIMIT, session.timeout))
    try:
        while not await _changed_before(source, line, session.timeout):
            await source.push()
            await session.flush()
    finally:
        if not line.done():
            line.cancel()
            await asyncio.wait((line,))
    return line.result()


async def _changed_before(source, line: asyncio.Future, timeout: float) -> bool:
    """Wait for a change signal or the client's line; True once the line is there (the
    line's own timeout comes first: source's only bounds the wait)."""
    if source is None:
        await asyncio.wait((line,))
        return True
    change = asyncio.ensure_future(source.wait(timeout))
    try:
        await asyncio.wait((line, change), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not change.done():
            change.cancel()
            await asyncio.wait((change,))
    return line.done()


async def _done(session, text: bytes | None) -> None:
    if text is None:
        await session.shutting_down()
        raise Close
    if not text:
        raise Close                         # the client went away
    if text.rstrip(b"\r\n").upper() == b"DONE":
        await session.ok("IDLE terminated")
    else:
        await session.bad("Expected DONE; IDLE ended")

"""placeholder: being written"""
from __future__ import annotations

CAPABILITIES = ("UNSELECT", "UIDPLUS", "MOVE")


async def _not_yet(session, command) -> None:
    await session.no(f"{command.name} is not available yet", "CANNOT")


async def close(session, command) -> None:
    session.unselect()
    await session.ok("CLOSE completed")


async def unselect(session, command) -> None:
    session.unselect()
    await session.ok("UNSELECT completed")


append = expunge = store = copy = _not_yet

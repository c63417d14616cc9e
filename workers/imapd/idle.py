"""placeholder: being written"""
from __future__ import annotations


async def idle(session, command) -> None:
    await session.no(f"{command.name} is not available yet", "CANNOT")

"""Limits on what a client may send: line length, time, number of errors.

read_line(reader, limit, timeout) -> bytes
    One line including its terminator (b"\\r\\n" or b"\\n"); b"" at end of stream, a
    partial line if the stream ends without a terminator. A line longer than `limit`
    bytes raises LineTooLong after the rest of that line has been read and dropped, so
    the session may answer an error and go on with the next line; memory stays bounded
    by STREAM_LIMIT whatever the client sends. Everything, the dropping included, must
    finish within `timeout` seconds or TimeoutError is raised.
ErrorBudget(limit)
    .charge() counts one client error and returns True once the budget is spent
    (Postfix's smtpd_hard_error_limit); .spent tells without charging.
refusal_text(limit, ip, params) -> str
    The words for a client refused by one of the master's limits (named in master/proto.py,
    decided by master/anvil.py: conn.refusal, or what conn.report_login returned); each
    protocol puts them in its own refusal line (SMTP 421/454, POP3 -ERR, IMAP BYE/NO).
Diagnostics: none here; the session decides the protocol's reply.
"""
from __future__ import annotations

import asyncio

from master.proto import AUTH_RATE_LIMIT, COUNT_LIMIT, RATE_LIMIT, USERIP_LIMIT

# The StreamReader's own buffer limit: no line may be longer than this whatever the
# caller's limit (IMAP's longest command lines stay well below it).
STREAM_LIMIT = 128 * 1024


class LineTooLong(Exception):
    """The client sent a line longer than the limit; the line has been discarded."""


async def read_line(reader: asyncio.StreamReader, limit: int, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if len(e.partial) > limit:
                raise LineTooLong(f"line longer than {limit} bytes") from None
            return e.partial
        except asyncio.LimitOverrunError as e:
            await _drop_rest_of_line(reader, e.consumed)
            raise LineTooLong(f"line longer than {limit} bytes") from None
        if len(line) > limit:
            raise LineTooLong(f"line longer than {limit} bytes")
        return line


async def _drop_rest_of_line(reader: asyncio.StreamReader, buffered: int) -> None:
    """Discard bytes up to and including the next newline, in bounded chunks."""
    while True:
        await reader.readexactly(buffered)
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as e:
            buffered = e.consumed
        except asyncio.IncompleteReadError:
            return


class ErrorBudget:
    """Counts a session's errors; a client that errs `limit` times is to be dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    def charge(self) -> bool:
        self.count += 1
        return self.spent

    @property
    def spent(self) -> bool:
        return self.count >= self.limit


def refusal_text(limit: str, ip: str, params) -> str:
    unit = f"{params.anvil_rate_time_unit:g} s"
    if limit == COUNT_LIMIT:
        return f"Too many connections from {ip}, try again later"
    if limit == RATE_LIMIT:
        return f"Too many connections from {ip} in {unit}, try again later"
    if limit == AUTH_RATE_LIMIT:
        return f"Too many logins from {ip} in {unit}, try again later"
    if limit == USERIP_LIMIT:
        return (f"Too many sessions of this user from {ip} "
                f"(mail_max_userip_connections={params.mail_max_userip_connections})")
    return "Too many connections, try again later"       # maxproc: the service is full

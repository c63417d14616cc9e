"""The rounds of a SASL exchange, shared by SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE.

    await exchange(server, response, prompt, conn, line_max, timeout) -> Step | Abort
server is a workers._auth.SaslServer, response the client's initial response (None: it sent
none); prompt(challenge) sends the protocol's continuation line (`334 `, `+ `) with the
challenge in base64. Each answer line is read with conn.read_line(line_max, timeout).
The result is the mechanism's last Step (failed, or with the authenticated user), or why
the client's line ended the exchange first:
    Abort.TOO_LONG      a line longer than line_max (dropped)
    Abort.CANCELLED     the client sent `*`
    Abort.BAD_BASE64    the line is not base64
    Abort.ROUNDS        MAX_ROUNDS challenges without an end (a failed login)
Each protocol turns those into its own replies.
Diagnostics: ConnectionResetError when the client goes away mid-exchange; the verifier's
AuthUnavailable passes through (the protocol answers its temporary failure).
"""
from __future__ import annotations

import base64
import enum
from collections.abc import Awaitable, Callable

from workers._auth import SaslServer, Step, decode_response
from workers._limits import LineTooLong

MAX_ROUNDS = 10                 # no mechanism here needs more than three


class Abort(enum.Enum):
    TOO_LONG = "line too long"
    CANCELLED = "cancelled"
    BAD_BASE64 = "invalid base64"
    ROUNDS = "too many rounds"


async def exchange(server: SaslServer, response: bytes | None, prompt: Callable[[bytes], Awaitable[None]],
                   conn, line_max: int, timeout: float) -> Step | Abort:
    for _ in range(MAX_ROUNDS):
        step = await server.step(response)
        if step.failed or step.user is not None:
            return step
        await prompt(base64.b64encode(step.challenge or b""))
        try:
            line = await conn.read_line(line_max, timeout)
        except LineTooLong:
            return Abort.TOO_LONG
        if not line:
            raise ConnectionResetError("client closed the connection during a SASL exchange")
        text = line.rstrip(b"\r\n").decode("latin-1").strip()
        if text == "*":
            return Abort.CANCELLED
        response = decode_response(text)
        if response is None:
            return Abort.BAD_BASE64
    return Abort.ROUNDS

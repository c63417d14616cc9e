"""The SMTP side of AUTH (RFC 4954): base64 lines between the client and a SASL mechanism.

AuthExchange(conn, backend, mechanism, timeout, max_line).run(initial) -> AuthOutcome.
backend.sasl_server(mechanism) gives a workers._auth.SaslServer with
    await step(response: bytes | None) -> Step
where Step.challenge (bytes) asks for another round, Step.user names the authenticated
user, and Step.failed ends the exchange (Step.user then holds the name that was tried, if
any, and Step.reason why, for the log). The password checks behind step() are answered by
the auth service or the process's verifier threads (workers/_authremote.py), never on the
event loop. `initial` is the optional initial response of the AUTH command (`=` means empty).
The outcome carries either the user or the reply to send: 535 5.7.8 for bad credentials
and for an account that may not log in (disabled; the reason is logged),
454 4.7.0 when the verifier cannot take the check now (AuthUnavailable), 501 5.7.0 when the
client cancels with `*`, 501 5.5.2 for bad base64, 500 5.5.2 for an overlong line. The
session sends that reply (after 535 only, it reports the failed login: workers._auth.login_failed).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

from workers._auth import decode_response
from workers._authpool import AuthUnavailable
from workers._limits import LineTooLong
from workers.smtpd import replies as R

MAX_ROUNDS = 10                 # no mechanism here needs more than three


@dataclass
class AuthOutcome:
    user: str | None = None
    reply: R.Reply | None = None
    attempted_user: str | None = None
    reason: str = ""                  # for the log only, never for the client


class AuthExchange:
    def __init__(self, conn, backend, mechanism: str, timeout: float, max_line: int):
        self.conn = conn
        self.mechanism = backend.sasl_server(mechanism)
        self.timeout = timeout
        self.max_line = max_line

    async def run(self, initial: str | None) -> AuthOutcome:
        response: bytes | None = None
        if initial is not None:
            response = decode_response(initial)
            if response is None:
                return AuthOutcome(reply=R.AUTH_BAD_ENCODING)
        for _ in range(MAX_ROUNDS):
            try:
                step = await self.mechanism.step(response)
            except AuthUnavailable as e:
                return AuthOutcome(reply=R.AUTH_UNAVAILABLE, reason=str(e))
            if step.failed:
                return AuthOutcome(reply=R.AUTH_FAILED, attempted_user=step.user, reason=step.reason)
            if step.user is not None:
                return AuthOutcome(user=step.user)
            await self.conn.send_line(b"334 " + base64.b64encode(step.challenge or b""))
            try:
                line = await self.conn.read_line(self.max_line, self.timeout)
            except LineTooLong:
                return AuthOutcome(reply=R.LINE_TOO_LONG)
            if not line:
                raise ConnectionResetError("client closed the connection during AUTH")
            text = line.rstrip(b"\r\n").decode("latin-1").strip()
            if text == "*":
                return AuthOutcome(reply=R.AUTH_CANCELLED)
            response = decode_response(text)
            if response is None:
                return AuthOutcome(reply=R.AUTH_BAD_ENCODING)
        return AuthOutcome(reply=R.AUTH_FAILED)

"""The SMTP side of AUTH (RFC 4954): the SASL rounds (workers/_saslexchange.py) in SMTP's replies.

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

from dataclasses import dataclass

from workers._auth import decode_response
from workers._authpool import AuthUnavailable
from workers._saslexchange import Abort, exchange
from workers.smtpd import replies as R

ABORT_REPLIES = {Abort.TOO_LONG: R.LINE_TOO_LONG, Abort.CANCELLED: R.AUTH_CANCELLED,
                 Abort.BAD_BASE64: R.AUTH_BAD_ENCODING, Abort.ROUNDS: R.AUTH_FAILED}


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
        try:
            result = await exchange(self.mechanism, response, self._prompt, self.conn, self.max_line, self.timeout)
        except AuthUnavailable as e:
            return AuthOutcome(reply=R.AUTH_UNAVAILABLE, reason=str(e))
        if isinstance(result, Abort):
            return AuthOutcome(reply=ABORT_REPLIES[result])
        if result.failed:
            return AuthOutcome(reply=R.AUTH_FAILED, attempted_user=result.user, reason=result.reason)
        return AuthOutcome(user=result.user)

    async def _prompt(self, challenge: bytes) -> None:
        await self.conn.send_line(b"334 " + challenge)

"""The auth service's client: a Verifier that asks workers/auth over its unix socket.

RemoteVerifier(path, timeout, log) has LocalVerifier's `await verify(check, protocol)`:
the check travels as plain data (workers/_authchecks.py check_to_wire) in a request line
of the auth service's protocol (documented in workers/auth/service.py), and the reply comes
back as the check's answer (a Verdict, or ScramParams). The connection is a
workers/_jsonlines.py Channel: one per worker process, the requests of all sessions
pipelined on it. A connection that ends (the service restarted,
was recycled) fails the checks waiting on it; each is sent once more on a new connection,
since checks have no side effects. AuthUnavailable (the protocols' temporary failure) when
the socket cannot be reached, the service does not answer within `timeout` seconds
(auth_service_timeout; a stopped or restarting service), or answers with an error.

verifier_from_params(params, users, log): the process's one verifier: a RemoteVerifier when
the master named an auth service (master/proto.py service_socket("auth")), else a LocalVerifier that
reads the password database in this process.
Diagnostics: AuthUnavailable("...") says why, for the protocol's log line.
"""
from __future__ import annotations

import asyncio

from master import proto
from workers._authchecks import answer_from_wire, check_to_wire
from workers._authpool import AuthUnavailable, LocalVerifier
from workers._jsonlines import Channel, Lost, Unreachable

REPLY_MAX = 64 * 1024          # bytes of one reply line (a Verdict is well under 1 KiB)


class RemoteVerifier:
    def __init__(self, path: str, timeout: float, log):
        self.path = path
        self.timeout = timeout
        self.channel = Channel(path, "auth service", log, REPLY_MAX)

    async def verify(self, check, protocol: str):
        request = {"protocol": protocol, **check_to_wire(check)}
        try:
            reply = await asyncio.wait_for(self._ask(request), self.timeout)
        except TimeoutError:
            raise AuthUnavailable(f"the auth service did not answer within {self.timeout:g} s") from None
        if "error" in reply:
            raise AuthUnavailable(f"auth service: {str(reply['error'])[:200]}")
        try:
            return answer_from_wire(check, reply, ("id",))
        except ValueError as e:
            raise AuthUnavailable(f"auth service: bad answer: {e}") from None

    async def _ask(self, request: dict) -> dict:
        for attempt in (1, 2):
            try:
                return await self.channel.ask(request)
            except Unreachable as e:
                raise AuthUnavailable(str(e)) from None
            except Lost:
                if attempt == 2:          # else once more: the service restarted or was recycled
                    raise AuthUnavailable("the auth service closed the connection") from None


def verifier_from_params(params, users, log):
    """The auth service's when the master named one, else checks in this process."""
    path = proto.service_socket("auth")
    if path:
        return RemoteVerifier(path, params.auth_service_timeout, log)
    return LocalVerifier.from_params(params, users, log)

"""RemoteVerifier (workers/_authremote.py) against a real AuthService on a unix socket.

One connection per process shared by pipelined checks; a new connection after the service
went away (the check is sent again once); AuthUnavailable when the socket is missing, the
service does not answer in time, or answers with an error; verifier_from_params picks it
when the master named an auth socket.
"""
from __future__ import annotations

import asyncio
import types

import pytest

from master import proto
from workers._authchecks import PasswordCheck, ScramLookup, ScramParams, Verdict
from workers._authpool import AuthUnavailable, LocalVerifier
from workers._authremote import RemoteVerifier, verifier_from_params
from workers.auth.service import AuthService
from tests.fakes import FakeLog



class Answering:
    """A verifier that knows one password and counts what it was asked."""

    def __init__(self):
        self.asked = 0

    async def verify(self, check, protocol):
        self.asked += 1
        await asyncio.sleep(0.01)
        if isinstance(check, ScramLookup):
            return ScramParams(b"salt", 4096)
        return Verdict(check.login if check.password == "pw" else None)


async def start(path: str, verifier):
    svc = AuthService(verifier, FakeLog())
    server = await asyncio.start_unix_server(svc.serve, path=path)
    return svc, server


async def stop(svc, server) -> None:
    server.close()
    svc.stop_reading()
    await svc.finish()


def test_pipelined_checks_share_one_connection(tmp_path):
    path = str(tmp_path / "auth.sock")

    async def scenario():
        svc, server = await start(path, Answering())
        remote = RemoteVerifier(path, 5, FakeLog())
        try:
            answers = await asyncio.gather(*(remote.verify(PasswordCheck(f"u{n}", "pw" if n % 2 else "x"), "smtp")
                                             for n in range(20)), remote.verify(ScramLookup("bob"), "pop"))
            return answers, len(svc._readers)
        finally:
            await stop(svc, server)

    answers, connections = asyncio.run(scenario())
    assert answers[:3] == [Verdict(None), Verdict("u1"), Verdict(None)] and answers[-1] == ScramParams(b"salt", 4096)
    assert connections == 1


def test_a_restarted_service_is_reached_on_a_new_connection(tmp_path):
    path = str(tmp_path / "auth.sock")

    async def scenario():
        first = await start(path, Answering())
        remote = RemoteVerifier(path, 5, FakeLog())
        assert await remote.verify(PasswordCheck("bob", "pw"), "smtp") == Verdict("bob")
        await stop(*first)
        second = await start(path, Answering())
        try:
            return await remote.verify(PasswordCheck("bob", "pw"), "smtp"), second[0]
        finally:
            await stop(*second)

    answer, svc = asyncio.run(scenario())
    assert answer == Verdict("bob") and svc.verifier.asked == 1


def test_unreachable_silent_or_failing_service_is_a_temporary_failure(tmp_path):
    path = str(tmp_path / "auth.sock")

    async def silent(reader, writer):
        await reader.read()

    class Busy:
        async def verify(self, check, protocol):
            raise AuthUnavailable("32 credential checks already running or waiting")

    async def scenario():
        remote = RemoteVerifier(path, 0.3, FakeLog())
        with pytest.raises(AuthUnavailable, match="cannot reach the auth service"):
            await remote.verify(PasswordCheck("bob", "pw"), "smtp")
        server = await asyncio.start_unix_server(silent, path=path)
        with pytest.raises(AuthUnavailable, match="did not answer within 0.3 s"):
            await remote.verify(PasswordCheck("bob", "pw"), "smtp")
        server.close()
        svc, server = await start(path, Busy())
        try:
            with pytest.raises(AuthUnavailable, match="auth service: 32 credential checks"):
                await RemoteVerifier(path, 5, FakeLog()).verify(PasswordCheck("bob", "pw"), "smtp")
        finally:
            await stop(svc, server)

    asyncio.run(scenario())


def test_the_master_decides_which_verifier(monkeypatch, tmp_path):
    params = types.SimpleNamespace(auth_service_timeout=7.0, auth_cache_ttl=0, auth_cache_size=0,
                                   auth_verify_threads=1, auth_verify_queue_limit=1)
    monkeypatch.setenv(proto.ENV_AUTH_SOCKET, "/run/x/auth.sock")
    remote = verifier_from_params(params, None, FakeLog())
    assert isinstance(remote, RemoteVerifier) and (remote.path, remote.timeout) == ("/run/x/auth.sock", 7.0)
    monkeypatch.delenv(proto.ENV_AUTH_SOCKET)
    assert isinstance(verifier_from_params(params, None, FakeLog()), LocalVerifier)

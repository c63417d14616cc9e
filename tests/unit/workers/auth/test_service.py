"""The auth service's socket protocol (workers/auth/service.py) and the checks as plain data.

A real AuthService on a unix socket in tmp_path, asked with raw JSON lines: answers with
their ids, pipelined; every bad input an error reply (never a traceback or a hang); the
limits on request size, unfinished lines and requests in flight; a drain answers what was
read before it closes. The verifier is a real LocalVerifier over a user database, or a
fake that holds its answers until the test lets them go.
"""
from __future__ import annotations

import asyncio
import base64
import json

import pytest

from store.users import User, UserDB
from workers._authcache import VerifiedCache
from workers._authchecks import (ApopCheck, CramCheck, PasswordCheck, ScramLookup, ScramParams, ScramProof,
                                 Verdict, answer_from_wire, answer_to_wire, check_from_wire, check_to_wire)
from workers._authpool import LocalVerifier
from workers.auth import service
from workers.auth.service import AuthService
from tests.fakes import FakeLog



@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("authsvc")
    db = UserDB(str(root / "users"), str(root / "secret.key"))
    db.add(User("bob"), "s3cret")
    db.add(User("imaponly", protocols=["imap"]), "s3cret")
    yield db
    db.close()


class Held:
    """A verifier whose answers wait for release; raises what `fail` says."""

    def __init__(self, fail: Exception | None = None):
        self.release = asyncio.Event()
        self.asked: list = []
        self.fail = fail

    async def verify(self, check, protocol):
        self.asked.append((check, protocol))
        if self.fail is not None:
            raise self.fail
        await self.release.wait()
        return Verdict(check.login)


def serve(tmp_path, verifier, scenario):
    """Run scenario(service, reader, writer) against a served socket; returns its result."""
    async def main():
        log = FakeLog()
        svc = AuthService(verifier, log)
        path = str(tmp_path / "auth.sock")
        server = await asyncio.start_unix_server(svc.serve, path=path, limit=service.REQUEST_MAX)
        reader, writer = await asyncio.open_unix_connection(path, limit=2**20)
        try:
            return await asyncio.wait_for(scenario(svc, reader, writer), 20)
        finally:
            writer.close()
            server.close()
            svc.stop_reading()
            await svc.finish()
    return asyncio.run(main())


def request(request_id, check, protocol="smtp") -> bytes:
    return json.dumps({"id": request_id, "protocol": protocol, **check_to_wire(check)}).encode() + b"\n"


async def replies(reader, count: int) -> list[dict]:
    return [json.loads(await reader.readline()) for _ in range(count)]


# ---------------------------------------------------------------- the checks as plain data

def test_every_check_and_answer_travels_as_json():
    checks = [PasswordCheck("bob", "pw\u00e9"), CramCheck("bob", b"<1.2@h>", bytes(range(16))),
              ApopCheck("bob", "<1@h>", "ab" * 16), ScramLookup("Bob@Example.Test"),
              ScramProof("bob", b"\0salt", 4096, b"n=bob,r=x", b"\xff" * 32)]
    for check in checks:
        assert check_from_wire(json.loads(json.dumps(check_to_wire(check)))) == check
    for check, answer in ((checks[0], Verdict("bob", refused="pop-not-allowed")), (checks[0], Verdict(None)),
                          (checks[4], Verdict("bob", b"sig")), (checks[3], ScramParams(b"salt", 4096))):
        assert answer_from_wire(check, json.loads(json.dumps(answer_to_wire(answer)))) == answer


@pytest.mark.parametrize("data, error", [
    ({"check": "password", "login": "bob"}, "'password' is missing"),
    ({"check": "password", "login": "bob", "password": "x", "extra": 1}, "unknown field 'extra'"),
    ({"check": "password", "login": 7, "password": "x"}, "'login' must be str"),
    ({"check": "scram-proof", "login": "b", "salt": "!!", "iterations": 1, "auth_message": "", "proof": ""},
     "'salt' is not base64"),
    ({"check": "scram-proof", "login": "b", "salt": "", "iterations": True, "auth_message": "", "proof": ""},
     "'iterations' must be int"),
    ({"check": "password", "login": "b" * 20000, "password": "x"}, "'login' is too long"),
    ({"check": "crack", "login": "bob"}, "unknown check 'crack'"),
])
def test_malformed_checks_are_refused(data, error):
    with pytest.raises(ValueError, match=error):
        check_from_wire(data)


# ---------------------------------------------------------------- the service

def test_pipelined_requests_are_answered_with_their_ids(tmp_path, users):
    verifier = LocalVerifier(users, 2, 8, VerifiedCache(0, 0), FakeLog())

    async def scenario(svc, reader, writer):
        writer.write(request(1, PasswordCheck("bob", "s3cret")) + request(2, PasswordCheck("bob", "wrong"))
                     + request(3, ScramLookup("bob")) + request(4, PasswordCheck("imaponly", "s3cret"), "pop"))
        return {reply["id"]: reply for reply in await replies(reader, 4)}

    answers = serve(tmp_path, verifier, scenario)
    assert answers[1] == {"id": 1, "user": "bob", "server_signature": "", "refused": ""}
    assert answers[2]["user"] is None
    assert answers[3]["iterations"] == 4096 and len(base64.b64decode(answers[3]["salt"])) == 16
    assert answers[4]["user"] == "imaponly" and answers[4]["refused"] == "pop-not-allowed"


@pytest.mark.parametrize("line, request_id, error", [
    (b"not json\n", None, "bad request: not JSON"),
    (b"\n", None, "bad request: not JSON"),
    (b"[1, 2]\n", None, "bad request: not a JSON object"),
    (b"[" * 30000 + b"\n", None, "bad request: not JSON"),
    (b'{"id": -1, "protocol": "smtp", "check": "scram-lookup", "login": "bob"}\n', None, "bad or missing id"),
    (b'{"id": true, "protocol": "smtp", "check": "scram-lookup", "login": "bob"}\n', None, "bad or missing id"),
    (b'{"id": 5, "protocol": "ftp", "check": "scram-lookup", "login": "bob"}\n', 5, "protocol must be"),
    (b'{"id": 6, "protocol": "pop", "check": "nope"}\n', 6, "unknown check 'nope'"),
    (b'{"id": 7, "protocol": "pop", "check": "password", "login": "bob"}\n', 7, "'password' is missing"),
    (b'{"id": 8, "protocol": "pop", "check": "apop", "login": "bob", "timestamp": "<x>", "hexdigest": "\\u00e9"}\n',
     8, None),
])
def test_bad_input_gets_an_error_reply_and_the_connection_goes_on(tmp_path, users, line, request_id, error):
    verifier = LocalVerifier(users, 1, 4, VerifiedCache(0, 0), FakeLog())

    async def scenario(svc, reader, writer):
        writer.write(line + request(9, ScramLookup("bob")))
        return await replies(reader, 2)

    bad, good = serve(tmp_path, verifier, scenario)
    if error is None:                                      # odd, but a check: a wrong digest
        assert bad == {"id": 8, "user": None, "server_signature": "", "refused": ""}
    else:
        assert bad["id"] == request_id and error in bad["error"]
    assert good["id"] == 9 and good["iterations"] == 4096


def test_an_oversize_request_is_refused_and_the_connection_closed(tmp_path):
    async def scenario(svc, reader, writer):
        writer.write(b'{"id": 1, "password": "' + b"x" * service.REQUEST_MAX + b'"}\n')
        reply = json.loads(await reader.readline())
        return reply, await reader.read()

    reply, rest = serve(tmp_path, Held(), scenario)
    assert reply == {"id": None, "error": f"request longer than {service.REQUEST_MAX} bytes"} and rest == b""


def test_an_unfinished_request_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "REQUEST_TIMEOUT", 0.2)

    async def scenario(svc, reader, writer):
        writer.write(b'{"id": 1, "protocol"')
        reply = json.loads(await reader.readline())
        return reply, await reader.read()

    reply, rest = serve(tmp_path, Held(), scenario)
    assert reply == {"id": None, "error": "request not ended within 0.2 s"} and rest == b""


def test_requests_in_flight_are_limited_per_connection(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "IN_FLIGHT_MAX", 2)
    verifier = Held()

    async def scenario(svc, reader, writer):
        writer.write(b"".join(request(n, PasswordCheck(f"u{n}", "pw")) for n in (1, 2, 3)))
        first = await replies(reader, 1)                   # the third, at once
        verifier.release.set()
        return first + await replies(reader, 2)

    over, *answered = serve(tmp_path, verifier, scenario)
    assert over == {"id": 3, "error": "more than 2 requests in flight"}
    assert sorted(reply["user"] for reply in answered) == ["u1", "u2"]


def test_a_check_that_raises_gets_an_error_reply_not_a_traceback(tmp_path):
    async def scenario(svc, reader, writer):
        writer.write(request(4, PasswordCheck("bob", "pw")))
        return (await replies(reader, 1))[0], svc.log.lines

    reply, lines = serve(tmp_path, Held(fail=TypeError("odd input")), scenario)
    assert reply == {"id": 4, "error": "the check failed"}
    assert lines == ["E auth: PasswordCheck for smtp failed: TypeError: odd input"]


def test_a_drain_answers_what_was_read_then_closes(tmp_path):
    verifier = Held()

    async def scenario(svc, reader, writer):
        writer.write(request(1, PasswordCheck("bob", "pw")))
        while not verifier.asked:
            await asyncio.sleep(0.01)
        svc.stop_reading()
        verifier.release.set()
        reply = json.loads(await reader.readline())
        return reply, await reader.read()

    reply, rest = serve(tmp_path, verifier, scenario)
    assert reply["id"] == 1 and reply["user"] == "bob" and rest == b""

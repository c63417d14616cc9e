"""The session base (workers/_session.py) with a toy protocol, and the Connection contract.

The real connection (workers/_server.py) and the tests' fake (tests/fakes.py) must both have
every member of workers._session.Connection, with the same kind (coroutine or not) and the
same parameters, so that what the unit tests drive is what the workers run.
The toy protocol answers every refusal with a line naming it, so the tests see which check
of the dispatcher caught a line, in which order, and how the session ends.
"""
from __future__ import annotations

import asyncio
import enum
import inspect
from typing import ClassVar

import pytest

from master.params import Params
from tests.fakes import FakeConnection, FakeLog
from workers import _server, _session
from workers._session import Close, Command, Connection, Flag


def protocol_members() -> set[str]:
    names = set(Connection.__annotations__)
    names |= {name for name, value in vars(Connection).items()
              if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}
    return names


PARAMS = Params({}, {}, "/nonexistent")


def real_connection() -> _server.Connection:
    class Writer:
        def get_extra_info(self, name, default=None):
            return default
    return _server.Connection(asyncio.StreamReader(), Writer(), 1, PARAMS, FakeLog(), "smtp", control=None)


@pytest.mark.parametrize("make", [real_connection, lambda: FakeConnection(PARAMS)], ids=["real", "fake"])
def test_both_connections_have_every_member_of_the_protocol(make):
    assert {"reader", "params", "log", "peer_ip", "tls", "read_command", "send_line", "report_login"} \
        <= protocol_members()

    async def made():          # a StreamReader belongs to the running loop
        conn = make()
        assert isinstance(conn, Connection)
        return conn
    conn = asyncio.run(made())
    for name in protocol_members():
        wanted = getattr(Connection, name, None)
        if not inspect.isfunction(wanted):
            assert hasattr(conn, name), name
            continue
        got = getattr(type(conn), name)
        assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(wanted), name
        assert list(inspect.signature(got).parameters) == list(inspect.signature(wanted).parameters), name


# ---------------------------------------------------------------- a toy protocol on the base

class State(enum.Enum):
    OUT = 1
    IN = 2


async def login(session, args):
    session.state = State.IN
    await session.say(f"in {args}")


async def echo(session, args):
    await session.say(f"echo {args!r}")


async def secret(session, args):
    await session.say("secret")


async def bye(session, args):
    await session.say("bye")
    session.closing = True


async def now(session, args):
    await session.say("now")
    raise Close


class Toy(_session.Session):
    line_limit = 16
    encoding = "utf-8"
    commands: ClassVar[dict[str, Command]] = {
        "LOGIN": Command(login, frozenset({State.OUT}), (1, 1)),
        "ECHO": Command(echo, frozenset(State)),
        "LONG": Command(echo, frozenset(State), max_line=40),
        "PASS": Command(echo, frozenset(State), (1, 1), Flag.WHOLE_REST),
        "SECRET": Command(secret, frozenset({State.IN}), (0, 0), Flag.TLS_FIRST),
        "BYE": Command(bye, frozenset(State), (0, 0)),
        "NOW": Command(now, frozenset(State), (0, 0)),
    }

    def __init__(self, conn):
        super().__init__(conn, None, State.OUT, 5, 0.2)
        self.ended = False

    async def say(self, text):
        await self.conn.send_line(text.encode())

    async def refuse(self, text):
        await self.say(text)
        await self.charge_error()

    async def start(self):
        await self.say("hello")
        return True

    def end(self):
        self.ended = True

    async def unknown(self, request):
        await self.refuse(f"unknown {request.verb!r}")

    async def too_long(self):
        await self.refuse("too long")

    async def wrong_state(self, request, command):
        await self.refuse(f"not in {self.state.name}")

    async def bad_arguments(self, request):
        await self.refuse(f"arguments of {request.verb}")

    def tls_required(self):
        return not self.conn.tls

    async def must_use_tls(self, request):
        await self.refuse("tls first")

    async def too_many_errors(self):
        await self.say("too many errors")

    async def timed_out(self):
        await self.say("timeout")

    async def shutting_down(self):
        await self.say("stopping")

    def lost(self):
        self.log.debug("lost")


def play(data: bytes, **kw) -> tuple[list[str], Toy]:
    conn = FakeConnection(PARAMS, data, **kw)
    toy = Toy(conn)
    asyncio.run(toy.run())
    assert toy.ended
    return conn.lines(), toy


def test_checks_in_order_and_handlers_get_their_arguments():
    lines, toy = play(b"echo  a b \r\nSECRET\r\nlogin\r\nLOGIN x\r\nLOGIN x\r\npass  a b\r\n"
                      b"LONG " + b"y" * 20 + b"\r\nECHO " + b"y" * 20 + b"\r\n" + b"x" * 50 + b"\r\nECHO never\r\n")
    assert lines == ["hello", "echo 'a b'", "not in OUT", "arguments of LOGIN", "in ['x']", "not in IN",
                     "echo [' a b']", "echo '" + "y" * 20 + "'", "too long", "too long", "too many errors"]
    assert toy.verbs == {"ECHO": 2, "SECRET": 1, "LOGIN": 3, "PASS": 1, "LONG": 1}


def test_line_too_long_unknown_verbs_and_the_budget():
    lines, toy = play(b"x" * 50 + b"\r\n\xc3\xa9cho\r\nECHO " + b"y" * 20 + b"\r\nECHO ok\r\nnope\r\n"
                      b"NOPE x\r\nECHO never\r\n")
    assert lines == ["hello", "too long", "unknown ''", "too long", "echo 'ok'", "unknown 'NOPE'", "unknown 'NOPE'",
                     "too many errors"]
    assert toy.verbs == {"unknown": 3, "ECHO": 2}
    assert toy.errors.spent


def test_tls_first():
    assert play(b"LOGIN a\r\nSECRET\r\n")[0][-1] == "tls first"
    assert play(b"LOGIN a\r\nSECRET\r\n", tls=True)[0][-1] == "secret"


@pytest.mark.parametrize("data, last", [(b"BYE\r\nECHO no\r\n", "bye"), (b"NOW\r\nECHO no\r\n", "now"),
                                        (b"ECHO yes", "echo 'yes'")])
def test_the_session_ends_after_closing_at_close_and_at_eof(data, last):
    lines, _ = play(data)
    assert lines[-1] == last


def test_timeout_and_the_masters_stop():
    lines, _ = play(b"ECHO a\r\n", eof=False)
    assert lines == ["hello", "echo 'a'", "timeout"]

    async def stopped():
        conn = FakeConnection(PARAMS, eof=False)
        task = asyncio.ensure_future(Toy(conn).run())
        conn.feed(b"ECHO a\r\n")
        while b"echo" not in conn.output:
            await asyncio.sleep(0.001)
        conn.draining.set()
        await asyncio.wait_for(task, 5)
        return conn.lines()
    assert asyncio.run(stopped()) == ["hello", "echo 'a'", "stopping"]


def test_a_client_that_goes_away():
    class Gone(FakeConnection):
        async def send(self, data):
            if b"echo" in data:
                raise ConnectionResetError("peer gone")
            await super().send(data)

    conn = Gone(PARAMS, b"ECHO a\r\n")
    toy = Toy(conn)
    asyncio.run(toy.run())
    assert toy.ended and conn.log.lines == ["H lost"]

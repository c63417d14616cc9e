"""Properties of POP3 (workers/pop3d): the wire form of messages and the TRANSACTION commands.

Wire form, for any stored bytes and any read block size: RETR's stream is the message with
every line end made CRLF (an unterminated last line gets one) and dots stuffed;
message_size is its length unstuffed; TOP is the header, the empty line and the first n
body lines of that stream (the whole message when it has fewer).
Session, after login, driven through the fake transport of tests/fakes.py
over a real store holding corpus messages: for any sequence of command lines (known and
unknown verbs in any case, wrong argument counts, numbers out of range, with leading zeros,
signs or non-ASCII digits, over-long lines) every reply is what a model of RFC 1939 says:
+OK or -ERR, multi-line exactly where the RFC has one, RETR/TOP giving back the message
text, LIST/STAT the sizes, DELE/RSET marking and unmarking, UIDL stable and unique; the
error budget closes the session after MAX_BAD_COMMANDS syntax errors, not before. The
store is never changed (no QUIT, so no UPDATE).
"""
from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given, strategies as st

from master.params import Params
from store.mailstore import INBOX
from tests.fakes import FakeConnection
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.seeds import POP3_SESSIONS, messages
from workers.pop3d import wire
from workers.pop3d.backend import Backend
from workers.pop3d.session import MAX_BAD_COMMANDS, MAX_LINE, Session

USER = "bob"
STORE_MAX = 20_000                # message size for the store: RETR output stays small
CHUNKS = [1, 2, 3, 5, 8, wire.CHUNK]


def crlf(data: bytes) -> bytes:
    """The message as POP3 sends it, before stuffing."""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return re.sub(rb"\r?\n", b"\r\n", data)


def stuffed(text: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", text)


def top(text: bytes, count: int) -> bytes:
    lines = [line + b"\r\n" for line in text.split(b"\r\n")[:-1]]
    blank = lines.index(b"\r\n") if b"\r\n" in lines else len(lines)
    return b"".join(lines[:blank + 1 + count])


def check_wire(data: bytes, chunk: int, count: int) -> None:
    saved, wire.CHUNK = wire.CHUNK, chunk
    try:
        sent = b"".join(wire.wire_chunks(io.BytesIO(data)))
        size = wire.message_size(io.BytesIO(data))
        head = b"".join(wire.top_chunks(wire.wire_chunks(io.BytesIO(data)), count))
    finally:
        wire.CHUNK = saved
    assert (sent, size, head) == (stuffed(crlf(data)), len(crlf(data)), stuffed(top(crlf(data), count)))


@fuzz_settings(150)
@given(st.one_of(st.binary(max_size=80), st.lists(st.sampled_from([b".", b"a", b"\r", b"\n", b"\r\n", b"\r\n\r\n",
                                                                    b"..", b"x" * 9]), max_size=30).map(b"".join)),
       st.sampled_from(CHUNKS), st.integers(0, 4))
def test_wire_form(data, chunk, count):
    check_wire(data, chunk, count)


def test_unterminated_last_line_longer_than_a_block_gets_its_crlf():
    data = b"Subject: a\n\n" + b"y" * (2 * wire.CHUNK - 12)
    sent = b"".join(wire.wire_chunks(io.BytesIO(data)))
    assert sent.endswith(b"y\r\n") and wire.message_size(io.BytesIO(data)) == len(crlf(data)) == len(data) + 4


# ---------------------------------------------------------------- the session against a model

def store_messages() -> list[bytes]:
    """Corpus messages of every awkward shape: dot lines, no final line end, mixed line ends, no body."""
    corpus = [m for _, m in messages(STORE_MAX)]
    shapes = [lambda m: re.search(rb"(?m)^\.", m), lambda m: not m.endswith(b"\n"),
              lambda m: b"\r\n" in m and re.search(rb"(?<!\r)\n", m),
              lambda m: b"\n\n" not in m.replace(b"\r\n", b"\n"), lambda m: True]
    chosen = []
    for shape in shapes:
        chosen += [m for m in corpus if shape(m) and m not in chosen][:1]
    return chosen


def make_backend(root: str) -> Backend:
    """A pop3d backend over a fresh store in `root` holding store_messages() for USER."""
    params = Params({"myhostname": "mail.example.test", "data_directory": root, "auth_failure_delay": "0s"},
                    {}, root)
    backend = Backend(params)
    for message in store_messages():
        backend.store.mail.deliver(USER, INBOX, message)
    return backend


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return make_backend(str(tmp_path_factory.mktemp("pop3")))


@dataclass
class Model:
    """The client's view of the maildrop: message texts, DELE marks, unique ids seen."""
    texts: list[bytes]
    deleted: set[int] = field(default_factory=set)
    uids: dict[int, str] = field(default_factory=dict)
    errors: int = 0

    def number(self, text: str) -> int | None:
        if text.isascii() and text.isdigit() and len(text) <= 10 and 1 <= int(text) <= len(self.texts) \
                and int(text) not in self.deleted:
            return int(text)
        return None

    def live(self) -> list[int]:
        return [n for n in range(1, len(self.texts) + 1) if n not in self.deleted]


ARITY = {"STAT": (0, 0), "LIST": (0, 1), "UIDL": (0, 1), "RETR": (1, 1), "DELE": (1, 1), "RSET": (0, 0),
         "NOOP": (0, 0), "TOP": (2, 2), "CAPA": (0, 0)}
LOGIN_ONLY = ["USER", "PASS", "APOP", "AUTH", "STLS"]


def expect(model: Model, verb: str, args: list[str], line: bytes):
    """-> (+OK?, the multi-line body: the text, ... for any, None for a one-line reply) per
    RFC 1939 and the session's error budget; updates the model."""
    if len(line) > MAX_LINE or verb not in ARITY or not ARITY[verb][0] <= len(args) <= ARITY[verb][1] or (
            verb == "TOP" and not (args[1].isascii() and args[1].isdigit() and len(args[1]) <= 10)):
        model.errors += 1
        return False, None
    if verb in ("LIST", "UIDL", "CAPA") and not args:
        return True, ...
    if verb in ("STAT", "NOOP", "RSET"):
        if verb == "RSET":
            model.deleted.clear()
        return True, None
    n = model.number(args[0])
    if n is None:
        return False, None
    if verb == "DELE":
        model.deleted.add(n)
    if verb == "RETR":
        return True, model.texts[n - 1]
    if verb == "TOP":
        return True, top(model.texts[n - 1], int(args[1]))
    return True, None


def read_reply(out: io.BytesIO, multi: bool) -> tuple[bytes, bytes | None]:
    status = out.readline()
    assert status.endswith(b"\r\n") and status.startswith((b"+OK", b"-ERR")), status
    if not (multi and status.startswith(b"+OK")):
        return status, None
    lines = []
    while (line := out.readline()) != b".\r\n":
        assert line.endswith(b"\r\n"), f"unterminated multi-line reply: {line!r}"
        lines.append(line[1:] if line.startswith(b".") else line)
    return status, b"".join(lines)


def check_reply(model: Model, verb: str, args: list[str], status: bytes, ok: bool, body, text) -> None:
    assert status.startswith(b"+OK") == ok, (verb, args, status)
    fields = status.split()
    if verb == "STAT" and ok:
        live = model.live()
        assert fields[1:3] == [str(len(live)).encode(), str(sum(len(model.texts[n - 1]) for n in live)).encode()]
    elif verb == "LIST" and ok:
        listing = [line.split() for line in text.splitlines()] if not args else [fields[1:]]
        expected = [[str(n).encode(), str(len(model.texts[n - 1])).encode()] for n in
                    (model.live() if not args else [int(args[0])])]
        assert listing == expected
    elif verb == "UIDL" and ok:
        listing = [line.split() for line in text.splitlines()] if not args else [fields[1:]]
        assert [int(number) for number, _ in listing] == (model.live() if not args else [int(args[0])])
        for number, uid in listing:
            assert re.fullmatch(rb"[\x21-\x7e]{1,70}", uid)
            assert model.uids.setdefault(int(number), uid.decode()) == uid.decode()
        assert len(set(model.uids.values())) == len(model.uids)
    elif verb == "RETR" and ok:
        assert fields[1] == str(len(body)).encode() and text == body
    elif body is not None and body is not ...:
        assert text == body


def run_session(backend, lines: list[bytes]) -> tuple[Model, bytes]:
    async def session() -> bytes:
        conn = FakeConnection(backend.params, b"".join(lines))
        maildrop = backend.open_maildrop(USER)
        await asyncio.to_thread(maildrop.measure)
        model.texts[:] = [crlf(maildrop.open_message(e).read()) for e in maildrop.messages]
        pop = Session(conn, backend)
        pop.enter_transaction(USER, maildrop)
        await pop.run()
        return bytes(conn.output)
    model = Model([])
    return model, asyncio.run(session())


def parse_command(line: bytes) -> tuple[str, list[str]]:
    verb, _, rest = line.rstrip(b"\r\n").decode("utf-8", "replace").partition(" ")
    return verb.upper(), rest.split()


def check_session(backend, lines: list[bytes]) -> None:
    model, output = run_session(backend, lines)
    out = io.BytesIO(output)
    assert out.readline().startswith(b"+OK")
    for line in lines:
        verb, args = parse_command(line)
        ok, body = expect(model, verb, args, line)
        status, text = read_reply(out, body is not None)
        check_reply(model, verb, args, status, ok, body, text)
        if model.errors >= MAX_BAD_COMMANDS:
            assert out.readline().startswith(b"-ERR"), "no goodbye after too many bad commands"
            break
    assert out.read() == b"", "replies left over"


number = st.one_of(st.integers(0, 7).map(str), st.sampled_from(["01", "+1", "-1", "1.0", "\u0661", "0000000001",
                                                               "00000000001", "99999999999", "x"]))
verb = st.sampled_from([*ARITY, *LOGIN_ONLY, "XTND", "", "RETR1"])
command = st.tuples(verb, st.sampled_from([str.upper, str.lower, str.title]), st.lists(number, max_size=3),
                    st.sampled_from([" ", "  ", " \t"]), st.sampled_from(["\r\n", "\n"])).map(
    lambda t: (t[1](t[0]) + (" " + t[3].join(t[2]) if t[2] else "") + t[4]).encode())
line = st.one_of(command, command, command, st.just(b"NOOP " + b"x" * 300 + b"\r\n"),
                 st.binary(max_size=20).map(lambda b: b"X" + b.replace(b"\n", b"") + b"\r\n"))


@fuzz_settings(80)
@given(st.lists(line, max_size=14))
def test_transaction_commands_follow_the_model(backend, lines):
    check_session(backend, lines)


def test_seed_sessions(backend):
    for stream in POP3_SESSIONS:
        check_session(backend, [line + b"\n" for line in stream.split(b"\n")[:-1]])

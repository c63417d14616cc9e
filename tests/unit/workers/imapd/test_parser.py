"""workers/imapd/parser.py: commands, literals, limits, malformed input, modified UTF-7."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.imapd.parser import (
    NIL,
    Atom,
    Bad,
    Command,
    Disconnected,
    Limits,
    Literal,
    ParserError,
    Section,
    String,
    astring,
    mutf7_decode,
    mutf7_encode,
    read_command,
    sequence_set,
)

DEFAULT = Limits()


def reader_of(data: bytes, eof: bool = True, limit: int = 128 * 1024) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def _read(reader, limits, calls, line=None):
    async def on_continuation():
        calls.append(True)
    return await asyncio.wait_for(read_command(reader, limits, on_continuation, line), 5)


def read(data: bytes, limits: Limits = DEFAULT, calls: list | None = None, line=None):
    async def run():
        return await _read(reader_of(data), limits, [] if calls is None else calls, line)
    return asyncio.run(run())


def read_all(data: bytes, limits: Limits = DEFAULT):
    """(command or Bad) for every command of the stream, up to its end or a closing Bad."""
    async def run():
        reader, out = reader_of(data), []
        while True:
            try:
                command = await _read(reader, limits, [])
            except Bad as e:
                out.append(e)
                if e.close:
                    return out
                continue
            if command is None:
                return out
            out.append(command)
    return asyncio.run(run())


def bad(data: bytes, limits: Limits = DEFAULT) -> Bad:
    with pytest.raises(Bad) as info:
        read(data, limits)
    return info.value


# -- RFC 3501 commands

def test_login_with_atoms_quoted_strings_and_literals():
    assert read(b"a001 LOGIN SMITH SESAME\r\n") == Command("a001", "LOGIN", ["SMITH", "SESAME"])
    command = read(b'A1 login "fred \\"the\\" foo" "a\\\\b"\r\n')
    assert command.name == "LOGIN" and command.args == ['fred "the" foo', "a\\b"]
    assert all(type(a) is String for a in command.args)
    calls: list = []
    command = read(b"A2 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n", calls=calls)
    assert command.args == [b"FRED FOOBAR", b"fat man"] and calls == [True, True]
    assert [astring(a) for a in command.args] == ["FRED FOOBAR", "fat man"]


def test_token_types():
    command = read(b"t1 X atom \"q\" NIL nil \\Seen 1:*,4 [Gmail]/Sent ~peter {1+}\r\nL\r\n")
    types = [type(a) for a in command.args]
    assert types == [Atom, String, type(NIL), type(NIL), Atom, Atom, Atom, Atom, Literal]
    assert command.args[-1] == b"L" and not command.args[-1].binary
    assert command.args[5:8] == ["1:*,4", "[Gmail]/Sent", "~peter"]


def test_append_with_flags_date_and_literal():
    message = b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nSubject: afternoon meeting\r\n\r\nHello Joe\r\n"
    calls: list = []
    command = read(b'A003 APPEND saved-messages (\\Seen) "07-Feb-1994 21:52:25 -0800" {%d}\r\n' % len(message)
                   + message + b"\r\n", calls=calls)
    assert command == Command("A003", "APPEND", ["saved-messages", ["\\Seen"], "07-Feb-1994 21:52:25 -0800", message])
    assert calls == [True]


def test_fetch_with_complex_attributes():
    command = read(b"A654 FETCH 2:4 (FLAGS BODY.PEEK[HEADER.FIELDS (DATE FROM)]<0.2048>)\r\n")
    assert command.args == ["2:4", ["FLAGS", Section("BODY.PEEK", (), "HEADER.FIELDS", ("DATE", "FROM"), (0, 2048))]]
    command = read(b'a FETCH 1 (BODY[] body[1.2.MIME] BODY[3.HEADER.FIELDS.NOT ("X-A" B)] BINARY.PEEK[1]<5.10> '
                   b"BINARY.SIZE[2] BODY[TEXT] RFC822.SIZE BODY)\r\n")
    assert command.args[1] == [Section("BODY"), Section("BODY", (1, 2), "MIME"),
                               Section("BODY", (3,), "HEADER.FIELDS.NOT", ("X-A", "B")),
                               Section("BINARY.PEEK", (1,), partial=(5, 10)), Section("BINARY.SIZE", (2,)),
                               Section("BODY", (), "TEXT"), "RFC822.SIZE", "BODY"]


@pytest.mark.parametrize("attribute", [b"BODY[MIME]", b"BODY[HEADER.FIELDS]", b"BODY[HEADER.FIELDS ()]",
                                       b"BODY[TEXT (A)]", b"BODY[0]", b"BODY[1.]", b"BODY[1HEADER]",
                                       b"BINARY[TEXT]", b"BODY[]<1>", b"BODY[]<1.0>", b"BINARY.SIZE[1]<0.1>",
                                       b"BODY[]<0.99999999999>", b"BODY[HEADER.FIELDS ({3}", b"BODY[1]x",
                                       b"BODY[HEADER.FIELDS (\"\xff\")]"])
def test_bad_sections(attribute):
    assert bad(b"a FETCH 1 (" + attribute + b")\r\n").tag == "a"


def test_uid_commands_with_nested_lists_and_charset():
    command = read(b"A999 UID FETCH 4827313:4828442 FLAGS\r\n")
    assert command == Command("A999", "UID FETCH", ["4827313:4828442", "FLAGS"])
    command = read(b"A003 uid STORE 2:4 +FLAGS.SILENT (\\Deleted $Junk)\r\n")
    assert command == Command("A003", "UID STORE", ["2:4", "+FLAGS.SILENT", ["\\Deleted", "$Junk"]])
    command = read(b'A284 UID SEARCH CHARSET UTF-8 (OR (FROM "Smith" TEXT {6+}\r\n\xd0\xb0\xd0\xb1\xd0\xb2) '
                   b"(SINCE 1-Feb-1994 NOT (SEEN))) 1:*\r\n")
    assert command.name == "UID SEARCH"
    assert command.args == ["CHARSET", "UTF-8", ["OR", ["FROM", "Smith", "TEXT", "абв".encode()],
                                                 ["SINCE", "1-Feb-1994", "NOT", ["SEEN"]]], "1:*"]
    assert bad(b"a UID\r\n").tag == "a"


def test_literal8_and_utf8_quoted():
    calls: list = []
    command = read(b"a APPEND box ~{3}\r\n\x00\x01\x02\r\n", calls=calls)
    assert command.args[1] == b"\x00\x01\x02" and command.args[1].binary and calls == [True]
    assert read('a SELECT "Entwürfe"\r\n'.encode()).args == ["Entwürfe"]
    with pytest.raises(Bad):
        astring(command.args[1])


def test_sequence_set_helper():
    assert sequence_set(Atom("1:3,5:*"), 7) == [(1, 3), (5, 7)]
    for token in (Atom("0"), Atom("1:x"), String("1"), NIL):
        with pytest.raises(Bad):
            sequence_set(token, 7)


def test_caller_read_first_line():
    command = read(b"abc\r\n", line=b"a LOGIN u {3}\r\n")
    assert command.args == ["u", b"abc"]


def test_several_commands_and_end_of_stream():
    out = read_all(b"a NOOP\r\nb CHECK\nc LOGOUT\r\n")
    assert [c.tag for c in out] == ["a", "b", "c"]
    assert read(b"") is None
    for data in (b"a NOOP", b"a LOGIN {5}\r\nab", b"a LOGIN {2}\r\nab", b"a LOGIN {2}\r\nab xy"):
        with pytest.raises(Disconnected) as info:
            read(data)
        assert isinstance(info.value, ConnectionError)


# -- synchronising and non-synchronising literals

def test_continuation_only_for_synchronising_literals():
    calls: list = []
    read(b"a LOGIN {1+}\r\nx {1}\r\ny\r\n", calls=calls)
    assert len(calls) == 1
    calls = []
    read(b"a LOGIN {1+}\r\nx ~{1+}\r\ny\r\n", calls=calls)
    assert calls == []


def test_continuation_is_asked_before_the_literal_is_read():
    async def run():
        reader = reader_of(b"a LOGIN {3}\r\n", eof=False)
        asked = []

        async def on_continuation():
            asked.append(True)
            reader.feed_data(b"abc x\r\n")
            reader.feed_eof()
        return await asyncio.wait_for(read_command(reader, Limits(), on_continuation), 5), asked
    command, asked = asyncio.run(run())
    assert command.args == [b"abc", "x"] and asked == [True]


def test_slow_drip_feed():
    data = (b'a1 APPEND box (\\Seen) {5}\r\nhello\r\na2 FETCH 1 (BODY[HEADER.FIELDS (A)]<0.1>)\r\n'
            b"a3 LOGIN {300+}\r\n" + b"p" * 300 + b" {2}\r\nok\r\n")

    async def run():
        reader = asyncio.StreamReader(limit=64)
        out, calls = [], []

        async def drip():
            for i in range(len(data)):
                reader.feed_data(data[i:i + 1])
                await asyncio.sleep(0)
            reader.feed_eof()

        async def on_continuation():
            calls.append(True)
        task = asyncio.ensure_future(drip())
        while (command := await read_command(reader, Limits(line=200), on_continuation)) is not None:
            out.append(command)
        await task
        return out, calls
    out, calls = asyncio.run(asyncio.wait_for(run(), 10))
    assert [c.tag for c in out] == ["a1", "a2", "a3"] and len(calls) == 2
    assert out[2].args == [b"p" * 300, b"ok"]


# -- limits

def test_line_too_long_is_dropped_and_the_next_command_read():
    limits = Limits(line=100)
    out = read_all(b"a1 NOOP " + b"x" * 500 + b"\r\na2 NOOP\r\n", limits)
    assert isinstance(out[0], Bad) and out[0].tag == "a1" and not out[0].close
    assert out[1] == Command("a2", "NOOP", [])
    out = read_all(b"x" * 300_000 + b"\r\na2 NOOP\r\n", Limits(line=100))  # beyond the stream's limit
    assert isinstance(out[0], Bad) and out[0].tag is None and out[1].tag == "a2"


def test_too_long_line_ending_in_a_literal():
    # synchronising: refused, the client sends no literal; non-synchronising: skipped.
    out = read_all(b"a1 X " + b"x" * 500 + b" {3}\r\na2 NOOP\r\n", Limits(line=100))
    assert out[0].tag == "a1" and out[1].tag == "a2"
    out = read_all(b"a1 X " + b"x" * 500 + b" {3+}\r\nabc\r\na2 NOOP\r\n", Limits(line=100))
    assert out[0].tag == "a1" and not out[0].close and out[1].tag == "a2"
    out = read_all(b"a1 X {3}\r\nabc " + b"x" * 500 + b"\r\na2 NOOP\r\n", Limits(line=100))
    assert out[0].tag == "a1" and out[1].tag == "a2"


def test_oversize_synchronising_literal_is_refused_unread():
    calls: list = []
    with pytest.raises(Bad) as info:
        read(b"a LOGIN {70000}\r\n", calls=calls)
    assert (info.value.status, info.value.code, info.value.close, info.value.tag) == ("BAD", "TOOBIG", False, "a")
    assert calls == []
    out = read_all(b"a LOGIN {99}\r\nb NOOP\r\n", Limits(literal=10))
    assert isinstance(out[0], Bad) and out[1].tag == "b"


def test_oversize_append_is_no_toobig():
    error = bad(b"a APPEND box {11}\r\n", Limits(append_literal=10))
    assert (error.status, error.code, error.close) == ("NO", "TOOBIG", False)
    assert read(b"a APPEND box {10}\r\n" + b"m" * 10 + b"\r\n", Limits(append_literal=10, literal=1))
    error = bad(b"a APPEND box {11+}\r\n" + b"m" * 11 + b"\r\n", Limits(append_literal=10))
    assert (error.status, error.code, error.close) == ("NO", "TOOBIG", True)


def test_multiappend_messages_count_against_append_total():
    limits = Limits(append_literal=10, append_total=25, command=100)
    three = b"a APPEND box {10}\r\n" + b"m" * 10 + b" (\\Seen) {10}\r\n" + b"n" * 10 + b" {%d}\r\n"
    command = read(three % 5 + b"o" * 5 + b" UTF8 (~{3}\r\nabc)\r\n", limits)
    assert command.args == ["box", b"m" * 10, ["\\Seen"], b"n" * 10, b"o" * 5, "UTF8", [b"abc"]]
    error = bad(three % 10 + b"o" * 10 + b"\r\n", Limits(append_literal=10, append_total=25, command=40))
    assert (error.status, error.code) == ("NO", "TOOBIG")


def test_oversize_non_synchronising_literal_closes():
    error = bad(b"a LOGIN {70000+}\r\n" + b"x" * 70000 + b"\r\n")
    assert (error.status, error.close, error.tag) == ("BAD", True, "a")
    error = bad(b"a LOGIN {99999999999999999999999+}\r\n")
    assert error.close


def test_literal_minus():
    limits = Limits(literal_plus=False)
    assert read(b"a LOGIN {4096+}\r\n" + b"x" * 4096 + b" p\r\n", limits).args[0] == b"x" * 4096
    error = bad(b"a LOGIN {4097+}\r\n" + b"x" * 4097 + b" p\r\n", limits)
    assert error.code == "TOOBIG" and error.close
    assert read(b"a LOGIN {4097}\r\n" + b"x" * 4097 + b" p\r\n", limits).args[1] == "p"


def test_command_size_limit():
    limits = Limits(command=1000, literal=800)
    error = bad(b"a X {600}\r\n" + b"x" * 600 + b" {600}\r\n", limits)
    assert error.code == "TOOBIG" and not error.close
    error = bad(b"a X {600+}\r\n" + b"x" * 600 + b" {600+}\r\n", limits)
    assert error.close
    out = read_all(b"a X {600+}\r\n" + b"x" * 600 + b" " + b"y" * 500 + b"\r\nb NOOP\r\n", limits)
    assert isinstance(out[0], Bad) and out[1].tag == "b"


def test_depth_and_token_limits():
    assert read(b"a X " + b"(" * 16 + b")" * 16 + b"\r\n", Limits(depth=16))
    assert bad(b"a X " + b"(" * 17 + b")" * 17 + b"\r\n", Limits(depth=16)).text == "Lists nested too deep"
    assert read(b"a X" + b" t" * 10 + b"\r\n", Limits(tokens=10))
    assert bad(b"a X" + b" t" * 11 + b"\r\n", Limits(tokens=10)).text == "Too many arguments"
    assert bad(b"a X" + b" ()" * 11 + b"\r\n", Limits(tokens=10)).tag == "a"


def test_bad_command_with_literals_is_read_to_its_end():
    out = read_all(b"a X ) {3+}\r\nabc {2+}\r\nxy\r\nb NOOP\r\n")
    assert isinstance(out[0], Bad) and not out[0].close and out[1].tag == "b"
    out = read_all(b"a X ) {3}\r\nb NOOP\r\n")      # refused: the client sends no literal
    assert isinstance(out[0], Bad) and out[1].tag == "b"
    out = read_all(b"a X {3+}\r\nabc )\r\nb NOOP\r\n")
    assert isinstance(out[0], Bad) and out[0].tag == "a" and out[1].tag == "b"
    for line in (b"a X ) {-1+}\r\n", b"a X {+}\r\n"):    # not a literal, but cannot tell how long
        assert read_all(line + b"b NOOP\r\n")[0].close


# -- malformed input

@pytest.mark.parametrize("line, tag", [
    (b"", None), (b" NOOP", None), (b"+ NOOP", None), (b"a", "a"), (b"a ", "a"), (b"a  NOOP", "a"),
    (b"a NO\xffOP", "a"), (b"a* NOOP", "a"), (b"a 1NOOP", "a"), (b"\x00 NOOP", None),
    (b"a X (b", "a"), (b"a X b)", "a"), (b"a X ((b)", "a"), (b"a X ())", "a"), (b"a X (a)(b)", "a"),
    (b"a X {12", "a"), (b"a X {12}x", "a"), (b"a X {-1}", "a"), (b"a X {}", "a"), (b"a X {1 2}", "a"),
    (b"a X {5} y", "a"), (b"a X ~{", "a"), (b"a X b{1}", "a"), (b"a X {99999999999}", "a"),
    (b'a X "unterminated', "a"), (b'a X "bad \\escape"', "a"), (b'a X "nul\x00"', "a"), (b'a X "\xff"', "a"),
    (b'a X "a"b', "a"), (b"a X a\x00b", "a"), (b"a X caf\xc3\xa9", "a"), (b"a X a\rb", "a"), (b"a X \x7f", "a"),
])
def test_malformed(line, tag):
    error = bad(line + b"\r\n")
    assert error.tag == tag and error.status == "BAD" and not error.close


def test_nul_in_literal_is_bad_after_the_whole_command():
    out = read_all(b"a LOGIN {3+}\r\na\x00b {1+}\r\nc\r\nb NOOP\r\n")
    assert isinstance(out[0], Bad) and out[0].tag == "a" and out[1].tag == "b"


def test_an_append_message_may_hold_nul():
    (command,) = read_all(b"a APPEND INBOX {3+}\r\na\x00b\r\n")
    assert command.name == "APPEND" and command.args[1] == b"a\x00b"


# -- modified UTF-7

@pytest.mark.parametrize("encoded, decoded", [
    ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
    ("&-", "&"), ("A&-B", "A&B"), ("INBOX", "INBOX"), ("&AOk-t&AOk-", "été"), ("Entw&APw-rfe", "Entwürfe"),
    ("&2D3eAA-", "\U0001f600"), ("&AAA-", "\x00"), ("", ""),
])
def test_mutf7_examples(encoded, decoded):
    assert mutf7_decode(encoded) == decoded
    assert mutf7_decode(encoded.encode()) == decoded
    assert mutf7_encode(decoded) == encoded


@pytest.mark.parametrize("invalid", [
    "&", "&U,BTFw", "&U,BTF-", "&AGE-", "&Jjo-&Jjo-", "&2D0-", "&AO,-", "&AOk=-", "é", b"\xe9", "\x01", "a&b-",
    "&U/BTFw-", "&AOl-",
])
def test_mutf7_rejects(invalid):
    with pytest.raises(Bad):
        mutf7_decode(invalid)


def test_mutf7_encode_rejects_lone_surrogates():
    with pytest.raises(Bad):
        mutf7_encode("a\ud800")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_mutf7_round_trip(name):
    try:
        encoded = mutf7_encode(name)
    except Bad:
        return
    assert encoded.isascii() and mutf7_decode(encoded) == name


# -- any input

@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.sampled_from([b"{3}\r\n", b"{2+}\r\n", b"~{1}\r\n", b"(", b")", b'"', b"\\",
                                           b"\r\n", b" ", b"a1 ", b"FETCH", b"BODY[", b"]<0.1>", b"{99999+}\r\n"])),
                max_size=20).map(b"".join))
def test_any_bytes_end_in_commands_or_module_errors(data):
    try:
        read_all(data, Limits(line=64, literal=32, command=256, depth=3, tokens=20))
    except ParserError:
        pass

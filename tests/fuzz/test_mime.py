"""Properties of the IMAP view of a message (workers/imapd/mime.py) on any bytes.

For corpus messages, mutated ones (cut, spliced with boundary lines, MIME headers, bare CR
and LF) and random bytes: Structure.parse never raises and its offsets nest (every part
inside its parent, parts in order, header <= body <= end); to_bytes/from_bytes gives the
same structure; ENVELOPE is a well-formed list of ten fields and BODY/BODYSTRUCTURE a
well-formed parenthesised list (quoted strings closed with only \\\\ and \\" escaped, literal
sizes exact, nothing left over); BODY[section] is None or, for HEADER, TEXT, MIME and
part numbers, a slice of the raw message (BODY[HEADER] + BODY[TEXT] is the message, BODY[]
the message itself), and HEADER.FIELDS answers lines of the message and a blank line.
"""
from __future__ import annotations

import re

from hypothesis import given, strategies as st

from tests.fuzz.budget import fuzz_settings
from tests.fuzz.seeds import messages
from workers.imapd import mime

MAX_MESSAGE = 30_000
_ATOM = re.compile(rb"[^\s()\"{}\\]+")
_QUOTED = re.compile(rb'"((?:\\[\\"]|[^"\\\r\n])*)"')
_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


def parse_data(text: bytes) -> list:
    """`(...)` in IMAP's data syntax -> nested lists of bytes and None (NIL); AssertionError
    for anything else: an unclosed list, a bad string, a literal of the wrong size, a tail."""
    stack: list[list] = []
    pos = 0
    result = None
    while True:
        assert pos < len(text), f"data ends inside a list: {text!r}"
        if text[pos:pos + 1] == b"(":
            stack.append([])
            pos += 1
            if text[pos:pos + 1] != b")":
                continue
        if text[pos:pos + 1] == b")":
            assert stack, f"unbalanced ')' at {pos}: {text!r}"
            done = stack.pop()
            pos += 1
            if not stack:
                result = done
                break
            stack[-1].append(done)
        else:
            assert stack, f"data outside a list at {pos}: {text!r}"
            if m := _QUOTED.match(text, pos):
                stack[-1].append(re.sub(rb"\\(.)", rb"\1", m.group(1)))
                pos = m.end()
            elif m := _LITERAL.match(text, pos):
                start = m.end()
                pos = start + int(m.group(1))
                assert pos <= len(text), f"literal past the end: {text!r}"
                stack[-1].append(text[start:pos])
            else:
                m = _ATOM.match(text, pos)
                assert m, f"bad token at {pos}: {text[pos:pos + 20]!r} in {text!r}"
                stack[-1].append(None if m.group() == b"NIL" else m.group())
                pos = m.end()
        if text[pos:pos + 1] == b" ":
            pos += 1
            assert text[pos:pos + 1] != b")", f"space before ')' at {pos}: {text!r}"
        else:       # body-type-mpart: the parts' lists follow each other without a space
            assert text[pos:pos + 1] == b")" or text[pos:pos + 1] == b"(" and isinstance(stack[-1][-1], list), \
                f"tokens not separated at {pos}: {text!r}"
    assert pos == len(text), f"data after the list: {text[pos:]!r}"
    return result


def _check_parts(part: mime.Part, low: int, high: int) -> int:
    """Offsets nest; returns the number of parts."""
    assert low <= part.header <= part.body <= part.end <= high, (part, low, high)
    count, previous = 1, part.body
    for child in part.children:
        assert child.header >= previous, (child, previous)
        count += _check_parts(child, part.body, part.end)
        previous = child.end
    return count


def _numbers(part: mime.Part, prefix: str = "") -> list[str]:
    """Section numbers of the parts (a few), as a client would ask for them."""
    inner = part.children[0] if part.kind == mime.MESSAGE else part
    out = []
    for n, child in enumerate(inner.children[:3] if inner.kind == mime.MULTI else [], 1):
        out += [prefix + str(n), *_numbers(child, prefix + str(n) + ".")[:3]]
    return out


def check_message(raw: bytes) -> None:
    structure = mime.Structure.parse(raw)
    _check_parts(structure.root, 0, len(raw))
    assert structure.root.header == 0 and structure.root.end == len(raw)
    again = mime.Structure.from_bytes(structure.to_bytes())
    assert again.to_bytes() == structure.to_bytes()
    envelope = parse_data(mime.envelope(raw, structure))
    assert len(envelope) == 10, envelope
    for extensible in (False, True):
        assert isinstance(parse_data(mime.bodystructure(raw, extensible, structure)), list)
    assert mime.section(raw, "", structure) == raw
    assert mime.section(raw, "HEADER", structure) + mime.section(raw, "TEXT", structure) == raw
    for number in ["", *_numbers(structure.root), "1", "2", "9", "1.1", "0"]:
        for text in ["", "HEADER", "TEXT", "MIME"]:
            spec = number + ("." if number and text else "") + text
            got = mime.section(raw, spec, structure)
            assert got is None or got in raw, (spec, got)
        for fields in ["HEADER.FIELDS (Subject From Content-Type)", "HEADER.FIELDS.NOT (Received)"]:
            got = mime.section(raw, number + ("." if number else "") + fields, structure)
            assert got is None or got.endswith(b"\n") and all(        # the fields, then the blank line
                line in raw for line in got[:-2 if got.endswith(b"\r\n") else -1].splitlines(keepends=True)), \
                (number, fields, got)


CORPUS = [m for _, m in messages(MAX_MESSAGE)] or [b"Subject: x\r\n\r\nx\r\n"]
FRAGMENTS = [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b"--b\r\n", b"--b--\r\n", b"\r\n--b\r\n",
             b'Content-Type: multipart/mixed; boundary="b"\r\n', b"Content-Type: message/rfc822\r\n",
             b"Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\n", b"Content-Transfer-Encoding: base64\r\n",
             b"Content-Disposition: attachment; filename*0*=utf-8''a%20; filename*1=b\r\n", b" folded\r\n",
             b"From: \"a\\\" b\" <x@y>, (c) z@w;\r\n", b"To: undisclosed:;\r\n", b"Subject: \xff\x00\"\\\r\n", b"\x00",
             b"Content-Type: text/plain; charset=\"\r\n", b"Content-Language: en, fr\r\n", b"From x\r\n"]


@st.composite
def mutated(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(raw)))
        action = draw(st.sampled_from(["insert", "insert", "cut", "truncate", "bytes"]))
        if action == "insert":
            raw[at:at] = draw(st.sampled_from(FRAGMENTS))
        elif action == "cut":
            del raw[at:at + draw(st.integers(1, 200))]
        elif action == "truncate":
            del raw[at:]
        else:
            raw[at:at] = draw(st.binary(max_size=10))
    return bytes(raw)


@fuzz_settings(120)
@given(st.one_of(mutated(), st.lists(st.sampled_from(FRAGMENTS + [b"x", b"y: z"]), max_size=25).map(b"".join),
                 st.binary(max_size=100)))
def test_any_message_has_a_well_formed_structure(raw):
    check_message(raw)


def test_corpus_messages():
    for raw in CORPUS:
        check_message(raw)

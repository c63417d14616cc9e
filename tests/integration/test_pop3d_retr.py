"""RETR through the real master with poplib: the octets of every shape of message.

pop3d reads a message file in blocks of workers.pop3d.wire.CHUNK octets and rewrites each
block with bytes methods; these tests put what could go wrong at those seams: a line that
starts with "." right at, just before and just after a block boundary (CRLF and bare-LF
files), a dot line longer than a block, a 5 MiB message (several writes; plain and TLS),
bare-LF and mixed line ends, and the whole shared real-mail corpus. What must come back is
computed here independently of wire.py: LF line ends made CRLF (a lone CR stays), a final
line end added, dots stuffed at line starts (RawPop sees the stuffed octets, poplib undoes
them); LIST, STAT and RETR's "+OK n octets" all give the unstuffed length.
"""
from __future__ import annotations

import poplib
import re

import pytest

from store.mailstore import INBOX
from tests.conftest import shared_corpus
from tests.integration.pop3d_support import PopSystem, RawPop, login, pop_ssl
from workers.pop3d.wire import CHUNK

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LONGEST_LINE = 4 * 1024 * 1024     # poplib refuses lines over 2048 octets; the corpus has longer


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = PopSystem(tmp_path_factory.mktemp("pop3d-retr"))
    yield running
    running.stop()


@pytest.fixture
def long_lines(monkeypatch):
    monkeypatch.setattr(poplib, "_MAXLINE", LONGEST_LINE)


def on_the_wire(raw: bytes) -> bytes:
    """The message as RETR delivers it once unstuffed."""
    if not raw.endswith(b"\n"):
        raw += b"\n"
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw)


def stuffed(wire: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", wire)


def deliver(system: PopSystem, user: str, messages: list[bytes]) -> None:
    store = system.store()
    try:
        for data in messages:
            store.deliver(user, INBOX, data)
    finally:
        store.index.close()


def check_retr(client: poplib.POP3, messages: list[bytes]) -> None:
    """LIST, STAT and RETR of every message against what must come back."""
    _, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert sizes == [len(on_the_wire(data)) for data in messages]
    assert client.stat() == (len(messages), sum(sizes))
    for number, data in enumerate(messages, 1):
        reply, lines, octets = client.retr(number)
        assert reply == f"+OK {sizes[number - 1]} octets".encode()
        assert b"".join(line + b"\r\n" for line in lines) == on_the_wire(data), f"message {number}"
        assert octets == sizes[number - 1]


def check_raw(port: int, user: str, password: str, messages: list[bytes]) -> None:
    """The exact octets on the wire, dot-stuffing included."""
    raw = RawPop(port)
    try:
        assert raw.command(f"USER {user}").startswith(b"+OK")
        assert raw.command(f"PASS {password}").startswith(b"+OK")
        for number, data in enumerate(messages, 1):
            assert raw.command(f"RETR {number}") == f"+OK {len(on_the_wire(data))} octets".encode()
            assert raw.multiline() == stuffed(on_the_wire(data)), f"message {number}"
        assert raw.command("QUIT").startswith(b"+OK")
    finally:
        raw.close()


def dot_line_at(offset: int, line_end: bytes) -> bytes:
    """A message whose line `.dot` starts `offset` octets into the file, among dot lines."""
    head = b"Subject: boundary" + line_end + line_end
    line = b"x" * 70 + line_end
    room = offset - len(head)
    full = (room - len(line_end) - 1) // len(line)            # then one shorter line fills the rest
    last = room - full * len(line)
    prefix = head + line * full + b"y" * (last - len(line_end)) + line_end
    return prefix + b".dot" + line_end + b"." + line_end + b".." + line_end + b"tail" + line_end


def boundary_messages() -> list[bytes]:
    messages = []
    for line_end in (b"\r\n", b"\n"):
        for offset in (CHUNK - 2, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK):
            data = dot_line_at(offset, line_end)
            assert data[offset:offset + 4] == b".dot"
            messages.append(data)
        # a dot line longer than a block: passed on in pieces, only its first dot stuffed
        messages.append(b"Subject: long" + line_end + line_end + b"." + b"a.b\r" * CHUNK + line_end
                        + b".after" + line_end)
    # a CR at the end of a block, its LF at the start of the next
    messages.append(b"Subject: cr" + b"\r\n" * 2 + b"w" * (CHUNK - 15) + b"\r\n.next\r\n")
    return messages


def test_dot_lines_at_block_boundaries(system, long_lines):
    system.add_user("seams", "pw-seams")
    messages = boundary_messages()
    deliver(system, "seams", messages)
    client = login(system.port("plain"), "seams", "pw-seams")
    check_retr(client, messages)
    client.quit()
    check_raw(system.port("plain"), "seams", "pw-seams", messages)


def big_message() -> bytes:
    lines = [b"Subject: big", b""]
    size = 0
    while size < 5 * 1024 * 1024:
        n = len(lines)
        lines.append(b"." * (n % 3) + f"line {n} ".encode() + b"0123456789" * (n % 9))
        size += len(lines[-1]) + 2
    return b"\r\n".join(lines) + b"\r\n"


def test_five_mib_message_is_byte_identical_plain_and_tls(system):
    system.add_user("big", "pw-big")
    data = big_message()
    deliver(system, "big", [data])
    check_raw(system.port("plain"), "big", "pw-big", [data])
    client = pop_ssl(system.port("wrapper"), timeout=60)
    client.user("big")
    client.pass_("pw-big")
    check_retr(client, [data])
    client.quit()


def test_bare_lf_and_mixed_line_ends(system):
    system.add_user("barelf", "pw-barelf")
    messages = [
        b"Subject: lf\n\n.starts with a dot\nmiddle\n.\n..\nno final line end",
        b"Subject: mixed\r\n\r\ncrlf\r\nlf\n.dot after lf\n\rcr first\r\nlone\rcr\r\n",
        b"Subject: lf only\n\nbody\n",
    ]
    deliver(system, "barelf", messages)
    client = login(system.port("plain"), "barelf", "pw-barelf")
    check_retr(client, messages)
    _, top, _ = client.top(1, 1)
    assert top == [b"Subject: lf", b"", b".starts with a dot"]
    client.quit()
    check_raw(system.port("plain"), "barelf", "pw-barelf", messages)


def test_shared_corpus(system, long_lines):
    system.add_user("corpus", "pw-corpus")
    messages = [path.read_bytes() for path, _features in shared_corpus()]
    deliver(system, "corpus", messages)
    client = login(system.port("plain"), "corpus", "pw-corpus")
    check_retr(client, messages)
    client.quit()

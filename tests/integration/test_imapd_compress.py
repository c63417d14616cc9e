"""COMPRESS=DEFLATE (RFC 4978) through the real master, with a raw socket client and zlib.

After login only; `OK DEFLATE active` in clear, then both directions raw DEFLATE: commands
pipelined behind COMPRESS in the same packet, SELECT, a corpus message's BODY[] octet for
octet, NOOP, a second COMPRESS (NO [COMPRESSIONACTIVE]), APPEND with a synchronising
literal; on the plain port, after STARTTLS
and on the wrapper port (compression inside TLS). An unknown algorithm is BAD; garbage in
place of compressed data ends the session quietly; a huge line that compresses to little
is refused like any over-long line. The logs stay free of errors and tracebacks.
"""
from __future__ import annotations

import socket
import zlib

import pytest

from tests.conftest import CORPUS
from tests.integration.imapd_support import ImapSystem, client_tls

pytestmark = pytest.mark.integration
PASSWORD = "Deflate pass 7"
MESSAGES = ("05-mixed-attachment.eml", "02-utf8-8bit.eml", "09-folded-headers.eml")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-compress"))
    running.add_user("zed", PASSWORD)
    running.deliver("zed", *MESSAGES)
    yield running
    running.stop()


class Client:
    """IMAP over a socket, octet by octet; DEFLATE each way once switched on."""

    def __init__(self, port: int, tls: bool = False):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock = client_tls().wrap_socket(sock) if tls else sock
        self.received = bytearray()           # inflated once reading is compressed
        self.deflater = None
        self.inflater = None
        self.greeting = self.line()

    def starttls(self) -> None:
        assert self.command(b"t", b"STARTTLS")[-1].startswith(b"t OK")
        self.sock = client_tls().wrap_socket(self.sock)

    def login(self) -> None:
        assert self.command(b"l", b'LOGIN zed "' + PASSWORD.encode() + b'"')[-1].startswith(b"l OK")

    def send_compressed(self) -> None:
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)

    def read_compressed(self) -> None:
        """What follows the line just read is compressed, including what is already here."""
        self.inflater = zlib.decompressobj(-15)
        self.received = bytearray(self.inflater.decompress(bytes(self.received)))

    def pack(self, data: bytes) -> bytes:
        if self.deflater is None:
            return data
        return self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.pack(data))

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if data:
            self.received += self.inflater.decompress(data) if self.inflater else data
        return bool(data)

    def line(self) -> bytes:
        while b"\n" not in self.received:
            if not self._more():
                raise ConnectionError(f"closed; unread {bytes(self.received)!r}")
        end = self.received.index(b"\n") + 1
        line = bytes(self.received[:end])
        del self.received[:end]
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.received) < size:
            if not self._more():
                raise ConnectionError("closed inside a literal")
        data = bytes(self.received[:size])
        del self.received[:size]
        return data

    def response(self) -> bytes:
        """One response with its literals inline."""
        line = self.line()
        while line.endswith(b"}\r\n"):
            size = int(line[line.rindex(b"{") + 1:-3])
            line += self.exactly(size) + self.line()
        return line

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = []
        while not lines or not lines[-1].startswith(tag + b" "):
            lines.append(self.response())
        return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def ended(self) -> bool:
        """The server closed the connection (whatever it sent last is dropped)."""
        while self._more():
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def connect(system, way: str) -> Client:
    client = Client(system.port("wrapper" if way == "wrapper" else "plain"), tls=way == "wrapper")
    if way == "starttls":
        client.starttls()
    client.login()
    return client


def compress(client: Client, pipelined: bytes = b"") -> None:
    """COMPRESS DEFLATE, and `pipelined` compressed behind it in the same packet."""
    client.send_compressed()
    client.sock.sendall(b"z COMPRESS DEFLATE\r\n" + (client.pack(pipelined) if pipelined else b""))
    assert client.line() == b"z OK DEFLATE active\r\n"
    client.read_compressed()


def assert_logs_clean(system) -> None:
    server = system.ms.log("server")
    assert "Traceback" not in server and "failed:" not in server, server[-3000:]
    imap = system.ms.log("imap")
    assert "Traceback" not in imap and "failed:" not in imap, imap[-3000:]


@pytest.mark.parametrize("way", ["plain", "starttls", "wrapper"])
def test_compressed_session_with_commands_pipelined_behind_compress(system, way):
    client = connect(system, way)
    caps = client.command(b"c", b"CAPABILITY")
    assert b" COMPRESS=DEFLATE" in caps[0]
    compress(client, b"a SELECT INBOX\r\nb FETCH 1:3 (UID BODY.PEEK[])\r\nc NOOP\r\n")
    selected = client.until_tagged(b"a")
    assert b"* 3 EXISTS\r\n" in selected and selected[-1].startswith(b"a OK [READ-WRITE]")
    fetched = client.until_tagged(b"b")
    assert fetched[-1].startswith(b"b OK")
    for seq, name in enumerate(MESSAGES, 1):
        raw = (CORPUS / name).read_bytes()
        head = f"* {seq} FETCH (UID {seq} BODY[] {{{len(raw)}}}\r\n".encode()
        assert head + raw + b")\r\n" in fetched, name
    assert client.until_tagged(b"c") == [b"c OK NOOP completed\r\n"]
    assert client.command(b"d", b"COMPRESS DEFLATE") == [b"d NO [COMPRESSIONACTIVE] Compression is already active\r\n"]
    again = client.command(b"e", b"FETCH 2 BODY.PEEK[]")
    assert (CORPUS / MESSAGES[1]).read_bytes() in again[0] and again[-1].startswith(b"e OK")
    assert client.command(b"f", b"LOGOUT")[0].startswith(b"* BYE")
    assert client.ended()
    client.close()
    assert_logs_clean(system)


def test_compress_needs_a_login_and_a_known_algorithm(system):
    client = Client(system.port())
    assert b"COMPRESS" not in client.command(b"a", b"CAPABILITY")[0]
    assert client.command(b"b", b"COMPRESS DEFLATE")[-1].startswith(b"b BAD")
    client.login()
    assert client.command(b"c", b"COMPRESS LZ77")[-1].startswith(b"c BAD")
    assert client.command(b"d", b"COMPRESS")[-1].startswith(b"d BAD")
    assert client.command(b"e", b'COMPRESS "DEFLATE" x')[-1].startswith(b"e BAD")
    assert client.command(b"f", b"NOOP") == [b"f OK NOOP completed\r\n"], "still in clear"
    compress(client)
    assert client.command(b"g", b"NOOP") == [b"g OK NOOP completed\r\n"]
    client.close()


def test_garbage_instead_of_compressed_data_ends_the_session_quietly(system):
    client = connect(system, "plain")
    compress(client)
    assert client.command(b"a", b"NOOP") == [b"a OK NOOP completed\r\n"]
    client.sock.sendall(b"\xff" * 64)          # reserved block type: not DEFLATE
    assert client.ended()
    client.close()
    system.ms.wait_for_log("imap", "damaged compressed stream: ")
    assert_logs_clean(system)


def test_a_huge_line_that_compresses_to_little_is_refused_and_the_session_goes_on(system):
    client = connect(system, "wrapper")
    compress(client)
    client.send(b"a NOOP " + b"x" * (16 * 1024 * 1024) + b"\r\n")
    assert client.response() == b"* BAD Line too long\r\n"
    assert client.command(b"b", b"NOOP") == [b"b OK NOOP completed\r\n"]
    client.close()
    assert_logs_clean(system)


def test_append_with_a_synchronising_literal_inside_the_compressed_stream(system):
    raw = (CORPUS / "06-nested-multipart.eml").read_bytes()
    client = connect(system, "plain")
    compress(client)
    assert client.command(b"a", b"CREATE Zipped")[-1].startswith(b"a OK")
    client.send(b"b APPEND Zipped (\\Seen) {" + str(len(raw)).encode() + b"}\r\n")
    assert client.line().startswith(b"+ ")
    client.send(raw + b"\r\n")
    assert client.until_tagged(b"b")[-1].startswith(b"b OK [APPENDUID ")
    assert client.command(b"c", b"EXAMINE Zipped")[-1].startswith(b"c OK [READ-ONLY]")
    fetched = client.command(b"d", b"FETCH 1 BODY.PEEK[]")
    assert fetched[0] == f"* 1 FETCH (BODY[] {{{len(raw)}}}\r\n".encode() + raw + b")\r\n"
    client.close()
    assert_logs_clean(system)

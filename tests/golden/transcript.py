"""Golden transcripts: play a `.in` script against a real service, render the `.ref` text.

parse(text) -> Script: the header (@service, @source), the setup (@user, @deliver) and the
body lines, still unplayed. play(script, kind, connect, queued) -> list of transcript lines:
connect(source) opens a socket to the script's service, queued(queue_id) returns
(Envelope, message bytes) of a queued message (SMTP only). Every line goes through
normalise(), the one place that replaces what changes from run to run (queue ids, dates,
APOP timestamps, UIDVALIDITY, SASL challenges) by placeholders. The format of both files
is described in tests/golden/README.md.

The player keeps to the protocols' turn-taking: it sends a client line, then reads the
complete reply (SMTP: up to `NNN `; POP3: the status line, and for CAPA, LIST and UIDL
without an argument, RETR, TOP and AUTH without an argument the lines up to `.` after an
+OK), and only then sends the next line. After an SMTP `DATA` answered 354 the script's
lines are message text, sent without waiting, up to the line `.`. `@pipeline` sends a group
in one write and then reads one reply per line.
Diagnostics: a reply that does not come within REPLY_TIMEOUT, or a connection the server
closes early, is written into the transcript (`-- ...` lines) and ends the play, so that the
comparison with the .ref shows where it went wrong.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import select
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

REPLY_TIMEOUT = 10.0        # seconds for one reply (or for the close after @closed)
LONG_LINE = 120             # longer lines are shown abbreviated in the .ref
HEADER_DIRECTIVES = ("@service", "@source", "@user", "@deliver")
POP3_MULTILINE_ALWAYS = {"CAPA", "RETR", "TOP"}
POP3_MULTILINE_WITHOUT_ARGUMENT = {"LIST", "UIDL", "AUTH"}


class ScriptError(Exception):
    """The .in file itself is wrong (an unknown directive, a header line too late)."""


@dataclass
class Script:
    name: str
    service: str | None = None
    source: str = "127.0.0.1"
    users: list[tuple[str, str]] = field(default_factory=list)          # (name, password)
    deliveries: list[tuple[str, list[str]]] = field(default_factory=list)  # (user, corpus files)
    body: list[tuple[int, str]] = field(default_factory=list)          # (line number, text)


def parse(text: str, name: str = "script") -> Script:
    script = Script(name)
    in_body = False
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        word = line.split(" ", 1)[0]
        if word in HEADER_DIRECTIVES:
            if in_body:
                raise ScriptError(f"{name}:{number}: {word} belongs before the first client line")
            args = line.split()[1:]
            if word == "@service" and len(args) == 1:
                script.service = args[0]
            elif word == "@source" and len(args) == 1:
                script.source = args[0]
            elif word == "@user" and len(args) == 2:
                script.users.append((args[0], args[1]))
            elif word == "@deliver" and args and script.users:
                script.deliveries.append((script.users[-1][0], args))
            else:
                raise ScriptError(f"{name}:{number}: bad {word} line: {line!r}")
            continue
        if not in_body and (not line.strip() or line.startswith("#")):
            continue
        in_body = True
        script.body.append((number, line))
    while script.body and not script.body[-1][1].strip():
        script.body.pop()
    return script


# ---------------------------------------------------------------- rendering and normalising

def escape(data: bytes) -> str:
    """Bytes as readable ASCII: printable characters as they are, the rest as \\r \\n \\t \\xHH."""
    out = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append({0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t"}.get(byte, f"\\x{byte:02x}"))
    return "".join(out)


def unescape(text: str) -> bytes:
    """The inverse of escape() for @raw lines: \\r \\n \\t \\\\ \\xHH; anything else as it is."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            code = text[i + 1]
            if code in "rnt\\":
                out += {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\"}[code]
                i += 2
                continue
            if code == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
                continue
        out += char.encode("utf-8")
        i += 1
    return bytes(out)


def show(data: bytes) -> str:
    """escape(), with a long line cut to its beginning and its length."""
    text = escape(data)
    if len(text) > LONG_LINE:
        return f"{text[:48]}...[{len(data)} octets]"
    return text


_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"queued as [0-9A-F]{8,}"), "queued as <QUEUE-ID>"),
    (re.compile(rf"{_DAY}, \d{{1,2}} {_MONTH} \d{{4}} \d\d:\d\d:\d\d [+-]\d{{4}}(?: \([A-Z]+\))?"), "<DATE>"),
    (re.compile(r"<\d+\.\d+\.\d+@[^<>\s]+>"), "<APOP-TIMESTAMP>"),
    # UIDL: `n UIDVALIDITY.UID`; the UIDVALIDITY is the mailbox's creation time
    (re.compile(r"^(S: (?:\+OK )?\d+ )\d+\.(\d+)$"), r"\1<UIDVALIDITY>.\2"),
]
_CHALLENGE = re.compile(r"^(S: (?:334|\+) )([A-Za-z0-9+/]{16,}=*)$")


def normalise(line: str) -> str:
    """The one normaliser: placeholders for the parts of a transcript line that change per run."""
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    m = _CHALLENGE.match(line)
    if m:               # CRAM-MD5 (`<...@host>`) and SCRAM (`r=...,s=...`) challenges
        try:
            decoded = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded.startswith((b"<", b"r=")):
            line = m.group(1) + "<SASL-CHALLENGE>"
    return line


# ---------------------------------------------------------------- the wire

class Closed(Exception):
    pass


class NoReply(Exception):
    pass


class Wire:
    """A client socket that reads CRLF-terminated lines and keeps what it read ahead."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.open = True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            raise NoReply from None     # (SSLWantReadError: only a TLS record without data, a ticket)
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        if not chunk:
            self.open = False
            raise Closed
        self.buffer += chunk

    def line(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self.open:
                raise Closed
            self._fill(timeout)
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def rest(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        """Everything until the server closes; NoReply when it does not within timeout."""
        while self.open:
            try:
                self._fill(timeout)
            except Closed:
                break
        data, self.buffer = self.buffer, b""
        return data

    def pending(self, wait: float = 0.0) -> bytes:
        """What the server sent without being asked (read without waiting, or briefly)."""
        tls_buffered = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if self.open and not self.buffer and (tls_buffered or select.select([self.sock], [], [], wait)[0]):
            try:
                self._fill(wait)
            except (Closed, NoReply):
                pass
        data, self.buffer = self.buffer, b""
        return data

    def start_tls(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        assert not self.buffer, "data after the TLS go-ahead"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="mail.example.test")

    def close(self) -> None:
        self.open = False
        self.sock.close()


# ---------------------------------------------------------------- the player

class Player:
    def __init__(self, script: Script, kind: str, connect: Callable[[str], socket.socket],
                 queued: Callable[[str], tuple[object, bytes]] | None):
        assert kind in ("smtpd", "pop3d")
        self.script = script
        self.smtp = kind == "smtpd"
        self.connect = connect
        self.queued = queued
        self.out: list[str] = []
        self.wire: Wire | None = None
        self.greeting = b""
        self.data_mode = False
        self.last_queue_id: str | None = None
        self.pipeline: list[tuple[bytes, str]] | None = None

    # -- output
    def emit(self, prefix: str, text: str) -> None:
        self.out.append(normalise(f"{prefix}{text}"))

    def note(self, text: str) -> None:
        self.out.append(f"-- {text}")

    # -- connection
    def open(self) -> None:
        self.wire = Wire(self.connect(self.script.source))
        lines = self.read_reply("")
        self.greeting = lines[0] if lines else b""

    def read_reply(self, command: str) -> list[bytes]:
        """One complete reply to command (as sent), shown as S: lines."""
        assert self.wire is not None
        lines = [self.wire.line()]
        if self.smtp:
            while lines[-1][3:4] == b"-":
                lines.append(self.wire.line())
            m = re.search(rb"queued as ([0-9A-F]+)", lines[-1])
            if m:
                self.last_queue_id = m.group(1).decode()
        elif lines[0].startswith(b"+OK") and self.pop3_multiline(command):
            while len(lines) == 1 or lines[-1] != b".":
                lines.append(self.wire.line())
        for line in lines:
            self.emit("S: ", show(line))
        return lines

    @staticmethod
    def pop3_multiline(command: str) -> bool:
        words = command.split()
        if not words:
            return False
        verb = words[0].upper()
        return verb in POP3_MULTILINE_ALWAYS or (verb in POP3_MULTILINE_WITHOUT_ARGUMENT and len(words) == 1)

    # -- client lines
    def unsolicited(self, wait: float = 0.0) -> None:
        """Show what the server sent before its turn (a reply read as the next one's would mislead)."""
        extra = self.wire.pending(wait)
        for line in _split_lines(extra):
            self.emit("S: ", show(line))
        if extra:
            self.note("(sent by the server before the client's next line)")

    def client_line(self, text: str) -> None:
        if not self.data_mode:
            self.unsolicited()
            if not self.wire.open:
                raise Closed
        data = text.encode("utf-8") + b"\r\n"
        self.emit("C: ", show(data[:-2]))
        self.wire.send(data)
        if self.data_mode:
            if text == ".":
                self.data_mode = False
                self.read_reply(text)
            return
        self.after_reply(text, self.read_reply(text))

    def after_reply(self, command: str, reply: list[bytes]) -> None:
        if self.smtp and command.strip().upper() == "DATA" and reply[-1][:3] == b"354":
            self.data_mode = True

    def flush_pipeline(self) -> None:
        group, self.pipeline = self.pipeline or [], None
        self.unsolicited()
        self.note(f"pipelined: {len(group)} lines in one write")
        for data, _ in group:
            self.emit("C: ", show(data[:-2]))
        self.wire.send(b"".join(data for data, _ in group))
        for _, command in group:
            self.after_reply(command, self.read_reply(command))

    # -- directives
    def directive(self, number: int, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "@pipeline":
            self.pipeline = []
        elif word == "@end":
            self.flush_pipeline()
        elif word == "@raw":
            data = unescape(rest)
            self.emit("C~ ", escape(data))
            self.wire.send(data)
        elif word == "@read":
            self.read_reply("")
        elif word == "@fill":
            count, _, text = rest.partition(" ")
            filled = text + "x" * (int(count) - len(text))
            if self.pipeline is not None:
                self.pipeline.append((filled.encode() + b"\r\n", filled))
            else:
                self.client_line(filled)
        elif word == "@starttls":
            verb = "STARTTLS" if self.smtp else "STLS"
            self.emit("C: ", verb)
            self.wire.send(verb.encode() + b"\r\n")
            reply = self.read_reply(verb)
            if reply[-1][:3] == b"220" or reply[0].startswith(b"+OK"):
                self.wire.start_tls()
                self.note("TLS started")
        elif word == "@apop":
            name, password = rest.split()
            m = re.search(rb"<[^<>]*>", self.greeting)
            stamp = m.group(0) if m else b""
            digest = hashlib.md5(stamp + password.encode()).hexdigest()
            self.emit("C: ", f"APOP {name} <APOP-DIGEST>")
            self.wire.send(f"APOP {name} {digest}\r\n".encode())
            self.read_reply("APOP")
        elif word == "@queued":
            self.show_queued()
        elif word == "@closed":
            data = self.wire.rest()         # NoReply: still open after REPLY_TIMEOUT
            for piece in _split_lines(data):
                self.emit("S: ", show(piece))
            self.note("closed by the server")
            self.wire.close()
        elif word == "@reconnect":
            self.wire.close()
            self.note("new connection")
            self.open()
        else:
            raise ScriptError(f"{self.script.name}:{number}: unknown directive {word}")

    def show_queued(self) -> None:
        if not self.last_queue_id or self.queued is None:
            self.note("nothing was queued")
            return
        envelope, message = self.queued(self.last_queue_id)
        extras = [f"{key}={getattr(envelope, key)}" for key in ("ret", "envid", "body") if getattr(envelope, key)]
        self.emit("Q: ", " ".join([f"from=<{envelope.sender}>", *extras]))
        for rcpt in envelope.recipients:
            notify = f" notify={','.join(rcpt.notify)}" if rcpt.notify else ""
            orcpt = f" orcpt={rcpt.orcpt}" if rcpt.orcpt else ""
            self.emit("Q: ", f"to=<{rcpt.address}>{notify}{orcpt}")
        for line in _split_lines(message):
            self.emit("M: ", show(line))
        if message and not message.endswith(b"\r\n"):
            self.note("the message does not end with CRLF")

    # -- the play
    def play(self) -> list[str]:
        try:
            self.open()
            for index, (number, line) in enumerate(self.script.body):
                if not self.wire.open and line != "@reconnect":
                    self.note(f"{len(self.script.body) - index} script lines not played")
                    break
                if line.startswith("@"):
                    self.directive(number, line)
                elif self.pipeline is not None:
                    self.pipeline.append((line.encode("utf-8") + b"\r\n", line))
                elif not self.data_mode and (line.startswith("#") or not line.strip()):
                    continue
                else:
                    self.client_line(line)
        except (Closed, BrokenPipeError, ConnectionResetError):
            self.note("closed by the server")
        except NoReply:
            self.note(f"nothing within {REPLY_TIMEOUT:.0f} s (no reply, or no close after @closed)")
        finally:
            if self.wire is not None and self.wire.open:
                self.unsolicited(wait=0.05)
                self.wire.close()
        return self.out


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def play(script: Script, kind: str, connect: Callable[[str], socket.socket],
         queued: Callable[[str], tuple[object, bytes]] | None = None) -> list[str]:
    return Player(script, kind, connect, queued).play()

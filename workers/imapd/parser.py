"""IMAP command lines and literals into commands (RFC 3501 9, RFC 9051, RFC 7888 LITERAL+/-).

await read_command(reader, limits, on_continuation, line=None) -> Command | None
    Reads one command from the asyncio.StreamReader: its lines, and the literals their ends
    announce. Before a synchronising literal `{n}` it awaits on_continuation() (the session
    sends `+ OK`); a non-synchronising `{n+}` is read at once (with limits.literal_plus
    False, i.e. only LITERAL- announced, up to 4096 octets). `line` is the first line when
    the caller has read it already (conn.read_command, which waits for it draining-aware);
    None at end of stream before a command. A line the caller drops as too long (LineTooLong)
    may end in a `{n+}` that is then not skipped: read with a limit above limits.line.
Command(tag, name, args): name upper case, "UID FETCH" etc. for UID commands; args are
    Atom (str: atoms, numbers, flags, sequence sets), String (str: quoted, UTF-8 allowed),
    Literal (bytes; .binary for literal8 `~{n}`), NIL, Section (`BODY.PEEK[1.HEADER.FIELDS
    (DATE)]<0.2048>` as one token) and lists of these (nested).
Limits: line length, literal size (APPEND's and the others'), whole command size, list
    depth, token count.
    Literals are held in memory (an APPEND message too: at most append_literal octets; the
    messages of one MULTIAPPEND, RFC 3502, at most append_total together).
Errors: Bad (status BAD, or NO [TOOBIG] for an APPEND message over its limit; optional
    response code, text, tag when known, else untagged; close: the session must
    end after answering, because a non-synchronising literal it will not read follows and
    the stream cannot be resynchronised, RFC 7888 4). After a Bad the rest of the command
    has been read and dropped (non-synchronising literals too, when within the limits); an
    oversize synchronising literal is refused without the continuation and left unread.
    Disconnected (also a ConnectionError) when the stream ends inside a command. Nothing
    else is raised for any input.
Helpers: astring(token) -> str; sequence_set(token, largest) over store.index's
    parse_sequence_set; mutf7_decode / mutf7_encode (mailbox names, RFC 3501 5.1.3; Bad for
    invalid input). Strings in responses: workers/imapd/mime.py imap_string.
"""
from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from store.index import parse_sequence_set

LITERAL_MINUS_MAX = 4096          # RFC 7888 5: the largest {n+} with only LITERAL- announced
MAX_NUMBER = 2**32 - 1            # number (RFC 3501 9)
_CHUNK = 64 * 1024                # dropped literals are read in blocks of this size
_TAIL = 32                        # octets kept of an over-long line to see its literal marker


@dataclass(frozen=True)
class Limits:
    line: int = 64 * 1024              # one line, line end included (Dovecot imap_max_line_length)
    literal: int = 64 * 1024           # a literal of any command but APPEND
    append_literal: int = 10_240_000   # a message of APPEND (message_size_limit)
    command: int = 1024 * 1024         # lines and literals of one command; APPEND: + append_total
    append_total: int = 0              # the messages of one APPEND together (at least append_literal)
    depth: int = 16                    # nested parentheses
    tokens: int = 10_000               # tokens of one command, list openings included
    literal_plus: bool = True          # LITERAL+ (False: LITERAL-)


class ParserError(Exception):
    """The base of this module's errors."""


class Bad(ParserError):
    """Answer `tag status [code] text` (untagged when tag is None); close: end the session then."""

    def __init__(self, text: str, tag: str | None = None, status: str = "BAD",
                 code: str | None = None, close: bool = False):
        super().__init__(text)
        self.text, self.tag, self.status, self.code, self.close = text, tag, status, code, close


class Disconnected(ParserError, ConnectionError):
    """The stream ended inside a command."""


class Atom(str):
    pass


class String(str):
    """A quoted string."""


class Literal(bytes):
    binary: bool = False


class _Nil:
    def __repr__(self) -> str:
        return "NIL"


NIL = _Nil()


@dataclass(frozen=True)
class Section:
    """A FETCH attribute with a section: BODY, BODY.PEEK, BINARY, BINARY.PEEK, BINARY.SIZE."""
    name: str                          # upper case
    part: tuple[int, ...] = ()         # 1.2 -> (1, 2)
    text: str = ""                     # HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME or ""
    fields: tuple[str, ...] = ()       # the header names of HEADER.FIELDS[.NOT]
    partial: tuple[int, int] | None = None   # <offset.length>


@dataclass
class Command:
    tag: str
    name: str
    args: list = field(default_factory=list)


@dataclass(frozen=True)
class _Marker:
    size: int                          # MAX_NUMBER + 1 for a number too large
    sync: bool
    binary: bool


_TAG = re.compile(rb"[!#$&',-\[\]-z|}~]+")        # ASTRING-CHAR but "+"
_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9-]*")
_ATOM = re.compile(rb"[!#-'*-z|}~]+")            # CHAR but CTL, SP, (, ), {, "; ] % * \\ kept
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_ESCAPE = re.compile(rb'\\(["\\])')
_MARKER = re.compile(rb"(~?)\{(\d+)(\+?)\}")
_TAIL_MARKER = re.compile(rb"(~?)\{(\d+)(\+?)\}\r?\n\Z")
_SECTION_START = re.compile(rb"(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[", re.IGNORECASE)
_SECTION = re.compile(rb"([0-9A-Za-z.]*)(?: \(([^()\r\n]*)\))?\](?:<(\d{1,10})\.(\d{1,10})>)?")
_SPEC = re.compile(r"(?:((?:[1-9]\d{0,9}\.)*[1-9]\d{0,9})(?:\.(HEADER|HEADER\.FIELDS|HEADER\.FIELDS\.NOT|TEXT|MIME))?"
                   r"|(HEADER|HEADER\.FIELDS|HEADER\.FIELDS\.NOT|TEXT))?")
_FIELD = re.compile(rb'"(?:[^"\\\r\n\x00]|\\["\\])*"|[!#-\'*-z|}~]+')


def _marker(match: re.Match) -> _Marker:
    digits = match.group(2)
    size = int(digits) if len(digits) <= 10 else MAX_NUMBER + 1
    return _Marker(min(size, MAX_NUMBER + 1), not match.group(3), bool(match.group(1)))


def _unquote(raw: bytes) -> String:
    try:
        return String(_ESCAPE.sub(rb"\1", raw).decode("utf-8"))
    except UnicodeDecodeError:
        raise Bad("Invalid UTF-8 in quoted string") from None


def _number(digits: bytes) -> int:
    value = int(digits)
    if value > MAX_NUMBER:
        raise Bad("Number too large")
    return value


class _Builder:
    """The command being parsed, line by line, literal by literal."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.tag: str | None = None
        self.name = ""
        self.args: list = []
        self.stack: list[list] = [self.args]
        self.tokens = 0
        self.size = 0
        self.spaced = True              # a token may start here (after SP or "(")
        self.deferred: Bad | None = None

    def literal_limit(self) -> int:
        return self.limits.append_literal if self.name == "APPEND" else self.limits.literal

    def command_limit(self) -> int:
        extra = max(self.limits.append_literal, self.limits.append_total) if self.name == "APPEND" else 0
        return self.limits.command + extra

    def count(self, size: int) -> None:
        self.size += size
        if self.size > self.command_limit():
            raise Bad("Command too long")

    def first(self, line: bytes) -> _Marker | None:
        self.count(len(line))
        data = line.rstrip(b"\n").removesuffix(b"\r")
        tag = _TAG.match(data)
        if not tag:
            raise Bad("Missing or invalid tag" if data else "Empty command")
        self.tag = tag.group().decode("ascii")
        pos = tag.end()
        name = _NAME.match(data, pos + 1)
        if data[pos:pos + 1] != b" " or not name:
            raise Bad("Missing or invalid command name")
        self.name = name.group().decode("ascii").upper()
        pos = name.end()
        if self.name == "UID":
            sub = _NAME.match(data, pos + 1)
            if data[pos:pos + 1] != b" " or not sub:
                raise Bad("Missing UID command name")
            self.name += " " + sub.group().decode("ascii").upper()
            pos = sub.end()
        if pos < len(data) and data[pos:pos + 1] != b" ":
            raise Bad("Invalid command name")
        return self.scan(data, pos)

    def line(self, line: bytes) -> _Marker | None:
        self.count(len(line))
        return self.scan(line.rstrip(b"\n").removesuffix(b"\r"), 0)

    def add(self, token) -> None:
        self.tokens += 1
        if self.tokens > self.limits.tokens:
            raise Bad("Too many arguments")
        self.stack[-1].append(token)
        self.spaced = False

    def literal(self, data: bytes, marker: _Marker) -> None:
        # An APPEND message may hold NUL (stored as given, as Dovecot does; random-byte
        # test mail has it); any other literal with NUL is BAD (RFC 3501 4.3).
        if not marker.binary and self.name != "APPEND" and b"\0" in data and self.deferred is None:
            self.deferred = Bad("NUL in literal")
        token = Literal(data)
        token.binary = marker.binary
        self.add(token)

    def scan(self, data: bytes, pos: int) -> _Marker | None:
        """Tokens of data from pos; the literal marker that ends the line, if any."""
        end = len(data)
        while pos < end:
            char = data[pos]
            if char == 0x20:
                self.spaced = True
                pos += 1
                continue
            if char == 0x29:                            # ")"
                if len(self.stack) == 1:
                    raise Bad("Unbalanced parentheses")
                self.stack.pop()
                self.spaced = False
                pos += 1
                continue
            if not self.spaced:
                raise Bad("Missing space between arguments")
            if char == 0x28:                            # "("
                if len(self.stack) > self.limits.depth:
                    raise Bad("Lists nested too deep")
                nested: list = []
                self.add(nested)
                self.stack.append(nested)
                self.spaced = True
                pos += 1
            elif char == 0x22:                          # '"'
                quoted = _QUOTED.match(data, pos)
                if not quoted:
                    raise Bad("Invalid quoted string")
                self.add(_unquote(quoted.group(1)))
                pos = quoted.end()
            elif char == 0x7b or data.startswith(b"~{", pos):
                marker = _MARKER.match(data, pos)
                if not marker or marker.end() != end:
                    raise Bad("Invalid literal")
                return _marker(marker)
            elif section := _SECTION_START.match(data, pos):
                pos = self.section(data, section.group(1).decode("ascii").upper(), section.end())
            elif atom := _ATOM.match(data, pos):
                text = atom.group().decode("ascii")
                self.add(NIL if text.upper() == "NIL" else Atom(text))
                pos = atom.end()
            else:
                raise Bad("Invalid character in command")
        if len(self.stack) > 1:
            raise Bad("Unbalanced parentheses")
        return None

    def section(self, data: bytes, name: str, pos: int) -> int:
        match = _SECTION.match(data, pos)
        if not match:
            raise Bad("Invalid section")
        spec = _SPEC.fullmatch(match.group(1).decode("ascii").upper())
        if not spec:
            raise Bad("Invalid section")
        part = tuple(int(p) for p in spec.group(1).split(".")) if spec.group(1) else ()
        text = spec.group(2) or spec.group(3) or ""
        fields: tuple[str, ...] = ()
        listed = match.group(2)
        if text.startswith("HEADER.FIELDS"):
            if listed is None:
                raise Bad("Missing header field names")
            items = [m.group() for m in _FIELD.finditer(listed)]
            if not items or b" ".join(items) != listed:
                raise Bad("Invalid header field names")
            fields = tuple(_unquote(i[1:-1]) if i.startswith(b'"') else i.decode("ascii") for i in items)
        elif listed is not None:
            raise Bad("Invalid section")
        if name.startswith("BINARY") and text:
            raise Bad("Invalid section")
        partial = None
        if match.group(3) is not None:
            partial = (_number(match.group(3)), _number(match.group(4)))
            if partial[1] == 0 or name == "BINARY.SIZE":
                raise Bad("Invalid partial")
        self.add(Section(name, part, text, fields, partial))
        return match.end()

    def command(self) -> Command:
        if self.deferred:
            raise self.deferred
        assert self.tag is not None
        return Command(self.tag, self.name, self.args)


@dataclass
class _Line:
    data: bytes            # the whole line; for an over-long one its first octets only
    tail: bytes            # the last octets (the whole line when not over-long)
    too_long: bool


async def _read_line(reader: asyncio.StreamReader, limit: int) -> _Line | None:
    """One line; an over-long one is read to its end and dropped. None at end of stream."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise Disconnected("end of stream inside a command") from None
        return None
    except asyncio.LimitOverrunError as e:
        head = tail = await reader.readexactly(e.consumed)
        while True:
            try:
                rest = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise Disconnected("end of stream inside a command") from None
            except asyncio.LimitOverrunError as more:
                tail = (tail + await reader.readexactly(more.consumed))[-_TAIL:]
                continue
            return _Line(head[:limit], (tail + rest)[-_TAIL:], True)
    return _Line(line, line, len(line) > limit)


async def _drop(reader: asyncio.StreamReader, size: int) -> None:
    try:
        while size > 0:
            size -= len(await reader.readexactly(min(size, _CHUNK)))
    except asyncio.IncompleteReadError:
        raise Disconnected("end of stream inside a literal") from None


def _check(builder: _Builder, marker: _Marker) -> None:
    """Bad when the literal may not be read (close for a non-synchronising one)."""
    close = not marker.sync
    if close and not builder.limits.literal_plus and marker.size > LITERAL_MINUS_MAX:
        raise Bad("Non-synchronizing literal too large", code="TOOBIG", close=True)
    if marker.size > builder.literal_limit() or builder.size + marker.size > builder.command_limit():
        if builder.name == "APPEND":
            raise Bad("Message too large", status="NO", code="TOOBIG", close=close)
        raise Bad("Literal too large", code="TOOBIG", close=close)


async def _skip_rest(reader: asyncio.StreamReader, builder: _Builder, tail: bytes) -> bool:
    """Drop what follows a bad line (tail: its end) up to the command's end.

    False when it cannot be done: a non-synchronising literal too large to read follows.
    """
    while True:
        match = _TAIL_MARKER.search(tail)
        if not match:
            return not tail.rstrip(b"\r\n").endswith(b"+}")
        marker = _marker(match)
        if marker.sync:
            return True                 # refused without "+": the client sends no literal
        try:
            _check(builder, marker)
        except Bad:
            return False
        builder.size += marker.size
        await _drop(reader, marker.size)
        line = await _read_line(reader, builder.limits.line)
        if line is None:
            raise Disconnected("end of stream inside a command")
        builder.size += len(line.data)
        tail = line.tail


async def read_command(reader: asyncio.StreamReader, limits: Limits,
                       on_continuation: Callable[[], Awaitable[None]],
                       line: bytes | None = None) -> Command | None:
    first = _Line(line, line, len(line) > limits.line) if line is not None else await _read_line(reader, limits.line)
    if first is None:
        return None
    builder = _Builder(limits)
    current = first
    try:
        if first.too_long:
            tag = _TAG.match(first.data)
            if tag and first.data[tag.end():tag.end() + 1] == b" ":
                builder.tag = tag.group().decode("ascii")
            raise Bad("Line too long")
        marker = builder.first(first.data)
        while marker is not None:
            _check(builder, marker)
            builder.count(marker.size)
            if marker.sync:
                await on_continuation()
            try:
                data = await reader.readexactly(marker.size)
            except asyncio.IncompleteReadError:
                raise Disconnected("end of stream inside a literal") from None
            builder.literal(data, marker)
            current = await _read_line(reader, limits.line)
            if current is None:
                raise Disconnected("end of stream inside a command")
            if current.too_long:
                raise Bad("Line too long")
            marker = builder.line(current.data)
        return builder.command()
    except Bad as error:
        error.tag = builder.tag
        if not error.close and not await _skip_rest(reader, builder, current.tail):
            error.close = True
        raise


def astring(token) -> str:
    """The text of an atom, string or literal argument (UTF-8); Bad for NIL, lists, sections."""
    if isinstance(token, str):
        return str(token)
    if isinstance(token, Literal) and not token.binary:
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad("Invalid UTF-8 in literal") from None
    raise Bad("String expected")


def sequence_set(token, largest: int) -> list[tuple[int, int]]:
    """A sequence-set argument as inclusive ranges (`*` is largest)."""
    if not isinstance(token, Atom):
        raise Bad("Invalid sequence set")
    try:
        return parse_sequence_set(str(token), largest)
    except ValueError:
        raise Bad("Invalid sequence set") from None


def _b64_decode(text: str) -> str:
    raw = text.replace(",", "/")
    if not raw or len(raw) % 4 == 1 or "=" in raw:
        raise Bad("Invalid modified UTF-7")
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:                             # binascii.Error, or not ASCII
        raise Bad("Invalid modified UTF-7") from None
    if len(data) % 2 or base64.b64encode(data).decode().rstrip("=").replace("/", ",") != text:
        raise Bad("Invalid modified UTF-7")        # an odd octet, or bits left over that are not zero
    try:
        decoded = data.decode("utf-16-be")
    except UnicodeDecodeError:
        raise Bad("Invalid modified UTF-7") from None
    if any(" " <= c <= "~" for c in decoded):
        raise Bad("Invalid modified UTF-7")        # printable ASCII must stand for itself
    return decoded


_MUTF7 = re.compile(r"&([^-]*)-|([ -%'-~]+)|(.)", re.DOTALL)


def mutf7_decode(name: bytes | str) -> str:
    """A mailbox name from modified UTF-7 (RFC 3501 5.1.3); Bad when it is not valid."""
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            raise Bad("Invalid modified UTF-7") from None
    out = []
    shifted_before = False
    for match in _MUTF7.finditer(name):
        shifted, direct, other = match.groups()
        if other is not None:
            raise Bad("Invalid modified UTF-7")
        if direct is not None:
            out.append(direct)
            shifted_before = False
        elif shifted == "":
            out.append("&")
            shifted_before = False
        else:
            if shifted_before:
                raise Bad("Invalid modified UTF-7")  # two shifted runs in a row: not canonical
            out.append(_b64_decode(shifted))
            shifted_before = True
    return "".join(out)


_NON_DIRECT = re.compile(r"[^ -~]+")


def mutf7_encode(name: str) -> str:
    """A mailbox name in modified UTF-7; Bad for a lone surrogate."""
    def shift(match: re.Match) -> str:
        data = match.group().encode("utf-16-be")
        return "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"
    try:
        return _NON_DIRECT.sub(shift, name.replace("&", "&-"))
    except UnicodeEncodeError:
        raise Bad("Invalid mailbox name") from None

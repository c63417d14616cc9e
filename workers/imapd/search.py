"""SEARCH and UID SEARCH (RFC 3501 6.4.4, RFC 9051 6.4.4) with ESEARCH's RETURN (RFC 4731)
and SEARCHRES (RFC 5182).

Handler: search(session, command) answers `* SEARCH n ...` (UIDs for UID SEARCH; an empty
`* SEARCH` when nothing matches), or `* ESEARCH (TAG "t") [UID] MIN/MAX/COUNT/ALL` when the
command has RETURN (...) (an empty list means ALL) or the session ENABLEd IMAP4rev2.
RETURN (SAVE) keeps the result's UIDs in the selection (selected.py `saved`; only the MIN/MAX
ones when asked without ALL/COUNT; emptied when the command fails; no ESEARCH for SAVE
alone); `$` names them in search keys and, through selected.resolve, in other commands.
A string argument may be the atom NIL (the text "NIL").
Shared with SORT and THREAD (workers/imapd/sort.py, thread.py): return_options, answer,
forget_on_failure, esearch_line, compact_set (keeps a sort order), and
    parse_program(tokens) -> Node    the search keys (every key of RFC 3501/9051); Bad for
        an unknown key or a malformed argument, more than MAX_KEYS keys or MAX_DEPTH nesting
    check_charset(session, name)     UTF-8 and US-ASCII; else NO [BADCHARSET (UTF-8 US-ASCII)];
        once UTF8=ACCEPT is enabled only UTF-8, another is BAD (RFC 6855 3, errata 4029:
        the strings are UTF-8 whatever the label says)
    await matching(session, program) -> ascending sequence numbers of the selected mailbox
    Content(path, budget)            one message file read lazily: decoded header values,
        the decoded text of its parts; Budget bounds the work of one command
    decode_words(value), address_list(value)   RFC 2047 decoding of header values
Evaluation, in two passes. First every key is given the set of messages that surely match
and the set that may match, from the index View alone (flags, keywords, sizes, internal
dates, UIDs and sequence numbers via View.search; header, body and Date: keys "may" match
anything). Messages that may but need not match are then decided one by one, in a thread,
reading each file once and only as far as needed (the header alone for header keys), the
cheap keys of every AND/OR tried before the ones that open the file. Matching is a
case-insensitive substring test on decoded text: RFC 2047 words in headers, address headers
also as `name <addr>` lists, and for BODY/TEXT the transfer encodings (base64,
quoted-printable) of every part and the charsets of text parts; image/audio/video parts and
parts over MAX_PART octets are not searched. SENTBEFORE/SENTON/SENTSINCE compare the
Date: header's day (its zone ignored), falling back on the internal date when it has none;
BEFORE/ON/SINCE the internal date's UTC day. RECENT, OLD and NEW ask the session's \\Recent
(workers/imapd/selected.py). MODSEQ (RFC 7162; its entry name and type are not looked at)
turns CONDSTORE on and adds the result's highest modseq to the answer.
Diagnostics: BAD for malformed programs; NO [LIMIT] (logged) when a command's search reads
more than SEARCH_BYTES or runs past SEARCH_SECONDS; a message expunged meanwhile (its file
gone) does not match.
"""
from __future__ import annotations

import asyncio
import bisect
import calendar
import datetime
import email.utils
import re
import time
from email.errors import MessageError
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32

from store._index_view import known_flag_mask
from store.index import parse_sequence_set, ranges_from_values
from workers.imapd import condstore, general
from workers.imapd.mime import MAX_HEADER
from workers.imapd.parser import NIL, Atom, Bad, astring

CAPABILITIES = ("ESEARCH", "SEARCHRES")

CHARSETS = ("UTF-8", "US-ASCII")
MAX_KEYS = 1000                  # search keys in one program
MAX_DEPTH = 100                  # nesting of NOT / OR / parentheses
MAX_PART = 8 * 1024 * 1024       # octets of one MIME part (encoded) that BODY/TEXT decode
SEARCH_BYTES = 1024 ** 3         # octets of message files one command may read
SEARCH_SECONDS = 120.0           # time one command may spend reading and decoding messages
LOOP_WORK = 1_000_000            # messages x keys evaluated on the event loop; more: in a thread
_DAY = 86400
_NOT_SEARCHED = ("image", "audio", "video")
_ADDRESS_HEADERS = ("from", "to", "cc", "bcc")
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                        "sep", "oct", "nov", "dec"), 1)}
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
_SEQUENCE = re.compile(r"[0-9*:,]+\Z")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


class SearchLimit(Exception):
    """The command's search budget is spent."""


class Gone(Exception):
    """The message file is no longer there (expunged meanwhile)."""


class Budget:
    """The reading and decoding one command may do."""

    def __init__(self, octets: int = SEARCH_BYTES, seconds: float = SEARCH_SECONDS):
        self.octets = octets
        self.deadline = time.monotonic() + seconds

    def spend(self, octets: int) -> None:
        self.octets -= octets
        if self.octets < 0:
            raise SearchLimit("too much message data to search")
        self.check()

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise SearchLimit("search took too long")


# ---------------------------------------------------------------- decoding

def _text_of(value: str) -> str:
    """A header value as the email package gives it (8-bit octets as surrogates) -> text."""
    try:
        return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value


def decode_words(value: str) -> str:
    """Unfolded header value with its RFC 2047 encoded-words decoded."""
    text = _FOLD.sub("", _text_of(value))
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, ValueError, TypeError, IndexError, AssertionError, MessageError):
        # what the email package raises on hostile encoded-words: keep the raw text
        return text


def address_list(value: str) -> list[tuple[str, str]]:
    """(decoded display name, address) of each address in a header value."""
    unfolded = _FOLD.sub("", _text_of(value))
    return [(decode_words(name), addr) for name, addr in email.utils.getaddresses([unfolded])]


def _decoded_payload(data: bytes, charset: str | None) -> str:
    if charset and charset not in ("us-ascii", "ascii", "utf-8"):
        try:
            return data.decode(charset, "replace")
        except LookupError:
            pass
    return data.decode("utf-8", "replace")


def _header_text(message) -> str:
    return "\n".join(f"{name}: {decode_words(value)}" for name, value in message.items())


def _part_texts(part, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if part.is_multipart():
        embedded = part.get_content_maintype() == "message"
        for sub in part.get_payload():
            if embedded:
                out.append(_header_text(sub))
            _part_texts(sub, out, depth + 1)
        return
    maintype = part.get_content_maintype()
    payload = part.get_payload()
    if maintype in _NOT_SEARCHED or not isinstance(payload, str) or len(payload) > MAX_PART:
        return
    data = part.get_payload(decode=True) or b""
    out.append(_decoded_payload(data, part.get_content_charset() if maintype == "text" else None))


def _header_length(data: bytes) -> int:
    """Where the header of a message ends (after its blank line), -1 if not within data."""
    for blank in (b"\n\n", b"\n\r\n"):
        pos = data.find(blank)
        if pos >= 0:
            return pos + len(blank)
    return 0 if data.startswith((b"\n", b"\r\n")) else -1


class Content:
    """One message file, read at most once and only as far as the keys need (header first)."""

    CHUNK = 16 * 1024

    def __init__(self, path: str, budget: Budget):
        self.path = path
        self.budget = budget
        self._head: bytes | None = None
        self._raw: bytes | None = None
        self._header = None
        self._texts: list[str] | None = None

    def _open(self):
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise Gone(self.path) from None

    def head(self) -> bytes:
        if self._head is None:
            if self._raw is not None:
                end = _header_length(self._raw[:MAX_HEADER])
                self._head = self._raw[:MAX_HEADER] if end < 0 else self._raw[:end]
            else:
                data = b""
                with self._open() as f:
                    while len(data) < MAX_HEADER:
                        chunk = f.read(self.CHUNK)
                        self.budget.spend(len(chunk))
                        data += chunk
                        if not chunk or _header_length(data) >= 0:
                            break
                end = _header_length(data)
                self._head = data[:MAX_HEADER] if end < 0 else data[:end]
        return self._head

    def raw(self) -> bytes:
        if self._raw is None:
            with self._open() as f:
                self._raw = f.read()
            self.budget.spend(len(self._raw))
        return self._raw

    def header(self):
        """The top-level header fields (an email.message.Message without its body)."""
        if self._header is None:
            self._header = BytesHeaderParser(policy=compat32).parsebytes(self.head())
        return self._header

    def values(self, name: str) -> list[str]:
        """Every raw value of one header field (as the email package gives them)."""
        return [str(v) for v in self.header().get_all(name, [])]

    def header_text(self) -> str:
        return _header_text(self.header())

    def body_texts(self) -> list[str]:
        """The decoded text of every searched part (and the headers of embedded messages)."""
        if self._texts is None:
            message = BytesParser(policy=compat32).parsebytes(self.raw())
            texts: list[str] = []
            _part_texts(message, texts, 0)
            self._texts = texts
            self.budget.check()
        return self._texts


# ---------------------------------------------------------------- the program

class Scope:
    """What one evaluation sees: the snapshot (a store MailboxView) and the work budget."""

    def __init__(self, mailbox, budget: Budget, is_recent=lambda uid: False, saved: list[int] = ()):
        self.mailbox = mailbox
        self.saved = saved                  # the UIDs `$` names (SEARCHRES)
        self.view = mailbox.view
        self.is_recent = is_recent          # uid -> \\Recent in this session
        self.everything = set(range(1, len(self.view) + 1))
        self.budget = budget


class Node:
    """One search key. bounds() -> (sequence numbers that surely match, those that may)
    from the index alone; holds() decides one message (content: its lazy Content)."""
    costly = False

    def bounds(self, scope: Scope) -> tuple[set[int], set[int]]:
        raise NotImplementedError

    def holds(self, scope: Scope, seq: int, content: Content) -> bool:
        raise NotImplementedError


class Indexed(Node):
    """A key the index answers: select() through View.search, matches() one message."""

    def bounds(self, scope):
        found = self.select(scope)
        return found, found

    def holds(self, scope, seq, content):
        return self.matches(scope, seq)

    def select(self, scope: Scope) -> set[int]:
        raise NotImplementedError

    def matches(self, scope: Scope, seq: int) -> bool:
        raise NotImplementedError


class Constant(Indexed):
    def __init__(self, value: bool):
        self.value = value

    def select(self, scope):
        return scope.everything if self.value else set()

    def matches(self, scope, seq):
        return self.value


class RecentKey(Indexed):
    """RECENT (present) and OLD (not): \\Recent is the session's, not the index's."""

    def __init__(self, present: bool):
        self.present = present

    def select(self, scope):
        return {seq for seq in scope.everything if self.matches(scope, seq)}

    def matches(self, scope, seq):
        return scope.is_recent(scope.view.uid(seq)) == self.present


class FlagKey(Indexed):
    def __init__(self, flag: str, present: bool):
        self.flag, self.present = flag, present

    def select(self, scope):
        if self.present:
            return set(scope.view.search(has=[self.flag]))
        return set(scope.view.search(lacks=[self.flag]))

    def matches(self, scope, seq):
        mask = known_flag_mask([self.flag], scope.view.keywords, strict=True)
        carried = mask is not None and scope.view.flag_bits(seq) & mask == mask
        return carried == self.present


class SizeKey(Indexed):
    def __init__(self, larger: bool, octets: int):
        self.larger, self.octets = larger, octets

    def select(self, scope):
        if self.larger:
            return set(scope.view.search(larger=self.octets))
        return set(scope.view.search(smaller=self.octets))

    def matches(self, scope, seq):
        size = scope.view.record(seq).size
        return size > self.octets if self.larger else size < self.octets


class DateKey(Indexed):
    """Internal date in [since, before) (epoch seconds; None: unbounded)."""

    def __init__(self, since: int | None, before: int | None):
        self.since, self.before = since, before

    def select(self, scope):
        return set(scope.view.search(since=self.since, before=self.before))

    def matches(self, scope, seq):
        date = scope.view.record(seq).internal_date
        return (self.since is None or date >= self.since) and (self.before is None or date < self.before)


def _within(value: int, ranges: list[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(ranges, (value, 2**63)) - 1
    return i >= 0 and ranges[i][0] <= value <= ranges[i][1]


class SetKey(Indexed):
    """A sequence set, or UID set (uid true), resolved against the snapshot when evaluated;
    `$` (either way) is the saved result's UIDs."""

    def __init__(self, text: str, uid: bool):
        self.text, self.uid = text, uid or text == "$"
        self._ranges: list[tuple[int, int]] | None = None

    def ranges(self, scope: Scope) -> list[tuple[int, int]]:
        if self._ranges is None and self.text == "$":
            self._ranges = ranges_from_values(list(scope.saved))
        elif self._ranges is None:
            view = scope.view
            largest = (view.uid(len(view)) if len(view) else 0) if self.uid else len(view)
            self._ranges = parse_sequence_set(self.text, largest)
        return self._ranges

    def select(self, scope):
        if self.uid:
            return set(scope.view.search(uid_ranges=self.ranges(scope)))
        last = len(scope.view)
        return {seq for lo, hi in self.ranges(scope) for seq in range(lo, min(hi, last) + 1)}

    def matches(self, scope, seq):
        return _within(scope.view.uid(seq) if self.uid else seq, self.ranges(scope))


class ModseqKey(Indexed):
    """MODSEQ n (RFC 7162): messages whose modseq is n or more. The store keeps one modseq per
    message, so the optional entry name and type are accepted and not looked at."""

    def __init__(self, modseq: int):
        self.modseq = modseq

    def select(self, scope):
        return {seq for seq in scope.everything if self.matches(scope, seq)}

    def matches(self, scope, seq):
        return scope.view.record(seq).modseq >= self.modseq


def uses_modseq(node: Node) -> bool:
    """Whether a program has a MODSEQ key (its results then tell their highest modseq)."""
    children = getattr(node, "children", None) or ([node.child] if isinstance(node, Not) else [])
    return isinstance(node, ModseqKey) or any(uses_modseq(c) for c in children)


def _modseq_key(reader: _Reader) -> ModseqKey:
    token = reader.take("argument of MODSEQ")
    if not isinstance(token, Atom):          # an entry name, then its type
        entry_type = reader.take("entry type of MODSEQ")
        if not isinstance(entry_type, Atom) or entry_type.upper() not in ("ALL", "SHARED", "PRIV"):
            raise Bad("MODSEQ entry type must be all, shared or priv")
        token = reader.take("argument of MODSEQ")
    return ModseqKey(condstore.modseq_value(token, "MODSEQ"))


class Costly(Node):
    """A key that reads the message file."""
    costly = True

    def bounds(self, scope):
        return set(), scope.everything


def _contains(haystack: str, needle: str) -> bool:
    return needle in haystack.casefold()


class HeaderKey(Costly):
    """A substring of (any instance of) a header field; address fields also as `name <addr>`."""

    def __init__(self, name: str, needle: str):
        self.name, self.needle = name.lower(), needle.casefold()

    def holds(self, scope, seq, content):
        for value in content.values(self.name):
            if _contains(decode_words(value), self.needle):
                return True
            if self.name in _ADDRESS_HEADERS:
                listed = ", ".join(f"{name} <{addr}>" if name else addr for name, addr in address_list(value))
                if _contains(listed, self.needle):
                    return True
        return False


class BodyKey(Costly):
    """BODY (the decoded parts) or TEXT (the header fields too)."""

    def __init__(self, needle: str, with_header: bool):
        self.needle, self.with_header = needle.casefold(), with_header

    def holds(self, scope, seq, content):
        if self.with_header and _contains(content.header_text(), self.needle):
            return True
        return any(_contains(text, self.needle) for text in content.body_texts())


def sent_day(scope: Scope, seq: int, content: Content) -> int:
    """The day (proleptic ordinal) of the Date: header, its zone ignored; else the internal date's."""
    for value in content.values("date"):
        try:
            parsed = email.utils.parsedate_tz(_text_of(value))
            if parsed is not None:
                return datetime.date(*parsed[:3]).toordinal()
        except (ValueError, IndexError, TypeError, OverflowError):
            pass
    internal = scope.view.record(seq).internal_date
    return datetime.datetime.fromtimestamp(internal, datetime.UTC).date().toordinal()


class SentKey(Costly):
    """Date: header day in [since, before) (ordinals; None: unbounded)."""

    def __init__(self, since: int | None, before: int | None):
        self.since, self.before = since, before

    def holds(self, scope, seq, content):
        day = sent_day(scope, seq, content)
        return (self.since is None or day >= self.since) and (self.before is None or day < self.before)


class And(Node):
    def __init__(self, children: list[Node]):
        self.children = sorted(children, key=lambda c: c.costly)    # cheap keys tried first
        self.costly = any(c.costly for c in children)

    def bounds(self, scope):
        sure, maybe = None, None
        for child in self.children:
            s, m = child.bounds(scope)
            sure = s if sure is None else sure & s
            maybe = m if maybe is None else maybe & m
            if not maybe:
                return set(), set()
        return sure, maybe

    def holds(self, scope, seq, content):
        return all(child.holds(scope, seq, content) for child in self.children)


class Or(Node):
    def __init__(self, first: Node, second: Node):
        self.children = sorted((first, second), key=lambda c: c.costly)
        self.costly = first.costly or second.costly

    def bounds(self, scope):
        (s1, m1), (s2, m2) = (child.bounds(scope) for child in self.children)
        return s1 | s2, m1 | m2

    def holds(self, scope, seq, content):
        return any(child.holds(scope, seq, content) for child in self.children)


class Not(Node):
    def __init__(self, child: Node):
        self.child = child
        self.costly = child.costly

    def bounds(self, scope):
        sure, maybe = self.child.bounds(scope)
        return scope.everything - maybe, scope.everything - sure

    def holds(self, scope, seq, content):
        return not self.child.holds(scope, seq, content)


# ---------------------------------------------------------------- parsing

_FLAGS = {"ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
          "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
          "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
          "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False)}
_HEADERS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_CONSTANTS = {"ALL": True}
_DATES = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}


def search_date(token) -> datetime.date:
    """date (RFC 3501 9): d-Mon-yyyy, quoted or not."""
    text = astring(token)
    match = _DATE.match(text)
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if month is None:
        raise Bad(f"Invalid date {text!r} (d-Mon-yyyy expected)")
    try:
        return datetime.date(int(match.group(3)), month, int(match.group(1)))
    except ValueError:
        raise Bad(f"Invalid date {text!r}") from None


def _date_bounds(key: str, day: datetime.date) -> tuple[int | None, int | None]:
    """[since, before) of a date key: ordinals for SENT*, epoch seconds for the others."""
    start = day.toordinal() if key.startswith("SENT") else calendar.timegm(day.timetuple())
    step = 1 if key.startswith("SENT") else _DAY
    kind = key.removeprefix("SENT")
    if kind == "BEFORE":
        return None, start
    if kind == "SINCE":
        return start, None
    return start, start + step


class _Reader:
    def __init__(self, tokens: list):
        self.tokens, self.i, self.keys = tokens, 0, 0

    def more(self) -> bool:
        return self.i < len(self.tokens)

    def take(self, what: str):
        if not self.more():
            raise Bad(f"Missing {what} in search program")
        self.i += 1
        return self.tokens[self.i - 1]

    def string(self, key: str) -> str:
        token = self.take(f"argument of {key}")
        return "NIL" if token is NIL else astring(token)      # an atom NIL is an astring here

    def number(self, key: str) -> int:
        token = self.take(f"argument of {key}")
        if not isinstance(token, Atom) or not token.isdigit() or len(token) > 10 or int(token) > 2**32 - 1:
            raise Bad(f"{key} needs a number")
        return int(token)

    def sequence_set(self, key: str) -> str:
        token = self.take(f"argument of {key}")
        return _sequence_text(token, key)


def _sequence_text(token, key: str) -> str:
    if not isinstance(token, Atom):
        raise Bad(f"Invalid {key}")
    text = str(token)
    if text == "$":
        return text
    try:
        parse_sequence_set(text, 2**32 - 1)
    except ValueError as e:
        raise Bad(f"Invalid {key}: {e}") from None
    return text


def _keys(reader: _Reader, depth: int, counter: _Reader) -> list[Node]:
    nodes = []
    while reader.more():
        nodes.append(_key(reader, depth, counter))
    return nodes


def _key(reader: _Reader, depth: int, counter: _Reader) -> Node:
    counter.keys += 1
    if counter.keys > MAX_KEYS:
        raise Bad(f"Too many search keys (at most {MAX_KEYS})")
    if depth > MAX_DEPTH:
        raise Bad(f"Search program nested too deeply (at most {MAX_DEPTH})")
    token = reader.take("search key")
    if isinstance(token, list):
        if not token:
            raise Bad("Empty parenthesised search key list")
        children = _keys(_Reader(token), depth + 1, counter)
        return children[0] if len(children) == 1 else And(children)
    if not isinstance(token, Atom):
        raise Bad("Search key expected")
    key = token.upper()
    if key in _FLAGS:
        return FlagKey(*_FLAGS[key])
    if key in _CONSTANTS:
        return Constant(_CONSTANTS[key])
    if key in ("RECENT", "OLD"):
        return RecentKey(key == "RECENT")
    if key == "NEW":
        return And([RecentKey(True), FlagKey("\\Seen", False)])
    if key in ("KEYWORD", "UNKEYWORD"):
        flag = reader.take(f"argument of {key}")
        if not isinstance(flag, Atom):
            raise Bad(f"{key} needs a flag keyword")
        return FlagKey(str(flag), key == "KEYWORD")
    if key in _HEADERS:
        return HeaderKey(_HEADERS[key], reader.string(key))
    if key == "HEADER":
        name = reader.string(key)
        if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
            raise Bad("HEADER needs a field name")
        return HeaderKey(name, reader.string(key))
    if key in ("BODY", "TEXT"):
        return BodyKey(reader.string(key), key == "TEXT")
    if key in ("LARGER", "SMALLER"):
        return SizeKey(key == "LARGER", reader.number(key))
    if key in _DATES:
        since, before = _date_bounds(key, search_date(reader.take(f"argument of {key}")))
        return SentKey(since, before) if key.startswith("SENT") else DateKey(since, before)
    if key == "MODSEQ":
        return _modseq_key(reader)
    if key == "UID":
        return SetKey(reader.sequence_set(key), uid=True)
    if key == "NOT":
        return Not(_key(reader, depth + 1, counter))
    if key == "OR":
        first = _key(reader, depth + 1, counter)
        return Or(first, _key(reader, depth + 1, counter))
    if _SEQUENCE.match(key) or key == "$":
        return SetKey(_sequence_text(token, "sequence set"), uid=False)
    raise Bad(f"Unknown search key {str(token)[:40]}")


def parse_program(tokens: list) -> Node:
    """Search keys (implicitly ANDed) -> the program's root node."""
    if not tokens:
        raise Bad("Missing search criteria")
    reader = _Reader(tokens)
    nodes = _keys(reader, 0, reader)
    return nodes[0] if len(nodes) == 1 else And(nodes)


def check_charset(session, token) -> None:
    name = astring(token)
    if general.utf8_accept(session) and name.upper() != "UTF-8":
        raise Bad("After ENABLE UTF8=ACCEPT the only charset is UTF-8")
    if name.upper() not in CHARSETS:
        raise Bad(f"Unsupported charset {name[:40]}", status="NO", code=f"BADCHARSET ({' '.join(CHARSETS)})")


def _program_size(node: Node) -> int:
    children = getattr(node, "children", None) or ([node.child] if isinstance(node, Not) else [])
    return 1 + sum(_program_size(c) for c in children)


# ---------------------------------------------------------------- evaluation

def evaluate(scope: Scope, program: Node) -> list[int]:
    """Ascending sequence numbers matching program (reads files: call off the event loop
    when the program is costly)."""
    sure, maybe = program.bounds(scope)
    found = set(sure)
    for seq in sorted(maybe - sure):
        scope.budget.check()
        try:
            if program.holds(scope, seq, Content(scope.mailbox.path(seq), scope.budget)):
                found.add(seq)
        except Gone:
            pass
    return sorted(found)


async def matching(session, program: Node) -> list[int]:
    """The selected mailbox's sequence numbers matching program (NO [LIMIT] when the budget
    runs out)."""
    selected = session.selected
    scope = Scope(selected.view, Budget(), selected.is_recent, selected.saved)
    try:
        if program.costly or len(scope.view) * _program_size(program) > LOOP_WORK:
            return await asyncio.to_thread(evaluate, scope, program)
        return evaluate(scope, program)
    except SearchLimit as e:
        session.log.info(f"search limit: user={session.user} mailbox={session.selected.name} {e}")
        raise Bad(f"Search not completed: {e}", status="NO", code="LIMIT") from None


# ---------------------------------------------------------------- the command

_RETURNS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")


def return_options(args: list) -> list[str] | None:
    """Pops RETURN (...) from the front of args -> the options asked (None: no RETURN; an
    empty list means ALL)."""
    if not (args and isinstance(args[0], Atom) and args[0].upper() == "RETURN"):
        return None
    args.pop(0)
    if not args or not isinstance(args[0], list):
        raise Bad("RETURN needs a list of options")
    options = []
    for token in args.pop(0):
        name = str(token).upper() if isinstance(token, Atom) else ""
        if name not in _RETURNS:
            raise Bad(f"Unsupported RETURN option {str(token)[:40]}")
        options.append(name)
    return options or ["ALL"]


def compact_set(numbers: list[int]) -> str:
    """Numbers -> an IMAP sequence set keeping their order (`2,4:7` for 2 4 5 6 7): only
    ascending runs are merged, so a sort order survives."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in runs)


def esearch_line(tag: str, uid: bool, numbers: list[int], options: list[str]) -> str:
    """The ESEARCH response; MIN and MAX are the first and last of numbers (ascending for
    SEARCH, in sort order for SORT, RFC 5267)."""
    quoted = tag.replace("\\", "\\\\").replace('"', '\\"')
    words = [f'ESEARCH (TAG "{quoted}")'] + (["UID"] if uid else [])
    if numbers and "MIN" in options:
        words.append(f"MIN {numbers[0]}")
    if numbers and "MAX" in options:
        words.append(f"MAX {numbers[-1]}")
    if "COUNT" in options:
        words.append(f"COUNT {len(numbers)}")
    if numbers and "ALL" in options:
        words.append(f"ALL {compact_set(numbers)}")
    return " ".join(words)


def returned(seqs: list[int], options: list[str] | None) -> list[int]:
    """The messages an answer names: only the MIN / MAX ones when those are asked without ALL
    or COUNT. seqs: in the answer's order."""
    if options and seqs and not {"ALL", "COUNT"} & set(options) and {"MIN", "MAX"} & set(options):
        return ([seqs[0]] if "MIN" in options else []) + ([seqs[-1]] if "MAX" in options else [])
    return seqs


def save_result(session, seqs: list[int], options: list[str] | None) -> None:
    """RETURN (SAVE) (RFC 5182): the messages `$` names from now on; only the MIN/MAX ones
    when those are asked without ALL or COUNT. seqs: in the answer's order."""
    if not options or "SAVE" not in options:
        return
    view = session.selected.view.view
    session.selected.saved = sorted({view.uid(seq) for seq in returned(seqs, options)})


def forget_on_failure(session, options: list[str] | None) -> None:
    """A failed command with RETURN (SAVE) leaves `$` empty (RFC 5182 2.1)."""
    if options and "SAVE" in options:
        session.selected.saved = []


def highest_modseq(view, seqs: list[int], options: list[str] | None) -> int | None:
    """A MODSEQ search's result modseq (RFC 7162 3.1.5): the highest of the messages returned;
    None for none."""
    return max((view.record(seq).modseq for seq in returned(seqs, options)), default=None)


async def answer(session, command, uid: bool, seqs: list[int], options: list[str] | None, verb: str,
                 modseq: bool = False) -> None:
    """`* SEARCH`/`* SORT` n... (verb), or ESEARCH with RETURN options (nothing for SAVE alone);
    modseq (the program had a MODSEQ key): with the highest modseq of the result."""
    view = session.selected.view.view
    numbers = [view.uid(seq) for seq in seqs] if uid else seqs
    save_result(session, seqs, options)
    highest = None
    if modseq:
        await condstore.enable(session)          # a CONDSTORE-enabling command
        highest = highest_modseq(view, seqs, options)
    if options is None:
        await session.untagged(" ".join([verb, *map(str, numbers)] + ([f"(MODSEQ {highest})"] if highest else [])))
    elif options != ["SAVE"]:
        await session.untagged(esearch_line(command.tag, uid, numbers, options)
                               + (f" MODSEQ {highest}" if highest else ""))
    await session.ok(f"{command.name} completed")


def take_charset(session, args: list) -> None:
    """Pops CHARSET name from the front of args, refusing an unsupported one."""
    if args and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
        args.pop(0)
        if not args:
            raise Bad("CHARSET needs a name")
        check_charset(session, args.pop(0))


async def search(session, command) -> None:
    uid = command.name.startswith("UID ")
    args = list(command.args)
    options = return_options(args)
    if options is None and "IMAP4REV2" in session.enabled:
        options = ["ALL"]
    try:
        take_charset(session, args)
        program = parse_program(args)
        seqs = await matching(session, program)
    except Bad:
        forget_on_failure(session, options)
        raise
    await answer(session, command, uid, seqs, options, "SEARCH", uses_modseq(program))

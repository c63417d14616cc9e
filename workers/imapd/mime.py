"""A message's IMAP structure: ENVELOPE, BODY/BODYSTRUCTURE and BODY[section] (RFC 3501
§6.4.5, §7.4.2; RFC 9051).

Structure.parse(raw) scans the raw bytes once (CRLF or bare LF, as stored) and keeps the
exact offsets of every entity's header and body; to_bytes()/from_bytes() store it compactly
(JSON) next to the index entry. The functions work from raw bytes plus an optional Structure
(parsed on the spot when not given), and all return bytes in IMAP syntax:

    envelope(raw, structure=None) -> bytes          the ENVELOPE item
    bodystructure(raw, extensible=True, structure=None) -> bytes   BODYSTRUCTURE / BODY
    section(raw, spec, structure=None) -> bytes | None   BODY[spec] contents, bytes as stored
    partial(data, origin, count) -> bytes           the <origin.count> slice
    imap_string(value) -> bytes                     an nstring: NIL, quoted or {n}\\r\\n literal

section() returns None for a part that does not exist; the server then answers NIL for it
(the body item is an nstring, RFC 3501 §7.4.2), while an existing empty part is "".

Broken MIME never raises. Header lines end at the first blank line, or at the first line that
is neither a field nor a continuation (that line starts the body). A multipart without a
boundary parameter, without any delimiter line or without parts, and a multipart or message
part nested deeper than MAX_DEPTH, is served as one text/plain leaf holding its body (as
Dovecot does); a delimiter line right after another one starts no part (RFC 2046 wants a
line break before each delimiter, as Python's email reads it too); past MAX_PARTS entities the last part keeps the rest of its multipart.
message/rfc822 (and message/global) with a 7bit/8bit/binary encoding holds an embedded
message; other message/* types are basic parts. Header fields past MAX_HEADER octets of a
header are not looked at.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

MAX_DEPTH = 100
MAX_PARTS = 10000
MAX_HEADER = 256 * 1024

LEAF, MULTI, MESSAGE = 0, 1, 2
_FIELD_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]*:")
_DIGEST = 4     # flag kept with a part whose default type is message/rfc822


@dataclass
class Part:
    """One entity: header raw[header:body], body raw[body:end]. MESSAGE parts have one child,
    the embedded message's entity; MULTI parts their body parts."""
    header: int
    body: int
    end: int
    kind: int = LEAF
    digest: bool = False
    children: list[Part] = field(default_factory=list)

    def to_list(self) -> list:
        flags = self.kind | (_DIGEST if self.digest else 0)
        out = [self.header, self.body, self.end, flags]
        if self.children:
            out.append([c.to_list() for c in self.children])
        return out

    @classmethod
    def from_list(cls, item: list) -> Part:
        part = cls(item[0], item[1], item[2], item[3] & 3, bool(item[3] & _DIGEST))
        if len(item) > 4:
            part.children = [cls.from_list(c) for c in item[4]]
        return part


class Structure:
    """The parsed entity tree of one message (root = the message itself)."""

    def __init__(self, root: Part):
        self.root = root

    @classmethod
    def parse(cls, raw: bytes) -> Structure:
        return cls(_Parser(raw).entity(0, len(raw), 0, False))

    def to_bytes(self) -> bytes:
        return json.dumps(self.root.to_list(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Structure:
        return cls(Part.from_list(json.loads(data)))


# ---- scanning ----------------------------------------------------------------------------

def _header_end(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header lines, start of the body) of the entity at raw[start:end]."""
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        stop = end if nl < 0 else nl + 1
        line = raw[pos:stop].rstrip(b"\r\n")
        if not line:
            return pos, stop
        if line[:1] not in (b" ", b"\t") and not _FIELD_LINE.match(line) \
                and not (pos == start and line.startswith(b"From ")):
            return pos, pos
        pos = stop
    return end, end


def _fields(raw: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """(lower-case name, raw value with its folding) of each field in raw[start:end]."""
    out: list[tuple[bytes, bytes]] = []
    end = min(end, start + MAX_HEADER)
    for line in _FIELD_BREAK.split(raw[start:end]):
        name, colon, value = line.partition(b":")
        if colon and name and name[:1] not in (b" ", b"\t"):
            out.append((name.strip().lower(), value))
    return out


def _unfold(value: bytes) -> bytes:
    return _FOLD.sub(b"", value).strip()


def _get(fields: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in fields:
        if n == name:
            return _unfold(v)
    return None


_PARAM_ITEM = re.compile(rb'(?:"(?:\\.|[^"\\])*"?|[^;"])*')     # up to a ";" outside quotes
_QUOTED_PAIR = re.compile(rb"\\(.)")
_CONTINUATION = re.compile(rb"([^*]+)\*(\d+)(\*?)")
_TYPE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*/\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)")
_FOLD = re.compile(rb"\r?\n")
_FIELD_BREAK = re.compile(rb"\r?\n(?![ \t])")


def _split_params(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The first item of a `type/sub; name=value; ...` field and its raw parameters."""
    items, pos = [], 0
    while True:
        match = _PARAM_ITEM.match(value, pos)
        items.append(match.group())
        pos = match.end() + 1            # past the ";"
        if pos > len(value):
            break
    params = []
    for item in items[1:]:
        name, eq, val = item.partition(b"=")
        name, val = name.strip(), val.strip()
        if not eq or not name:
            continue
        if len(val) >= 2 and val[:1] == b'"' and val[-1:] == b'"':
            val = _QUOTED_PAIR.sub(rb"\1", val[1:-1])
        params.append((name, val))
    return items[0].strip(), _join_rfc2231(params)


def _join_rfc2231(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Merges RFC 2231 continuations name*0, name*1* ... into one name (name* if encoded)."""
    out: list[tuple[bytes, bytes]] = []
    pieces: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    for name, val in params:
        m = _CONTINUATION.fullmatch(name)
        if not m:
            out.append((name, val))
            continue
        base = m.group(1)
        if base not in pieces:
            pieces[base] = []
            out.append((base, b""))
        pieces[base].append((int(m.group(2)), bool(m.group(3)), val))
    for i, (name, val) in enumerate(out):
        if name in pieces and not val:
            segs = sorted(pieces.pop(name))
            if segs[0][1]:
                name += b"*"
            out[i] = (name, b"".join(s[2] for s in segs))
    return out


def _param(params: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in params:
        if n.lower() == name:
            return v
    return None


def _content_type(fields, digest: bool) -> tuple[bytes, bytes, list]:
    """(type, subtype, params) of an entity, the default when the field is missing or bad."""
    value = _get(fields, b"content-type")
    if value is not None:
        first, params = _split_params(value)
        m = _TYPE.fullmatch(first)
        if m:
            return m.group(1), m.group(2), params
    if digest:
        return b"message", b"rfc822", []
    return b"text", b"plain", [(b"charset", b"us-ascii")]


class _Parser:
    def __init__(self, raw: bytes):
        self.raw = raw
        self.parts = 0

    def entity(self, start: int, end: int, depth: int, digest: bool) -> Part:
        self.parts += 1
        _, body = _header_end(self.raw, start, end)
        part = Part(start, body, end, LEAF, digest)
        if depth >= MAX_DEPTH:
            return part
        fields = _fields(self.raw, start, body)
        ctype, sub, params = _content_type(fields, digest)
        ctype, sub = ctype.lower(), sub.lower()
        if ctype == b"multipart":
            boundary = _param(params, b"boundary")
            if boundary and boundary.rstrip():
                self.split(part, boundary.rstrip(), depth, sub == b"digest")
        elif ctype == b"message" and sub in (b"rfc822", b"global"):
            cte = (_get(fields, b"content-transfer-encoding") or b"7bit").lower()
            if cte in (b"7bit", b"8bit", b"binary"):
                part.kind = MESSAGE
                part.children = [self.entity(body, end, depth + 1, False)]
        return part

    def split(self, part: Part, boundary: bytes, depth: int, digest: bool) -> None:
        raw = self.raw
        delim = re.compile(rb"(?m)^--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
        spans, start = [], None
        for m in delim.finditer(raw, part.body, part.end):
            if start is not None and m.start() > start:
                if not m.group(1) and self.parts + len(spans) + 1 >= MAX_PARTS:
                    break
                stop = m.start()
                if raw[stop - 1:stop] == b"\n":
                    stop -= 2 if stop - 1 > start and raw[stop - 2:stop - 1] == b"\r" else 1
                spans.append((start, stop))
            start = m.end()
            if m.group(1):
                start = None
                break
        if start is not None:
            spans.append((start, part.end))
        if not spans:
            return
        part.kind = MULTI
        part.children = [self.entity(s, e, depth + 1, digest) for s, e in spans]


# ---- IMAP strings ------------------------------------------------------------------------

_NEEDS_LITERAL = re.compile(rb"[\x00\r\n\x80-\xff]")


def imap_string(value: bytes | str | None) -> bytes:
    """NIL, a quoted string, or a literal for CR, LF, NUL or 8-bit octets."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if _NEEDS_LITERAL.search(value):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _list(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")" if items else b"NIL"


# ---- addresses ---------------------------------------------------------------------------

_TOKEN = re.compile(rb'\s+|"(?:\\.|[^"\\])*"?|\[(?:\\.|[^\]\\])*\]?|[<>@,;:.]|[^\s"()<>@,;:.\[\]]+|.')


def _tokens(value: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, text): kind is b"q" a quoted string (text as written), b"c" a comment (its
    inside), b"a" an atom or domain literal, else the special itself."""
    out, pos, n = [], 0, len(value)
    while pos < n:
        if value[pos:pos + 1] == b"(":
            depth, i = 0, pos
            while i < n:
                c = value[i:i + 1]
                if c == b"\\":
                    i += 1
                elif c == b"(":
                    depth += 1
                elif c == b")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            out.append((b"c", value[pos + 1:i].strip()))
            pos = i + 1
            continue
        m = _TOKEN.match(value, pos)
        text = m.group()
        pos = m.end()
        if text.isspace():
            continue
        if text[:1] == b'"':
            out.append((b"q", text))
        elif text in (b"<", b">", b"@", b",", b";", b":", b"."):
            out.append((text, text))
        elif text != b")":
            out.append((b"a", text))
    return out


def _unquote(text: bytes) -> bytes:
    if text[:1] == b'"':
        text = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
        return re.sub(rb"\\(.)", rb"\1", text)
    return text


def _address(name, adl, mailbox, host) -> bytes:
    return b"(" + b" ".join(imap_string(x) for x in (name, adl, mailbox, host)) + b")"


def _addresses(value: bytes | None) -> bytes:
    """The ENVELOPE address list of a header value (NIL when it holds none)."""
    if value is None:
        return b"NIL"
    return _list([_address(*address) for address in addresses(value)])


def addresses(value: bytes) -> list[tuple]:
    """The ENVELOPE addresses of a header value, as (name, adl, mailbox, host) tuples of
    bytes or None: a group starts with (None, None, group name, None) and ends with four
    Nones (RFC 3501 7.4.2). Shared with SORT (workers/imapd/sort.py)."""
    toks = _tokens(value)
    out: list[tuple] = []
    i, n, in_group = 0, len(toks), False
    while i < n:
        phrase, comment = [], None
        while i < n and toks[i][0] in (b"a", b"q", b".", b"c"):
            kind, text = toks[i]
            if kind == b"c":
                comment = comment or text
            else:
                phrase.append(toks[i])
            i += 1
        kind = toks[i][0] if i < n else None
        if kind == b":" and not in_group:
            out.append((None, None, _words(phrase) or b"", None))
            in_group, i = True, i + 1
            continue
        if kind == b"<":
            i += 1
            route = []
            if i < n and toks[i][0] == b"@":       # obsolete route: @a,@b:
                j = i
                while j < n and toks[j][0] not in (b":", b">"):
                    j += 1
                if j < n and toks[j][0] == b":":
                    route, i = toks[i:j], j + 1
            j = i
            while j < n and toks[j][0] != b">":
                j += 1
            local, host = _addr_spec(toks[i:j])
            i = j + 1
            while i < n and toks[i][0] == b"c":
                i += 1
            adl = b"".join(t[1] for t in route if t[0] != b",").replace(b"@", b",@")[1:] \
                if route else None
            out.append((_words(phrase) or None, adl, local, host))
        elif phrase or kind == b"@":
            j = i
            while j < n and toks[j][0] in (b"@", b"a", b".", b"q", b"c"):
                if toks[j][0] == b"c":
                    comment = comment or toks[j][1]
                j += 1
            local, host = _addr_spec(phrase + [t for t in toks[i:j] if t[0] != b"c"])
            i = j
            out.append((comment, None, local, host))
        if i < n and toks[i][0] == b";" and in_group:
            out.append((None, None, None, None))
            in_group = False
        if i < n and toks[i][0] not in (b"a", b"q", b"<"):
            i += 1
    if in_group:
        out.append((None, None, None, None))
    return out


def _words(toks) -> bytes:
    """A display name: words unquoted and joined by one space."""
    words: list[bytes] = []
    for kind, text in toks:
        if kind == b"." and words:
            words[-1] += b"."
        else:
            words.append(_unquote(text) if kind == b"q" else text)
    return b" ".join(words)


def _addr_spec(toks) -> tuple[bytes, bytes]:
    """(mailbox, host) from the tokens of local@domain; a quoted local part stays quoted."""
    at = next((k for k, t in enumerate(toks) if t[0] == b"@"), None)
    local = toks if at is None else toks[:at]
    domain = [] if at is None else toks[at + 1:]
    mailbox = b"".join(t[1] for t in local if t[0] in (b"a", b"q", b"."))
    host = b"".join(t[1] for t in domain if t[0] in (b"a", b"."))
    return mailbox or b"MISSING_MAILBOX", host or b"MISSING_DOMAIN"


# ---- ENVELOPE and BODYSTRUCTURE ----------------------------------------------------------

def _structure(raw: bytes, structure: Structure | None) -> Structure:
    return structure if structure is not None else Structure.parse(raw)


def _envelope_of(raw: bytes, part: Part) -> bytes:
    fields = _fields(raw, part.header, part.body)
    string = lambda name: imap_string(_get(fields, name))
    addresses = lambda name: _addresses(_get(fields, name))
    sender_from, sender, reply_to = addresses(b"from"), addresses(b"sender"), addresses(b"reply-to")
    items = [string(b"date"), string(b"subject"), sender_from,
             sender if sender != b"NIL" else sender_from,
             reply_to if reply_to != b"NIL" else sender_from,
             addresses(b"to"), addresses(b"cc"), addresses(b"bcc"),
             string(b"in-reply-to"), string(b"message-id")]
    return b"(" + b" ".join(items) + b")"


def envelope(raw: bytes, structure: Structure | None = None) -> bytes:
    return _envelope_of(raw, _structure(raw, structure).root)


def _lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _params(params) -> bytes:
    return _list([imap_string(n) + b" " + imap_string(v) for n, v in params])


def _extension(fields) -> list[bytes]:
    disposition = _get(fields, b"content-disposition")
    if disposition:
        kind, params = _split_params(disposition)
        dsp = b"(" + imap_string(kind) + b" " + _params(params) + b")"
    else:
        dsp = b"NIL"
    language = _get(fields, b"content-language")
    langs = [w for w in re.split(rb"[\s,]+", language or b"") if w]
    lang = imap_string(langs[0]) if len(langs) == 1 else _list([imap_string(w) for w in langs])
    return [dsp, lang, imap_string(_get(fields, b"content-location"))]


def _body(raw: bytes, part: Part, extensible: bool) -> bytes:
    fields = _fields(raw, part.header, part.body)
    ctype, sub, params = _content_type(fields, part.digest)
    if part.kind == MULTI:
        items = [b"".join(_body(raw, c, extensible) for c in part.children), imap_string(sub)]
        if extensible:
            items += [_params(params)] + _extension(fields)
        return b"(" + b" ".join(items) + b")"
    lower = (ctype.lower(), sub.lower())
    if lower[0] == b"multipart" or (lower[0] == b"message" and part.kind != MESSAGE
                                     and lower[1] in (b"rfc822", b"global")):
        ctype, sub, params = b"text", b"plain", [(b"charset", b"us-ascii")]
        lower = (b"text", b"plain")
    body = raw[part.body:part.end]
    items = [imap_string(ctype), imap_string(sub), _params(params),
             imap_string(_get(fields, b"content-id")),
             imap_string(_get(fields, b"content-description")),
             imap_string(_get(fields, b"content-transfer-encoding") or b"7bit"),
             b"%d" % len(body)]
    if part.kind == MESSAGE:
        inner = part.children[0]
        items += [_envelope_of(raw, inner), _body(raw, inner, extensible), b"%d" % _lines(body)]
    elif lower[0] == b"text":
        items.append(b"%d" % _lines(body))
    if extensible:
        items += [imap_string(_get(fields, b"content-md5"))] + _extension(fields)
    return b"(" + b" ".join(items) + b")"


def bodystructure(raw: bytes, extensible: bool = True,
                  structure: Structure | None = None) -> bytes:
    """BODYSTRUCTURE (extensible) or BODY of the message."""
    return _body(raw, _structure(raw, structure).root, extensible)


# ---- sections ----------------------------------------------------------------------------

_SECTION = re.compile(r"((?:[1-9][0-9]*)(?:\.[1-9][0-9]*)*)?\.?"
                      r"(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?\s*(.*)",
                      re.IGNORECASE | re.DOTALL)


def _resolve(root: Part, numbers: list[int]) -> Part | None:
    """The part a section number names (RFC 3501: part 1 of a non-multipart message is its
    body; the numbers after a message/rfc822 part go into the embedded message)."""
    context: Part | None = root
    part = root
    for n in numbers:
        if context is None:
            return None
        if context.kind == MULTI:
            if n > len(context.children):
                return None
            part = context.children[n - 1]
        elif n == 1:
            part = context
        else:
            return None
        context = part.children[0] if part.kind == MESSAGE else \
            part if part.kind == MULTI else None
    return part


def _header_fields(raw: bytes, part: Part, names: set[bytes], keep: bool) -> bytes:
    head_end, _ = _header_end(raw, part.header, part.body)
    block = raw[part.header:head_end]
    out = []
    for item in re.split(rb"(?<=\n)(?![ \t])", block):
        name, colon, _ = item.partition(b":")
        if item and (colon and name.strip().lower() in names) == keep:
            out.append(item)
    eol = b"\r\n" if b"\r\n" in raw[part.header:part.body] or not block else b"\n"
    return b"".join(out) + eol


def section(raw: bytes, spec: str, structure: Structure | None = None) -> bytes | None:
    """BODY[spec] contents as stored, or None when the part does not exist (answer NIL)."""
    m = _SECTION.fullmatch(spec.strip())
    if not m or (m.group(3) and not (m.group(2) or "").upper().startswith("HEADER.FIELDS")):
        return None
    root = _structure(raw, structure).root
    numbers = [int(x) for x in m.group(1).split(".")] if m.group(1) else []
    text = (m.group(2) or "").upper()
    part = _resolve(root, numbers)
    if part is None:
        return None
    if not text:
        return raw[part.body:part.end] if numbers else raw
    if text == "MIME":
        return raw[part.header:part.body] if numbers else None
    if numbers:
        if part.kind != MESSAGE:
            return None
        part = part.children[0]
    if text == "HEADER":
        return raw[part.header:part.body]
    if text == "TEXT":
        return raw[part.body:part.end]
    names = m.group(3).strip()
    if not (names.startswith("(") and names.endswith(")")):
        return None
    wanted = {n.strip('"').lower().encode() for n in names[1:-1].split()}
    return _header_fields(raw, part, wanted, text == "HEADER.FIELDS")


def partial(data: bytes, origin: int, count: int) -> bytes:
    """BODY[...]<origin.count>: empty when origin is past the end."""
    return data[origin:origin + count]

"""FETCH and UID FETCH (RFC 3501 6.4.5 / 7.4.2, RFC 9051, RFC 3516 BINARY).

fetch(session, command) answers `[UID] FETCH set items`; items are a macro (ALL, FAST, FULL),
one item, or a parenthesised list of items:
    UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ        from the index View: no file is read
    ENVELOPE BODY BODYSTRUCTURE                      from the structure cache (below)
    RFC822 RFC822.HEADER RFC822.TEXT BODY[section]<o.n> BODY.PEEK[...]
    BINARY[part]<o.n> BINARY.PEEK[...] BINARY.SIZE[part]   from the message file
Each message gets one `* n FETCH (UID u ...)`: UID first (always in UID FETCH), then the
items in the order asked, each once. Responses are collected and sent in SEND_CHUNK blocks.
CONDSTORE / QRESYNC (RFC 7162, workers/imapd/condstore.py): MODSEQ and the CHANGEDSINCE
modifier (only messages whose modseq is above it; implies MODSEQ) turn CONDSTORE on; UID
FETCH's VANISHED modifier (QRESYNC enabled) first sends `* VANISHED (EARLIER)` of the set's
UIDs expunged since. Binary items decode base64 and quoted-printable (soft line breaks and
trailing blanks dropped, hard line breaks as stored).
\\Seen: a non-PEEK BODY[...] / BINARY[...] / RFC822 / RFC822.TEXT on a read-write mailbox
(with the ACL's s right: workers/imapd/acl.py)
sets \\Seen on the messages lacking it (one store write, before any response) and their
responses then carry FLAGS (and MODSEQ once CONDSTORE is on); selected.own_change keeps the update mechanism from repeating it.
Structure cache: one blob per message, MailStore.put_structures (kept with the index entry):
the rendered ENVELOPE, BODY and BODYSTRUCTURE and mime.Structure.to_bytes() (the offsets
BODY[section] needs), so each is computed once per message. Messages are worked on in
batches (BATCH messages, and at most BATCH_BYTES of message files when files are read):
cached blobs come from the index; files and missing blobs are read and computed in a thread;
new blobs are stored in one write per batch.
Errors: BAD for an unknown item, bad syntax, or a sequence number beyond the mailbox
(selected.resolve). A message whose file is gone (expunged by another session since the
snapshot) is left out and the command ends NO [EXPUNGEISSUED]; BINARY of a part in an unknown
Content-Transfer-Encoding leaves that message out and ends NO [UNKNOWN-CTE].
Diagnostics: none of its own; a failed cache write is ignored (the cache only saves work).
"""
from __future__ import annotations

import asyncio
import binascii
import re
import struct
import time
from dataclasses import dataclass

from store.fsio import StorageError
from store.index import SEEN, NoSuchMailbox, flag_names, parse_sequence_set
from workers.imapd import condstore, mime
from workers.imapd.parser import Atom, Bad, Section

CAPABILITIES = ("BINARY",)

SEND_CHUNK = 64 * 1024          # octets of responses per send
BATCH = 500                     # messages per batch
BATCH_BYTES = 8 * 1024 * 1024   # octets of message files read per batch

VIEW_ITEMS = ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ")
CACHED_ITEMS = ("ENVELOPE", "BODY", "BODYSTRUCTURE")
FILE_ITEMS = ("RFC822", "RFC822.HEADER", "RFC822.TEXT")
MACROS = {
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ATOM_FIELD = re.compile(r"[!#-'*-Z^-z|~]+")
_CTE = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


class UnknownCTE(Exception):
    """BINARY of a part whose Content-Transfer-Encoding this server cannot decode."""


# ---- items ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    kind: str                    # a name of VIEW_ITEMS / CACHED_ITEMS / FILE_ITEMS, "BODY[]",
                                 # "BINARY" or "BINARY.SIZE"
    label: bytes                 # the item's name in the response
    spec: str = ""               # mime.section's section text
    part: tuple[int, ...] = ()
    partial: tuple[int, int] | None = None
    seen: bool = False           # sets \Seen


def section_spec(part: tuple[int, ...], text: str = "", fields: tuple[str, ...] = ()) -> str:
    """`1.2.HEADER.FIELDS (A B)`: the section as mime.section and the response name it."""
    numbers = ".".join(str(n) for n in part)
    if fields:
        text += " (" + " ".join(f if _ATOM_FIELD.fullmatch(f) else '"' + f.replace("\\", "\\\\")
                                .replace('"', '\\"') + '"' for f in fields) + ")"
    return numbers + ("." if numbers and text else "") + text


def _section_item(token: Section) -> Item:
    peek = token.name.endswith(".PEEK")
    if token.name.startswith("BINARY"):
        kind = "BINARY.SIZE" if token.name == "BINARY.SIZE" else "BINARY"
        spec = section_spec(token.part)
    else:
        kind = "BODY[]"
        spec = section_spec(token.part, token.text, token.fields)
    label = f"{kind.removesuffix('[]')}[{spec}]"
    if token.partial is not None:
        label += f"<{token.partial[0]}>"
    return Item(kind, label.encode(), spec, token.part, token.partial, not peek and kind != "BINARY.SIZE")


def parse_items(token, uid: bool) -> list[Item]:
    """The items of a FETCH command, UID first, each once (Bad for anything unknown)."""
    if isinstance(token, Atom) and token.upper() in MACROS:
        tokens = [Atom(name) for name in MACROS[token.upper()]]
    elif isinstance(token, list):
        if not token:
            raise Bad("Empty list of fetch items")
        tokens = token
    else:
        tokens = [token]
    items: dict[bytes, Item] = {}
    if uid:
        items[b"UID"] = Item("UID", b"UID")
    for t in tokens:
        if isinstance(t, Section):
            item = _section_item(t)
        elif isinstance(t, Atom) and t.upper() in VIEW_ITEMS + CACHED_ITEMS + FILE_ITEMS:
            name = t.upper()
            item = Item(name, name.encode(), seen=name in ("RFC822", "RFC822.TEXT"))
        else:
            raise Bad(f"Unknown fetch item {t!s:.40}" if isinstance(t, str) else "Invalid fetch item")
        if item.kind == "UID":
            items = {b"UID": item, **items}
        elif item.label not in items or item.seen:     # BODY.PEEK[] BODY[]: \Seen wins
            items[item.label] = item
    return list(items.values())


# ---- the structure cache -------------------------------------------------------------------

_BLOB_HEAD = struct.Struct("<BIII")
BLOB_VERSION = 1


class Cached:
    """A message's ENVELOPE, BODY, BODYSTRUCTURE and mime.Structure, as one blob."""

    def __init__(self, envelope: bytes, body: bytes, bodystructure: bytes, structure: bytes):
        self.envelope, self.body, self.bodystructure = envelope, body, bodystructure
        self._structure_bytes = structure
        self._structure: mime.Structure | None = None

    @classmethod
    def compute(cls, raw: bytes) -> Cached:
        s = mime.Structure.parse(raw)
        made = cls(mime.envelope(raw, s), mime.bodystructure(raw, False, s), mime.bodystructure(raw, True, s),
                   s.to_bytes())
        made._structure = s
        return made

    @property
    def structure(self) -> mime.Structure:
        if self._structure is None:
            self._structure = mime.Structure.from_bytes(self._structure_bytes)
        return self._structure

    def encode(self) -> bytes:
        return _BLOB_HEAD.pack(BLOB_VERSION, len(self.envelope), len(self.body), len(self.bodystructure)) \
            + self.envelope + self.body + self.bodystructure + self._structure_bytes

    @classmethod
    def decode(cls, blob: bytes) -> Cached | None:
        """None for a blob of another version or a damaged one (it is then recomputed)."""
        if len(blob) < _BLOB_HEAD.size:
            return None
        version, a, b, c = _BLOB_HEAD.unpack_from(blob)
        start = _BLOB_HEAD.size
        if version != BLOB_VERSION or start + a + b + c > len(blob):
            return None
        return cls(blob[start:start + a], blob[start + a:start + a + b], blob[start + a + b:start + a + b + c],
                   blob[start + a + b + c:])


@dataclass
class Loaded:
    raw: bytes | None            # the message file, when an item needs it
    cached: Cached | None        # when ENVELOPE, BODY or BODYSTRUCTURE is asked
    _parsed: mime.Structure | None = None

    @property
    def structure(self) -> mime.Structure:
        """The MIME structure for sections: the cached one, else parsed once from raw."""
        if self.cached is not None:
            return self.cached.structure
        if self._parsed is None:
            self._parsed = mime.Structure.parse(self.raw)
        return self._parsed


def read_messages(paths: dict[int, str], cached: dict[int, Cached], need_raw: bool,
                  need_structure: bool) -> tuple[dict[int, Loaded], dict[int, bytes]]:
    """(uid -> Loaded, uid -> new blob) for the messages of paths; runs in a thread. A message
    whose file is gone is absent from the result."""
    out: dict[int, Loaded] = {}
    fresh: dict[int, bytes] = {}
    for uid, path in paths.items():
        known = cached.get(uid)
        raw = None
        if need_raw or (need_structure and known is None):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                continue
        if need_structure and known is None:
            known = Cached.compute(raw)
            fresh[uid] = known.encode()
        out[uid] = Loaded(raw if need_raw else None, known)
    return out, fresh


# ---- rendering -----------------------------------------------------------------------------

def internal_date(seconds: int) -> bytes:
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, MONTHS[t.tm_mon - 1].encode(), t.tm_year,
                                                     t.tm_hour, t.tm_min, t.tm_sec)


def decode_transfer(body: bytes, mime_header: bytes) -> bytes:
    """A part's body decoded from its Content-Transfer-Encoding (UnknownCTE if unknown)."""
    m = _CTE.search(mime_header)
    cte = re.sub(rb"\s+", b"", m.group(1)).lower() if m else b""
    if cte in (b"", b"7bit", b"8bit", b"binary"):
        return body
    if cte == b"base64":
        clean = _NOT_BASE64.sub(b"", body)
        clean = clean[:-1] if len(clean) % 4 == 1 else clean + b"=" * (-len(clean) % 4)
        return binascii.a2b_base64(clean)
    if cte == b"quoted-printable":
        return decode_quoted_printable(body)
    raise UnknownCTE(cte)


def decode_quoted_printable(body: bytes) -> bytes:
    """RFC 2045 6.7: trailing blanks of a line are padding, `=` at a line's end joins it to
    the next, `=XX` is an octet (an `=` in anything else stays as it is); a hard line break
    stays as stored (CRLF or bare LF)."""
    out = bytearray()
    lines = body.split(b"\n")
    for i, line in enumerate(lines):
        crlf = line.endswith(b"\r")
        line = line.rstrip(b"\r").rstrip(b" \t")
        soft = line.endswith(b"=")
        out += _QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), line[:-1] if soft else line)
        if not soft and i < len(lines) - 1:
            out += b"\r\n" if crlf else b"\n"
    return bytes(out)


def binary_section(raw: bytes, part: tuple[int, ...], structure: mime.Structure) -> bytes | None:
    """BINARY[part]: the part's body decoded; the whole message as stored for BINARY[]."""
    if not part:
        return raw
    spec = section_spec(part)
    body = mime.section(raw, spec, structure)
    if body is None:
        return None
    return decode_transfer(body, mime.section(raw, spec + ".MIME", structure) or b"")


def binary_string(data: bytes | None) -> bytes:
    """An nstring, or a literal8 (RFC 3516) when the data holds NUL."""
    if data is not None and b"\0" in data:
        return b"~{%d}\r\n" % len(data) + data
    return mime.imap_string(data)


def render_item(item: Item, loaded: Loaded) -> bytes:
    """One file or cache item of a message (not the View's items)."""
    kind = item.kind
    cached = loaded.cached
    if kind == "ENVELOPE":
        return b"ENVELOPE " + cached.envelope
    if kind == "BODY":
        return b"BODY " + cached.body
    if kind == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + cached.bodystructure
    raw = loaded.raw
    if kind == "RFC822":
        return b"RFC822 " + mime.imap_string(raw)
    if kind in ("RFC822.HEADER", "RFC822.TEXT"):
        spec = kind.removeprefix("RFC822.")
        return item.label + b" " + mime.imap_string(mime.section(raw, spec, loaded.structure))
    if kind == "BODY[]":
        data = raw if not item.spec else mime.section(raw, item.spec, loaded.structure)
    else:
        data = binary_section(raw, item.part, loaded.structure)
        if kind == "BINARY.SIZE":
            return item.label + b" %d" % (len(data) if data is not None else 0)
    if data is not None and item.partial is not None:
        data = mime.partial(data, *item.partial)
    return item.label + b" " + (binary_string(data) if kind == "BINARY" else mime.imap_string(data))


class Plan:
    """What a FETCH needs per message, and the per-command caches of rendered flags."""

    def __init__(self, items: list[Item], keywords: tuple[str, ...], is_recent=lambda uid: False,
                 condstore_on: bool = False):
        self.items = items
        self.is_recent = is_recent          # uid -> \\Recent in this session
        kinds = {item.kind for item in items}
        self.need_raw = any(k not in VIEW_ITEMS + CACHED_ITEMS for k in kinds)
        self.need_structure = bool(kinds & set(CACHED_ITEMS))     # sections parse the file itself
        self.need_record = bool(kinds & {"INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
        self.sets_seen = any(item.seen for item in items)
        self.has_flags = "FLAGS" in kinds
        self.has_modseq = "MODSEQ" in kinds
        self.condstore_on = condstore_on     # a FETCH that sets \Seen tells the new MODSEQ too
        self.keywords = keywords
        self._flags: dict[int, bytes] = {}

    def flags(self, bits: int, recent: bool) -> bytes:
        key = (bits, recent)
        text = self._flags.get(key)
        if text is None:
            names = ("\\Recent",) * recent + flag_names(bits, self.keywords)
            text = self._flags[key] = b"FLAGS (" + " ".join(names).encode() + b")"
        return text

    def response(self, view, seq: int, loaded: Loaded | None, seen_now: dict[int, tuple[bytes, int]]) -> bytes:
        uid = view.uid(seq)
        record = view.record(seq) if self.need_record else None
        now = seen_now.get(uid)          # (FLAGS item, modseq) when this FETCH set \Seen
        out = []
        for item in self.items:
            kind = item.kind
            if kind == "UID":
                out.append(b"UID %d" % uid)
            elif kind == "FLAGS":
                out.append(now[0] if now else self.flags(view.flag_bits(seq), self.is_recent(uid)))
            elif kind == "MODSEQ":
                out.append(b"MODSEQ (%d)" % (now[1] if now else record.modseq))
            elif kind == "INTERNALDATE":
                out.append(b"INTERNALDATE " + internal_date(record.internal_date))
            elif kind == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % record.size)
            else:
                out.append(render_item(item, loaded))
        if now and not self.has_flags:
            out.append(now[0])
        if now and self.condstore_on and not self.has_modseq:
            out.append(b"MODSEQ (%d)" % now[1])
        return b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"


# ---- the command ---------------------------------------------------------------------------

def fetch_modifiers(session, command) -> tuple[int | None, bool]:
    """FETCH's `(CHANGEDSINCE modseq [VANISHED])` (RFC 7162) -> (modseq or None, VANISHED)."""
    if len(command.args) == 2:
        return None, False
    tokens = command.args[2]
    if len(command.args) != 3 or not isinstance(tokens, list) or not tokens:
        raise Bad(f"{command.name} takes a sequence set, fetch items and optional modifiers")
    changed_since, vanished = None, False
    i = 0
    while i < len(tokens):
        word = tokens[i].upper() if isinstance(tokens[i], Atom) else ""
        if word == "CHANGEDSINCE" and changed_since is None and i + 1 < len(tokens):
            changed_since = condstore.modseq_value(tokens[i + 1], "CHANGEDSINCE")
            i += 2
        elif word == "VANISHED" and not vanished:
            vanished = True
            i += 1
        else:
            raise Bad("Unknown or repeated FETCH modifier")
    if changed_since is None:
        raise Bad("FETCH modifiers need CHANGEDSINCE")
    if vanished and (command.name != "UID FETCH" or not condstore.qresync(session)):
        raise Bad("VANISHED needs UID FETCH and ENABLE QRESYNC")
    return changed_since, vanished


async def fetch(session, command) -> None:
    uid = command.name == "UID FETCH"
    if len(command.args) < 2:
        raise Bad(f"{command.name} takes a sequence set and fetch items")
    changed_since, vanished = fetch_modifiers(session, command)
    selected = session.selected
    items = parse_items(command.args[1], uid)
    if changed_since is not None and not any(item.kind == "MODSEQ" for item in items):
        items.append(Item("MODSEQ", b"MODSEQ"))
    seqs = selected.resolve(command.args[0], uid)
    view = selected.view.view
    if any(item.kind == "MODSEQ" for item in items):
        await condstore.enable(session)
    if vanished:
        await condstore.send_vanished(session, selected, changed_since,
                                      parse_sequence_set(str(command.args[0]), max(selected.info.uidnext - 1, 1)))
    if changed_since is not None:
        seqs = [seq for seq in seqs if view.record(seq).modseq > changed_since]
    plan = Plan(items, view.keywords, selected.is_recent, condstore.enabled(session))
    seen_now = await mark_seen(session, selected, seqs) if plan.sets_seen and selected.may("s") else {}
    gone, unknown_cte = await answer(session, selected, plan, seqs, seen_now)
    session.counts["fetch"] += len(seqs) - gone
    if unknown_cte:
        await session.no("Unknown Content-Transfer-Encoding in a requested part", "UNKNOWN-CTE")
    elif gone:
        await session.no("Some of the requested messages no longer exist", "EXPUNGEISSUED")
    else:
        await session.ok(f"{command.name} completed")


async def mark_seen(session, selected, seqs) -> dict[int, tuple[bytes, int]]:
    """Sets \\Seen where it lacks; uid -> (the `FLAGS (...)` item, the new modseq) of each
    message changed."""
    view = selected.view.view
    unseen = [seq for seq in seqs if not view.flag_bits(seq) & SEEN]
    if not unseen:
        return {}
    changed = await session.backend.writer.set_flags(session, selected.user, selected.name,
                                                     view.uid_ranges(unseen), "+", ("\\Seen",))
    out = {}
    for record in changed:
        selected.own_change(record.uid, record.modseq)
        names = ("\\Recent",) * selected.is_recent(record.uid) + record.flags
        out[record.uid] = (b"FLAGS (" + " ".join(names).encode() + b")", record.modseq)
    return out


def batches(view, seqs, need_raw: bool):
    """Slices of seqs: BATCH messages, and BATCH_BYTES of files (at least one message)."""
    start, n = 0, len(seqs)
    while start < n:
        stop = min(n, start + BATCH)
        if need_raw:
            size, end = 0, start
            while end < stop and (end == start or size < BATCH_BYTES):
                size += view.record(seqs[end]).size
                end += 1
            stop = end
        yield seqs[start:stop]
        start = stop


async def load(session, selected, plan: Plan, batch) -> dict[int, Loaded]:
    """uid -> Loaded for a batch of sequence numbers (messages whose file is gone: absent)."""
    mailbox = selected.view
    view = mailbox.view
    uids = [view.uid(seq) for seq in batch]
    cached: dict[int, Cached] = {}
    if plan.need_structure:
        for u, blob in selected.mail.structures(selected.user, selected.name, uids).items():
            if (known := Cached.decode(blob)) is not None:
                cached[u] = known
    if not plan.need_raw and len(cached) == len(uids):
        return {u: Loaded(None, known) for u, known in cached.items()}
    paths = {u: mailbox.path(seq) for u, seq in zip(uids, batch)}
    loaded, fresh = await asyncio.to_thread(read_messages, paths, cached, plan.need_raw, plan.need_structure)
    if fresh:
        try:
            await session.backend.writer.put_structures(session, selected.user, selected.name, fresh)
        except (NoSuchMailbox, StorageError):
            pass
    return loaded


async def answer(session, selected, plan: Plan, seqs,
                 seen_now: dict[int, tuple[bytes, int]]) -> tuple[int, bool]:
    """Sends the FETCH responses; (messages left out as gone, whether one had an unknown CTE)."""
    view = selected.view.view
    out = bytearray()
    gone, unknown_cte = 0, False
    reads = plan.need_raw or plan.need_structure
    for batch in batches(view, seqs, plan.need_raw):
        loaded = await load(session, selected, plan, batch) if reads else {}
        for seq in batch:
            message = loaded.get(view.uid(seq)) if reads else None
            if reads and message is None:
                gone += 1
                continue
            try:
                out += plan.response(view, seq, message, seen_now)
            except UnknownCTE:
                unknown_cte = True
                continue
            if len(out) >= SEND_CHUNK:
                await session.send(bytes(out))
                out.clear()
    if out:
        await session.send(bytes(out))
    return gone, unknown_cte

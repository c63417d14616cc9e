"""The index's records, flags and sequence sets, and the pure-Python View and kernels.

A RECORD is 32 bytes, little-endian: uid u32, size u32, flags u64, internal_date i64,
modseq u64; a mailbox's records are kept sorted by UID. Flags: bits 0-4 are \\Seen
\\Answered \\Flagged \\Deleted \\Draft; bit 8+i is keyword i of the mailbox's keyword
table (56 keywords per mailbox at most).

Interface: flag_mask / known_flag_mask / flag_names (names <-> bits); parse_sequence_set
(text, largest) -> merged inclusive ranges; ranges_from_values; Kernels.apply_flags and
Kernels.remove_records (one chunk of records at a time); View (a snapshot of one mailbox:
UID<->sequence mapping, sequence sets resolved to an array("I") of sequence numbers, search,
sort, diff); Records (changed or removed
records, decoded on demand); only(results) (the one result of a batch call made for a single
request); the data classes and errors shared by both implementations.
store/_index.pyx replaces parse_sequence_set, Kernels and View with C loops over the same
bytes; store/_index_py.py is the LMDB side that both use.
Diagnostics: ValueError for a malformed or overlong sequence set (IMAP BAD) or an unknown
system flag; TooManyKeywords when a mailbox's keyword table is full; IndexError for a
sequence number outside the view.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

RECORD = struct.Struct("<IIQqQ")
RECORD_SIZE = RECORD.size

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
SEEN, ANSWERED, FLAGGED, DELETED, DRAFT = (1 << i for i in range(5))
KEYWORD_SHIFT = 8
MAX_KEYWORDS = 64 - KEYWORD_SHIFT
_SYSTEM_BY_LOWER = {name.lower(): 1 << i for i, name in enumerate(SYSTEM_FLAGS)}

MAX_SEQUENCE_SET = 100_000   # characters in one sequence set
MAX_SEQUENCE_RANGES = 10_000  # comma-separated parts
MAX_UID = 0xFFFFFFFF


class NoSuchMailbox(KeyError):
    """The mailbox does not exist."""


class MailboxExists(ValueError):
    """The mailbox name is taken."""


class TooManyKeywords(ValueError):
    """The mailbox's keyword table is full."""


@dataclass(frozen=True)
class MailboxInfo:
    user: str
    name: str
    mailbox_id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    count: int
    unseen: int
    total_size: int
    subscribed: bool
    special_use: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class MessageRecord:
    uid: int
    size: int
    flags: tuple[str, ...]
    internal_date: int
    modseq: int


@dataclass(frozen=True)
class Reservation:
    """A UID set aside for a delivery: state "new", or "pending"/"done" for a known delivery id."""
    uid: int
    uidvalidity: int
    state: str


# ---------------------------------------------------------------- flags and sequence sets

def flag_mask(flags: Iterable[str], keywords: Sequence[str]) -> tuple[int, tuple[str, ...]]:
    """Flag names -> (mask, keyword table extended by any new keyword)."""
    table = list(keywords)
    lowered = [k.lower() for k in table]
    mask = 0
    for name in flags:
        bit = _SYSTEM_BY_LOWER.get(name.lower())
        if bit is None:
            if name.startswith("\\"):
                raise ValueError(f"unknown system flag {name}")
            try:
                index = lowered.index(name.lower())
            except ValueError:
                if len(table) >= MAX_KEYWORDS:
                    raise TooManyKeywords(f"no room for keyword {name} (limit {MAX_KEYWORDS})") from None
                table.append(name)
                lowered.append(name.lower())
                index = len(table) - 1
            bit = 1 << (KEYWORD_SHIFT + index)
        mask |= bit
    return mask, tuple(table)


def known_flag_mask(flags: Iterable[str], keywords: Sequence[str], strict: bool) -> int | None:
    """Mask of flag names without extending the table. An unknown keyword makes the result
    None when strict (nothing can carry it), else it is left out."""
    lowered = [k.lower() for k in keywords]
    mask = 0
    for name in flags:
        bit = _SYSTEM_BY_LOWER.get(name.lower())
        if bit is None:
            if name.lower() not in lowered:
                if strict:
                    return None
                continue
            bit = 1 << (KEYWORD_SHIFT + lowered.index(name.lower()))
        mask |= bit
    return mask


def flag_names(mask: int, keywords: Sequence[str]) -> tuple[str, ...]:
    names = [name for i, name in enumerate(SYSTEM_FLAGS) if mask >> i & 1]
    names += [kw for i, kw in enumerate(keywords) if mask >> (KEYWORD_SHIFT + i) & 1]
    return tuple(names)


def normalise_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted((min(a, b), max(a, b)) for a, b in ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _parse_number(text: str, largest: int) -> int:
    if text == "*":
        return largest
    if not text.isdigit() or text.startswith("0") or len(text) > 10:
        raise ValueError(f"bad number {text!r} in sequence set")
    value = int(text)
    if value > MAX_UID:
        raise ValueError(f"number {text} out of range in sequence set")
    return value


def parse_sequence_set(text: str, largest: int) -> list[tuple[int, int]]:
    """IMAP sequence set (`1:*`, `3,5:9`, `*`) -> sorted, merged inclusive ranges; `*` = largest.

    With largest 0 (an empty mailbox) a `*` yields nothing. Raises ValueError.
    """
    if not text or len(text) > MAX_SEQUENCE_SET:
        raise ValueError("empty or overlong sequence set")
    parts = text.split(",")
    if len(parts) > MAX_SEQUENCE_RANGES:
        raise ValueError("too many ranges in sequence set")
    ranges = []
    for part in parts:
        lo_text, sep, hi_text = part.partition(":")
        lo = _parse_number(lo_text, largest)
        hi = _parse_number(hi_text, largest) if sep else lo
        if lo == 0 or hi == 0:
            if largest == 0 and "*" in part:
                lo, hi = max(lo, hi), max(lo, hi)
                if lo == 0:
                    continue
            else:
                raise ValueError("zero in sequence set")
        ranges.append((lo, hi))
    return normalise_ranges(ranges)


def ranges_from_values(values: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct integers -> inclusive ranges of consecutive values."""
    ranges: list[list[int]] = []
    for v in values:
        if ranges and v == ranges[-1][1] + 1:
            ranges[-1][1] = v
        else:
            ranges.append([v, v])
    return [(lo, hi) for lo, hi in ranges]


# ---------------------------------------------------------------- record kernels

class Kernels:
    """Operations on a chunk of packed records; _index.pyx replaces these with C loops."""

    @staticmethod
    def apply_flags(chunk: bytes | memoryview, ranges: Sequence[tuple[int, int]], mode: str, mask: int,
                    modseq: int, unchanged_since: int) -> tuple[bytes, bytes, int, bytes]:
        """-> (new chunk, positions of the changed records in it packed <I, change of the
        unseen count, conflicting uids packed <I).

        mode is "+", "-" or "=". unchanged_since < 0 means no condition.
        """
        out = bytearray(chunk)
        changed = bytearray()
        conflicts = bytearray()
        unseen_delta = 0
        r = 0
        for position, offset in enumerate(range(0, len(chunk), RECORD_SIZE)):
            uid, size, flags, date, mseq = RECORD.unpack_from(chunk, offset)
            while r < len(ranges) and ranges[r][1] < uid:
                r += 1
            if r == len(ranges):
                break
            if uid < ranges[r][0]:
                continue
            if mode == "+":
                new = flags | mask
            elif mode == "-":
                new = flags & ~mask
            else:
                new = mask
            if new == flags:
                continue
            if 0 <= unchanged_since < mseq:
                conflicts += struct.pack("<I", uid)
                continue
            unseen_delta += (not new & SEEN) - (not flags & SEEN)
            RECORD.pack_into(out, offset, uid, size, new, date, modseq)
            changed += struct.pack("<I", position)
        return bytes(out), bytes(changed), unseen_delta, bytes(conflicts)

    @staticmethod
    def remove_records(chunk: bytes, ranges: Sequence[tuple[int, int]] | None,
                       require_mask: int) -> tuple[bytes, bytes]:
        """Drop records in ranges (None = all) whose flags contain require_mask -> (kept, removed)."""
        kept = bytearray()
        removed = bytearray()
        r = 0
        for offset in range(0, len(chunk), RECORD_SIZE):
            record = chunk[offset:offset + RECORD_SIZE]
            uid, _, flags, _, _ = RECORD.unpack(record)
            hit = (flags & require_mask) == require_mask
            if hit and ranges is not None:
                while r < len(ranges) and ranges[r][1] < uid:
                    r += 1
                hit = r < len(ranges) and uid >= ranges[r][0]
            (removed if hit else kept).extend(record)
        return bytes(kept), bytes(removed)


# ---------------------------------------------------------------- the view

class View:
    """A snapshot of one mailbox: messages in UID order; sequence number n is index n-1."""

    def __init__(self, info: MailboxInfo, blob: bytes):
        self.info = info
        self.keywords = info.keywords
        records = list(RECORD.iter_unpack(blob))
        self._uids = [r[0] for r in records]
        self._sizes = [r[1] for r in records]
        self._flags = [r[2] for r in records]
        self._dates = [r[3] for r in records]
        self._modseqs = [r[4] for r in records]
        self._seq_by_uid = {uid: i + 1 for i, uid in enumerate(self._uids)}

    def __len__(self) -> int:
        return len(self._uids)

    # -- identity
    def uid(self, seq: int) -> int:
        if not 1 <= seq <= len(self._uids):
            raise IndexError(f"no message {seq}")
        return self._uids[seq - 1]

    def seq(self, uid: int) -> int:
        """Sequence number of uid, 0 if the snapshot has no such message."""
        return self._seq_by_uid.get(uid, 0)

    def uids(self) -> list[int]:
        return list(self._uids)

    def record(self, seq: int) -> MessageRecord:
        i = seq - 1
        if not 0 <= i < len(self._uids):
            raise IndexError(f"no message {seq}")
        return MessageRecord(self._uids[i], self._sizes[i], flag_names(self._flags[i], self.keywords),
                             self._dates[i], self._modseqs[i])

    def flag_bits(self, seq: int) -> int:
        if not 1 <= seq <= len(self._uids):
            raise IndexError(f"no message {seq}")
        return self._flags[seq - 1]

    @property
    def total_size(self) -> int:
        return sum(self._sizes)

    # -- sequence sets
    def resolve(self, text: str, uid: bool = False) -> array:
        """Sequence numbers named by an IMAP set, ascending, as an array("I") (iterable,
        indexable, no int object per message until one is read). A UID set ignores absent
        UIDs; a sequence number beyond the snapshot raises ValueError (IMAP answers BAD)."""
        if uid:
            largest = self._uids[-1] if self._uids else 0
            return self.seqs_in_uid_ranges(parse_sequence_set(text, largest))
        ranges = parse_sequence_set(text, len(self._uids))
        if ranges and ranges[-1][1] > len(self._uids):
            raise ValueError("sequence number out of range")
        seqs = array("I")
        for lo, hi in ranges:
            seqs.extend(range(lo, hi + 1))
        return seqs

    def seqs_in_uid_ranges(self, ranges: Sequence[tuple[int, int]]) -> array:
        """Sequence numbers of the messages in UID ranges (sorted, merged), as resolve gives them."""
        seqs = array("I")
        r = 0
        for i, uid in enumerate(self._uids):
            while r < len(ranges) and ranges[r][1] < uid:
                r += 1
            if r == len(ranges):
                break
            if uid >= ranges[r][0]:
                seqs.append(i + 1)
        return seqs

    def uid_ranges(self, seqs: Iterable[int]) -> list[tuple[int, int]]:
        """Sequence numbers (ascending) -> UID ranges covering exactly those messages."""
        ranges: list[list[int]] = []
        previous = -2
        for s in seqs:
            if not 1 <= s <= len(self._uids):
                raise IndexError(f"no message {s}")
            uid = self._uids[s - 1]
            if s == previous + 1:
                ranges[-1][1] = uid
            else:
                ranges.append([uid, uid])
            previous = s
        return [(lo, hi) for lo, hi in ranges]

    # -- search and sort
    def search(self, has: Iterable[str] = (), lacks: Iterable[str] = (), larger: int | None = None,
               smaller: int | None = None, since: int | None = None, before: int | None = None,
               uid_ranges: Sequence[tuple[int, int]] | None = None) -> list[int]:
        """Sequence numbers of messages matching every criterion given (dates: epoch seconds,
        since inclusive, before exclusive; sizes strictly larger/smaller)."""
        has_mask = known_flag_mask(has, self.keywords, strict=True)
        if has_mask is None:
            return []
        lacks_mask = known_flag_mask(lacks, self.keywords, strict=False)
        allowed = set(self.seqs_in_uid_ranges(uid_ranges)) if uid_ranges is not None else None
        found = []
        for i in range(len(self._uids)):
            flags = self._flags[i]
            if flags & has_mask != has_mask or flags & lacks_mask:
                continue
            if larger is not None and self._sizes[i] <= larger:
                continue
            if smaller is not None and self._sizes[i] >= smaller:
                continue
            if since is not None and self._dates[i] < since:
                continue
            if before is not None and self._dates[i] >= before:
                continue
            if allowed is not None and i + 1 not in allowed:
                continue
            found.append(i + 1)
        return found

    def sort(self, key: str = "uid", reverse: bool = False) -> list[int]:
        """Sequence numbers ordered by "uid", "size", "date" (internal date) or "modseq";
        ties keep UID order."""
        column = {"uid": self._uids, "size": self._sizes, "date": self._dates, "modseq": self._modseqs}[key]
        order = sorted(range(len(column)), key=lambda i: (column[i], self._uids[i]))
        if reverse:
            order = sorted(range(len(column)), key=lambda i: (-column[i], self._uids[i]))
        return [i + 1 for i in order]

    def changed_since(self, modseq: int) -> list[int]:
        """Sequence numbers of messages whose modseq is above modseq."""
        return [i + 1 for i, m in enumerate(self._modseqs) if m > modseq]

    def diff(self, newer: "View") -> tuple[list[int], list[int]]:
        """Against a newer snapshot: (sequence numbers of ours that are gone, descending — the
        order IMAP EXPUNGE responses need; sequence numbers in newer whose flags changed)."""
        gone = []
        changed = []
        j = 0
        n_new = len(newer._uids)
        for i, uid in enumerate(self._uids):
            while j < n_new and newer._uids[j] < uid:
                j += 1
            if j < n_new and newer._uids[j] == uid:
                if newer._modseqs[j] != self._modseqs[i]:
                    changed.append(j + 1)
            else:
                gone.append(i + 1)
        gone.reverse()
        return gone, changed


# ---------------------------------------------------------------- the index


def only(results: list):
    """The one result of a batch call (write_many, deliver_many, ...) made for a single
    request: its value, or its error raised."""
    [result] = results
    if isinstance(result, Exception):
        raise result
    return result


class Records:
    """Records changed by store_flags (with .conflicts) or removed by expunge, decoded on demand."""

    def __init__(self, pieces: list[tuple[bytes, bytes | None]], keywords: tuple[str, ...],
                 conflicts: list[bytes]):
        # per chunk: (packed records, positions of the ones meant packed <I, or None for all);
        # decoded only when asked, so a silent STORE over 1:* builds no objects
        self._pieces = pieces
        self.keywords = keywords
        self.conflicts = [uid for piece in conflicts for (uid,) in struct.iter_unpack("<I", piece)]

    def __len__(self) -> int:
        return sum(len(packed) // RECORD_SIZE if positions is None else len(positions) // 4
                   for packed, positions in self._pieces)

    def _unpacked(self) -> Iterator[tuple]:
        for packed, positions in self._pieces:
            if positions is None:
                yield from RECORD.iter_unpack(packed)
            else:
                for (position,) in struct.iter_unpack("<I", positions):
                    yield RECORD.unpack_from(packed, position * RECORD_SIZE)

    def __iter__(self) -> Iterator[MessageRecord]:
        for uid, size, flags, date, modseq in self._unpacked():
            yield MessageRecord(uid, size, flag_names(flags, self.keywords), date, modseq)

    def uids(self) -> list[int]:
        return [r[0] for r in self._unpacked()]

    def total_size(self) -> int:
        return sum(r[1] for r in self._unpacked())

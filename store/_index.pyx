# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The mail index, compiled: C loops over the packed 32-byte records.

Same interface as store/_index_py.py, which owns the LMDB layout and transactions; this
module subclasses its Index and replaces the parts that touch every record: the View
(open, UID<->sequence mapping, sequence sets resolved straight into an array("I"), search,
sort, diff), the flag and expunge kernels, and sequence-set parsing. Records are read in place from one contiguous buffer.
Diagnostics: the same errors as the reference; on a big-endian host this module refuses to
import (the records are little-endian), and store.index falls back to the reference.
"""
import array
import sys

from cpython cimport array
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

from store import _index_py
from store._index_view import (
    MAX_SEQUENCE_RANGES, MAX_SEQUENCE_SET, MAX_UID, SEEN, MessageRecord, flag_names, known_flag_mask,
)

if sys.byteorder != "little":
    raise ImportError("the compiled index needs a little-endian host")


cdef uint64_t SEEN_BIT = SEEN


cdef packed struct Rec:
    uint32_t uid
    uint32_t size
    uint64_t flags
    int64_t date
    uint64_t modseq


cdef inline Py_ssize_t _count(bytes blob):
    return PyBytes_GET_SIZE(blob) // sizeof(Rec)


cdef inline const Rec* _records(bytes blob):
    return <const Rec*> PyBytes_AS_STRING(blob)


cdef array.array _NO_SEQS = array.array("I")


cdef array.array _seq_array(Py_ssize_t n):
    """An uninitialised array("I") of n sequence numbers."""
    return array.clone(_NO_SEQS, n, zero=False)


cdef array.array _as_seq_array(seqs):
    """seqs as an array("I") (itself when it is one already)."""
    if isinstance(seqs, array.array) and seqs.typecode == "I":
        return seqs
    try:
        return array.array("I", seqs)
    except OverflowError:
        raise IndexError("sequence number out of range") from None


cdef list _int_list(const uint32_t* values, Py_ssize_t n):
    cdef list out = PyList_New(n)
    cdef Py_ssize_t i
    cdef object item
    for i in range(n):
        item = values[i]
        Py_INCREF(item)
        PyList_SET_ITEM(out, i, item)
    return out


# ---------------------------------------------------------------- sequence sets

cdef uint64_t _number(str text, uint64_t largest) except? 0xFFFFFFFFFFFFFFFF:
    cdef Py_ssize_t i, n = len(text)
    cdef uint64_t value = 0
    cdef long ch
    if n == 1 and text[0] == "*":
        return largest
    if n == 0 or n > 10 or text[0] == "0":
        raise ValueError(f"bad number {text!r} in sequence set")
    for i in range(n):
        ch = ord(text[i])
        if ch < 48 or ch > 57:
            raise ValueError(f"bad number {text!r} in sequence set")
        value = value * 10 + (ch - 48)
    if value > MAX_UID:
        raise ValueError(f"number {text} out of range in sequence set")
    return value


def parse_sequence_set(str text, largest):
    """IMAP sequence set -> sorted, merged inclusive ranges (see store._index_view)."""
    cdef uint64_t top = largest
    cdef uint64_t lo, hi
    if not text or len(text) > MAX_SEQUENCE_SET:
        raise ValueError("empty or overlong sequence set")
    parts = text.split(",")
    if len(parts) > MAX_SEQUENCE_RANGES:
        raise ValueError("too many ranges in sequence set")
    ranges = []
    for part in parts:
        lo_text, sep, hi_text = part.partition(":")
        lo = _number(lo_text, top)
        hi = _number(hi_text, top) if sep else lo
        if lo == 0 or hi == 0:
            if top == 0 and "*" in part:
                lo = hi = max(lo, hi)
                if lo == 0:
                    continue
            else:
                raise ValueError("zero in sequence set")
        ranges.append((lo, hi) if lo <= hi else (hi, lo))
    if len(ranges) <= 1:
        return ranges
    ranges.sort()
    merged = []
    cdef uint64_t cur_lo = ranges[0][0], cur_hi = ranges[0][1]
    for lo, hi in ranges:
        if lo <= cur_hi + 1:
            if hi > cur_hi:
                cur_hi = hi
        else:
            merged.append((cur_lo, cur_hi))
            cur_lo, cur_hi = lo, hi
    merged.append((cur_lo, cur_hi))
    return merged


cdef class _Ranges:
    """Sorted, merged UID ranges as two C arrays."""
    cdef uint64_t* lo
    cdef uint64_t* hi
    cdef Py_ssize_t n

    def __cinit__(self, ranges):
        cdef Py_ssize_t i = 0
        self.n = len(ranges)
        self.lo = <uint64_t*> malloc(max(self.n, 1) * sizeof(uint64_t))
        self.hi = <uint64_t*> malloc(max(self.n, 1) * sizeof(uint64_t))
        if self.lo == NULL or self.hi == NULL:
            raise MemoryError()
        for a, b in ranges:
            self.lo[i] = a
            self.hi[i] = b
            i += 1

    def __dealloc__(self):
        free(self.lo)
        free(self.hi)


# ---------------------------------------------------------------- kernels

class Kernels:
    @staticmethod
    def apply_flags(const unsigned char[::1] chunk, ranges, str mode, mask, uint64_t modseq,
                    long long unchanged_since):
        cdef _Ranges rs = _Ranges(ranges)
        cdef Py_ssize_t n = chunk.shape[0] // sizeof(Rec), i, r = 0, n_changed = 0, n_conflicts = 0
        cdef bytes out = PyBytes_FromStringAndSize(<const char*> &chunk[0] if n else NULL, n * sizeof(Rec))
        cdef Rec* recs = <Rec*> PyBytes_AS_STRING(out)
        cdef uint32_t* changed = <uint32_t*> malloc(max(n, 1) * sizeof(uint32_t))
        cdef uint32_t* conflicts = <uint32_t*> malloc(max(n, 1) * sizeof(uint32_t))
        cdef uint64_t m = mask, new
        cdef int op = 0 if mode == "+" else (1 if mode == "-" else 2)
        cdef long unseen_delta = 0
        if changed == NULL or conflicts == NULL:
            free(changed)
            free(conflicts)
            raise MemoryError()
        try:
            for i in range(n):
                while r < rs.n and rs.hi[r] < recs[i].uid:
                    r += 1
                if r == rs.n:
                    break
                if recs[i].uid < rs.lo[r]:
                    continue
                if op == 0:
                    new = recs[i].flags | m
                elif op == 1:
                    new = recs[i].flags & ~m
                else:
                    new = m
                if new == recs[i].flags:
                    continue
                if unchanged_since >= 0 and <uint64_t> unchanged_since < recs[i].modseq:
                    conflicts[n_conflicts] = recs[i].uid
                    n_conflicts += 1
                    continue
                unseen_delta += (not (new & SEEN_BIT)) - (not (recs[i].flags & SEEN_BIT))
                recs[i].flags = new
                recs[i].modseq = modseq
                changed[n_changed] = i
                n_changed += 1
            return (out, PyBytes_FromStringAndSize(<char*> changed, n_changed * sizeof(uint32_t)), unseen_delta,
                    PyBytes_FromStringAndSize(<char*> conflicts, n_conflicts * sizeof(uint32_t)))
        finally:
            free(changed)
            free(conflicts)

    @staticmethod
    def remove_records(bytes chunk, ranges, require_mask):
        cdef _Ranges rs = _Ranges(ranges if ranges is not None else [])
        cdef bint all_uids = ranges is None
        cdef Py_ssize_t n = _count(chunk), i, r = 0, n_kept = 0, n_gone = 0
        cdef const Rec* recs = _records(chunk)
        cdef Rec* kept = <Rec*> malloc(max(n, 1) * sizeof(Rec))
        cdef Rec* gone = <Rec*> malloc(max(n, 1) * sizeof(Rec))
        cdef uint64_t need = require_mask
        cdef bint hit
        if kept == NULL or gone == NULL:
            free(kept)
            free(gone)
            raise MemoryError()
        try:
            for i in range(n):
                hit = (recs[i].flags & need) == need
                if hit and not all_uids:
                    while r < rs.n and rs.hi[r] < recs[i].uid:
                        r += 1
                    hit = r < rs.n and recs[i].uid >= rs.lo[r]
                if hit:
                    gone[n_gone] = recs[i]
                    n_gone += 1
                else:
                    kept[n_kept] = recs[i]
                    n_kept += 1
            return (PyBytes_FromStringAndSize(<char*> kept, n_kept * sizeof(Rec)),
                    PyBytes_FromStringAndSize(<char*> gone, n_gone * sizeof(Rec)))
        finally:
            free(kept)
            free(gone)


# ---------------------------------------------------------------- the view

cdef class View:
    """A snapshot of one mailbox, read in place from the packed records."""
    cdef readonly object info
    cdef readonly tuple keywords
    cdef bytes _blob
    cdef const Rec* _recs
    cdef Py_ssize_t _n

    def __init__(self, info, bytes blob):
        self.info = info
        self.keywords = info.keywords
        self._blob = blob
        self._recs = _records(blob)
        self._n = _count(blob)

    def __len__(self):
        return self._n

    cdef Py_ssize_t _index_of(self, uint64_t uid):
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._recs[mid].uid < uid:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def uid(self, Py_ssize_t seq):
        if seq < 1 or seq > self._n:
            raise IndexError(f"no message {seq}")
        return self._recs[seq - 1].uid

    def seq(self, uid):
        """Sequence number of uid, 0 if the snapshot has no such message."""
        if uid < 1 or uid > MAX_UID:
            return 0
        cdef Py_ssize_t i = self._index_of(uid)
        return i + 1 if i < self._n and self._recs[i].uid == uid else 0

    def uids(self):
        cdef list out = PyList_New(self._n)
        cdef Py_ssize_t i
        cdef object item
        for i in range(self._n):
            item = self._recs[i].uid
            Py_INCREF(item)
            PyList_SET_ITEM(out, i, item)
        return out

    def record(self, Py_ssize_t seq):
        if seq < 1 or seq > self._n:
            raise IndexError(f"no message {seq}")
        cdef const Rec* r = &self._recs[seq - 1]
        return MessageRecord(r.uid, r.size, flag_names(r.flags, self.keywords), r.date, r.modseq)

    def flag_bits(self, Py_ssize_t seq):
        if seq < 1 or seq > self._n:
            raise IndexError(f"no message {seq}")
        return self._recs[seq - 1].flags

    @property
    def total_size(self):
        cdef uint64_t total = 0
        cdef Py_ssize_t i
        for i in range(self._n):
            total += self._recs[i].size
        return total

    def resolve(self, str text, bint uid=False):
        cdef Py_ssize_t n = self._n
        if uid:
            return self.seqs_in_uid_ranges(parse_sequence_set(text, self._recs[n - 1].uid if n else 0))
        ranges = parse_sequence_set(text, n)
        if ranges and ranges[len(ranges) - 1][1] > n:
            raise ValueError("sequence number out of range")
        cdef _Ranges rs = _Ranges(ranges)
        cdef Py_ssize_t total = 0, k = 0, r
        cdef uint64_t s
        for r in range(rs.n):
            total += rs.hi[r] - rs.lo[r] + 1
        cdef array.array out = _seq_array(total)
        for r in range(rs.n):
            for s in range(rs.lo[r], rs.hi[r] + 1):
                out.data.as_uints[k] = s
                k += 1
        return out

    def seqs_in_uid_ranges(self, ranges):
        cdef _Ranges rs = _Ranges(ranges)
        cdef array.array found = _seq_array(self._n)
        cdef Py_ssize_t i, r = 0, n_found = 0
        for r in range(rs.n):  # each range starts with a binary search: fast for sparse sets
            i = self._index_of(rs.lo[r])
            while i < self._n and self._recs[i].uid <= rs.hi[r]:
                found.data.as_uints[n_found] = i + 1
                n_found += 1
                i += 1
        array.resize(found, n_found)
        return found

    def uid_ranges(self, seqs):
        ranges = []
        cdef array.array values = _as_seq_array(seqs)
        cdef Py_ssize_t k, s, previous = -2
        cdef uint32_t lo = 0, hi = 0
        for k in range(len(values)):
            s = values.data.as_uints[k]
            if s < 1 or s > self._n:
                raise IndexError(f"no message {s}")
            if s == previous + 1:
                hi = self._recs[s - 1].uid
            else:
                if previous >= 0:
                    ranges.append((lo, hi))
                lo = hi = self._recs[s - 1].uid
            previous = s
        if previous >= 0:
            ranges.append((lo, hi))
        return ranges

    def search(self, has=(), lacks=(), larger=None, smaller=None, since=None, before=None, uid_ranges=None):
        has_mask = known_flag_mask(has, self.keywords, strict=True)
        if has_mask is None:
            return []
        cdef uint64_t need = has_mask, refuse = known_flag_mask(lacks, self.keywords, strict=False)
        cdef bint use_larger = larger is not None, use_smaller = smaller is not None
        cdef bint use_since = since is not None, use_before = before is not None, use_uids = uid_ranges is not None
        cdef long long c_larger = larger if use_larger else 0, c_smaller = smaller if use_smaller else 0
        cdef long long c_since = since if use_since else 0, c_before = before if use_before else 0
        cdef _Ranges rs = _Ranges(uid_ranges if use_uids else [])
        cdef uint32_t* found = <uint32_t*> malloc(max(self._n, 1) * sizeof(uint32_t))
        cdef Py_ssize_t i, r = 0, n_found = 0
        cdef const Rec* rec
        if found == NULL:
            raise MemoryError()
        try:
            for i in range(self._n):
                rec = &self._recs[i]
                if (rec.flags & need) != need or (rec.flags & refuse):
                    continue
                if use_larger and rec.size <= c_larger:
                    continue
                if use_smaller and rec.size >= c_smaller:
                    continue
                if use_since and rec.date < c_since:
                    continue
                if use_before and rec.date >= c_before:
                    continue
                if use_uids:
                    while r < rs.n and rs.hi[r] < rec.uid:
                        r += 1
                    if r == rs.n:
                        break
                    if rec.uid < rs.lo[r]:
                        continue
                found[n_found] = i + 1
                n_found += 1
            return _int_list(found, n_found)
        finally:
            free(found)

    def sort(self, str key="uid", bint reverse=False):
        if key not in ("uid", "size", "date", "modseq"):
            raise KeyError(key)
        cdef Py_ssize_t i
        cdef list keyed = PyList_New(self._n)
        cdef object item
        cdef const Rec* rec
        for i in range(self._n):
            rec = &self._recs[i]
            if key == "uid":
                value = rec.uid
            elif key == "size":
                value = rec.size
            elif key == "date":
                value = rec.date
            else:
                value = rec.modseq
            item = (-value if reverse else value, rec.uid, i + 1)
            Py_INCREF(item)
            PyList_SET_ITEM(keyed, i, item)
        keyed.sort()
        return [t[2] for t in keyed]

    def changed_since(self, modseq):
        cdef uint64_t since = modseq
        cdef uint32_t* found = <uint32_t*> malloc(max(self._n, 1) * sizeof(uint32_t))
        cdef Py_ssize_t i, n_found = 0
        if found == NULL:
            raise MemoryError()
        try:
            for i in range(self._n):
                if self._recs[i].modseq > since:
                    found[n_found] = i + 1
                    n_found += 1
            return _int_list(found, n_found)
        finally:
            free(found)

    def diff(self, View newer):
        cdef Py_ssize_t i, j = 0, n_new = newer._n
        cdef list gone = [], changed = []
        for i in range(self._n):
            while j < n_new and newer._recs[j].uid < self._recs[i].uid:
                j += 1
            if j < n_new and newer._recs[j].uid == self._recs[i].uid:
                if newer._recs[j].modseq != self._recs[i].modseq:
                    changed.append(j + 1)
            else:
                gone.append(i + 1)
        gone.reverse()
        return gone, changed


class Index(_index_py.Index):
    view_class = View
    kernels = Kernels

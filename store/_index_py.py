"""The mail index on LMDB: the pure-Python reference implementation.

Index owns the LMDB layout and transactions for both implementations: store/_index.pyx
subclasses it and swaps in its compiled View and Kernels (class attributes view_class and
kernels); here they are the pure-Python ones of store/_index_view.py. Tests run on both
and compare them on random operation sequences; bench/ measures one against the other.

LMDB layout (one environment under index_directory, one writer / many readers):
  mailboxes   user\\0name              -> MAILBOX header + special-use \\0 keywords...
  messages    >II mailbox_id,first_uid -> a chunk: <= CHUNK packed RECORDs sorted by uid
  expunged    >IQ mailbox_id,modseq    -> packed <I uids expunged at that modseq
  deliveries  user\\0delivery_id       -> DELIVERY (mailbox_id, uid, time, done)
  usage       user                     -> USAGE (bytes, messages): quota usage, kept exact
  subscriptions user\0name          -> b"": IMAP subscriptions, kept apart from the mailboxes
                                        (a name may be subscribed without existing); the
                                        header's subscribed flag mirrors it for existing ones
  structures  >II mailbox_id,uid       -> opaque bytes the imapd computed from the message
                                        (ENVELOPE/BODYSTRUCTURE), a cache: only for UIDs
                                        in the mailbox, dropped with the message
  acls        >I mailbox_id + identifier -> rights (RFC 4314 letters): the mailbox's ACL
                                        entries, dropped with the mailbox, kept by a rename
  meta        b"mailbox_id"            -> last mailbox id handed out
              b"rcnt" >I mailbox_id    -> the first UID no IMAP session has claimed as \\Recent
Chunks keep appends cheap (only the last chunk is rewritten) and flag updates a C loop per
chunk; opening a mailbox concatenates its chunks into one buffer for the View. A named
database missing from an older environment is created when the environment opens.

Interface: Index(path, durable=True) — open_view(user, mailbox) -> View (a consistent
snapshot); create / delete / rename / list mailboxes; reserve_uid + append (idempotent per
delivery id: the id is recorded in the same transaction as the entry); reserve_uids +
append_batch, the same for many deliveries (any users and mailboxes) in one transaction
each (group commit); deliver_in_one(work): both in one transaction, with work's file renames
between them (MailStore.deliver_many); append_many;
subscribe(user, name, on) / subscriptions(user) (a subscription outlives its mailbox;
a rename moves those of the renamed tree);
delivered(user, delivery_id); recent_from / claim_recent (IMAP's \\Recent); store_flags over UID ranges; expunge;
write_many: store_flags, expunge, claim_recent and put_structures requests of any users and
mailboxes in one transaction, a result or error per request (group commit for the imapd);
expunged_since /
changes_since(modseq); usage(user), recount_usage; prune_deliveries; remove_user (purge);
acl(user, mailbox) -> {identifier: rights} / set_acl(user, mailbox, identifier, rights)
(RFC 4314 ACL entries; empty rights remove the entry); shared_with(identifiers) -> the
mailboxes whose ACL names one of them;
structures(user, mailbox, uids) / put_structures(user, mailbox, {uid: blob}), the imapd's
per-message cache (renames keep mailbox ids, so the blobs follow; reconstruct recomputes none).
The environment opens lazily in the process that uses it (after exec; a fork reopens it),
through store.lmdbcheck: a damaged data file is refused (DamagedEnvironment), never mapped.
A full map is grown and the write retried once.
Diagnostics: NoSuchMailbox, MailboxExists, TooManyKeywords, ValueError (store/_index_view.py);
StorageError (store.fsio) when LMDB cannot grow or write; its DamagedEnvironment when the
data file is cut short or foreign (the remedy named: mailctl reconstruct).
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import replace
from typing import Iterable, Iterator, Sequence

import lmdb

from store import lmdbcheck
from store._index_view import (  # the reference's whole interface, re-exported below
    DELETED, MAX_KEYWORDS, MAX_UID, RECORD, RECORD_SIZE, SEEN, SYSTEM_FLAGS, Kernels, MailboxExists,
    MailboxInfo, MessageRecord, NoSuchMailbox, Records, Reservation, TooManyKeywords, View, normalise_ranges, only,
    flag_mask, flag_names, known_flag_mask, parse_sequence_set, ranges_from_values,
)
from store.fsio import StorageError

__all__ = [
    "Index", "View", "Kernels", "Records", "parse_sequence_set", "ranges_from_values", "flag_names",
    "MailboxInfo", "MessageRecord", "Reservation", "NoSuchMailbox", "MailboxExists", "TooManyKeywords",
    "SYSTEM_FLAGS", "MAX_KEYWORDS",
]

MAILBOX = struct.Struct("<IIIQIIQB")  # id, uidvalidity, uidnext, highestmodseq, count, unseen, total_size, subscribed
DELIVERY = struct.Struct("<IIdB")
USAGE = struct.Struct("<QQ")
CHUNK_KEY = struct.Struct(">II")
EXPUNGE_KEY = struct.Struct(">IQ")
RECENT_KEY = struct.Struct(">4sI")   # meta: b"rcnt", mailbox_id -> <I first recent UID
STRUCTURE_KEY = struct.Struct(">II")
CHUNK = 1024
INITIAL_MAP_SIZE = 64 << 20
MAP_GROWTH = 64 << 20  # at least this much more on a full map (address space, not disk)
ACL_KEY = struct.Struct(">I")        # acls: mailbox_id, then the identifier
DATABASES = ("mailboxes", "messages", "expunged", "deliveries", "usage", "structures", "meta", "subscriptions",
             "acls")


def _mailbox_key(user: str, name: str) -> bytes:
    return user.encode() + b"\0" + name.encode()


def _decode_mailbox(user: str, name: str, value: bytes) -> MailboxInfo:
    fixed = MAILBOX.unpack_from(value)
    tail = bytes(value[MAILBOX.size:]).decode().split("\0")
    return MailboxInfo(user, name, fixed[0], fixed[1], fixed[2], fixed[3], fixed[4], fixed[5], fixed[6],
                       bool(fixed[7]), tail[0], tuple(k for k in tail[1:] if k))


def _encode_mailbox(info: MailboxInfo) -> bytes:
    fixed = MAILBOX.pack(info.mailbox_id, info.uidvalidity, info.uidnext, info.highestmodseq, info.count,
                         info.unseen, info.total_size, info.subscribed)
    return fixed + "\0".join((info.special_use, *info.keywords)).encode()


# LMDB allows one open environment per path and process: Index objects on the same path
# share it, and the last close() closes it. A forked child sees another pid and opens its own.
_ENVS: dict[tuple[int, str], list] = {}
REMEDY = "run `mailctl reconstruct` to rebuild the index from the message files"


def _acquire_env(path: str, map_size: int, durable: bool) -> lmdbcheck.Environment:
    key = (os.getpid(), os.path.abspath(path))
    if key not in _ENVS:
        os.makedirs(path, exist_ok=True)
        _ENVS[key] = [lmdbcheck.Environment(path, REMEDY, map_size=map_size, max_dbs=len(DATABASES) + 1,
                                            readahead=False, sync=durable, metasync=durable), 0]
    _ENVS[key][1] += 1
    return _ENVS[key][0]


def _release_env(path: str) -> None:
    key = (os.getpid(), os.path.abspath(path))
    entry = _ENVS.get(key)
    if entry is not None:
        entry[1] -= 1
        if entry[1] == 0:
            del _ENVS[key]
            entry[0].close()


class Index:
    """The LMDB index of every user's mailboxes. Opens its environment lazily, per process."""

    view_class = View
    kernels = Kernels

    def __init__(self, path: str | os.PathLike, map_size: int = INITIAL_MAP_SIZE, durable: bool = True):
        """durable=False skips LMDB's fsync at commit: for tests and benchmarks only."""
        self.path = os.fspath(path)
        self._map_size = map_size
        self._durable = durable
        self._shared: lmdbcheck.Environment | None = None
        self._env: lmdb.Environment | None = None
        self._pid = 0

    # -- environment and transactions
    def _open(self) -> lmdb.Environment:
        """The env for one transaction: checked before it is mapped, reopened when
        reconstruct put a new data file in place of a damaged one (store.lmdbcheck)."""
        if self._shared is None or self._pid != os.getpid():
            self._shared = _acquire_env(self.path, self._map_size, self._durable)
            self._pid = os.getpid()
            self._env = None
        env = self._shared.current()
        if env is not self._env:
            self._env = env
            self._db = {name: env.open_db(name.encode()) for name in DATABASES}  # missing ones are created
        return env

    def close(self) -> None:
        if self._shared is not None and self._pid == os.getpid():
            _release_env(self.path)
        self._shared = self._env = None

    def _read(self, action):
        env = self._open()
        try:
            with env.begin(buffers=True) as txn:
                return action(txn)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # another process grew the map: adopt its size
            with env.begin(buffers=True) as txn:
                return action(txn)

    def _write(self, action, buffers: bool = False):
        """Run action(txn) in one write transaction; a full map is grown once and retried.
        buffers=True: values are read in place, valid only until the next write."""
        env = self._open()
        grown = False
        while True:
            try:
                with env.begin(write=True, buffers=buffers) as txn:
                    return action(txn)
            except lmdb.MapResizedError:
                env.set_mapsize(0)  # another process grew it: adopt its size, then retry
            except lmdb.MapFullError:
                if grown:
                    raise StorageError("index map is full and could not grow") from None
                grown = True
                size = env.info()["map_size"]
                env.set_mapsize(size + max(size, MAP_GROWTH))
            except lmdb.Error as e:
                raise StorageError(f"index write failed: {e}") from e

    def write_many(self, requests: Iterable[tuple[str, tuple]]) -> list:
        """Many writes of any users and mailboxes in one write transaction, in the order given
        (group commit: the imapd's sessions share it). A request is (kind, arguments):
        ("flags", store_flags'), ("expunge", expunge's), ("recent", claim_recent's) or
        ("structures", put_structures'). Per request its result, or the error that stops it
        alone (NoSuchMailbox; for flags also TooManyKeywords and the ValueError of a bad mode),
        raised before that request wrote anything."""
        steps = []
        for kind, args in requests:
            prepare, step, errors = _WRITE_STEPS[kind]
            try:
                steps.append((step, errors, prepare(*args)))
            except (ValueError, TypeError) as e:  # malformed arguments (UID ranges): this request alone
                steps.append(e)

        def each(txn):
            results = []
            for entry in steps:
                if isinstance(entry, Exception):
                    results.append(entry)
                    continue
                step, errors, args = entry
                try:
                    results.append(step(self, txn, *args))
                except errors as e:
                    results.append(e)
            return results
        return self._write(each, buffers=True)

    # -- mailboxes
    def _header(self, txn, user: str, name: str) -> MailboxInfo:
        value = txn.get(_mailbox_key(user, name), db=self._db["mailboxes"])
        if value is None:
            raise NoSuchMailbox(f"{user}: no mailbox {name!r}")
        return _decode_mailbox(user, name, value)

    def _put_header(self, txn, info: MailboxInfo) -> None:
        txn.put(_mailbox_key(info.user, info.name), _encode_mailbox(info), db=self._db["mailboxes"])

    def mailbox(self, user: str, name: str) -> MailboxInfo | None:
        try:
            return self._read(lambda txn: self._header(txn, user, name))
        except NoSuchMailbox:
            return None

    def mailboxes(self, user: str) -> list[MailboxInfo]:
        """The user's mailboxes, sorted by name."""
        return self._read(lambda txn: self._mailboxes_in(txn, user))

    def users(self) -> list[str]:
        """Every user that has mailboxes or usage recorded."""
        def collect(txn):
            boxes = txn.cursor(db=self._db["mailboxes"]).iternext(values=False)
            names = {bytes(k).partition(b"\0")[0].decode() for k in boxes}
            names.update(bytes(k).decode() for k in txn.cursor(db=self._db["usage"]).iternext(values=False))
            return sorted(names)
        return self._read(collect)

    def create_mailbox(self, user: str, name: str, uidvalidity: int | None = None, uidnext: int = 1,
                       special_use: str = "", subscribed: bool = False) -> MailboxInfo:
        def create(txn):
            key = _mailbox_key(user, name)
            if txn.get(key, db=self._db["mailboxes"]) is not None:
                raise MailboxExists(f"{user}: mailbox {name!r} exists")
            last = txn.get(b"mailbox_id", db=self._db["meta"])
            mailbox_id = (struct.unpack("<I", last)[0] if last else 0) + 1
            txn.put(b"mailbox_id", struct.pack("<I", mailbox_id), db=self._db["meta"])
            validity = uidvalidity or self._new_uidvalidity(txn)
            subscribed_now = subscribed or txn.get(key, db=self._db["subscriptions"]) is not None
            info = MailboxInfo(user, name, mailbox_id, validity, max(uidnext, 1), 1, 0, 0, 0, subscribed_now,
                               special_use, ())
            self._put_header(txn, info)
            if subscribed:
                txn.put(key, b"", db=self._db["subscriptions"])
            return info
        return self._write(create)

    def _new_uidvalidity(self, txn) -> int:
        """Seconds since the epoch (as Dovecot does), but always above the last one handed
        out: a mailbox deleted and re-created within a second must not reuse it."""
        last = txn.get(b"uidvalidity", db=self._db["meta"])
        validity = max(int(time.time()), (struct.unpack("<I", last)[0] if last else 0) + 1) & 0xFFFFFFFF
        txn.put(b"uidvalidity", struct.pack("<I", validity), db=self._db["meta"])
        return validity

    def set_mailbox_attributes(self, user: str, name: str, subscribed: bool | None = None,
                               special_use: str | None = None) -> MailboxInfo:
        def update(txn):
            info = self._header(txn, user, name)
            if subscribed is not None:
                info = self._subscribe_in(txn, user, name, subscribed)
            if special_use is not None:
                info = replace(info, special_use=special_use)
                self._put_header(txn, info)
            return info
        return self._write(update)

    def subscribe(self, user: str, name: str, on: bool) -> MailboxInfo | None:
        """Subscribe to (or unsubscribe from) name, which need not exist; returns the
        mailbox's header with its subscribed flag updated, None when there is no such mailbox."""
        return self._write(lambda txn: self._subscribe_in(txn, user, name, on))

    def _subscribe_in(self, txn, user: str, name: str, on: bool) -> MailboxInfo | None:
        key = _mailbox_key(user, name)
        if on:
            txn.put(key, b"", db=self._db["subscriptions"])
        else:
            txn.delete(key, db=self._db["subscriptions"])
        value = txn.get(key, db=self._db["mailboxes"])
        if value is None:
            return None
        info = _decode_mailbox(user, name, value)
        if info.subscribed != on:
            info = replace(info, subscribed=on)
            self._put_header(txn, info)
        return info

    def subscriptions(self, user: str) -> list[str]:
        """The names user is subscribed to (existing or not), sorted."""
        return self._read(lambda txn: self._subscriptions_in(txn, user))

    def _subscriptions_in(self, txn, user: str) -> list[str]:
        prefix = user.encode() + b"\0"
        cursor = txn.cursor(db=self._db["subscriptions"])
        found = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                found.append(key[len(prefix):].decode())
        return found

    def delete_mailbox(self, user: str, name: str) -> MailboxInfo:
        """Remove the mailbox and its messages from the index (usage is reduced); returns its
        last header. The caller removes the files afterwards."""
        def delete(txn):
            info = self._header(txn, user, name)
            self._drop_messages(txn, info.mailbox_id)
            txn.delete(_mailbox_key(user, name), db=self._db["mailboxes"])
            self._add_usage(txn, user, -info.total_size, -info.count)
            return info
        return self._write(delete)

    def remove_user(self, user: str) -> list[MailboxInfo]:
        """Forget everything about user in one transaction: mailboxes, their messages and
        expunge records, quota usage and delivery ids. Returns the mailboxes that were there
        (none for a user the index never saw). The caller removes the files."""
        def remove(txn):
            boxes = self._mailboxes_in(txn, user)
            for info in boxes:
                self._drop_messages(txn, info.mailbox_id)
                txn.delete(_mailbox_key(user, info.name), db=self._db["mailboxes"])
            txn.delete(user.encode(), db=self._db["usage"])
            self._drop_prefix(txn, self._db["deliveries"], _delivery_key(user, ""))
            self._drop_prefix(txn, self._db["subscriptions"], _mailbox_key(user, ""))
            return boxes
        return self._write(remove)

    def _drop_messages(self, txn, mailbox_id: int) -> None:
        prefix = struct.pack(">I", mailbox_id)
        for db in (self._db["messages"], self._db["expunged"], self._db["structures"], self._db["acls"]):
            self._drop_prefix(txn, db, prefix)

    @staticmethod
    def _drop_prefix(txn, db, prefix: bytes) -> None:
        """Delete every key of db that starts with prefix."""
        cursor = txn.cursor(db=db)
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                if not cursor.delete():
                    break

    def rename_mailbox(self, user: str, old: str, new: str, separator: str = "/") -> list[tuple[str, str]]:
        """Rename old and every mailbox below it; returns the (old, new) name pairs. The
        subscriptions of the renamed tree move with it (a renamed mailbox's target name is
        subscribed exactly when its old name was, as its header says)."""
        def rename(txn):
            db = self._db["mailboxes"]
            if txn.get(_mailbox_key(user, new), db=db) is not None:
                raise MailboxExists(f"{user}: mailbox {new!r} exists")
            self._header(txn, user, old)
            pairs = [(old, new)] + [(m.name, new + m.name[len(old):]) for m in self._mailboxes_in(txn, user)
                                    if m.name.startswith(old + separator)]
            for source, target in pairs:
                if source != old and txn.get(_mailbox_key(user, target), db=db) is not None:
                    raise MailboxExists(f"{user}: mailbox {target!r} exists")
            for source, target in pairs:
                value = txn.pop(_mailbox_key(user, source), db=db)
                txn.put(_mailbox_key(user, target), value, db=db)
            subs = self._db["subscriptions"]
            moved = [name for name in self._subscriptions_in(txn, user)
                     if name == old or name.startswith(old + separator)]
            for name in moved:
                txn.delete(_mailbox_key(user, name), db=subs)
            for _, target in pairs:
                txn.delete(_mailbox_key(user, target), db=subs)
            for name in moved:
                txn.put(_mailbox_key(user, new + name[len(old):]), b"", db=subs)
            return pairs
        return self._write(rename)

    def _mailboxes_in(self, txn, user: str) -> list[MailboxInfo]:
        prefix = user.encode() + b"\0"
        found = []
        cursor = txn.cursor(db=self._db["mailboxes"])
        if cursor.set_range(prefix):
            for key, value in cursor:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                found.append(_decode_mailbox(user, key[len(prefix):].decode(), value))
        return found

    # -- access control lists (RFC 4314)
    def acl(self, user: str, name: str) -> dict[str, str]:
        """The mailbox's ACL entries, identifier -> rights; NoSuchMailbox when it does not exist."""
        def look(txn):
            prefix = ACL_KEY.pack(self._header(txn, user, name).mailbox_id)
            cursor = txn.cursor(db=self._db["acls"])
            found = {}
            if cursor.set_range(prefix):
                for key, value in cursor:
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    found[key[len(prefix):].decode()] = bytes(value).decode()
            return found
        return self._read(look)

    def set_acl(self, user: str, name: str, identifier: str, rights: str) -> MailboxInfo:
        """Give identifier exactly these rights on the mailbox ("" removes its entry)."""
        def update(txn):
            info = self._header(txn, user, name)
            key = ACL_KEY.pack(info.mailbox_id) + identifier.encode()
            if rights:
                txn.put(key, rights.encode(), db=self._db["acls"])
            else:
                txn.delete(key, db=self._db["acls"])
            return info
        return self._write(update)

    def shared_with(self, identifiers: Iterable[str]) -> list[MailboxInfo]:
        """The mailboxes (any owner) whose ACL has an entry for one of the identifiers."""
        wanted = {i.encode() for i in identifiers}
        def collect(txn):
            ids = {ACL_KEY.unpack_from(bytes(key))[0]
                   for key in txn.cursor(db=self._db["acls"]).iternext(values=False)
                   if bytes(key)[ACL_KEY.size:] in wanted}
            if not ids:
                return []
            found = []
            for key, value in txn.cursor(db=self._db["mailboxes"]):
                if MAILBOX.unpack_from(value)[0] in ids:
                    user, _, name = bytes(key).decode().partition("\0")
                    found.append(_decode_mailbox(user, name, value))
            return found
        return self._read(collect)

    # -- usage
    def _add_usage(self, txn, user: str, size_delta: int, count_delta: int) -> None:
        key = user.encode()
        value = txn.get(key, db=self._db["usage"])
        size, count = USAGE.unpack(value) if value is not None else (0, 0)
        txn.put(key, USAGE.pack(max(size + size_delta, 0), max(count + count_delta, 0)), db=self._db["usage"])

    def usage(self, user: str) -> tuple[int, int]:
        """(bytes, messages) stored for user, over all mailboxes."""
        value = self._read(lambda txn: txn.get(user.encode(), db=self._db["usage"]))
        return USAGE.unpack(value) if value is not None else (0, 0)

    def recount_usage(self, user: str) -> tuple[int, int]:
        """Recompute usage from the mailbox headers (reconstruct); returns it."""
        def recount(txn):
            boxes = self._mailboxes_in(txn, user)
            usage = (sum(m.total_size for m in boxes), sum(m.count for m in boxes))
            txn.put(user.encode(), USAGE.pack(*usage), db=self._db["usage"])
            return usage
        return self._write(recount)

    # -- delivery
    def reserve_uid(self, user: str, name: str, delivery_id: str | None = None,
                    fresh: bool = False, count: int = 1) -> Reservation:
        """Set aside the next UID (count > 1: that many, .uid is the first). With a delivery
        id seen before, returns that delivery's UID and state ("pending": file may exist,
        append not done; "done": nothing to do); fresh=True hands a pending delivery a new UID."""
        if count < 1 or (count > 1 and delivery_id is not None):
            raise ValueError("a delivery id reserves exactly one UID")
        return self._write(lambda txn: self._reserve(txn, user, name, delivery_id, fresh, count))

    def reserve_uids(self, items: Iterable[tuple[str, str, str | None]],
                     fresh: bool = False) -> list[Reservation | NoSuchMailbox | StorageError]:
        """reserve_uid for each (user, mailbox, delivery_id), all in one transaction, in the
        order given. Per item its Reservation, or the NoSuchMailbox / StorageError (out of
        UIDs) that stops that item alone."""
        items = list(items)
        return self._write(lambda txn: self._reserve_uids_in(txn, items, fresh))

    def _reserve_uids_in(self, txn, items: list, fresh: bool) -> list:
        reservations = []
        for user, name, delivery_id in items:
            try:
                reservations.append(self._reserve(txn, user, name, delivery_id, fresh, 1))
            except (NoSuchMailbox, StorageError) as e:  # raised before anything was written
                reservations.append(e)
        return reservations

    def _reserve(self, txn, user: str, name: str, delivery_id: str | None, fresh: bool, count: int) -> Reservation:
        info = self._header(txn, user, name)
        if delivery_id is not None and not fresh:
            known = txn.get(_delivery_key(user, delivery_id), db=self._db["deliveries"])
            if known is not None:
                mailbox_id, uid, _, done = DELIVERY.unpack(known)
                if mailbox_id == info.mailbox_id:
                    return Reservation(uid, info.uidvalidity, "done" if done else "pending")
        uid = info.uidnext
        if uid + count > MAX_UID:  # UIDNEXT, one above the last UID, must stay a 32-bit number
            raise StorageError(f"{user}: mailbox {name!r} has run out of UIDs (reconstruct renumbers)")
        self._put_header(txn, replace(info, uidnext=uid + count))
        if delivery_id is not None:
            self._record_delivery(txn, user, delivery_id, info.mailbox_id, uid, False)
        return Reservation(uid, info.uidvalidity, "new")

    def delivered(self, user: str, delivery_id: str) -> bool:
        """True when delivery_id's message made it into the index: its append is done, or
        reconstruct adopted the file of a delivery cut short. False for an unknown id or a
        file never indexed (the delivery has to be done, or finished, still)."""
        def look(txn):
            value = txn.get(_delivery_key(user, delivery_id), db=self._db["deliveries"])
            if value is None:
                return False
            mailbox_id, uid, _, done = DELIVERY.unpack(value)
            return bool(done) or self._has_record(txn, mailbox_id, uid)
        return self._read(look)

    def _record_delivery(self, txn, user, delivery_id, mailbox_id, uid, done) -> None:
        txn.put(_delivery_key(user, delivery_id), DELIVERY.pack(mailbox_id, uid, time.time(), done),
                db=self._db["deliveries"])

    def append(self, user: str, name: str, uid: int, size: int, internal_date: int,
               flags: Iterable[str] = (), delivery_id: str | None = None) -> bool:
        """Add message uid (its file is already durable). Returns False if uid was already in
        the index (a retried or reconstructed delivery): nothing changes then but the
        delivery id's done-mark, recorded in the same transaction."""
        def add(txn):
            info = self._header(txn, user, name)
            if delivery_id is not None:
                self._record_delivery(txn, user, delivery_id, info.mailbox_id, uid, True)
            return uid in self._add_messages(txn, info, [(uid, size, internal_date, flags)])
        return self._write(add)

    def append_batch(self, items: Iterable[tuple[str, str, int, int, int, Iterable[str], str | None]]
                     ) -> list[bool | NoSuchMailbox]:
        """append for each (user, mailbox, uid, size, internal_date, flags, delivery_id), all in
        one transaction; each mailbox's messages go in together, in UID order (one modseq).
        Per item: True if new, False if its UID was indexed already (its done-mark is
        recorded all the same), or the NoSuchMailbox of a mailbox that is gone."""
        items = list(items)
        return self._write(lambda txn: self._append_batch_in(txn, items))

    def _append_batch_in(self, txn, items: list) -> list:
        by_mailbox: dict[tuple[str, str], list[int]] = {}
        for position, item in enumerate(items):
            by_mailbox.setdefault((item[0], item[1]), []).append(position)
        results: list = [None] * len(items)
        for (user, name), positions in by_mailbox.items():
            try:
                info = self._header(txn, user, name)
            except NoSuchMailbox as e:
                for position in positions:
                    results[position] = e
                continue
            for position in positions:
                uid, delivery_id = items[position][2], items[position][6]
                if delivery_id is not None:
                    self._record_delivery(txn, user, delivery_id, info.mailbox_id, uid, True)
            added = self._add_messages(txn, info, sorted((items[p][2:6] for p in positions), key=lambda m: m[0]))
            for position in positions:
                results[position] = items[position][2] in added
        return results

    def deliver_in_one(self, work):
        """work(batch) in one write transaction, committed (durably) when it returns its result:
        batch.reserve_uids(items, fresh) and batch.append_batch(items) are reserve_uids and
        append_batch inside it, so a delivery's UIDs, its files' renames (which work does
        between the two) and its entries cost one commit, and nobody sees the UIDs before
        the files are in place. work may run again (the map grew): when it raises, it undoes
        what it did outside the index first."""
        return self._write(lambda txn: work(_DeliveryTransaction(self, txn)))

    def append_many(self, user: str, name: str, messages: Iterable[tuple[int, int, int, Iterable[str]]]) -> int:
        """Add (uid, size, internal_date, flags) messages in one transaction (reconstruct,
        bulk loads); returns how many were new."""
        messages = sorted(messages, key=lambda m: m[0])
        return self._write(lambda txn: len(self._add_messages(txn, self._header(txn, user, name), messages)))

    def _add_messages(self, txn, info: MailboxInfo, messages) -> set[int]:
        """Add (uid, size, internal_date, flags) messages (sorted by uid) to the mailbox of
        info, with one new modseq; returns the UIDs that were not indexed before."""
        if not messages:
            return set()
        modseq = info.highestmodseq + 1
        keywords = info.keywords
        records = []
        for uid, size, internal_date, flags in messages:
            mask, keywords = flag_mask(flags, keywords)
            records.append(RECORD.pack(uid, size, mask, int(internal_date), modseq))
        added = self._append_at_end(txn, info.mailbox_id, records)
        if added is None:
            added = [r for r in records if self._insert_record(txn, info.mailbox_id, RECORD.unpack(r)[0], r)]
        if not added:
            return set()
        uids = {RECORD.unpack_from(r)[0] for r in added}
        size = sum(RECORD.unpack(r)[1] for r in added)
        unseen = sum(1 for r in added if not RECORD.unpack(r)[2] & SEEN)
        last_uid = max(uids)
        self._put_header(txn, replace(
            info, uidnext=max(info.uidnext, last_uid + 1), highestmodseq=modseq, count=info.count + len(added),
            unseen=info.unseen + unseen, total_size=info.total_size + size, keywords=keywords))
        self._add_usage(txn, info.user, size, len(added))
        return uids

    def _append_at_end(self, txn, mailbox_id: int, records: list[bytes]) -> list[bytes] | None:
        """Fast path: records (sorted, distinct) all above the mailbox's last UID fill up its
        last chunk and then new ones. None when that does not apply."""
        uids = [RECORD.unpack_from(r)[0] for r in records]
        if any(a >= b for a, b in zip(uids, uids[1:])):
            return None
        db = self._db["messages"]
        key, chunk = self._chunk_holding(txn.cursor(db=db), mailbox_id, MAX_UID)
        if chunk and RECORD.unpack_from(chunk, len(chunk) - RECORD_SIZE)[0] >= uids[0]:
            return None
        if key is None:
            key = CHUNK_KEY.pack(mailbox_id, uids[0])
        room = CHUNK - len(chunk) // RECORD_SIZE
        txn.put(key, chunk + b"".join(records[:room]), db=db)
        for start in range(room, len(records), CHUNK):
            piece = records[start:start + CHUNK]
            txn.put(CHUNK_KEY.pack(mailbox_id, uids[start]), b"".join(piece), db=db)
        return records

    def _has_record(self, txn, mailbox_id: int, uid: int) -> bool:
        _, chunk = self._chunk_holding(txn.cursor(db=self._db["messages"]), mailbox_id, uid)
        position = self._position(chunk, uid)
        return position < len(chunk) and RECORD.unpack_from(chunk, position)[0] == uid

    def _insert_record(self, txn, mailbox_id: int, uid: int, record: bytes) -> bool:
        """Put record into its chunk in UID order (False if uid is there already). A full
        chunk is split in two; a chunk is keyed by its first UID."""
        db = self._db["messages"]
        key, chunk = self._chunk_holding(txn.cursor(db=db), mailbox_id, uid)
        position = self._position(chunk, uid)
        if position < len(chunk) and RECORD.unpack_from(chunk, position)[0] == uid:
            return False
        chunk = chunk[:position] + record + chunk[position:]
        if key is not None and position == 0:
            txn.delete(key, db=db)  # the first UID changes, so does the key
        pieces = [chunk]
        if len(chunk) > CHUNK * RECORD_SIZE:
            half = (len(chunk) // RECORD_SIZE // 2) * RECORD_SIZE
            pieces = [chunk[:half], chunk[half:]]
        for piece in pieces:
            txn.put(CHUNK_KEY.pack(mailbox_id, RECORD.unpack_from(piece)[0]), piece, db=db)
        return True

    @staticmethod
    def _position(chunk: bytes, uid: int) -> int:
        lo, hi = 0, len(chunk) // RECORD_SIZE
        while lo < hi:
            mid = (lo + hi) // 2
            if RECORD.unpack_from(chunk, mid * RECORD_SIZE)[0] < uid:
                lo = mid + 1
            else:
                hi = mid
        return lo * RECORD_SIZE

    @staticmethod
    def _chunk_holding(cursor, mailbox_id: int, uid: int) -> tuple[bytes | None, bytes]:
        """The chunk to hold uid: the last one starting at or below uid, else the mailbox's
        first chunk; (None, b"") for an empty mailbox."""
        target = CHUNK_KEY.pack(mailbox_id, uid)
        prefix = target[:4]
        found = cursor.set_range(target)
        if found and bytes(cursor.key()) == target:
            return target, bytes(cursor.value())
        if (cursor.prev() if found else cursor.last()) and bytes(cursor.key())[:4] == prefix:
            return bytes(cursor.key()), bytes(cursor.value())
        if cursor.set_range(prefix) and bytes(cursor.key())[:4] == prefix:
            return bytes(cursor.key()), bytes(cursor.value())
        return None, b""

    def _chunks(self, txn, mailbox_id: int) -> Iterator[tuple[bytes, bytes]]:
        prefix = struct.pack(">I", mailbox_id)
        cursor = txn.cursor(db=self._db["messages"])
        if cursor.set_range(prefix):
            for key, value in cursor:
                if bytes(key[:4]) != prefix:
                    break
                yield bytes(key), value

    # -- flags and expunge
    def store_flags(self, user: str, name: str, uid_ranges: Sequence[tuple[int, int]], mode: str,
                    flags: Iterable[str], unchanged_since: int | None = None) -> "Records":
        """+FLAGS ("+"), -FLAGS ("-") or FLAGS ("=") on the messages in uid_ranges (sorted,
        merged). CONDSTORE: with unchanged_since, messages modified after it are left alone
        and reported in .conflicts."""
        return only(self.write_many([("flags", (user, name, uid_ranges, mode, flags, unchanged_since))]))

    def _store_flags_in(self, txn, user: str, name: str, ranges: list[tuple[int, int]], mode: str,
                        flags: tuple[str, ...], unchanged_since: int | None) -> "Records":
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad flag mode {mode!r}")
        info = self._header(txn, user, name)
        if mode == "-":
            mask, keywords = known_flag_mask(flags, info.keywords, strict=False), info.keywords
        else:
            mask, keywords = flag_mask(flags, info.keywords)
        modseq = info.highestmodseq + 1
        changed, conflicts, unseen_delta = [], [], 0
        prefix = struct.pack(">I", info.mailbox_id)
        cursor = txn.cursor(db=self._db["messages"])
        found = cursor.set_range(prefix)
        while found and bytes(cursor.key()[:4]) == prefix:
            # the chunk is read in place; the kernel's copy is what gets written back
            new_chunk, chunk_changed, delta, chunk_conflicts = self.kernels.apply_flags(
                cursor.value(), ranges, mode, mask, modseq, -1 if unchanged_since is None else unchanged_since)
            if chunk_changed:
                cursor.put(bytes(cursor.key()), new_chunk)
                changed.append((new_chunk, chunk_changed))
                unseen_delta += delta
            if chunk_conflicts:
                conflicts.append(chunk_conflicts)
            found = cursor.next()
        if changed or keywords != info.keywords:
            self._put_header(txn, replace(info, highestmodseq=modseq if changed else info.highestmodseq,
                                           unseen=info.unseen + unseen_delta, keywords=keywords))
        return Records(changed, keywords, conflicts)

    def expunge(self, user: str, name: str, uid_ranges: Sequence[tuple[int, int]] | None = None,
                deleted_only: bool = True) -> "Records":
        """Remove messages flagged \\Deleted (within uid_ranges if given; deleted_only=False:
        every message in uid_ranges). Returns the removed records; the caller unlinks their
        files afterwards (reconstruct removes files of expunged UIDs it finds)."""
        return only(self.write_many([("expunge", (user, name, uid_ranges, deleted_only))]))

    def _expunge_in(self, txn, user: str, name: str, ranges: list[tuple[int, int]] | None,
                    deleted_only: bool) -> "Records":
        info = self._header(txn, user, name)
        db = self._db["messages"]
        removed = []
        for key, chunk in [(key, bytes(chunk)) for key, chunk in self._chunks(txn, info.mailbox_id)]:
            kept, gone = self.kernels.remove_records(chunk, ranges, DELETED if deleted_only else 0)
            if not gone:
                continue
            removed.append((gone, None))
            txn.delete(key, db=db)
            if kept:
                txn.put(CHUNK_KEY.pack(info.mailbox_id, RECORD.unpack_from(kept)[0]), kept, db=db)
        result = Records(removed, info.keywords, [])
        if not removed:
            return result
        modseq = info.highestmodseq + 1
        txn.put(EXPUNGE_KEY.pack(info.mailbox_id, modseq),
                struct.pack(f"<{len(result)}I", *result.uids()), db=self._db["expunged"])
        size = result.total_size()
        unseen = sum(1 for r in result if "\\Seen" not in r.flags)
        self._put_header(txn, replace(info, highestmodseq=modseq, count=info.count - len(result),
                                       unseen=info.unseen - unseen, total_size=info.total_size - size))
        self._add_usage(txn, user, -size, -len(result))
        for uid in result.uids():
            txn.delete(STRUCTURE_KEY.pack(info.mailbox_id, uid), db=self._db["structures"])
        return result

    def expunged_since(self, user: str, name: str, modseq: int) -> list[int]:
        """UIDs expunged after modseq, ascending (QRESYNC VANISHED; reconstruct)."""
        def collect(txn):
            info = self._header(txn, user, name)
            cursor = txn.cursor(db=self._db["expunged"])
            uids = []
            if cursor.set_range(EXPUNGE_KEY.pack(info.mailbox_id, modseq + 1)):
                for key, value in cursor:
                    if EXPUNGE_KEY.unpack(key)[0] != info.mailbox_id:
                        break
                    uids.extend(struct.unpack(f"<{len(value) // 4}I", value))
            return sorted(uids)
        return self._read(collect)

    # -- reading
    def open_view(self, user: str, name: str) -> View:
        """A consistent snapshot of the mailbox (header and messages from one read transaction)."""
        def load(txn):
            info = self._header(txn, user, name)
            blob = b"".join(chunk for _, chunk in self._chunks(txn, info.mailbox_id))
            return self.view_class(info, blob)
        return self._read(load)

    def changes_since(self, user: str, name: str, modseq: int) -> tuple[list[MessageRecord], list[int]]:
        """(messages changed or added after modseq, UIDs expunged after it) — CONDSTORE/QRESYNC."""
        view = self.open_view(user, name)
        changed = [view.record(seq) for seq in view.changed_since(modseq)]
        return changed, self.expunged_since(user, name, modseq)

    # -- the imapd's per-message structure blobs
    def recent_from(self, user: str, name: str) -> tuple[int, int]:
        """(first UID still recent, UIDNEXT): the messages no IMAP session has claimed yet."""
        def look(txn):
            info = self._header(txn, user, name)
            value = txn.get(RECENT_KEY.pack(b"rcnt", info.mailbox_id), db=self._db["meta"])
            return (struct.unpack("<I", value)[0] if value is not None else 1), info.uidnext
        return self._read(look)

    def claim_recent(self, user: str, name: str) -> tuple[int, int]:
        """IMAP's \\Recent: the UIDs from the first unclaimed one up to UIDNEXT are recent in the
        session that claims them, and in no other. Returns that (first, uidnext) range."""
        return only(self.write_many([("recent", (user, name))]))

    def _claim_recent_in(self, txn, user: str, name: str) -> tuple[int, int]:
        info = self._header(txn, user, name)
        key = RECENT_KEY.pack(b"rcnt", info.mailbox_id)
        value = txn.get(key, db=self._db["meta"])
        first = struct.unpack("<I", value)[0] if value is not None else 1
        if first < info.uidnext:
            txn.put(key, struct.pack("<I", info.uidnext), db=self._db["meta"])
        return first, info.uidnext

    def structures(self, user: str, name: str, uids: Iterable[int]) -> dict[int, bytes]:
        """The blobs stored for uids (one read transaction); a UID without one is absent."""
        uids = [uid for uid in uids if 0 < uid <= MAX_UID]

        def look(txn):
            info = self._header(txn, user, name)
            db = self._db["structures"]
            found = {}
            for uid in uids:
                value = txn.get(STRUCTURE_KEY.pack(info.mailbox_id, uid), db=db)
                if value is not None:
                    found[uid] = bytes(value)
            return found
        return self._read(look)

    def put_structures(self, user: str, name: str, blobs: dict[int, bytes]) -> int:
        """Store {uid: blob} in one write transaction, replacing older blobs; UIDs no longer in
        the mailbox (expunged meanwhile) are skipped, so no blob outlives its message.
        Returns how many were stored."""
        return only(self.write_many([("structures", (user, name, blobs))]))

    def _put_structures_in(self, txn, user: str, name: str, blobs: dict[int, bytes]) -> int:
        info = self._header(txn, user, name)
        present = self._present(txn, info.mailbox_id, sorted(u for u in blobs if 0 < u <= MAX_UID))
        for uid in present:
            txn.put(STRUCTURE_KEY.pack(info.mailbox_id, uid), bytes(blobs[uid]), db=self._db["structures"])
        return len(present)

    def _present(self, txn, mailbox_id: int, uids: list[int]) -> list[int]:
        """The UIDs of uids (ascending) that the mailbox holds; each chunk is read once."""
        cursor = txn.cursor(db=self._db["messages"])
        present, chunk, last = [], b"", -1
        for uid in uids:
            if not chunk or uid > last or uid < RECORD.unpack_from(chunk)[0]:
                _, chunk = self._chunk_holding(cursor, mailbox_id, uid)
                last = RECORD.unpack_from(chunk, len(chunk) - RECORD_SIZE)[0] if chunk else -1
            position = self._position(chunk, uid)
            if position < len(chunk) and RECORD.unpack_from(chunk, position)[0] == uid:
                present.append(uid)
        return present

    def prune_deliveries(self, older_than: float) -> int:
        """Forget delivery ids recorded before older_than (epoch seconds); returns how many."""
        def prune(txn):
            cursor = txn.cursor(db=self._db["deliveries"])
            stale = [bytes(k) for k, v in cursor if DELIVERY.unpack(v)[2] < older_than]
            for key in stale:
                txn.delete(key, db=self._db["deliveries"])
            return len(stale)
        return self._write(prune)


# write_many's kinds: (arguments -> the step's arguments, materialised once so a retried
# transaction sees the same; the step; the errors that stop one request alone)
_WRITE_STEPS = {
    "flags": (lambda user, name, ranges, mode, flags, since=None:
              (user, name, normalise_ranges(list(ranges)), mode, tuple(flags), since),
              Index._store_flags_in, (NoSuchMailbox, ValueError)),
    "expunge": (lambda user, name, ranges=None, deleted_only=True:
                (user, name, None if ranges is None else normalise_ranges(list(ranges)), deleted_only),
                Index._expunge_in, NoSuchMailbox),
    "recent": (lambda user, name: (user, name), Index._claim_recent_in, NoSuchMailbox),
    "structures": (lambda user, name, blobs: (user, name, blobs), Index._put_structures_in, NoSuchMailbox),
}


def _delivery_key(user: str, delivery_id: str) -> bytes:
    return user.encode() + b"\0" + delivery_id.encode()




class _DeliveryTransaction:
    """Index.deliver_in_one's handle on its open write transaction."""

    def __init__(self, index: Index, txn):
        self._index, self._txn = index, txn

    def reserve_uids(self, items: Iterable[tuple[str, str, str | None]], fresh: bool = False) -> list:
        return self._index._reserve_uids_in(self._txn, list(items), fresh)

    def append_batch(self, items: Iterable[tuple]) -> list:
        return self._index._append_batch_in(self._txn, list(items))

"""Users' mailboxes on disk: delivery, folders, views, flags and expunge.

The files are laid out as store/layout.py says (one directory per mailbox, one file per
message, a .mailbox and a .journal file per mailbox). The index (store.index, LMDB under
index_directory) is the truth while it exists; store/reconstruct.py rebuilds it from the files.

Interface: MailStore(store_dir, index_dir) (a process has one: store.handle.Store.mail).
deliver(user, mailbox, source, delivery_id=None, flags=(), internal_date=None) -> UID,
idempotent per delivery id; deliver_many([DeliveryRequest]) -> [UID or exception], the same
for a batch (group commit: one fsync per message, one per mailbox directory, two index
commits for the whole batch); create/delete/rename/list mailboxes; subscribe(user, name, on)
and subscriptions(user): IMAP subscriptions, apart from the mailboxes (a name may be
subscribed while it does not exist; DELETE keeps it, RENAME moves those of the renamed tree;
an existing mailbox's .mailbox file records its subscription for reconstruct);
open_mailbox(user, mailbox) -> MailboxView (messages with uid, size, flags, path); set_flags;
expunge; copy (COPY/MOVE, also into another user's mailbox); acl / set_acl / shared_with
(a mailbox's RFC 4314 ACL, kept in the index and its .mailbox file); usage(user) (the quota rule is store/directory.py's);
delivered(user, delivery_id) -> bool; remove_user(user) (all of a user's mail);
structures(user, mailbox, uids) / put_structures(user, mailbox, {uid: blob}): the imapd's
per-message ENVELOPE/BODYSTRUCTURE cache, kept with the index entry.
Group commit for the imapd (workers/imapd/writer.py): write_many takes flag, expunge,
\\Recent and structure requests of many sessions (any users and mailboxes) into one index
transaction; each request gets its own result or error.
Change notification: after every index commit that changes a mailbox (delivery, once per
mailbox and batch; flags; expunge; copy target; create, rename, delete) its directory is
signalled (store.notify.signal), which IDLE sessions watch; a failed signal fails nothing.
The user's top directory (user_dir) is signalled after create, delete, rename and
(un)subscribe: NOTIFY sessions (workers/imapd/notify.py) watch it for their LIST updates.
remove_user needs no signal: its directories are removed after the index commit.
Ordering that keeps crashes safe: message file durable -> index entry (with the delivery id
in the same transaction); expunge: index first, then unlink (reconstruct removes the files of
expunged UIDs it still finds). A mailbox directory is flock()ed from the hand-out of its UIDs
until they are indexed, so UIDs enter the index in ascending order; whoever holds several
such locks takes them in sorted path order.
Diagnostics: StorageError (temporary: disk full, I/O, index full), NoSuchMailbox,
MailboxExists, BadMailboxName, Refused-like ValueError subclasses for bad requests.
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from store import fsio, notify
from store.index import (
    Index, MailboxExists, MailboxInfo, NoSuchMailbox, Records, Reservation, View, flag_names, normalise_ranges,
    only, ranges_from_values,
)
from store.layout import (
    DELETED_PREFIX, INBOX, JOURNAL_FILE, META_FILE, SEPARATOR, BadMailboxName, decode_component,
    encode_component, journal_expunged, journal_flags, journal_next, message_file_name, meta_text,
    normalise_mailbox,
)

JOURNAL_COMPACT_BYTES = 1 << 20

__all__ = [
    "MailStore", "DeliveryRequest", "MailboxView", "Message", "BadMailboxName", "MailboxExists", "NoSuchMailbox",
    "MailboxNotEmpty", "INBOX", "SEPARATOR", "normalise_mailbox", "ranges_from_values",
]


class MailboxNotEmpty(ValueError):
    """The mailbox has child mailboxes (or is INBOX) and cannot be deleted."""


@dataclass(frozen=True)
class Message:
    seq: int
    uid: int
    size: int
    flags: tuple[str, ...]
    internal_date: int
    path: str


@dataclass(frozen=True)
class DeliveryRequest:
    """One message for deliver_many: the arguments of deliver()."""
    user: str
    mailbox: str
    source: fsio.Source
    delivery_id: str | None = None
    flags: tuple[str, ...] = ()
    internal_date: int | None = None


@dataclass
class _Delivery:
    """A message of a deliver_many batch on its way in; results[position] stays None
    until it is stored or has failed."""
    position: int
    request: DeliveryRequest
    mailbox: str
    directory: str
    date: int
    temp: str | None = None  # written and fsynced
    size: int = 0
    uid: int = 0
    path: str = ""
    renamed: bool = False    # temp renamed to path, in a transaction not committed yet

    def place(self, reservation: Reservation) -> None:
        self.uid = reservation.uid
        self.path = os.path.join(self.directory, message_file_name(reservation.uid, reservation.uidvalidity))

    def rename(self) -> None:
        fsio.rename_into_place(self.temp, self.path)
        self.renamed = True

    def unrename(self) -> None:
        """The transaction that reserved path's UID did not commit: back to the temp name (a
        crash before this leaves a file above UIDNEXT, which reconstruct removes)."""
        if self.renamed:
            try:
                os.rename(self.path, self.temp)
            except OSError:
                self.temp = None
            self.renamed = False

    def discard_temp(self) -> None:
        if self.temp is not None and not self.renamed:
            _unlink_quietly(self.temp)
        self.temp = None


_LOCKED_KINDS = ("flags", "expunge")  # write_many's kinds that journal under the directory lock


@dataclass(frozen=True)
class _Target:
    """The mailbox of a write_many request (position: its index)."""
    position: int
    user: str
    mailbox: str
    directory: str


# ---------------------------------------------------------------- mailbox view

class MailboxView:
    """A snapshot of one mailbox for a POP or IMAP session; .view is the index View
    (sequence sets, search, sort); paths are computed, files are read on demand."""

    def __init__(self, user: str, mailbox: str, directory: str, view: View):
        self.user = user
        self.mailbox = mailbox
        self.directory = directory
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    @property
    def info(self) -> MailboxInfo:
        return self.view.info

    def path(self, seq: int) -> str:
        return os.path.join(self.directory, message_file_name(self.view.uid(seq), self.view.info.uidvalidity))

    def message(self, seq: int) -> Message:
        r = self.view.record(seq)
        return Message(seq, r.uid, r.size, r.flags, r.internal_date, self.path(seq))

    def messages(self) -> list[Message]:
        return [self.message(seq) for seq in range(1, len(self.view) + 1)]

    def open(self, seq: int):
        """The message file, opened for binary reading (FileNotFoundError if a concurrent
        expunge removed it: the session reports the message as gone)."""
        return open(self.path(seq), "rb")


# ---------------------------------------------------------------- the store

class MailStore:
    def __init__(self, store_dir: str, index_dir: str):
        self.store_dir = os.fspath(store_dir)
        self.index = Index(index_dir)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> "MailStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths and locks
    def user_dir(self, user: str) -> str:
        if not user or SEPARATOR in user or "\0" in user:
            raise BadMailboxName(f"bad user name {user!r}")
        return os.path.join(self.store_dir, encode_component(user))

    def mailbox_dir(self, user: str, mailbox: str) -> str:
        parts = normalise_mailbox(mailbox).split(SEPARATOR)
        return os.path.join(self.user_dir(user), *(encode_component(p) for p in parts))

    @contextmanager
    def locked(self, directory: str) -> Iterator[None]:
        """Exclusive flock on a mailbox directory (UID hand-out, journal, expunge, reconstruct)."""
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:  # e.g. the directory was removed by hand: reconstruct repairs that
            raise fsio.StorageError(f"cannot open mailbox directory {directory}: {e.strerror}", e.errno) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- mailboxes
    def create_mailbox(self, user: str, mailbox: str, special_use: str = "", subscribed: bool = False,
                       uidvalidity: int | None = None) -> MailboxInfo:
        """Create mailbox (and any missing parent). MailboxExists if it is there already."""
        mailbox = normalise_mailbox(mailbox)
        parts = mailbox.split(SEPARATOR)
        for depth in range(1, len(parts)):
            parent = SEPARATOR.join(parts[:depth])
            if self.index.mailbox(user, parent) is None:
                self._create_one(user, parent, "", False, None)
        if self.index.mailbox(user, mailbox) is not None:
            raise MailboxExists(f"mailbox {mailbox} exists")
        return self._create_one(user, mailbox, special_use, subscribed, uidvalidity)

    def _create_one(self, user, mailbox, special_use, subscribed, uidvalidity) -> MailboxInfo:
        directory = self.mailbox_dir(user, mailbox)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fsio.fsync_dir(os.path.dirname(directory))
        except OSError as e:
            raise fsio.StorageError(f"cannot create {directory}: {e.strerror}", e.errno) from e
        info = self.index.create_mailbox(user, mailbox, uidvalidity=uidvalidity, special_use=special_use,
                                         subscribed=subscribed)
        self.write_meta(directory, info)
        notify.signal(directory)
        notify.signal(self.user_dir(user))  # the user's list of mailboxes changed
        return info

    def write_meta(self, directory: str, info: MailboxInfo) -> None:
        text = meta_text(info.uidvalidity, info.subscribed, info.special_use, self.index.acl(info.user, info.name))
        fsio.write_durably(directory, META_FILE, text.encode())

    # -- access control lists (RFC 4314; the rules are the imapd's, workers/imapd/acl.py)
    def acl(self, user: str, mailbox: str) -> dict[str, str]:
        """identifier -> rights of the mailbox's ACL; NoSuchMailbox when it does not exist."""
        return self.index.acl(user, normalise_mailbox(mailbox))

    def set_acl(self, user: str, mailbox: str, identifier: str, rights: str) -> None:
        """Set (rights "" removes) identifier's entry, in the index and the .mailbox file."""
        mailbox = normalise_mailbox(mailbox)
        info = self.index.set_acl(user, mailbox, identifier, rights)
        self.write_meta(self.mailbox_dir(user, mailbox), info)

    def shared_with(self, identifiers) -> list[MailboxInfo]:
        """Every mailbox whose ACL has an entry for one of the identifiers."""
        return self.index.shared_with(identifiers)

    def ensure_inbox(self, user: str) -> MailboxInfo:
        info = self.index.mailbox(user, INBOX)
        if info is not None:
            return info
        try:
            return self.create_mailbox(user, INBOX, subscribed=True)
        except MailboxExists:  # created by a concurrent delivery
            return self.index.mailbox(user, INBOX)

    def list_mailboxes(self, user: str) -> list[MailboxInfo]:
        return self.index.mailboxes(user)

    def mailbox(self, user: str, mailbox: str) -> MailboxInfo | None:
        return self.index.mailbox(user, normalise_mailbox(mailbox))

    def set_mailbox_attributes(self, user: str, mailbox: str, subscribed: bool | None = None,
                               special_use: str | None = None) -> MailboxInfo:
        mailbox = normalise_mailbox(mailbox)
        info = self.index.set_mailbox_attributes(user, mailbox, subscribed=subscribed, special_use=special_use)
        self.write_meta(self.mailbox_dir(user, mailbox), info)
        return info

    def subscribe(self, user: str, mailbox: str, on: bool) -> None:
        """Subscribe to (on) or unsubscribe from a name, existing or not."""
        mailbox = normalise_mailbox(mailbox)
        info = self.index.subscribe(user, mailbox, on)
        if info is not None:
            self.write_meta(self.mailbox_dir(user, mailbox), info)
        notify.signal(self.user_dir(user))

    def subscriptions(self, user: str) -> list[str]:
        return self.index.subscriptions(user)

    def users(self) -> list[str]:
        """Every user the index has mailboxes (or usage) for."""
        return self.index.users()

    def delete_mailbox(self, user: str, mailbox: str) -> MailboxInfo:
        """Delete a mailbox without children, with its messages. INBOX cannot be deleted;
        NoSuchMailbox if the index has no such mailbox."""
        mailbox = normalise_mailbox(mailbox)
        if mailbox == INBOX:
            raise MailboxNotEmpty("INBOX cannot be deleted")
        if self.index.mailbox(user, mailbox) is None:
            raise NoSuchMailbox(f"no mailbox {mailbox}")
        if any(m.name.startswith(mailbox + SEPARATOR) for m in self.index.mailboxes(user)):
            raise MailboxNotEmpty(f"mailbox {mailbox} has child mailboxes")
        directory = self.mailbox_dir(user, mailbox)
        # Out of sight first (reconstruct skips and removes such names), so a crash at any
        # point never brings the mailbox back; then the index, then the files.
        doomed = os.path.join(os.path.dirname(directory), f"{DELETED_PREFIX}{secrets.token_hex(6)}")
        with self.locked(directory):
            try:
                os.rename(directory, doomed)
                fsio.fsync_dir(os.path.dirname(directory))
            except OSError as e:
                raise fsio.StorageError(f"cannot delete {directory}: {e.strerror}", e.errno) from e
            info = self.index.delete_mailbox(user, mailbox)
            notify.signal(doomed)  # the watch followed the directory to its doomed name
            notify.signal(self.user_dir(user))
        shutil.rmtree(doomed, ignore_errors=True)
        return info

    def remove_user(self, user: str) -> list[MailboxInfo]:
        """Remove all of user's mail (mailctl user del --purge): every mailbox with its
        messages, the quota usage and the delivery ids; returns the mailboxes there were.
        As in delete_mailbox, the user's directory goes out of sight first (a .deleted.*
        name that reconstruct skips and removes), then the index, then the files, so a crash
        at any point never brings the mail back. Deliveries under way wait for the
        mailboxes' locks and then find no mailbox (a temporary failure)."""
        directory = self.user_dir(user)
        doomed = os.path.join(self.store_dir, f"{DELETED_PREFIX}{secrets.token_hex(6)}")
        with ExitStack() as locks:
            for mailbox_dir in sorted(self.mailbox_dir(user, info.name) for info in self.index.mailboxes(user)):
                if os.path.isdir(mailbox_dir):
                    locks.enter_context(self.locked(mailbox_dir))
            try:
                os.rename(directory, doomed)
                fsio.fsync_dir(self.store_dir)
            except FileNotFoundError:
                doomed = None  # no mail on disk (or a purge cut short): the index may still hold some
            except OSError as e:
                raise fsio.StorageError(f"cannot remove {directory}: {e.strerror}", e.errno) from e
            removed = self.index.remove_user(user)
        if doomed is not None:
            shutil.rmtree(doomed, ignore_errors=True)
        return removed

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        """Rename a mailbox with its children (UIDs and UIDVALIDITY stay). The directory moves
        first: a crash before the index follows is repaired by reconstruct."""
        old, new = normalise_mailbox(old), normalise_mailbox(new)
        if old == INBOX or new == INBOX or new.startswith(old + SEPARATOR):
            raise BadMailboxName(f"cannot rename {old} to {new}")
        if self.index.mailbox(user, old) is None:
            raise NoSuchMailbox(f"no mailbox {old}")
        if self.index.mailbox(user, new) is not None:
            raise MailboxExists(f"mailbox {new} exists")
        parts = new.split(SEPARATOR)
        for depth in range(1, len(parts)):
            parent = SEPARATOR.join(parts[:depth])
            if self.index.mailbox(user, parent) is None:
                self._create_one(user, parent, "", False, None)
        source, target = self.mailbox_dir(user, old), self.mailbox_dir(user, new)
        try:
            os.rename(source, target)
            fsio.fsync_dir(os.path.dirname(target))
            fsio.fsync_dir(os.path.dirname(source))
        except OSError as e:
            raise fsio.StorageError(f"cannot rename {source}: {e.strerror}", e.errno) from e
        for _, renamed in self.index.rename_mailbox(user, old, new, SEPARATOR):
            notify.signal(self.mailbox_dir(user, renamed))  # watches follow the directories
        notify.signal(self.user_dir(user))

    # -- delivery
    def deliver(self, user: str, mailbox: str, source, delivery_id: str | None = None,
                flags: Iterable[str] = (), internal_date: int | None = None) -> int:
        """Store one message durably and index it; returns its UID. The same delivery_id
        again returns the first UID and stores nothing. INBOX is created on first use; any
        other mailbox must exist (NoSuchMailbox: IMAP's [TRYCREATE])."""
        return only(self.deliver_many([DeliveryRequest(user, mailbox, source, delivery_id, tuple(flags), internal_date)]))

    def deliver_many(self, requests: Sequence[DeliveryRequest]) -> list[int | Exception]:
        """Store a batch of messages (any users and mailboxes) as deliver() stores one; returns
        per request its UID, or the StorageError, NoSuchMailbox or BadMailboxName that stopped
        that request alone. The syncs are shared: each file is written and fsynced under a temp
        name (no lock held); then, under the locks of all the batch's mailboxes, one index
        transaction reserves every UID, the files are renamed, each directory is fsynced once
        and one index transaction adds every entry with its delivery id's done-mark. A delivery
        id stored before is not written again; given twice in a batch, it is stored once."""
        results: list = [None] * len(requests)
        batch, twins = self._admit(requests, results)
        try:
            for item in batch:
                self._write_temp(item, results)
            with ExitStack() as locks:
                self._commit(self._lock_all(locks, [item for item in batch if results[item.position] is None], results),
                             results)
        finally:
            for item in batch:
                item.discard_temp()  # of a request that failed or needed no new file
        for position, first in twins:
            results[position] = results[first]
        return results

    def _admit(self, requests: Sequence[DeliveryRequest], results: list) -> tuple[list[_Delivery], list]:
        """The requests to store, as _Delivery items (INBOX created on first use; bad names and
        missing mailboxes answered in results), and (position, first position) of the
        requests that repeat a delivery id."""
        targets: dict[tuple[str, str], tuple[str, str] | Exception] = {}
        first_of: dict[tuple[str, str, str], int] = {}
        batch, twins = [], []
        for position, request in enumerate(requests):
            key = (request.user, request.mailbox)
            if key not in targets:
                try:
                    targets[key] = self._delivery_target(request.user, request.mailbox)
                except (fsio.StorageError, NoSuchMailbox, BadMailboxName) as e:
                    targets[key] = e
            if isinstance(targets[key], Exception):
                results[position] = targets[key]
                continue
            mailbox, directory = targets[key]
            if request.delivery_id is not None:
                seen = first_of.setdefault((request.user, mailbox, request.delivery_id), position)
                if seen != position:
                    twins.append((position, seen))
                    continue
            date = int(time.time() if request.internal_date is None else request.internal_date)
            batch.append(_Delivery(position, request, mailbox, directory, date))
        return batch, twins

    def _delivery_target(self, user: str, mailbox: str) -> tuple[str, str]:
        mailbox = normalise_mailbox(mailbox)
        if mailbox == INBOX:
            self.ensure_inbox(user)
        elif self.index.mailbox(user, mailbox) is None:
            raise NoSuchMailbox(f"no mailbox {mailbox}")
        return mailbox, self.mailbox_dir(user, mailbox)

    def _write_temp(self, item: _Delivery, results: list) -> None:
        """The message under a temp name in its mailbox directory, fsynced; nothing for a
        delivery id stored before (its reservation answers with the UID)."""
        request = item.request
        try:
            if request.delivery_id is None or not self.index.delivered(request.user, request.delivery_id):
                item.temp, item.size = fsio.write_temp(item.directory, "delivery", request.source)
        except fsio.StorageError as e:
            results[item.position] = e

    def _commit(self, batch: list[_Delivery], results: list) -> None:
        """Under the locks of the batch's mailbox directories, one index transaction: UIDs,
        renames, directory fsyncs, index entries. Then the flag journal and the signals."""
        if not batch:
            return
        try:
            durable, indexed = self.index.deliver_in_one(lambda tx: self._place(tx, batch, results))
        except fsio.StorageError as e:
            for item in batch:
                item.unrename()
                if results[item.position] is None:
                    results[item.position] = e
            return
        journal: dict[str, str] = {}
        changed = set()
        for item, outcome in zip(durable, indexed):
            item.temp, item.renamed = None, False  # committed: the file is the message's now
            if isinstance(outcome, Exception):
                _fail_placed([item], results, outcome)
                continue
            results[item.position] = item.uid
            if outcome:
                changed.add(item.directory)
            if item.request.flags:
                journal[item.directory] = journal.get(item.directory, "") + journal_flags(item.uid, item.request.flags)
        for directory, text in journal.items():
            self._journal(directory, text)
        for directory in sorted(changed):
            notify.signal(directory)

    def _place(self, tx, batch: list[_Delivery], results: list) -> tuple[list[_Delivery], list]:
        """Inside the index transaction: reserve the UIDs, rename the files to them, fsync each
        directory once, add the entries of those durable. Returns (items added, outcomes).
        Run again after the map grew: the renames of the first run are undone first."""
        for item in batch:
            item.unrename()
            results[item.position] = None
        try:
            placed = []
            for item in self._reserve(tx, batch, results):
                if item.temp is not None:
                    try:
                        item.rename()
                    except fsio.StorageError as e:
                        results[item.position] = e
                        item.temp = None
                        continue
                    _set_mtime(item.path, item.date)
                placed.append(item)
            for directory in sorted({item.directory for item in placed}):
                try:
                    fsio.fsync_dir(directory)
                except OSError as e:
                    error = fsio.StorageError(f"cannot store in {directory}: {e.strerror}", e.errno)
                    for item in placed:
                        if item.directory == directory:
                            item.unrename()
                            results[item.position] = error
            durable = [item for item in placed if results[item.position] is None]
            return durable, tx.append_batch([
                (i.request.user, i.mailbox, i.uid, i.size, i.date, i.request.flags, i.request.delivery_id)
                for i in durable]) if durable else []
        except BaseException:
            for item in batch:
                item.unrename()
            raise

    def _reserve(self, tx, batch: list[_Delivery], results: list) -> list[_Delivery]:
        """Every UID in the transaction; returns the items whose file is to be renamed (a new
        UID) or adopted (a delivery cut short after its rename, by an older version that
        reserved in a transaction of its own). A delivery stored before gets its UID in
        results. One cut short before its rename takes a fresh UID, so UIDs keep ascending."""
        ready, fresh, new = [], [], []
        for item, reservation in zip(batch, self._reserve_uids(tx, batch, fresh=False)):
            if isinstance(reservation, Exception):
                results[item.position] = reservation
            elif reservation.state == "done":
                results[item.position] = reservation.uid
            else:
                item.place(reservation)
                size = _size_of(item.path) if reservation.state == "pending" else None
                if size is not None:
                    item.size = size
                    item.discard_temp()
                    ready.append(item)
                else:
                    (fresh if reservation.state == "pending" else new).append(item)
        for item, reservation in zip(fresh, self._reserve_uids(tx, fresh, fresh=True)):
            if isinstance(reservation, Exception):
                results[item.position] = reservation
            else:
                item.place(reservation)
                new.append(item)
        for item in new:
            if item.temp is None:  # delivered() said stored, the index no longer does (pruned meanwhile)
                results[item.position] = fsio.StorageError(f"delivery {item.request.delivery_id} changed under way")
            else:
                ready.append(item)
        return ready

    @staticmethod
    def _reserve_uids(tx, items: list[_Delivery], fresh: bool) -> list:
        if not items:
            return []
        return tx.reserve_uids([(i.request.user, i.mailbox, i.request.delivery_id) for i in items], fresh)

    def copy(self, user: str, source: str, uid_ranges: Sequence[tuple[int, int]], target: str,
             move: bool = False, target_user: str | None = None,
             keep_flags: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None) -> list[tuple[int, int]]:
        """IMAP COPY / MOVE: the messages of user's source in uid_ranges into target (which
        must exist; target_user's, user's by default), with their flags (those keep_flags
        keeps, when given: the rights in the target) and internal dates;
        returns (source UID, target UID) pairs (UIDPLUS COPYUID). Files are hard-linked
        (copied where a link is impossible), so a copy costs no space on disk; quota usage
        counts each copy (the target owner's). MOVE then expunges the originals. A message
        expunged meanwhile is skipped."""
        target_user = target_user or user
        source, target = normalise_mailbox(source), normalise_mailbox(target)
        if self.index.mailbox(target_user, target) is None:
            raise NoSuchMailbox(f"no mailbox {target}")
        view = self.index.open_view(user, source)
        records = [view.record(seq) for seq in view.seqs_in_uid_ranges(normalise_ranges(list(uid_ranges)))]
        if not records:
            return []
        source_dir, target_dir = self.mailbox_dir(user, source), self.mailbox_dir(target_user, target)
        pairs: list[tuple[int, int]] = []
        with self.locked(target_dir):
            reservation = self.index.reserve_uid(target_user, target, count=len(records))
            added, created = [], []
            try:
                for offset, record in enumerate(records):
                    uid = reservation.uid + offset
                    name = message_file_name(uid, reservation.uidvalidity)
                    original = os.path.join(source_dir, message_file_name(record.uid, view.info.uidvalidity))
                    if not _link_or_copy(original, target_dir, name):
                        continue
                    created.append(os.path.join(target_dir, name))
                    flags = record.flags if keep_flags is None else keep_flags(record.flags)
                    added.append((uid, record.size, record.internal_date, flags))
                    pairs.append((record.uid, uid))
                fsio.fsync_dir(target_dir)
                self.index.append_many(target_user, target, added)
                notify.signal(target_dir)
            except (OSError, fsio.StorageError) as e:
                for path in created:  # not acknowledged: leave nothing for reconstruct to adopt
                    _unlink_quietly(path)
                if isinstance(e, fsio.StorageError):
                    raise
                raise fsio.StorageError(f"cannot copy into {target}: {e.strerror}", e.errno) from e
            flagged = "".join(journal_flags(uid, flags) for uid, _, _, flags in added if flags)
            if flagged:
                self._journal(target_dir, flagged)
        if move and pairs:
            self.expunge(user, source, ranges_from_values(sorted(u for u, _ in pairs)), deleted_only=False)
        return pairs

    # -- reading
    def open_mailbox(self, user: str, mailbox: str) -> MailboxView:
        mailbox = normalise_mailbox(mailbox)
        if mailbox == INBOX:
            self.ensure_inbox(user)
        return MailboxView(user, mailbox, self.mailbox_dir(user, mailbox), self.index.open_view(user, mailbox))

    # -- the imapd's structure blobs
    def recent_from(self, user: str, mailbox: str) -> tuple[int, int]:
        return self.index.recent_from(user, normalise_mailbox(mailbox))

    def claim_recent(self, user: str, mailbox: str) -> tuple[int, int]:
        """The (first, uidnext) UID range that is \\Recent for the IMAP session asking (index commit)."""
        return only(self.write_many([("recent", (user, mailbox))]))

    def structures(self, user: str, mailbox: str, uids: Iterable[int]) -> dict[int, bytes]:
        """{uid: blob} stored by put_structures for those of uids that have one."""
        return self.index.structures(user, normalise_mailbox(mailbox), uids)

    def put_structures(self, user: str, mailbox: str, blobs: dict[int, bytes]) -> int:
        """Keep a blob with each message's index entry (UIDs expunged meanwhile are skipped);
        returns how many were kept. NoSuchMailbox if the mailbox is gone."""
        return only(self.write_many([("structures", (user, mailbox, blobs))]))

    # -- flags and expunge
    def set_flags(self, user: str, mailbox: str, uid_ranges: Sequence[tuple[int, int]], mode: str,
                  flags: Iterable[str], unchanged_since: int | None = None) -> Records:
        """mode "+", "-" or "=" over UID ranges; returns the changed records (.conflicts:
        UIDs left alone because of unchanged_since)."""
        return only(self.write_many([("flags", (user, mailbox, uid_ranges, mode, flags, unchanged_since))]))

    def expunge(self, user: str, mailbox: str, uid_ranges: Sequence[tuple[int, int]] | None = None,
                deleted_only: bool = True) -> Records:
        """Remove \\Deleted messages (within uid_ranges if given; deleted_only=False: all of
        uid_ranges, e.g. POP3 DELE). Index first, then the files; returns what went."""
        return only(self.write_many([("expunge", (user, mailbox, uid_ranges, deleted_only))]))

    def write_many(self, requests: Sequence[tuple[str, tuple]]) -> list:
        """Many writes of any users and mailboxes at once, in the order given (group commit: the
        imapd's sessions share it). A request is (kind, arguments): ("flags", set_flags'),
        ("expunge", expunge's), ("recent", claim_recent's), ("structures", put_structures').
        Under the locks of the flag and expunge requests' directories, one index transaction
        (Index.write_many); then per changed mailbox its journal lines and signal, the
        expunged files' unlinks and one fsync of its directory. Per request its result, or
        the error that stopped it alone (NoSuchMailbox, BadMailboxName, TooManyKeywords,
        ValueError; StorageError for a directory that cannot be locked or fsynced, or for
        every request when the index write fails)."""
        results: list = [None] * len(requests)
        targets = self._targets([args for _, args in requests], results)
        with ExitStack() as locks:
            locked = self._lock_all(locks, [t for t in targets if requests[t.position][0] in _LOCKED_KINDS], results)
            ready = sorted([*locked, *(t for t in targets if requests[t.position][0] not in _LOCKED_KINDS)],
                           key=lambda t: t.position)
            try:
                outcomes = self.index.write_many([
                    (requests[t.position][0], (t.user, t.mailbox, *requests[t.position][1][2:])) for t in ready])
            except fsio.StorageError as e:
                outcomes = [e] * len(ready)
            journal: dict[str, str] = {}
            gone: dict[str, list[_Target]] = {}
            for target, outcome in zip(ready, outcomes):
                results[target.position] = outcome
                kind = requests[target.position][0]
                if kind not in _LOCKED_KINDS or isinstance(outcome, Exception) or not len(outcome):
                    continue
                if kind == "flags":
                    text = "".join(journal_flags(r.uid, r.flags) for r in outcome)
                    journal[target.directory] = journal.get(target.directory, "") + text
                else:
                    gone.setdefault(target.directory, []).append(target)
            for directory, text in journal.items():  # before any expunge line: the index's order
                notify.signal(directory)
                self._journal(directory, text)
            for expunged in gone.values():
                try:
                    self._remove_files(expunged[0], [uid for t in expunged for uid in results[t.position].uids()])
                except fsio.StorageError as e:
                    for target in expunged:
                        results[target.position] = e
        return results

    def _remove_files(self, target: _Target, uids: list[int]) -> None:
        """After the index commit that expunged uids from target's mailbox (its lock held):
        signal, journal, unlink, fsync the directory."""
        notify.signal(target.directory)
        self._journal(target.directory, journal_expunged(uids))
        validity = self.index.mailbox(target.user, target.mailbox).uidvalidity
        for uid in uids:
            _unlink_quietly(os.path.join(target.directory, message_file_name(uid, validity)))
        try:
            fsio.fsync_dir(target.directory)
        except OSError as e:
            raise fsio.StorageError(f"cannot expunge in {target.directory}: {e.strerror}", e.errno) from e

    def _targets(self, requests: Sequence[tuple], results: list) -> list[_Target]:
        """The mailboxes of requests' arguments (user, mailbox, ...); a bad name is answered in results."""
        targets = []
        for position, (user, mailbox, *_) in enumerate(requests):
            try:
                mailbox = normalise_mailbox(mailbox)
                targets.append(_Target(position, user, mailbox, self.mailbox_dir(user, mailbox)))
            except BadMailboxName as e:
                results[position] = e
        return targets

    def _lock_all(self, locks: ExitStack, items: list, results: list) -> list:
        """Lock the directories of items (each with .position and .directory) on locks, in sorted
        path order; an item whose directory cannot be locked gets the StorageError in results.
        Returns the items locked."""
        failed = set()
        for directory in sorted({item.directory for item in items}):
            try:
                locks.enter_context(self.locked(directory))
            except fsio.StorageError as e:
                failed.add(directory)
                for item in items:
                    if item.directory == directory:
                        results[item.position] = e
        return [item for item in items if item.directory not in failed]

    def _journal(self, directory: str, text: str) -> None:
        """Append to the flag journal (caller holds the directory lock). Not fsynced: it is a
        hint for reconstruct after a lost index, not what acknowledges anything."""
        path = os.path.join(directory, JOURNAL_FILE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text.encode())
                grown = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError:
            return  # flags are safe in the index; only the recovery hint is missing
        if grown > JOURNAL_COMPACT_BYTES:
            self._compact_journal(directory)

    def _compact_journal(self, directory: str) -> None:
        user, mailbox = self._owner_of(directory)
        view = self.index.open_view(user, mailbox)
        lines = [journal_next(view.info.uidnext)]
        for seq in range(1, len(view) + 1):
            bits = view.flag_bits(seq)
            if bits:
                lines.append(journal_flags(view.uid(seq), flag_names(bits, view.keywords)))
        try:
            fsio.write_durably(directory, JOURNAL_FILE, "".join(lines).encode())
        except fsio.StorageError:
            pass  # the old journal stays; it is only longer than it needs to be

    def _owner_of(self, directory: str) -> tuple[str, str]:
        relative = os.path.relpath(directory, self.store_dir).split(os.sep)
        return decode_component(relative[0]), SEPARATOR.join(decode_component(p) for p in relative[1:])

    # -- quota usage and delivery ids
    def usage(self, user: str) -> int:
        """Bytes stored for user over all mailboxes (exact)."""
        return self.index.usage(user)[0]

    def delivered(self, user: str, delivery_id: str) -> bool:
        """True when the message of delivery_id is already stored and indexed: a re-run after
        a crash (before the queue's done mark) must count it as delivered, whatever the quota."""
        return self.index.delivered(user, delivery_id)


def _set_mtime(path: str, date: int) -> None:
    try:
        os.utime(path, (date, date))  # reconstruct takes the internal date from here
    except OSError:
        pass


def _link_or_copy(original: str, directory: str, name: str) -> bool:
    """Hard-link original as directory/name (a durable copy across filesystems or where
    links are refused); False if original is gone (expunged meanwhile)."""
    try:
        os.link(original, os.path.join(directory, name))
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    try:
        with open(original, "rb") as f:
            fsio.write_durably(directory, name, f)
        return True
    except FileNotFoundError:
        return False


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _fail_placed(items: list[_Delivery], results: list, error: Exception) -> None:
    """Files in place but not acknowledged: one nobody can come back for (no delivery id)
    is removed again, lest reconstruct adopt it."""
    for item in items:
        results[item.position] = error
        if item.request.delivery_id is None:
            _unlink_quietly(item.path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

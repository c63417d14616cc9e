"""Users' mailboxes on disk: delivery, folders, views, flags and expunge.

The files are laid out as store/layout.py says (one directory per mailbox, one file per
message, a .mailbox and a .journal file per mailbox). The index (store.index, LMDB under
index_directory) is the truth while it exists; store/reconstruct.py rebuilds it from the files.

Interface: MailStore(store_dir, index_dir) (a process has one: store.handle.Store.mail).
deliver(user, mailbox, source, delivery_id=None, flags=(), internal_date=None) -> UID,
idempotent per delivery id; create/delete/rename/list/subscribe mailboxes;
open_mailbox(user, mailbox) -> MailboxView (messages with uid, size, flags, path); set_flags;
expunge; copy (COPY/MOVE); usage(user) (the quota rule is store/directory.py's);
delivered(user, delivery_id) -> bool; remove_user(user) (all of a user's mail).
Ordering that keeps crashes safe: message file durable -> index entry (with the delivery id
in the same transaction); expunge: index first, then unlink (reconstruct removes the files of
expunged UIDs it still finds). A mailbox directory is flock()ed while its UIDs are handed out,
so UIDs enter the index in ascending order.
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
from typing import Iterable, Iterator, Sequence

from store import fsio
from store.index import (
    Index, MailboxExists, MailboxInfo, NoSuchMailbox, Records, View, flag_names, normalise_ranges,
    ranges_from_values,
)
from store.layout import (
    DELETED_PREFIX, INBOX, JOURNAL_FILE, META_FILE, SEPARATOR, BadMailboxName, decode_component,
    encode_component, journal_expunged, journal_flags, journal_next, message_file_name, meta_text,
    normalise_mailbox,
)

JOURNAL_COMPACT_BYTES = 1 << 20

__all__ = [
    "MailStore", "MailboxView", "Message", "BadMailboxName", "MailboxExists", "NoSuchMailbox",
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
        return info

    def write_meta(self, directory: str, info: MailboxInfo) -> None:
        text = meta_text(info.uidvalidity, info.subscribed, info.special_use)
        fsio.write_durably(directory, META_FILE, text.encode())

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

    def delete_mailbox(self, user: str, mailbox: str) -> MailboxInfo:
        """Delete a mailbox without children, with its messages. INBOX cannot be deleted."""
        mailbox = normalise_mailbox(mailbox)
        if mailbox == INBOX:
            raise MailboxNotEmpty("INBOX cannot be deleted")
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
            for info in self.index.mailboxes(user):
                mailbox_dir = self.mailbox_dir(user, info.name)
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
        self.index.rename_mailbox(user, old, new, SEPARATOR)

    # -- delivery
    def deliver(self, user: str, mailbox: str, source, delivery_id: str | None = None,
                flags: Iterable[str] = (), internal_date: int | None = None) -> int:
        """Store one message durably and index it; returns its UID. The same delivery_id
        again returns the first UID and stores nothing. INBOX is created on first use; any
        other mailbox must exist (NoSuchMailbox: IMAP's [TRYCREATE])."""
        mailbox = normalise_mailbox(mailbox)
        if mailbox == INBOX:
            self.ensure_inbox(user)
        elif self.index.mailbox(user, mailbox) is None:
            raise NoSuchMailbox(f"no mailbox {mailbox}")
        flags = tuple(flags)
        date = int(time.time() if internal_date is None else internal_date)
        directory = self.mailbox_dir(user, mailbox)
        with self.locked(directory):
            reservation = self.index.reserve_uid(user, mailbox, delivery_id)
            if reservation.state == "done":
                return reservation.uid
            name = message_file_name(reservation.uid, reservation.uidvalidity)
            path = os.path.join(directory, name)
            if reservation.state == "pending" and os.path.exists(path):
                size = os.stat(path).st_size  # a crash came after the rename: adopt the file
            else:
                if reservation.state == "pending":  # the file never made it: take a fresh UID
                    reservation = self.index.reserve_uid(user, mailbox, delivery_id, fresh=True)
                    name = message_file_name(reservation.uid, reservation.uidvalidity)
                    path = os.path.join(directory, name)
                size = fsio.write_durably(directory, name, source)
                _set_mtime(path, date)
            try:
                self.index.append(user, mailbox, reservation.uid, size, date, flags, delivery_id)
            except fsio.StorageError:
                if delivery_id is None:  # nobody can come back for this file: do not leave it
                    _unlink_quietly(path)
                raise
            if flags:
                self._journal(directory, journal_flags(reservation.uid, flags))
            return reservation.uid

    def copy(self, user: str, source: str, uid_ranges: Sequence[tuple[int, int]], target: str,
             move: bool = False) -> list[tuple[int, int]]:
        """IMAP COPY / MOVE: the messages of source in uid_ranges into target (which must
        exist), with their flags and internal dates; returns (source UID, target UID) pairs
        (UIDPLUS COPYUID). Files are hard-linked (copied where a link is impossible), so a
        copy costs no space on disk; quota usage counts each copy. MOVE then expunges the
        originals. A message expunged meanwhile is skipped."""
        source, target = normalise_mailbox(source), normalise_mailbox(target)
        if self.index.mailbox(user, target) is None:
            raise NoSuchMailbox(f"no mailbox {target}")
        view = self.index.open_view(user, source)
        records = [view.record(seq) for seq in view.seqs_in_uid_ranges(normalise_ranges(list(uid_ranges)))]
        if not records:
            return []
        source_dir, target_dir = self.mailbox_dir(user, source), self.mailbox_dir(user, target)
        pairs: list[tuple[int, int]] = []
        with self.locked(target_dir):
            reservation = self.index.reserve_uid(user, target, count=len(records))
            added, created = [], []
            try:
                for offset, record in enumerate(records):
                    uid = reservation.uid + offset
                    name = message_file_name(uid, reservation.uidvalidity)
                    original = os.path.join(source_dir, message_file_name(record.uid, view.info.uidvalidity))
                    if not _link_or_copy(original, target_dir, name):
                        continue
                    created.append(os.path.join(target_dir, name))
                    added.append((uid, record.size, record.internal_date, record.flags))
                    pairs.append((record.uid, uid))
                fsio.fsync_dir(target_dir)
                self.index.append_many(user, target, added)
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

    # -- flags and expunge
    def set_flags(self, user: str, mailbox: str, uid_ranges: Sequence[tuple[int, int]], mode: str,
                  flags: Iterable[str], unchanged_since: int | None = None) -> Records:
        """mode "+", "-" or "=" over UID ranges; returns the changed records (.conflicts:
        UIDs left alone because of unchanged_since)."""
        mailbox = normalise_mailbox(mailbox)
        directory = self.mailbox_dir(user, mailbox)
        with self.locked(directory):
            changes = self.index.store_flags(user, mailbox, uid_ranges, mode, flags, unchanged_since)
            if len(changes):
                self._journal(directory, "".join(journal_flags(r.uid, r.flags) for r in changes))
        return changes

    def expunge(self, user: str, mailbox: str, uid_ranges: Sequence[tuple[int, int]] | None = None,
                deleted_only: bool = True) -> Records:
        """Remove \\Deleted messages (within uid_ranges if given; deleted_only=False: all of
        uid_ranges, e.g. POP3 DELE). Index first, then the files; returns what went."""
        mailbox = normalise_mailbox(mailbox)
        directory = self.mailbox_dir(user, mailbox)
        with self.locked(directory):
            removed = self.index.expunge(user, mailbox, uid_ranges, deleted_only)
            if not len(removed):
                return removed
            uids = removed.uids()
            self._journal(directory, journal_expunged(uids))
            validity = self.index.mailbox(user, mailbox).uidvalidity
            for uid in uids:
                _unlink_quietly(os.path.join(directory, message_file_name(uid, validity)))
            fsio.fsync_dir(directory)
        return removed

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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

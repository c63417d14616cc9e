"""The maildrop of one POP3 session: a snapshot of the user's INBOX, locked as configured.

The lock is an flock() on lock_dir/<user>.lock, apart from the mailbox directory's own lock,
so deliveries and IMAP go on during a POP3 session (new mail shows in the next session).
Sessions of one user share it by default (pop3_lock_session = no, as Dovecot): each works
on its own snapshot, and a message that another session has expunged meanwhile is simply
gone for this one (RETR answers an error, its DELE has nothing left to remove). A session
of a service with pop3_lock_session = yes takes it exclusively: no other POP3 session of
that user, with either setting, gets in while it lasts (RFC 1939's `-ERR [IN-USE]`).
    Maildrop.open(store, user, lock_dir, exclusive)   lock + snapshot from the index (quick;
                         on the event loop's thread, where the index's LMDB env lives);
                         MaildropBusy when the two locks do not go together
    .measure()           the sizes (file reads, no index access: run it in a thread)
    .messages            the snapshot, numbered from 1 (Entry: number, uid, pop_size, path)
    .get(n)              the entry, None when out of range or marked deleted
    .stat()              (count, octets) of the messages not marked deleted
    .unique_id(entry)    "<UIDVALIDITY>.<UID>": stable for the message's life (UIDL)
    .delete(entry), .reset()   marks only; nothing changes on disk before commit()
    .commit()            the UPDATE state: expunge the marked messages; StorageError
                         (disk full, index error) leaves every message in place
    .release()           drops the lock (after commit, or on a dropped connection)
Sizes are workers.pop3d.wire.message_size (CRLF line ends, dots not stuffed). A message
file never changes, so its size is computed once and kept in lock_dir/<user>.sizes
(replaced whole by whichever session measured something new; a lost, stale or
older-format cache is recomputed).
Diagnostics: MaildropBusy, StorageError; a message file that vanished (IMAP expunged it
meanwhile) is left out of the snapshot, or reported by open_message() as FileNotFoundError.
"""
from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass
from typing import BinaryIO

from store import fsio
from store.layout import encode_component
from store.mailstore import INBOX, MailStore, ranges_from_values
from workers.pop3d.wire import message_size

SIZES_FORMAT = "mailhouse-pop3-sizes 2\n"     # 2: dots not stuffed


class MaildropBusy(Exception):
    """Another POP3 session holds this user's maildrop in a way that excludes this one."""


@dataclass
class Entry:
    number: int
    uid: int
    pop_size: int
    path: str
    deleted: bool = False


class SizeCache:
    """(uidvalidity, uid, stored size) -> POP3 size, persisted as one line per message after
    a format line (the sizes of an older format counted the stuffed dots)."""

    def __init__(self, path: str):
        self.path = path
        self.sizes: dict[tuple[int, int, int], int] = {}
        self.changed = False
        try:
            with open(self.path, encoding="ascii") as f:
                if f.readline() != SIZES_FORMAT:
                    return
                for line in f:
                    fields = line.split()
                    if len(fields) == 4 and all(x.isdigit() for x in fields):
                        validity, uid, stored, size = map(int, fields)
                        self.sizes[(validity, uid, stored)] = size
        except (OSError, UnicodeDecodeError):
            self.sizes = {}

    def size_of(self, key: tuple[int, int, int], path: str) -> int:
        if key not in self.sizes:
            with open(path, "rb") as f:
                self.sizes[key] = message_size(f)
            self.changed = True
        return self.sizes[key]

    def save(self, keep: set[tuple[int, int, int]]) -> None:
        """Write back the entries still in the mailbox; a failure only costs a rescan. The
        temp file is this writer's own: two sessions of the user may save at the same time."""
        if not self.changed and keep == set(self.sizes):
            return
        text = SIZES_FORMAT + "".join(f"{v} {u} {s} {self.sizes[(v, u, s)]}\n" for v, u, s in sorted(keep))
        temp = f"{self.path}.{secrets.token_hex(6)}.tmp"
        try:
            with open(temp, "x", encoding="ascii") as f:
                f.write(text)
            os.replace(temp, self.path)
        except OSError:
            try:
                os.unlink(temp)
            except OSError:
                pass


class Maildrop:
    def __init__(self, store: MailStore, user: str, files_base: str, lock_fd: int, uidvalidity: int,
                 stored: list[tuple[int, int, str]]):
        self.store = store
        self.user = user
        self._files_base = files_base            # lock_dir/<user>: .lock and .sizes
        self._lock_fd: int | None = lock_fd
        self.uidvalidity = uidvalidity
        self._stored = stored                    # (uid, stored size, path) from the index
        self.messages: list[Entry] = []

    @classmethod
    def open(cls, store: MailStore, user: str, lock_dir: str, exclusive: bool = False) -> "Maildrop":
        """Lock (shared, or exclusive for pop3_lock_session) and snapshot (quick: one index
        read); measure() must follow before use."""
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        base = os.path.join(lock_dir, encode_component(user))
        fd = os.open(base + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MaildropBusy(user) from None
        try:
            view = store.open_mailbox(user, INBOX)
        except BaseException:
            os.close(fd)
            raise
        return cls(store, user, base, fd, view.info.uidvalidity, [(m.uid, m.size, m.path) for m in view.messages()])

    def measure(self) -> None:
        """Wire sizes of the snapshot (file scans for messages not in the size cache: blocking,
        no index access, so it may run in a thread). Vanished files are left out."""
        cache = SizeCache(self._files_base + ".sizes")
        present: set[tuple[int, int, int]] = set()
        for uid, stored_size, path in self._stored:
            key = (self.uidvalidity, uid, stored_size)
            try:
                size = cache.size_of(key, path)
            except FileNotFoundError:
                continue
            present.add(key)
            self.messages.append(Entry(len(self.messages) + 1, uid, size, path))
        cache.save(present)

    def get(self, number: int) -> Entry | None:
        if 1 <= number <= len(self.messages):
            entry = self.messages[number - 1]
            return None if entry.deleted else entry
        return None

    def live(self) -> list[Entry]:
        return [e for e in self.messages if not e.deleted]

    def stat(self) -> tuple[int, int]:
        live = self.live()
        return len(live), sum(e.pop_size for e in live)

    def unique_id(self, entry: Entry) -> str:
        return f"{self.uidvalidity}.{entry.uid}"

    def open_message(self, entry: Entry) -> BinaryIO:
        return open(entry.path, "rb")

    def delete(self, entry: Entry) -> None:
        entry.deleted = True

    def reset(self) -> None:
        for entry in self.messages:
            entry.deleted = False

    def commit(self) -> int:
        """Expunge the marked messages; returns how many went. StorageError keeps them all."""
        uids = [e.uid for e in self.messages if e.deleted]
        if not uids:
            return 0
        try:
            return len(self.store.expunge(self.user, INBOX, ranges_from_values(uids), deleted_only=False))
        except OSError as e:
            raise fsio.StorageError(f"expunge failed: {e}", e.errno) from e

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

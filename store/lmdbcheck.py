"""LMDB environments that are checked before they are mapped: a damaged data file is refused.

LMDB maps data.mdb and trusts its two meta pages (pages 0 and 1; the one with the higher
transaction id is current). A file shorter than its current meta page says (cut short by a
full disk, a crash of the filesystem, a bad copy or restore) kills the process with SIGBUS
at the first read of a page that is not there. So the meta pages are read here with pread,
never through a map, and a data file that is cut short, is not an LMDB file, or is of
another LMDB format is refused before LMDB sees it.

Interface:
    read_meta(env_dir, remedy="") -> Meta | None   the current meta page of env_dir/data.mdb
        (None: no data file yet, or an empty one, which LMDB starts afresh)
    Environment(env_dir, remedy, **lmdb_open_options)   one process's env on env_dir (subdir
        layout), shared by the objects that use it:
      .current() -> lmdb.Environment  opened after read_meta() on first use; before every
        later use the data file is stat'ed: another file in its place (reconstruct replaced a
        damaged one, or it was deleted) closes the env and opens the new file; a file shorter
        than before (LMDB never shrinks it) is checked again and refused when cut short.
        (Junk written over the meta pages of a file in use is seen only at the next open:
        reading them at every transaction would cost more than the stat.)
      .close()
      The old env is closed before the new one opens (LMDB's locks on lock.mdb are per
      process), so the switch must not meet a transaction of another thread: the index is
      used from one thread per process; the user database, read from auth threads too, is
      only ever replaced by hand.
    set_reporter(fn)   fn(text) hears of each damage once per process (workers: server.log)
Diagnostics: DamagedEnvironment (a StorageError, so sessions answer a temporary error)
with .path (the data file) and .reason; str() names both and the remedy. An unreadable
file or a failed open is a plain StorageError.
"""
from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from typing import Callable

import lmdb

from store.fsio import StorageError

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
MAGIC = 0xBEEFC0DE
DATA_VERSION = 1            # the on-disk format of LMDB 0.9
P_META = 0x08
P_INVALID = (1 << (8 * struct.calcsize("N"))) - 1   # the root of an empty database
NUM_METAS = 2
# A meta page as LMDB 0.9 writes it on this host (native sizes: pgno_t and txnid_t are
# size_t): the page header (pgno, pad, flags, lower, upper), then MDB_meta: magic, version,
# address, mapsize, the free and main MDB_db (pad = page size, flags, depth, branch, leaf,
# overflow pages, entries, root) and last_pgno, txnid.
META = struct.Struct("@NHHHH" + "IIPN" + "IHHNNNNN" * 2 + "NN")


class DamagedEnvironment(StorageError):
    """The data file of an LMDB environment is cut short or is no LMDB file of this format."""

    def __init__(self, path: str, reason: str, remedy: str = ""):
        super().__init__(f"{path} is damaged: {reason}" + (f"; {remedy}" if remedy else ""))
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Meta:
    page_size: int
    map_size: int
    last_pgno: int
    txnid: int

    @property
    def needed_size(self) -> int:
        """The bytes the data file must have for every page this meta can reach."""
        return (self.last_pgno + 1) * self.page_size


def data_file(env_dir: str) -> str:
    return os.path.join(env_dir, DATA_FILE)


def read_meta(env_dir: str, remedy: str = "") -> Meta | None:
    path = data_file(env_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}", e.errno) from e
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        first = _meta_page(fd, path, size, 0, 0, remedy)
        second = _meta_page(fd, path, size, 1, first.page_size, remedy)
        # A writer in another process may have committed since the first fstat: it writes
        # the pages before the meta page that names them, so the size taken after reading
        # the meta pages covers every page they can name.
        size = os.fstat(fd).st_size
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}", e.errno) from e
    finally:
        os.close(fd)
    if second.page_size != first.page_size:
        raise DamagedEnvironment(path, "its two meta pages disagree on the page size", remedy)
    current = max(first, second, key=lambda m: m.txnid)
    if size < current.needed_size:
        raise DamagedEnvironment(path, f"cut short: {size} bytes, its meta page (transaction "
                                       f"{current.txnid}) needs {current.needed_size}", remedy)
    return current


def _meta_page(fd: int, path: str, size: int, number: int, offset: int, remedy: str) -> Meta:
    """Meta page number (at offset), checked on its own."""
    def damaged(reason: str) -> DamagedEnvironment:
        return DamagedEnvironment(path, reason, remedy)

    raw = os.pread(fd, META.size, offset)
    if len(raw) < META.size:
        raise damaged(f"cut short: {size} bytes, meta page {number} is missing")
    (pgno, _, flags, _, _, magic, version, _, map_size, page_size, _, _, _, _, _, _, free_root,
     _, _, _, _, _, _, _, main_root, last_pgno, txnid) = META.unpack(raw)
    if magic != MAGIC or pgno != number or not flags & P_META:
        raise damaged(f"not an LMDB data file (meta page {number} is not one)")
    if version != DATA_VERSION:
        raise damaged(f"LMDB data format {version}, this LMDB reads format {DATA_VERSION}")
    if number == 0 and (page_size < 512 or page_size > 65536 or page_size & (page_size - 1)):
        raise damaged(f"meta page 0 gives an impossible page size {page_size}")
    if last_pgno < NUM_METAS - 1 or any(root != P_INVALID and not NUM_METAS <= root <= last_pgno
                                        for root in (free_root, main_root)):
        raise damaged(f"meta page {number} points outside its {last_pgno + 1} pages")
    return Meta(page_size, map_size, last_pgno, txnid)


# -- reporting: the store does not log; a worker process routes these lines to server.log
_reporter: Callable[[str], None] | None = None
_reported: set[str] = set()


def set_reporter(fn: Callable[[str], None] | None) -> None:
    global _reporter
    _reporter = fn


def _report(error: DamagedEnvironment) -> None:
    if _reporter is not None and str(error) not in _reported:
        _reported.add(str(error))
        _reporter(f"not opened: {error}")


class Environment:
    """One process's LMDB env on a directory, checked before it is mapped (see the module)."""

    def __init__(self, env_dir: str, remedy: str = "", **options):
        self.env_dir = env_dir
        self.remedy = remedy
        self._options = options
        self._env: lmdb.Environment | None = None
        self._identity: tuple[int, int] | None = None
        self._size = 0
        self._lock = threading.Lock()  # the user database is read from the auth threads too

    def current(self) -> lmdb.Environment:
        with self._lock:
            return self._current()

    def _current(self) -> lmdb.Environment:
        st = self._stat()
        if self._env is not None and st is not None and (st.st_dev, st.st_ino) == self._identity:
            if st.st_size < self._size:
                self._recheck()
            self._size = st.st_size
            return self._env
        self._close()  # first use, or another file in its place
        self._recheck()
        try:
            env = lmdb.open(self.env_dir, **self._options)
        except (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError) as e:
            raise self._refused(DamagedEnvironment(data_file(self.env_dir), str(e), self.remedy)) from None
        except lmdb.Error as e:
            raise StorageError(f"cannot open {self.env_dir}: {e}") from None
        st = self._stat()
        self._env, self._identity, self._size = env, st and (st.st_dev, st.st_ino), st.st_size if st else 0
        return env

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._identity, self._size = None, None, 0

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(data_file(self.env_dir))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {data_file(self.env_dir)}: {e.strerror}", e.errno) from e

    def _recheck(self) -> None:
        try:
            read_meta(self.env_dir, self.remedy)
        except DamagedEnvironment as e:
            self._close()
            raise self._refused(e) from None

    @staticmethod
    def _refused(error: DamagedEnvironment) -> DamagedEnvironment:
        _report(error)
        return error

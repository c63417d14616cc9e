"""Change notification per mailbox: writers say a mailbox changed, IDLE sessions hear it.

signal(directory): the store's writers (store/mailstore.py) touch the mailbox directory
(os.utime, so inotify reports IN_ATTRIB on the directory itself) after each index commit
that changed the mailbox. The signal comes after the commit on purpose: a woken reader
must find the change in the index (delivery renames its files before the commit, so the
directory's file events come too early). It never raises: a lost signal costs a late
update, never a failed store operation.

Watcher.for_loop(loop=None) -> Watcher: the process's watcher for that event loop (made on
first use): one inotify descriptor (inotify_init1 through ctypes) read by loop.add_reader.
  .watch(directory) -> Subscription: subscriptions on one directory share one inotify watch
    (counted; the last close removes it). Events about files in the directory are ignored;
    IN_ATTRIB on the directory, IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED (the mailbox was
    renamed or deleted) and a queue overflow wake the subscriptions.
  await Subscription.wait(timeout) -> bool: True when a change came since the subscription
    was made or since a wait last returned True; False after timeout seconds without one.
  Subscription.close(); Watcher.close().
  A watch removed by the kernel (the directory is gone) wakes its subscriptions once; later
  waits just time out, and the session finds the mailbox gone in the index.
Fallback, not the design: where inotify cannot be had (no ctypes or libc symbol, ENOSYS,
the per-user instance or watch limit reached), a subscription looks at the directory's
inode, mtime and ctime once a second instead. It may wake early (a file renamed into the
directory changes its mtime before the index commit), and wakes again at the signal.
A directory that is not there gives a polled subscription that is woken already.
Diagnostics: none raised by signal(); Watcher.inotify is False when the fallback is in use
for every subscription, Subscription.polled says it for one.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from typing import ClassVar

IN_ATTRIB = 0x004
IN_MOVE_SELF = 0x800
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF | IN_ONLYDIR
WAKING = IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF | IN_IGNORED
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name
POLL_INTERVAL = 1.0


def signal(directory: str) -> None:
    """Tell the watchers of directory that its mailbox changed (after the index commit)."""
    try:
        os.utime(directory)
    except OSError:
        pass  # the mailbox went meanwhile, or the directory is not ours to touch


def _libc():
    """libc's inotify functions, or None where ctypes or the symbols are missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        functions = (libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch)
    except (OSError, AttributeError):
        return None
    functions[0].argtypes, functions[0].restype = [ctypes.c_int], ctypes.c_int
    functions[1].argtypes, functions[1].restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    functions[2].argtypes, functions[2].restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


class Subscription:
    """One waiter's interest in one directory, woken through the watcher's inotify watch."""

    polled = False

    def __init__(self, watcher: Watcher | None, wd: int):
        self._watcher = watcher
        self._wd = wd
        self._changed = asyncio.Event()

    def _wake(self) -> None:
        self._changed.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher._unsubscribe(self._wd, self)
            self._watcher = None


class PolledSubscription(Subscription):
    """The fallback: the directory's (inode, mtime, ctime) looked at once a second."""

    polled = True

    def __init__(self, directory: str):
        super().__init__(None, -1)
        self.directory = directory
        self._seen = self._look()
        if self._seen is None:
            self._changed.set()  # the mailbox is gone already

    def _look(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.directory)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    async def wait(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._changed.is_set():
            now = self._look()
            if now != self._seen:
                self._seen = now
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(POLL_INTERVAL, left))
        self._changed.clear()
        return True


class Watcher:
    """The inotify descriptor of one process and event loop, shared by its subscriptions."""

    _by_loop: ClassVar[dict[asyncio.AbstractEventLoop, Watcher]] = {}

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop | None = None) -> Watcher:
        loop = loop or asyncio.get_running_loop()
        for other in [w for w in cls._by_loop.values() if w.loop.is_closed() or w._pid != os.getpid()]:
            other.close()  # a loop that is gone, or a parent's before fork
        if loop not in cls._by_loop:
            cls._by_loop[loop] = cls(loop)
        return cls._by_loop[loop]

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._pid = os.getpid()
        self._subscribers: dict[int, set[Subscription]] = {}  # wd -> its subscriptions
        self._fd = -1
        self._libc = _libc()
        if self._libc is not None:
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd >= 0:  # else ENOSYS, EMFILE (max_user_instances), ENFILE, ENOMEM: poll
                self._fd = fd
                loop.add_reader(fd, self._read)

    @property
    def inotify(self) -> bool:
        return self._fd >= 0

    def watch(self, directory: str | os.PathLike) -> Subscription:
        directory = os.fspath(directory)
        if self._fd < 0:
            return PolledSubscription(directory)
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:  # ENOENT, ENOTDIR: the mailbox is gone (the fallback wakes at once);
            return PolledSubscription(directory)  # ENOSPC (max_user_watches), ENOMEM: over the limits
        subscription = Subscription(self, wd)
        self._subscribers.setdefault(wd, set()).add(subscription)  # the same inode gives the same wd
        return subscription

    def _unsubscribe(self, wd: int, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(wd)
        if subscribers is None:
            return  # the kernel removed the watch already
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[wd]
            if self._fd >= 0:
                self._libc.inotify_rm_watch(self._fd, wd)

    def _read(self) -> None:
        """Every event waiting on the descriptor; each wakes its directory's subscriptions."""
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()  # should not happen; the fallback then serves new subscriptions
                return
            if not data:
                return
            offset = 0
            while offset + EVENT.size <= len(data):
                wd, mask, _, length = EVENT.unpack_from(data, offset)
                offset += EVENT.size + length
                if mask & IN_Q_OVERFLOW:  # events were lost: anything may have changed
                    for subscribers in self._subscribers.values():
                        for subscription in subscribers:
                            subscription._wake()
                elif mask & WAKING and length == 0:  # with a name: about a file inside, not the mailbox
                    for subscription in self._subscribers.get(wd, ()):
                        subscription._wake()
                if mask & IN_IGNORED:
                    self._subscribers.pop(wd, None)  # the kernel dropped the watch: nothing to remove

    def close(self) -> None:
        if self._fd >= 0:
            if self._pid == os.getpid() and not self.loop.is_closed():
                self.loop.remove_reader(self._fd)  # not in a forked child: the epoll is the parent's too
            os.close(self._fd)
            self._fd = -1
        self._subscribers.clear()
        if Watcher._by_loop.get(self.loop) is self:
            del Watcher._by_loop[self.loop]

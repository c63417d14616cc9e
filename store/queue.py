"""The mail queue: queue files in Postfix-style directories, durable per-recipient state.

Layout under queue_directory:
    maildrop/  local submissions (sendmail) by any local user: mode 1733, untrusted until
               qmgr's pickup (store.maildrop) has checked them and copied them to incoming
    incoming/  accepted by smtpd (or picked up), ready now
    active/    being delivered by qmgr
    deferred/  waiting for a retry; the file's mtime is its next-try time (as in Postfix)
    hold/      kept until `mailctl queue release`
    corrupt/   unreadable files and files that crashed qmgr too often
    state/ID   append-only log of what happened to ID (done recipients, deferrals, ...)
    tmp/       spool of messages over 1 MiB while they are received (smaller ones stay in
               memory); commit copies the spool into the queue file with store.fsio
    public/qmgr  FIFO: one byte wakes the queue manager

A queue file (immutable once committed) is
    b"MAILHOUSE-QUEUE 1 <n>\\n" + n bytes of envelope JSON + b"\\n" + the message.
Everything that changes later goes into state/ID, one JSON object per line, each append
fsynced, so done-marks cost one small append: a restart never delivers twice to a recipient
already marked done. A torn last line (crash during the append) is ignored.
Directory fsyncs are shared between the threads of a process (store.fsio.DirSync): the
commits of concurrent SMTP sessions in one smtpd share the fsync of incoming/, and files
finished at the same time share one fsync of active/. A state log is removed only after the
removal of its queue file is durable, so a queue file never comes back without its done
marks. Moves into active/ and the removal of a file that has no state log are not fsynced:
a power loss that undoes them brings back a ready file whose deliveries the store
recognises (delivery ids), never loses one.

Interface:
    q = Queue(queue_directory) / Queue.from_params(params); q.ensure_layout()
    w = q.writer(); w.write(chunk)...; qid = w.commit(envelope) | w.abort()   (into incoming)
    q.writer(top=f): commit calls f(spooled message) in its thread and puts the header lines
    it returns on top of the message (smtpd's DKIM signature, workers/smtpd/dkim.py)
    q.ready(now) -> ids (incoming + due deferred);  read_head(file, limit) -> (Envelope, offset)
    q.activate_many(ids) -> the ids moved to active/;  q.activate(qid) -> bool
    q.load(qid) -> QueueItem;  q.message_file(qid) -> binary file;  q.incoming_depth() -> int
    q.mark_done(qid, key, status, detail);  q.mark_done_many(qid, [(key, status, detail), ...])
    q.defer(qid, next_try, reasons)
    q.finish(qid) (all done: remove);  q.note_warned(qid);  q.recover(max_recoveries)
    q.hold(qid), q.release(qid), q.requeue(qid), q.delete(qid), q.delete_all(), q.flush(ids), q.list_all()
    wake_qmgr(params);  q.open_wakeup_reader() -> fd for qmgr
Diagnostics: StorageError (store.fsio) for any failed write (disk full: partial file
removed, nothing stored before is touched); QueueCorrupt for an unreadable queue file
(moved to corrupt/); NotQueued when an id is in no queue directory.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from store.fsio import DirSync, StorageError, is_temp_name, write_durably

MAGIC = b"MAILHOUSE-QUEUE 1 "
MAX_ENVELOPE = 16 * 1024 * 1024          # bytes of envelope JSON we agree to parse
SPOOL_IN_MEMORY = 1024 * 1024            # larger messages are spooled to tmp/ while received
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
QUEUE_DIRECTORY_MODE = 0o755             # as Postfix's: its folders keep their own modes
MAILDROP_MODE = 0o1733                   # anyone may add a file; only the owner lists; sticky
QUEUE_ID = re.compile(r"[0-9A-F]{22}")
STALE_SECONDS = 3600                     # temp and orphan state files older than this are debris


class QueueCorrupt(Exception):
    """A queue file could not be read; it has been moved to corrupt/."""


class NotQueued(Exception):
    """The queue id is in no queue directory (delivered, deleted, or never existed)."""


def new_queue_id() -> str:
    """Sortable by time: 16 hex digits of time_ns, then 6 random hex digits."""
    return f"{time.time_ns():016X}{secrets.token_hex(3).upper()}"


def is_queue_id(text: str) -> bool:
    return bool(QUEUE_ID.fullmatch(text))


@dataclass
class Recipient:
    address: str
    notify: list[str] | None = None      # DSN NOTIFY: NEVER or some of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None             # DSN ORCPT, as given ("rfc822;bob@example.org")


@dataclass
class Envelope:
    sender: str                          # "" is the null sender <>
    recipients: list[Recipient]
    ret: str | None = None               # DSN RET: FULL | HDRS
    envid: str | None = None             # DSN ENVID
    body: str | None = None              # 7BIT | 8BITMIME
    arrival: float = 0.0                 # set at commit when 0
    size: int = 0                        # message bytes, set at commit
    client: dict = field(default_factory=dict)   # helo, addr, name, protocol, user (for Received:)

    def to_json(self) -> bytes:
        # the fields as asdict() has them, without its deep copy (the JSON encoder copies nothing)
        fields = {**vars(self), "recipients": [vars(r) for r in self.recipients]}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        raw = json.loads(data)
        raw["recipients"] = [Recipient(**r) for r in raw["recipients"]]
        return cls(**raw)


@dataclass
class QueueState:
    """The replayed state log of one queue file."""
    done: dict[str, tuple[str, str]] = field(default_factory=dict)   # key -> (status, detail)
    attempts: int = 0
    next_try: float = 0.0
    reasons: dict[str, str] = field(default_factory=dict)            # key -> last deferral reason
    recoveries: int = 0
    warned: bool = False
    hold_requested: bool = False
    delete_requested: bool = False

    def apply(self, event: dict) -> None:
        kind = event.get("ev")
        if kind == "done":
            self.done[str(event["key"])] = (event.get("status", "delivered"), event.get("detail", ""))
        elif kind == "defer":
            self.attempts += 1
            self.next_try = float(event["next_try"])
            self.reasons = dict(event.get("reasons") or {})
        elif kind == "recovered":
            self.recoveries += 1
        elif kind == "warned":
            self.warned = True
        elif kind == "hold":
            self.hold_requested = True
        elif kind == "release":
            self.hold_requested = False
        elif kind == "delete":
            self.delete_requested = True


@dataclass
class QueueItem:
    queue_id: str
    queue: str                           # the directory it was found in
    envelope: Envelope
    state: QueueState
    message_offset: int                  # where the message starts in the file
    mtime: float

    def pending(self) -> list[tuple[str, Recipient]]:
        """(key, recipient) for every recipient not yet done; key is the recipient's index."""
        return [(str(i), r) for i, r in enumerate(self.envelope.recipients) if str(i) not in self.state.done]


class QueueWriter:
    """Receives one message in chunks; commit() stores it durably and returns the queue id.
    top(message) -> bytes, if given, runs in commit() on the spooled message (at its start):
    what it returns goes on top of the message (it must not raise)."""

    def __init__(self, queue: "Queue", target: str, top: Callable[[BinaryIO], bytes] | None = None):
        if target != "incoming":
            raise ValueError(f"cannot write into {target!r}")
        self.queue = queue
        self.target = target
        self.size = 0
        self._top = top
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=queue.path("tmp"))

    def write(self, chunk: bytes) -> None:
        try:
            self._spool.write(chunk)
        except OSError as e:
            self.abort()
            raise StorageError(f"cannot spool message: {e.strerror or e}", e.errno) from e
        self.size += len(chunk)

    def commit(self, envelope: Envelope) -> str:
        """Durable on return (file and directory entry fsynced); only then acknowledge."""
        self._spool.seek(0)
        top = self._top(self._spool) if self._top else b""
        self._spool.seek(0)
        envelope.size = self.size + len(top)
        envelope.arrival = envelope.arrival or time.time()
        head = envelope.to_json()
        queue_id = new_queue_id()
        try:
            write_durably(self.queue.path(self.target), queue_id,
                          _chain([MAGIC + str(len(head)).encode() + b"\n", head, b"\n", top], self._spool),
                          sync_dir=self.queue.dir_sync.sync)
        finally:
            self.abort()
        return queue_id

    def abort(self) -> None:
        self._spool.close()


def read_head(f: BinaryIO, limit: int = MAX_ENVELOPE) -> tuple[Envelope, int]:
    """The envelope of a queue file and where its message starts. ValueError, KeyError,
    TypeError or RecursionError (JSON nested too deep) for anything else."""
    line = f.readline(64)
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise ValueError("no queue file header")
    length = int(line[len(MAGIC):])
    if not 0 < length <= limit:
        raise ValueError("envelope length out of range")
    head = f.read(length + 1)
    if len(head) != length + 1 or head[-1:] != b"\n":
        raise ValueError("truncated envelope")
    return Envelope.from_json(head[:-1]), len(line) + length + 1


def open_queue_file(path: str) -> BinaryIO:
    """Open for reading without following a symbolic link or waiting on a FIFO (a local user
    can put either into maildrop); ValueError when it is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError("a symbolic link") from None
        raise
    f = open(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise ValueError("not a regular file")
    return f


def _chain(first: list[bytes], rest: BinaryIO) -> Iterator[bytes]:
    yield from first
    while chunk := rest.read(256 * 1024):
        yield chunk


class Queue:
    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        self.dir_sync = DirSync()

    @classmethod
    def from_params(cls, params) -> "Queue":
        return cls(params.queue_directory)

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def ensure_layout(self) -> None:
        """Create the directories and the wakeup FIFO (idempotent). Every local user may enter
        queue_directory and drop files into maildrop (store.maildrop); the owner (or root)
        also sets those two modes on a layout made before."""
        for name in (*QUEUES, "state", "tmp", "public"):
            os.makedirs(self.path(name), mode=0o700, exist_ok=True)
        try:
            os.mkfifo(self.wakeup_path(), 0o600)
        except FileExistsError:
            pass
        for path, mode in ((self.directory, QUEUE_DIRECTORY_MODE), (self.path("maildrop"), MAILDROP_MODE)):
            info = os.stat(path)
            if os.geteuid() in (0, info.st_uid) and stat.S_IMODE(info.st_mode) != mode:
                os.chmod(path, mode)

    # ---------------------------------------------------------------- writing
    def writer(self, target: str = "incoming", top: Callable[[BinaryIO], bytes] | None = None) -> QueueWriter:
        return QueueWriter(self, target, top)

    # ---------------------------------------------------------------- reading
    def ids(self, queue: str) -> list[str]:
        """Committed queue ids in one directory, oldest first."""
        try:
            names = os.listdir(self.path(queue))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_queue_id(n))

    def incoming_depth(self) -> int:
        """How many accepted files wait for qmgr to take them (a measure of its backlog)."""
        try:
            return sum(1 for name in os.listdir(self.path("incoming")) if is_queue_id(name))
        except FileNotFoundError:
            return 0

    def locate(self, queue_id: str) -> str:
        """The directory holding queue_id; NotQueued if none does."""
        if is_queue_id(queue_id):
            for queue in QUEUES:
                if os.path.exists(self.path(queue, queue_id)):
                    return queue
        raise NotQueued(f"{queue_id}: not in the queue")

    def load(self, queue_id: str, queue: str | None = None) -> QueueItem:
        queue = queue or self.locate(queue_id)
        path = self.path(queue, queue_id)
        try:
            with open_queue_file(path) as f:
                envelope, offset = read_head(f)
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            raise NotQueued(f"{queue_id}: not in the queue") from None
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            if queue in ("corrupt", "maildrop"):     # maildrop: store.maildrop's pickup decides
                raise QueueCorrupt(f"{queue_id}: bad queue file ({e})") from None
            self._move(queue_id, queue, "corrupt")
            raise QueueCorrupt(f"{queue_id}: bad queue file ({e}); moved to corrupt") from None
        return QueueItem(queue_id, queue, envelope, self.read_state(queue_id), offset, mtime)

    def message_file(self, queue_id: str, queue: str | None = None) -> BinaryIO:
        """The queue file opened for reading and positioned at the message; caller closes."""
        queue = queue or self.locate(queue_id)
        f = open(self.path(queue, queue_id), "rb")
        try:
            read_head(f)
        except (ValueError, KeyError, TypeError, RecursionError):
            f.close()
            raise QueueCorrupt(f"{queue_id}: bad queue file") from None
        return f

    def read_state(self, queue_id: str) -> QueueState:
        state = QueueState()
        try:
            with open(self.path("state", queue_id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return state
        for line in data.split(b"\n"):
            try:
                state.apply(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue       # the torn tail of a crashed append, or an empty line
        return state

    # ---------------------------------------------------------------- state log
    def _record(self, queue_id: str, event: dict) -> None:
        self._record_many(queue_id, [event])

    def _record_many(self, queue_id: str, events: list[dict]) -> None:
        """Append events to state/ID with one write and one fsync; on failure the log is as
        before (or, after a crash, ends in the lines that made it and a torn one)."""
        path = self.path("state", queue_id)
        stamp = round(time.time(), 3)
        data = b"".join(json.dumps({**event, "t": stamp}, separators=(",", ":")).encode() + b"\n"
                        for event in events)
        created = False
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror or e}", e.errno) from e
        try:
            before = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(fd)
            except OSError as e:
                try:
                    os.ftruncate(fd, before)
                except OSError:
                    pass       # the replay ignores a torn last line anyway
                raise StorageError(f"cannot record in {path}: {e.strerror or e}", e.errno) from e
        finally:
            os.close(fd)
        if created:
            try:
                _owner_like_directory(path)
                self.dir_sync.sync(self.path("state"))
            except OSError as e:
                raise StorageError(f"cannot sync {self.path('state')}: {e.strerror or e}", e.errno) from e

    def mark_done(self, queue_id: str, key: str, status: str = "delivered", detail: str = "") -> None:
        """Durably record that recipient `key` needs no more delivery (delivered or bounced)."""
        self.mark_done_many(queue_id, [(key, status, detail)])

    def mark_done_many(self, queue_id: str, marks: list[tuple[str, str, str]]) -> None:
        """mark_done for each (key, status, detail), in one durable append."""
        if marks:
            self._record_many(queue_id, [{"ev": "done", "key": str(key), "status": status, "detail": detail}
                                         for key, status, detail in marks])

    def note_warned(self, queue_id: str) -> None:
        """The delay warning was sent; it is sent once."""
        self._record(queue_id, {"ev": "warned"})

    # ---------------------------------------------------------------- moves
    def _move(self, queue_id: str, src: str, dst: str, next_try: float | None = None) -> bool:
        """rename src/ID -> dst/ID durably; False if it is no longer in src (someone else moved it)."""
        source, target = self.path(src, queue_id), self.path(dst, queue_id)
        try:
            if next_try is not None:
                os.utime(source, (next_try, next_try))
            os.rename(source, target)
            self.dir_sync.sync(self.path(dst))
            self.dir_sync.sync(self.path(src))
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StorageError(f"cannot move {queue_id} from {src} to {dst}: {e.strerror or e}", e.errno) from e
        return True

    def ready(self, now: float | None = None) -> list[str]:
        """Ids to deliver now: all of incoming, and deferred ones whose next try has come."""
        now = time.time() if now is None else now
        due = self.ids("incoming")
        for queue_id in self.ids("deferred"):
            try:
                if os.stat(self.path("deferred", queue_id)).st_mtime <= now:
                    due.append(queue_id)
            except FileNotFoundError:
                continue
        return sorted(due)

    def activate(self, queue_id: str) -> bool:
        """Take a ready id into active/ (from incoming or deferred); False if it is gone."""
        return bool(self.activate_many([queue_id]))

    def activate_many(self, queue_ids: Iterable[str]) -> list[str]:
        """Take ready ids into active/ (from incoming or deferred). Returns the ids moved (one
        gone meanwhile is left out). StorageError: some may be in active/ all the same.
        No fsync: a rename is atomic, and a power loss that undoes one leaves the file where
        it was, ready, to be delivered again (its state log is apart and kept)."""
        moved = []
        try:
            for queue_id in queue_ids:
                for src in ("incoming", "deferred"):
                    try:
                        os.rename(self.path(src, queue_id), self.path("active", queue_id))
                    except FileNotFoundError:
                        continue
                    moved.append(queue_id)
                    break
        except OSError as e:
            raise StorageError(f"cannot move files into active: {e.strerror or e}", e.errno) from e
        return moved

    def defer(self, queue_id: str, next_try: float, reasons: dict[str, str] | None = None) -> str:
        """Record a failed attempt and park active/ID until next_try; returns where it went."""
        self._record(queue_id, {"ev": "defer", "next_try": next_try, "reasons": reasons or {}})
        state = self.read_state(queue_id)
        if state.delete_requested:
            self._remove(queue_id, "active")
            return "deleted"
        target = "hold" if state.hold_requested else "deferred"
        self._move(queue_id, "active", target, next_try=next_try)
        return target

    def finish(self, queue_id: str) -> None:
        """Every recipient is done: remove the queue file, then its state log. A file without
        a state log went only to idempotent transports (nothing was marked, no report queued):
        its removal is not waited for, as a power loss that undid it would repeat only work
        the store recognises by its delivery ids."""
        if os.path.exists(self.path("state", queue_id)):
            self._remove(queue_id, "active")
            return
        try:
            os.unlink(self.path("active", queue_id))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot remove {queue_id}: {e.strerror or e}", e.errno) from e

    def _remove(self, queue_id: str, queue: str) -> bool:
        """Unlink queue/ID; once that is durable (an fsync of the directory shared with the
        threads removing other files meanwhile), its state log."""
        try:
            os.unlink(self.path(queue, queue_id))
            self.dir_sync.sync(self.path(queue))
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StorageError(f"cannot remove {queue_id}: {e.strerror or e}", e.errno) from e
        try:
            os.unlink(self.path("state", queue_id))
        except FileNotFoundError:
            pass
        return True

    # ---------------------------------------------------------------- administration
    def _administer(self, queue_id: str, act) -> str:
        """act(queue) -> outcome, or None when the file moved away meanwhile (qmgr took it):
        then look again where it is now. NotQueued once it is gone."""
        for _ in range(len(QUEUES)):
            outcome = act(self.locate(queue_id))
            if outcome is not None:
                return outcome
        raise NotQueued(f"{queue_id}: keeps moving; try again")

    def hold(self, queue_id: str) -> str:
        """Put ID on hold; an id in delivery goes to hold when its attempt ends."""
        def act(queue: str) -> str | None:
            if queue == "active":
                self._record(queue_id, {"ev": "hold"})
                return "hold requested (in delivery)"
            if queue in ("hold", "corrupt"):
                return f"already in {queue}"
            if queue == "maildrop":              # not checked yet: only pickup takes it out
                return "not picked up yet (qmgr takes it in within seconds); try again then"
            return "held" if self._move(queue_id, queue, "hold") else None
        return self._administer(queue_id, act)

    def release(self, queue_id: str) -> str:
        """Take ID out of hold: it is ready at once."""
        def act(queue: str) -> str | None:
            if queue not in ("hold", "active"):
                return f"not on hold (in {queue})"
            self._record(queue_id, {"ev": "release"})
            if queue == "active":
                return "released"
            return "released" if self._move(queue_id, "hold", "incoming") else None
        return self._administer(queue_id, act)

    def requeue(self, queue_id: str) -> str:
        """A deferred ID goes back to incoming/: tried now, resolved afresh (aliases, relayhost)."""
        def act(queue: str) -> str | None:
            if queue != "deferred":
                return {"incoming": "already due", "active": "in delivery now",
                        "hold": "on hold (release it)"}.get(queue, f"not deferred (in {queue})")
            return "requeued" if self._move(queue_id, "deferred", "incoming") else None
        return self._administer(queue_id, act)

    def delete(self, queue_id: str) -> str:
        """Delete ID; an id in delivery is deleted when its attempt ends."""
        def act(queue: str) -> str | None:
            if queue == "active":
                self._record(queue_id, {"ev": "delete"})
                return "delete requested (in delivery)"
            return "deleted" if self._remove(queue_id, queue) else None
        return self._administer(queue_id, act)

    def delete_all(self) -> tuple[int, int]:
        """Delete every queue file, corrupt ones included -> (deleted now, deleted when delivery ends)."""
        outcomes = []
        for queue in QUEUES:
            for queue_id in self.ids(queue):
                try:
                    outcomes.append(self.delete(queue_id))
                except NotQueued:
                    continue        # it moved on (delivered) while we went through the queues
        deleted = outcomes.count("deleted")
        return deleted, len(outcomes) - deleted

    def flush(self, queue_ids: Iterable[str] | None = None) -> int:
        """Make every deferred id (of queue_ids, when given) due now; returns how many. (Call
        wake_qmgr afterwards.)"""
        now = time.time()
        count = 0
        for queue_id in self.ids("deferred") if queue_ids is None else queue_ids:
            try:
                os.utime(self.path("deferred", queue_id), (now, now))
                count += 1
            except FileNotFoundError:
                continue
        return count

    def list_all(self) -> list[QueueItem]:
        """Every readable queue file in every directory, oldest first."""
        items = []
        for queue in QUEUES:
            for queue_id in self.ids(queue):
                try:
                    items.append(self.load(queue_id, queue))
                except (NotQueued, QueueCorrupt):
                    continue
        return sorted(items, key=lambda item: item.queue_id)

    # ---------------------------------------------------------------- startup
    def recover(self, max_recoveries: int = 5) -> dict[str, list[str]]:
        """qmgr at start: active/ files of a crashed run go back to incoming (each time counted;
        after max_recoveries to corrupt); debris (old temp files, orphan state logs) is removed."""
        report: dict[str, list[str]] = {"incoming": [], "corrupt": [], "hold": [], "deleted": []}
        for queue_id in self.ids("active"):
            state = self.read_state(queue_id)
            if state.delete_requested:
                self._remove(queue_id, "active")
                report["deleted"].append(queue_id)
                continue
            if state.recoveries >= max_recoveries:
                target = "corrupt"
            else:
                self._record(queue_id, {"ev": "recovered"})
                target = "hold" if state.hold_requested else "incoming"
            if self._move(queue_id, "active", target):
                report[target].append(queue_id)
        self._remove_debris()
        return report

    def _remove_debris(self) -> None:
        cutoff = time.time() - STALE_SECONDS
        for queue in (*QUEUES, "tmp"):
            for entry in _scandir(self.path(queue)):
                if is_temp_name(entry.name) and _mtime(entry) < cutoff:
                    _unlink_quietly(entry.path)
        for entry in _scandir(self.path("state")):
            if _mtime(entry) < cutoff and not any(os.path.exists(self.path(q, entry.name)) for q in QUEUES):
                _unlink_quietly(entry.path)

    # ---------------------------------------------------------------- wakeup
    def wakeup_path(self) -> str:
        return self.path("public", "qmgr")

    def open_wakeup_reader(self) -> int:
        """The FIFO for qmgr, non-blocking. Opened read-write so it never reports EOF."""
        return os.open(self.wakeup_path(), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def _owner_like_directory(path: str) -> None:
    """A file made by root (mailctl) gets its directory's owner, so qmgr (mail_owner) can append."""
    if os.geteuid() == 0:
        directory = os.stat(os.path.dirname(path))
        os.chown(path, directory.st_uid, directory.st_gid)


def _scandir(path: str) -> list[os.DirEntry]:
    try:
        return list(os.scandir(path))
    except FileNotFoundError:
        return []


def _mtime(entry: os.DirEntry) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass        # gone already, or not ours to remove (a folder a local user made in maildrop)


def wake_qmgr(params) -> None:
    """Nudge the queue manager: one byte into the FIFO. No reader, no FIFO, or a full pipe
    (a wakeup is already pending) are all fine; the periodic wakeup catches up anyway."""
    directory = params if isinstance(params, (str, os.PathLike)) else params.queue_directory
    path = os.path.join(directory, "public", "qmgr")
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return                  # ENXIO: no reader; ENOENT: no queue yet
    try:
        os.write(fd, b"W")
    except OSError:
        pass                    # EAGAIN: the pipe is full of wakeups already
    finally:
        os.close(fd)

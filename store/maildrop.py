"""The maildrop: mail submitted by any local user (sendmail), taken in by qmgr as untrusted.

Postfix's original design, which needs no setgid program: queue_directory/maildrop belongs
to mail_owner with mode 1733. Every local user may create a file there, nobody else may
list the folder, and the sticky bit keeps users from removing or renaming each other's
files. sendmail, as whoever runs it, writes one file (drop); qmgr, as mail_owner, checks
every file and copies the good ones into incoming (Pickup). The submitter keeps owning the
dropped file and may still hold it open, so nothing is used in place: pickup reads it once
and writes a queue file of its own.

    drop(queue, envelope, message) -> name
        A fresh temporary name (O_CREAT|O_EXCL|O_NOFOLLOW), mode 0644 whatever the umask
        (mail_owner reads it as "other"; nobody else can learn its name: 88 random bits in a
        folder they cannot list), fsync, rename to the final name, fsync again (the rename
        changed the file's inode, so on ext4 and XFS this commits the rename too: a user who
        may not read maildrop cannot fsync the folder; root and the owner do that as well).
        StorageError when it cannot be written.
    Pickup(queue, params, log).run() -> [queue ids]
        Each entry that is not a temporary file: a symbolic link, a FIFO, a device, a
        folder or a file with more than one link (a hard link to somebody's file) is removed
        without being opened; a regular file is read once, bounded by message_size_limit,
        its envelope checked field by field (MAX_ENVELOPE bytes of JSON at most; addresses,
        DSN values, the recipient count), bare LF line ends become CRLF (as smtpd does),
        and the submitter is the file's owner: its uid (and login name) goes into the
        envelope and into a Received: line that pickup puts on top, as Postfix's
        "(from userid N)". What pickup did not write cannot be trusted, so a Received: line
        the user wrote stays below it. The copy goes into incoming durably, then the entry
        is removed. A crash between the two delivers the message twice, never loses it.
        A bad file goes to corrupt/ under a fresh queue id (never a name the user chose).
Diagnostics (smtp.log): `ID: uid=N from=<sender> (picked up)`; errors `maildrop: NAME:
reason` for every file removed or moved to corrupt (each entry that cannot be removed is
reported once per qmgr process).
"""
from __future__ import annotations

import email.utils
import os
import pwd
import re
import secrets
import stat
import time

from store.fsio import TEMP_PREFIX, StorageError, fsync_dir, is_temp_name, write_durably
from store.queue import MAGIC, Envelope, Queue, new_queue_id, read_head

FILE_MODE = 0o644
MAX_ENVELOPE = 8 * 1024 * 1024          # bytes of envelope JSON from an unprivileged user
MAX_RECIPIENTS = 10_000
MAX_ADDRESS = 320                       # 64 + @ + 255
NOTIFY = {"NEVER", "SUCCESS", "FAILURE", "DELAY"}
_BARE_LF = re.compile(rb"(?<!\r)\n")


def bad_address(address: str) -> bool:
    """Not an address sendmail would queue: empty, too long, spaces or control characters."""
    return not address or len(address) > MAX_ADDRESS or any(c.isspace() or ord(c) < 32 or c == "\x7f"
                                                             for c in address)


# ---------------------------------------------------------------- sendmail's side

def drop(queue: Queue, envelope: Envelope, message: bytes) -> str:
    directory = queue.path("maildrop")
    name = secrets.token_hex(11).upper()
    temp, final = os.path.join(directory, TEMP_PREFIX + name), os.path.join(directory, name)
    envelope.size = len(message)
    envelope.arrival = envelope.arrival or time.time()
    head = envelope.to_json()
    data = memoryview(MAGIC + str(len(head)).encode() + b"\n" + head + b"\n" + message)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as e:
        raise StorageError(f"cannot create a file in {directory}: {e.strerror or e}", e.errno) from e
    try:
        os.fchmod(fd, FILE_MODE)
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        os.rename(temp, final)
        os.fsync(fd)
    except OSError as e:
        for path in (temp, final):
            _unlink_quietly(path)
        raise StorageError(f"cannot write {final}: {e.strerror or e}", e.errno) from e
    finally:
        os.close(fd)
    try:
        fsync_dir(directory)
    except PermissionError:
        pass                    # an unprivileged user may not read maildrop (module docstring)
    except OSError as e:
        raise StorageError(f"cannot sync {directory}: {e.strerror or e}", e.errno) from e
    return name


# ---------------------------------------------------------------- qmgr's side

class Rejected(Exception):
    """A maildrop file that is not a good submission; str() says why."""


def check_envelope(envelope: Envelope) -> None:
    """Every field as sendmail writes it, or Rejected."""
    if not isinstance(envelope.sender, str) or (envelope.sender and bad_address(envelope.sender)):
        raise Rejected("bad sender")
    recipients = envelope.recipients
    if not isinstance(recipients, list) or not 0 < len(recipients) <= MAX_RECIPIENTS:
        raise Rejected("no recipients or too many")
    for r in recipients:
        if not isinstance(r.address, str) or bad_address(r.address) or "@" not in r.address:
            raise Rejected("bad recipient address")
        if r.notify is not None and (not isinstance(r.notify, list) or not r.notify
                                     or not all(isinstance(w, str) and w in NOTIFY for w in r.notify)):
            raise Rejected("bad DSN NOTIFY")
        if r.orcpt is not None:
            raise Rejected("ORCPT is not sendmail's")
    if envelope.ret not in (None, "FULL", "HDRS") or envelope.body not in (None, "7BIT", "8BITMIME"):
        raise Rejected("bad DSN RET or BODY")
    envid = envelope.envid
    if envid is not None and not (isinstance(envid, str) and 0 < len(envid) <= 100
                                  and all(" " <= c <= "~" for c in envid)):
        raise Rejected("bad DSN ENVID")


class Pickup:
    def __init__(self, queue: Queue, params, log):
        self.queue = queue
        self.params = params
        self.log = log
        self.directory = queue.path("maildrop")
        self._reported: set[str] = set()       # entries that could not be removed

    def run(self) -> list[str]:
        """Take in every submission there is now; returns the new queue ids."""
        try:
            entries = [e for e in os.scandir(self.directory) if not is_temp_name(e.name)]
        except FileNotFoundError:
            return []
        # Temporary names are still being written; qmgr's debris removal takes old ones.
        taken = []
        for name in sorted(e.name for e in entries):
            queue_id = self.take(name)
            if queue_id is not None:
                taken.append(queue_id)
        return taken

    def take(self, name: str) -> str | None:
        path = os.path.join(self.directory, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            self._remove(name, info)
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:                  # e.g. a 0600 file mail_owner may not read
            self._to_corrupt(name, f"cannot read it: {e.strerror}")
            return None
        with open(fd, "rb") as f:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino) or opened.st_nlink != 1:
                return None                   # changed under us: look again next time
            try:
                envelope, message = self._read(f, opened.st_size)
            except Rejected as e:
                self._to_corrupt(name, str(e))
                return None
        return self._enqueue(name, envelope, message, opened.st_uid)

    def _read(self, f, size: int) -> tuple[Envelope, bytes]:
        try:
            envelope, offset = read_head(f, MAX_ENVELOPE)
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise Rejected(f"not a queue file ({type(e).__name__}: {e})") from None
        check_envelope(envelope)
        length = size - offset
        limit = self.params.message_size_limit
        if length < 0 or (limit and length > limit):
            raise Rejected(f"larger than message_size_limit ({limit} bytes)")
        message = f.read(length + 1)
        if len(message) != length:
            raise Rejected("the file changed while it was read")
        message = _BARE_LF.sub(b"\r\n", message)
        if message and not message.endswith(b"\r\n"):
            message += b"\r\n"
        return envelope, message

    def _enqueue(self, name: str, envelope: Envelope, message: bytes, uid: int) -> str:
        queue_id = new_queue_id()
        now = time.time()
        login = _login_name(uid)
        received = (f"Received: by {self.params.myhostname} (mailhouse, from userid {uid})\r\n"
                    f"\tid {queue_id}; {email.utils.formatdate(now, localtime=True)}\r\n").encode()
        envelope.client = {"protocol": "sendmail", "uid": uid, **({"user": login} if login else {})}
        envelope.arrival = now
        envelope.size = len(received) + len(message)
        head = envelope.to_json()
        write_durably(self.queue.path("incoming"), queue_id,
                      [MAGIC + str(len(head)).encode() + b"\n", head, b"\n", received, message])
        self._unlink(name)
        self.log.info(f"{queue_id}: uid={uid} from=<{envelope.sender}> (picked up)")
        return queue_id

    def _to_corrupt(self, name: str, reason: str) -> None:
        target = new_queue_id()
        try:
            os.rename(os.path.join(self.directory, name), self.queue.path("corrupt", target))
            fsync_dir(self.queue.path("corrupt"))
            fsync_dir(self.directory)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StorageError(f"cannot move maildrop/{name} to corrupt: {e.strerror or e}", e.errno) from e
        self.log.error(f"maildrop: {_shown(name)}: {reason}; moved to corrupt as {target}")

    def _remove(self, name: str, info: os.stat_result) -> None:
        """Not a file of its own: the entry goes, whatever it points to stays untouched."""
        kind = "a hard link" if stat.S_ISREG(info.st_mode) else "not a regular file"
        path = os.path.join(self.directory, name)
        try:
            os.rmdir(path) if stat.S_ISDIR(info.st_mode) else os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            if name not in self._reported:
                self._reported.add(name)
                self.log.error(f"maildrop: {_shown(name)}: {kind} (uid {info.st_uid}) that cannot be "
                               f"removed: {e.strerror}")
            return
        self.log.error(f"maildrop: {_shown(name)}: {kind} (uid {info.st_uid}); removed")

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.directory, name))
            fsync_dir(self.directory)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot remove maildrop/{name}: {e.strerror or e}", e.errno) from e


def _login_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass                    # not there, or not ours to remove: the error that counts is raised


def _shown(name: str) -> str:
    """A user chose the name: in a log line it must not bring its own line breaks."""
    return name if name.isascii() and name.isprintable() and " " not in name else ascii(name)

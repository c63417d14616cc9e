"""Durable file writes: the only way mail becomes acknowledged.

write_durably(directory, name, source) stores `source` (bytes, an iterable of byte chunks,
or a binary file object read in chunks) as directory/name: a temp file in the same
directory (so the rename stays on one filesystem) is written, fsynced, renamed into place,
and then the directory itself is fsynced. When it returns, the file and its directory
entry survive a crash; only then may a caller acknowledge the message. It returns the
number of bytes written.
fsync_dir(path) fsyncs one directory (after a rename or unlink that must be durable).
is_temp_name(name) tells the temp files apart, so directory scans can skip them.

Diagnostics: any OSError on the way (ENOSPC, EDQUOT, EIO, ...) removes the temp file and
raises StorageError, a temporary failure (SMTP 452 4.3.1, IMAP NO [SERVERBUG]/[OVERQUOTA]).
Nothing that existed before is touched. If only the final directory fsync fails, the new
file is in place but not known to be durable: StorageError is still raised, so the caller
does not acknowledge (a retry may then store the message twice; losing it is worse).
"""
from __future__ import annotations

import errno
import os
import secrets
from typing import BinaryIO, Iterable, Union

Source = Union[bytes, bytearray, memoryview, Iterable[bytes], BinaryIO]

TEMP_PREFIX = ".tmp."
CHUNK_SIZE = 256 * 1024


class StorageError(Exception):
    """Storing failed for a reason that may go away (disk full, quota, I/O); temporary."""

    temporary = True

    def __init__(self, message: str, errno_code: int | None = None):
        super().__init__(message)
        self.errno = errno_code

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _chunks(source: Source) -> Iterable[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif hasattr(source, "read"):
        while chunk := source.read(CHUNK_SIZE):
            yield chunk
    else:
        yield from source


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def write_durably(directory: str | os.PathLike, name: str, source: Source, mode: int = 0o600) -> int:
    """Store source as directory/name, durably; returns the size in bytes."""
    directory = os.fspath(directory)
    temp_path = os.path.join(directory, f"{TEMP_PREFIX}{name}.{secrets.token_hex(6)}")
    final_path = os.path.join(directory, name)
    renamed = False
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            size = sum(_write_all(fd, chunk) for chunk in _chunks(source) if chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp_path, final_path)
        renamed = True
        fsync_dir(directory)
        return size
    except OSError as e:
        if not renamed:
            try:
                os.unlink(temp_path)
            except OSError:
                pass  # not created, or unlink failed too: the original error is what matters
        raise StorageError(f"cannot store {final_path}: {e.strerror or e}", e.errno) from e

"""mailctl log: read the logs the master writes.

    mailctl log server|smtp|imap|pop [-n LINES] [--follow]

Prints the last LINES lines (default 10) of NAME.log under log_directory; --follow keeps
printing new lines until interrupted, and survives rotation: when NAME.log is renamed
away, the rest of the old file is read to its end, then any archive rotated after it (two
rotations within one poll, read from NAME.log.<stamp> or its .gz), then the new NAME.log
from its start, so no line is skipped or shown twice.
tail_lines(f, count) and follow(path, out, f, older) are the building blocks.
Diagnostics: a log that does not exist yet is refused (exit 1) unless --follow is given,
which waits for it.
"""
from __future__ import annotations

import gzip
import os
import shutil
import sys
import time
from typing import BinaryIO

from master.ctl import Refused
from master.logwriter import ARCHIVE_RE
from master.proto import LOG_NAMES

BLOCK = 64 * 1024
POLL_SECONDS = 0.2


def register(sub) -> None:
    log = sub.add_parser("log", help="show a log file (server, smtp, imap, pop)")
    log.add_argument("name", choices=LOG_NAMES)
    log.add_argument("-n", "--lines", type=int, default=10, metavar="LINES", help="lines to show (default 10)")
    log.add_argument("-f", "--follow", action="store_true", help="keep showing new lines, across rotations")
    log.set_defaults(handler=cmd_log)


def tail_lines(f: BinaryIO, count: int) -> bytes:
    """The last `count` lines of an open file, read backwards block by block."""
    end = f.seek(0, os.SEEK_END)
    if count <= 0:
        return b""
    position, data = end, b""
    # count + 1 newlines: the final line's own newline does not start a line
    while position > 0 and data.count(b"\n") <= count:
        step = min(BLOCK, position)
        position -= step
        f.seek(position)
        data = f.read(step) + data
    f.seek(end)
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


def _archive_names(path: str) -> set[str]:
    """Names (without .gz) of the archives rotated away from path: `NAME.log.<UTC stamp>`."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return set()                         # no log folder yet: --follow waits for it
    found = set()
    for name in names:
        m = ARCHIVE_RE.match(name)
        if m and name.startswith(base + "."):
            found.add(name[:-3] if m.group("gz") else name)
    return found


def _open_current(path: str) -> tuple[BinaryIO, set[str]]:
    """Open path (waiting for it to exist) with the archives that are all older than it.

    The listing is taken before the open and checked after it: when no archive appeared in
    between, no rotation happened in between, so the file opened was already the current one
    when the listing was made, and every archive made later holds lines written after it.
    """
    while True:
        before = _archive_names(path)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            time.sleep(POLL_SECONDS)
            continue
        if _archive_names(path) <= before:
            return f, before
        f.close()


def _rotated(f: BinaryIO, path: str) -> bool:
    """Is path no longer the file f reads (renamed away, removed, or truncated)?"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    own = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino) or st.st_size < f.tell()


def _copy_archive(path: str, out: BinaryIO) -> None:
    """Write a whole archive, compressed by now or not; one expired meanwhile is skipped."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        try:
            f = gzip.open(path + ".gz", "rb")
        except FileNotFoundError:
            return
    with f:
        shutil.copyfileobj(f, out, BLOCK)
    out.flush()


def _copy(f: BinaryIO, out: BinaryIO) -> bool:
    data = f.read()
    if data:
        out.write(data)
        out.flush()
    return bool(data)


def follow(path: str, out: BinaryIO, f: BinaryIO | None = None, older: set[str] | None = None) -> None:
    """Copy what is appended to path onto out, forever, across rotations.

    f (already positioned) and older (the archives that existed before f was opened) continue
    a read begun by the caller; without them path is opened from its start. When f is
    rotated away, the rest of it is read; then the archives made after it, in name (time)
    order, minus the first one, which is f itself; then the new path. So two rotations
    between two looks lose nothing: the file in the middle is read from its archive.
    """
    if f is None or older is None:
        f, older = _open_current(path)
    while True:
        if _copy(f, out):
            continue
        if not _rotated(f, path):
            time.sleep(POLL_SECONDS)
            continue
        _copy(f, out)                        # lines written just before the rename
        f.close()
        done: set[str] = set()
        while True:
            newer = sorted(_archive_names(path) - older)
            for name in newer[1:]:
                if name not in done:
                    _copy_archive(os.path.join(os.path.dirname(path), name), out)
                    done.add(name)
            f, current_older = _open_current(path)
            if current_older <= older | set(newer):
                break                        # nothing rotated after the listing above
            f.close()
        older = current_older


def cmd_log(args, config) -> int:
    if args.lines < 0:
        raise Refused("-n must be 0 or more")
    path = os.path.join(config.params.log_directory, f"{args.name}.log")
    out = sys.stdout.buffer
    try:
        older = _archive_names(path)
        f = open(path, "rb")
        if not _archive_names(path) <= older:
            f.close()                        # rotated while opening: show the new file
            f, older = _open_current(path)
    except FileNotFoundError:
        if not args.follow:
            raise Refused(f"{path} does not exist yet (has the master run with this configuration?)") from None
        f = None
    except OSError as e:
        raise Refused(f"cannot read {e.filename or path}: {e.strerror}") from None
    try:
        if f is not None:
            out.write(tail_lines(f, args.lines))
            out.flush()
        if args.follow:
            follow(path, out, f, older)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:                  # `mailctl log -f | head`: the reader is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as e:                     # the log or its folder made unreadable meanwhile
        raise Refused(f"cannot read {e.filename or path}: {e.strerror}") from None
    return 0

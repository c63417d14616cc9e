"""mailctl log: read the logs the master writes.

    mailctl log server|smtp|imap|pop [-n LINES] [--follow]

Prints the last LINES lines (default 10) of NAME.log under log_directory; --follow keeps
printing new lines until interrupted, and survives rotation: when NAME.log is renamed
away, the rest of the old file is read to its end before the new NAME.log is opened from
its start, so no line is skipped or shown twice.
tail_lines(path, count) and follow(fileobj, path, out) are the building blocks.
Diagnostics: a log that does not exist yet is refused (exit 1) unless --follow is given,
which waits for it.
"""
from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

from master.ctl import Refused
from workers._log import LOG_NAMES

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


def _same_file(f: BinaryIO, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) and st.st_size >= f.tell()


def _open_when_present(path: str) -> BinaryIO:
    while True:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            time.sleep(POLL_SECONDS)


def follow(f: BinaryIO, path: str, out: BinaryIO) -> None:
    """Copy what is appended to path onto out, forever, reopening after a rotation."""
    while True:
        chunk = f.read(BLOCK)
        if chunk:
            out.write(chunk)
            out.flush()
            continue
        if _same_file(f, path):
            time.sleep(POLL_SECONDS)
            continue
        rest = f.read()             # rotated or truncated: finish the old file first
        if rest:
            out.write(rest)
            out.flush()
        f.close()
        f = _open_when_present(path)


def cmd_log(args, config) -> int:
    if args.lines < 0:
        raise Refused("-n must be 0 or more")
    path = os.path.join(config.params.log_directory, f"{args.name}.log")
    out = sys.stdout.buffer
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if not args.follow:
            raise Refused(f"{path} does not exist yet (has the master run with this configuration?)") from None
        f = None
    except OSError as e:
        raise Refused(f"cannot read {path}: {e.strerror}") from None
    try:
        if f is not None:
            out.write(tail_lines(f, args.lines))
            out.flush()
        if args.follow:
            follow(f or _open_when_present(path), path, out)
    except KeyboardInterrupt:
        pass
    return 0

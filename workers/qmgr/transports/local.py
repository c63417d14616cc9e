"""Local delivery agents for `|command` and `/file` alias targets (the pipe and file transports).

    outcome = await run_pipe(command, stdin, sender, recipient, original, run_as, time_limit)
    outcome = await append_to_file(path, entry, run_as, time_limit)
    unix_form(chunks, sender, recipient) -> chunks;  mbox_entry(chunks, sender, now) -> chunks

Both return an Outcome(ok, permanent, status, detail). Both get the message as a stream of
chunks, never whole: run_pipe an async iterator that it writes to the command's stdin while
it reads the command's output, append_to_file an iterator that its child process consumes.
The message is handed over in UNIX form (LF line ends) behind Return-Path: and Delivered-To:
lines, as local(8) does (unix_form).
When qmgr runs as root, the command or the appending runs as `mail_owner` (run_as), never
as root: a `/file` is appended by a forked child that has dropped its privileges (no
exec: the interpreter may not be readable by mail_owner). The file is opened O_APPEND
(never through a symlink), locked (lockf), written in mbox form (a "From " separator
line, ">From " quoting) and fsynced, and its directory too when the delivery created the
file; a failed write is truncated away. Any absolute path is allowed, as Postfix allows for
aliases the administrator builds; the rights of mail_owner are the limit.
Outcomes follow sysexits: exit 0 delivered; 75 (EX_TEMPFAIL), a signal, or a command
that runs past command_time_limit (its whole process group is killed) are temporary;
64-78 are permanent (5.3.0, the command's first output line as the reason); other exit
codes are temporary (4.3.0).
Diagnostics: the command's output (first MAX_OUTPUT bytes) is kept in Outcome.detail.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import pwd
import signal
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import AsyncIterable, Iterable, Iterator

from store.fsio import fsync_dir
from workers.qmgr.transports.base import Outcome

MAX_OUTPUT = 2000
EX_TEMPFAIL = 75
SYSEXITS = range(64, 79)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class RunAs:
    """Whose rights a command or file delivery runs with (None fields: the current user)."""
    uid: int | None = None
    gid: int | None = None
    name: str = ""

    @classmethod
    def for_mail_owner(cls, mail_owner: str) -> "RunAs":
        """mail_owner when we are root; ourselves otherwise (nothing to drop)."""
        if os.geteuid() != 0:
            try:
                return cls(name=pwd.getpwuid(os.geteuid()).pw_name)
            except KeyError:                  # a uid without a passwd entry (containers)
                return cls(name=str(os.geteuid()))
        try:
            entry = pwd.getpwnam(mail_owner)
        except KeyError:
            raise LookupError(f"mail_owner {mail_owner!r} is not a user of this system") from None
        if entry.pw_uid == 0:
            raise LookupError(f"mail_owner {mail_owner!r} must not be root")
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)


class AsMailOwner:
    """What the pipe and file transports share: they run as mail_owner (run_as; None when
    mail_owner is no user here), within time_limit, reading the queue file on `files`, and
    log the envelope recipient as the final address. A command or a file may act on every
    copy it gets: not idempotent, each delivery is marked done at once."""
    relay = "local"
    idempotent = False

    def __init__(self, run_as: RunAs | None, mail_owner: str, time_limit: float, files: Executor):
        self.run_as = run_as
        self.mail_owner = mail_owner
        self.time_limit = time_limit
        self.files = files

    def address(self, target, original: str) -> str:
        return original


def no_run_as(mail_owner: str) -> Outcome:
    """Commands and files wait (a temporary failure) while mail_owner is no user here."""
    return Outcome(False, False, "4.3.5", f"mail_owner {mail_owner!r} is not a user here")


def unix_form(chunks: Iterable[bytes], sender: str, recipient: str) -> Iterator[bytes]:
    """The message behind Return-Path: and Delivered-To:, CRLF made LF (a CR that ends a
    chunk waits for the next one)."""
    yield f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode()
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        carry = b"\r" if data.endswith(b"\r") else b""
        yield data[:len(data) - len(carry)].replace(b"\r\n", b"\n")
    yield carry


async def _run(argv: list[str], data: AsyncIterable[bytes], env: dict[str, str], run_as: RunAs,
               time_limit: float) -> tuple[int | None, bytes]:
    """Run argv with data on stdin; (exit code or None on timeout, first output bytes)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, cwd="/", start_new_session=True,
        user=run_as.uid, group=run_as.gid, extra_groups=[] if run_as.uid is not None else None)

    async def feed() -> None:
        try:
            async for chunk in data:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass                    # a command may stop reading early; its exit code decides
        proc.stdin.close()

    async def read() -> bytes:
        output = await proc.stdout.read(MAX_OUTPUT)
        while await proc.stdout.read(65536):
            pass                    # drain the rest so the command never blocks on a full pipe
        return output

    async def feed_and_read() -> bytes:
        # Read while writing: a command that talks before it has read all its input goes on.
        _, output = await asyncio.gather(feed(), read())
        await proc.wait()
        return output

    try:
        output = await asyncio.wait_for(feed_and_read(), time_limit)
    except TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        return None, b""
    return proc.returncode, output


def _outcome(code: int | None, output: bytes, what: str, time_limit: float) -> Outcome:
    text = output.decode("utf-8", "replace").strip()
    first = text.splitlines()[0][:200] if text else ""
    if code is None:
        return Outcome(False, False, "4.3.0", f"{what}: time limit of {time_limit:g}s exceeded")
    if code == 0:
        return Outcome(True, detail=text[:MAX_OUTPUT])
    reason = f"{what} exited with status {code}" + (f": {first}" if first else "")
    if code < 0:
        return Outcome(False, False, "4.3.0", f"{what} killed by signal {-code}")
    if code in SYSEXITS and code != EX_TEMPFAIL:
        return Outcome(False, True, "5.3.0", reason)
    return Outcome(False, False, "4.3.0", reason)


async def run_pipe(command: str, stdin: AsyncIterable[bytes], sender: str, recipient: str, original: str,
                   run_as: RunAs, time_limit: float) -> Outcome:
    env = {"PATH": SAFE_PATH, "SHELL": "/bin/sh", "HOME": "/", "LOGNAME": run_as.name, "USER": run_as.name,
           "SENDER": sender, "RECIPIENT": recipient, "ORIGINAL_RECIPIENT": original, "LANG": "C"}
    code, output = await _run(["/bin/sh", "-c", command], stdin, env, run_as, time_limit)
    return _outcome(code, output, "command", time_limit)


async def append_to_file(path: str, entry: Iterable[bytes], run_as: RunAs, time_limit: float) -> Outcome:
    """Append entry (mbox_entry's chunks, produced by the child as it writes) to path."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: drop privileges, append, _exit
        code = 70                                 # EX_SOFTWARE if anything below raises
        try:
            os.close(read_end)
            if run_as.uid is not None:
                os.setgroups([])
                os.setgid(run_as.gid)
                os.setuid(run_as.uid)
            code, text = append_mbox(path, entry)
            os.write(write_end, text.encode("utf-8", "replace")[:MAX_OUTPUT])
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        code = await _wait_child(pid, time_limit)
        output = os.read(read_end, MAX_OUTPUT) if code is not None else b""
    finally:
        os.close(read_end)
    return _outcome(code, output, f"file {path}", time_limit)


async def _wait_child(pid: int, time_limit: float) -> int | None:
    """The child's exit code (negative: killed by that signal); None after time_limit (killed)."""
    deadline = time.monotonic() + time_limit
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def mbox_entry(unix: Iterable[bytes], sender: str, now: float) -> Iterator[bytes]:
    """One mbox message from its UNIX form: the "From " line, the lines >From-quoted and
    each ended by LF, a blank line after it."""
    yield f"From {sender or 'MAILER-DAEMON'} {time.asctime(time.gmtime(now))}\n".encode()
    rest = b""
    for chunk in unix:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()                        # an unfinished line waits for the next chunk
        yield b"".join(_from_quoted(line) + b"\n" for line in lines)
    if rest:
        yield _from_quoted(rest) + b"\n"
    yield b"\n"


def _from_quoted(line: bytes) -> bytes:
    return b">" + line if line.lstrip(b">").startswith(b"From ") else line


def _open_mbox(path: str) -> tuple[int, bool]:
    """(fd opened for appending, never through a symlink; True when this call created the file)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        try:
            return os.open(path, flags), False
        except FileNotFoundError:
            pass
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            continue                              # created meanwhile by another delivery


def append_mbox(path: str, entry: Iterable[bytes]) -> tuple[int, str]:
    """Append entry's chunks to the mbox at path under a lock, fsynced; (sysexits code, reason)."""
    try:
        fd, created = _open_mbox(path)
    except OSError as e:
        code = EX_TEMPFAIL if e.errno in (errno.ENOSPC, errno.EDQUOT) else 73      # 73: EX_CANTCREAT
        return code, f"cannot open {path}: {e.strerror}"
    before = None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        before = os.fstat(fd).st_size
        for chunk in entry:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        if created:                               # a new file: its directory entry must last too
            fsync_dir(os.path.dirname(path) or "/")
    except OSError as e:
        if before is not None:
            try:
                os.ftruncate(fd, before)          # no half message left in the mbox
            except OSError:
                pass
        return EX_TEMPFAIL, f"cannot write {path}: {e.strerror}"
    finally:
        os.close(fd)
    return 0, ""

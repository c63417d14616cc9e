"""The run directory: the master's own files, safe from the user its workers run as.

run_directory holds the pid file, the status socket and the low-space flag. When the master
runs as root it keeps the directory root's (0755: workers may read the flag, nobody else
may create anything), as Postfix keeps its pid file in a root-owned place: a compromised
worker cannot plant a link that root would then write through. Only the subdirectory of
pop3d's maildrop locks (proto.POP3_LOCKS) belongs to mail_owner. Every file the master creates
here is made with O_EXCL|O_NOFOLLOW and renamed into place (rename replaces a link, never
follows it), and a pid read back is signalled only when that process is a master of this
very configuration.

    prepare(params)                     create/take back run_directory (+ the locks folder)
    create_file(path, text)             O_EXCL|O_NOFOLLOW temp + rename
    write_pid_file(path) / remove_pid_file(path)
    running_master(pid_file, master_cf) -> pid of the master named there, or a Refused reason
"""
from __future__ import annotations

import os
import pwd
import stat

from master.cf import resolve_config_path
from master.params import Params
from master.proto import POP3_LOCKS

PID_MAX_BYTES = 32


class NotOurMaster(Exception):
    """The pid file names no running master of this configuration."""


def prepare(params: Params) -> None:
    """run_directory exists; as root it is root's (0755) and the locks folder mail_owner's."""
    run = params.run_directory
    os.makedirs(run, mode=0o755, exist_ok=True)
    if os.geteuid() != 0:
        return
    info = os.lstat(run)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{run} is not a directory")
    if info.st_uid != 0:
        os.chown(run, 0, 0, follow_symlinks=False)     # an older layout gave it to mail_owner
    if stat.S_IMODE(info.st_mode) != 0o755:
        os.chmod(run, 0o755)
    try:
        owner = pwd.getpwnam(params.mail_owner)
    except KeyError:
        return                                        # preflight names the missing user
    locks = os.path.join(run, POP3_LOCKS)
    try:
        os.mkdir(locks, 0o750)
    except FileExistsError:
        if os.path.islink(locks):
            os.unlink(locks)
            os.mkdir(locks, 0o750)
    os.chown(locks, owner.pw_uid, owner.pw_gid, follow_symlinks=False)


def create_file(path: str, text: str, mode: int = 0o644) -> None:
    """Write path through a fresh temp file: never through a link, never into someone's file."""
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(temp)                               # a leftover (or a planted link) goes
    except FileNotFoundError:
        pass
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.rename(temp, path)
    except OSError:
        os.unlink(temp)
        raise
    finally:
        os.close(fd)


def _read_pid(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise ValueError(f"owned by uid {info.st_uid}, not by the master's user")
        return int(os.read(fd, PID_MAX_BYTES).strip())
    finally:
        os.close(fd)


def write_pid_file(path: str) -> None:
    create_file(path, f"{os.getpid()}\n")


def remove_pid_file(path: str) -> None:
    try:
        if _read_pid(path) == os.getpid():
            os.unlink(path)
    except (OSError, ValueError):
        pass


def _command_line(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        raw = f.read()
    # setproctitle leaves one NUL-free string ("mailhouse master -c PATH"); exec leaves argv
    return raw.rstrip(b"\0").decode(errors="replace").replace("\0", " ").split(" ")


def is_master_of(pid: int, master_cf: str) -> bool:
    """pid runs `master -c <master_cf or its folder>` (as exec'd, or as retitled)."""
    try:
        words = _command_line(pid)
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    if not any(os.path.basename(w) == "master" for w in words[:4]):
        return False
    for flag, value in zip(words, words[1:]):
        if flag in ("-c", "--config") and resolve_config_path(os.path.join(cwd, value))[0] == master_cf:
            return True
    return False


def running_master(pid_file: str, master_cf: str) -> int:
    """The pid in pid_file if it is a running master of master_cf; NotOurMaster otherwise."""
    try:
        pid = _read_pid(pid_file)
    except FileNotFoundError:
        raise NotOurMaster(f"{pid_file}: no such file") from None
    except (OSError, ValueError) as e:
        raise NotOurMaster(f"{pid_file}: {getattr(e, 'strerror', None) or e}") from None
    if pid <= 1 or not is_master_of(pid, master_cf):
        raise NotOurMaster(f"{pid_file} names process {pid}, which is not a master of {master_cf}")
    return pid

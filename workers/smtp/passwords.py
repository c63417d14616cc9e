"""The SMTP AUTH passwords of relay hosts: main.cf smtp_sasl_password_maps (Postfix's format).

The file is plain text, read by the smtp service itself (no compiled map: it is a few lines,
re-read when its inode, size or modification time change, so an edit takes effect at the
next delivery without a build step; `mailctl sasl-passwords check` checks it):

    # comment                       (a line whose first non-blank character is #; blank lines)
    [smtp.example.net]:587  user:password
    [192.0.2.7]             user@example.org:pass word with spaces
    relay.example.net       user:password

The key is a nexthop (workers/smtp/mx.py), compared without regard to case; the value is
`user:password`, split at the first `:` (the password may hold `:` and inner blanks; the
user may not be empty). keys_for(nexthop) is the order Postfix looks it up in: the nexthop
as qmgr sends it (`[host]:port`, `domain:port`), without the port (`[host]`, `domain`),
then the bare host (`host`).
parse_passwords(text, name) -> (entries, warnings): PasswordFileError("name:line: reason")
    for a line without a value, a value without `user:`, a line that starts with white
    space (Postfix's continuation lines are not supported) or a bad key; a duplicate key is
    a warning and the first line wins.
check_file(path, owners=()) -> (entries, warnings): opens the file (no symbolic link
    followed) and refuses it (PasswordFileError) unless only its owner and group may read
    it (no permission for others) and it belongs to root, to this process's user (the smtp
    service runs as mail_owner) or to one of the uids owners (mailctl adds mail_owner's).
PasswordMap(path, log).lookup(nexthop) -> (user, password) | None. MapUnusable(reason) when
    the file cannot be used: missing, unreadable, permissions refused, or wrong with no
    earlier good version (a file that turns bad keeps the last good entries in use). Each
    new problem is logged once (error level), with the file name and the reason.
"""
from __future__ import annotations

import os
import stat

from master.params import parse_hostport
from workers.smtp.mx import Nexthop, parse_nexthop


class PasswordFileError(Exception):
    """The password file cannot be used; str() says where and why."""


class FileRefused(PasswordFileError):
    """The file's owner or permissions do not allow passwords in it."""


class MapUnusable(Exception):
    """No lookup possible: deliveries that may need a password are deferred."""


def keys_for(nexthop: Nexthop) -> list[str]:
    bare = nexthop.host
    host = bare if nexthop.mx else f"[{bare}]"
    keys = [f"{host}:{nexthop.port}", host, bare]
    return list(dict.fromkeys(keys))


def _key(text: str) -> str:
    """The key as keys_for() writes it; ValueError when it is no nexthop."""
    nexthop = parse_nexthop(text)
    host = nexthop.host if nexthop.mx else f"[{nexthop.host}]"
    _host, port = parse_hostport(text)
    return f"{host}:{port}" if port else host


def parse_passwords(text: str, name: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    entries: dict[str, tuple[str, str]] = {}
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            raise PasswordFileError(f"{where}: a line may not start with white space")
        key_text, *rest = line.split(None, 1)
        value = rest[0].strip() if rest else ""
        if not value:
            raise PasswordFileError(f"{where}: no user:password after the key")
        user, colon, password = value.partition(":")
        if not colon or not user:
            raise PasswordFileError(f"{where}: the value must be user:password")
        try:
            key = _key(key_text)
        except ValueError as e:
            raise PasswordFileError(f"{where}: {e}") from None
        if key in entries:
            warnings.append(f"{where}: duplicate entry for {key} ignored (the first one is used)")
            continue
        entries[key] = (user, password)
    return entries, warnings


def _refusal(st: os.stat_result, owners: tuple[int, ...]) -> str:
    """Why a file of this stat may not hold passwords, or ""."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_mode & 0o007:
        return (f"others may access it (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"make it readable only by root and mail_owner (chmod 0640 or 0600)")
    if st.st_uid not in (0, os.geteuid(), *owners):
        return f"it belongs to uid {st.st_uid}, neither root nor mail_owner"
    return ""


def _identity(st: os.stat_result) -> tuple:
    """What changes when the file is replaced, edited, chmod-ed or chown-ed."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read(path: str, owners: tuple[int, ...] = ()) -> tuple[os.stat_result, str]:
    """The file's stat and text; OSError, or PasswordFileError for a file refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        refusal = _refusal(st, owners)
        if refusal:
            raise FileRefused(f"{path}: refused: {refusal}")
        return st, file.read().decode("utf-8", "replace")


def check_file(path: str, owners: tuple[int, ...] = ()) -> tuple[dict[str, tuple[str, str]], list[str]]:
    try:
        _st, text = _read(path, owners)
    except OSError as e:
        raise PasswordFileError(f"{path}: {e.strerror or e}") from None
    return parse_passwords(text, path)


class PasswordMap:
    def __init__(self, path: str, log):
        self.path = path
        self.log = log
        self._seen: tuple | None = None          # _identity() of the file the entries come from
        self._entries: dict[str, tuple[str, str]] | None = None
        self._problem = ""                       # the last reason logged

    def _unusable(self, reason: str) -> MapUnusable:
        self._entries = self._seen = None
        self._complain(reason)
        return MapUnusable(f"cannot use smtp_sasl_password_maps: {reason}")

    def _complain(self, reason: str) -> None:
        if reason != self._problem:
            self._problem = reason
            self.log.error(f"smtp_sasl_password_maps {reason}")

    def _refresh(self) -> None:
        try:
            if _identity(os.stat(self.path)) == self._seen:
                return
            st, text = _read(self.path)
        except OSError as e:
            raise self._unusable(f"{self.path}: {e.strerror or e}") from None
        except FileRefused as e:
            raise self._unusable(str(e)) from None
        try:
            entries, warnings = parse_passwords(text, self.path)
        except PasswordFileError as e:
            if self._entries is None:
                raise self._unusable(str(e)) from None
            self._complain(f"{e} (the entries read before stay in use)")
            self._seen = _identity(st)
            return
        for warning in warnings:
            self.log.error(f"smtp_sasl_password_maps warning: {warning}")
        self._entries = entries
        self._seen = _identity(st)
        self._problem = ""

    def lookup(self, nexthop: Nexthop) -> tuple[str, str] | None:
        self._refresh()
        for key in keys_for(nexthop):
            found = self._entries.get(key)
            if found is not None:
                return found
        return None

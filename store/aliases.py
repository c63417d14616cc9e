"""The aliases file and its compiled LMDB map (newaliases / postalias / mailctl aliases build).

Source syntax (Postfix's aliases(5)):
    # comment
    name: target, target, ...
        continued on lines that start with whitespace
    postmaster: root
    bob: bob, bob@elsewhere.example, "|/usr/bin/vacation bob", /var/archive/bob.mbox
    staff: :include:/etc/mail/staff.list
Targets: an address or local name, `|command`, `/file`, `:include:path` (read at build
time: the included file's targets, comma or line separated, `#` comments; a relative path
is taken from the aliases file's folder; includes nest at most MAX_INCLUDE_DEPTH deep).
Quotes keep commas and spaces inside one target. Names are matched case-insensitively.
A name defined twice: the first wins and the build reports a warning (as Postfix).

build(source, target=None) compiles source into target (default `<source>.lmdb`): a new
single-file LMDB is written beside it, fsynced and renamed over the old one, so readers
see either the old or the new map, never a mix; a file with an error changes nothing.
AliasMap(map_path(alias_maps)).lookup(name) -> [targets] | None reads a compiled map and
reopens it when a build replaced it (a process has one: store.handle.Store.aliases).
Recursive expansion (loops, depth) is store/resolve.py's.
Diagnostics: AliasError("file:line: reason").
"""
from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field

import lmdb

from store.fsio import StorageError, fsync_dir

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_LINE = 64 * 1024                 # one logical entry, continuation lines joined
MAX_TARGETS = 10_000                 # per name
MAX_INCLUDE_DEPTH = 5
MAX_NAME_BYTES = 255                 # LMDB keys stop at 511 bytes; local parts at 64 (RFC 5321)
NAME = re.compile(r'[^\s:,"@|/][^\s:,"@]*')
META_KEY = b"\0meta"


class AliasError(Exception):
    """The aliases file has an error; str() is `file:line: reason`."""


@dataclass
class BuildReport:
    target: str
    count: int
    warnings: list[str] = field(default_factory=list)


def map_path(source: str) -> str:
    return source + ".lmdb"


# ---------------------------------------------------------------- parsing

def _read_text(path: str, where: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise AliasError(f"{where}: {path} is larger than {MAX_FILE_BYTES} bytes")
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise AliasError(f"{where}: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AliasError(f"{where}: {path} is not UTF-8 text") from None


def _logical_lines(path: str, text: str) -> list[tuple[int, str]]:
    """(first line number, joined text) per entry; comments and blank lines dropped."""
    entries: list[list] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not entries:
                raise AliasError(f"{path}:{number}: continuation line without an alias before it")
            entries[-1][1] += " " + line.strip()
        else:
            entries.append([number, line.strip()])
        if len(entries[-1][1]) > MAX_LINE:
            raise AliasError(f"{path}:{entries[-1][0]}: entry longer than {MAX_LINE} characters")
    return [(n, t) for n, t in entries]


def split_targets(text: str, where: str) -> list[str]:
    """Comma-separated targets; double quotes protect commas; quotes are removed."""
    targets, current, quoted = [], [], False
    for ch in text + ",":
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            target = "".join(current).strip()
            if not target:
                raise AliasError(f"{where}: empty target (two commas, or a comma at the end)")
            targets.append(target)
            current = []
        else:
            current.append(ch)
    if quoted:
        raise AliasError(f"{where}: unbalanced quote")
    return targets


def _check_target(target: str, where: str) -> None:
    if target.startswith("|"):
        if not target[1:].strip():
            raise AliasError(f"{where}: empty command in {target!r}")
    elif target.startswith("/"):
        if target.endswith("/"):
            raise AliasError(f"{where}: {target!r} is a folder, not a file")
    elif any(ch.isspace() for ch in target) or target.count("@") > 1 or target.startswith("@"):
        raise AliasError(f"{where}: bad address {target!r}")


def _resolve_targets(raw: list[str], base_dir: str, where: str, depth: int) -> list[str]:
    out: list[str] = []
    for target in raw:
        if target.lower().startswith(":include:"):
            out.extend(_read_include(target[len(":include:"):].strip(), base_dir, where, depth))
            continue
        _check_target(target, where)
        out.append(target)
    if len(out) > MAX_TARGETS:
        raise AliasError(f"{where}: more than {MAX_TARGETS} targets")
    return out


def _read_include(path: str, base_dir: str, where: str, depth: int) -> list[str]:
    if depth >= MAX_INCLUDE_DEPTH:
        raise AliasError(f"{where}: :include: nested more than {MAX_INCLUDE_DEPTH} deep")
    if not path:
        raise AliasError(f"{where}: :include: without a file name")
    path = os.path.join(base_dir, path)
    out: list[str] = []
    for number, line in enumerate(_read_text(path, where).splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            inner = f"{path}:{number}"
            out.extend(_resolve_targets(split_targets(line.strip(), inner), os.path.dirname(path), inner, depth + 1))
    return out


def parse(source: str) -> tuple[dict[str, list[str]], list[str]]:
    """The aliases of source as {name: [targets]}, and warnings; AliasError on any error."""
    entries: dict[str, list[str]] = {}
    warnings: list[str] = []
    base_dir = os.path.dirname(os.path.abspath(source))
    for number, text in _logical_lines(source, _read_text(source, f"{source}:0")):
        where = f"{source}:{number}"
        name, sep, rest = text.partition(":")
        name = name.strip().strip('"').lower()
        if not sep or not NAME.fullmatch(name):
            raise AliasError(f"{where}: expected `name: target, ...`, got {text[:60]!r}")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise AliasError(f"{where}: alias name longer than {MAX_NAME_BYTES} bytes")
        targets = _resolve_targets(split_targets(rest, where), base_dir, where, 0)
        if name in entries:
            warnings.append(f"{where}: duplicate alias {name!r} ignored (the first one counts)")
            continue
        entries[name] = targets
    return entries, warnings


# ---------------------------------------------------------------- building

def build(source: str, target: str | None = None) -> BuildReport:
    """Compile source into target atomically; the previous map stays on any error."""
    source = os.path.abspath(source)
    target = os.path.abspath(target or map_path(source))
    entries, warnings = parse(source)
    directory = os.path.dirname(target)
    draft = os.path.join(directory, f".{os.path.basename(target)}.new-{secrets.token_hex(4)}")
    payload = {name.encode(): json.dumps(targets, ensure_ascii=False).encode() for name, targets in entries.items()}
    size = sum(len(k) + len(v) + 64 for k, v in payload.items())
    try:
        env = lmdb.open(draft, subdir=False, lock=False, map_size=max(1 << 20, size * 4 + (1 << 20)))
        try:
            with env.begin(write=True) as txn:
                for key in sorted(payload):
                    txn.put(key, payload[key])
                txn.put(META_KEY, json.dumps({"source": source, "count": len(entries)}).encode())
            env.sync(True)
        finally:
            env.close()
        os.chmod(draft, 0o644)
        os.rename(draft, target)
        fsync_dir(directory)
    except (OSError, lmdb.Error) as e:
        for leftover in (draft, draft + "-lock"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        raise StorageError(f"cannot write {target}: {e}", getattr(e, "errno", None)) from None
    return BuildReport(target, len(entries), warnings)


# ---------------------------------------------------------------- reading

class AliasMap:
    """A compiled map, reopened when a build has replaced the file."""

    def __init__(self, path: str):
        self.path = path
        self._env: lmdb.Environment | None = None
        self._identity: tuple[int, int] | None = None

    def _current(self) -> lmdb.Environment | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            return None
        identity = (st.st_ino, st.st_mtime_ns)
        if identity != self._identity:
            self.close()
            # The file is never written after the rename that published it, so no lock is needed.
            self._env = lmdb.open(self.path, subdir=False, readonly=True, lock=False)
            self._identity = identity
        return self._env

    def lookup(self, name: str) -> list[str] | None:
        env = self._current()
        if env is None:
            return None
        key = name.strip().lower().encode()
        if not key or len(key) > MAX_NAME_BYTES:
            return None                  # no alias can have it (and LMDB would refuse the key)
        with env.begin() as txn:
            raw = txn.get(key)
        return json.loads(raw) if raw is not None else None

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._identity = None, None


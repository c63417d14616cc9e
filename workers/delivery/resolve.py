"""Recipient resolution: one envelope address -> the deliveries it stands for.

Resolver(local_domains, luser_relay, directory).resolve(address) returns a
list of targets, duplicates removed, in order:
    Mailbox(user)            store into the user's INBOX
    Pipe(command, alias)     `|command` from an alias
    File(path, alias)        `/file` from an alias
    Remote(address)          a domain that is not ours
    Failed(status, reason)   a permanent failure (becomes a bounce)
Rules, in Postfix's order: an address of any `mydestination` domain (or with no domain) is
local and its local part is looked up case-insensitively, first in the aliases (recursive),
then in the users: a disabled user fails (5.2.1), forward addresses replace the mailbox
unless keep_copy, an unknown name goes to `luser_relay` or fails (5.1.1). An alias that
names itself means the user of that name (`bob: bob, carol`). A name met again further down
its own expansion (`a: b`, `b: a`, or forwards that point back) is a loop and fails (5.4.6),
as does expansion deeper than MAX_DEPTH or wider than MAX_TARGETS.
`directory` answers user(name) -> UserEntry | None and alias(name) -> list[str] | None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

MAX_DEPTH = 20
MAX_TARGETS = 1000


@dataclass(frozen=True)
class Mailbox:
    user: str


@dataclass(frozen=True)
class Pipe:
    command: str
    alias: str


@dataclass(frozen=True)
class File:
    path: str
    alias: str


@dataclass(frozen=True)
class Remote:
    address: str


@dataclass(frozen=True)
class Failed:
    status: str
    reason: str


Target = Union[Mailbox, Pipe, File, Remote, Failed]


@dataclass(frozen=True)
class UserEntry:
    enabled: bool = True
    forward: tuple[str, ...] = ()
    keep_copy: bool = False


class Directory(Protocol):
    def user(self, name: str) -> UserEntry | None: ...
    def alias(self, name: str) -> list[str] | None: ...


class Resolver:
    def __init__(self, local_domains: list[str], luser_relay: str, directory: Directory):
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self.luser_relay = luser_relay.strip()
        self.directory = directory

    def is_local(self, address: str) -> bool:
        return self._local_part(address) is not None

    def _local_part(self, address: str) -> str | None:
        """The lower-cased local part when the address is ours, else None."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at:
            return domain.lower()
        if domain.lower().rstrip(".") in self.local_domains:
            return local.lower()
        return None

    def resolve(self, address: str) -> list[Target]:
        found: list[Target] = []
        self._expand(address, (), found, use_relay=True)
        unique = list(dict.fromkeys(found))
        if len(unique) > MAX_TARGETS:
            return [Failed("5.3.4", f"alias expansion gives more than {MAX_TARGETS} recipients")]
        return unique

    # The chain holds (name, stage) hops, stage "alias" or "user", from the envelope address down.
    def _expand(self, address: str, chain: tuple[tuple[str, str], ...], out: list[Target],
                use_relay: bool) -> None:
        if len(out) > MAX_TARGETS:
            return
        name = self._local_part(address)
        if name is None:
            out.append(Remote(address.strip().strip("<>")))
        elif not name:
            out.append(Failed("5.1.3", "empty local part"))
        elif chain and chain[-1] == (name, "alias"):     # `bob: bob, carol`: the user bob
            self._user(name, chain, out, use_relay)
        elif chain and chain[-1] == (name, "user"):      # a user forwarding to themself
            out.append(Mailbox(name))
        elif any(hop == name for hop, _ in chain):
            path = " -> ".join([hop for hop, _ in chain] + [name])
            out.append(Failed("5.4.6", f"mail forwarding loop ({path})"))
        elif len(chain) >= MAX_DEPTH:
            out.append(Failed("5.4.6", f"alias expansion deeper than {MAX_DEPTH} levels"))
        else:
            self._alias(name, chain, out, use_relay)

    def _alias(self, name: str, chain: tuple[tuple[str, str], ...], out: list[Target], use_relay: bool) -> None:
        members = self.directory.alias(name)
        if members is None:
            self._user(name, chain, out, use_relay)
            return
        here = chain + ((name, "alias"),)
        for member in members:
            member = member.strip()
            if member.startswith("|"):
                out.append(Pipe(member[1:].strip(), name))
            elif member.startswith("/"):
                out.append(File(member, name))
            elif member:
                self._expand(member, here, out, use_relay)

    def _user(self, name: str, chain: tuple[tuple[str, str], ...], out: list[Target], use_relay: bool) -> None:
        here = chain + ((name, "user"),)
        entry = self.directory.user(name)
        if entry is None:
            if use_relay and self.luser_relay:
                self._expand(self.luser_relay, here, out, use_relay=False)
            else:
                out.append(Failed("5.1.1", "user unknown"))
        elif not entry.enabled:
            out.append(Failed("5.2.1", "mailbox disabled"))
        elif entry.forward:
            for target in entry.forward:
                self._expand(target, here, out, use_relay)
            if entry.keep_copy:
                out.append(Mailbox(name))
        else:
            out.append(Mailbox(name))

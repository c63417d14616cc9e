"""Recipient resolution: one envelope address -> the deliveries it stands for.

The one resolver of the system: qmgr delivers what resolve() returns, and smtpd asks
verify() at RCPT, so what smtpd accepts is what qmgr can deliver.

Resolver(directory, luser_relay) over a store.directory.Directory:
  .resolve(address) -> [Target]      duplicates removed, in order:
      Mailbox(user)            store into the user's INBOX
      Pipe(command, alias)     `|command` from an alias
      File(path, alias)        `/file` from an alias
      Remote(address)          a domain that is not ours
      Failed(status, reason)   a permanent failure (becomes a bounce)
  .verify(address, size=0) -> Failed | None   None when some target would take the message
      now (a mailbox with room for size bytes, a command, a file, a remote address); else
      the failure its delivery would meet, a temporary one (4.2.2) before a permanent one
Rules, in Postfix's order: an address of a local domain (or with no domain) is local and
its local part is looked up case-insensitively, first in the aliases (recursive), then in
the users; with a recipient_delimiter, a name that is neither (`bob+lists`) is looked up
again without its extension (`bob`). A disabled user fails (5.2.1), forward addresses
replace the mailbox unless keep_copy, an unknown name goes to `luser_relay` or fails
(5.1.1). An alias that names itself means the user of that name (`bob: bob, carol`). A
name met again further down its own expansion (`a: b`, `b: a`, or forwards that point
back) is a loop and fails (5.4.6), as does expansion deeper than MAX_DEPTH or wider than
MAX_TARGETS.
Diagnostics: the Directory's StorageError (a temporary failure for the caller).
"""
from __future__ import annotations

from dataclasses import dataclass

from store.directory import Directory, Failed

MAX_DEPTH = 20
MAX_TARGETS = 1000

__all__ = ["Resolver", "Target", "Mailbox", "Pipe", "File", "Remote", "Failed", "MAX_DEPTH", "MAX_TARGETS"]


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


Target = Mailbox | Pipe | File | Remote | Failed
Chain = tuple[tuple[str, str], ...]     # (name, "alias" | "user") hops from the envelope address down


class Resolver:
    def __init__(self, directory: Directory, luser_relay: str):
        self.directory = directory
        self.luser_relay = luser_relay.strip()

    def resolve(self, address: str) -> list[Target]:
        found: list[Target] = []
        self._expand(address, (), found, use_relay=True)
        unique = list(dict.fromkeys(found))
        if len(unique) > MAX_TARGETS:
            return [Failed("5.3.4", f"alias expansion gives more than {MAX_TARGETS} recipients")]
        return unique

    def verify(self, address: str, size: int = 0) -> Failed | None:
        failures: list[Failed] = []
        for target in self.resolve(address):
            if isinstance(target, Failed):
                failure = target
            elif isinstance(target, Mailbox):
                failure = self.directory.quota_check(target.user, size)
            else:
                failure = None
            if failure is None:
                return None
            failures.append(failure)
        return min(failures, key=lambda f: f.permanent, default=None)

    def _expand(self, address: str, chain: Chain, out: list[Target], use_relay: bool) -> None:
        if len(out) > MAX_TARGETS:
            return
        name = self.directory.domains.local_part(address)
        if name is None:
            out.append(Remote(address.strip().strip("<>")))
        elif not name:
            out.append(Failed("5.1.3", "empty local part"))
        else:
            self._local(name, chain, out, use_relay)

    def _local(self, name: str, chain: Chain, out: list[Target], use_relay: bool) -> None:
        if chain and chain[-1] == (name, "alias"):     # `bob: bob, carol`: the user bob
            self._user(name, chain, out, use_relay)
        elif chain and chain[-1] == (name, "user"):    # a user forwarding to themself
            out.append(Mailbox(name))
        elif any(hop == name for hop, _ in chain):
            path = " -> ".join([hop for hop, _ in chain] + [name])
            out.append(Failed("5.4.6", f"mail forwarding loop ({path})"))
        elif len(chain) >= MAX_DEPTH:
            out.append(Failed("5.4.6", f"alias expansion deeper than {MAX_DEPTH} levels"))
        else:
            self._alias(name, chain, out, use_relay)

    def _alias(self, name: str, chain: Chain, out: list[Target], use_relay: bool) -> None:
        members = self.directory.alias(name)
        if members is None:
            base = self.directory.unextended(name)
            if base is not None and self.directory.user(name) is None:
                self._local(base, chain, out, use_relay)     # bob+lists: the alias or user bob
            else:
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

    def _user(self, name: str, chain: Chain, out: list[Target], use_relay: bool) -> None:
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

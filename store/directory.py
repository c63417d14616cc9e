"""Who receives mail here: local domains, users, aliases and quotas, each answered once.

smtpd (at RCPT, through store/resolve.py in verify mode) and qmgr (at delivery) ask the
same Directory, so they cannot disagree about which domains are ours, who exists, or whose
mailbox is full.

  LocalDomains(params)                  mydestination: the local and virtual domains (a user
                                        `bob` receives `bob@` each of them)
    .local_part(address) -> str | None  the lower-cased local part of an address of ours (a
                                        bare name is ours); None for any other domain
    .is_local(address) -> bool
  Directory(params, users, aliases, mail)   built by store.handle.Store
    .domains                            its LocalDomains
    .user(name) -> Account | None       enabled, forward, keep_copy and the quota in bytes
                                        (the user's own, else default_quota; 0 = none)
    .alias(name) -> [targets] | None
    .unextended(name) -> str | None     "bob" for "bob+lists" with recipient_delimiter "+"
                                        (each character of the setting is a delimiter)
    .quota(name) -> int
    .quota_check(name, size, ahead=0) -> Failed | None   the quota rule, for RCPT (the
                                        declared SIZE) and delivery (the message) alike:
                                        5.2.2 when the message alone is larger than the
                                        quota, 4.2.2 when the mailbox has no room left for
                                        it besides `ahead` bytes on their way in (the
                                        earlier messages of a delivery batch)
Failed(status, reason): a refusal or a bounce with its RFC 3463 status (.permanent: 5.x.x).
Every answer reads the databases anew (LMDB readers see the newest data), so `mailctl user
set` and `newaliases` apply from the next message.
Diagnostics: StorageError when the user database or the alias map cannot be read (and
the index's own StorageError for the usage).
"""
from __future__ import annotations

from dataclasses import dataclass

import lmdb

from store.aliases import AliasMap
from store.fsio import StorageError
from store.mailstore import MailStore
from store.users import UserDB


@dataclass(frozen=True)
class Failed:
    status: str
    reason: str

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")


@dataclass(frozen=True)
class Account:
    name: str
    enabled: bool = True
    forward: tuple[str, ...] = ()
    keep_copy: bool = False
    quota: int = 0                       # bytes, 0 = unlimited


class LocalDomains:
    def __init__(self, params):
        self.names = frozenset(d.lower().rstrip(".") for d in params.mydestination)

    def local_part(self, address: str) -> str | None:
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at:
            return domain.lower()
        return local.lower() if domain.lower().rstrip(".") in self.names else None

    def is_local(self, address: str) -> bool:
        return self.local_part(address) is not None


class Directory:
    def __init__(self, params, users: UserDB, aliases: AliasMap, mail: MailStore):
        self.domains = LocalDomains(params)
        self.default_quota = params.default_quota
        self.delimiters = params.recipient_delimiter
        self.users = users
        self.aliases = aliases
        self.mail = mail

    def user(self, name: str) -> Account | None:
        try:
            record = self.users.get(name)
        except lmdb.Error as e:
            raise StorageError(f"user database: {e}") from None
        if record is None:
            return None
        quota = self.default_quota if record.quota is None else record.quota
        return Account(record.name, record.enabled, tuple(record.forward), record.keep_copy, quota)

    def alias(self, name: str) -> list[str] | None:
        try:
            return self.aliases.lookup(name)
        except lmdb.Error as e:
            raise StorageError(f"alias map: {e}") from None

    def unextended(self, name: str) -> str | None:
        cut = next((i for i, ch in enumerate(name) if ch in self.delimiters), 0)
        return name[:cut] or None

    def quota(self, name: str) -> int:
        account = self.user(name)
        return self.default_quota if account is None else account.quota

    def quota_check(self, name: str, size: int, ahead: int = 0) -> Failed | None:
        limit = self.quota(name)
        if not limit:
            return None
        if size > limit:
            return Failed("5.2.2", f"message larger than the mailbox quota ({limit} bytes)")
        if self.mail.usage(name) + ahead + max(size, 1) > limit:   # a message has at least one byte
            return Failed("4.2.2", f"mailbox full (quota {limit} bytes exceeded)")
        return None

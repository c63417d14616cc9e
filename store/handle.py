"""A process's one handle on the store: queue, mailboxes, users, aliases and who receives mail.

    store = Store.open(params)   once per process: the smtpd and pop3d backends and qmgr when
                                 they start, mailctl once per command
    store.queue       store.queue.Queue (queue_directory)
    store.mail        store.mailstore.MailStore (mail_store_directory and the LMDB index)
    store.users       store.users.UserDB (the user database, $data_directory/users)
    store.aliases     store.aliases.AliasMap (the map compiled from alias_maps)
    store.directory   store.directory.Directory: local domains, users, aliases, quotas
    store.resolver    store.resolve.Resolver: an address -> its deliveries; verify() for RCPT
    store.close()     closes what was opened (also at the end of a `with` block)
Each part opens on first use, so a command that needs only the queue opens no LMDB env.
LMDB allows one env per path and process: the Store is where a process keeps its envs, and
nothing else in the process opens them (there are no module-level caches).
"""
from __future__ import annotations

from functools import cached_property

from store.aliases import AliasMap, map_path
from store.directory import Directory
from store.mailstore import MailStore
from store.queue import Queue
from store.resolve import Resolver
from store.users import UserDB

_OWNS_ENVS = ("mail", "users", "aliases")


class Store:
    def __init__(self, params):
        self.params = params

    @classmethod
    def open(cls, params) -> "Store":
        return cls(params)

    @cached_property
    def queue(self) -> Queue:
        return Queue.from_params(self.params)

    @cached_property
    def mail(self) -> MailStore:
        return MailStore(self.params.mail_store_directory, self.params.index_directory)

    @cached_property
    def users(self) -> UserDB:
        return UserDB.from_params(self.params)

    @cached_property
    def aliases(self) -> AliasMap:
        return AliasMap(map_path(self.params.alias_maps))

    @cached_property
    def directory(self) -> Directory:
        return Directory(self.params, self.users, self.aliases, self.mail)

    @cached_property
    def resolver(self) -> Resolver:
        return Resolver(self.directory, self.params.luser_relay)

    def close(self) -> None:
        opened = {name: self.__dict__.pop(name) for name in list(self.__dict__) if name != "params"}
        for name in _OWNS_ENVS:
            if name in opened:
                opened[name].close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


"""Successful password verifications, remembered so that a client that logs in again and
again (a mail client polling every minute) does not pay an scrypt every time.

VerifiedCache(ttl, size): key(user, protocol, password) -> bytes; hit(key, version) -> bool;
remember(key, version); enabled (ttl > 0 and size > 0: main.cf auth_cache_ttl and
auth_cache_size).
The key is HMAC-SHA256 under a random key made per process, over the canonical user name,
the protocol that asked and the password: no password is kept, a hit needs the same user,
protocol and password (a login allowed for SMTP says nothing about POP3), and
a dump of the memory does not give an offline guesser a fast hash to attack without the key
(which is in the same memory, hence the ttl). `version` is the user's record fingerprint
(store/users.py UserDB.fingerprint): any change to the account (password, enabled,
protocols, deletion) changes it, and a hit needs the version the entry was made with, so a
`mailctl user` change takes effect at the next login. Entries expire ttl seconds after they
were made (a hit does not extend them); past size entries, the least recently used goes.
Only successes the account may use are ever remembered. Not thread-safe: the event loop thread owns it.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from typing import Callable


class VerifiedCache:
    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._hmac_key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()   # key -> (version, expiry)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, user: str, protocol: str, password: str) -> bytes:
        material = b"\0".join((user.encode("utf-8"), protocol.encode("utf-8"),
                               password.encode("utf-8", "surrogatepass")))
        return hmac.new(self._hmac_key, material, hashlib.sha256).digest()

    def hit(self, key: bytes, version: bytes | None) -> bool:
        """Was this key verified, still fresh, against the same version of the account?"""
        entry = self._entries.get(key)
        if entry is None:
            return False
        made_for, expiry = entry
        if version is None or not hmac.compare_digest(made_for, version) or self._clock() >= expiry:
            del self._entries[key]
            return False
        self._entries.move_to_end(key)
        return True

    def remember(self, key: bytes, version: bytes) -> None:
        if not self.enabled:
            return
        self._entries[key] = (version, self._clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

"""The verifier: where every credential check of a worker process is answered, off the event loop.

A Verifier has one method, `await verify(check, protocol)`, for the checks of
workers/_authchecks.py asked by a login of protocol (smtp, pop, imap), and raises
AuthUnavailable when it cannot answer now; the protocols then give their temporary failure
(SMTP `454 4.7.0`, POP3 `-ERR [SYS/TEMP]`, IMAP `NO [UNAVAILABLE]`). A Verdict that names a
user also says whether that user may log in with protocol (Verdict.refused,
UserDB.login_refusal: disabled, or the protocol not among the user's), so that the
per-user allowances are decided where the user database is read.
LocalVerifier answers in this process: in the auth service (workers/auth), or in each
protocol process when master.cf has no auth service; RemoteVerifier
(workers/_authremote.py) asks the auth service.
    LocalVerifier(users, threads, queue_limit, cache, log) / LocalVerifier.from_params(params, users, log)
  - a password whose (user, protocol, password) was verified and allowed before, against the
    same version of the account, is answered at once from the cache (workers/_authcache.py; log line
    `auth cache hit: user=NAME` at log_level high);
  - anything else runs check.answer(users) in one of `threads` threads (auth_verify_threads):
    scrypt takes a fifth of a second and releases the GIL, so the event loop keeps serving
    every other session meanwhile;
  - at most `queue_limit` checks (auth_verify_queue_limit) wait for a thread; one more is
    refused with AuthUnavailable at once instead of queueing behind a flood of guesses.
Diagnostics: AuthUnavailable("...") says why, for the protocol's log line; a user database
that cannot be read is AuthUnavailable too.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import lmdb

from store.fsio import StorageError
from store.users import UserDB
from workers._authcache import VerifiedCache
from workers._authchecks import PasswordCheck, Verdict


class AuthUnavailable(Exception):
    """The check cannot be answered now; the client should try again later."""


class Verifier(Protocol):
    async def verify(self, check, protocol: str): ...


class LocalVerifier:
    def __init__(self, users: UserDB, threads: int, queue_limit: int, cache: VerifiedCache, log):
        self.users = users
        self.cache = cache
        self.log = log
        self._capacity = threads + queue_limit
        self._slots = threading.BoundedSemaphore(self._capacity)   # running + waiting checks
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="auth-verify")

    @classmethod
    def from_params(cls, params, users: UserDB, log) -> "LocalVerifier":
        cache = VerifiedCache(params.auth_cache_ttl, params.auth_cache_size)
        return cls(users, params.auth_verify_threads, params.auth_verify_queue_limit, cache, log)

    async def verify(self, check, protocol: str):
        user = self._cacheable(check)
        cache_key = self.cache.key(user, protocol, check.password) if user else None
        if cache_key is not None and self.cache.hit(cache_key, self._fingerprint(user)):
            self.log.debug(f"auth cache hit: user={user} protocol={protocol}")
            return Verdict(user)
        if not self._slots.acquire(blocking=False):
            raise AuthUnavailable(f"{self._capacity} credential checks already running or waiting")
        job = self._threads.submit(self._answer, check, protocol, cache_key is not None)
        job.add_done_callback(lambda _: self._slots.release())   # also when cancelled before it ran
        answer, version = await asyncio.wrap_future(job)
        if cache_key is not None and answer.user is not None and not answer.refused and version is not None:
            self.cache.remember(cache_key, version)
        return answer

    def _cacheable(self, check) -> str | None:
        """The user of a check whose success may be cached: passwords only, as every other
        check answers a fresh random challenge."""
        if not (self.cache.enabled and isinstance(check, PasswordCheck)):
            return None
        return self.users.canonical(check.login)

    def _fingerprint(self, user: str) -> bytes | None:
        try:
            return self.users.fingerprint(user)
        except (lmdb.Error, StorageError) as e:          # StorageError: a damaged database
            raise AuthUnavailable(f"user database: {e}") from None

    def _answer(self, check, protocol: str, with_version: bool):
        """In a pool thread. The version is read before the check: should the account change
        in between, the entry remembered is for the older version and simply never hits."""
        try:
            version = self.users.fingerprint(check.login) if with_version else None
            answer = check.answer(self.users)
            if isinstance(answer, Verdict) and answer.user is not None:
                answer = dataclasses.replace(answer, refused=self.users.login_refusal(answer.user, protocol))
            return answer, version
        except (lmdb.Error, StorageError) as e:          # StorageError: a damaged database
            raise AuthUnavailable(f"user database: {e}") from None

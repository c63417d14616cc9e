"""The verifier (workers/_authpool.py) and its cache of successful logins (workers/_authcache.py).

The checks run against a real user database in tmp_path (scrypt is the real KDF); checks that
must block are fakes that wait for a threading.Event, so the pool's bounds are tested without
timing.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import lmdb
import pytest

from store import passwords
from store.users import User, UserDB
from workers._authcache import VerifiedCache
from workers._authchecks import PasswordCheck, Verdict
from workers._authpool import AuthUnavailable, LocalVerifier


class FakeLog:
    def __init__(self):
        self.lines: list[str] = []

    def debug(self, text):
        self.lines.append(text)

    def hits(self) -> int:
        return sum(line.startswith("auth cache hit:") for line in self.lines)


@pytest.fixture
def users(tmp_path):
    db = UserDB(str(tmp_path / "users"), str(tmp_path / "secret.key"), ["example.test"])
    db.add(User("bob"), "s3cret")
    yield db
    db.close()


def verifier(users, threads=1, queue_limit=4, ttl=3600.0, size=100):
    return LocalVerifier(users, threads, queue_limit, VerifiedCache(ttl, size), FakeLog())


def login(v: LocalVerifier, name: str, password: str, protocol: str = "pop") -> str | None:
    return asyncio.run(v.verify(PasswordCheck(name, password), protocol)).user


@dataclass(frozen=True)
class Blocking:
    """A check that waits until the test lets it go; records the thread that answered it."""
    release: threading.Event
    started: threading.Event = field(default_factory=threading.Event)
    ran_in: list = field(default_factory=list)

    def answer(self, users):
        self.ran_in.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(10)
        return Verdict("bob")


# ---------------------------------------------------------------- the pool

def test_checks_run_in_the_pool_threads_not_on_the_event_loop(users):
    v = verifier(users)
    check = Blocking(threading.Event())

    async def scenario():
        job = asyncio.ensure_future(v.verify(check, "smtp"))
        ticks = 0
        while not check.started.is_set():           # the loop keeps running meanwhile
            await asyncio.sleep(0.001)
        for _ in range(5):
            await asyncio.sleep(0)
            ticks += 1
        check.release.set()
        return await job, ticks

    verdict, ticks = asyncio.run(scenario())
    assert verdict.user == "bob" and ticks == 5
    assert check.ran_in[0].startswith("auth-verify") and check.ran_in[0] != threading.current_thread().name


def test_a_full_queue_refuses_at_once_and_frees_up_afterwards(users):
    v = verifier(users, threads=1, queue_limit=1)
    release = threading.Event()

    async def scenario():
        running = asyncio.ensure_future(v.verify(Blocking(release), "smtp"))
        waiting = asyncio.ensure_future(v.verify(Blocking(release), "smtp"))
        await asyncio.sleep(0.01)
        with pytest.raises(AuthUnavailable, match="2 credential checks already running or waiting"):
            await v.verify(Blocking(release), "smtp")
        release.set()
        assert [(await running).user, (await waiting).user] == ["bob", "bob"]
        return (await v.verify(PasswordCheck("bob", "s3cret"), "smtp")).user

    assert asyncio.run(scenario()) == "bob"


def test_a_cancelled_waiting_check_gives_its_place_back(users):
    """A client that goes away while its check waits must not shrink the pool for good."""
    v = verifier(users, threads=1, queue_limit=1)
    release = threading.Event()

    async def scenario():
        first = Blocking(release)
        running = asyncio.ensure_future(v.verify(first, "smtp"))
        waiting = asyncio.ensure_future(v.verify(Blocking(release), "smtp"))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0.01)
        again = asyncio.ensure_future(v.verify(Blocking(release), "smtp"))   # would be refused if the slot leaked
        await asyncio.sleep(0.01)
        release.set()
        return (await running).user, (await again).user

    assert asyncio.run(scenario()) == ("bob", "bob")


def test_an_unreadable_user_database_is_a_temporary_failure(users):
    class Broken:
        def answer(self, users):
            raise lmdb.ReadersFullError("readers full")

    with pytest.raises(AuthUnavailable, match="user database"):
        asyncio.run(verifier(users).verify(Broken(), "smtp"))


def test_unknown_users_cost_one_scrypt_like_wrong_passwords(users, monkeypatch):
    calls = []
    real = passwords.verify_scrypt
    monkeypatch.setattr(passwords, "verify_scrypt", lambda form, pw: calls.append(pw) or real(form, pw))
    v = verifier(users)
    assert login(v, "nobody", "s3cret") is None
    assert login(v, "bob", "wrong") is None
    assert login(v, "bad/name", "s3cret") is None
    assert len(calls) == 3


# ---------------------------------------------------------------- the cache

def test_a_second_login_is_served_from_the_cache(users, monkeypatch):
    v = verifier(users)
    assert login(v, "bob", "s3cret") == "bob" and v.log.hits() == 0
    monkeypatch.setattr(passwords, "verify_scrypt", lambda form, pw: pytest.fail("scrypt on a cache hit"))
    assert login(v, "Bob@example.test", "s3cret") == "bob"      # the same user, another login name
    assert v.log.lines == ["auth cache hit: user=bob protocol=pop"]


def test_wrong_passwords_and_failures_are_never_served_from_the_cache(users):
    v = verifier(users)
    assert login(v, "bob", "s3cret") == "bob"
    assert login(v, "bob", "s3cret ") is None
    assert login(v, "bob", "wrong") is None and login(v, "bob", "wrong") is None
    assert login(v, "nobody", "s3cret") is None
    assert v.log.hits() == 0 and len(v.cache) == 1


@pytest.mark.parametrize("change", ["password", "disable", "protocols", "delete"])
def test_any_change_to_the_account_invalidates_its_entries(users, change):
    v = verifier(users)
    assert login(v, "bob", "s3cret") == "bob"
    account = users.get("bob")
    if change == "password":
        users.set_password("bob", "n3w")
    elif change == "disable":
        account.enabled = False
        users.update(account)
    elif change == "protocols":
        account.protocols = ["imap"]
        users.update(account)
    else:
        users.delete("bob")
    expected = {"password": None, "disable": "bob", "protocols": "bob", "delete": None}[change]
    assert login(v, "bob", "s3cret") == expected      # verified again (scrypt), not a hit
    assert v.log.hits() == 0
    if change == "password":
        assert login(v, "bob", "n3w") == "bob"


def test_the_cache_holds_per_protocol_and_never_a_refused_login(users):
    v = verifier(users)
    account = users.get("bob")
    account.protocols = ["imap"]
    users.update(account)
    assert asyncio.run(v.verify(PasswordCheck("bob", "s3cret"), "smtp")) == Verdict("bob")
    assert asyncio.run(v.verify(PasswordCheck("bob", "s3cret"), "pop")) == Verdict("bob", refused="pop-not-allowed")
    assert asyncio.run(v.verify(PasswordCheck("bob", "s3cret"), "pop")).refused == "pop-not-allowed"
    assert v.log.hits() == 0 and len(v.cache) == 1               # smtp's entry only
    assert login(v, "bob", "s3cret", "smtp") == "bob" and v.log.hits() == 1


def test_disabled_cache_remembers_nothing(users):
    for ttl, size in ((0, 100), (3600, 0)):
        v = verifier(users, ttl=ttl, size=size)
        assert login(v, "bob", "s3cret") == login(v, "bob", "s3cret") == "bob"
        assert v.log.hits() == 0 and len(v.cache) == 0


def test_cache_entries_expire_after_ttl():
    now = [1000.0]
    cache = VerifiedCache(60, 10, clock=lambda: now[0])
    key = cache.key("bob", "smtp", "pw")
    cache.remember(key, b"v1")
    now[0] += 59
    assert cache.hit(key, b"v1")
    now[0] += 1
    assert not cache.hit(key, b"v1") and len(cache) == 0


def test_cache_keys_need_the_same_user_and_password_and_hold_no_password():
    cache = VerifiedCache(60, 10)
    key = cache.key("bob", "smtp", "pw")
    assert key == cache.key("bob", "smtp", "pw")
    assert len({key, cache.key("bob", "smtp", "pw2"), cache.key("alice", "smtp", "pw"), cache.key("bobp", "smtp", "w")}) == 4
    assert b"pw" not in key and key != VerifiedCache(60, 10).key("bob", "smtp", "pw")    # a key per process
    cache.remember(key, b"v1")
    assert not cache.hit(key, b"v2") and not cache.hit(key, b"v1")     # a mismatch drops the entry
    assert not cache.hit(key, None)


def test_cache_is_bounded_least_recently_used_first():
    cache = VerifiedCache(60, 2)
    a, b, c = (cache.key(name, "smtp", "pw") for name in "abc")
    cache.remember(a, b"v")
    cache.remember(b, b"v")
    assert cache.hit(a, b"v")             # a is now the most recently used
    cache.remember(c, b"v")
    assert len(cache) == 2 and cache.hit(a, b"v") and cache.hit(c, b"v") and not cache.hit(b, b"v")

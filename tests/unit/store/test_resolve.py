"""Recipient resolution (store/resolve.py) over the store's Directory: domains, aliases, loops,
forwards, luser_relay, recipient_delimiter, and verify() as smtpd asks it at RCPT."""
from __future__ import annotations

import pytest

from master.params import Params
from store.directory import Directory, Failed
from store.resolve import MAX_DEPTH, File, Mailbox, Pipe, Remote, Resolver
from store.users import User
from tests.fakes import FakeAccounts


def resolver(users=(), aliases=None, luser_relay="", extra_users=(), used=None, **settings) -> Resolver:
    table = {name: User(name) for name in users}
    table.update({user.name: user for user in extra_users})
    params = Params({"mydestination": "mail.example.test, Example.Test., virtual.example", **settings},
                    {}, "/nonexistent")
    accounts = FakeAccounts(table, aliases or {}, used or {})
    return Resolver(Directory(params, accounts, accounts, accounts), luser_relay)


def test_user_of_every_local_domain_and_bare_name():
    r = resolver(["bob"])
    for address in ("bob@example.test", "BOB@Virtual.Example", "bob@mail.example.test", "bob", "bob@example.test."):
        assert r.resolve(address) == [Mailbox("bob")]


def test_remote_domain_is_remote():
    assert resolver(["bob"]).resolve("bob@elsewhere.org") == [Remote("bob@elsewhere.org")]


def test_unknown_user_fails_5_1_1_or_goes_to_luser_relay():
    assert resolver(["bob"]).resolve("nobody@example.test") == [Failed("5.1.1", "user unknown")]
    assert resolver(["catchall"], luser_relay="catchall@example.test").resolve("x@example.test") == \
        [Mailbox("catchall")]
    # a luser_relay that is itself unknown fails instead of looping
    assert resolver([], luser_relay="ghost").resolve("x@example.test") == [Failed("5.1.1", "user unknown")]


def test_disabled_user_fails_5_2_1():
    r = resolver(extra_users=[User("dora", enabled=False)])
    assert r.resolve("dora@example.test") == [Failed("5.2.1", "mailbox disabled")]


def test_alias_multi_target_recursive_with_pipe_and_file():
    r = resolver(["bob", "carol"], {"team": ["bob", "sub"], "sub": ["carol@example.test", "|/bin/cat",
                                                                    "/tmp/archive", "x@remote.org"]})
    assert r.resolve("team@example.test") == [Mailbox("bob"), Mailbox("carol"), Pipe("/bin/cat", "sub"),
                                              File("/tmp/archive", "sub"), Remote("x@remote.org")]


def test_alias_naming_itself_is_the_user():
    r = resolver(["bob", "carol"], {"bob": ["bob", "carol"]})
    assert r.resolve("bob@example.test") == [Mailbox("bob"), Mailbox("carol")]


def test_alias_loop_fails_5_4_6():
    r = resolver(["carol"], {"a": ["b", "carol"], "b": ["a"]})
    targets = r.resolve("a@example.test")
    assert Mailbox("carol") in targets
    loops = [t for t in targets if isinstance(t, Failed)]
    assert len(loops) == 1 and loops[0].status == "5.4.6" and "a -> b -> a" in loops[0].reason


def test_deep_chain_fails():
    aliases = {f"a{i}": [f"a{i + 1}"] for i in range(MAX_DEPTH + 5)}
    [target] = resolver(["bob"], aliases).resolve("a0@example.test")
    assert isinstance(target, Failed) and target.status == "5.4.6"


def test_forward_with_and_without_kept_copy():
    users = [User("ann", forward=["bob@example.test", "ann@other.org"], keep_copy=True),
             User("ben", forward=["bob"]), User("bob")]
    r = resolver(extra_users=users)
    assert r.resolve("ann@example.test") == [Mailbox("bob"), Remote("ann@other.org"), Mailbox("ann")]
    assert r.resolve("ben@example.test") == [Mailbox("bob")]


def test_forward_to_self_keeps_mail_and_forward_loop_fails():
    users = [User("sam", forward=["sam@example.test"]), User("x", forward=["y"]), User("y", forward=["x"])]
    r = resolver(extra_users=users)
    assert r.resolve("sam@example.test") == [Mailbox("sam")]
    [target] = r.resolve("x@example.test")
    assert isinstance(target, Failed) and target.status == "5.4.6"


def test_duplicates_are_removed():
    r = resolver(["bob"], {"team": ["bob", "bob@example.test", "BOB@virtual.example"]})
    assert r.resolve("team@example.test") == [Mailbox("bob")]


@pytest.mark.parametrize("address", ["@example.test", "<@example.test>"])
def test_empty_local_part(address):
    [target] = resolver(["bob"]).resolve(address)
    assert isinstance(target, Failed)


# ---------------------------------------------------------------- recipient_delimiter

def test_extension_is_the_user_only_with_a_delimiter():
    assert resolver(["bob"]).resolve("bob+lists@example.test") == [Failed("5.1.1", "user unknown")]
    r = resolver(["bob"], recipient_delimiter="+")
    assert r.resolve("Bob+Lists@example.test") == [Mailbox("bob")]
    assert r.resolve("nobody+x@example.test") == [Failed("5.1.1", "user unknown")]
    assert r.resolve("+x@example.test") == [Failed("5.1.1", "user unknown")]


def test_the_alias_with_the_extension_comes_first_then_the_alias_without():
    r = resolver(["bob", "carol"], {"bob+lists": ["carol"], "team": ["bob", "carol"]}, recipient_delimiter="+")
    assert r.resolve("bob+lists@example.test") == [Mailbox("carol")]
    assert r.resolve("bob+other@example.test") == [Mailbox("bob")]
    assert r.resolve("team+x@example.test") == [Mailbox("bob"), Mailbox("carol")]


def test_every_character_of_the_setting_is_a_delimiter_and_a_user_of_the_full_name_wins():
    r = resolver(["bob", "mary-jane"], recipient_delimiter="+-")
    assert r.resolve("bob-x@example.test") == r.resolve("bob+x@example.test") == [Mailbox("bob")]
    assert r.resolve("mary-jane@example.test") == [Mailbox("mary-jane")]


def test_a_forward_to_the_own_extension_is_the_own_mailbox():
    r = resolver(extra_users=[User("bob", forward=["bob+copy@example.test"])], recipient_delimiter="+")
    assert r.resolve("bob@example.test") == [Mailbox("bob")]


# ---------------------------------------------------------------- verify (smtpd at RCPT)

def test_verify_accepts_what_some_target_takes():
    r = resolver(["bob"], {"team": ["ghost", "bob"], "pipe": ["|/bin/true"], "away": ["x@remote.org"]})
    for address in ("bob", "team", "pipe", "away", "x@remote.org"):
        assert r.verify(address) is None, address


def test_verify_refuses_with_the_failure_of_the_delivery():
    r = resolver(["bob"], {"loop": ["loop2"], "loop2": ["loop"], "ghosts": ["g1", "g2"]},
                 extra_users=[User("dora", enabled=False)])
    assert r.verify("nobody") == Failed("5.1.1", "user unknown")
    assert r.verify("dora") == Failed("5.2.1", "mailbox disabled")
    assert r.verify("ghosts") == Failed("5.1.1", "user unknown")
    assert r.verify("loop").status == "5.4.6"


def test_verify_checks_the_quota_with_the_declared_size_temporary_first():
    users = [User("dave", quota=1000), User("dora", enabled=False)]
    r = resolver(extra_users=users, used={"dave": 900}, aliases={"both": ["dora", "dave"]})
    assert r.verify("dave") is None and r.verify("dave", 100) is None
    assert r.verify("dave", 101) == Failed("4.2.2", "mailbox full (quota 1000 bytes exceeded)")
    assert r.verify("dave", 1001) == Failed("5.2.2", "message larger than the mailbox quota (1000 bytes)")
    assert r.verify("both", 200).status == "4.2.2"            # the client comes back for dave


def test_default_quota_applies_to_users_without_their_own():
    r = resolver(extra_users=[User("eve"), User("free", quota=0)], used={"eve": 500, "free": 10**9},
                 default_quota="500")
    assert r.verify("eve").status == "4.2.2"
    assert r.verify("free") is None

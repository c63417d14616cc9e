"""Recipient resolution: domains, aliases, loops, forwards, luser_relay."""
from __future__ import annotations

import pytest

from workers.delivery.resolve import MAX_DEPTH, Failed, File, Mailbox, Pipe, Remote, Resolver, UserEntry


class FakeDirectory:
    def __init__(self, users: dict[str, UserEntry], aliases: dict[str, list[str]]):
        self.users, self.aliases = users, aliases

    def user(self, name):
        return self.users.get(name)

    def alias(self, name):
        return self.aliases.get(name)


def resolver(users=(), aliases=None, luser_relay="", extra_users=None):
    table = {name: UserEntry() for name in users}
    table.update(extra_users or {})
    return Resolver(["mail.example.test", "example.test", "virtual.example"], luser_relay,
                    FakeDirectory(table, aliases or {}))


def test_user_of_every_local_domain_and_bare_name():
    r = resolver(["bob"])
    for address in ("bob@example.test", "BOB@Virtual.Example", "bob@mail.example.test", "bob"):
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
    r = resolver(extra_users={"dora": UserEntry(enabled=False)})
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
    users = {"ann": UserEntry(forward=("bob@example.test", "ann@other.org"), keep_copy=True),
             "ben": UserEntry(forward=("bob",)), "bob": UserEntry()}
    r = resolver(extra_users=users)
    assert r.resolve("ann@example.test") == [Mailbox("bob"), Remote("ann@other.org"), Mailbox("ann")]
    assert r.resolve("ben@example.test") == [Mailbox("bob")]


def test_forward_to_self_keeps_mail_and_forward_loop_fails():
    users = {"sam": UserEntry(forward=("sam@example.test",)),
             "x": UserEntry(forward=("y",)), "y": UserEntry(forward=("x",))}
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

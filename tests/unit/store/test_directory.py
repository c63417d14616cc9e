"""The store's one handle and its directory: Store.open opens each part on first use and
closes what it opened; local domains, accounts with default_quota, the quota rule on a real
mail store; and the store's modules import each other without a cycle."""
from __future__ import annotations

import ast

import lmdb
import pytest

from tests.conftest import REPO

from master.params import Params
from store.directory import Account, Failed, LocalDomains
from store.fsio import StorageError
from store.handle import Store
from store.users import User

STORE = REPO / "store"


def make_params(tmp_path, **settings) -> Params:
    raw = {"myhostname": "mail.example.test", "mydomain": "example.test", "data_directory": str(tmp_path / "var"),
           "mydestination": "$myhostname, $mydomain, Virtual.Example.", **settings}
    return Params(raw, {}, str(tmp_path))


@pytest.fixture
def store(tmp_path):
    with Store.open(make_params(tmp_path, default_quota="10k")) as store:
        yield store


def test_parts_open_on_first_use_and_close(tmp_path):
    store = Store.open(make_params(tmp_path))
    assert store.queue.path("incoming").startswith(str(tmp_path / "var" / "queue"))
    assert not (tmp_path / "var" / "users").exists()          # only the queue was asked for
    users = store.users
    assert store.users is users and store.directory.users is users and store.resolver.directory is store.directory
    assert (tmp_path / "var" / "users").is_dir()
    store.close()
    assert store.users is not users                           # a new one after close()
    store.close()


def test_local_domains_are_mydestination_in_any_case():
    domains = LocalDomains(Params({"mydestination": "Example.Test, virtual.example."}, {}, "/nonexistent"))
    assert domains.names == {"example.test", "virtual.example"}
    for address, local in (("Bob@EXAMPLE.test", "bob"), ("<bob@virtual.example.>", "bob"), ("Bob", "bob"),
                           ("bob@elsewhere.example", None), ("@example.test", ""), ("@elsewhere", None)):
        assert domains.local_part(address) == local, address
    assert domains.is_local("x@example.test") and not domains.is_local("x@example.test.org")


def test_accounts_carry_their_quota_or_default_quota(store):
    store.users.add(User("bob", forward=["x@elsewhere.example"], keep_copy=True))
    store.users.add(User("dave", quota=5000, enabled=False))
    store.users.add(User("free", quota=0))
    directory = store.directory
    assert directory.user("Bob") == Account("bob", True, ("x@elsewhere.example",), True, 10240)
    assert directory.user("dave") == Account("dave", False, (), False, 5000)
    assert directory.quota("free") == 0 and directory.quota("nobody") == 10240
    assert directory.user("nobody") is None and directory.alias("nobody") is None


def test_quota_rule_on_the_mail_store(store):
    store.users.add(User("dave", quota=5000))
    directory = store.directory
    assert directory.quota_check("dave", 5000) is None
    assert directory.quota_check("dave", 5001) == Failed("5.2.2", "message larger than the mailbox quota (5000 bytes)")
    store.mail.deliver("dave", "INBOX", b"x" * 4000)
    assert directory.quota_check("dave", 1000) is None
    assert directory.quota_check("dave", 1001) == Failed("4.2.2", "mailbox full (quota 5000 bytes exceeded)")
    store.mail.deliver("dave", "INBOX", b"y" * 1000)
    assert directory.quota_check("dave", 0).status == "4.2.2"      # full: not even a byte more
    assert not Failed("4.2.2", "").permanent and Failed("5.2.2", "").permanent


def test_a_failing_database_is_a_storage_error(store, monkeypatch):
    def broken(name):
        raise lmdb.ReadersFullError("MDB_READERS_FULL")
    monkeypatch.setattr(store.users, "get", broken)
    monkeypatch.setattr(store.aliases, "lookup", broken)
    with pytest.raises(StorageError, match="user database"):
        store.directory.user("bob")
    with pytest.raises(StorageError, match="alias map"):
        store.resolver.resolve("bob@example.test")


def test_no_import_cycle_among_the_store_modules():
    imports = {}
    assert len(list(STORE.glob("*.py"))) > 10, STORE
    for path in STORE.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "store":
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("store."):
                names.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("store."))
        imports[path.stem] = names

    def reaches(start, target, seen):
        for name in imports.get(start, ()):
            if name == target or (name not in seen and reaches(name, target, seen | {name})):
                return True
        return False
    assert [m for m in imports if reaches(m, m, {m})] == []

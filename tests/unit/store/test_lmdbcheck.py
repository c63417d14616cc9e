"""store.lmdbcheck: LMDB data files are checked before they are mapped, so a damaged one is
refused with a clear error instead of killing the process with SIGBUS; the mail index and
the user database open through it, and reconstruct replaces a damaged index.
Whatever could die of SIGBUS runs in a child process (on both index implementations)."""
from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

from store import lmdbcheck
from store.fsio import StorageError
from store.lmdbcheck import DamagedEnvironment, read_meta
from store.mailstore import INBOX, MailStore
from store.reconstruct import replace_damaged_index

PAGE = os.sysconf("SC_PAGE_SIZE")
HEADER = struct.calcsize("@NHHHH")                                    # the page header
VERSION_AT = HEADER + 4
MAIN_ROOT_AT = struct.calcsize("@NHHHH" + "IIPN" + "IHHNNNNN" + "IHHNNNN")
IMPLS = {"compiled": {}, "pure": {"MAILHOUSE_PURE_PYTHON": "1"}}


def build_index(path: Path, users=("bob", "carol"), messages=400) -> Path:
    """An index of several pages; returns its data file."""
    from store._index_py import Index
    ix = Index(path, durable=False)
    for user in users:
        ix.create_mailbox(user, INBOX, uidvalidity=7)
        ix.append_many(user, INBOX, [(uid, 100, 1_700_000_000, ()) for uid in range(1, messages + 1)])
    ix.close()
    return path / "data.mdb"


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def both_metas(path: Path, offset: int, data: bytes) -> None:
    patch(path, offset, data)
    patch(path, PAGE + offset, data)


DAMAGE = {
    "cut short": (lambda f: os.truncate(f, 2 * PAGE), "cut short"),
    "one page left": (lambda f: os.truncate(f, PAGE + 64), "meta page 1 is missing"),
    "a few bytes left": (lambda f: os.truncate(f, 100), "meta page 0 is missing"),
    "junk first page": (lambda f: patch(f, 0, os.urandom(PAGE)), "not an LMDB data file"),
    "junk second page": (lambda f: patch(f, PAGE, b"\xff" * PAGE), "not an LMDB data file"),
    "another format": (lambda f: both_metas(f, VERSION_AT, struct.pack("@I", 999)), "LMDB data format 999"),
    "root past the end": (lambda f: both_metas(f, MAIN_ROOT_AT, struct.pack("@N", 1 << 40)), "points outside"),
}


def run_child(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAILHOUSE_PURE_PYTHON"}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=60)


# ---------------------------------------------------------------- reading the meta pages

def test_a_sound_file_and_a_new_one(tmp_path):
    data = build_index(tmp_path / "index")
    meta = read_meta(str(tmp_path / "index"))
    assert meta.page_size == PAGE and meta.txnid > 0 and meta.map_size > 0
    assert PAGE * 3 <= meta.needed_size <= data.stat().st_size
    assert read_meta(str(tmp_path / "nothing")) is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.mdb").write_bytes(b"")    # LMDB starts an empty file afresh
    assert read_meta(str(tmp_path / "empty")) is None


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_named(tmp_path, damage):
    data = build_index(tmp_path / "index")
    spoil, reason = DAMAGE[damage]
    spoil(data)
    with pytest.raises(DamagedEnvironment) as refused:
        read_meta(str(tmp_path / "index"), remedy="restore it")
    assert refused.value.path == str(data) and reason in refused.value.reason
    assert str(refused.value).startswith(f"{data} is damaged: ") and str(refused.value).endswith("; restore it")
    assert isinstance(refused.value, StorageError)      # sessions answer a temporary error


# ---------------------------------------------------------------- the index and the user database

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("damage", ["cut short", "junk first page", "root past the end"])
def test_index_refuses_a_damaged_file(tmp_path, impl, damage):
    spoil, reason = DAMAGE[damage]
    spoil(build_index(tmp_path / "index"))
    child = run_child(f"""
        from store.fsio import StorageError
        from store.index import IMPL, Index
        ix = Index({str(tmp_path / "index")!r})
        for attempt in range(2):
            try:
                ix.mailboxes("bob")
            except StorageError as e:
                print(IMPL, type(e).__name__, e)
    """, IMPLS[impl])
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    assert len(lines) == 2 and all(reason in line and "mailctl reconstruct" in line for line in lines)
    assert lines[0].startswith("store._index " if impl == "compiled" else "store._index_py ")


@pytest.mark.parametrize("impl", IMPLS)
def test_index_cut_short_while_open(tmp_path, impl):
    data = build_index(tmp_path / "index")
    child = run_child(f"""
        import os
        from store.fsio import StorageError
        from store.index import Index
        ix = Index({str(tmp_path / "index")!r})
        print(len(ix.open_view("bob", "INBOX")))
        os.truncate({str(data)!r}, {3 * PAGE})
        try:
            ix.open_view("carol", "INBOX")
        except StorageError as e:
            print(e)
    """, IMPLS[impl])
    assert child.returncode == 0, child.stderr[-2000:]
    count, refusal = child.stdout.splitlines()
    assert count == "400" and "is damaged: cut short" in refusal


@pytest.mark.parametrize("module", ["store._index_py", "store._index"])
def test_index_follows_a_file_put_in_its_place(tmp_path, module):
    Index = importlib.import_module(module).Index
    build_index(tmp_path / "index", users=("bob",), messages=3)
    first, second = Index(tmp_path / "index"), Index(tmp_path / "index")
    assert first.users() == second.users() == ["bob"]
    build_index(tmp_path / "new", users=("dora",), messages=2)
    os.unlink(tmp_path / "index" / "lock.mdb")                 # as replace_damaged_index does
    os.rename(tmp_path / "new" / "data.mdb", tmp_path / "index" / "data.mdb")
    assert first.users() == second.users() == ["dora"]
    first.append("dora", INBOX, 3, 10, 0)
    assert len(second.open_view("dora", INBOX)) == 3
    first.close()
    second.close()


def test_user_database_refuses_a_damaged_file_at_each_use(tmp_path):
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "data.mdb").write_bytes(b"not LMDB".ljust(2 * PAGE, b"\0"))
    child = run_child(f"""
        from store.fsio import StorageError
        from store.users import UserDB
        db = UserDB({str(tmp_path / "users")!r}, {str(tmp_path / "key")!r})
        for action in (lambda: db.get("bob"), lambda: db.verify_password("bob", "pw"), db.list):
            try:
                action()
            except StorageError as e:
                print(e)
    """, {})
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    assert len(lines) == 3 and all("not an LMDB data file" in line and "backup" in line for line in lines)


def test_the_reporter_hears_of_each_damage_once(tmp_path):
    spoil, _ = DAMAGE["cut short"]
    spoil(build_index(tmp_path / "index"))
    heard: list[str] = []
    lmdbcheck.set_reporter(heard.append)
    try:
        env = lmdbcheck.Environment(str(tmp_path / "index"), "run the fix")
        for _ in range(3):
            with pytest.raises(DamagedEnvironment):
                env.current()
    finally:
        lmdbcheck.set_reporter(None)
    assert len(heard) == 1 and "data.mdb is damaged: cut short" in heard[0] and heard[0].endswith("run the fix")


# ---------------------------------------------------------------- reconstruct puts a new index in place

def test_replace_damaged_index(tmp_path):
    store_dir, index_dir = tmp_path / "store", tmp_path / "index"
    with MailStore(str(store_dir), str(index_dir)) as store:
        uids = [store.deliver("bob", INBOX, f"Subject: {n}\r\n\r\nbody\r\n".encode()) for n in range(3)]
        store.set_flags("bob", INBOX, [(uids[1], uids[1])], "+", ["\\Flagged"])
        store.deliver("carol", INBOX, b"Subject: hi\r\n\r\nbody\r\n")
        validity = store.mailbox("bob", INBOX).uidvalidity
        assert replace_damaged_index(store) is None                 # a sound index is left alone
        store.index.close()                        # damaged at rest (an open file is watched for size only)
        DAMAGE["junk first page"][0](index_dir / "data.mdb")
        with pytest.raises(DamagedEnvironment):
            store.usage("bob")
        done = replace_damaged_index(store)
        assert "not an LMDB data file" in done.reason and [r.user for r in done.reports] == ["bob", "carol"]
        assert Path(done.kept_as).name.startswith("data.mdb.damaged.") and Path(done.kept_as).stat().st_size
        assert done.lines()[-1] == "index: rebuilt from the message files of 2 users and put in place"
        view = store.open_mailbox("bob", INBOX)                     # the same store, the new file
        assert view.info.uidvalidity == validity and view.view.uids() == uids
        assert [m.flags for m in view.messages()] == [(), ("\\Flagged",), ()]
        assert len(store.open_mailbox("carol", INBOX)) == 1
    assert sorted(os.listdir(index_dir)) == sorted(["data.mdb", "lock.mdb", Path(done.kept_as).name])

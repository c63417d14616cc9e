"""The user database and every password form."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys

import lmdb
import pytest

from store import passwords, users as users_mod
from store.passwords import ScramKeys
from store.users import User, UserDB, UserError


@pytest.fixture
def db(tmp_path):
    users = UserDB(str(tmp_path / "users"), str(tmp_path / "secret.key"))
    yield users
    users.close()


def raw_records(db: UserDB) -> bytes:
    """Every byte the env holds, to look for secrets in clear."""
    with open(os.path.join(db.env_path, "data.mdb"), "rb") as f:
        return f.read()


# ---------------------------------------------------------------- profiles

def test_add_get_update_delete(db):
    db.add(User("Bob", quota=1 << 20, protocols=["imap"], forward=["bob@elsewhere.example"],
                keep_copy=True, full_name="Bob Builder"))
    bob = db.get("BOB")
    assert (bob.name, bob.quota, bob.protocols, bob.forward, bob.keep_copy, bob.full_name) == \
        ("bob", 1 << 20, ["imap"], ["bob@elsewhere.example"], True, "Bob Builder")
    bob.enabled = False
    db.update(bob)
    assert db.get("bob").enabled is False
    assert [u.name for u in db.list()] == ["bob"]
    assert db.delete("bob") and not db.delete("bob") and db.get("bob") is None


def test_add_by_name_and_defaults(db):
    db.add("carol", password="pw")
    carol = db.get("carol")
    assert carol.enabled and carol.quota is None and carol.protocols == ["imap", "pop"] and carol.forward == []


def test_refusals(db):
    db.add("bob")
    with pytest.raises(UserError, match="already exists"):
        db.add("BOB")
    with pytest.raises(UserError, match="no such user"):
        db.update(User("nobody"))
    with pytest.raises(UserError, match="no such user"):
        db.set_password("nobody", "pw")
    for bad in ("", "a b", "../x", "x" * 65, "-lead", "bob@example.test"):
        with pytest.raises(UserError, match="bad user name"):
            db.add(bad)
    assert db.get("../x") is None


def test_login_names_with_a_local_domain(tmp_path):
    """bob@ any mydestination domain is bob, for lookups and every password form; names of
    other domains, and names that could leave a directory, are nobody."""
    db = UserDB(str(tmp_path / "users"), str(tmp_path / "secret.key"), ["example.test", "Mail.Example.Test"])
    try:
        db.add("bob", password="pw")
        for login in ("bob", "BOB", "bob@example.test", "Bob@EXAMPLE.test", "bob@mail.example.test."):
            assert db.canonical(login) == "bob" and db.get(login).name == "bob"
            assert db.verify_password(login, "pw") and db.apop_secret(login) == "pw"
            assert db.scram_keys(login) is not None
        for other in ("bob@elsewhere.example", "bob@", "bob@example.test@example.test", "../bob",
                      "bob/../../etc", ".bob", "", "@example.test"):
            assert db.canonical(other) is None and db.get(other) is None
            assert not db.verify_password(other, "pw") and db.apop_secret(other) is None
        with pytest.raises(UserError, match="bad user name"):
            db.add("carol@example.test")          # accounts are made with bare names
    finally:
        db.close()


def test_database_and_key_are_private(db, tmp_path):
    db.add("bob", password="pw")
    assert stat.S_IMODE(os.stat(db.env_path).st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE(os.stat(os.path.join(db.env_path, name)).st_mode) == 0o600
    os.chmod(db.key_path, 0o644)                   # e.g. restored from a backup loosely
    passwords.load_secret_key(db.key_path)
    assert stat.S_IMODE(os.stat(db.key_path).st_mode) == 0o600


def test_login_refusal(db):
    db.add(User("imaponly", protocols=["imap"]))
    db.add(User("off", enabled=False))
    assert db.login_refusal("imaponly", "imap") == "" and db.login_refusal("imaponly", "pop") == "pop-not-allowed"
    assert db.login_refusal("imaponly", "smtp") == "" and db.login_refusal("off", "smtp") == "disabled"
    assert db.login_refusal("nobody", "imap") == "disabled"


def test_password_forms_live_in_their_own_env(db, tmp_path):
    db.add("bob", password="pw")
    db.close()
    with lmdb.open(str(tmp_path / "users"), max_dbs=4, readonly=True, lock=False) as env:
        with env.begin() as txn:
            names = [key for key, _ in txn.cursor()]
    assert names == [b"users"]                              # no forms beside the profiles
    with lmdb.open(str(tmp_path / "passwords"), max_dbs=4, readonly=True, lock=False) as env:
        forms = json.loads(env.begin(db=env.open_db(b"credentials", create=False)).get(b"bob"))
    assert set(forms) >= {"scrypt", "scram-sha-256", "cram-md5"}
    assert stat.S_IMODE(os.stat(tmp_path / "passwords").st_mode) == 0o700


def test_profiles_alone_never_open_the_password_env(tmp_path):
    with UserDB(str(tmp_path / "users"), str(tmp_path / "secret.key")) as db:
        db.add(User("bob"))
    os.chmod(tmp_path / "passwords", 0)                      # as closed as for a protocol worker
    try:
        with UserDB(str(tmp_path / "users"), str(tmp_path / "secret.key"), ["example.test"]) as reader:
            assert reader.get("bob@example.test").name == "bob" and [u.name for u in reader.list()] == ["bob"]
            assert reader.canonical("Bob") == "bob" and reader._passwords is None
    finally:
        os.chmod(tmp_path / "passwords", 0o700)


def test_forms_of_an_older_release_move_to_the_password_env(tmp_path):
    users_path = str(tmp_path / "users")
    forms = passwords.make_forms("bob", "old pw", None)
    with lmdb.open(users_path, max_dbs=4, subdir=True) as env:     # the layout before the split
        with env.begin(write=True) as txn:
            txn.put(b"bob", User("bob").to_json(), db=env.open_db(b"users", txn=txn))
            txn.put(b"bob", json.dumps(forms).encode(), db=env.open_db(b"credentials", txn=txn))
    with UserDB(users_path, str(tmp_path / "secret.key")) as db:
        assert db.verify_password("bob", "old pw") and not db.verify_password("bob", "other")
    with lmdb.open(users_path, max_dbs=4, readonly=True, lock=False) as env:
        with env.begin() as txn:
            assert [key for key, _ in txn.cursor()] == [b"users"]
    with UserDB(users_path, str(tmp_path / "secret.key")) as db:     # and it stays there
        assert db.verify_password("bob", "old pw")


def test_data_survives_another_process(db, tmp_path):
    db.add("bob", password="pw")
    code = ("import sys; from store.users import UserDB; db = UserDB(sys.argv[1], sys.argv[2]);"
            "db.set_password('bob', 'changed'); print(db.get('bob').name)")
    result = subprocess.run([sys.executable, "-c", code, db.env_path, db.key_path],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "bob"
    assert db.verify_password("bob", "changed") and not db.verify_password("bob", "pw")


# ---------------------------------------------------------------- password forms

def test_no_password_in_clear(db):
    db.add("bob", password="Very-Distinct-Secret-9")
    assert b"Very-Distinct-Secret-9" not in raw_records(db)
    assert db.password_forms("bob") == ["apop", "cram-md5", "scram-sha-256", "scrypt"]


def test_scrypt_verifier(db):
    db.add("bob", password="correct horse")
    assert db.verify_password("bob", "correct horse") and db.verify_password("BOB", "correct horse")
    assert not db.verify_password("bob", "correct horsE") and not db.verify_password("bob", "")
    assert not db.verify_password("nobody", "correct horse")


def test_saslprep_applies_to_stored_and_checked_passwords(db):
    db.add("bob", password="I\u00adX")            # soft hyphen maps to nothing (RFC 4013 example)
    assert db.verify_password("bob", "IX")
    assert db.scram_keys("bob") == ScramKeys.derive("IX", db.scram_keys("bob").salt)


def test_scram_keys_follow_rfc5802(db):
    db.add("bob", password="pencil")
    keys = db.scram_keys("bob")
    assert keys.iterations >= 4096 and len(keys.salt) == 16
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", keys.salt, keys.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert keys.stored_key == hashlib.sha256(client_key).digest()
    assert keys.server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()


def test_scram_keys_rfc7677_salt():
    keys = ScramKeys.derive("pencil", __import__("base64").b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    assert ScramKeys.from_form(json.loads(json.dumps(keys.to_form()))) == keys


def test_decoy_scram_keys_are_stable_and_useless(db):
    first, second = db.decoy_scram_keys("nobody"), db.decoy_scram_keys("nobody")
    assert first.salt == second.salt and first.stored_key != second.stored_key
    assert db.decoy_scram_keys("other").salt != first.salt


@pytest.mark.parametrize("password", ["tanstaaftanstaaf", "", "p" * 64, "p" * 65, "päss wörd"])
def test_cram_md5_context_computes_hmac_md5(db, password):
    db.add("bob")
    if password:
        db.set_password("bob", password)
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    expected = hmac.new(password.encode(), challenge, hashlib.md5).digest()
    assert db.cram_md5("bob", challenge, expected) is bool(password)
    assert not db.cram_md5("bob", challenge, bytes(16))


def test_cram_md5_context_is_two_md5_states(db):
    db.add("bob", password="tanstaaftanstaaf")
    stored = users_mod.UserDB._forms(db, "bob")["cram-md5"]
    assert len(bytes.fromhex(stored)) == 32 and b"tanstaaf" not in bytes.fromhex(stored)


def test_apop_secret_is_encrypted_with_a_0600_key(db):
    db.add("bob", password="apop secret")
    assert db.apop_secret("bob") == "apop secret" and db.apop_secret("nobody") is None
    assert stat.S_IMODE(os.stat(db.key_path).st_mode) == 0o600
    assert len(open(db.key_path, "rb").read()) == passwords.SECRET_KEY_BYTES


def test_apop_secret_is_bound_to_the_user(db):
    db.add("bob", password="one")
    db.add("eve", password="two")
    forms = {name: users_mod.UserDB._forms(db, name) for name in ("bob", "eve")}
    forms["eve"]["apop"] = forms["bob"]["apop"]          # copy bob's sealed secret to eve
    db._forms_table.write(lambda txn, forms_db: txn.put(b"eve", json.dumps(forms["eve"]).encode(), db=forms_db))
    assert db.apop_secret("eve") is None and db.apop_secret("bob") == "one"


def test_lost_or_bad_key_disables_apop_only(db, tmp_path):
    db.add("bob", password="pw")
    db.close()                                   # one env per path and process
    for content in (b"short", os.urandom(32)):
        with open(db.key_path, "wb") as f:
            f.write(content)
        with UserDB(db.env_path, db.key_path) as fresh:
            assert fresh.apop_secret("bob") is None
            assert fresh.verify_password("bob", "pw") and fresh.scram_keys("bob") is not None


def test_user_without_password_has_no_form(db):
    db.add("bob")
    assert db.password_forms("bob") == []
    assert not db.verify_password("bob", "")
    assert db.scram_keys("bob") is None and db.apop_secret("bob") is None
    assert not db.cram_md5("bob", b"<x@y>", bytes(16))


def test_set_password_replaces_every_form(db):
    db.add("bob", password="old")
    old_keys = db.scram_keys("bob")
    db.set_password("bob", "new")
    assert db.verify_password("bob", "new") and db.apop_secret("bob") == "new"
    assert db.scram_keys("bob") != old_keys


def test_secret_key_created_once_under_a_race(tmp_path):
    path = str(tmp_path / "secret.key")
    code = "import sys; from store.passwords import load_secret_key; sys.stdout.write(load_secret_key(sys.argv[1]).hex())"
    procs = [subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    keys = {p.communicate()[0] for p in procs}
    assert len(keys) == 1 and os.listdir(tmp_path) == ["secret.key"]


def test_map_full_grows_the_map(tmp_path, monkeypatch):
    monkeypatch.setattr(users_mod, "MAP_SIZE", 64 * 1024)
    small = UserDB(str(tmp_path / "small"), str(tmp_path / "secret.key"))
    try:
        for number in range(40):                # ~40 x 4 KiB profiles: more than 64 KiB
            small.add(User(f"user{number}", full_name="x" * 4000))
        assert len(small.list()) == 40 and small._profiles.env.info()["map_size"] > 64 * 1024
    finally:
        small.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make files for another owner")
def test_key_made_by_root_belongs_to_the_password_env_owner(tmp_path):
    env_path = tmp_path / "passwords"
    env_path.mkdir()
    os.chown(env_path, 65534, 65534)
    users = UserDB(str(tmp_path / "users"), str(tmp_path / "secret.key"))
    try:
        users.add("bob", password="pw")
        key = os.stat(tmp_path / "secret.key")
        assert (key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)) == (65534, 65534, 0o600)
    finally:
        users.close()


def test_a_password_with_nul_is_refused_and_never_matches(db):
    # HMAC pads its key with NULs: without the rule, "pw" and "pw\0" would be one password
    # (found by the SASL fuzzer: LOGIN with the password plus NULs logged in)
    db.add("nul", password="s3cret pw")
    assert db.verify_password("nul", "s3cret pw")
    assert not db.verify_password("nul", "s3cret pw\0")
    assert not db.verify_password("nul", "s3cret pw" + "\0" * 23)
    with pytest.raises(UserError, match="NUL"):
        db.add("other", password="pw\0")
    with pytest.raises(UserError, match="NUL"):
        db.set_password("nul", "new\0")

"""The user database: accounts in one LMDB env, their password forms in another.

The accounts live at $data_directory/users (not under index_directory: deleting the index
to reconstruct it must not delete the accounts): the named database "users" (name -> JSON
profile: enabled, quota, protocols, forward, keep_copy, full_name), read by every part that
delivers or logs in. The password forms (store/passwords.py, JSON per name) live in an env
of their own, $data_directory/passwords, beside the APOP key file secret.key: file
permissions are per file, so only what verifies passwords (the auth service, or each
protocol process when master.cf has none; mailctl) needs to read it, and in the production
layout it is root's alone. That env is opened on the first use of a password form, never
by a process that only reads profiles. Forms kept in the users env by an older release are
moved over the first time the passwords env is opened and found empty.
Names are lower-cased; they are the local part of the user's address. A client may log in
with the bare name or with name@domain for a domain of mydestination (the domains a user
receives mail at): db.canonical() maps both to the user, for every protocol and mechanism.
Names are checked (NAME) before any use, so none can reach outside a directory ('/' and a
leading '.' are refused).

Interface:
    db = UserDB(env_path, key_path, login_domains) / UserDB.from_params(params)
        (a process has one: store.handle.Store.users); the passwords env is the folder
        `passwords` beside env_path
    UserDB.paths(params) -> (users env, passwords env, key file)
    db.canonical(login) -> str | None        # "bob", "Bob@example.test" -> "bob"; None if invalid
    db.get(name) -> User | None;  db.list() -> [User];  db.add(user or name, password=None)
    db.update(user);  db.set_password(name, password);  db.delete(name) -> bool
    db.verify_password(name, pw) -> bool     # scrypt; as slow for unknown users as for known
    db.scram_keys(name) -> ScramKeys | None; db.decoy_scram_keys(name) (stable fake salt)
    db.cram_md5(name, challenge, digest) -> bool;  db.apop_secret(name) -> str | None
    db.login_refusal(name, protocol) -> str  # "" may log in; "disabled"; "pop-not-allowed"...
    db.fingerprint(name) -> bytes | None     # changes with any change to the account
    db.close() (also at the end of a `with` block)
Diagnostics: UserError (bad name, exists, unknown) with a one-line reason for mailctl;
StorageError when LMDB cannot write (map full is retried once after growing the map).
A UserDB owns its LMDB envs, and LMDB allows one env per path and process: a process keeps
one UserDB (its Store's) rather than opening the same database twice. The envs open
through store.lmdbcheck: a damaged data file is refused at each use (DamagedEnvironment,
a StorageError), never mapped.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import asdict, dataclass, field

import lmdb

from store import lmdbcheck, passwords
from store.fsio import StorageError
from store.passwords import ScramKeys

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
PROTOCOLS = ("imap", "pop")
MAP_SIZE = 64 * 1024 * 1024
# A verifier that matches no password: unknown users cost the same scrypt as known ones.
# Made by the first verify_password of the process (known user or not), not at import: every
# worker imports this module, few verify passwords.
_DECOY_SCRYPT = ""


def _decoy_scrypt() -> str:
    global _DECOY_SCRYPT
    if not _DECOY_SCRYPT:
        _DECOY_SCRYPT = passwords.make_scrypt(os.urandom(16).hex())
    return _DECOY_SCRYPT


class UserError(Exception):
    """A refused user-database action; str() is a one-line reason."""


@dataclass
class User:
    name: str
    enabled: bool = True
    quota: int | None = None             # bytes; None = default_quota, 0 = unlimited
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    forward: list[str] = field(default_factory=list)
    keep_copy: bool = False              # with forward: also deliver to the own mailbox
    full_name: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "User":
        raw = json.loads(data)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


def check_name(name: str) -> str:
    """The canonical (lower-case) form of a user name; UserError if it is not a valid one."""
    low = name.strip().lower()
    if not NAME.fullmatch(low):
        raise UserError(f"bad user name {name!r} (letters, digits, '.', '_', '-'; at most 64)")
    return low


REMEDY = "restore it from a backup (the accounts cannot be rebuilt from the mail)"
LEGACY_FORMS = b"credentials"      # the forms' named database in the users env, before the split


class _Table:
    """One named database in an LMDB env of its own, opened through lmdbcheck."""

    def __init__(self, path: str, db_name: bytes):
        self.path = path
        self.db_name = db_name
        os.makedirs(path, mode=0o700, exist_ok=True)
        self._checked = lmdbcheck.Environment(path, REMEDY, map_size=MAP_SIZE, max_dbs=4, subdir=True, mode=0o600)
        self._opened: lmdb.Environment | None = None
        self.db = None

    @property
    def env(self) -> lmdb.Environment:
        """The env for one transaction (checked; the database handle follows a reopened env)."""
        env = self._checked.current()
        if env is not self._opened:
            self.db = env.open_db(self.db_name)
            self._opened = env
        return env

    def get(self, key: str) -> bytes | None:
        env = self.env  # first: it may open the database anew
        with env.begin(db=self.db) as txn:
            return txn.get(key.encode())

    def write(self, action) -> None:
        """Run action(txn, db) in a write transaction; grow the map once when it is full."""
        for attempt in (1, 2):
            try:
                env = self.env
                with env.begin(write=True) as txn:
                    action(txn, self.db)
                return
            except lmdb.MapFullError:
                if attempt == 2:
                    raise StorageError("user database is full") from None
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as e:
                raise StorageError(f"user database: {e}") from None

    def close(self) -> None:
        self._checked.close()


class UserDB:
    def __init__(self, env_path: str, key_path: str, login_domains=()):
        self.env_path = os.path.abspath(env_path)
        self.passwords_path = os.path.join(os.path.dirname(self.env_path), "passwords")
        self.key_path = key_path
        self.login_domains = frozenset(d.lower().rstrip(".") for d in login_domains)
        self._profiles = _Table(self.env_path, b"users")
        self._passwords: _Table | None = None       # opened on the first use of a password form
        self._key: bytes | None = None
        try:
            self._profiles.env  # creates the database files now (mailctl init gives them to mail_owner)
        except lmdbcheck.DamagedEnvironment:
            pass      # refused at each use instead, where sessions answer a temporary error

    @staticmethod
    def paths(params) -> tuple[str, str, str]:
        """(users env, passwords env, secret key file) of a configuration, without opening anything."""
        data = params.data_directory
        return os.path.join(data, "users"), os.path.join(data, "passwords"), os.path.join(data, "secret.key")

    @classmethod
    def from_params(cls, params) -> "UserDB":
        users, _passwords, key = cls.paths(params)
        return cls(users, key, params.mydestination)

    def close(self) -> None:
        """Close the envs (a later use opens them again)."""
        self._profiles.close()
        if self._passwords is not None:
            self._passwords.close()

    def __enter__(self) -> "UserDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- storage
    @property
    def _forms_table(self) -> _Table:
        if self._passwords is None:
            self._passwords = _Table(self.passwords_path, b"credentials")
            self._move_legacy_forms(self._passwords)
        return self._passwords

    def create_password_files(self) -> None:
        """Make the passwords env and the key file now (mailctl init gives them an owner)."""
        self._forms_table.env
        self._secret_key()

    def _move_legacy_forms(self, table: _Table) -> None:
        """Forms an older release kept in the users env move to the passwords env, once."""
        profiles = self._profiles.env
        try:
            with profiles.begin(write=True) as txn:
                legacy = profiles.open_db(LEGACY_FORMS, txn=txn, create=False)
                rows = list(txn.cursor(db=legacy))
                if rows:
                    table.write(lambda forms, db: [forms.put(k, v, db=db, overwrite=False) for k, v in rows])
                txn.drop(legacy, delete=True)
        except lmdb.NotFoundError:
            pass                                  # nothing left from before the split

    def _secret_key(self) -> bytes | None:
        if self._key is None:
            try:
                self._key = passwords.load_secret_key(self.key_path)
            except passwords.SecretKeyError:
                return None
            self._key_owner_like_passwords()
        return self._key

    def _key_owner_like_passwords(self) -> None:
        """mailctl run as root gives the key the owner of the passwords env: whoever verifies."""
        if os.geteuid() != 0:
            return
        forms, key = os.stat(self._forms_table.path), os.stat(self.key_path)
        if (key.st_uid, key.st_gid) != (forms.st_uid, forms.st_gid):
            os.chown(self.key_path, forms.st_uid, forms.st_gid)

    def canonical(self, login: str) -> str | None:
        """The user name a login means: `bob`, or `bob@DOMAIN` for a domain of mydestination
        (case-insensitive); None for anything else (another domain, a bad name)."""
        local, at, domain = login.strip().partition("@")
        if at and domain.lower().rstrip(".") not in self.login_domains:
            return None
        try:
            return check_name(local)
        except UserError:
            return None

    def _forms(self, name: str) -> dict:
        user = self.canonical(name)
        raw = self._forms_table.get(user) if user else None
        return json.loads(raw) if raw else {}

    # ---------------------------------------------------------------- profiles
    def get(self, name: str) -> User | None:
        """The user of a bare name or a login name (see canonical)."""
        user = self.canonical(name)
        raw = self._profiles.get(user) if user else None
        return User.from_json(raw) if raw else None

    def list(self) -> list[User]:
        env = self._profiles.env
        with env.begin(db=self._profiles.db) as txn:
            return [User.from_json(value) for _, value in txn.cursor()]

    def add(self, user: User | str, password: str | None = None) -> None:
        user = User(user) if isinstance(user, str) else user
        user.name = check_name(user.name)
        forms = self._forms_of(user.name, password) if password else {}

        def add_profile(txn, db):
            if not txn.put(user.name.encode(), user.to_json(), db=db, overwrite=False):
                raise UserError(f"user {user.name} already exists")
        self._profiles.write(add_profile)
        # Also without a password: forms a deleted namesake left behind are replaced.
        self._forms_table.write(lambda txn, db: txn.put(user.name.encode(), json.dumps(forms).encode(), db=db))

    def update(self, user: User) -> None:
        user.name = check_name(user.name)

        def action(txn, db):
            if txn.get(user.name.encode(), db=db) is None:
                raise UserError(f"no such user: {user.name}")
            txn.put(user.name.encode(), user.to_json(), db=db)
        self._profiles.write(action)

    def _forms_of(self, name: str, password: str) -> dict:
        try:
            return passwords.make_forms(name, password, self._secret_key())
        except ValueError as e:              # a password the KDFs cannot tell apart (NUL)
            raise UserError(str(e)) from None

    def set_password(self, name: str, password: str) -> None:
        name = check_name(name)
        forms = self._forms_of(name, password)
        if self._profiles.get(name) is None:
            raise UserError(f"no such user: {name}")
        self._forms_table.write(lambda txn, db: txn.put(name.encode(), json.dumps(forms).encode(), db=db))

    def delete(self, name: str) -> bool:
        name = check_name(name)
        found = []
        self._profiles.write(lambda txn, db: found.append(txn.delete(name.encode(), db=db)))
        self._forms_table.write(lambda txn, db: txn.delete(name.encode(), db=db))
        return found[0]

    def fingerprint(self, name: str) -> bytes | None:
        """A digest of the user's profile and password forms: it changes with every change
        to the account (password, enabled, protocols, ...). None for no such user. The
        login cache (workers/_authcache.py) compares it."""
        user = self.canonical(name)
        profile = self._profiles.get(user) if user else None
        if profile is None:
            return None
        forms = self._forms_table.get(user)
        return hashlib.blake2b(profile + b"\0" + (forms or b""), digest_size=16).digest()

    def login_refusal(self, name: str, protocol: str) -> str:
        """Why the user may not log in with protocol (smtp, pop, imap): "" when it may,
        "disabled", or "pop-not-allowed" / "imap-not-allowed" (not among its protocols)."""
        user = self.get(name)
        if user is None or not user.enabled:
            return "disabled"
        if protocol in PROTOCOLS and protocol not in user.protocols:
            return f"{protocol}-not-allowed"
        return ""

    # ---------------------------------------------------------------- password forms
    def verify_password(self, name: str, password: str) -> bool:
        decoy = _decoy_scrypt()
        form = self._forms(name).get("scrypt")
        try:
            matched = passwords.verify_scrypt(form or decoy, password)
        except ValueError:
            return False
        return matched and form is not None

    def scram_keys(self, name: str) -> ScramKeys | None:
        form = self._forms(name).get("scram-sha-256")
        return ScramKeys.from_form(form) if form else None

    def decoy_scram_keys(self, name: str) -> ScramKeys:
        """Keys for a user without SCRAM keys: the same salt every time, so a client cannot
        tell an unknown user from a wrong password; they match no password."""
        seed = hmac.new(self._secret_key() or b"no key", b"scram decoy " + name.encode(), hashlib.sha256).digest()
        return ScramKeys(seed[:16], passwords.SCRAM_ITERATIONS, os.urandom(32), os.urandom(32))

    def cram_md5(self, name: str, challenge: bytes, digest: bytes) -> bool:
        """Does digest (raw 16 bytes) equal HMAC-MD5(password, challenge)?"""
        form = self._forms(name).get("cram-md5")
        if not form:
            return False
        return hmac.compare_digest(passwords.cram_md5_digest(form, challenge), digest)

    def apop_secret(self, name: str) -> str | None:
        form = self._forms(name).get("apop")
        key = self._secret_key()
        if not form or key is None:
            return None
        try:
            return passwords.open_apop(form, self.canonical(name), key)
        except ValueError:
            return None

    def password_forms(self, name: str) -> list[str]:
        """Which forms the user has (for `user list`), never the forms themselves."""
        return sorted(self._forms(name))


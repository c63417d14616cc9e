"""Users for the fuzzers: a user database with scrypt made cheap, and logins answered inline.

cheap_user_db(folder) is a context manager yielding a store.users.UserDB in `folder` with
the users of USERS (login domain LOGIN_DOMAIN). While it is open, new scrypt verifiers
and the decoy verifier of unknown users cost microseconds instead of a tenth of a second,
so a fuzzer can try thousands of logins; what a mechanism decides does not depend on the
cost parameters, which every verifier carries with it.
authenticator(users) is the workers._auth.Authenticator of the protocols, with a verifier
that answers each credential check at once on the calling thread (check.answer(users),
the function the real verifier runs in its threads): no thread pool, no cache, so a
fuzzer sees the mechanisms and the checks alone.
"""
from __future__ import annotations

import contextlib
import os

from store import passwords, users as users_module
from store.users import User, UserDB
from workers._auth import Authenticator

USERS = {"bob": "s3cret pw", "carol": "pencil"}
LOGIN_DOMAIN = "example.test"
HOSTNAME = "mail.example.test"
CHEAP_SCRYPT_N = 16


@contextlib.contextmanager
def cheap_user_db(folder: str):
    saved = passwords.SCRYPT_N, users_module._DECOY_SCRYPT
    passwords.SCRYPT_N = CHEAP_SCRYPT_N
    users_module._DECOY_SCRYPT = passwords.make_scrypt(os.urandom(16).hex())
    db = UserDB(os.path.join(folder, "users"), os.path.join(folder, "secret.key"), [LOGIN_DOMAIN])
    try:
        for name, password in USERS.items():
            db.add(User(name), password)
        yield db
    finally:
        db.close()
        passwords.SCRYPT_N, users_module._DECOY_SCRYPT = saved


class InlineVerifier:
    def __init__(self, users: UserDB):
        self.users = users

    async def verify(self, check, protocol):
        return check.answer(self.users)


def authenticator(users: UserDB) -> Authenticator:
    return Authenticator(users.canonical, HOSTNAME, InlineVerifier(users), "smtp")

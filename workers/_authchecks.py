"""The credential questions of a login, and how they are answered from the user database.

A mechanism of workers/_auth.py never reads a password form itself: where it needs one
it hands the protocol a check, plain data, and resumes with the answer. The verifier
(workers/_authpool.py) runs check.answer(users) in one of its threads; an auth service
(a process owning the user database) could run the same function on checks received
over a socket. Answers never say why a check failed, and an unknown user costs the same
work as a wrong password (a decoy scrypt verifier, a decoy SCRAM salt that does not change).

    PasswordCheck(login, password)                 -> Verdict   scrypt (PLAIN, LOGIN, USER/PASS)
    CramCheck(login, challenge, digest)            -> Verdict   CRAM-MD5, digest = raw 16 bytes
    ApopCheck(login, timestamp, hexdigest)         -> Verdict
    ScramLookup(login)                             -> ScramParams (salt, iterations)
    ScramProof(login, salt, iterations, auth_message, proof) -> Verdict with the ServerSignature
Verdict.user is the canonical user name (store/users.py UserDB.canonical) when the
credentials are right, None otherwise; Verdict.refused (set by the verifier, with user) is
why that user may not log in with the protocol that asked (UserDB.login_refusal).

As plain data, for the auth service's socket (workers/auth): check_to_wire(check) -> dict
{"check": name in CHECKS, field: value, ...}, check_from_wire(dict) -> check;
answer_to_wire(answer) -> dict, answer_from_wire(check, dict) -> the answer that check
has (ScramParams for ScramLookup, else Verdict). bytes travel as base64 text; a missing,
unknown or mistyped field, or a value over WIRE_VALUE_MAX characters, is a ValueError.
Diagnostics: lmdb.Error when the user database cannot be read (the verifier turns it into a
temporary failure); a malformed stored form counts as a wrong password.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field

from store.passwords import ScramKeys
from store.users import UserDB


@dataclass(frozen=True)
class Verdict:
    user: str | None                               # canonical name; None = wrong credentials
    server_signature: bytes = field(default=b"", repr=False)   # SCRAM's server-final proof
    refused: str = ""                              # with user: why it may not log in here


@dataclass(frozen=True)
class ScramParams:
    salt: bytes
    iterations: int


@dataclass(frozen=True)
class PasswordCheck:
    login: str
    password: str = field(repr=False)

    def answer(self, users: UserDB) -> Verdict:
        user = users.canonical(self.login)
        matched = users.verify_password(self.login, self.password)    # as slow for unknown users
        return Verdict(user if matched else None)


@dataclass(frozen=True)
class CramCheck:
    login: str
    challenge: bytes
    digest: bytes = field(repr=False)

    def answer(self, users: UserDB) -> Verdict:
        matched = users.cram_md5(self.login, self.challenge, self.digest)
        return Verdict(users.canonical(self.login) if matched else None)


@dataclass(frozen=True)
class ApopCheck:
    login: str
    timestamp: str
    hexdigest: str = field(repr=False)

    def answer(self, users: UserDB) -> Verdict:
        secret = users.apop_secret(self.login)
        candidate = secret if secret is not None else secrets.token_hex(16)
        expected = hashlib.md5((self.timestamp + candidate).encode("utf-8")).hexdigest()
        offered = self.hexdigest.lower().encode("utf-8", "surrogatepass")
        matched = hmac.compare_digest(expected.encode(), offered) and secret is not None
        return Verdict(users.canonical(self.login) if matched else None)


@dataclass(frozen=True)
class ScramLookup:
    login: str

    def answer(self, users: UserDB) -> ScramParams:
        keys = users.scram_keys(self.login) or users.decoy_scram_keys(self.login)
        return ScramParams(keys.salt, keys.iterations)


@dataclass(frozen=True)
class ScramProof:
    """The client-final proof over the salt and iterations that ScramLookup gave out."""
    login: str
    salt: bytes
    iterations: int
    auth_message: bytes
    proof: bytes = field(repr=False)

    def answer(self, users: UserDB) -> Verdict:
        keys = users.scram_keys(self.login)
        if keys is None or (keys.salt, keys.iterations) != (self.salt, self.iterations):
            # Unknown user, or the password changed during the exchange: keys no proof matches.
            keys = ScramKeys(self.salt, self.iterations, os.urandom(32), os.urandom(32))
        signature = hmac.new(keys.stored_key, self.auth_message, hashlib.sha256).digest()
        if len(self.proof) != len(signature):
            return Verdict(None)
        client_key = bytes(a ^ b for a, b in zip(self.proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key):
            return Verdict(None)
        server_signature = hmac.new(keys.server_key, self.auth_message, hashlib.sha256).digest()
        return Verdict(users.canonical(self.login), server_signature)


# ---------------------------------------------------------------- as plain data
CHECKS = {"password": PasswordCheck, "cram": CramCheck, "apop": ApopCheck,
          "scram-lookup": ScramLookup, "scram-proof": ScramProof}
_CHECK_NAMES = {cls: name for name, cls in CHECKS.items()}
WIRE_VALUE_MAX = 16 * 1024          # characters of one field; SASL messages are at most 4096 bytes


def _encode(value):
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


def _decode(kind: str, value, name: str):
    """A field's value as its annotation (str, bytes, int, str | None) says; ValueError if not."""
    if value is None and kind == "str | None":
        return None
    if isinstance(value, str) and len(value) > WIRE_VALUE_MAX:
        raise ValueError(f"field {name!r} is too long")
    if kind in ("str", "str | None") and isinstance(value, str):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "bytes" and isinstance(value, str):
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError(f"field {name!r} is not base64") from None
    raise ValueError(f"field {name!r} must be {kind}")


def _to_wire(obj) -> dict:
    return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _from_wire(cls, data: dict, ignore: tuple[str, ...] = ()):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields) - set(ignore)
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _decode(f.type, data[name], name)
        elif f.default is dataclasses.MISSING:
            raise ValueError(f"field {name!r} is missing")
    return cls(**values)


def check_to_wire(check) -> dict:
    return {"check": _CHECK_NAMES[type(check)], **_to_wire(check)}


def check_from_wire(data: dict, envelope: tuple[str, ...] = ()):
    """The check a request names; the envelope's keys (the request id...) are not fields."""
    cls = CHECKS.get(data.get("check"))
    if cls is None:
        raise ValueError(f"unknown check {str(data.get('check'))[:40]!r}")
    return _from_wire(cls, data, ("check", *envelope))


def answer_to_wire(answer) -> dict:
    return _to_wire(answer)


def answer_from_wire(check, data: dict, envelope: tuple[str, ...] = ()):
    return _from_wire(ScramParams if isinstance(check, ScramLookup) else Verdict, data, envelope)

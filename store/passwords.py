"""Password forms: what is stored instead of a password, one form per kind of mechanism.

make_forms(name, password, secret_key) -> dict, JSON-ready, with
    "scrypt"         scrypt verifier (CLEAR, PLAIN, LOGIN): N$r$p$salt$hash
    "scram-sha-256"  RFC 5802/7677 salt, iterations, StoredKey, ServerKey
    "cram-md5"       the two MD5 states after HMAC-MD5's key^ipad and key^opad blocks
                     (Dovecot's CRAM-MD5 scheme): enough to compute HMAC-MD5 without the
                     password. hashlib cannot export or import an MD5 state, so the MD5
                     compression function is implemented here (a few short blocks per login).
    "apop"           the password itself, AES-256-GCM encrypted with the data directory's
                     key file (APOP's digest needs the secret; the user name is the AAD)
verify_scrypt(form, password), ScramKeys.from_form(form), cram_md5_digest(form, challenge),
open_apop(form, name, key), saslprep(text), load_secret_key(path) (created 0600 on first use;
an existing key readable by group or others is tightened to 0600).
Diagnostics: ValueError for a malformed stored form; SecretKeyError if the key file is
unreadable or of the wrong size (APOP then fails, every other form keeps working).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
import stringprep
import struct
import unicodedata
from dataclasses import dataclass

from Crypto.Cipher import AES

from store.fsio import StorageError, fsync_dir, write_durably

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRAM_ITERATIONS = 4096                  # RFC 7677's minimum recommendation
SECRET_KEY_BYTES = 32


class SecretKeyError(Exception):
    """The key file that encrypts APOP secrets is missing, unreadable or malformed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# ---------------------------------------------------------------- SASLprep (RFC 4013)

def saslprep(text: str) -> str:
    """RFC 4013 SASLprep of a stored string; ValueError when it contains prohibited characters."""
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch
                     for ch in text if not stringprep.in_table_b1(ch))
    text = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
                  stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
                  stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
                  stringprep.in_table_c9, stringprep.in_table_a1)
    for ch in text:
        if any(test(ch) for test in prohibited):
            raise ValueError(f"prohibited character U+{ord(ch):04X}")
    if any(stringprep.in_table_d1(ch) for ch in text):
        if any(stringprep.in_table_d2(ch) for ch in text) or not (
                stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
            raise ValueError("mixed or misplaced right-to-left characters")
    return text


def normalize_password(password: str) -> bytes:
    """SASLprep when it applies, else the text as given (the same rule when storing and checking).
    ValueError for a NUL: the KDFs key an HMAC, which pads its key with NULs, so `pw` and
    `pw\0` would be the same password (and SASLprep prohibits U+0000 anyway)."""
    if "\0" in password:
        raise ValueError("a password cannot contain NUL")
    try:
        return saslprep(password).encode("utf-8")
    except ValueError:
        return password.encode("utf-8")


# ---------------------------------------------------------------- scrypt

def make_scrypt(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(normalize_password(password), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 1024 * 1024, dklen=32)
    return f"{SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_scrypt(form: str, password: str) -> bool:
    n, r, p, salt, digest = form.split("$")
    expected = _unb64(digest)
    actual = hashlib.scrypt(normalize_password(password), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                            maxmem=64 * 1024 * 1024, dklen=len(expected))
    return hmac.compare_digest(actual, expected)


# ---------------------------------------------------------------- SCRAM-SHA-256

@dataclass(frozen=True)
class ScramKeys:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> "ScramKeys":
        salted = hashlib.pbkdf2_hmac("sha256", normalize_password(password), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        return cls(salt, iterations, hashlib.sha256(client_key).digest(), server_key)

    def to_form(self) -> dict:
        return {"salt": _b64(self.salt), "i": self.iterations,
                "stored": _b64(self.stored_key), "server": _b64(self.server_key)}

    @classmethod
    def from_form(cls, form: dict) -> "ScramKeys":
        return cls(_unb64(form["salt"]), int(form["i"]), _unb64(form["stored"]), _unb64(form["server"]))


# ---------------------------------------------------------------- MD5 states for CRAM-MD5

_MASK = 0xFFFFFFFF
_MD5_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MD5_SHIFT = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_MD5_K = [int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64)]


def _md5_compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    """One 64-byte block of MD5 (RFC 1321) applied to the state (A, B, C, D)."""
    words = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & _MASK)), (7 * i) % 16
        f = (f + a + _MD5_K[i] + words[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _MD5_SHIFT[i]) | (f >> (32 - _MD5_SHIFT[i])))) & _MASK
    return tuple((x + y) & _MASK for x, y in zip(state, (a, b, c, d)))


def _md5_finish(state: tuple[int, ...], done: int, data: bytes) -> bytes:
    """MD5 digest of (done bytes already compressed into state) + data."""
    total = done + len(data)
    data += b"\x80" + b"\x00" * ((55 - total) % 64) + struct.pack("<Q", (total * 8) & 0xFFFFFFFFFFFFFFFF)
    for start in range(0, len(data), 64):
        state = _md5_compress(state, data[start:start + 64])
    return struct.pack("<4I", *state)


def make_cram_md5(password: str) -> str:
    key = password.encode("utf-8")
    if len(key) > 64:
        key = hashlib.md5(key).digest()
    key = key.ljust(64, b"\x00")
    inner = _md5_compress(_MD5_INIT, bytes(k ^ 0x36 for k in key))
    outer = _md5_compress(_MD5_INIT, bytes(k ^ 0x5C for k in key))
    return struct.pack("<8I", *inner, *outer).hex()


def cram_md5_digest(form: str, challenge: bytes) -> bytes:
    """HMAC-MD5(password, challenge) computed from the stored states."""
    words = struct.unpack("<8I", bytes.fromhex(form))
    inner = _md5_finish(words[:4], 64, challenge)
    return _md5_finish(words[4:], 64, inner)


# ---------------------------------------------------------------- APOP secret, encrypted

def load_secret_key(path: str) -> bytes:
    """The data directory's key; made (0600, durably, race-free) on first use."""
    try:
        with open(path, "rb") as f:
            key = f.read(SECRET_KEY_BYTES + 1)
            info = os.fstat(f.fileno())
            if info.st_mode & 0o077 and info.st_uid == os.geteuid():   # copied in loosely
                os.fchmod(f.fileno(), 0o600)
    except FileNotFoundError:
        key = _create_secret_key(path)
    except OSError as e:
        raise SecretKeyError(f"cannot read {path}: {e.strerror}") from None
    if len(key) != SECRET_KEY_BYTES:
        raise SecretKeyError(f"{path}: not a {SECRET_KEY_BYTES}-byte key")
    return key


def _create_secret_key(path: str) -> bytes:
    directory, name = os.path.split(path)
    draft = f"{name}.new-{secrets.token_hex(4)}"
    try:
        write_durably(directory, draft, secrets.token_bytes(SECRET_KEY_BYTES), mode=0o600)
    except StorageError as e:
        raise SecretKeyError(str(e)) from None
    try:
        os.link(os.path.join(directory, draft), path)      # fails if another process won the race
    except FileExistsError:
        pass
    finally:
        os.unlink(os.path.join(directory, draft))
    try:
        fsync_dir(directory)                             # the link, durably
    except OSError as e:
        raise SecretKeyError(f"cannot sync {directory}: {e.strerror}") from None
    with open(path, "rb") as f:
        return f.read(SECRET_KEY_BYTES + 1)


def seal_apop(password: str, name: str, key: bytes) -> str:
    nonce = secrets.token_bytes(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(name.encode("utf-8"))
    sealed, tag = cipher.encrypt_and_digest(password.encode("utf-8"))
    return _b64(nonce + sealed + tag)


def open_apop(form: str, name: str, key: bytes) -> str:
    """The APOP secret; ValueError if the form was tampered with or the key is another."""
    raw = _unb64(form)
    cipher = AES.new(key, AES.MODE_GCM, nonce=raw[:12])
    cipher.update(name.encode("utf-8"))
    return cipher.decrypt_and_verify(raw[12:-16], raw[-16:]).decode("utf-8")


def make_forms(name: str, password: str, secret_key: bytes | None) -> dict:
    """Every form of password; APOP only when the key file is usable."""
    forms = {
        "scrypt": make_scrypt(password),
        "scram-sha-256": ScramKeys.derive(password, secrets.token_bytes(16)).to_form(),
        "cram-md5": make_cram_md5(password),
    }
    if secret_key is not None:
        forms["apop"] = seal_apop(password, name, secret_key)
    return forms

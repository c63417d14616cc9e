"""Server side of SASL and APOP, as small state machines with no sockets.

A mechanism is driven by the protocol (SMTP AUTH, POP3 AUTH, IMAP AUTHENTICATE):
    step(response: bytes | None) -> Step
`response` is the client's decoded data; None means "no initial response" (the first call
only). Step.challenge: send it and call step() with the answer. Step.user: authenticated
as that user. Step.failed: the exchange is over; Step.user then names who was tried, and
Step.reason says why, for the log only. The client must get the same answer for an unknown
user and a wrong password: reasons never distinguish them, and unknown users cost the
same work (a decoy scrypt verifier, a stable decoy SCRAM salt).
Mechanisms prove credentials only; the protocol then checks enabled / protocols
(Authenticator.account), so only a client that proved the password learns about those.

    PLAIN          RFC 4616   authzid \\0 authcid \\0 password
    LOGIN          (draft)    "Username:" / "Password:"
    CRAM-MD5       RFC 2195   <random.time@host>, answer "user hexdigest"
    SCRAM-SHA-256  RFC 7677   gs2 "n" or "y" (no channel binding), server-final sent as a
                              challenge whose answer must be empty (as SMTP and POP3 require)
An authorization identity other than the authentication identity is refused. Names are
login names: `bob` or `bob@` a mydestination domain (UserDB.canonical); Step.user is the
bare user name either way.

Authenticator(users, hostname): sasl_mechanisms(), sasl_is_plaintext(name),
sasl_server(name), verify_password(name, pw), verify_apop(name, timestamp, hexdigest),
account(name). offered_mechanisms(configured, tls_active, level): what to advertise now
(nothing before TLS when the level is `encrypt`). apop_timestamp(hostname).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

from store.passwords import saslprep
from store.users import User, UserDB

MAX_RESPONSE = 4096            # bytes of one decoded client message; SASL needs far less
SCRAM_NONCE_MAX = 256


@dataclass(frozen=True)
class Step:
    challenge: bytes | None = None
    user: str | None = None
    failed: bool = False
    reason: str = ""


def _fail(reason: str, user: str | None = None) -> Step:
    return Step(user=user, failed=True, reason=reason)


class Mechanism:
    name = ""
    plaintext = False          # the password itself crosses the wire

    def __init__(self, users: UserDB, hostname: str):
        self.users = users
        self.hostname = hostname
        self._over = False

    def step(self, response: bytes | None) -> Step:
        if self._over:
            return _fail("exchange already ended")
        if response is not None and len(response) > MAX_RESPONSE:
            return self._end(_fail("response too long"))
        try:
            return self._step(response)
        except (UnicodeDecodeError, ValueError, binascii.Error):
            return self._end(_fail("malformed response"))

    def _step(self, response: bytes | None) -> Step:
        raise NotImplementedError

    def _end(self, step: Step) -> Step:
        self._over = True
        return step

    def _canonical(self, name: str) -> str | None:
        """The user a login name means (`bob` or `bob@` a mydestination domain)."""
        return self.users.canonical(name)

    def _authorized(self, authzid: str, authcid: str) -> bool:
        return not authzid or self._canonical(authzid) == self._canonical(authcid)

    def _check_password(self, authzid: str, authcid: str, password: str) -> Step:
        user = self._canonical(authcid)
        if not authcid or not password:
            return self._end(_fail("empty name or password", authcid or None))
        if not self.users.verify_password(authcid, password) or user is None:
            return self._end(_fail("bad credentials", authcid))
        if not self._authorized(authzid, authcid):
            return self._end(_fail(f"may not act as {authzid!r}", user))
        return self._end(Step(user=user))


class Plain(Mechanism):
    name = "PLAIN"
    plaintext = True

    def _step(self, response: bytes | None) -> Step:
        if response is None:
            return Step(challenge=b"")
        parts = response.decode("utf-8").split("\0")
        if len(parts) != 3:
            return self._end(_fail("malformed PLAIN message"))
        authzid, authcid, password = parts
        return self._check_password(authzid, authcid, password)


class Login(Mechanism):
    name = "LOGIN"
    plaintext = True

    def __init__(self, users: UserDB, hostname: str):
        super().__init__(users, hostname)
        self._user: str | None = None

    def _step(self, response: bytes | None) -> Step:
        if self._user is None:
            if response is None:
                return Step(challenge=b"Username:")
            self._user = response.decode("utf-8")
            return Step(challenge=b"Password:")
        return self._check_password("", self._user, (response or b"").decode("utf-8"))


class CramMD5(Mechanism):
    name = "CRAM-MD5"

    def __init__(self, users: UserDB, hostname: str):
        super().__init__(users, hostname)
        self._challenge: bytes | None = None

    def _step(self, response: bytes | None) -> Step:
        if self._challenge is None:
            if response is not None:
                return self._end(_fail("CRAM-MD5 takes no initial response"))
            self._challenge = f"<{secrets.randbits(48)}.{int(time.time())}@{self.hostname}>".encode()
            return Step(challenge=self._challenge)
        name, _, digest = (response or b"").decode("utf-8").rpartition(" ")
        if len(digest) != 32 or not name:
            return self._end(_fail("malformed CRAM-MD5 answer", name or None))
        if not self.users.cram_md5(name, self._challenge, bytes.fromhex(digest)):
            return self._end(_fail("bad credentials", name))
        return self._end(Step(user=self._canonical(name)))


def server_nonce() -> str:
    """The server's part of the SCRAM nonce (printable, no ',')."""
    return base64.b64encode(secrets.token_bytes(18)).decode()


def _scram_attributes(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if len(key) != 1 or not sep:
            raise ValueError(f"bad SCRAM attribute {item!r}")
        pairs.append((key, value))
    return pairs


def _scram_name(value: str) -> str:
    """saslname: `=2C` is ',' and `=3D` is '='; any other '=' is an error (RFC 5802 5.1)."""
    if "=" in value.replace("=2C", "").replace("=3D", ""):
        raise ValueError("bad escape in SCRAM name")
    return saslprep(value.replace("=2C", ",").replace("=3D", "="))


class ScramSHA256(Mechanism):
    name = "SCRAM-SHA-256"

    def __init__(self, users: UserDB, hostname: str):
        super().__init__(users, hostname)
        self._stage = "client-first"

    def _step(self, response: bytes | None) -> Step:
        handler = {"client-first": self._client_first, "client-final": self._client_final,
                   "done": self._acknowledged}[self._stage]
        return handler(response)

    def _client_first(self, response: bytes | None) -> Step:
        if response is None:
            return Step(challenge=b"")
        text = response.decode("utf-8")
        flag, authzid, bare = self._split_gs2(text)
        if flag.startswith("p="):
            return self._end(_fail("channel binding is not supported"))
        attrs = _scram_attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            return self._end(_fail("client-first-message needs n= and r="))
        self._user = _scram_name(attrs[0][1])
        client_nonce = attrs[1][1]
        if not client_nonce or len(client_nonce) > SCRAM_NONCE_MAX or any(k == "m" for k, _ in attrs[2:]):
            return self._end(_fail("bad nonce or unsupported extension", self._user))
        authz = _scram_name(authzid) if authzid else ""
        if not self._authorized(authz, self._user):
            return self._end(_fail(f"may not act as {authz!r}", self._user))
        self._keys = self.users.scram_keys(self._user) or self.users.decoy_scram_keys(self._user)
        self._gs2_header = text[:len(text) - len(bare)]
        self._nonce = client_nonce + server_nonce()
        salt = base64.b64encode(self._keys.salt).decode()
        self._client_first_bare = bare
        self._server_first = f"r={self._nonce},s={salt},i={self._keys.iterations}"
        self._stage = "client-final"
        return Step(challenge=self._server_first.encode())

    @staticmethod
    def _split_gs2(text: str) -> tuple[str, str, str]:
        flag, _, rest = text.partition(",")
        authz, _, bare = rest.partition(",")
        if flag not in ("n", "y") and not flag.startswith("p="):
            raise ValueError("bad gs2 flag")
        if authz and not authz.startswith("a="):
            raise ValueError("bad gs2 authzid")
        return flag, authz[2:], bare

    def _client_final(self, response: bytes | None) -> Step:
        text = (response or b"").decode("utf-8")
        without_proof, sep, proof_text = text.rpartition(",p=")
        attrs = _scram_attributes(without_proof) if sep else []
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            return self._end(_fail("client-final-message needs c=, r= and p=", self._user))
        if base64.b64decode(attrs[0][1], validate=True) != self._gs2_header.encode():
            return self._end(_fail("channel binding data does not match", self._user))
        if attrs[1][1] != self._nonce:
            return self._end(_fail("nonce mismatch", self._user))
        proof = base64.b64decode(proof_text, validate=True)
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.new(self._keys.stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(signature):
            return self._end(_fail("bad credentials", self._user))
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._keys.stored_key):
            return self._end(_fail("bad credentials", self._user))
        verifier = hmac.new(self._keys.server_key, auth_message, hashlib.sha256).digest()
        self._stage = "done"
        return Step(challenge=b"v=" + base64.b64encode(verifier))

    def _acknowledged(self, response: bytes | None) -> Step:
        if response:
            return self._end(_fail("unexpected data after server-final-message", self._user))
        return self._end(Step(user=self._canonical(self._user)))


MECHANISMS: dict[str, type[Mechanism]] = {m.name: m for m in (ScramSHA256, CramMD5, Plain, Login)}


def decode_response(text: str) -> bytes | None:
    """A client's base64 SASL line (RFC 4954 / 5034): `=` is the empty response; None = bad base64."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def offered_mechanisms(configured: list[str], tls_active: bool, level: str) -> list[str]:
    """The configured mechanisms this module implements, in the configured order; none
    before TLS when the security level is `encrypt` (the password must not cross in clear)."""
    if level == "encrypt" and not tls_active:
        return []
    return [m.upper() for m in configured if m.upper() in MECHANISMS]


def apop_timestamp(hostname: str) -> str:
    """The greeting's `<pid.random.time@host>`: unique per session (RFC 1939 section 7)."""
    return f"<{os.getpid()}.{secrets.randbits(32)}.{int(time.time())}@{hostname}>"


class Authenticator:
    """What a protocol worker needs for logins, over one UserDB."""

    def __init__(self, users: UserDB, hostname: str):
        self.users = users
        self.hostname = hostname

    @classmethod
    def from_params(cls, params) -> "Authenticator":
        return cls(UserDB.from_params(params), params.myhostname)

    def sasl_mechanisms(self) -> list[str]:
        return list(MECHANISMS)

    def sasl_is_plaintext(self, name: str) -> bool:
        return MECHANISMS[name.upper()].plaintext

    def sasl_server(self, name: str) -> Mechanism:
        """KeyError for a mechanism not implemented here."""
        return MECHANISMS[name.upper()](self.users, self.hostname)

    def verify_password(self, name: str, password: str) -> bool:
        return self.users.verify_password(name, password)

    def verify_apop(self, name: str, timestamp: str, hexdigest: str) -> bool:
        secret = self.users.apop_secret(name)
        candidate = secret if secret is not None else secrets.token_hex(16)
        expected = hashlib.md5((timestamp + candidate).encode("utf-8")).hexdigest()
        return hmac.compare_digest(expected, hexdigest.lower()) and secret is not None

    def account(self, name: str) -> User | None:
        return self.users.get(name)

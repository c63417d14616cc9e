"""Server side of SASL and APOP: small state machines with no sockets, and what protocols use.

A mechanism is driven by the protocol (SMTP AUTH, POP3 AUTH, IMAP AUTHENTICATE):
    step(response: bytes | None) -> Step          resume(answer) -> Step
`response` is the client's decoded data; None means "no initial response" (the first call
only). Step.challenge: send it and call step() with the answer. Step.check: a credential
question (workers/_authchecks.py) for the verifier; call resume() with its answer. Step.user:
authenticated as that user. Step.failed: the exchange is over; Step.user then names who was
tried, and Step.reason says why, for the log only. The client must get the same answer for
an unknown user and a wrong password: reasons never distinguish them, and the checks cost
the same for both. Whether the user may log in with this protocol (enabled, its protocols)
comes with the verifier's answer (Verdict.refused): a failed Step with `refused` set proved
the credentials of a user who may not log in here, which only such a client may be told.

    PLAIN          RFC 4616   authzid \\0 authcid \\0 password
    LOGIN          (draft)    "Username:" / "Password:"
    CRAM-MD5       RFC 2195   <random.time@host>, answer "user hexdigest"
    SCRAM-SHA-256  RFC 7677   gs2 "n" or "y" (no channel binding), server-final sent as a
                              challenge whose answer must be empty (as SMTP and POP3 require)
An authorization identity other than the authentication identity is refused. Names are
login names: `bob` or `bob@` a mydestination domain (UserDB.canonical); Step.user is the
bare user name either way.

Protocols use an Authenticator(canonical, hostname, verifier, protocol) (from_params(params,
log, users, protocol): the auth service's RemoteVerifier when master.cf has one, else a
LocalVerifier over users; workers/_authremote.py): sasl_mechanisms(), sasl_is_plaintext(name),
sasl_server(name) -> SaslServer, whose `await step(response)` has the mechanism's checks
answered by the verifier (off the event loop, bounded, cached); `await
verify_password(name, pw)` and `await verify_apop(name, timestamp, hexdigest)` -> Verdict
(user None: wrong credentials; refused: may not log in with this protocol).
Those awaits raise workers._authpool.AuthUnavailable when the verifier cannot answer now:
the protocol answers its temporary failure and does not count a failed login. After a failed
login every protocol calls `await login_failed(conn)` (waits auth_failure_delay; the
per-client auth penalty is waited before, in conn.report_login).
offered_mechanisms(configured, tls_active, level): what to advertise now (nothing before
TLS when the level is `encrypt`). apop_timestamp(hostname).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from store.passwords import saslprep
from store.users import UserDB
from workers._authchecks import (ApopCheck, CramCheck, PasswordCheck, ScramLookup, ScramParams,
                                 ScramProof, Verdict)
from workers._authpool import Verifier
from workers._authremote import verifier_from_params

MAX_RESPONSE = 4096            # bytes of one decoded client message; SASL needs far less
SCRAM_NONCE_MAX = 256


@dataclass(frozen=True)
class Step:
    challenge: bytes | None = None
    user: str | None = None
    failed: bool = False
    reason: str = ""
    check: Any = None          # a workers._authchecks check: resume() with the verifier's answer
    refused: str = ""          # failed, yet the credentials were right: Verdict.refused


def _fail(reason: str, user: str | None = None) -> Step:
    return Step(user=user, failed=True, reason=reason)


class Mechanism:
    name = ""
    plaintext = False          # the password itself crosses the wire

    def __init__(self, canonical: Callable[[str], str | None], hostname: str):
        self.canonical = canonical     # login name -> user name or None (UserDB.canonical)
        self.hostname = hostname
        self._over = False
        self._then: Callable[[Any], Step] | None = None   # what to do with the pending check's answer

    def step(self, response: bytes | None) -> Step:
        if self._over or self._then is not None:
            return self._end(_fail("exchange already ended or waiting for a check"))
        if response is not None and len(response) > MAX_RESPONSE:
            return self._end(_fail("response too long"))
        try:
            return self._step(response)
        except (UnicodeDecodeError, ValueError, binascii.Error):
            return self._end(_fail("malformed response"))

    def resume(self, answer) -> Step:
        """Continue with the verifier's answer to the check of the last Step."""
        then, self._then = self._then, None
        if then is None or self._over:
            return self._end(_fail("no check was asked"))
        return then(answer)

    def _step(self, response: bytes | None) -> Step:
        raise NotImplementedError

    def _ask(self, check, then: Callable[[Any], Step]) -> Step:
        self._then = then
        return Step(check=check)

    def _end(self, step: Step) -> Step:
        self._over = True
        return step

    def _authorized(self, authzid: str, user: str | None) -> bool:
        return not authzid or self.canonical(authzid) == user

    def _verdict(self, verdict: Verdict, tried: str, authzid: str = "") -> Step:
        if verdict.user is None:
            return self._end(_fail("bad credentials", tried))
        if not self._authorized(authzid, verdict.user):
            return self._end(_fail(f"may not act as {authzid!r}", verdict.user))
        if verdict.refused:
            return self._refused(verdict)
        return self._end(Step(user=verdict.user))

    def _refused(self, verdict: Verdict) -> Step:
        return self._end(Step(user=verdict.user, failed=True, reason=f"account {verdict.refused}",
                              refused=verdict.refused))

    def _check_password(self, authzid: str, authcid: str, password: str) -> Step:
        if not authcid or not password:
            return self._end(_fail("empty name or password", authcid or None))
        return self._ask(PasswordCheck(authcid, password),
                         lambda verdict: self._verdict(verdict, authcid, authzid))


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

    def __init__(self, canonical: Callable[[str], str | None], hostname: str):
        super().__init__(canonical, hostname)
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

    def __init__(self, canonical: Callable[[str], str | None], hostname: str):
        super().__init__(canonical, hostname)
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
        return self._ask(CramCheck(name, self._challenge, bytes.fromhex(digest)),
                         lambda verdict: self._verdict(verdict, name))


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

    def __init__(self, canonical: Callable[[str], str | None], hostname: str):
        super().__init__(canonical, hostname)
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
        if not self._authorized(authz, self.canonical(self._user)):
            return self._end(_fail(f"may not act as {authz!r}", self._user))
        self._gs2_header = text[:len(text) - len(bare)]
        self._nonce = client_nonce + server_nonce()
        self._client_first_bare = bare
        return self._ask(ScramLookup(self._user), self._server_first)

    def _server_first(self, params: ScramParams) -> Step:
        self._params = params
        salt = base64.b64encode(params.salt).decode()
        self._server_first_message = f"r={self._nonce},s={salt},i={params.iterations}"
        self._stage = "client-final"
        return Step(challenge=self._server_first_message.encode())

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
        auth_message = f"{self._client_first_bare},{self._server_first_message},{without_proof}".encode()
        check = ScramProof(self._user, self._params.salt, self._params.iterations, auth_message, proof)
        return self._ask(check, self._server_final)

    def _server_final(self, verdict: Verdict) -> Step:
        if verdict.user is None:
            return self._end(_fail("bad credentials", self._user))
        if verdict.refused:
            return self._refused(verdict)
        self._verified = verdict.user
        self._stage = "done"
        return Step(challenge=b"v=" + base64.b64encode(verdict.server_signature))

    def _acknowledged(self, response: bytes | None) -> Step:
        if response:
            return self._end(_fail("unexpected data after server-final-message", self._user))
        return self._end(Step(user=self._verified))


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


async def login_failed(conn) -> None:
    """What every protocol does after a failed login (wrong credentials, not a temporary
    failure) and before it answers: wait auth_failure_delay, so guessing stays slow. (The
    master learns of every attempt, right or wrong, from conn.report_login.)"""
    await asyncio.sleep(conn.params.auth_failure_delay)


class SaslServer:
    """A mechanism whose checks the verifier answers: `await step(response)` gives a Step
    with a challenge, a user or a failure, never one with a check. AuthUnavailable from the
    verifier passes through."""

    def __init__(self, mechanism: Mechanism, verifier: Verifier, protocol: str):
        self.mechanism = mechanism
        self.verifier = verifier
        self.protocol = protocol

    async def step(self, response: bytes | None) -> Step:
        step = self.mechanism.step(response)
        if step.check is not None:             # a mechanism asks at most one check per step
            step = self.mechanism.resume(await self.verifier.verify(step.check, self.protocol))
        return step


class Authenticator:
    """What a protocol worker needs for logins: login names and the verifier."""

    def __init__(self, canonical: Callable[[str], str | None], hostname: str, verifier: Verifier, protocol: str):
        self.canonical = canonical
        self.hostname = hostname
        self.verifier = verifier
        self.protocol = protocol            # smtp, pop or imap: what the verifier checks allowances for

    @classmethod
    def from_params(cls, params, log, users: UserDB, protocol: str) -> "Authenticator":
        return cls(users.canonical, params.myhostname, verifier_from_params(params, users, log), protocol)

    def sasl_mechanisms(self) -> list[str]:
        return list(MECHANISMS)

    def sasl_is_plaintext(self, name: str) -> bool:
        return MECHANISMS[name.upper()].plaintext

    def sasl_server(self, name: str) -> SaslServer:
        """KeyError for a mechanism not implemented here."""
        return SaslServer(MECHANISMS[name.upper()](self.canonical, self.hostname), self.verifier, self.protocol)

    async def verify_password(self, name: str, password: str) -> Verdict:
        """USER/PASS, IMAP LOGIN."""
        return await self.verifier.verify(PasswordCheck(name, password), self.protocol)

    async def verify_apop(self, name: str, timestamp: str, hexdigest: str) -> Verdict:
        return await self.verifier.verify(ApopCheck(name, timestamp, hexdigest), self.protocol)

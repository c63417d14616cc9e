"""SASL server mechanisms against RFC test vectors and the clients of Python's stdlib and scramp.

Most tests drive the mechanisms synchronously and answer their checks in place (what the
verifier's thread does); the Authenticator tests go through the real verifier.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import hashlib
import imaplib
import smtplib
import types

import pytest
import scramp

from store.passwords import ScramKeys
from store.users import User, UserDB
from workers import _auth
from workers._auth import Authenticator, SaslServer, offered_mechanisms
from workers._authcache import VerifiedCache
from workers._authpool import LocalVerifier
from workers._authchecks import Verdict

HOST = "mail.example.test"


class Silent:
    def debug(self, text): pass


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    users = UserDB(str(root / "users"), str(root / "secret.key"), ["example.test"])
    users.add(User("bob"), "s3cret pw")
    users.add(User("user"), "pencil")
    users.add(User("nopw"))
    users.add(User("off", enabled=False), "s3cret pw")
    users.add(User("imaponly", protocols=["imap"]), "s3cret pw")
    yield users
    users.close()


class InPlace:
    """A mechanism whose checks are answered at once, by check.answer(users)."""

    def __init__(self, mechanism, users):
        self.mechanism = mechanism
        self.users = users

    def step(self, response):
        step = self.mechanism.step(response)
        return self.mechanism.resume(step.check.answer(self.users)) if step.check else step


@pytest.fixture(scope="module")
def auth(users):
    return types.SimpleNamespace(
        sasl_server=lambda name: InPlace(_auth.MECHANISMS[name.upper()](users.canonical, HOST), users))


@pytest.fixture(scope="module")
def authenticator(users):
    return Authenticator(users.canonical, HOST, LocalVerifier(users, 1, 4, VerifiedCache(0, 0), Silent()), "pop")


def run(mechanism, responses):
    """Feed responses (the first may be None = no initial response); return every Step."""
    steps = []
    for response in responses:
        steps.append(mechanism.step(response))
        if steps[-1].failed or steps[-1].user:
            break
    return steps


# ---------------------------------------------------------------- PLAIN and LOGIN

def test_plain_with_initial_response(auth):
    step = auth.sasl_server("PLAIN").step(b"\0bob\0s3cret pw")
    assert step.user == "bob" and not step.failed


def test_every_mechanism_takes_a_login_with_a_local_domain(auth):
    """bob@example.test (a mydestination domain) is bob; another domain is nobody."""
    assert auth.sasl_server("PLAIN").step(b"\0bob@example.test\0s3cret pw").user == "bob"
    assert auth.sasl_server("PLAIN").step(b"bob\0BOB@example.test\0s3cret pw").user == "bob"
    assert auth.sasl_server("PLAIN").step(b"\0bob@elsewhere.example\0s3cret pw").failed
    login = auth.sasl_server("LOGIN")
    assert run(login, [None, b"bob@example.test", b"s3cret pw"])[-1].user == "bob"
    assert scramp_login(auth, "bob@example.test", "s3cret pw").user == "bob"
    cram = auth.sasl_server("CRAM-MD5")
    challenge = cram.step(None).challenge
    digest = hmac.new(b"s3cret pw", challenge, "md5").hexdigest()
    assert cram.step(f"bob@example.test {digest}".encode()).user == "bob"


def test_plain_without_initial_response_gets_empty_challenge(auth):
    steps = run(auth.sasl_server("PLAIN"), [None, b"bob\0BOB\0s3cret pw"])
    assert steps[0].challenge == b"" and steps[1].user == "bob"


@pytest.mark.parametrize("message", [b"\0bob\0wrong", b"\0nobody\0s3cret pw", b"\0nopw\0anything",
                                     b"bob\0s3cret pw", b"\0\0", b"\0bob\0"])
def test_plain_failures_look_alike(auth, message):
    step = auth.sasl_server("PLAIN").step(message)
    assert step.failed and step.user in (None, "bob", "nobody", "nopw", "")
    assert step.challenge is None


def test_plain_refuses_other_authorization_identity(auth):
    step = auth.sasl_server("PLAIN").step(b"user\0bob\0s3cret pw")
    assert step.failed and "act as" in step.reason


def test_plain_as_smtplib_sends_it(auth):
    client = types.SimpleNamespace(user="bob", password="s3cret pw")
    line = smtplib.SMTP.auth_plain(client)
    assert auth.sasl_server("PLAIN").step(line.encode()).user == "bob"


def test_login_as_smtplib_sends_it(auth):
    client = types.SimpleNamespace(user="bob", password="s3cret pw", _auth_challenge_count=1)
    mechanism = auth.sasl_server("LOGIN")
    first = mechanism.step(None)
    second = mechanism.step(smtplib.SMTP.auth_login(client, first.challenge).encode())
    client._auth_challenge_count = 2          # what smtplib.SMTP.auth() counts
    third = mechanism.step(smtplib.SMTP.auth_login(client, second.challenge).encode())
    assert (first.challenge, second.challenge, third.user) == (b"Username:", b"Password:", "bob")


def test_login_with_initial_username(auth):
    steps = run(auth.sasl_server("LOGIN"), [b"bob", b"wrong"])
    assert steps[0].challenge == b"Password:" and steps[1].failed


def test_ended_exchange_stays_ended(auth):
    mechanism = auth.sasl_server("PLAIN")
    assert mechanism.step(b"\0bob\0s3cret pw").user == "bob"
    assert mechanism.step(b"\0bob\0s3cret pw").failed


def test_oversized_and_non_utf8_responses_fail_cleanly(auth):
    assert auth.sasl_server("PLAIN").step(b"\0bob\0" + b"x" * 10_000).failed
    assert auth.sasl_server("PLAIN").step(b"\0b\xffob\0pw").reason == "malformed response"


# ---------------------------------------------------------------- CRAM-MD5

def test_cram_md5_rfc2195_vector():
    """RFC 2195 section 2: user tim, secret tanstaaftanstaaf."""
    from store.passwords import cram_md5_digest, make_cram_md5
    form = make_cram_md5("tanstaaftanstaaf")
    users = types.SimpleNamespace(canonical=str.lower,
                                  cram_md5=lambda name, challenge, digest: cram_md5_digest(form, challenge) == digest)
    mechanism = InPlace(_auth.CramMD5(str.lower, "postoffice.reston.mci.net"), users)
    mechanism.step(None)
    mechanism.mechanism._challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    answer = base64.b64decode("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
    assert mechanism.step(answer).user == "tim"


def test_cram_md5_as_smtplib_and_imaplib_answer(auth):
    for answer in (smtplib.SMTP.auth_cram_md5, imaplib.IMAP4._CRAM_MD5_AUTH):
        client = types.SimpleNamespace(user="bob", password="s3cret pw")
        mechanism = auth.sasl_server("CRAM-MD5")
        challenge = mechanism.step(None).challenge
        assert challenge.startswith(b"<") and challenge.endswith(b"@mail.example.test>")
        response = answer(client, challenge)
        assert mechanism.step(response if isinstance(response, bytes) else response.encode()).user == "bob"


@pytest.mark.parametrize("name,password", [("bob", "wrong"), ("nobody", "s3cret pw"), ("nopw", "")])
def test_cram_md5_failures(auth, name, password):
    client = types.SimpleNamespace(user=name, password=password)
    mechanism = auth.sasl_server("CRAM-MD5")
    challenge = mechanism.step(None).challenge
    assert mechanism.step(smtplib.SMTP.auth_cram_md5(client, challenge).encode()).failed


def test_cram_md5_rejects_initial_response_and_garbage(auth):
    assert auth.sasl_server("CRAM-MD5").step(b"bob 00").failed
    mechanism = auth.sasl_server("CRAM-MD5")
    mechanism.step(None)
    assert mechanism.step(b"bob zz").failed


# ---------------------------------------------------------------- SCRAM-SHA-256

def test_scram_sha256_rfc7677_vector(monkeypatch):
    """RFC 7677 section 3: user "user", password "pencil"."""
    keys = ScramKeys.derive("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    users = types.SimpleNamespace(scram_keys=lambda name: keys if name == "user" else None, canonical=str.lower)
    monkeypatch.setattr(_auth, "server_nonce", lambda: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    mechanism = InPlace(_auth.ScramSHA256(str.lower, "example.test"), users)
    first = mechanism.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first.challenge == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                               b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = mechanism.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                           b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final.challenge == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert mechanism.step(b"").user == "user"


def scramp_login(auth, name, password, gs2_flag=None):
    client = scramp.ScramClient(["SCRAM-SHA-256"], name, password)
    mechanism = auth.sasl_server("SCRAM-SHA-256")
    assert mechanism.step(None).challenge == b""
    client_first = client.get_client_first()
    if gs2_flag:
        client_first = gs2_flag + client_first[1:]
    server_first = mechanism.step(client_first.encode())
    if server_first.failed:
        return server_first
    client.set_server_first(server_first.challenge.decode())
    server_final = mechanism.step(client.get_client_final().encode())
    if server_final.failed:
        return server_final
    client.set_server_final(server_final.challenge.decode())   # raises if the server's proof is bad
    return mechanism.step(b"")


def test_scram_with_scramp_client(auth):
    assert scramp_login(auth, "bob", "s3cret pw").user == "bob"


@pytest.mark.parametrize("name,password", [("bob", "wrong"), ("nobody", "s3cret pw"), ("nopw", "x")])
def test_scram_failures(auth, name, password):
    step = scramp_login(auth, name, password)
    assert step.failed and step.reason == "bad credentials"


def test_scram_unknown_user_gets_a_stable_salt(auth):
    def salt_of(name):
        challenge = auth.sasl_server("SCRAM-SHA-256").step(f"n,,n={name},r=abc".encode()).challenge
        return challenge.split(b",")[1]
    assert salt_of("nobody") == salt_of("nobody") != salt_of("someone")


def test_scram_channel_binding_and_bad_messages(auth):
    assert auth.sasl_server("SCRAM-SHA-256").step(b"p=tls-unique,,n=bob,r=abc").failed
    assert auth.sasl_server("SCRAM-SHA-256").step(b"n,,n=bob").failed
    assert auth.sasl_server("SCRAM-SHA-256").step(b"n,,n=b=2Xob,r=abc").failed
    assert auth.sasl_server("SCRAM-SHA-256").step(b"n,a=user,n=bob,r=abc").failed
    assert auth.sasl_server("SCRAM-SHA-256").step(b"n,,n=bob,r=abc,m=ext").failed
    assert auth.sasl_server("SCRAM-SHA-256").step(b"x,,n=bob,r=abc").failed


def test_scram_y_flag_must_match_in_client_final(auth):
    """gs2 'y' is accepted, but c= must carry the same header the client sent first."""
    mechanism = auth.sasl_server("SCRAM-SHA-256")
    first = mechanism.step(b"y,,n=bob,r=abc").challenge.decode()
    nonce = first.split(",")[0][2:]
    assert mechanism.step(f"c=biws,r={nonce},p=AAAA".encode()).reason == "channel binding data does not match"
    assert scramp_login(auth, "bob", "s3cret pw", gs2_flag="y").user == "bob"


def test_scram_data_after_server_final_fails(auth):
    client = scramp.ScramClient(["SCRAM-SHA-256"], "bob", "s3cret pw")
    mechanism = auth.sasl_server("SCRAM-SHA-256")
    client.set_server_first(mechanism.step(client.get_client_first().encode()).challenge.decode())
    assert mechanism.step(client.get_client_final().encode()).challenge.startswith(b"v=")
    assert mechanism.step(b"extra").failed


# ---------------------------------------------------------------- APOP and policy

def test_apop(authenticator):
    stamp = _auth.apop_timestamp("mail.example.test")
    digest = hashlib.md5((stamp + "s3cret pw").encode()).hexdigest()

    def apop(name, hexdigest):
        return asyncio.run(authenticator.verify_apop(name, stamp, hexdigest)).user
    assert apop("bob", digest) == "bob"
    assert apop("BOB", digest.upper()) == "bob"
    assert apop("bob", hashlib.md5(b"x").hexdigest()) is None
    assert apop("nobody", digest) is None
    assert apop("nopw", hashlib.md5(stamp.encode()).hexdigest()) is None


def test_apop_rfc1939_example_digest():
    stamp = "<1896.697170952@dbc.mtview.ca.us>"
    assert hashlib.md5((stamp + "tanstaaf").encode()).hexdigest() == "c4c9334bac560ecc979e58001b3e22fb"


def test_offered_mechanisms():
    configured = ["scram-sha-256", "CRAM-MD5", "PLAIN", "LOGIN", "CLEAR", "APOP"]
    assert offered_mechanisms(configured, False, "may") == ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
    assert offered_mechanisms(configured, False, "encrypt") == []
    assert offered_mechanisms(configured, True, "encrypt") == ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
    assert offered_mechanisms(["PLAIN"], False, "none") == ["PLAIN"]


def test_mechanism_table(authenticator):
    assert authenticator.sasl_is_plaintext("plain") and authenticator.sasl_is_plaintext("LOGIN")
    assert not authenticator.sasl_is_plaintext("CRAM-MD5") and not authenticator.sasl_is_plaintext("SCRAM-SHA-256")
    with pytest.raises(KeyError):
        authenticator.sasl_server("GSSAPI")


# ---------------------------------------------------------------- through the verifier

def test_password_and_every_mechanism_through_the_verifier(authenticator):
    """The protocols' way: SaslServer.step awaits the checks; a Step never carries one."""
    assert asyncio.run(authenticator.verify_password("Bob@Example.Test", "s3cret pw")) == Verdict("bob")
    assert asyncio.run(authenticator.verify_password("bob", "wrong")).user is None
    assert asyncio.run(authenticator.verify_password("nobody", "s3cret pw")).user is None

    async def scram(name, password):
        server = authenticator.sasl_server("SCRAM-SHA-256")
        client = scramp.ScramClient(["SCRAM-SHA-256"], name, password)
        first = await server.step(client.get_client_first().encode())
        client.set_server_first(first.challenge.decode())
        final = await server.step(client.get_client_final().encode())
        if final.failed:
            return final
        client.set_server_final(final.challenge.decode())
        return await server.step(b"")

    async def plain(message):
        return await authenticator.sasl_server("PLAIN").step(message)

    assert isinstance(authenticator.sasl_server("plain"), SaslServer)
    assert asyncio.run(plain(b"\0bob\0s3cret pw")).user == "bob"
    assert asyncio.run(plain(b"\0bob\0wrong")).failed
    assert asyncio.run(scram("bob", "s3cret pw")).user == "bob"
    assert asyncio.run(scram("bob", "wrong")).reason == "bad credentials"


def test_a_mechanism_takes_no_client_data_while_a_check_is_pending(users):
    plain = _auth.Plain(users.canonical, HOST)
    assert plain.step(b"\0bob\0s3cret pw").check is not None
    assert plain.step(b"\0bob\0s3cret pw").failed
    assert _auth.Plain(users.canonical, HOST).resume(None).failed      # nothing was asked


def test_scram_proof_fails_when_the_password_changed_during_the_exchange(tmp_path):
    db = UserDB(str(tmp_path / "users"), str(tmp_path / "secret.key"))
    try:
        db.add(User("bob"), "old")
        mechanism = InPlace(_auth.ScramSHA256(db.canonical, HOST), db)
        client = scramp.ScramClient(["SCRAM-SHA-256"], "bob", "old")
        client.set_server_first(mechanism.step(client.get_client_first().encode()).challenge.decode())
        db.set_password("bob", "new")
        assert mechanism.step(client.get_client_final().encode()).reason == "bad credentials"
    finally:
        db.close()


def test_the_verifier_refuses_an_account_that_may_not_log_in_with_the_protocol(authenticator):
    """Right credentials of a disabled user, or one without pop: a failed Step that says why."""
    assert asyncio.run(authenticator.verify_password("off", "s3cret pw")) == Verdict("off", refused="disabled")
    assert asyncio.run(authenticator.verify_password("imaponly", "s3cret pw")).refused == "pop-not-allowed"
    assert asyncio.run(authenticator.verify_password("imaponly", "wrong")) == Verdict(None)
    step = asyncio.run(authenticator.sasl_server("PLAIN").step(b"\0imaponly\0s3cret pw"))
    assert (step.failed, step.user, step.refused) == (True, "imaponly", "pop-not-allowed")
    smtp = Authenticator(authenticator.canonical, HOST, authenticator.verifier, "smtp")
    assert asyncio.run(smtp.sasl_server("PLAIN").step(b"\0imaponly\0s3cret pw")).user == "imaponly"
    assert asyncio.run(smtp.sasl_server("PLAIN").step(b"\0off\0s3cret pw")).refused == "disabled"

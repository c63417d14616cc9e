"""Properties of SASL on the server side (workers/_auth.py and the checks of _authchecks.py).

decode_response: any text gives bytes or None, never an exception; what base64 encodes
decodes back, and `=` is the empty response.
The mechanisms, driven through Authenticator.sasl_server as the protocols drive them, with
any sequence of client messages: every step is a challenge, a success or a failure, after
the end there are only failures, and a success names exactly the user whose password was
proved. PLAIN and LOGIN are checked against a model of RFC 4616 and the LOGIN draft;
CRAM-MD5 and SCRAM-SHA-256 by honest clients whose answer is then mutated: the login holds
exactly when the mutation leaves the proof as it was (same name, same digest or proof).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac

import pytest
import scramp
from hypothesis import example, given, strategies as st

from store.passwords import normalize_password
from tests.fuzz.accounts import LOGIN_DOMAIN, USERS, authenticator, cheap_user_db
from tests.fuzz.budget import fuzz_settings
from workers._auth import MAX_RESPONSE, MECHANISMS, decode_response

NAMES = ["bob", "BOB", f"bob@{LOGIN_DOMAIN}", f"Bob@{LOGIN_DOMAIN.upper()}.", " bob ", "carol", "nobody", "",
         "bob@elsewhere.example", "b\u00f6b", "bob\x00"]
SECRETS = [*USERS.values(), "", "wrong", "S3CRET PW", "s3cret\u00a0pw", "s3cret pw "]
SCRAM_PARTS = ["n,,", "y,,", "p=tls-unique,,", "n,a=bob,", "n=bob", "n=b=2Cob", "r=abc", "c=biws", "p=AAAA", ","]


@pytest.fixture(scope="module")
def auth(tmp_path_factory):
    with cheap_user_db(str(tmp_path_factory.mktemp("sasl"))) as users:
        yield authenticator(users)


def drive(auth, mechanism: str, responses: list[bytes | None]) -> list:
    async def exchange():
        server = auth.sasl_server(mechanism)
        return [await server.step(response) for response in responses]
    return asyncio.run(exchange())


def check_steps(steps) -> str | None:
    """Each step a challenge, a success or a failure; only failures after the end. -> who logged in."""
    user, ended = None, False
    for step in steps:
        assert step.check is None, step
        if ended:
            assert step.failed and step.user is None, step
        elif step.failed:
            assert step.challenge is None, step
            ended = True
        elif step.user is not None:
            assert step.challenge is None, step
            user, ended = step.user, True
        else:
            assert isinstance(step.challenge, bytes), step
    return user


def proved(users, login: str, password: str) -> str | None:
    """The user a login name and password prove (the password as SASLprep compares it)."""
    user = users.canonical(login)
    if user in USERS and password and "\0" not in password \
            and normalize_password(password) == normalize_password(USERS[user]):
        return user
    return None


def decoded(message: bytes | None) -> str | None:
    try:
        return None if message is None or len(message) > MAX_RESPONSE else message.decode("utf-8")
    except UnicodeDecodeError:
        return None


def expected_user(users, mechanism: str, responses: list[bytes | None]) -> str | None:
    """Who a client proves with these messages under PLAIN or LOGIN (None for the others)."""
    messages = responses[1:] if responses[0] is None else responses
    if mechanism == "PLAIN" and messages:
        text = decoded(messages[0])
        parts = text.split("\0") if text is not None else []
        if len(parts) != 3:
            return None
        authzid, authcid, password = parts
        user = proved(users, authcid, password)
        return user if not authzid or users.canonical(authzid) == user else None
    if mechanism == "LOGIN" and len(messages) >= 2:
        name, password = decoded(messages[0]), decoded(messages[1])
        return proved(users, name, password) if name and password is not None else None
    return None


def check_exchange(auth, mechanism: str, responses: list[bytes | None]) -> None:
    steps = drive(auth, mechanism, responses)
    assert check_steps(steps) == expected_user(auth.verifier.users, mechanism, responses)


def check_decode(text: str) -> None:
    result = decode_response(text)
    assert result is None or isinstance(result, bytes)
    if result is not None:
        assert decode_response(base64.b64encode(result).decode() or "=") == result


text_part = st.one_of(st.sampled_from(NAMES + SECRETS + SCRAM_PARTS), st.text(max_size=12))
plain_message = st.lists(text_part, min_size=1, max_size=4).map(lambda parts: "\0".join(parts).encode())
client_message = st.one_of(plain_message, text_part.map(str.encode), st.binary(max_size=64),
                           st.lists(st.sampled_from(SCRAM_PARTS), max_size=5).map(lambda p: ",".join(p).encode()),
                           st.just(b"x" * (MAX_RESPONSE + 1)))
responses = st.tuples(st.none() | client_message, st.lists(client_message, max_size=4)).map(
    lambda t: [t[0], *t[1]])


@fuzz_settings(200)
@given(mechanism=st.sampled_from(sorted(MECHANISMS)), responses=responses)
@example(mechanism="PLAIN", responses=[b"bob\0bob@example.test\0s3cret pw"])
@example(mechanism="PLAIN", responses=[None, b"\0BOB\0s3cret\xc2\xa0pw"])
@example(mechanism="LOGIN", responses=[None, b" bob ", b"s3cret pw", b"again"])
@example(mechanism="LOGIN", responses=[None, b"bob", b"s3cret pw" + b"\0" * 23])     # found by atheris
@example(mechanism="SCRAM-SHA-256", responses=[b"n,,n=bob,r=abc", b"c=biws,r=abc,p=AAAA"])
def test_any_client_messages(auth, mechanism, responses):
    check_exchange(auth, mechanism, responses)


def mutate(data: bytes, edit: tuple[str, int, int]) -> bytes:
    kind, position, value = edit
    at = position % (len(data) + 1)
    if kind == "insert":
        return data[:at] + bytes([value]) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + 1:]
    return data[:at] + bytes([value]) + data[at + 1:]


edits = st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 200), st.integers(0, 255))


@fuzz_settings(100)
@given(login=st.sampled_from(NAMES[:6]), edit=st.none() | edits)
def test_cram_md5_holds_exactly_for_the_right_digest(auth, login, edit):
    user = auth.verifier.users.canonical(login)

    async def exchange():
        server = auth.sasl_server("CRAM-MD5")
        first = await server.step(None)
        digest = hmac.new(USERS[user].encode(), first.challenge, "md5")
        answer = f"{login} {digest.hexdigest()}".encode()
        sent = mutate(answer, edit) if edit else answer
        return [first, await server.step(sent)], digest.digest(), sent
    steps, right, sent = asyncio.run(exchange())
    name, _, hexdigest = (decoded(sent) or "").rpartition(" ")
    try:
        same = len(hexdigest) == 32 and bytes.fromhex(hexdigest) == right and auth.verifier.users.canonical(name) == user
    except ValueError:
        same = False
    assert check_steps(steps) == (user if same else None)


def same_proof(original: bytes, sent: bytes) -> bool:
    """Does the mutated client-final message say what the original said?"""
    text = decoded(sent)
    if text is None:
        return False
    head, sep, proof = text.rpartition(",p=")
    original_head, _, original_proof = original.decode().rpartition(",p=")
    try:
        return bool(sep) and head == original_head and base64.b64decode(proof, validate=True) == \
            base64.b64decode(original_proof)
    except binascii.Error:
        return False


@fuzz_settings(40)
@given(login=st.sampled_from(["bob", "BOB", f"bob@{LOGIN_DOMAIN}", "carol"]), edit=st.none() | edits)
def test_scram_holds_exactly_for_the_right_proof(auth, login, edit):
    user = auth.verifier.users.canonical(login)
    client = scramp.ScramClient(["SCRAM-SHA-256"], login, USERS[user])

    async def exchange():
        server = auth.sasl_server("SCRAM-SHA-256")
        first = await server.step(client.get_client_first().encode())
        client.set_server_first(first.challenge.decode())
        final = client.get_client_final().encode()
        sent = mutate(final, edit) if edit else final
        steps = [first, await server.step(sent)]
        if steps[-1].challenge is not None:
            client.set_server_final(steps[-1].challenge.decode())   # scramp checks the server's proof
            steps.append(await server.step(b""))
        return steps, final, sent
    steps, final, sent = asyncio.run(exchange())
    assert check_steps(steps) == (user if same_proof(final, sent) else None)


@fuzz_settings(150)
@given(st.one_of(st.text(max_size=40), st.text("ABCabc019+/=", max_size=40), st.binary(max_size=40).map(
    lambda b: base64.b64encode(b).decode())))
@example("=")
@example("QQ")
@example("QR==")
@example("\u0661=")
def test_decode_response_is_total(text):
    check_decode(text)


@fuzz_settings(150)
@given(st.binary(max_size=200))
def test_decode_response_round_trip(data):
    assert decode_response(base64.b64encode(data).decode() or "=") == data

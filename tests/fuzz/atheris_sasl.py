"""Coverage-guided fuzzing of the SASL mechanisms and decode_response (workers/_auth.py); see harness.py.

An input's first octet picks the mechanism (low bits) and whether the exchange starts
without an initial response (high bit); the rest, cut at LF, are the client's messages.
Checked as in test_sasl.py: steps well formed, and a login exactly when the model says
the password was proved. The whole input, read as Latin-1 text, also goes through
decode_response. Seeds: honest and broken PLAIN, LOGIN, CRAM-MD5 and SCRAM messages.
"""
from __future__ import annotations

import contextlib

import atheris

from tests.fuzz import harness

with atheris.instrument_imports(include=["workers", "store"]):
    from tests.fuzz.accounts import authenticator, cheap_user_db
    from tests.fuzz.test_sasl import check_decode, check_exchange
    from workers._auth import MECHANISMS

ORDER = sorted(MECHANISMS)
MAX_MESSAGES = 6


def one_input(data: bytes) -> None:
    if not data:
        return
    messages = data[1:].split(b"\n")[:MAX_MESSAGES]
    check_exchange(AUTH, ORDER[data[0] % len(ORDER)], [None, *messages] if data[0] & 0x80 else messages)
    check_decode(data.decode("latin-1"))


def seeds():
    def pick(name: str, first_is_none: bool = False) -> bytes:
        return bytes([ORDER.index(name) | (0x80 if first_is_none else 0)])
    yield pick("PLAIN") + b"\0bob\0s3cret pw"
    yield pick("PLAIN", True) + b"bob@example.test\0bob\0s3cret pw"
    yield pick("LOGIN", True) + b"bob\ns3cret pw"
    yield pick("CRAM-MD5", True) + b"bob 0123456789abcdef0123456789abcdef"
    yield pick("SCRAM-SHA-256") + b"n,,n=bob,r=rOprNGfwEbeRWgbNEkqO\nc=biws,r=rOprNGfwEbeRWgbNEkqO,p=AAAA\n"
    yield pick("SCRAM-SHA-256") + b"y,a=bob,n=b=2Cob,r=x,m=ext"


if __name__ == "__main__":
    with contextlib.ExitStack() as stack:
        AUTH = authenticator(stack.enter_context(cheap_user_db(harness.scratch("sasl"))))
        harness.run("sasl", one_input, seeds())

"""Properties of a whole smtpd session (workers/smtpd/session.py) under any client stream.

The session is driven through the fake transport of tests/unit/workers/smtpd/test_smtpd_session.py, with
the real SASL mechanisms (tests/fuzz/accounts.py) behind AUTH.
In step: every reply line is a well-formed SMTP reply (code, `-` or space, printable text)
and every final reply answers exactly one unit of the client's input, in order: a command
line, the line after a 334 challenge, or after a 354 the message up to the first
<CRLF>.<CRLF>. Nothing is answered twice, nothing is skipped, nothing comes after 221 or
421, and when the session ends on its own the input is used up. A pipelining client can
therefore never be desynchronised, whatever it sends.
Queued mail: one queue file per `250 ... queued` reply, and those replies only end a message.
Smuggling: a message whose body hides a whole second transaction behind any mix of fake
ends of data (bare LF, bare CR, ...) is queued once, with the smuggled commands inside it.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, strategies as st

from tests.fuzz.accounts import authenticator, cheap_user_db
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.seeds import FAKE_ENDS, SMTP_SESSIONS, TRANSACTION
from tests.fuzz.test_smtp_data import END, end_of_data
from tests.unit.workers.smtpd.test_smtpd_session import FakeBackend, run
from workers.smtpd.session import COMMANDS

REPLY = re.compile(r"([2-5]\d\d)([ -])[\x20-\x7e]*")
SETTINGS = {"smtpd_hard_error_limit": "1000"}     # the 421 for too many errors is tested elsewhere


@dataclass
class Backend(FakeBackend):
    """The unit tests' fake, with the real mechanisms for AUTH."""
    auth: object = None

    def sasl_server(self, name):
        return self.auth.sasl_server(name)


@pytest.fixture(scope="module")
def auth(tmp_path_factory):
    with cheap_user_db(str(tmp_path_factory.mktemp("smtp-users"))) as users:
        yield authenticator(users)


def next_unit(stream: bytes, pos: int, previous: str) -> int | None:
    """Where the unit of input that answers to `previous` ends; None: the input ran out."""
    if previous.startswith("354"):
        end = end_of_data(stream[pos:])
        return None if end is None else pos + end
    if pos >= len(stream):
        return None
    newline = stream.find(b"\n", pos)
    return len(stream) if newline < 0 else newline + 1


def check_in_step(stream: bytes, lines: list[str], queued_files: int) -> None:
    finals = []
    for line in lines:
        match = REPLY.fullmatch(line)
        assert match, f"malformed reply line {line!r}"
        assert not finals or finals[-1][3] == " " or finals[-1][:3] == line[:3], "code changed inside a reply"
        finals.append(line)
    finals = [line for line in finals if line[3] == " "]
    assert finals[0].startswith("220 ")
    pos, previous, queued = 0, finals[0], 0
    for reply in finals[1:]:
        assert not previous.startswith(("221", "421")), f"{reply!r} after the session ended"
        end = next_unit(stream, pos, previous)
        assert end is not None, f"{reply!r} answers no input"
        is_verdict = previous.startswith("354")
        queued += "queued as" in reply
        assert is_verdict or "queued as" not in reply
        pos, previous = end, reply
    if not previous.startswith(("221", "421")):
        assert next_unit(stream, pos, previous) is None, f"input left unanswered: {stream[pos:pos + 60]!r}"
    assert queued == queued_files


def check_session(auth, stream: bytes) -> tuple[list[str], Backend]:
    lines, _, backend = run(stream, Backend(auth=auth), **SETTINGS)
    check_in_step(stream, lines, len(backend.committed))
    return lines, backend


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


VERBS = sorted(COMMANDS) + ["XYZZY", "", "MAIL FROM:<a@b.example>"]
ARGUMENTS = ["FROM:<a@b.example>", "FROM:<>", "FROM:<a@b.example> SIZE=100 BODY=8BITMIME",
             "FROM:<a@b.example> SIZE=99999", "TO:<bob@example.test>", "TO:<carol@example.test>", "TO:<nobody@example.test>",
             "TO:<x@remote.example>", "TO:<Postmaster>", "TO:<bob@example.test> NOTIFY=NEVER", "c.example",
             "PLAIN", "PLAIN " + b64(b"\0bob\0s3cret pw"), "PLAIN " + b64(b"\0bob\0wrong"), "PLAIN =", "LOGIN",
             "LOGIN " + b64(b"bob"), "CRAM-MD5", "SCRAM-SHA-256", "x" * 600]
command = st.tuples(st.sampled_from(VERBS), st.sampled_from([str.upper, str.lower, str.title]),
                    st.none() | st.sampled_from(ARGUMENTS) | st.text(st.characters(max_codepoint=0xFF), max_size=20),
                    st.sampled_from(["\r\n", "\n"])).map(
    lambda t: (t[1](t[0]) + (" " + t[2] if t[2] is not None else "") + t[3]).encode("latin-1"))
auth_answer = st.sampled_from([b"*\r\n", b"=\r\n", b64(b"bob").encode() + b"\r\n", b64(b"s3cret pw").encode() + b"\r\n",
                               b"!!\r\n", b"A" * 13000 + b"\r\n"])
body_token = st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..\r\n", b"x" * 50, *FAKE_ENDS])
message = st.lists(body_token, max_size=12).map(lambda tokens: b"".join(tokens) + END)
unit = st.one_of(command, command, auth_answer, message, st.just(b"EHLO c\r\n" + TRANSACTION),
                 st.binary(max_size=30), st.sampled_from(SMTP_SESSIONS))


@fuzz_settings(80)
@given(st.lists(unit, max_size=12).map(b"".join))
def test_replies_stay_in_step_with_the_input(auth, stream):
    check_session(auth, stream)


@fuzz_settings(50)
@given(st.lists(st.one_of(body_token, st.just(TRANSACTION), st.just(b"Subject: x\r\n\r\n")), max_size=25).map(
    b"".join).filter(lambda body: end_of_data(body + END) == len(body + END)))
def test_a_smuggled_transaction_stays_inside_the_message(auth, body):
    lines, backend = check_session(auth, b"EHLO c\r\n" + TRANSACTION + body + END + b"QUIT\r\n")
    assert [line[:3] for line in lines if line[3] == " "] == ["220", "250", "250", "250", "354", "250", "221"]
    assert len(backend.committed) == 1
    assert backend.committed[0][1].count(TRANSACTION) == body.count(TRANSACTION)

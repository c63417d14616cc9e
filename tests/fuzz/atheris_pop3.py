"""Coverage-guided fuzzing of POP3: the TRANSACTION commands and the wire form; see harness.py.

An input, cut into lines, is a logged-in client's commands (at most MAX_COMMANDS), checked
against the RFC 1939 model of test_pop3.py over a store of corpus messages; the input as a
stored message goes through the wire form check (RETR, TOP, message_size) with a block
size chosen by its length. Seeds: recorded sessions and the real-mail corpus.
"""
from __future__ import annotations

import atheris

from tests.fuzz import harness

with atheris.instrument_imports(include=["workers", "store"]):
    from tests.fuzz.seeds import POP3_SESSIONS, messages
    from tests.fuzz.test_pop3 import CHUNKS, check_session, check_wire, make_backend

MAX_COMMANDS = 40


def one_input(data: bytes) -> None:
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    check_session(BACKEND, [line for line in lines if line][:MAX_COMMANDS])
    check_wire(data, CHUNKS[len(data) % len(CHUNKS)], len(data) % 5)


if __name__ == "__main__":
    BACKEND = make_backend(harness.scratch("pop3"))
    harness.run("pop3", one_input, [*POP3_SESSIONS, *(m for _, m in messages(harness.MAX_LEN))])

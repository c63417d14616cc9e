"""Coverage-guided fuzzing of IMAP: a logged-in session and the MIME view of messages; see harness.py.

An input is a logged-in client's stream, sent at once to a Session over a fresh copy of a
store of corpus messages (check_stream of test_imap_session.py: well-formed responses,
sequence numbers within what the client knows, at most one completion per line, never an
exception); the input as a message goes through check_message of test_mime.py (structure,
ENVELOPE, BODYSTRUCTURE, sections). Seeds: recorded sessions and the real-mail corpus.
"""
from __future__ import annotations

import atheris

from tests.fuzz import harness

with atheris.instrument_imports(include=["workers", "store"]):
    from tests.fuzz.seeds import IMAP_SESSIONS, messages
    from tests.fuzz.test_imap_session import check_stream, make_template
    from tests.fuzz.test_mime import check_message


def one_input(data: bytes) -> None:
    check_stream(TEMPLATE, data)
    check_message(data)


if __name__ == "__main__":
    TEMPLATE = make_template(harness.scratch("imap"))
    harness.run("imap", one_input, [*IMAP_SESSIONS, *(m for _, m in messages(harness.MAX_LEN))])

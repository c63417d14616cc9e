"""Coverage-guided fuzzing of the SMTP command side: session and MAIL/RCPT parser; see harness.py.

An input is a client's whole stream. Checked as in test_smtp_session.py (every reply well
formed and in step with the input: commands, AUTH answers, messages; one queue file per
`queued` reply) and test_smtp_address.py (the argument of every MAIL and RCPT line parses
to a clean envelope or gets a 501/555 reply). Seeds: recorded sessions, STARTTLS with
pipelined commands, AUTH exchanges and the smuggling variants.
"""
from __future__ import annotations

import contextlib

import atheris

from tests.fuzz import harness

with atheris.instrument_imports(include=["workers", "store"]):
    from tests.fuzz.accounts import authenticator, cheap_user_db
    from tests.fuzz.seeds import SMTP_SESSIONS
    from tests.fuzz.test_smtp_address import check_any, command_arguments
    from tests.fuzz.test_smtp_session import check_session


def one_input(data: bytes) -> None:
    for argument in command_arguments(data):
        check_any(argument)
    check_session(AUTH, data)


if __name__ == "__main__":
    with contextlib.ExitStack() as stack:
        AUTH = authenticator(stack.enter_context(cheap_user_db(harness.scratch("smtp"))))
        harness.run("smtp", one_input, SMTP_SESSIONS)

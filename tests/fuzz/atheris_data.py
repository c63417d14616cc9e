"""Coverage-guided fuzzing of the DATA reader (workers/smtpd/data.py); see harness.py.

An input is what a client sends after DATA. Checked as in test_smtp_data.py: the input
followed by an end of data (reading stops at the first end, the stored text is well formed
and relays unchanged), the input as a message sent properly (stored as sent, long lines
broken as documented), the size limit and a failing sink. The reader's block size and
max_line come from the input's length, so every shape meets every setting.
Seeds: the real-mail corpus and the smuggling variants.
"""
from __future__ import annotations

import atheris

from tests.fuzz import harness

with atheris.instrument_imports(include=["workers", "store"]):
    from tests.fuzz.seeds import FAKE_ENDS, messages, smuggling, to_crlf
    from tests.fuzz.test_smtp_data import (END, MAX_LINES, NEXT, READER_LIMITS, check_limits, check_round_trip,
                                           check_stream)


def one_input(data: bytes) -> None:
    reader_limit = READER_LIMITS[len(data) % len(READER_LIMITS)]
    max_line = MAX_LINES[len(data) // len(READER_LIMITS) % len(MAX_LINES)]
    check_stream(data + END + NEXT, reader_limit, max_line)
    check_round_trip(to_crlf(data), reader_limit, max_line)
    check_limits(data, 1 + len(data) // 2)


def seeds():
    yield from (message for _, message in messages(harness.MAX_LEN))
    yield from (smuggling(end) for end in FAKE_ENDS)


if __name__ == "__main__":
    harness.run("data", one_input, seeds())

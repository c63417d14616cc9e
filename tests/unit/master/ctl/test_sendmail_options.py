"""sendmail's command line and message preparation (no queue, no sockets)."""
from __future__ import annotations

import io

import pytest

from master.ctl.sendmail import (MessageError, UsageError, complete_headers, extract_recipients,
                                 parse_options, qualify, read_message, split_message)


def test_options_as_cron_and_scripts_pass_them():
    opts = parse_options(["-FCron Daemon", "-odi", "-oem", "-oi", "-t", "-f", "root", "bob"])
    assert opts.extract and not opts.dot_ends
    assert (opts.sender, opts.full_name, opts.recipients) == ("root", "Cron Daemon", ["bob"])
    opts = parse_options(["-bm", "-i", "-fbob@example.org", "-c", "/etc/mh", "-o", "Xval", "--", "-odd"])
    assert (opts.sender, opts.config, opts.recipients, opts.dot_ends) == \
        ("bob@example.org", "/etc/mh", ["-odd"], False)
    assert parse_options(["-f", "<>", "x"]).sender == "<>"


def test_dsn_options():
    opts = parse_options(["-N", "success,failure", "-Rhdrs", "-V", "job-42", "bob"])
    assert (opts.notify, opts.ret, opts.envid) == (["SUCCESS", "FAILURE"], "HDRS", "job-42")
    assert parse_options(["-Nnever", "bob"]).notify == ["NEVER"]
    assert parse_options(["bob"]).notify is None


@pytest.mark.parametrize("argv", [["-bs"], ["-bd"], ["-Z"], ["-f"], ["-N", "never,success"], ["-N", "sometimes"],
                                  ["-R", "all"], ["-V", "a\nb"]])
def test_bad_options(argv):
    with pytest.raises(UsageError):
        parse_options(argv)


def test_dot_line_ends_input_unless_i():
    data = b"Subject: x\n\none\n.\ntwo\n"
    assert read_message(io.BytesIO(data), True, 0) == b"Subject: x\r\n\r\none\r\n"
    assert read_message(io.BytesIO(data), False, 0) == b"Subject: x\r\n\r\none\r\n.\r\ntwo\r\n"


def test_size_limit():
    with pytest.raises(MessageError):
        read_message(io.BytesIO(b"x" * 100 + b"\n"), False, 50)


def test_extract_recipients_and_resent():
    headers, _ = split_message(b"To: A <a@x.org>, b\r\nCc: c@y.org\r\nBcc: d@z.org\r\nSubject: s\r\n\r\nbody\r\n")
    assert extract_recipients(headers) == ["a@x.org", "b", "c@y.org", "d@z.org"]
    headers, _ = split_message(b"To: a@x.org\r\nResent-To: r@x.org\r\n\r\n")
    assert extract_recipients(headers) == ["r@x.org"]


def test_folded_headers_and_body_without_blank_line():
    headers, body = split_message(b"To: a@x.org,\r\n b@x.org\r\nnot a header\r\n")
    assert extract_recipients(headers) == ["a@x.org", "b@x.org"]
    assert body == b"\r\nnot a header\r\n"


def test_bcc_removed_and_missing_headers_added():
    headers, _ = split_message(b"To: a@x.org\r\nBcc: secret@x.org\r\n\r\n")
    lines = b"".join(complete_headers(headers, "root@h.test", "Root", "h.test", "ID1", 0.0))
    assert b"secret" not in lines and b"Bcc" not in lines
    assert b"From: Root <root@h.test>\r\n" in lines and b"Message-ID: <ID1@h.test>" in lines
    assert lines.startswith(b"To: a@x.org\r\n") and b"\r\nDate: " in lines
    assert b"Received:" not in lines                # pickup writes the one that can be trusted


def test_qualify():
    assert qualify("bob", "h.test") == "bob@h.test"
    assert qualify("<bob@x.org>", "h.test") == "bob@x.org"
    for bad in ("", "a b@x", "a@b@c", "bob@"):
        with pytest.raises(MessageError):
            qualify(bad, "h.test")


def test_leading_mbox_from_lines_are_dropped():
    raw = b"From alice@example.org Mon May  2 16:07:05 2005\r\nSubject: hello\r\nTo: bob@example.test\r\n\r\nbody\r\n"
    headers, body = split_message(raw)
    assert headers == [b"Subject: hello\r\n", b"To: bob@example.test\r\n"]
    assert body == b"\r\nbody\r\n"

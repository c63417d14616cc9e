"""Pipe and file delivery: exit codes, time limit, mbox form (child processes, no sockets)."""
from __future__ import annotations

import asyncio
import mailbox
import os
import pwd

import pytest

from workers.qmgr.message import in_thread
from workers.qmgr.transports import local
from workers.qmgr.transports.local import RunAs, append_to_file, mbox_entry, run_pipe, unix_form

MESSAGE = b"Subject: hello\r\nFrom: a@x.org\r\n\r\nFrom the start\r\nbody\r\n"


def chunked(data: bytes, size: int = 7) -> list[bytes]:
    """The message as a stream of small chunks: CRLF and lines cut across chunk ends."""
    return [data[i:i + size] for i in range(0, len(data), size)]


def pipe(command: str, time_limit: float = 10):
    stdin = in_thread(None, unix_form(chunked(MESSAGE), "a@x.org", "bob@h.test"))
    return asyncio.run(run_pipe(command, stdin, "a@x.org", "bob@h.test", "team@h.test", RunAs(name="t"),
                                time_limit))


def file_entry():
    return mbox_entry(unix_form(chunked(MESSAGE), "a@x.org", "bob@h.test"), "a@x.org", 0)


def test_pipe_gets_message_and_environment(tmp_path):
    out = tmp_path / "out"
    outcome = pipe(f'{{ echo "$SENDER $RECIPIENT $ORIGINAL_RECIPIENT"; cat; }} > {out}')
    assert outcome.ok
    text = out.read_bytes()
    assert text.startswith(b"a@x.org bob@h.test team@h.test\nReturn-Path: <a@x.org>\nDelivered-To: bob@h.test\n")
    assert b"\r" not in text and text.endswith(b"body\n")


def test_pipe_exit_codes():
    assert pipe("exit 0").ok
    failed = pipe("echo no such list; exit 67")
    assert (failed.ok, failed.permanent, failed.status) == (False, True, "5.3.0")
    assert "no such list" in failed.detail
    assert not pipe("exit 75").permanent
    assert not pipe("exit 1").permanent
    assert not pipe("kill -9 $$").permanent


def test_pipe_time_limit_kills_the_command():
    outcome = pipe("sleep 30", time_limit=0.5)
    assert not outcome.ok and not outcome.permanent and "time limit" in outcome.detail


def test_pipe_that_does_not_read_stdin():
    assert pipe("exit 0").ok


def test_pipe_that_talks_before_it_reads_its_input():
    # more input and more output than a pipe holds: its output is read while it is fed
    big = MESSAGE + b"x" * 300_000 + b"\r\n"
    stdin = in_thread(None, unix_form(chunked(big, 65536), "a@x.org", "bob@h.test"))
    outcome = asyncio.run(run_pipe("head -c 300000 /dev/zero; cat > /dev/null", stdin, "a@x.org", "bob@h.test",
                                   "bob@h.test", RunAs(name="t"), 10))
    assert outcome.ok, outcome


def test_unix_form_over_chunks_cut_anywhere():
    for size in (1, 2, 3, 7, 1000):
        assert b"".join(unix_form(chunked(MESSAGE, size), "a@x.org", "b@h.test")) == (
            b"Return-Path: <a@x.org>\nDelivered-To: b@h.test\n" + MESSAGE.replace(b"\r\n", b"\n"))


def test_file_delivery_appends_mbox(tmp_path):
    path = tmp_path / "archive.mbox"
    for _ in range(2):
        outcome = asyncio.run(append_to_file(str(path), file_entry(), RunAs(name="t"), 30))
        assert outcome.ok, outcome
    box = mailbox.mbox(str(path))
    messages = list(box)
    assert len(messages) == 2
    assert messages[0]["Subject"] == "hello" and messages[0]["Delivered-To"] == "bob@h.test"
    assert ">From the start" in messages[0].get_payload()


def test_file_delivery_failure_is_reported(tmp_path):
    outcome = asyncio.run(append_to_file(str(tmp_path / "missing" / "x"), file_entry(), RunAs(name="t"), 30))
    assert not outcome.ok and outcome.permanent and "cannot open" in outcome.detail


def test_mbox_entry_quotes_from_lines():
    for size in (1, 4, 100):
        entry = b"".join(mbox_entry(chunked(b"Subject: s\n\nFrom me\n>From you\nok", size), "a@x.org", 0))
        assert entry == b"From a@x.org Thu Jan  1 00:00:00 1970\nSubject: s\n\n>From me\n>>From you\nok\n\n"


def test_run_as_mail_owner_only_when_root():
    run_as = RunAs.for_mail_owner("mail")
    if os.geteuid() != 0:
        assert run_as.uid is None            # nothing to drop
        return
    assert (run_as.uid, run_as.name) == (pwd.getpwnam("mail").pw_uid, "mail")
    for bad in ("no-such-user-here", "root"):
        with pytest.raises(LookupError):
            RunAs.for_mail_owner(bad)


def test_file_delivery_fsyncs_the_directory_only_when_it_creates_the_file(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(local, "fsync_dir", lambda path: synced.append(path))
    path = str(tmp_path / "archive.mbox")
    assert local.append_mbox(path, [b"From a Thu Jan  1 00:00:00 1970\nx\n\n"]) == (0, "")
    assert synced == [str(tmp_path)]
    assert local.append_mbox(path, [b"From a Thu Jan  1 00:00:00 1970\ny\n\n"]) == (0, "")
    assert synced == [str(tmp_path)]
    os.symlink(path, tmp_path / "link")
    code, reason = local.append_mbox(str(tmp_path / "link"), [b"z\n"])
    assert code == 73 and "cannot open" in reason

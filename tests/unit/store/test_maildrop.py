"""The maildrop as untrusted input: what sendmail drops, and what pickup makes of anything a
local user can put there (links, FIFOs, folders, forged or huge envelopes)."""
from __future__ import annotations

import json
import os
import stat
import time

import pytest

from master.params import Params
from store.fsio import TEMP_PREFIX
from store.maildrop import Pickup, drop
from store.queue import MAGIC, Envelope, Queue, Recipient, is_queue_id, read_head


class FakeLog:
    def __init__(self):
        self.lines: list[str] = []

    def error(self, text): self.lines.append("E " + text)
    def info(self, text): self.lines.append("M " + text)
    def debug(self, text): self.lines.append("H " + text)


@pytest.fixture
def q(tmp_path):
    queue = Queue(str(tmp_path / "queue"))
    queue.ensure_layout()
    return queue


@pytest.fixture
def pickup(q, tmp_path):
    params = Params({"myhostname": "mail.example.test", "message_size_limit": "2k"}, {}, str(tmp_path))
    return Pickup(q, params, FakeLog())


def envelope(**fields) -> Envelope:
    return Envelope(fields.pop("sender", "alice@example.test"), [Recipient("bob@example.test")], **fields)


def files(q: Queue, name: str) -> list[str]:
    return sorted(os.listdir(q.path(name)))


def raw_drop(q: Queue, name: str, head: bytes, message: bytes = b"Subject: x\r\n\r\nbody\r\n") -> str:
    path = q.path("maildrop", name)
    with open(path, "wb") as f:
        f.write(MAGIC + str(len(head)).encode() + b"\n" + head + b"\n" + message)
    return path


def incoming(q: Queue, queue_id: str) -> tuple[Envelope, bytes]:
    with open(q.path("incoming", queue_id), "rb") as f:
        env, _ = read_head(f)
        return env, f.read()


def test_layout_lets_every_user_drop_but_not_list(q):
    assert stat.S_IMODE(os.stat(q.path("maildrop")).st_mode) == 0o1733
    assert stat.S_IMODE(os.stat(q.directory).st_mode) == 0o755
    os.chmod(q.path("maildrop"), 0o700)                 # a layout made by an older version
    q.ensure_layout()
    assert stat.S_IMODE(os.stat(q.path("maildrop")).st_mode) == 0o1733


def test_drop_then_pickup_puts_the_submitters_uid_on_top(q, pickup):
    old_umask = os.umask(0o077)
    try:
        name = drop(q, envelope(envid="cron-1"), b"Received: forged by the user\r\nSubject: hi\r\n\r\nbody\r\n")
    finally:
        os.umask(old_umask)
    assert is_queue_id(name) and files(q, "maildrop") == [name]
    assert stat.S_IMODE(os.stat(q.path("maildrop", name)).st_mode) == 0o644   # mail_owner reads it
    [queue_id] = pickup.run()
    assert files(q, "maildrop") == [] and files(q, "incoming") == [queue_id]
    env, message = incoming(q, queue_id)
    assert env.client["uid"] == os.getuid() and env.envid == "cron-1" and env.size == len(message)
    assert message.startswith(f"Received: by mail.example.test (mailhouse, from userid {os.getuid()})\r\n"
                              f"\tid {queue_id}; ".encode())
    assert b"\r\nReceived: forged by the user\r\n" in message
    assert pickup.log.lines == [f"M {queue_id}: uid={os.getuid()} from=<alice@example.test> (picked up)"]


def test_bare_lf_becomes_crlf_and_a_last_line_gets_its_end(q, pickup):
    raw_drop(q, "A" * 22, envelope().to_json(), b"Subject: x\n\nbody\r\nlast")
    [queue_id] = pickup.run()
    assert incoming(q, queue_id)[1].endswith(b"Subject: x\r\n\r\nbody\r\nlast\r\n")


@pytest.mark.parametrize("head, reason", [
    (b"not json", "not a queue file"),
    (b"[" * 100_000 + b"]" * 100_000, "not a queue file (RecursionError"),
    (json.dumps({"sender": "a@x", "recipients": [], "surprise": 1}).encode(), "not a queue file (TypeError"),
    (envelope(sender="a@x\r\nX-Injected: 1").to_json(), "bad sender"),
    (Envelope("a@x", [Recipient("bob@example.test\r\nBcc: all")]).to_json(), "bad recipient address"),
    (Envelope("a@x", [Recipient("bob@example.test", ["SOMETIMES"])]).to_json(), "bad DSN NOTIFY"),
    (Envelope("a@x", [Recipient("bob@example.test", orcpt="rfc822;x")]).to_json(), "ORCPT is not sendmail's"),
    (envelope(envid="\x00").to_json(), "bad DSN ENVID"),
    (envelope(ret="ALL").to_json(), "bad DSN RET"),
])
def test_bad_envelopes_go_to_corrupt_under_a_name_of_our_own(q, pickup, head, reason):
    raw_drop(q, "incoming", head)                       # a name chosen to confuse
    assert pickup.run() == []
    [moved] = files(q, "corrupt")
    assert is_queue_id(moved) and files(q, "maildrop") == [] and files(q, "incoming") == []
    assert pickup.log.lines[0].startswith(f"E maildrop: incoming: {reason}")
    assert pickup.log.lines[0].endswith(f"moved to corrupt as {moved}")


def test_over_message_size_limit_goes_to_corrupt(q, pickup):
    raw_drop(q, "B" * 22, envelope().to_json(), b"x" * 3000)
    assert pickup.run() == [] and len(files(q, "corrupt")) == 1
    assert "larger than message_size_limit (2048 bytes)" in pickup.log.lines[0]


def test_links_fifos_and_folders_are_removed_without_being_opened(q, pickup, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(MAGIC + b"2\n{}\n")
    os.symlink(secret, q.path("maildrop", "symlink"))
    os.link(secret, q.path("maildrop", "hardlink"))
    os.mkfifo(q.path("maildrop", "fifo"))               # opened for reading, it would block
    os.mkdir(q.path("maildrop", "folder"))
    os.mkdir(q.path("maildrop", "full"))
    (tmp_path / "queue" / "maildrop" / "full" / "f").write_text("x")
    name_with_newline = "evil\nE forged log line"
    os.mkfifo(q.path("maildrop", name_with_newline))
    for _ in range(2):
        assert pickup.run() == []
    assert files(q, "maildrop") == ["full"] and files(q, "corrupt") == []
    assert secret.read_bytes() == MAGIC + b"2\n{}\n" and os.stat(secret).st_nlink == 1
    lines = pickup.log.lines
    [hard] = [line for line in lines if line.startswith("E maildrop: hardlink:")]
    assert hard.startswith("E maildrop: hardlink: a hard link (uid") and hard.endswith("); removed")
    assert sum("not a regular file" in line for line in lines) == 5   # full: reported once, kept
    assert any(line.startswith("E maildrop: 'evil\\nE forged log line'") for line in lines)
    assert all("\n" not in line for line in lines)


def test_temporary_files_wait_and_old_temporary_folders_do_not_stop_recovery(q, pickup):
    drop_temp = q.path("maildrop", TEMP_PREFIX + "C" * 22)
    with open(drop_temp, "wb") as f:
        f.write(b"half written")
    os.mkdir(q.path("maildrop", TEMP_PREFIX + "folder"))
    assert pickup.run() == [] and pickup.log.lines == []
    long_ago = time.time() - 7200
    for path in (drop_temp, q.path("maildrop", TEMP_PREFIX + "folder")):
        os.utime(path, (long_ago, long_ago))
    q.recover()                                          # qmgr's start: no crash on the folder
    assert files(q, "maildrop") == [TEMP_PREFIX + "folder"]


def test_mailq_lists_a_dropped_file_and_is_not_stopped_by_junk(q):
    name = drop(q, envelope(), b"Subject: x\r\n\r\nbody\r\n")
    os.mkfifo(q.path("maildrop", "D" * 22))              # a queue-id-shaped FIFO: no hang
    raw_drop(q, "E" * 22, b"[" * 100_000 + b"]" * 100_000)
    assert [item.queue_id for item in q.list_all()] == [name]
    assert len(files(q, "maildrop")) == 3               # the listing moves nothing: pickup decides


def test_hold_does_not_take_a_file_past_pickup(q, pickup):
    name = drop(q, envelope(), b"Subject: x\r\n\r\nbody\r\n")
    assert q.hold(name).startswith("not picked up yet")
    assert files(q, "maildrop") == [name] and files(q, "hold") == []
    [queue_id] = pickup.run()
    assert q.hold(queue_id) == "held"

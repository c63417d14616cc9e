"""master/logwriter.py: format, level filter, rotation (size and daily), gzip, expiry, losses."""
from __future__ import annotations

import errno
import gzip
import os
import re
import time

import pytest

from master import logwriter
from master.logwriter import LogWriter
from master.params import load_main_cf

LINE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ mail\.example\.test (\S+)\[(\d+)\]: (.*)$")


def make_params(tmp_path, **settings):
    settings = {"myhostname": "mail.example.test", "data_directory": str(tmp_path / "var"), **settings}
    (tmp_path / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return load_main_cf(str(tmp_path / "main.cf"))


class FakeClock:
    """Stands in for the time module inside logwriter so rotation times are chosen by the test."""

    def __init__(self, start: float):
        self.now = start

    def time(self) -> float:
        return self.now

    def gmtime(self, secs=None):
        return time.gmtime(self.now if secs is None else secs)

    def strftime(self, fmt, t=None):
        return time.strftime(fmt, self.gmtime() if t is None else t)

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock(time.time())
    monkeypatch.setattr(logwriter, "time", fake)
    return fake


def read(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def all_lines(logdir, name) -> list[str]:
    """Every line of a log, archives (oldest first) then the live file."""
    lines = []
    for archive in sorted(p for p in logdir.iterdir() if p.name.startswith(f"{name}.log.")):
        assert archive.suffix == ".gz", f"uncompressed archive left: {archive.name}"
        lines += gzip.decompress(archive.read_bytes()).decode().splitlines()
    return lines + read(logdir / f"{name}.log")


def test_worker_lines_go_to_their_file_with_prefix(tmp_path):
    writer = LogWriter(make_params(tmp_path, log_level="high"))
    writer.worker_line("smtpd", 812, b"M smtp 1A2B3C: from=<a@example.test>, size=2048\n")
    writer.worker_line("imapd", 813, b"H imap login user=bob\n")
    writer.worker_line("pop3d", 814, b"E pop disk error\n")
    writer.log("server", "M", "master[1]", "started")
    writer.close()
    logdir = tmp_path / "var" / "log"
    [smtp] = read(logdir / "smtp.log")
    assert LINE_RE.match(smtp).groups() == ("smtpd", "812", "1A2B3C: from=<a@example.test>, size=2048")
    assert LINE_RE.match(read(logdir / "imap.log")[0]).group(3) == "login user=bob"
    assert LINE_RE.match(read(logdir / "pop.log")[0]).group(1, 3) == ("pop3d", "disk error")
    assert LINE_RE.match(read(logdir / "server.log")[0]).group(1, 2, 3) == ("master", "1", "started")


@pytest.mark.parametrize("level, kept", [("low", "E"), ("medium", "EM"), ("high", "EMH")])
def test_level_filter(tmp_path, level, kept):
    writer = LogWriter(make_params(tmp_path, log_level=level))
    for code in "EMH":
        writer.worker_line("smtpd", 5, f"{code} smtp event {code}".encode())
    writer.close()
    texts = [LINE_RE.match(line).group(3) for line in read(tmp_path / "var" / "log" / "smtp.log")]
    assert texts == [f"event {code}" for code in kept]


def test_reconfigure_changes_the_level(tmp_path):
    writer = LogWriter(make_params(tmp_path, log_level="low"))
    writer.worker_line("smtpd", 5, b"M smtp before")
    writer.reconfigure(make_params(tmp_path, log_level="medium"))
    writer.worker_line("smtpd", 5, b"M smtp after")
    writer.close()
    assert [LINE_RE.match(x).group(3) for x in read(tmp_path / "var" / "log" / "smtp.log")] == ["after"]


def test_foreign_lines_are_server_errors(tmp_path):
    writer = LogWriter(make_params(tmp_path, log_level="low"))
    writer.worker_line("smtpd", 9, b"Traceback (most recent call last):\n")
    writer.worker_line("smtpd", 9, b"X smtp not a level\n")
    writer.worker_line("smtpd", 9, b"E nosuchlog text\n")
    writer.close()
    texts = [LINE_RE.match(x).group(1, 3) for x in read(tmp_path / "var" / "log" / "server.log")]
    assert texts == [("smtpd", "Traceback (most recent call last):"), ("smtpd", "X smtp not a level"),
                     ("smtpd", "E nosuchlog text")]


def test_control_characters_cannot_forge_lines(tmp_path):
    writer = LogWriter(make_params(tmp_path))
    writer.worker_line("smtpd", 9, "M smtp helo=evil\rfake line\x1b[31m\u009b2J\tok".encode() + b"\xff")
    writer.close()
    [line] = read(tmp_path / "var" / "log" / "smtp.log")
    assert LINE_RE.match(line).group(3) == "helo=evil\\x0dfake line\\x1b[31m\\x9b2J\tok\ufffd"


def test_size_rotation_keeps_every_line_in_order(tmp_path, clock):
    writer = LogWriter(make_params(tmp_path, log_rotate_size="1024"))
    expected = []
    for n in range(400):
        writer.worker_line("smtpd", 7, f"M smtp message {n:04d} ".encode() + b"x" * 40)
        expected.append(f"message {n:04d} " + "x" * 40)
        if n % 10 == 9:
            clock.now += 1            # a new second: a new archive name is free
            writer.maybe_rotate()
    writer.close()
    logdir = tmp_path / "var" / "log"
    archives = sorted(p.name for p in logdir.iterdir() if p.name.startswith("smtp.log."))
    assert len(archives) >= 10
    assert all(re.fullmatch(r"smtp\.log\.\d{8}-\d{6}\.gz", name) for name in archives)
    assert [LINE_RE.match(x).group(3) for x in all_lines(logdir, "smtp")] == expected
    assert os.stat(logdir / "smtp.log").st_size < 1024 + 100


def test_one_archive_per_second_at_most(tmp_path, clock):
    writer = LogWriter(make_params(tmp_path, log_rotate_size="1024"))
    logdir = tmp_path / "var" / "log"
    writer.worker_line("smtpd", 7, b"M smtp " + b"a" * 1100)
    writer.maybe_rotate()
    writer.worker_line("smtpd", 7, b"M smtp " + b"b" * 1100)
    writer.maybe_rotate()             # same second: the name is taken, so it waits
    assert os.stat(logdir / "smtp.log").st_size > 1024
    clock.now += 1
    writer.maybe_rotate()
    writer.close()
    assert os.stat(logdir / "smtp.log").st_size == 0
    assert len([p for p in logdir.iterdir() if p.name.startswith("smtp.log.")]) == 2


def test_daily_rotation_skips_empty_files(tmp_path, clock):
    writer = LogWriter(make_params(tmp_path))
    writer.log("server", "E", "master[1]", "yesterday's line")
    clock.now += 86400
    writer.maybe_rotate()
    writer.log("server", "E", "master[1]", "today's line")
    writer.close()
    logdir = tmp_path / "var" / "log"
    archived = [p.name for p in logdir.iterdir() if ".log." in p.name]
    assert len(archived) == 1 and archived[0].startswith("server.log.")
    assert [LINE_RE.match(x).group(3) for x in read(logdir / "server.log")] == ["today's line"]


def test_old_archives_are_deleted_and_leftovers_compressed(tmp_path):
    logdir = tmp_path / "var" / "log"
    logdir.mkdir(parents=True)
    old = logdir / "pop.log.20200101-000000.gz"
    old.write_bytes(gzip.compress(b"old\n"))
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    recent = logdir / "pop.log.20260101-000000.gz"
    recent.write_bytes(gzip.compress(b"recent\n"))
    crashed = logdir / "imap.log.20260102-000000"          # rotated, then the master died
    crashed.write_text("not yet compressed\n")
    stale_temp = logdir / ".imap.log.20260102-000000.gz.tmp"
    stale_temp.write_bytes(b"half")
    unrelated = logdir / "notes.txt"
    unrelated.write_text("keep me")
    writer = LogWriter(make_params(tmp_path, log_archive_days="7"))
    writer.maybe_rotate()
    writer.close()
    assert not old.exists() and recent.exists() and unrelated.exists() and not stale_temp.exists()
    assert not crashed.exists()
    assert gzip.decompress((logdir / "imap.log.20260102-000000.gz").read_bytes()) == b"not yet compressed\n"


def test_archive_days_zero_keeps_everything(tmp_path):
    logdir = tmp_path / "var" / "log"
    logdir.mkdir(parents=True)
    old = logdir / "smtp.log.20200101-000000.gz"
    old.write_bytes(gzip.compress(b"old\n"))
    os.utime(old, (0, 0))
    writer = LogWriter(make_params(tmp_path, log_archive_days="0"))
    writer.close()
    assert old.exists()


def test_reconfigure_moves_to_a_new_directory(tmp_path):
    writer = LogWriter(make_params(tmp_path))
    writer.log("server", "E", "master[1]", "first")
    writer.reconfigure(make_params(tmp_path, log_directory=str(tmp_path / "newlogs")))
    writer.log("server", "E", "master[1]", "second")
    writer.close()
    assert [LINE_RE.match(x).group(3) for x in read(tmp_path / "newlogs" / "server.log")] == ["second"]


def test_lines_lost_to_a_full_disk_are_counted(tmp_path, monkeypatch, capsys):
    writer = LogWriter(make_params(tmp_path))
    real_write = logwriter._LogFile.write
    failures = iter([True, True, False])

    def flaky_write(self, data):
        if next(failures, False):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(logwriter._LogFile, "write", flaky_write)
    writer.log("smtp", "E", "smtpd[3]", "lost one")
    writer.log("smtp", "E", "smtpd[3]", "lost two")
    writer.log("smtp", "E", "smtpd[3]", "kept")
    writer.close()
    logdir = tmp_path / "var" / "log"
    assert [LINE_RE.match(x).group(3) for x in read(logdir / "smtp.log")] == ["kept"]
    assert "2 log lines lost" in read(logdir / "server.log")[0]
    assert "No space left on device" in capsys.readouterr().err


def test_a_log_removed_by_someone_else_is_recreated(tmp_path):
    writer = LogWriter(make_params(tmp_path))
    logdir = tmp_path / "var" / "log"
    writer.log("imap", "E", "imapd[4]", "before")
    (logdir / "imap.log").rename(logdir / "imap.log.by-hand")
    writer._next_reopen_check = 0          # the next turn checks (normally every few seconds)
    writer.maybe_rotate()
    writer.log("imap", "E", "imapd[4]", "after")
    writer.close()
    assert [LINE_RE.match(x).group(3) for x in read(logdir / "imap.log")] == ["after"]
    assert [LINE_RE.match(x).group(3) for x in read(logdir / "imap.log.by-hand")] == ["before"]

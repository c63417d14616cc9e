"""mailctl log: tail of a file (no master needed); --follow is shown in tests/integration/test_logs.py."""
from __future__ import annotations

import gzip
import io

import pytest

from master.ctl import run
from master.ctl.logs import BLOCK, follow, tail_lines


def tail(data: bytes, count: int) -> bytes:
    return tail_lines(io.BytesIO(data), count)


@pytest.mark.parametrize("count, expected", [
    (0, b""), (1, b"c\n"), (2, b"b\nc\n"), (3, b"a\nb\nc\n"), (10, b"a\nb\nc\n"),
])
def test_tail_counts(count, expected):
    assert tail(b"a\nb\nc\n", count) == expected


def test_tail_of_an_unfinished_last_line():
    assert tail(b"a\nb\npartial", 2) == b"b\npartial"


def test_tail_across_blocks():
    lines = [f"line {n:06d} ".encode() + b"x" * 50 + b"\n" for n in range(5000)]
    data = b"".join(lines)
    assert len(data) > 3 * BLOCK
    assert tail(data, 1500) == b"".join(lines[-1500:])


def test_tail_leaves_the_position_at_the_end():
    f = io.BytesIO(b"a\nb\n")
    tail_lines(f, 1)
    assert f.tell() == 4


def make_config(tmp_path) -> str:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(f"data_directory = {tmp_path / 'var'}\n")
    return str(etc)


def test_mailctl_log_prints_the_last_lines(tmp_path, capsysbinary):
    etc = make_config(tmp_path)
    (tmp_path / "var" / "log").mkdir(parents=True)
    (tmp_path / "var" / "log" / "pop.log").write_bytes(b"one\ntwo\nthree\n")
    assert run(["-c", etc, "log", "pop", "-n", "2"]) == 0
    assert capsysbinary.readouterr().out == b"two\nthree\n"


def test_mailctl_log_refuses_a_missing_log(tmp_path, capsys):
    etc = make_config(tmp_path)
    assert run(["-c", etc, "log", "imap"]) == 1
    assert "imap.log does not exist" in capsys.readouterr().err


def test_mailctl_log_knows_only_the_four_logs(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run(["-c", make_config(tmp_path), "log", "mail"])
    assert exit_info.value.code == 2


class _Seen(Exception):
    pass


class _Collector(io.BytesIO):
    """An output that ends follow() (by raising) once `last` has been written."""

    def __init__(self, last: bytes):
        super().__init__()
        self.last = last

    def flush(self) -> None:
        if self.getvalue().endswith(self.last):
            raise _Seen


def test_follow_reads_the_middle_file_of_two_rotations_between_two_looks(tmp_path):
    log = tmp_path / "smtp.log"
    log.write_bytes(b"one\n")
    reader = open(log, "rb")
    assert reader.read() == b"one\n"                 # the follower has shown "one", then sleeps:
    with open(log, "ab") as f:
        f.write(b"two\n")
    log.rename(tmp_path / "smtp.log.20261125-100000")            # first rotation
    log.write_bytes(b"three\nfour\n")
    middle = tmp_path / "smtp.log.20261125-100001"
    log.rename(middle)                                          # second rotation
    (tmp_path / "smtp.log.20261125-100001.gz").write_bytes(gzip.compress(middle.read_bytes()))
    middle.unlink()                                             # ... already compressed
    log.write_bytes(b"five\n")
    out = _Collector(b"five\n")
    with pytest.raises(_Seen):
        follow(str(log), out, reader, older=set())
    assert out.getvalue() == b"two\nthree\nfour\nfive\n"


def test_follow_starts_from_the_beginning_of_a_log_that_appears(tmp_path):
    log = tmp_path / "pop.log"
    log.write_bytes(b"first\nsecond\n")
    out = _Collector(b"second\n")
    with pytest.raises(_Seen):
        follow(str(log), out)
    assert out.getvalue() == b"first\nsecond\n"


@pytest.mark.parametrize("follow", [[], ["--follow"]])
def test_mailctl_log_refuses_a_log_folder_it_cannot_read(tmp_path, capsys, follow):
    etc = make_config(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "log").write_text("a file where the folder should be\n")
    assert run(["-c", etc, "log", "smtp", *follow]) == 1
    assert "cannot read" in capsys.readouterr().err

"""master/diskwatch.py: the lowspace flag (master/proto.py) goes up and down once per transition."""
from __future__ import annotations

import os

from master import diskwatch
from master.diskwatch import DiskGuard
from master.params import load_main_cf
from master.proto import is_low


def make_params(tmp_path, minimum):
    (tmp_path / "main.cf").write_text(f"data_directory = {tmp_path / 'var'}\ndisk_min_free = {minimum}\n")
    return load_main_cf(str(tmp_path / "main.cf"))


class Recorder:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, text: str) -> None:
        self.lines.append((level, text))


def test_flag_goes_up_and_down_once_per_transition(tmp_path):
    log = Recorder()
    low = make_params(tmp_path, "100000G")          # more than any test machine has free
    guard = DiskGuard(low, log)
    guard.sample()
    assert is_low(low)
    flag = tmp_path / "var" / "run" / "lowspace"
    assert "free" in flag.read_text()
    assert len(log.lines) == 1 and log.lines[0][0] == "E" and "disk space low" in log.lines[0][1]

    guard.next_sample = 0                           # the next turn samples again: still low, no new line
    guard.sample()
    assert len(log.lines) == 1

    ok = make_params(tmp_path, "1M")
    guard.reconfigure(ok)
    guard.sample()
    assert not is_low(ok) and not flag.exists()
    assert len(log.lines) == 2 and log.lines[1][0] == "E" and "disk space back" in log.lines[1][1]
    assert [p.name for p in flag.parent.iterdir()] == []   # no temporary file left


def test_sampling_is_rate_limited(tmp_path, monkeypatch):
    calls = []
    real = diskwatch.free_bytes
    monkeypatch.setattr(diskwatch, "free_bytes", lambda path: calls.append(path) or real(path))
    guard = DiskGuard(make_params(tmp_path, "1M"), Recorder())
    guard.sample()
    rounds = len(calls)
    guard.sample()
    assert rounds >= 1 and len(calls) == rounds


def test_a_flag_left_by_an_earlier_master_is_cleared(tmp_path):
    params = make_params(tmp_path, "1M")
    flag = tmp_path / "var" / "run" / "lowspace"
    flag.parent.mkdir(parents=True)
    flag.write_text("old\n")
    log = Recorder()
    guard = DiskGuard(params, log)
    guard.sample()
    assert not flag.exists() and "disk space back" in log.lines[0][1]


def test_missing_directories_are_measured_at_their_parent(tmp_path):
    assert not (tmp_path / "var").exists()
    assert diskwatch.free_bytes(str(tmp_path / "var" / "queue" / "deeper")) == diskwatch.free_bytes(str(tmp_path))


def test_each_filesystem_is_measured_once(tmp_path, monkeypatch):
    params = make_params(tmp_path, "1M")
    for name in ("queue", "store", "index", "log"):
        os.makedirs(tmp_path / "var" / name)
    measured = []
    monkeypatch.setattr(diskwatch, "free_bytes", lambda path: measured.append(path) or 10**12)
    DiskGuard(params, Recorder()).sample()
    assert len(measured) == 1                        # all four live on tmp_path's filesystem

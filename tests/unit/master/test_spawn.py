"""master/spawn.py without processes: the crash throttle, exit statuses, stderr line splitting,
max_use draws, the liveness check."""
from __future__ import annotations

import os
import pwd
import random
import signal
from types import SimpleNamespace

import pytest

from master.cf import parse_service_line
from master.params import Params
from master.spawn import (ABORT_GRACE, LOG_LINE_MAX, STARTUP_GRACE, Service, Worker, check_alive, describe_exit,
                          draw_max_use, read_log_lines)


def _service(**settings: str) -> Service:
    spec = parse_service_line("127.0.0.1:2525 inet n n n - - smtpd", "master.cf:1")
    return Service(spec, Params(settings, {}, "/tmp"))


def test_throttle_doubles_up_to_a_minute_and_is_lifted():
    svc = _service()
    delays = [svc.throttle(100.0) for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert svc.throttled(159.0) and not svc.throttled(160.0)
    svc.unthrottle()
    assert not svc.throttled(100.0) and svc.throttle(100.0) == 1


def test_a_worker_proves_itself_by_serving_or_by_staying_up():
    worker = Worker(pid=1, popen=None, control=None, log_fd=-1, service=_service(), started=50.0)
    assert not worker.proven(50.0 + STARTUP_GRACE)          # never said it was ready
    worker.ready = True
    assert not worker.proven(50.0 + 1)
    assert worker.proven(50.0 + STARTUP_GRACE)
    worker.started, worker.handed = 1000.0, 1
    assert worker.proven(1000.0)


def test_exit_descriptions():
    assert describe_exit(0) == (True, "exit status 0")
    assert describe_exit(3 << 8) == (False, "exit status 3")
    assert describe_exit(signal.SIGKILL) == (False, "killed by signal 9 (SIGKILL)")


def test_log_lines_are_split_and_bounded():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    worker = SimpleNamespace(log_fd=read_end, log_buffer=bytearray())
    os.write(write_end, b"M smtp one\nE smtp tw")
    assert read_log_lines(worker) == ([b"M smtp one\n"], False)
    os.write(write_end, b"o\n" + b"x" * (LOG_LINE_MAX + 10))
    lines, eof = read_log_lines(worker)
    assert lines == [b"E smtp two\n", b"x" * LOG_LINE_MAX] and not eof
    os.close(write_end)
    assert read_log_lines(worker) == ([b"x" * 10], True)     # the rest, at the end of the pipe
    os.close(read_end)


def test_workers_drop_to_mail_owner_only_as_root_and_when_unpriv(monkeypatch):
    from master import spawn
    me = pwd.getpwuid(os.getuid())
    svc = _service()
    svc.params = Params({"mail_owner": me.pw_name}, {}, "/tmp")
    monkeypatch.setattr(spawn.os, "geteuid", lambda: 0)
    assert spawn._privileges(svc) == {}                        # unpriv n: keep the master's user
    svc.spec.unpriv = True
    assert spawn._privileges(svc) == {"user": me.pw_uid, "group": me.pw_gid, "extra_groups": []}
    monkeypatch.setattr(spawn.os, "geteuid", lambda: 1000)
    assert spawn._privileges(svc) == {}                        # not root: nothing to drop


def test_each_worker_draws_its_max_use_within_a_fifth_below():
    rng = random.Random(1)
    draws = [draw_max_use(100, rng) for _ in range(200)]
    assert all(80 <= n <= 100 for n in draws)
    assert len(set(draws)) > 10                      # workers started together retire apart
    assert {draw_max_use(n, rng) for n in (1, 2, 3, 4) for _ in range(20)} == {1, 2, 3, 4}   # small: exact
    assert {draw_max_use(5, rng) for _ in range(50)} == {4, 5}
    assert draw_max_use(0, rng) == 0                 # never recycle stays never


def test_a_silent_worker_is_aborted_then_killed(monkeypatch):
    from master import spawn
    sent = []
    monkeypatch.setattr(spawn.os, "kill", lambda pid, signum: sent.append((pid, signum)))
    svc = _service(worker_hang_timeout="10s")
    worker = Worker(pid=42, popen=None, control=None, log_fd=-1, service=svc, last_heard=100.0)
    svc.workers[42] = worker
    assert check_alive(worker, 110.0) is None and not sent            # 10 s is not past the deadline
    assert check_alive(worker, 112.4) == "worker 42 of 127.0.0.1:2525 hung (no sign of life for 12 s): aborted"
    assert sent == [(42, signal.SIGABRT)]
    assert svc.active_workers() == []                                  # no new connections for it
    assert check_alive(worker, 112.4 + ABORT_GRACE - 0.1) is None
    assert check_alive(worker, 112.4 + ABORT_GRACE) == \
        f"worker 42 of 127.0.0.1:2525 still running {ABORT_GRACE:g} s after SIGABRT: killed"
    assert check_alive(worker, 1000.0) is None
    assert sent == [(42, signal.SIGABRT), (42, signal.SIGKILL)]


def test_no_hang_deadline_when_worker_hang_timeout_is_0(monkeypatch):
    from master import spawn
    monkeypatch.setattr(spawn.os, "kill", lambda pid, signum: pytest.fail("signalled"))
    worker = Worker(pid=42, popen=None, control=None, log_fd=-1, service=_service(worker_hang_timeout="0"),
                    last_heard=0.0)
    assert check_alive(worker, 10**6) is None


def test_every_message_read_is_a_sign_of_life():
    from master import proto
    from master.spawn import read_messages

    class Control:                          # the master's end of the socketpair, as read_messages uses it
        def __init__(self, *datagrams: bytes):
            self.datagrams = list(datagrams)

        def recv(self, size: int) -> bytes:
            if not self.datagrams:
                raise BlockingIOError
            return self.datagrams.pop(0)[:size]

    worker = Worker(pid=1, popen=None, control=Control(), log_fd=-1, service=_service(), last_heard=0.0)
    assert read_messages(worker) == [] and worker.last_heard == 0.0
    worker.control = Control(proto.encode(proto.alive()), b"[]")
    assert read_messages(worker) == [proto.alive(), {"op": proto.OP_INVALID, "data": "[]"}]
    assert worker.last_heard > 0.0

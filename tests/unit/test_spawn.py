"""master/spawn.py without processes: the crash throttle, exit statuses, stderr line splitting."""
from __future__ import annotations

import os
import pwd
import signal
from types import SimpleNamespace

from master.cf import parse_service_line
from master.params import Params
from master.spawn import LOG_LINE_MAX, STARTUP_GRACE, Service, Worker, describe_exit, read_log_lines


def _service() -> Service:
    spec = parse_service_line("127.0.0.1:2525 inet n n n - - smtpd", "master.cf:1")
    return Service(spec, Params({}, {}, "/tmp"))


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

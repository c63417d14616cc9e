"""Worker processes: recycling after max_use and max_idle, crash respawn, throttling, wake-ups,
hung workers."""
from __future__ import annotations

import os
import signal

import pytest

from tests.integration.echo_client import ECHO, EchoClient, service, status, wait_until

pytestmark = pytest.mark.integration


def _fresh_worker(ms, key: str, old_pid: int) -> int:
    """Wait until the service runs a ready worker other than old_pid; return its pid."""
    def check():
        state = service(ms, key)
        return state["ready"] and old_pid not in state["workers"] and state["workers"]
    return wait_until(check, what=f"worker {old_pid} to be replaced")[0]


def test_worker_recycled_after_max_use_finishes_its_session(mailsystem):
    ms = mailsystem(main={"max_use": "2"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as one:
        first = one.pid()
    with EchoClient(ms.port(echo)) as two:          # the worker's second and last connection
        assert two.pid() == first
        with EchoClient(ms.port(echo)) as three:
            assert three.pid() != first
        assert two.ask("still served") == "+OK still served"
    wait_until(lambda: first not in service(ms, echo)["workers"], what="the retired worker to exit")
    assert f"worker {first} retires: served its 2 connections (max_use=2)" in ms.log("server")


def test_idle_worker_recycled_after_max_idle(mailsystem):
    ms = mailsystem(main={"max_idle": "1s"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as client:
        first = client.pid()
    _fresh_worker(ms, echo, first)
    with EchoClient(ms.port(echo)) as client:
        assert client.pid() != first          # (its replacement may itself have idled out since)
    assert f"worker {first} retires: idle for max_idle=1 s" in ms.log("server")


def test_crashed_worker_respawned(mailsystem):
    ms = mailsystem()
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as client:
        victim = client.pid()
        os.kill(victim, signal.SIGKILL)
        assert client.line() == ""                  # its session died with it
    replacement = _fresh_worker(ms, echo, victim)
    with EchoClient(ms.port(echo)) as client:
        assert client.pid() == replacement
    text = ms.wait_for_log("server", f"worker {victim} killed by signal 9 (SIGKILL); starting a new one")
    assert "throttling" not in text
    wait_until(lambda: service(ms, echo)["connections"] == 0, what="the sessions to be counted closed")


def test_hung_worker_is_aborted_with_its_stack_logged_and_replaced(mailsystem):
    ms = mailsystem(main={"worker_hang_timeout": "5s"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo), timeout=30) as client:
        hung = client.pid()
        client.sock.sendall(b"HANG\r\n")
        ms.wait_for_log("server", f"worker {hung} of 127.0.0.1:{ms.port(echo)} hung (no sign of life for ",
                        timeout=30)
        assert client.line() == ""                  # its session died with it
    replacement = _fresh_worker(ms, echo, hung)
    with EchoClient(ms.port(echo)) as client:
        assert client.pid() == replacement
    text = ms.wait_for_log("server", f"worker {hung} killed by signal 6 (SIGABRT); starting a new one")
    assert "Fatal Python error: Aborted" in text    # faulthandler: the hung stack is in server.log
    assert "echo_service.py" in text and "still running" not in text


def test_hung_worker_that_survives_sigabrt_is_killed(mailsystem):
    ms = mailsystem(main={"worker_hang_timeout": "5s"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo), timeout=30) as client:
        hung = client.pid()
        client.sock.sendall(b"HANG hard\r\n")
        ms.wait_for_log("server", f"worker {hung} of 127.0.0.1:{ms.port(echo)} still running 5 s after SIGABRT: "
                                  "killed", timeout=40)
    ms.wait_for_log("server", f"worker {hung} killed by signal 9 (SIGKILL); starting a new one")
    with EchoClient(ms.port(echo)) as client:
        assert client.pid() != hung


def test_crash_loop_throttles_only_its_own_service(mailsystem):
    ms = mailsystem()
    echo = ms.add_service(ECHO)
    ms.add_service("tests.integration.no_such_module", name="broken")
    ms.start(wait=False)
    text = ms.wait_for_log("server", "before it was ready; throttling the service for 2 s")
    assert "throttling the service for 1 s" in text
    assert "No module named tests.integration.no_such_module" in text   # the worker's stderr
    state = service(ms, "broken")
    assert not state["ready"]
    wait_until(lambda: service(ms, echo)["ready"], what="the healthy service")
    with EchoClient(ms.port(echo)) as client:
        assert client.ask("fine") == "+OK fine"


def test_unix_service_kept_running_and_woken(mailsystem):
    ms = mailsystem()
    ms.add_unix_service("tests.integration.tick_service", wakeup=1)
    ms.start()
    ms.wait_for_log("server", "tick 2")
    (daemon,) = [s for s in status(ms)["services"] if s["kind"] == "unix"]
    assert len(daemon["workers"]) == 1


def test_crash_right_after_start_is_throttled_too(mailsystem):
    ms = mailsystem()
    ms.add_unix_service("tests.integration.tick_service", "crash", wakeup=1)
    ms.start(wait=False)
    text = ms.wait_for_log("server", "exit status 1 after start-up; throttling the service for 2 s")
    assert "RuntimeError: tick_service told to crash" in text

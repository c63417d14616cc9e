"""The master process: start-up errors, graceful stop, --daemon, mailctl status/connections/stop."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.echo_client import ECHO, EchoClient, service, status, wait_until

pytestmark = pytest.mark.integration
EX_CONFIG = 78


def _run_master(ms, *args: str) -> subprocess.CompletedProcess:
    ms.write_config()
    return subprocess.run([sys.executable, "-m", "master", "-c", str(ms.etc), *args], cwd=ms.root,
                          env=ms.env(), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("field, line, message", [
    ("maxproc", "127.0.0.1:{port} inet n n n - 301 " + ECHO, 'field "maxproc": 301 is above the limit of 300'),
    ("command", "127.0.0.1:{port} inet n n n - - nosuchd", 'field "command": unknown command "nosuchd"'),
    ("option", "127.0.0.1:{port} inet n n n - - smtpd -o no_such_key=1", "-o no_such_key: unknown parameter"),
])
def test_bad_master_cf_line_refused_at_start(mailsystem, field, line, message):
    ms = mailsystem()
    ms.add_service(ECHO)
    ms.services.append(line.format(port=ms.port(ms.add_service(ECHO))))
    result = _run_master(ms)
    assert result.returncode == EX_CONFIG
    assert result.stderr.startswith(f"master: {ms.etc / 'master.cf'}:3: {message}")


def test_bad_main_cf_value_refused_at_start(mailsystem):
    ms = mailsystem(main={"smtpd_timeout": "soon"})
    ms.add_service(ECHO)
    result = _run_master(ms)
    assert result.returncode == EX_CONFIG
    line = list(ms.main).index("smtpd_timeout") + 1
    assert f"{ms.etc / 'main.cf'}:{line}: smtpd_timeout: bad time 'soon'" in result.stderr


def test_check_prints_effective_configuration(mailsystem):
    ms = mailsystem(main={"max_use": "7"})
    echo = ms.add_service(ECHO, "-o", "smtpd_banner=x")
    result = _run_master(ms, "--check")
    assert result.returncode == 0
    assert "max_use = 7" in result.stdout.splitlines()
    assert f"127.0.0.1:{ms.port(echo)} inet n n 0 32 {ECHO} -o smtpd_banner=x" in result.stdout


@pytest.mark.parametrize("level, garbage, message", [
    ("encrypt", False, "tls_cert_file/tls_key_file: {cert}: no such file"),
    ("may", True, "not a usable certificate and key"),
])
def test_unusable_tls_files_fail_check_and_start(mailsystem, level, garbage, message):
    ms = mailsystem(main={"smtpd_tls_security_level": level})
    ms.add_service("smtpd")
    cert = ms.var / "tls" / "cert.pem"
    if garbage:
        cert.parent.mkdir(parents=True)
        cert.write_text("not a certificate\n")
        (ms.var / "tls" / "key.pem").write_text("not a key\n")
    for args in (("--check",), ()):
        result = _run_master(ms, *args)
        assert result.returncode == EX_CONFIG, result
        assert message.format(cert=cert) in result.stderr, result.stderr


def test_offered_tls_without_a_certificate_starts_without_starttls(mailsystem):
    ms = mailsystem(main={"smtpd_tls_security_level": "may"})
    ms.add_service("smtpd")
    assert _run_master(ms, "--check").returncode == 0


def test_status_and_connections_json(mailsystem):
    ms = mailsystem()
    echo = ms.add_service(ECHO, maxproc=5)
    ms.start()
    with EchoClient(ms.port(echo)) as anonymous, EchoClient(ms.port(echo)) as bob:
        assert bob.ask("USER bob") == "+OK"
        anonymous.ask("hello")
        state = json.loads(ms.mailctl("status", "--json").stdout)
        assert state["running"] is True and state["pid"] == ms.proc.pid
        assert state["queue"] == {"incoming": 0, "active": 0, "deferred": 0, "hold": 0, "corrupt": 0,
                                  "deferred_reasons": []}
        time.strptime(state["started"], "%Y-%m-%dT%H:%M:%SZ")
        (svc,) = state["services"]
        assert svc == {**svc, "name": f"127.0.0.1:{ms.port(echo)}", "command": ECHO, "ready": True,
                       "connections": 2, "served": 2, "maxproc": 5, "workers": [anonymous.pid()]}
        rows = json.loads(ms.mailctl("connections", "--json").stdout)
        assert sorted((r["user"] or "-", r["ip"], r["protocol"], r["connections"]) for r in rows) == \
               [("-", "127.0.0.1", "pop", 1), ("bob", "127.0.0.1", "pop", 1)]
        text = ms.mailctl("connections").stdout
        assert "bob" in text and "127.0.0.1" in text
        assert f"127.0.0.1:{ms.port(echo)}" in ms.mailctl("status").stdout
    wait_until(lambda: service(ms, echo)["connections"] == 0, what="sessions to be counted closed")


def test_graceful_stop_finishes_open_session(mailsystem):
    ms = mailsystem(main={"graceful_timeout": "20s"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as session:
        ms.signal(signal.SIGTERM)
        wait_until(lambda: status(ms)["stopping"], what="the master to start stopping")
        with pytest.raises(ConnectionRefusedError):
            EchoClient(ms.port(echo))                    # no new connections
        assert session.ask("still working") == "+OK still working"
        assert ms.proc.poll() is None
        assert session.ask("QUIT") == "+OK bye"
    assert ms.proc.wait(10) == 0
    assert not (ms.var / "run" / "master.pid").exists()
    assert "stopped" in ms.log("server")


def test_stop_tells_idle_sessions_but_reload_does_not(mailsystem):
    ms = mailsystem(main={"graceful_timeout": "60s"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as session:
        assert session.ask("NEXT") == "+OK waiting"
        ms.signal(signal.SIGHUP)                         # reload: old workers finish in peace
        wait_until(lambda: "reloaded " in ms.log("server"), what="the reload")
        assert session.ask("after reload") == "+OK after reload"
        assert session.ask("NEXT") == "+OK waiting"      # idle, between two commands
        ms.signal(signal.SIGTERM)
        assert session.line() == "-ERR [SYS/TEMP] shutting down"
        assert session.line() == ""
    assert ms.proc.wait(30) == 0                         # long before graceful_timeout
    assert "graceful_timeout reached" not in ms.log("server")


def test_stop_kills_sessions_after_graceful_timeout(mailsystem):
    ms = mailsystem(main={"graceful_timeout": "1s"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as session:
        ms.signal(signal.SIGTERM)
        assert ms.proc.wait(10) == 0
        assert session.line() == ""
    assert "graceful_timeout reached: killing 1 workers with 1 sessions" in ms.log("server")


def test_daemon_mode_and_mailctl_stop(mailsystem):
    ms = mailsystem()
    echo = ms.add_service(ECHO)
    pid_file = ms.var / "run" / "master.pid"
    result = _run_master(ms, "--daemon")               # returns once the daemon answers
    assert result.returncode == 0, result.stderr
    pid = int(pid_file.read_text())
    try:
        assert ms.wait_ready()["pid"] == pid
        assert os.getsid(pid) != os.getsid(0)          # detached: a session of its own
        with EchoClient(ms.port(echo)) as client:
            assert client.ask("hi") == "+OK hi"
        again = _run_master(ms, "--daemon")
        assert again.returncode == 1 and "already running" in again.stderr
        assert ms.mailctl("stop").stdout.strip() == f"master {pid} stopped"
        assert not pid_file.exists()
        assert ms.mailctl("status", check=False).returncode == 1
    finally:
        if pid_file.exists():
            os.kill(pid, signal.SIGKILL)


def test_mailctl_stop_by_pid_file_when_socket_is_gone(mailsystem):
    ms = mailsystem()
    ms.add_service(ECHO)
    ms.start()
    (ms.var / "run" / "master.sock").unlink()
    assert ms.mailctl("stop").stdout.strip() == f"master {ms.proc.pid} stopped"
    assert ms.proc.wait(10) == 0


def test_sigint_stops_and_a_second_signal_kills_at_once(mailsystem):
    ms = mailsystem(main={"graceful_timeout": "60s"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as session:
        ms.signal(signal.SIGINT)
        wait_until(lambda: status(ms)["stopping"], what="the master to start stopping")
        assert session.ask("still here") == "+OK still here"
        ms.signal(signal.SIGTERM)
        assert ms.proc.wait(10) == 0                    # far sooner than graceful_timeout
        assert session.line() == ""
    assert "SIGTERM while stopping: killing the remaining workers now" in ms.log("server")


@pytest.mark.parametrize("request_line, error", [
    (b'{"op": ["status"]}', "unknown request"),
    (b"[" * 3000 + b"]" * 3000, "request is not JSON"),           # deeper than json may nest
    (b"\xff\xfe{}", "request is not JSON"),
    (b'"status"', "unknown request"),
])
def test_status_socket_refuses_bad_requests_and_keeps_serving(mailsystem, request_line, error):
    ms = mailsystem()
    ms.add_service(ECHO)
    ms.start()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(ms.var / "run" / "master.sock"))
        sock.sendall(request_line + b"\n")
        answer = json.loads(sock.makefile("rb").readline())
    assert answer["ok"] is False and answer["error"].startswith(error)
    assert status(ms)["running"] and ms.proc.poll() is None

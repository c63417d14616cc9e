"""The unix socket of a service that serves one (master/listeners.py) and how a worker gets it."""
from __future__ import annotations

import os
import socket
import stat

import pytest

from master import proto
from master.cf import parse_service_line
from master.listeners import bind_unix, remove_unix, unix_path
from master.params import Params
from master.spawn import Service, _environment


def _auth(tmp_path):
    params = Params({"data_directory": str(tmp_path), "mail_owner": "nobody"}, {}, str(tmp_path))
    os.makedirs(params.run_directory, exist_ok=True)
    return parse_service_line("auth unix - n n - 1 auth", "master.cf:1"), params


def test_bind_unix_replaces_a_stale_socket_and_keeps_the_socket_private(tmp_path):
    spec, params = _auth(tmp_path)
    path = unix_path(spec, params)
    assert path == os.path.join(params.run_directory, "auth.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)                                   # what a killed master leaves behind
    stale.close()
    sock = bind_unix(spec, params)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == (0o660 if os.geteuid() == 0 else 0o600)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        remove_unix(sock)
    assert not os.path.exists(path)


def test_bind_unix_refuses_what_is_not_a_socket(tmp_path):
    spec, params = _auth(tmp_path)
    open(unix_path(spec, params), "w").close()
    with pytest.raises(OSError):
        bind_unix(spec, params)


def test_the_worker_gets_its_listening_socket_and_everyone_the_auth_path(tmp_path):
    spec, params = _auth(tmp_path)
    sock = bind_unix(spec, params)
    try:
        sockets = {"auth": unix_path(spec, params), "smtp": "/run/smtp.sock"}
        env = _environment(Service(spec, params, unix_listener=sock), 5, sockets)
        assert env[proto.ENV_LISTEN_FD] == str(sock.fileno())
        assert env[proto.ENV_AUTH_SOCKET] == unix_path(spec, params) and env[proto.ENV_SMTP_SOCKET] == "/run/smtp.sock"
        other = _environment(Service(parse_service_line("qmgr unix n - n 300 1 qmgr", "m:2"), params), 5, {})
        assert proto.ENV_LISTEN_FD not in other and proto.ENV_AUTH_SOCKET not in other
    finally:
        remove_unix(sock)

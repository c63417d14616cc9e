"""Listening sockets: the master binds them once; inet ones it accepts on itself.

bind(spec) -> a non-blocking listening socket for an inet ServiceSpec: IPv4 or IPv6 from
the address form, all addresses when the host is empty (IPv6 dual-stack where available),
SO_REUSEADDR so that a restart does not wait for TIME_WAIT.
accept_ready(sock, at_most) -> list of (socket, (ip, port)) accepted now, non-blocking.
unix_path(spec, params) -> $run_directory/<service>.sock, the socket of a unix service that
serves one (ServiceSpec.listens_on_socket: auth); bind_unix(spec, params) binds it: a stale
socket file is replaced, anything else there is an error; 0600 when the master is not root,
else root's with mail_owner's group, 0660, so the workers may connect and no other user may
(and no worker may change that). The master passes such a socket to the service's worker,
which accepts on it itself: its clients are the master's own workers, not remote clients
subject to the per-client limits. remove_unix(sock) closes it and removes its file.
Diagnostics: OSError from bind() and resource errors of accept() (EMFILE...) are left to
the caller, which names the master.cf line / logs and retries.
"""
from __future__ import annotations

import errno
import os
import pwd
import socket
import stat

BACKLOG = 1024          # the kernel caps it at net.core.somaxconn
# accept() errors that concern one client that gave up, not the listener.
_ONE_CLIENT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


def bind(spec) -> socket.socket:
    host = spec.host
    if not host:
        family, address = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    else:
        infos = socket.getaddrinfo(host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, address = infos[0][0], infos[0][4][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, spec.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def accept_ready(sock: socket.socket, at_most: int) -> list[tuple[socket.socket, tuple[str, int]]]:
    accepted = []
    for _ in range(at_most):
        try:
            conn, address = sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if e.errno in _ONE_CLIENT_ERRORS:
                continue
            raise               # EMFILE, ENOBUFS...: the caller logs and retries later
        accepted.append((conn, (str(address[0]), int(address[1]))))
    return accepted


def unix_path(spec, params) -> str:
    return os.path.join(params.run_directory, f"{spec.name}.sock")


def bind_unix(spec, params) -> socket.socket:
    path = unix_path(spec, params)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)                   # left by a master that was killed
    except FileNotFoundError:
        pass
    group = pwd.getpwnam(params.mail_owner).pw_gid if os.geteuid() == 0 else -1   # KeyError: preflight said
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)                       # EADDRINUSE for anything else at that path
        os.chmod(path, 0o600 if group < 0 else 0o660)
        if group >= 0:
            os.chown(path, 0, group, follow_symlinks=False)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def remove_unix(sock: socket.socket) -> None:
    path = sock.getsockname()
    sock.close()
    try:
        os.unlink(path)
    except OSError:
        pass

"""Listening sockets of the inet services; the master binds them once and accepts itself.

bind(spec) -> a non-blocking listening socket for an inet ServiceSpec: IPv4 or IPv6 from
the address form, all addresses when the host is empty (IPv6 dual-stack where available),
SO_REUSEADDR so that a restart does not wait for TIME_WAIT.
accept_ready(sock, at_most) -> list of (socket, (ip, port)) accepted now, non-blocking.
Diagnostics: OSError from bind() and resource errors of accept() (EMFILE...) are left to
the caller, which names the master.cf line / logs and retries.
"""
from __future__ import annotations

import errno
import socket

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

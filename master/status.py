"""The master's status socket: run_directory/master.sock, one JSON request per connection.

Wire: the client sends one line `{"op": OP}\\n`, the master answers one JSON line and
closes. OP is status, connections, reload or stop (see master/loop.py for the answers).

Client side (mailctl, tests): request(run_directory, op, timeout) -> dict, raises
MasterNotRunning when nothing answers on the socket. pid_path / socket_path name the files.
Server side (the master's selectors loop): StatusServer(path, handlers, selector) binds the
socket (mode 0600: reload and stop are for the owner only), answers requests with
handlers[op](request) and closes clients that stay silent longer than CLIENT_TIMEOUT.
Diagnostics: a request the master does not know gets {"ok": false, "error": "..."}.
"""
from __future__ import annotations

import json
import os
import selectors
import socket
import time
from typing import Callable

SOCKET_NAME = "master.sock"
PID_NAME = "master.pid"
REQUEST_MAX = 4096
CLIENT_TIMEOUT = 5.0


class MasterNotRunning(Exception):
    """Nothing answers on the status socket."""


def socket_path(run_directory: str) -> str:
    return os.path.join(run_directory, SOCKET_NAME)


def pid_path(run_directory: str) -> str:
    return os.path.join(run_directory, PID_NAME)


def request(run_directory: str, op: str, timeout: float = 10.0) -> dict:
    path = socket_path(run_directory)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise MasterNotRunning(f"the master is not running (no answer on {path}: {e.strerror})") from None
        sock.sendall(json.dumps({"op": op}).encode() + b"\n")
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        raise MasterNotRunning(f"the master closed {path} without an answer")
    return json.loads(data)


def is_answering(run_directory: str) -> bool:
    try:
        request(run_directory, "status", timeout=2.0)
    except (MasterNotRunning, OSError, ValueError):
        return False
    return True


class StatusServer:
    def __init__(self, path: str, handlers: dict[str, Callable[[dict], dict]], selector: selectors.BaseSelector):
        self.path = path
        self.handlers = handlers
        self.selector = selector
        self.clients: dict[socket.socket, tuple[bytearray, float]] = {}
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_mask = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_mask)
        self.sock.listen(16)
        self.sock.setblocking(False)
        selector.register(self.sock, selectors.EVENT_READ, self._on_accept)

    def _on_accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client.setblocking(False)
            self.clients[client] = (bytearray(), time.monotonic())
            self.selector.register(client, selectors.EVENT_READ, lambda c=client: self._on_data(c))

    def _on_data(self, client: socket.socket) -> None:
        buf, _ = self.clients[client]
        try:
            chunk = client.recv(REQUEST_MAX)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf += chunk
        if b"\n" not in buf:
            if not chunk or len(buf) > REQUEST_MAX:
                self._drop(client)
            return
        self._answer(client, bytes(buf[: buf.index(b"\n")]))

    def _answer(self, client: socket.socket, line: bytes) -> None:
        try:
            req = json.loads(line)
        except (ValueError, RecursionError):
            req = None
        op = req.get("op") if isinstance(req, dict) else None
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is not None:
            answer = handler(req)
        elif req is None:
            answer = {"ok": False, "error": "request is not JSON"}
        else:
            answer = {"ok": False, "error": f"unknown request {line[:100]!r}"}
        self.selector.unregister(client)
        del self.clients[client]
        try:
            # The answer is small; a client that does not read it loses it after a second.
            client.setblocking(True)
            client.settimeout(1.0)
            client.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        finally:
            client.close()

    def _drop(self, client: socket.socket) -> None:
        self.selector.unregister(client)
        del self.clients[client]
        client.close()

    def expire(self) -> None:
        """Close clients that connected but never finished a request."""
        deadline = time.monotonic() - CLIENT_TIMEOUT
        for client, (_, since) in list(self.clients.items()):
            if since < deadline:
                self._drop(client)

    def close(self) -> None:
        for client in list(self.clients):
            self._drop(client)
        self.selector.unregister(self.sock)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

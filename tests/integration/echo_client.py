"""Client side of tests/integration/echo_service.py, and waits on the master's status."""
from __future__ import annotations

import socket
import time

ECHO = "tests.integration.echo_service"


class EchoClient:
    def __init__(self, port: int, timeout: float = 10.0, source: str | None = None):
        """source: the loopback address to connect from (127.0.0.2 ... for a client outside
        mynetworks, when the test narrows it)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def ask(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\r\n")
        return self.line()

    def pid(self) -> int:
        return int(self.ask("PID").split()[1])

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> "EchoClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def status(ms) -> dict:
    answer = ms.status()
    assert answer is not None, "the master does not answer on its status socket"
    return answer


def service(ms, key: str) -> dict:
    name = f"127.0.0.1:{ms.port(key)}"
    return next(s for s in status(ms)["services"] if s["name"] == name)


def wait_until(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll predicate() until it returns something true; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")

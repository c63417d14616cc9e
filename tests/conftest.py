"""Shared test harness: a real `master` on free loopback ports in a temporary folder.

    def test_x(mailsystem):
        ms = mailsystem(main={"log_level": "high"})
        smtp = ms.add_service("smtpd", "-o", "smtpd_sasl_auth_enable=yes", maxproc=4)
        ms.add_unix_service("qmgr", wakeup=300)
        ms.start()
        ms.mailctl("user", "add", "bob", "--password", "pw")
        ms.status()["services"]          # the master's status answer (= mailctl status --json)
        with smtplib.SMTP("127.0.0.1", ms.port(smtp)) as s: ...

Every MailSystem is stopped (SIGTERM, then SIGKILL) at the end of the test.
"""
from __future__ import annotations

import csv
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items) -> None:
    """Under pytest-xdist (`make test` runs the suite in parallel processes), the tests that
    install mailhouse share one installation: they all go to the same process. The imaptest
    runs (long, one server each) go to a group of their own."""
    for item in items:
        if item.get_closest_marker("installs"):
            item.add_marker(pytest.mark.xdist_group("installs"))
        elif item.get_closest_marker("imaptest"):
            item.add_marker(pytest.mark.xdist_group("imaptest"))

CORPUS = Path(__file__).resolve().parent / "corpus"
SHARED_CORPUS = REPO.parent / "shared" / "corpus"     # real messages: its README.md and MANIFEST.tsv


def shared_corpus() -> list[tuple[Path, set[str]]]:
    """(path, features) of every single message of the shared corpus, in MANIFEST order."""
    manifest = SHARED_CORPUS / "MANIFEST.tsv"
    assert manifest.is_file(), f"the shared corpus is missing: no {manifest}"
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(SHARED_CORPUS / row["path"], set(row["features"].split(",")))
            for row in rows if row["path"].startswith("messages/")]


# Ports for the servers of the tests: below the kernel's ephemeral range (32768-60999 on
# Linux), so a client socket of a parallel test cannot take one between the pick and the
# master's bind; the pick is random, so parallel tests rarely try the same one.
SERVER_PORTS = range(20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    for _ in range(200):
        port = random.choice(SERVER_PORTS)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in {SERVER_PORTS}")


@dataclass(frozen=True)
class Installation:
    """mailhouse installed into a venv of its own (the production layout): its interpreter and
    console scripts are used instead of the checkout's, and workers drop to mail_owner."""
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def script(self, name: str) -> str:
        return str(self.venv / "bin" / name)


class MailSystem:
    def __init__(self, root: Path, main: dict[str, str] | None = None, install: Installation | None = None):
        self.root = root
        self.install = install
        self.etc = root / "etc"
        self.etc.mkdir(parents=True, exist_ok=True)
        self.main = {
            "myhostname": "mail.example.test",
            "mydomain": "example.test",
            "mydestination": "$myhostname, $mydomain",
            "data_directory": str(root / "var"),
            "disk_min_free": "1M",
            "log_level": "high",
            "auth_failure_delay": "0s",
            "smtpd_pregreet_delay": "0",     # on by default (1s); test_smtpd_pregreet.py turns it on
            "graceful_timeout": "5s",
            **(main or {}),
        }
        self.services: list[str] = []
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        # the master's (and so its workers') interpreter; an installed system's workers are unpriv
        self.python = install.python if install else sys.executable
        self.unpriv = "-" if install else "n"

    # -- configuration
    def add_service(self, command: str, *args: str, maxproc: str | int = "-", name: str | None = None,
                    host: str = "127.0.0.1", port: int | None = None) -> str:
        """Add an inet service on a free port (or the port given); returns its key for port()."""
        port = port or free_port(host)
        key = name or f"{command}{len(self.services)}"
        self.ports[key] = port
        self.services.append(f"{host}:{port} inet n {self.unpriv} n - {maxproc} {command} {' '.join(args)}".rstrip())
        return key

    def add_unix_service(self, command: str, *args: str, wakeup: int = 300, maxproc: int = 1) -> None:
        self.services.append(f"{command} unix n {self.unpriv} n {wakeup} {maxproc} {command} {' '.join(args)}".rstrip())

    def add_auth_service(self) -> None:
        """The auth service (run as root when the master is): smtpd and pop3d ask it."""
        self.services.append("auth unix - n n - 1 auth")

    def add_smtp_service(self) -> None:
        """The outgoing SMTP delivery service (`smtp unix - - n - 1 smtp` of an installed
        system; from the checkout it stays root like the other workers); its socket is
        $run_directory/smtp.sock."""
        self.services.append(f"smtp unix - {self.unpriv} n - 1 smtp")

    def write_config(self) -> None:
        (self.etc / "master.cf").write_text("\n".join(self.services) + "\n")
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main.items()))

    def set_main(self, **changes: str) -> None:
        self.main.update(changes)
        self.write_config()

    def port(self, key: str) -> int:
        return self.ports[key]

    @property
    def var(self) -> Path:
        return Path(self.main["data_directory"])

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.install:                 # the installed package, never the checkout
            env.pop("PYTHONPATH", None)
            return env
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    # -- processes
    def start(self, wait: bool = True) -> None:
        self.write_config()
        self.proc = subprocess.Popen(
            [self.python, "-m", "master", "-c", str(self.etc / "master.cf")],
            cwd=self.root, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"master exited with {self.proc.returncode}:\n{out}")
            last = self.status()
            if last is not None and all(svc.get("ready") for svc in last.get("services", [])):
                return last
            time.sleep(0.05)
        raise TimeoutError(f"master not ready: {last}")

    def status(self) -> dict | None:
        """The master's answer to `status` (as `mailctl status --json`), None while it does not answer."""
        from master.status import MasterNotRunning, request
        run_directory = Path(self.main.get("run_directory", self.var / "run"))
        try:
            return request(str(run_directory), "status", timeout=5)
        except (MasterNotRunning, OSError, ValueError):
            return None

    def mailctl(self, *args: str, check: bool = True, input: str | bytes | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        return self.tool("mailctl", *args, check=check, input=input, timeout=timeout)

    def tool(self, module_main: str, *args: str, check: bool = True, input: str | bytes | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a console script (mailctl, sendmail, mailq, ...) with -c pointing at this system."""
        entry = {
            "mailctl": "master.ctl:main", "sendmail": "master.ctl.sendmail:main",
            "mailq": "master.ctl:mailq_main", "newaliases": "master.ctl:newaliases_main",
            "postalias": "master.ctl:postalias_main",
        }[module_main]
        module, func = entry.split(":")
        code = f"import sys; sys.argv[0] = {module_main!r}; from {module} import {func}; {func}()"
        command = [self.install.script(module_main)] if self.install else [sys.executable, "-c", code]
        text = not isinstance(input, bytes)
        result = subprocess.run([*command, "-c", str(self.etc), *args], cwd=self.root,
                                env=self.env(), input=input, capture_output=True, text=text, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{module_main} {' '.join(args)} -> {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the master and every worker (its process group)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def log(self, name: str) -> str:
        path = self.var / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log(name)
            if needle in text:
                return text
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not in {name}.log:\n{self.log(name)[-3000:]}")


@pytest.fixture
def mailsystem(tmp_path):
    systems: list[MailSystem] = []

    def make(main: dict[str, str] | None = None, root: Path | None = None) -> MailSystem:
        ms = MailSystem(root or tmp_path / f"ms{len(systems)}", main)
        systems.append(ms)
        return ms

    yield make
    for ms in systems:
        ms.stop()
        ms.kill()


@pytest.fixture
def corpus() -> Path:
    return CORPUS

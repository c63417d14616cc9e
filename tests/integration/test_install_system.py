"""`make install-system` into a temporary root, then the installed system run as its unit runs it.

The Makefile's PREFIX, SYSCONFDIR, LOCALSTATEDIR, LOGDIR and UNITDIR point below one 0755
folder under /tmp (mail_owner must be able to enter it). The administrator's master.cf is
there before the install (on free loopback ports) and must be kept; main.cf comes from the
template. Then the master is started with the unit's ExecStart, under the unit's capability
bounding set and NoNewPrivileges (setpriv, as root), with a notification socket playing
systemd: READY=1, mail in by SMTP, out by POP3, ExecReload, SIGTERM as KillMode=mixed sends it.
A second, fast test stages the configuration and unit steps with DESTDIR (a package build);
the DESTDIR rewrite of the venv itself would take a second pip install and is not run here.
"""
from __future__ import annotations

import configparser
import json
import os
import poplib
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.installs]

SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_TIMEOUT = 900


def _system_python_has_venv() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import venv, ensurepip"], capture_output=True)
    return probe.returncode == 0


def _clean_env() -> dict[str, str]:
    """The environment of an administrator's shell: nothing that points at the checkout."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "NOTIFY_SOCKET") and not k.startswith("MAILHOUSE_")}


def _read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    unit.optionxform = str                      # systemd keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def _bounding_set(unit: configparser.ConfigParser) -> str:
    """The unit's CapabilityBoundingSet in setpriv's words: -all,+net_bind_service,..."""
    names = unit["Service"]["CapabilityBoundingSet"].split()
    return ",".join(["-all", *(f"+{name.lower().removeprefix('cap_')}" for name in names)])


def _world_enterable(path: Path) -> bool:
    for folder in [path, *path.parents]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _ready_status(mailctl: list[str], env: dict[str, str]) -> dict | None:
    """`mailctl status --json` once every service has a worker ready; None before."""
    answer = subprocess.run([*mailctl, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    if answer.returncode != 0:
        return None
    state = json.loads(answer.stdout)
    return state if all(svc["ready"] for svc in state["services"]) else None


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def _wait(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def install_root():
    root = Path(tempfile.mkdtemp(prefix="mailhouse-install-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_install_system_and_run_as_the_unit_does(install_root):
    if not _system_python_has_venv():
        pytest.skip(f"{SYSTEM_PYTHON} lacks venv/ensurepip (apt-get install python3-venv)")
    root = install_root
    prefix, etc, data = root / "opt/mailhouse", root / "etc/mailhouse", root / "var/lib/mailhouse"
    logs, units = root / "var/log/mailhouse", root / "etc/systemd/system"
    as_root = os.geteuid() == 0

    # The administrator's master.cf is already there; the install must keep it as it is.
    smtp_port, pop_port = free_port(), free_port()
    etc.mkdir(parents=True)
    admin_master_cf = (f"127.0.0.1:{smtp_port} inet n - n - - smtpd\n"
                       f"127.0.0.1:{pop_port} inet n - n - - pop3d\n"
                       "qmgr unix n - n 300 1 qmgr\n")
    (etc / "master.cf").write_text(admin_master_cf)

    result = subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "install-system", f"PREFIX={prefix}",
         f"SYSCONFDIR={etc}", f"LOCALSTATEDIR={data}", f"LOGDIR={logs}", f"UNITDIR={units}"],
        env=_clean_env(), capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"kept {etc}/master.cf" in result.stdout

    # --- the venv: on the system interpreter, with the compiled index, enterable by mail_owner
    assert (prefix / "pyvenv.cfg").read_text().count(f"home = {os.path.dirname(SYSTEM_PYTHON)}") == 1
    for script in ("master", "mailctl", "sendmail", "mailq", "newaliases", "postalias"):
        first_line = (prefix / "bin" / script).read_text().splitlines()[0]
        assert first_line.startswith(f"#!{prefix}/bin/python"), first_line
    site = next((prefix / "lib").glob("python3*/site-packages"))
    assert list((site / "store").glob("_index.*.so")), "the compiled index was not built"
    assert not (site / "tests").exists()
    assert _world_enterable(prefix / "bin")
    assert (prefix / "share/doc/mailhouse/SECURITY.md").exists()

    # --- the configuration: the template's main.cf with this install's directories
    assert (etc / "master.cf").read_text() == admin_master_cf
    main_cf = (etc / "main.cf").read_text()
    template = (REPO / "etc/main.cf").read_text()
    assert f"data_directory = {data}\n" in main_cf and f"log_directory = {logs}\n" in main_cf
    assert "data_directory = /var/lib/mailhouse" not in main_cf
    assert len(main_cf.splitlines()) == len(template.splitlines())
    assert stat.S_IMODE((etc / "main.cf").stat().st_mode) == 0o644

    # --- the unit, with this install's paths
    unit_path = units / "mailhouse.service"
    settings = "".join(line for line in unit_path.read_text().splitlines(True) if not line.startswith("#"))
    for default in ("/opt/mailhouse", "/etc/mailhouse", "/var/lib/mailhouse", "/var/log/mailhouse"):
        assert not re.search(f"(?<!{re.escape(str(root))}){default}", settings), default
    unit = _read_unit(unit_path)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == f"{prefix}/bin/master -c {etc}/master.cf"
    assert service["ExecReload"] == f"{prefix}/bin/mailctl -c {etc} reload"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "78"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ReadWritePaths"].split() == [f"-{data}", f"-{logs}"]
    assert int(service["TimeoutStopSec"]) > 30 + 5          # graceful_timeout + the master's kill wait
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit_path)],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # --- mailctl init (run by the install): the data directories and their owners
    for folder in ("queue", "store", "index", "run", "tls"):
        assert (data / folder).is_dir(), folder
    assert logs.is_dir()
    if as_root:
        mail = pwd.getpwnam("mail")
        for folder in ("queue", "store", "index", "tls"):
            assert (data / folder).stat().st_uid == mail.pw_uid, folder
        run = (data / "run").stat()
        assert (run.st_uid, stat.S_IMODE(run.st_mode)) == (0, 0o755)

    # --- run it as the unit does. The administrator names the host first (README).
    with open(etc / "main.cf", "a") as f:
        f.write("myhostname = mail.example.test\nmydomain = example.test\n"
                "disk_min_free = 1M\ngraceful_timeout = 5s\n")
    env = _clean_env()
    mailctl = [str(prefix / "bin/mailctl"), "-c", str(etc)]
    added = subprocess.run([*mailctl, "user", "add", "bob", "--password-stdin"], input="secret\n",
                           env=env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr

    notify_path = str(root / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    command = shlex.split(service["ExecStart"])
    if as_root and shutil.which("setpriv"):
        command = ["setpriv", "--bounding-set", _bounding_set(unit), "--no-new-privs", "--", *command]
    master = subprocess.Popen(command, env={**env, "NOTIFY_SOCKET": notify_path}, cwd="/",
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = _recv(notify)
        assert ready.startswith("READY=1\n"), ready
        status = _wait(lambda: _ready_status(mailctl, env), "every service ready")
        assert status["pid"] == master.pid
        if as_root:
            worker = status["services"][0]["workers"][0]
            assert os.stat(f"/proc/{worker}").st_uid == pwd.getpwnam("mail").pw_uid

        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
            smtp.sendmail("alice@example.org", ["bob@example.test"],
                          b"Subject: installed\r\n\r\nmail flows through the installed system\r\n")

        def fetch() -> bytes | None:
            pop = poplib.POP3("127.0.0.1", pop_port, timeout=30)
            try:
                pop.user("bob")
                pop.pass_("secret")
                count, _size = pop.stat()
                return b"\r\n".join(pop.retr(1)[1]) if count else None
            finally:
                pop.quit()
        assert b"mail flows through the installed system" in _wait(fetch, "delivery to bob")

        reload = subprocess.run(shlex.split(service["ExecReload"]), env=env, capture_output=True,
                                text=True, timeout=60)
        assert (reload.returncode, reload.stdout.strip()) == (0, "reloaded"), reload.stderr
        assert [_recv(notify), _recv(notify)] == ["RELOADING=1", "READY=1"]

        master.send_signal(signal.SIGTERM)              # KillMode=mixed: the master alone
        assert master.wait(int(service["TimeoutStopSec"])) == 0
        assert _recv(notify) == "STOPPING=1"
        assert "stopped" in (logs / "server.log").read_text()
    finally:
        notify.close()
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait(10)
        output = master.stdout.read().decode(errors="replace")
        master.stdout.close()
    assert "Traceback" not in output, output


def test_staged_install_keeps_configuration_and_leaves_init(tmp_path):
    """The steps after the venv with DESTDIR (a package build): fast, no pip."""
    stage = tmp_path / "stage"
    env = {**_clean_env(), "DESTDIR": str(stage), "PREFIX": "/srv/mailhouse",
           "LOCALSTATEDIR": "/srv/mail&data", "LOGDIR": "/srv/logs"}
    script = str(REPO / "etc/install-system.sh")

    def step(name: str) -> str:
        result = subprocess.run(["sh", script, name], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    step("config")
    main_cf = stage / "etc/mailhouse/main.cf"
    assert "data_directory = /srv/mail&data\n" in main_cf.read_text()
    assert "log_directory = /srv/logs\n" in main_cf.read_text()
    main_cf.write_text("# the administrator's own\n")
    assert "kept" in step("config")
    assert main_cf.read_text() == "# the administrator's own\n"
    assert (stage / "etc/mailhouse/master.cf").read_text() == (REPO / "etc/master.cf").read_text()

    step("unit")
    service = _read_unit(stage / "etc/systemd/system/mailhouse.service")["Service"]
    assert service["ExecStart"] == "/srv/mailhouse/bin/master -c /etc/mailhouse/master.cf"
    assert service["ReadWritePaths"] == "-/srv/mail&data -/srv/logs"
    assert (stage / "srv/mailhouse/share/doc/mailhouse/README.md").exists()

    assert "/srv/mailhouse/bin/mailctl -c /etc/mailhouse init" in step("init")
    assert not (stage / "srv/mail&data").exists()
    bad = subprocess.run(["sh", script, "config"], env={**env, "SYSCONFDIR": "relative"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "absolute path" in bad.stderr

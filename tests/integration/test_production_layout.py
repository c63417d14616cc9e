"""The production layout end to end: installed into a venv on the system Python, `mailctl
init` as root, the master as root, every worker as mail_owner.

Mail goes in by SMTP, is delivered by qmgr and comes out by POP3 and IMAP, and mail for another
domain leaves through the smtp service (to a second mailhouse as relayhost); reload and stop work.
Passwords are verified by the auth service, the one worker that stays root: the password
database is root's (0700/0600), a process of mail_owner cannot open it, and SMTP AUTH,
POP3 and IMAP logins work through the service; the master refuses to start while mail_owner could
read it. The
master refuses to start (exit 78, naming the path) when a worker could not use what it
needs, instead of letting the workers crash-loop while smtpd goes on accepting mail. The
master's run directory is root's: mail_owner cannot plant links there, a link left there is
not followed, and `mailctl stop` never signals a pid that is not this configuration's master.
"""
from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import smtplib
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.integration.delivery_support import Inbox

# the first test also builds the installation (a venv and a pip install: about a minute)
pytestmark = [pytest.mark.integration, pytest.mark.installs, pytest.mark.timeout(600)]
CORPUS_MESSAGE = REPO / "tests" / "corpus" / "05-mixed-attachment.eml"


def _system(production_system, **main):
    ms = production_system(main={"minimal_backoff_time": "1s", "maximal_backoff_time": "2s", **main})
    smtp = ms.add_service("smtpd", name="smtpd")
    pop = ms.add_service("pop3d", name="pop3d")
    ms.add_service("imapd", name="imapd")
    ms.add_unix_service("qmgr", wakeup=60)
    ms.add_auth_service()
    ms.add_smtp_service()
    ms.write_config()
    ms.mailctl("init")
    ms.mailctl("user", "add", "bob", "--password", "bob-pw")
    return ms, smtp, pop


def _ids(pid: int) -> dict[str, list[int]]:
    """Uid and Gid (real, effective, saved, filesystem) and supplementary groups of pid."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(n) for n in value.split()]
    return fields


def _pop_count(port: int) -> int:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        client.user("bob")
        client.pass_("bob-pw")
        return client.stat()[0]
    finally:
        client.quit()


def _wait_count(port: int, count: int, ms) -> None:
    deadline = time.monotonic() + 30
    while (got := _pop_count(port)) < count:
        assert time.monotonic() < deadline, f"{got} of {count} delivered; server.log:\n{ms.log('server')[-3000:]}"
        time.sleep(0.3)


def test_root_master_delivers_with_workers_as_mail_owner(production_system, mailsystem):
    far = mailsystem(main={"myhostname": "mx.remote.test", "mydomain": "remote.test"})
    far.add_service("smtpd", name="smtpd")
    far.add_unix_service("qmgr", wakeup=60)
    far.write_config()
    far.mailctl("user", "add", "carol", "--password", "carol-pw")
    far.start()
    ms, smtp, pop = _system(production_system, relayhost=f"[127.0.0.1]:{far.port('smtpd')}")
    ms.start()
    mail = pwd.getpwnam("mail")
    services = ms.status()["services"]
    workers = [pid for svc in services if svc["command"] != "auth" for pid in svc["workers"]]
    assert workers
    for pid in workers:
        assert _ids(pid) == {"Uid": [mail.pw_uid] * 4, "Gid": [mail.pw_gid] * 4, "Groups": []}
    assert _ids(ms.proc.pid)["Uid"] == [0] * 4          # the master keeps root for the ports
    (auth,) = [pid for svc in services if svc["command"] == "auth" for pid in svc["workers"]]
    assert _ids(auth)["Uid"] == [0] * 4                  # the one reader of the password database

    passwords = ms.var / "passwords"
    for path, mode in ((passwords, 0o700), (passwords / "data.mdb", 0o600), (ms.var / "secret.key", 0o600)):
        info = os.stat(path)
        assert (info.st_uid, info.st_mode & 0o777) == (0, mode), path
    opened = subprocess.run([ms.python, "-c", f"open({str(passwords / 'data.mdb')!r}, 'rb')"], user=mail.pw_uid,
                            group=mail.pw_gid, extra_groups=[], cwd="/", capture_output=True, text=True)
    assert opened.returncode == 1 and "PermissionError" in opened.stderr
    with smtplib.SMTP("127.0.0.1", ms.port(smtp), timeout=10) as client:
        assert client.login("bob", "bob-pw")[0] == 235
    with smtplib.SMTP("127.0.0.1", ms.port(smtp), timeout=10) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("bob", "wrong")
    assert _pop_count(ms.port(pop)) == 0                 # POP3 USER/PASS through the auth service

    message = CORPUS_MESSAGE.read_bytes().replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", ms.port(smtp), timeout=10) as client:
        client.sendmail("alice@example.org", ["bob@example.test"], message)
    _wait_count(ms.port(pop), 1, ms)
    retrieved = poplib.POP3("127.0.0.1", ms.port(pop), timeout=10)
    retrieved.user("bob")
    retrieved.pass_("bob-pw")
    body = b"\r\n".join(retrieved.retr(1)[1]) + b"\r\n"
    retrieved.quit()
    assert body.endswith(message)
    with imaplib.IMAP4("127.0.0.1", ms.port("imapd"), timeout=10) as imap:   # IMAP as mail_owner too
        imap.login("bob", "bob-pw")
        assert imap.select("INBOX") == ("OK", [b"1"])
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1].endswith(message)

    with smtplib.SMTP("127.0.0.1", ms.port(smtp), timeout=10) as client:   # out through the smtp service
        client.sendmail("bob@example.test", ["carol@remote.test"], message)
    far_inbox = Inbox(far)
    try:
        [arrived] = far_inbox.wait("carol", 1, timeout=30)
        assert arrived.endswith(message)
    finally:
        far_inbox.close()

    assert "reloaded" in ms.mailctl("reload").stdout
    with smtplib.SMTP("127.0.0.1", ms.port(smtp), timeout=10) as client:
        client.sendmail("alice@example.org", ["bob@example.test"], message)
    _wait_count(ms.port(pop), 2, ms)
    assert "stopped" in ms.mailctl("stop").stdout
    assert ms.proc.wait(10) == 0


def test_refuses_to_start_when_a_worker_path_is_root_only(production_system):
    ms, _smtp, _pop = _system(production_system)
    fifo = ms.var / "queue" / "public" / "qmgr"
    os.chown(fifo, 0, 0)                      # what `mailctl init` used to leave
    os.chmod(fifo, 0o600)
    ms.start(wait=False)
    assert ms.proc.wait(30) == 78
    out = ms.proc.stdout.read().decode()
    assert f"{fifo} (the qmgr wake-up FIFO in queue_directory) is not usable by mail" in out, out

    ms.mailctl("init")                        # init gives it back to mail_owner
    ms.start()
    assert ms.status()["services"]


def test_refuses_to_start_while_mail_owner_could_read_the_passwords(production_system):
    ms, _smtp, _pop = _system(production_system)
    data = ms.var / "passwords" / "data.mdb"
    os.chmod(ms.var / "passwords", 0o755)
    os.chmod(data, 0o644)
    ms.start(wait=False)
    assert ms.proc.wait(30) == 78
    out = ms.proc.stdout.read().decode()
    assert f"{data} (the password database) is readable by mail" in out, out

    ms.mailctl("init")                        # init gives it back to root alone
    assert os.stat(data).st_mode & 0o777 == 0o600
    ms.start()
    assert _pop_count(ms.port(_pop)) == 0


def test_refuses_a_key_mail_owner_cannot_read(production_system):
    ms, _smtp, _pop = _system(production_system)
    key = ms.var / "tls" / "key.pem"
    os.chown(key, 0, 0)                       # `mailctl tls selfsigned --new-key` as root, no init after
    key.chmod(0o600)
    for args in (["--check"], []):
        result = subprocess.run([ms.python, "-m", "master", "-c", str(ms.etc), *args], cwd=ms.root,
                                env=ms.env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 78, result
        assert f"tls_cert_file/tls_key_file: {key}: permission denied (as mail)" in result.stderr


def test_refuses_an_interpreter_mail_owner_cannot_run(production_system, production_install):
    ms, _smtp, _pop = _system(production_system)
    closed = production_install.venv.parent
    closed.chmod(0o700)                       # a venv under a 0700 home
    try:
        ms.start(wait=False)
        assert ms.proc.wait(30) == 78
    finally:
        closed.chmod(0o755)
    out = ms.proc.stdout.read().decode()
    assert f"mail cannot execute the interpreter {production_install.python}" in out, out
    assert f"the folder {closed} is closed to it" in out, out


def test_run_directory_is_roots_and_links_are_not_followed(production_system, tmp_path):
    ms, _smtp, _pop = _system(production_system)
    run = ms.var / "run"
    info = run.stat()
    assert info.st_uid == 0 and not info.st_mode & 0o022
    assert (run / "pop3").stat().st_uid == pwd.getpwnam("mail").pw_uid

    planted = subprocess.run(["runuser", "-u", "mail", "--", "ln", "-s", "/etc/passwd", str(run / "x")],
                             capture_output=True, text=True)
    assert planted.returncode != 0 and "Permission denied" in planted.stderr

    victim = ms.root / "victim"
    victim.write_text("untouched\n")
    (run / "master.pid").symlink_to(victim)   # a link left from an older layout
    ms.start()
    assert victim.read_text() == "untouched\n"
    assert not (run / "master.pid").is_symlink()
    assert int((run / "master.pid").read_text()) == ms.proc.pid


def test_stop_never_signals_a_pid_that_is_not_our_master(production_system):
    ms, _smtp, _pop = _system(production_system)
    run = ms.var / "run"
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (run / "master.pid").write_text(f"{bystander.pid}\n")
        for command in ("stop", "reload"):
            result = ms.mailctl(command, check=False)
            assert result.returncode == 1, result
            assert "not a master of" in result.stderr, result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

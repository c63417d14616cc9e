"""sendmail run by an ordinary local user while the system runs as root (Postfix's postdrop
case): the installed layout, a master as root, workers as mail_owner, and a user made for
the test with useradd. The user can drop mail but not list or read the maildrop; qmgr picks
it up as untrusted input and names the user's uid in the Received: line it puts on top."""
from __future__ import annotations

import os
import poplib
import pwd
import secrets
import subprocess
import time

import pytest

# the first test of a run also builds the installation (a venv and a pip install)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def local_user():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"mh{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def as_user(user: pwd.struct_passwd, *command: str, input: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user.pw_name, "--", *command], input=input, cwd="/",
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}, capture_output=True, timeout=60)


def pop_messages(port: int) -> list[bytes]:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        client.user("bob")
        client.pass_("bob-pw")
        return [b"\r\n".join(client.retr(n)[1]) for n in range(1, client.stat()[0] + 1)]
    finally:
        client.quit()


def test_an_unprivileged_user_submits_with_sendmail(local_user, production_system):
    ms = production_system(main={"minimal_backoff_time": "1s", "maximal_backoff_time": "2s"})
    pop = ms.add_service("pop3d", name="pop3d")
    ms.add_unix_service("qmgr", wakeup=60)
    ms.write_config()
    ms.mailctl("init")
    ms.mailctl("user", "add", "bob", "--password", "bob-pw")
    ms.start()
    maildrop = ms.var / "queue" / "maildrop"
    python = ms.install.python

    message = b"Received: from forged.example (made up by the user)\nSubject: from cron\n\nall good\n"
    result = as_user(local_user, ms.install.script("sendmail"), "-c", str(ms.etc), "bob", input=message)
    assert result.returncode == 0, result.stderr
    listing = as_user(local_user, python, "-c", f"import os; os.listdir({str(maildrop)!r})")
    assert listing.returncode != 0 and b"PermissionError" in listing.stderr

    # junk written straight into the maildrop is taken apart, not trusted
    junk = as_user(local_user, python, "-c", f"open({str(maildrop / 'junk')!r}, 'x').write('not mail')")
    assert junk.returncode == 0, junk.stderr

    uid = local_user.pw_uid
    deadline = time.monotonic() + 30
    while not (delivered := pop_messages(ms.port(pop))):
        assert time.monotonic() < deadline, f"not delivered; smtp.log:\n{ms.log('smtp')[-3000:]}"
        time.sleep(0.3)
    [stored] = delivered
    received = [line for line in stored.split(b"\r\n") if line.startswith(b"Received:")]
    assert received[0] == f"Received: by mail.example.test (mailhouse, from userid {uid})".encode()
    assert received[1].startswith(b"Received: from forged.example") and b"Subject: from cron" in stored
    log = ms.wait_for_log("smtp", f"uid={uid} from=<{local_user.pw_name}@mail.example.test> (picked up)")
    log = ms.wait_for_log("smtp", "maildrop: junk: not a queue file")
    assert "moved to corrupt as" in log
    assert os.listdir(maildrop) == []

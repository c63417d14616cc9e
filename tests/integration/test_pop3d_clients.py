"""pop3d with real mail clients: fetchmail (keep mode, UIDL) and curl (pop3://, pop3s://).

fetchmail and curl are installed by .ci/run (apt-get install -y fetchmail curl); a missing
client is a failure here, not a skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import CORPUS
from tests.integration.pop3d_support import PopSystem

pytestmark = pytest.mark.integration

CORPUS_NAMES = ["01-plain.eml", "06-nested-multipart.eml", "08-dot-lines.eml", "10-dsn-report.eml"]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = PopSystem(tmp_path_factory.mktemp("pop3d-clients"))
    yield running
    running.stop()


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (apt-get install -y {name})"
    return path


# ---------------------------------------------------------------- fetchmail

def fetchmail(home, port: int, user: str, password: str, server: str, tls: str) -> tuple[int, int, str]:
    """One fetchmail run in keep mode with server options (protocol, auth) and TLS options;
    returns (exit code, messages fetched in total so far, output)."""
    rc = home / "fetchmailrc"
    rc.write_text(f'set no syslog\npoll 127.0.0.1 service {port} {server}\n'
                  f'    user "{user}" there with password "{password}" is "{user}" here keep {tls}\n')
    rc.chmod(0o600)
    out = home / "fetched.bsmtp"
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    # A lock file of its own: as root, fetchmail's default one is /var/run/fetchmail.pid,
    # shared with the fetchmail runs of tests in the other pytest-xdist processes.
    result = subprocess.run([tool("fetchmail"), "-f", str(rc), "--idfile", str(home / "ids"), "--uidl",
                             "--pidfile", str(home / "fetchmail.pid"),
                             "--bsmtp", str(out), "--nodetach", "-v"],
                            env=env, capture_output=True, text=True, timeout=60)
    fetched = out.read_text(errors="replace").count("MAIL FROM:") if out.exists() else 0
    return result.returncode, fetched, result.stdout + result.stderr


NO_TLS = "sslproto ''"


@pytest.mark.parametrize("user, server, tls, method", [
    ("fmuser", "protocol POP3 auth password", NO_TLS, "USER"),
    ("fmcram", "protocol POP3 auth cram-md5", NO_TLS, "CRAM-MD5"),
    ("fmapop", "protocol APOP", NO_TLS, "APOP"),
    ("fmstls", "protocol POP3 auth password", "sslproto TLS1.2+ no sslcertck", "USER"),
])
def test_fetchmail_keep_mode_twice_fetches_nothing_twice(system, tmp_path, user, server, tls, method):
    system.add_user(user, "fetch-pw")
    system.deliver(user, *CORPUS_NAMES)
    code, fetched, output = fetchmail(tmp_path, system.port("plain"), user, "fetch-pw", server, tls)
    assert code == 0 and fetched == len(CORPUS_NAMES), output
    code, fetched, output = fetchmail(tmp_path, system.port("plain"), user, "fetch-pw", server, tls)
    assert code == 1 and fetched == len(CORPUS_NAMES), output          # 1 = no new mail
    system.deliver(user, "02-utf8-8bit.eml")
    code, fetched, output = fetchmail(tmp_path, system.port("plain"), user, "fetch-pw", server, tls)
    assert code == 0 and fetched == len(CORPUS_NAMES) + 1, output
    assert system.count(user) == len(CORPUS_NAMES) + 1                  # keep: nothing deleted
    log = system.ms.wait_for_log("pop", f"login: user={user} method={method}")
    if user == "fmstls":
        assert f"login: user={user} method=USER ip=127.0.0.1 tls=TLSv1" in log


def test_fetchmail_wrong_password_and_wrapper_mode(system, tmp_path):
    system.add_user("fmwrap", "wrap-pw")
    system.deliver("fmwrap", "05-mixed-attachment.eml")
    code, fetched, output = fetchmail(tmp_path, system.port("plain"), "fmwrap", "nope", "protocol POP3", NO_TLS)
    assert code == 3 and fetched == 0, output                         # 3 = authentication failed
    code, fetched, output = fetchmail(tmp_path, system.port("wrapper"), "fmwrap", "wrap-pw", "protocol POP3",
                                      "ssl no sslcertck")
    assert code == 0 and fetched == 1, output


# ---------------------------------------------------------------- curl

def curl(url: str, user: str, password: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("curl"), "-s", "-S", "--max-time", "20", "-u", f"{user}:{password}",
                           *options, url], capture_output=True, timeout=60)


@pytest.mark.parametrize("login_options", ["AUTH=+APOP", "AUTH=PLAIN", "AUTH=CRAM-MD5", "AUTH=LOGIN", None],
                         ids=["apop", "plain", "cram-md5", "login-not-offered", "curls-choice"])
def test_curl_list_and_retr_with_each_login(system, login_options):
    user = "curl" + (login_options or "auto").split("=")[-1].lower().replace("-", "").replace("+", "")
    system.add_user(user, "curl-pw")
    system.deliver(user, "08-dot-lines.eml", "04-alternative.eml")
    base = f"pop3://127.0.0.1:{system.port('plain')}/"
    extra = ("--login-options", login_options) if login_options else ()
    if login_options == "AUTH=LOGIN":  # not in pop3_auth_methods: curl finds no usable mechanism
        assert curl(base, user, "curl-pw", *extra).returncode != 0
        return
    listing = curl(base, user, "curl-pw", *extra)
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.splitlines()) == 2
    message = curl(base + "1", user, "curl-pw", *extra)
    assert message.returncode == 0
    # curl un-stuffs the dots: what arrives is the stored message with CRLF line ends
    assert message.stdout == (CORPUS / "08-dot-lines.eml").read_bytes().replace(b"\n", b"\r\n")
    wrong = curl(base, user, "bad-pw", *extra)
    assert wrong.returncode == 67, wrong.stderr                       # CURLE_LOGIN_DENIED
    method = {"AUTH=+APOP": "APOP", "AUTH=PLAIN": "PLAIN", "AUTH=CRAM-MD5": "CRAM-MD5", None: ""}[login_options]
    log = system.ms.wait_for_log("pop", f"login failed: user={user} method={method}")
    assert f"login: user={user} method={method}" in log


def test_curl_stls_and_pop3s(system):
    system.add_user("curltls", "tls-pw")
    system.deliver("curltls", "01-plain.eml")
    stls = curl(f"pop3://127.0.0.1:{system.port('strict')}/1", "curltls", "tls-pw", "--ssl-reqd", "-k")
    assert stls.returncode == 0 and b"Minutes of Friday" in stls.stdout, stls.stderr
    wrapped = curl(f"pop3s://127.0.0.1:{system.port('wrapper')}/1", "curltls", "tls-pw", "-k")
    assert wrapped.returncode == 0 and b"Minutes of Friday" in wrapped.stdout, wrapped.stderr
    clear = curl(f"pop3://127.0.0.1:{system.port('strict')}/1", "curltls", "tls-pw")
    assert clear.returncode != 0                                      # no login before TLS


def test_curl_from_outside_the_exceptions_sends_no_password_in_clear(system):
    """disable_plaintext_auth: from 127.0.0.2 (the narrow service exempts only 127.0.0.1) curl
    cannot log in with AUTH=PLAIN before TLS; with STLS it can, and CRAM-MD5 works in clear."""
    system.add_user("curlremote", "remote-pw")
    system.deliver("curlremote", "01-plain.eml")
    url = f"pop3://127.0.0.1:{system.port('narrow')}/1"
    remote = ("--interface", "127.0.0.2")
    clear = curl(url, "curlremote", "remote-pw", *remote, "--login-options", "AUTH=PLAIN")
    assert clear.returncode != 0 and b"Minutes of Friday" not in clear.stdout
    secured = curl(url, "curlremote", "remote-pw", *remote, "--login-options", "AUTH=PLAIN", "--ssl-reqd", "-k")
    assert secured.returncode == 0 and b"Minutes of Friday" in secured.stdout, secured.stderr
    cram = curl(url, "curlremote", "remote-pw", *remote, "--login-options", "AUTH=CRAM-MD5")
    assert cram.returncode == 0 and b"Minutes of Friday" in cram.stdout, cram.stderr
    log = system.ms.wait_for_log("pop", "login: user=curlremote method=CRAM-MD5 ip=127.0.0.2 tls=no")
    assert "login: user=curlremote method=PLAIN ip=127.0.0.2 tls=TLSv1" in log
    assert "method=PLAIN ip=127.0.0.2 tls=no" not in log

"""Reload (SIGHUP / mailctl reload): new settings for new sessions, bad files refused."""
from __future__ import annotations

import signal

import pytest

from tests.integration.echo_client import ECHO, EchoClient, status, wait_until

pytestmark = pytest.mark.integration


def _banner(ms, key: str) -> str:
    with EchoClient(ms.port(key)) as client:
        return client.ask("PARAM smtpd_banner")


def test_reload_applies_new_setting_without_dropping_open_session(mailsystem):
    ms = mailsystem(main={"smtpd_banner": "before"})
    echo = ms.add_service(ECHO)
    ms.start()
    with EchoClient(ms.port(echo)) as open_session:
        old_pid = open_session.pid()
        ms.set_main(smtpd_banner="after")
        assert ms.mailctl("reload").stdout.strip() == "reloaded"
        wait_until(lambda: _banner(ms, echo) == "+OK after", what="the new setting")
        # The session that was open goes on, in its old worker, with its old settings.
        assert open_session.ask("PARAM smtpd_banner") == "+OK before"
        assert open_session.pid() == old_pid
    wait_until(lambda: old_pid not in sum((s["workers"] for s in status(ms)["services"]), []),
               what="the old worker to finish")
    assert f"worker {old_pid} retires: configuration reloaded" in ms.log("server")


def test_bad_reload_keeps_running_configuration(mailsystem):
    ms = mailsystem(main={"smtpd_banner": "kept"})
    echo = ms.add_service(ECHO)
    ms.start()
    main_cf = ms.etc / "main.cf"
    good_main = main_cf.read_text()
    bad_line = len(good_main.splitlines()) + 2
    main_cf.write_text(good_main + "smtpd_banner = changed\nmessage_size_limit = lots\n")
    ms.signal(signal.SIGHUP)
    ms.wait_for_log("server", f"reload refused, keeping the running configuration: {main_cf}:{bad_line}: "
                              "message_size_limit: bad size 'lots'")
    assert _banner(ms, echo) == "+OK kept"
    # mailctl reads main.cf too and names the same line.
    result = ms.mailctl("reload", check=False)
    assert result.returncode == 1
    assert f"{main_cf}:{bad_line}: message_size_limit" in result.stderr

    # A bad master.cf line: the master refuses the reload and mailctl reports why.
    main_cf.write_text(good_main.replace("smtpd_banner = kept", "smtpd_banner = changed"))
    master_cf = ms.etc / "master.cf"
    master_cf.write_text(master_cf.read_text() + "127.0.0.1:1 inet n n n - 301 smtpd\n")
    result = ms.mailctl("reload", check=False)
    assert result.returncode == 1
    reason = f'{master_cf}:2: field "maxproc": 301 is above the limit of 300'
    assert reason in result.stderr
    assert reason in ms.log("server")
    assert _banner(ms, echo) == "+OK kept"


def test_reload_adds_and_removes_services(mailsystem):
    ms = mailsystem()
    first = ms.add_service(ECHO)
    ms.start()
    second = ms.add_service(ECHO, "-o", "smtpd_banner=second")
    ms.write_config()
    ms.mailctl("reload")
    wait_until(lambda: all(s["ready"] for s in status(ms)["services"]) and len(status(ms)["services"]) == 2,
               what="the added service")
    assert _banner(ms, second) == "+OK second"

    ms.services.pop(0)                                # remove the first service again
    ms.write_config()
    ms.mailctl("reload")
    assert [s["name"] for s in status(ms)["services"]] == [f"127.0.0.1:{ms.port(second)}"]
    with pytest.raises(ConnectionRefusedError):
        EchoClient(ms.port(first))

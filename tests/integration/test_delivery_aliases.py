"""Aliases through the real master: multi-target, recursion, loops, |command and /file."""
from __future__ import annotations

import mailbox
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration.delivery_support import (Inbox, delivery_system, parse, sendmail, smtpd_port,
                                                write_aliases)
from tests.integration.smtpd_support import swaks

pytestmark = pytest.mark.integration

USERS = {"alice": (), "bob": (), "carol": (), "dave": ()}


@pytest.fixture
def shared_dir():
    """A folder mail_owner can write to when the tests run as root (tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mailhouse-delivery-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def dsn_blocks(raw: bytes) -> list:
    report = parse(raw)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    return report.get_payload()[1].get_payload()[1:]


def test_alias_targets_recursion_pipe_file_and_loop(mailsystem, corpus, shared_dir):
    hook = script(shared_dir, "hook.sh", f'{{ echo "$SENDER $RECIPIENT"; cat; }} > {shared_dir}/pipe.out')
    system = delivery_system(mailsystem, users=USERS)
    write_aliases(system, "\n".join([
        "# the team and its sub-list",
        "team: bob, sub",
        "sub: carol@example.test, dave",
        f"hooked: |{hook}",
        f"archive: {shared_dir}/archive.mbox",
        "loopa: loopb",
        "loopb: loopa",
    ]) + "\n")
    system.start()
    original = (corpus / "04-alternative.eml").read_bytes()
    sendmail(system, "-f", "alice@example.test", "team@example.test", "hooked", "archive", "loopa",
             message=original)
    inbox = Inbox(system)
    try:
        for user in ("bob", "carol", "dave"):
            assert len(inbox.wait(user, 1)) == 1
        [bounce] = inbox.wait("alice", 1)
        [block] = dsn_blocks(bounce)
        assert block["Final-Recipient"] == "rfc822; loopa@mail.example.test"
        assert block["Status"] == "5.4.6" and block["Action"] == "failed"
        assert parse(bounce)["Subject"] == "Undelivered Mail Returned to Sender"
        system.wait_for_log("smtp", "delivered to file")
        piped = (shared_dir / "pipe.out").read_text()
        assert piped.startswith("alice@example.test hooked@mail.example.test\nReturn-Path: <alice@example.test>\n")
        [archived] = list(mailbox.mbox(str(shared_dir / "archive.mbox")))
        assert archived["Message-ID"] == parse(original)["Message-ID"]
        if os.geteuid() == 0:              # run as mail_owner, not as root
            assert (shared_dir / "pipe.out").stat().st_uid != 0
            assert (shared_dir / "archive.mbox").stat().st_uid != 0
    finally:
        inbox.close()


def test_failing_command_bounces_and_tempfail_is_retried(mailsystem, shared_dir):
    counter = shared_dir / "tries"
    flaky = script(shared_dir, "flaky.sh",            # EX_TEMPFAIL the first time, success the second
                   f'echo x >> {counter}; [ $(wc -l < {counter}) -ge 2 ] || exit 75; cat >/dev/null')
    broken = script(shared_dir, "broken.sh", 'echo "no such list here"; exit 67')
    system = delivery_system(mailsystem, users=USERS)
    write_aliases(system, f"flaky: |{flaky}\nbroken: |{broken}\n")
    system.start()
    sendmail(system, "-f", "alice@example.test", "flaky", "broken", message=b"Subject: hooks\n\nrun\n")
    inbox = Inbox(system)
    try:
        [bounce] = inbox.wait("alice", 1)
        [block] = dsn_blocks(bounce)
        assert block["Final-Recipient"] == "rfc822; broken@mail.example.test" and block["Status"] == "5.3.0"
        assert "no such list here" in block["Diagnostic-Code"]
        system.wait_for_log("smtp", "to=<flaky@mail.example.test>, relay=local")
        log = system.wait_for_log("smtp", "status=sent (delivered to command")
        assert "status=deferred (command exited with status 75" in log
        assert counter.read_text().count("x") == 2
    finally:
        inbox.close()


def test_mail_over_smtp_reaches_every_alias_member(mailsystem, corpus):
    system = delivery_system(mailsystem, smtpd=True, users=USERS)
    write_aliases(system, "staff: team\nteam: bob, carol@example.test, DAVE@mail.example.test\n")
    system.start()
    message = corpus / "06-nested-multipart.eml"
    result = swaks("--server", f"127.0.0.1:{smtpd_port(system)}", "--from", "alice@example.org",
                   "--to", "staff@example.test", "--data", f"@{message}", "--silent", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    inbox = Inbox(system)
    try:
        for user in ("bob", "carol", "dave"):
            [raw] = inbox.wait(user, 1)
            msg = parse(raw)
            assert msg["Message-ID"] == parse(message.read_bytes())["Message-ID"]
            assert msg["Return-Path"] == "<alice@example.org>" and msg["Received"]
            assert msg.get_content_type().startswith("multipart/")
    finally:
        inbox.close()

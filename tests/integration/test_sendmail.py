"""sendmail through the real master: arguments, -t, a stopped master, usage errors."""
from __future__ import annotations

import pytest

from tests.integration.delivery_support import delivery_system, inboxes, parse, queue_files, sendmail  # noqa: F401

pytestmark = pytest.mark.integration

USERS = {"bob": (), "carol": (), "dave": ()}


def test_recipients_as_arguments(mailsystem, corpus, inboxes):
    # No poll and no master wakeup within the test's waits: only the FIFO poke can deliver.
    system = delivery_system(mailsystem, users=USERS,
                             main={"minimal_backoff_time": "300s", "maximal_backoff_time": "600s"})
    system.start()
    original = (corpus / "01-plain.eml").read_bytes()
    sendmail(system, "-oi", "-f", "alice@example.org", "bob", "carol@example.test", message=original)
    inbox = inboxes(system)
    [bob] = inbox.wait("bob", 1)
    [carol] = inbox.wait("carol", 1)
    msg = parse(bob)
    assert msg["Subject"] == "Minutes of Friday's planning meeting"
    assert msg["Return-Path"] == "<alice@example.org>" and msg["Delivered-To"] == "bob@mail.example.test"
    assert "minutes from Friday" in parse(carol).get_body().get_content()
    log = system.wait_for_log("smtp", "to=<carol@example.test>, relay=local")
    assert "status=sent (delivered to INBOX)" in log
    assert inbox.messages("dave") == []


def test_t_takes_to_cc_bcc_and_strips_bcc(mailsystem, inboxes):
    system = delivery_system(mailsystem, users=USERS)
    system.start()
    message = (b"From: Cron Daemon <root@example.test>\n"
               b"To: bob@example.test\nCc: Carol <carol@example.test>\nBcc: dave@example.test\n"
               b"Subject: nightly report\n\nall good\n.\nstill the body with -i\n")
    sendmail(system, "-t", "-i", message=message)
    inbox = inboxes(system)
    copies = {user: inbox.wait(user, 1) for user in ("bob", "carol", "dave")}
    for user, [raw] in copies.items():
        msg = parse(raw)
        assert msg["Subject"] == "nightly report" and msg["Bcc"] is None
        assert msg["Delivered-To"] == f"{user}@example.test"
        assert (b"dave" in raw.split(b"\r\n\r\n")[0]) == (user == "dave")     # only in dave's Delivered-To
        assert msg["Message-ID"] and msg["Date"]
        assert "still the body with -i" in msg.get_content()


def test_dot_line_ends_the_message_without_i(mailsystem, inboxes):
    system = delivery_system(mailsystem, users=USERS)
    system.start()
    sendmail(system, "bob", message=b"Subject: dot\n\nfirst\n.\nnever queued\n")
    [raw] = inboxes(system).wait("bob", 1)
    assert b"first" in raw and b"never queued" not in raw


def test_works_while_the_master_is_stopped(mailsystem, corpus, inboxes):
    system = delivery_system(mailsystem, users=USERS)
    sendmail(system, "-f", "alice@example.org", "bob@example.test",
             message=(corpus / "02-utf8-8bit.eml").read_bytes())
    assert len(queue_files(system, "maildrop")) == 1
    system.start()
    [raw] = inboxes(system).wait("bob", 1)
    assert "Köln" in parse(raw).get_content()
    assert queue_files(system, "maildrop") == [] and queue_files(system, "incoming") == []


def test_dsn_options_reach_the_reports(mailsystem, inboxes):
    """-N never: no bounce for ghost; -N success: a success report for bob; -V: the ENVID in it."""
    system = delivery_system(mailsystem, users={"alice": (), "bob": ()})
    system.start()
    sendmail(system, "-f", "alice@example.test", "-N", "never", "ghost", message=b"Subject: quiet\n\nx\n")
    sendmail(system, "-f", "alice@example.test", "-N", "success", "-V", "cron-7", "bob", message=b"Subject: s\n\nx\n")
    inbox = inboxes(system)
    [report] = [parse(raw) for raw in inbox.wait("alice", 1)]
    assert report["Subject"] == "Successful Mail Delivery Report"
    per_message, block = report.get_payload()[1].get_payload()
    assert per_message["Original-Envelope-Id"] == "cron-7" and block["Action"] == "delivered"
    system.wait_for_log("smtp", "no failed notification for <ghost@mail.example.test> (NOTIFY=NEVER)")
    assert queue_files(system, "incoming") == [] and len(inbox.messages("alice")) == 1


def test_message_over_the_size_limit_is_refused(mailsystem):
    system = delivery_system(mailsystem, main={"message_size_limit": "1k"})
    result = sendmail(system, "bob", message=b"Subject: big\n\n" + b"x" * 2000 + b"\n", check=False)
    assert result.returncode == 65 and b"message_size_limit" in result.stderr
    assert queue_files(system, "maildrop") == []


@pytest.mark.parametrize("args, code", [(("-bs",), 64), (("-t",), 65), (("bad address@x",), 65)])
def test_refusals_exit_codes(mailsystem, args, code):
    system = delivery_system(mailsystem)
    result = sendmail(system, *args, message=b"Subject: x\n\nbody\n", check=False)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(b"sendmail: ")
    assert queue_files(system, "maildrop") == []

"""smtpd through the real master: ESMTP keywords, STARTTLS, wrapper mode, pipelining, 8BITMIME,
DSN parameters, size limits, SMTP smuggling, line limits, error and time limits, refusals,
the pregreet test, absurd limits refused at start.

Mail that smtpd accepts stays in queue/incoming (no qmgr runs here); the tests read it
back with store.queue. Local recipients are accepted through luser_relay (an address
elsewhere, so any local name is deliverable), so these tests do not depend on the user
database (test_smtpd_recipients.py does).
"""
from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess

import pytest

from tests.integration.smtpd_support import client, message, queued, raw_session, smtp_system, swaks

pytestmark = pytest.mark.integration

BASE = {"luser_relay": "catchall@elsewhere.example"}


def keywords(smtp: smtplib.SMTP) -> list[str]:
    return sorted(smtp.esmtp_features)


def test_ehlo_keywords_before_and_after_starttls_and_in_wrapper_mode(mailsystem):
    system, port = smtp_system(mailsystem, BASE)
    with client(port) as smtp:
        code, _ = smtp.ehlo("client.example")
        assert code == 250
        assert {"pipelining", "size", "starttls", "enhancedstatuscodes", "8bitmime", "dsn"} <= set(keywords(smtp))
        assert smtp.esmtp_features["size"] == "10240000"
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.ehlo("client.example")
        assert "starttls" not in keywords(smtp)
        assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")
        smtp.sendmail("alice@remote.example", ["bob@example.test"], b"Subject: over TLS\r\n\r\nhi\r\n")
    [item] = queued(system)
    head = message(system, item).split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPS" in head and b"(using TLSv1.3 with cipher " in head

    wrapper, wport = smtp_system(mailsystem, BASE, args=("-o", "smtpd_tls_wrappermode=yes"))
    with smtplib.SMTP_SSL("127.0.0.1", wport, context=ssl._create_unverified_context(), timeout=10) as smtp:
        smtp.ehlo("client.example")
        assert "starttls" not in keywords(smtp) and "pipelining" in keywords(smtp)


def test_no_starttls_without_certificate_or_at_level_none(mailsystem):
    _, port = smtp_system(mailsystem, BASE, tls=False)
    with client(port) as smtp:
        smtp.ehlo("client.example")
        assert "starttls" not in keywords(smtp)
        assert smtp.docmd("STARTTLS")[0] == 454


def test_encrypt_level_requires_starttls_before_mail(mailsystem):
    _, port = smtp_system(mailsystem, {**BASE, "smtpd_tls_security_level": "encrypt"})
    with client(port) as smtp:
        smtp.ehlo("client.example")
        code, text = smtp.docmd("MAIL", "FROM:<alice@remote.example>")
        assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.ehlo("client.example")
        assert smtp.docmd("MAIL", "FROM:<alice@remote.example>")[0] == 250


def test_pipelined_transaction_with_dsn_parameters(mailsystem):
    system, port = smtp_system(mailsystem, BASE)
    batch = (b"EHLO client.example\r\n"
             b"MAIL FROM:<alice@remote.example> RET=HDRS ENVID=id+2B7\r\n"
             b"RCPT TO:<bob@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@example.test\r\n"
             b"RCPT TO:<carol@example.test>\r\nDATA\r\n"
             b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    replies = raw_session(port, batch)
    finals = [r[:3] for r in replies if r[3:4] == b" "]
    assert finals == [b"220", b"250", b"250", b"250", b"250", b"354", b"250", b"221"]
    [item] = queued(system)
    envelope = item.envelope
    assert (envelope.ret, envelope.envid) == ("HDRS", "id+7")
    assert envelope.recipients[0].notify == ["SUCCESS", "DELAY"]
    assert envelope.recipients[0].orcpt == "rfc822;bob@example.test"
    assert [r.address for r in envelope.recipients] == ["bob@example.test", "carol@example.test"]
    log = system.wait_for_log("smtp", f"{item.queue_id}: from=<alice@remote.example>, size=")
    assert "nrcpt=2" in log.split(f"{item.queue_id}: from=")[1].splitlines()[0]


def test_8bitmime_message_from_the_corpus_arrives_intact(mailsystem, corpus):
    system, port = smtp_system(mailsystem, BASE)
    original = (corpus / "02-utf8-8bit.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with client(port) as smtp:
        smtp.ehlo("client.example")
        assert "8bitmime" in keywords(smtp)
        smtp.sendmail("alice@remote.example", ["bob@example.test"], original, mail_options=["BODY=8BITMIME"])
    [item] = queued(system)
    assert item.envelope.body == "8BITMIME"
    stored = message(system, item)
    assert stored.startswith(b"Received: from client.example ([127.0.0.1])")
    assert stored.endswith(original if original.endswith(b"\r\n") else original + b"\r\n")


def test_size_limit_at_mail_and_during_data(mailsystem):
    system, port = smtp_system(mailsystem, {**BASE, "message_size_limit": "5000"})
    with client(port) as smtp:
        smtp.ehlo("client.example")
        assert smtp.esmtp_features["size"] == "5000"
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("alice@remote.example", ["bob@example.test"], b"x" * 6000)   # smtplib sends SIZE=
        assert refused.value.smtp_code == 552 and refused.value.smtp_error.startswith(b"5.3.4")
        smtp.rset()
        smtp.mail("alice@remote.example")
        smtp.rcpt("bob@example.test")
        code, text = smtp.data(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100)
        assert (code, text[:5]) == (552, b"5.3.4")
        assert smtp.noop()[0] == 250               # the session goes on
    assert queued(system) == []


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
def test_bare_lf_and_cr_never_end_data(mailsystem, fake_end):
    """SMTP smuggling: a second transaction hidden behind a non-standard end of DATA."""
    system, port = smtp_system(mailsystem, BASE, tls=False)
    batch = (b"EHLO client.example\r\nMAIL FROM:<alice@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
             b"Subject: first\r\n\r\nhello" + fake_end +
             b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n"
             b"Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n")
    replies = raw_session(port, batch)
    assert sum(r.startswith(b"250 2.0.0 Ok: queued") for r in replies) == 1
    [item] = queued(system)
    assert [r.address for r in item.envelope.recipients] == ["bob@example.test"]
    assert b"Subject: smuggled" in message(system, item)


def test_overlong_lines(mailsystem):
    """Commands over 512 octets are refused; message lines over 998 are kept (broken past line_length_limit)."""
    system, port = smtp_system(mailsystem, BASE, tls=False)
    header = b"X-Long: " + b"h" * 3000
    with client(port) as smtp:
        smtp.ehlo("client.example")
        assert smtp.docmd("NOOP", "x" * 600) == (500, b"5.5.2 Error: line too long")
        smtp.mail("alice@remote.example")
        smtp.rcpt("bob@example.test")
        code, _ = smtp.data(header + b"\r\nSubject: long\r\n\r\n" + b"z" * 1200 + b"\r\n" + b"w" * 300_000
                            + b"\r\nend\r\n")
        assert code == 250
        assert smtp.noop()[0] == 250
    [item] = queued(system)
    stored = message(system, item).split(b"\r\n")
    start = stored.index(header[:2048])
    assert stored[start + 1] == b" " + header[2048:] and stored[start + 2] == b"Subject: long"   # a folded header
    assert b"z" * 1200 in stored                                                             # kept whole
    assert max(map(len, stored)) == 2048
    assert b"".join(line.removeprefix(b" ") for line in stored if line.lstrip().startswith(b"w")) == b"w" * 300_000


def test_too_many_errors_and_idle_timeout_end_with_421(mailsystem):
    _, port = smtp_system(mailsystem, {**BASE, "smtpd_hard_error_limit": "3", "smtpd_timeout": "1s"}, tls=False)
    replies = raw_session(port, b"EHLO c\r\n" + b"BOGUS\r\n" * 5)
    assert replies[-1] == b"421 4.7.0 Error: too many errors"
    assert raw_session(port, b"EHLO c\r\n")[-1] == b"421 4.4.2 Error: timeout exceeded"


def test_refused_host_and_connection_limit(mailsystem):
    system, port = smtp_system(mailsystem, {**BASE, "smtpd_refused_hosts": "127.0.0.3/32"}, tls=False, maxproc=1)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        client(port, source="127.0.0.3")
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.7.1")
    with client(port) as first:
        first.ehlo("client.example")
        with pytest.raises(smtplib.SMTPConnectError) as over:
            client(port, source="127.0.0.4")
        assert over.value.smtp_code == 421 and over.value.smtp_error.startswith(b"4.7.0")
        assert first.noop()[0] == 250               # the open session is not disturbed
    system.wait_for_log("smtp", "client host refused")


def test_swaks_with_starttls(mailsystem):
    system, port = smtp_system(mailsystem, BASE)
    result = swaks("--server", f"127.0.0.1:{port}", "--from", "alice@remote.example",
                   "--to", "bob@example.test", "--tls", "--helo", "swaks.example", "--header", "Subject: from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0 Ok: queued as" in result.stdout
    [item] = queued(system)
    assert b"Subject: from swaks" in message(system, item)


def test_graceful_stop_tells_idle_sessions_421_instead_of_waiting_for_the_timeout(mailsystem):
    system, port = smtp_system(mailsystem, {**BASE, "smtpd_timeout": "300s"}, tls=False)
    with client(port, timeout=20) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("alice@remote.example")
        assert smtp.rcpt("bob@example.test")[0] == 250
        assert system.stop() == 0                      # SIGTERM: returns once every worker is gone
        assert smtp.getreply() == (421, b"4.3.2 Service shutting down")
    system.wait_for_log("smtp", "service shutting down after rcpt")


def test_client_talking_before_the_greeting_is_refused(mailsystem):
    """smtpd_pregreet_delay (the harness sets 0; the default is 1s): a client outside mynetworks
    that talks before the 220 gets 554 5.5.1 and is dropped; one that waits is served."""
    system = mailsystem(main={**BASE, "mynetworks": "127.0.0.1/32", "smtpd_pregreet_delay": "1s"})
    plain = system.add_service("smtpd")
    wrapped = system.add_service("smtpd", "-o", "smtpd_tls_wrappermode=yes")
    system.write_config()
    system.mailctl("tls", "selfsigned")
    system.start()
    port = system.port(plain)
    assert raw_session(port, b"EHLO spam.example\r\nMAIL FROM:<x@spam.example>\r\n", source="127.0.0.3") == [
        b"554 5.5.1 Protocol error"]
    log = system.wait_for_log("smtp", "reject: PREGREET ")
    assert "from [127.0.0.3]: b'EHLO spam.example\\r\\n" in log
    with client(port, source="127.0.0.3") as smtp:                           # smtplib waits for the 220
        smtp.sendmail("alice@remote.example", ["bob@example.test"], b"Subject: patient\r\n\r\nhi\r\n")
    assert raw_session(port, b"EHLO c\r\nQUIT\r\n")[0].startswith(b"220 ")  # mynetworks: not tested
    context = ssl._create_unverified_context()
    with context.wrap_socket(socket.create_connection(("127.0.0.1", system.port(wrapped)), timeout=10,
                                                      source_address=("127.0.0.3", 0))) as tls:
        tls.sendall(b"EHLO c\r\nQUIT\r\n")                                   # wrapper mode: not tested
        assert tls.makefile("rb").readline().startswith(b"220 ")
    assert len(queued(system)) == 1


@pytest.mark.parametrize("where, setting, message", [
    ("main", "message_size_limit = 3G", "message_size_limit: '3G' is above the maximum 2147483648"),
    ("main", "smtpd_recipient_limit = -1", "smtpd_recipient_limit: '-1' is below the minimum 1"),
    ("service", "smtpd_recipient_limit=1000000", "smtpd_recipient_limit: '1000000' is above the maximum 100000"),
])
def test_absurd_limits_are_refused_at_start(mailsystem, where, setting, message):
    key, _, value = setting.replace(" = ", "=").partition("=")
    system = mailsystem(main={key: value} if where == "main" else {})
    system.add_service("smtpd", *(("-o", setting) if where == "service" else ()))
    system.write_config()
    result = subprocess.run([system.python, "-m", "master", "-c", str(system.etc)], cwd=system.root,
                            env=system.env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    if where == "main":
        assert f"{system.etc / 'main.cf'}:{list(system.main).index(key) + 1}: {message}" in result.stderr
    else:
        assert f"{system.etc / 'master.cf'}:1: {message}" in result.stderr

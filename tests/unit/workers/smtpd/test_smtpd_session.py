"""smtpd session state machine, driven through a fake transport (no sockets).

The transport is tests/fakes.py FakeConnection: the client's bytes are fed into a real
asyncio.StreamReader all at once (which is also what a pipelining client does); the
session's replies are collected. The backend is a fake: the real recipient resolver over a
fake user table, alias map and quota usage, a queue writer that records what it was given, a
PLAIN/LOGIN mechanism over a password table.
"""
from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from master.params import Params
from store.directory import Directory
from store.fsio import StorageError
from store.resolve import Resolver
from store.users import User
from tests.fakes import FakeAccounts, FakeConnection
from workers._authpool import AuthUnavailable
from workers._log import Log
from workers.smtpd.address import ArgError, parse_mail, parse_rcpt
from workers.smtpd.backend import InFlow
from workers.smtpd.received import received_header
from workers.smtpd.session import Session

HOST = "mail.example.test"


# ---------------------------------------------------------------------------- fakes

class FakeWriter:
    def __init__(self, backend):
        self.backend = backend
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, chunk):
        if self.backend.fail_write:
            raise StorageError("disk full", 28)
        self.chunks.append(chunk)
        self.size += len(chunk)

    def commit(self, envelope):
        if self.backend.fail_commit:
            raise StorageError("disk full", 28)
        envelope.size = self.size
        self.backend.committed.append((envelope, b"".join(self.chunks)))
        return f"QID{len(self.backend.committed)}"

    def abort(self):
        pass


@dataclass
class Step:
    challenge: bytes | None = None
    user: str | None = None
    failed: bool = False
    reason: str = ""
    refused: str = ""


def verdict_step(backend, user: str, password: str) -> Step:
    """What the verifier makes of it: wrong credentials, a disabled account, or the user."""
    if backend.passwords.get(user) != password:
        return Step(user=user, failed=True)
    account = backend.accounts.get(user)
    if account is not None and not account.enabled:
        return Step(user=user, failed=True, reason="account disabled", refused="disabled")
    return Step(user=user)


class FakePlain:
    def __init__(self, backend):
        self.backend = backend

    async def step(self, response):
        if response is None:
            return Step(challenge=b"")
        _, user, password = response.decode().split("\0")
        return verdict_step(self.backend, user, password)


class FakeLogin:
    def __init__(self, backend):
        self.backend = backend
        self.name = None

    async def step(self, response):
        if response is None and self.name is None:
            return Step(challenge=b"Username:")
        if self.name is None:
            self.name = response.decode()
            return Step(challenge=b"Password:")
        return verdict_step(self.backend, self.name, response.decode())


def fake_accounts() -> FakeAccounts:
    return FakeAccounts({"bob": User("bob"), "carol": User("carol", enabled=False), "dave": User("dave", quota=1000)},
                        {"postmaster": ["bob"], "team": ["bob", "carol"]}, {"dave": 900})


@dataclass
class FakeBackend:
    accounts: FakeAccounts = field(default_factory=fake_accounts)
    luser_relay: str = ""
    committed: list = field(default_factory=list)
    signed: list = field(default_factory=list)          # open_message's sign= (DKIM), per message
    woken: int = 0
    low: bool = False
    fail_write: bool = False
    fail_commit: bool = False
    listed: object = None
    passwords: dict = field(default_factory=lambda: {"bob": "secret"})

    def open_message(self, sign=False):
        self.signed.append(sign)
        return FakeWriter(self)

    def wake_qmgr(self):
        self.woken += 1

    def disk_low(self):
        return self.low

    def tls_available(self):
        return True

    def sasl_server(self, name):
        return FakePlain(self) if name == "PLAIN" else FakeLogin(self)

    def __post_init__(self):
        directory = Directory(make_params(), self.accounts, self.accounts, self.accounts)
        self.directory = Resolver(directory, self.luser_relay)
        self.flow = InFlow(make_params(), lambda: 0, Log("smtp"))

    async def rbl_lookup(self, ip, zones):
        return self.listed, []


def make_params(**settings) -> Params:
    raw = {"myhostname": HOST, "mydomain": "example.test", "mydestination": "$myhostname, $mydomain",
           "auth_failure_delay": "0s", "message_size_limit": "2000", "mynetworks": "127.0.0.0/8",
           "smtpd_pregreet_delay": "0", "smtpd_tls_auth_only": "no",      # both on by default; tested below
           **settings}
    return Params(raw, {}, "/nonexistent")


def run(client: bytes | str, backend: FakeBackend | None = None, peer_ip: str = "192.0.2.9",
        tls: bool = False, **settings) -> tuple[list[str], FakeConnection, FakeBackend]:
    backend = backend or FakeBackend()
    if isinstance(client, str):
        client = client.replace("\n", "\r\n").encode()

    conn = FakeConnection(make_params(**settings), client, peer_ip=peer_ip, tls=tls)
    asyncio.run(Session(conn, backend).run())
    return conn.lines(), conn, backend


def codes(lines: list[str]) -> list[str]:
    """The final line's code of each reply (multi-line replies count once)."""
    return [line[:3] for line in lines if line[3:4] == " "]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


MESSAGE = "Subject: hi\n\nhello\n.\n"


# ---------------------------------------------------------------------------- greeting and EHLO

def test_greeting_ehlo_and_quit():
    lines, _, _ = run("EHLO client.example\nQUIT\n")
    assert lines[0] == f"220 {HOST} ESMTP mailhouse"
    assert lines[1] == f"250-{HOST}"
    keywords = [line[4:] for line in lines[2:-1]]
    assert keywords == ["PIPELINING", "SIZE 2000", "STARTTLS", "AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN",
                        "ENHANCEDSTATUSCODES", "8BITMIME", "DSN"]
    assert lines[-1] == "221 2.0.0 Bye"


def test_ehlo_after_tls_drops_starttls():
    lines, _, _ = run("EHLO c\nQUIT\n", tls=True)
    assert "250-STARTTLS" not in lines and "250-AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN" in lines


def test_encrypt_level_hides_auth_and_requires_starttls():
    lines, _, _ = run(f"EHLO c\nAUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'secret')}\n"
                      "MAIL FROM:<a@b.example>\nSTARTTLS\nEHLO c\nQUIT\n", smtpd_tls_security_level="encrypt")
    first_ehlo = lines[1:lines.index("250 DSN") + 1]
    assert not any(line.startswith("250-AUTH") for line in first_ehlo)
    assert codes(lines)[2:] == ["530", "530", "220", "250", "221"]
    assert "530 5.7.0 Must issue a STARTTLS command first" in lines
    assert "250-AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN" in lines[lines.index("250 DSN") + 1:]


def test_starttls_resets_to_greetedless_state():
    lines, conn, _ = run("EHLO c\nSTARTTLS\nMAIL FROM:<a@b.example>\nEHLO c\nMAIL FROM:<a@b.example>\nQUIT\n")
    assert codes(lines) == ["220", "250", "220", "503", "250", "250", "221"]
    assert conn.tls


def test_tls_level_none_offers_no_starttls():
    lines, _, _ = run("EHLO c\nSTARTTLS\nQUIT\n", smtpd_tls_security_level="none")
    assert "250-STARTTLS" not in lines and codes(lines)[2] == "454"


def test_helo_and_bad_ehlo():
    lines, _, _ = run("HELO\nHELO c\nQUIT\n")
    assert codes(lines) == ["220", "501", "250", "221"]


def test_refused_host_gets_554_and_close():
    lines, _, backend = run("EHLO c\n", smtpd_refused_hosts="192.0.2.0/24")
    assert lines == ["554 5.7.1 Service unavailable; client host refused"]


# ---------------------------------------------------------------------------- sequence and limits

def test_commands_out_of_order():
    lines, _, _ = run("MAIL FROM:<a@b.example>\nEHLO c\nRCPT TO:<bob@example.test>\nDATA\n"
                      "MAIL FROM:<a@b.example>\nMAIL FROM:<a@b.example>\nDATA\nXYZZY\nQUIT\n")
    assert codes(lines) == ["220", "503", "250", "503", "503", "250", "503", "503", "500", "221"]


def test_command_line_over_512_octets():
    lines, _, _ = run("EHLO c\nNOOP " + "x" * 600 + "\nNOOP\nQUIT\n")
    assert codes(lines)[2:] == ["500", "250", "221"]
    assert "500 5.5.2 Error: line too long" in lines


def test_line_beyond_the_stream_limit_is_dropped_and_the_session_goes_on():
    lines, _, _ = run("EHLO c\nNOOP " + "x" * 300_000 + "\nNOOP\nQUIT\n")
    assert codes(lines)[2:] == ["500", "250", "221"]


def test_too_many_errors_closes_with_421():
    lines, _, _ = run("EHLO c\n" + "XYZZY\n" * 10 + "NOOP\n", smtpd_hard_error_limit="3")
    assert codes(lines) == ["220", "250", "500", "500", "500", "421"]


def test_idle_timeout_closes_with_421():
    async def scenario():
        conn = FakeConnection(make_params(smtpd_timeout="1s"), b"EHLO c\r\n", peer_ip="192.0.2.9", eof=False)
        await Session(conn, FakeBackend()).run()
        return conn.lines()
    lines = asyncio.run(scenario())
    assert lines[-1] == "421 4.4.2 Error: timeout exceeded"


async def _until(condition) -> None:
    for _ in range(1000):                      # bounded: the session runs in this same loop
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never came true")


def test_stop_tells_an_idle_session_421_at_once():
    async def scenario():
        conn = FakeConnection(make_params(smtpd_timeout="300s"), b"EHLO c\r\n", peer_ip="192.0.2.9", eof=False)
        task = asyncio.ensure_future(Session(conn, FakeBackend()).run())
        await _until(lambda: any(line.startswith("250 ") for line in conn.lines()))
        conn.draining.set()
        await asyncio.wait_for(task, 5)
        return conn.lines()
    lines = asyncio.run(scenario())
    assert lines[-1] == "421 4.3.2 Service shutting down"


def test_stop_during_data_finishes_and_acknowledges_the_message_first():
    async def scenario():
        backend = FakeBackend()
        conn = FakeConnection(make_params(), b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.test>\r\n"
                              b"DATA\r\nSubject: hi\r\n\r\nfirst half\r\n", peer_ip="192.0.2.9", eof=False)
        task = asyncio.ensure_future(Session(conn, backend).run())
        await _until(lambda: any(line.startswith("354") for line in conn.lines()))
        conn.draining.set()
        conn.feed(b"second half\r\n.\r\n")
        await asyncio.wait_for(task, 5)
        return conn.lines(), backend
    lines, backend = asyncio.run(scenario())
    assert codes(lines)[-2:] == ["250", "421"] and lines[-1] == "421 4.3.2 Service shutting down"
    assert backend.committed[0][1].endswith(b"first half\r\nsecond half\r\n")


def test_recipient_limit():
    rcpts = "".join("RCPT TO:<bob@example.test>\n" for _ in range(3))
    lines, _, _ = run(f"EHLO c\nMAIL FROM:<a@b.example>\n{rcpts}QUIT\n", smtpd_recipient_limit="2")
    assert codes(lines)[2:] == ["250", "250", "250", "452", "221"]
    assert "452 4.5.3 Error: too many recipients" in lines


def test_recipients_past_the_limit_cost_no_error_until_the_overshoot_limit():
    rcpts = "".join("RCPT TO:<bob@example.test>\n" for _ in range(6))
    lines, _, backend = run(f"EHLO c\nMAIL FROM:<a@b.example>\n{rcpts}DATA\n{MESSAGE}QUIT\n",
                            smtpd_recipient_limit="2", smtpd_hard_error_limit="2")
    assert codes(lines)[2:] == ["250"] * 3 + ["452"] * 4 + ["354", "250", "221"]
    assert len(backend.committed[0][0].recipients) == 2
    lines, _, _ = run(f"EHLO c\nMAIL FROM:<a@b.example>\n{rcpts}QUIT\n", smtpd_recipient_limit="2",
                      smtpd_hard_error_limit="2", smtpd_recipient_overshoot_limit="1")
    assert codes(lines)[2:] == ["250"] * 3 + ["452"] * 3 + ["421"]


def test_postmaster_is_accepted_from_a_blocklisted_client_without_alias():
    from workers.smtpd.rbl import Listing
    backend = FakeBackend(listed=Listing("bl.test", "127.0.0.2", "listed"))
    backend.accounts.aliases.clear()
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\nRCPT TO:<PostMaster@Example.Test>\n"
                      "RCPT TO:<postmaster>\nRCPT TO:<\"postmaster\"@mail.example.test>\n"
                      "RCPT TO:<postmaster@elsewhere.example>\nQUIT\n", backend, smtpd_rbl_servers="bl.test")
    assert codes(lines)[3:] == ["554", "250", "250", "250", "554", "221"]


def test_pregreet_talker_is_refused_and_a_patient_client_served():
    async def scenario(early: bytes, peer_ip: str):
        conn = FakeConnection(make_params(smtpd_pregreet_delay="0.2"), early, peer_ip=peer_ip, eof=False)
        task = asyncio.ensure_future(Session(conn, FakeBackend()).run())
        if not early:
            await _until(lambda: conn.output)
            conn.feed(b"QUIT\r\n")
        await asyncio.wait_for(task, 5)
        return conn.lines(), conn.log.lines
    lines, log = asyncio.run(scenario(b"EHLO c\r\n", "192.0.2.9"))
    assert lines == ["554 5.5.1 Protocol error"]
    assert "M reject: PREGREET 8 from [192.0.2.9]: b'EHLO c\\r\\n'" in log
    lines, _ = asyncio.run(scenario(b"", "192.0.2.9"))
    assert codes(lines) == ["220", "221"]
    lines, _ = asyncio.run(scenario(b"EHLO c\r\nQUIT\r\n", "127.0.0.1"))       # mynetworks: not tested
    assert codes(lines) == ["220", "250", "221"]


# ---------------------------------------------------------------------------- the transaction

def test_pipelined_transaction_is_queued_with_dsn_parameters():
    script = ("EHLO c\nMAIL FROM:<alice@remote.example> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1\n"
              "RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@example.test\n"
              "RCPT TO:<team@Example.TEST>\nDATA\n" + "Subject: hi\n\n..leading dot\nbody \xe9\n.\nQUIT\n")
    lines, conn, backend = run(script.encode("latin-1").replace(b"\n", b"\r\n"))
    assert codes(lines) == ["220", "250", "250", "250", "250", "354", "250", "221"]
    assert "250 2.0.0 Ok: queued as QID1" in lines
    envelope, data = backend.committed[0]
    assert envelope.sender == "alice@remote.example"
    assert [r.address for r in envelope.recipients] == ["bob@example.test", "team@example.test"]
    assert envelope.recipients[0].notify == ["SUCCESS", "FAILURE"]
    assert envelope.recipients[0].orcpt == "rfc822;bob+x@example.test"
    assert (envelope.ret, envelope.envid, envelope.body) == ("HDRS", "QQ+1", "8BITMIME")
    assert data.startswith(b"Received: from c ([192.0.2.9])\r\n\tby mail.example.test (mailhouse) with ESMTP;")
    assert data.endswith(b"Subject: hi\r\n\r\n.leading dot\r\nbody \xe9\r\n")
    assert backend.woken == 1
    assert "M QID1: from=<alice@remote.example>, size=%d, nrcpt=2" % envelope.size in conn.log.lines


@pytest.mark.parametrize("param", ["MAIL FROM:<a@b.example> ENVID=x+0D+0AX-Injected:+20yes",
                                   "RCPT TO:<bob@example.test> ORCPT=rfc822;b+0Ax@example.test"])
def test_dsn_xtext_decoding_to_control_characters_is_refused(param):
    """ENVID and ORCPT end up in DSN header fields: a decoded CR/LF would inject a header."""
    first = "" if param.startswith("MAIL") else "MAIL FROM:<a@b.example>\n"
    lines, _, _ = run(f"EHLO c\n{first}{param}\nQUIT\n")
    assert codes(lines)[-2] == "501" and codes(lines)[-1] == "221"


def test_null_sender_and_postmaster():
    lines, _, backend = run("EHLO c\nMAIL FROM:<>\nRCPT TO:<Postmaster>\nDATA\n" + MESSAGE + "QUIT\n")
    assert codes(lines)[-2] == "250" and backend.committed[0][0].sender == ""


def test_data_without_valid_recipients():
    lines, _, backend = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<nobody@example.test>\nDATA\n"
                            + MESSAGE + "QUIT\n")
    assert codes(lines)[3:5] == ["550", "554"]
    assert not backend.committed


@pytest.mark.parametrize("smuggle", [
    b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n",
])
def test_only_crlf_dot_crlf_ends_data(smuggle):
    """SMTP smuggling: the fake end and the smuggled command stay inside the message."""
    client = (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
              b"Subject: x\r\n\r\nbody" + smuggle + b"MAIL FROM:<evil@b.example>\r\n"
              b"RCPT TO:<bob@example.test>\r\n.\r\nQUIT\r\n")
    lines, _, backend = run(client)
    assert codes(lines) == ["220", "250", "250", "250", "354", "250", "221"]
    assert len(backend.committed) == 1
    body = backend.committed[0][1]
    assert b"MAIL FROM:<evil@b.example>" in body
    assert b"\n.\r\n" not in body and b"\n.\n" not in body          # no end mark survives unescaped


def test_message_over_size_limit_is_refused_after_the_end():
    big = "x" * 100 + "\n"
    lines, _, backend = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\nDATA\n"
                            + big * 30 + ".\nNOOP\nQUIT\n")
    assert codes(lines)[-3:] == ["552", "250", "221"]
    assert "552 5.3.4 Message size exceeds fixed limit" in lines and not backend.committed


def test_declared_size_over_limit():
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example> SIZE=5000\nQUIT\n")
    assert "552 5.3.4 Message size exceeds fixed limit" in lines


def stored_lines(data: bytes) -> list[bytes]:
    """The lines of a stored message after smtpd's Received: header (its first line and the folded ones)."""
    lines = data.split(b"\r\n")
    first = next(n for n, line in enumerate(lines) if n and not line.startswith(b"\t"))
    return lines[first:]


def test_data_lines_up_to_line_length_limit_are_kept_longer_ones_broken():
    lines, _, backend = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\nDATA\n"
                            + "y" * 2048 + "\n." + "c" * 2048 + "\n.." + "d" * 2048 + "\n" + "z" * 5000
                            + "\n.\nQUIT\n", message_size_limit="0")
    assert codes(lines)[-2:] == ["250", "221"]
    assert stored_lines(backend.committed[0][1]) == [       # a stuffing dot does not count
        b"y" * 2048, b"c" * 2048, b"." + b"d" * 2047, b" d", b"z" * 2048, b" " + b"z" * 2047, b" " + b"z" * 905, b""]


def test_data_line_beyond_the_stream_limit_is_kept():
    lines, _, backend = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\nDATA\n"
                            + "y" * 300_000 + "\n.\nNOOP\nQUIT\n", message_size_limit="0")
    assert codes(lines)[-3:] == ["250", "250", "221"]
    body = stored_lines(backend.committed[0][1])
    assert max(map(len, body)) == 2048
    assert b"".join(line.removeprefix(b" ") for line in body) == b"y" * 300_000


def test_disk_low_refuses_mail_from_with_452():
    backend = FakeBackend(low=True)
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nQUIT\n", backend)
    assert "452 4.3.1 Insufficient system storage" in lines


@pytest.mark.parametrize("failure", ["fail_write", "fail_commit"])
def test_storage_error_is_452_and_nothing_acknowledged(failure):
    backend = FakeBackend(**{failure: True})
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\nDATA\n" + MESSAGE
                      + "QUIT\n", backend)
    assert codes(lines)[-2:] == ["452", "221"] and not backend.committed


# ---------------------------------------------------------------------------- recipients and relay

@pytest.mark.parametrize("rcpt, code", [
    ("bob@example.test", "250"), ("BOB@mail.example.test", "250"), ("team@example.test", "250"),
    ("nobody@example.test", "550"), ("carol@example.test", "550"), ("dave@example.test", "250"),
])
def test_local_recipient_checks(rcpt, code):
    lines, _, _ = run(f"EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<{rcpt}>\nQUIT\n")
    assert codes(lines)[3] == code


def test_disabled_user_and_quota_replies():
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example> SIZE=200\nRCPT TO:<carol@example.test>\n"
                      "RCPT TO:<dave@example.test>\nRSET\nMAIL FROM:<a@b.example> SIZE=1500\n"
                      "RCPT TO:<dave@example.test>\nQUIT\n", message_size_limit="0")
    assert "550 5.2.1 Recipient address rejected: Mailbox disabled" in lines
    assert "452 4.2.2 Mailbox full" in lines
    assert "552 5.2.2 Mailbox full: message exceeds the quota" in lines


def test_luser_relay_accepts_unknown_users():
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<nobody@example.test>\nQUIT\n",
                      FakeBackend(luser_relay="bob"))
    assert codes(lines)[3] == "250"


def test_an_alias_loop_is_refused_at_rcpt():
    backend = FakeBackend()
    backend.accounts.aliases.update({"a": ["b"], "b": ["a"]})
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<a@example.test>\nQUIT\n", backend)
    assert "550 5.4.6 Recipient address rejected: mail forwarding loop (a -> b -> a)" in lines


@pytest.mark.parametrize("in_mynetworks", [True, False])
@pytest.mark.parametrize("authenticated", [True, False])
@pytest.mark.parametrize("local", [True, False])
def test_relay_table(in_mynetworks, authenticated, local):
    rcpt = "bob@example.test" if local else "someone@elsewhere.example"
    auth = f"AUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'secret')}\n" if authenticated else ""
    lines, _, _ = run(f"EHLO c\n{auth}MAIL FROM:<a@b.example>\nRCPT TO:<{rcpt}>\nQUIT\n",
                      peer_ip="127.0.0.2" if in_mynetworks else "192.0.2.9")
    expected = "250" if (local or in_mynetworks or authenticated) else "554"
    assert codes(lines)[-2] == expected
    if expected == "554":
        assert "554 5.7.1 Relay access denied" in lines


@pytest.mark.parametrize("restrictions, allowed", [
    ("permit_sasl_authenticated, reject", False),           # the submission port: mynetworks is not enough
    ("permit_mynetworks, reject", True),
    ("permit_mynetworks", True),
    ("", False),                                           # an empty list is no open relay
])
def test_relay_restrictions_variants(restrictions, allowed):
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<x@elsewhere.example>\n"
                      "RCPT TO:<bob@example.test>\nQUIT\n",
                      peer_ip="127.0.0.1", smtpd_relay_restrictions=restrictions)
    assert codes(lines)[3:5] == ["250" if allowed else "554", "250"]


def test_ipv6_mynetworks():
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<x@elsewhere.example>\nQUIT\n",
                      peer_ip="2001:db8::5", mynetworks="[2001:db8::]/32")
    assert codes(lines)[3] == "250"


@pytest.mark.parametrize("peer_ip, authenticated, signed", [
    ("127.0.0.2", False, True), ("192.0.2.9", True, True), ("192.0.2.9", False, False)])
def test_only_mynetworks_and_authenticated_mail_is_dkim_signed(peer_ip, authenticated, signed):
    auth = f"AUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'secret')}\n" if authenticated else ""
    _, _, backend = run(f"EHLO c\n{auth}MAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\nDATA\n{MESSAGE}QUIT\n",
                        peer_ip=peer_ip)
    assert backend.signed == [signed] and len(backend.committed) == 1


def test_rbl_listed_client_is_refused_with_the_reason_but_authenticated_passes():
    from workers.smtpd.rbl import Listing
    backend = FakeBackend(listed=Listing("bl.test", "127.0.0.2", "Listed: see http://bl.test/q"))
    lines, _, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\n"
                      f"AUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'secret')}\nQUIT\n",
                      backend, smtpd_rbl_servers="bl.test")
    assert ("554 5.7.1 Service unavailable; client host [192.0.2.9] blocked using bl.test; "
            "Listed: see http://bl.test/q") in lines


# ---------------------------------------------------------------------------- AUTH

def test_auth_plain_and_login_right_and_wrong():
    lines, conn, _ = run(f"EHLO c\nAUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'wrong')}\n"
                         f"AUTH LOGIN\n{b64('bob')}\n{b64('secret')}\nAUTH PLAIN\nQUIT\n", tls=True)
    assert codes(lines)[2:] == ["535", "334", "334", "235", "503", "221"]
    assert "535 5.7.8 Error: authentication failed" in lines
    assert conn.user == "bob"
    assert any("sasl_username=bob" in line for line in conn.log.lines)


def test_auth_plain_with_continuation_cancel_and_bad_base64():
    lines, _, _ = run("EHLO c\nAUTH PLAIN\n*\nAUTH PLAIN !!!\nAUTH NOSUCH\nAUTH PLAIN\n"
                      f"{b64(chr(0) + 'bob' + chr(0) + 'secret')}\nQUIT\n")
    assert codes(lines)[2:] == ["334", "501", "501", "504", "334", "235", "221"]


def test_disabled_account_cannot_authenticate():
    backend = FakeBackend(passwords={"bob": "secret", "carol": "pw"})
    lines, conn, _ = run(f"EHLO c\nAUTH PLAIN {b64(chr(0) + 'carol' + chr(0) + 'pw')}\nQUIT\n", backend)
    assert codes(lines)[2] == "535" and conn.user is None


def test_failed_auth_is_reported_and_a_busy_verifier_is_a_temporary_failure(monkeypatch):
    """535 goes through login_failed (auth_failure_delay, penalties); 454 4.7.0 does not."""
    reported = []

    async def login_failed(conn):
        reported.append(conn.peer_ip)
    monkeypatch.setattr("workers.smtpd.session.login_failed", login_failed)

    class Busy:
        async def step(self, response):
            raise AuthUnavailable("34 credential checks already running or waiting")

    backend = FakeBackend()
    lines, _, _ = run(f"EHLO c\nAUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'wrong')}\nQUIT\n", backend)
    assert codes(lines)[2] == "535" and reported == ["192.0.2.9"]
    backend.sasl_server = lambda name: Busy()
    lines, conn, _ = run(f"EHLO c\nAUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'secret')}\nQUIT\n", backend)
    assert lines[-2:] == ["454 4.7.0 Temporary authentication failure, try again later", "221 2.0.0 Bye"]
    assert conn.user is None and reported == ["192.0.2.9"]
    assert any("PLAIN authentication unavailable: 34 credential checks" in line for line in conn.log.lines)


def test_auth_disabled():
    lines, _, _ = run("EHLO c\nAUTH PLAIN\nQUIT\n", smtpd_sasl_auth_enable="no")
    assert not any(line.startswith("250-AUTH") for line in lines)
    assert "503 5.5.1 Error: authentication not enabled" in lines


@pytest.mark.parametrize("peer_ip, tls, offered", [
    ("192.0.2.9", False, False), ("192.0.2.9", True, True), ("127.0.0.1", False, True), ("::1", False, True),
    ("::ffff:127.0.0.2", False, True),
])
def test_tls_auth_only_hides_and_refuses_auth_in_clear_text(peer_ip, tls, offered):
    lines, conn, _ = run(f"EHLO c\nAUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'secret')}\nQUIT\n", peer_ip=peer_ip,
                         tls=tls, smtpd_tls_auth_only="yes")
    assert any(line.startswith("250-AUTH ") for line in lines) == offered
    if offered:
        assert codes(lines)[2] == "235" and conn.user == "bob"
    else:
        assert "538 5.7.11 Encryption required for requested authentication mechanism" in lines


def test_tls_auth_only_exceptions_are_configurable():
    lines, _, _ = run("EHLO c\nQUIT\n", peer_ip="127.0.0.1", smtpd_tls_auth_only="yes",
                      smtpd_tls_auth_only_exceptions="")
    assert not any(line.startswith("250-AUTH ") for line in lines)
    lines, _, _ = run("EHLO c\nQUIT\n", peer_ip="192.0.2.9", smtpd_tls_auth_only="yes",
                      smtpd_tls_auth_only_exceptions="192.0.2.0/24")
    assert any(line.startswith("250-AUTH ") for line in lines)


def test_received_header_names_tls_and_user():
    _, _, backend = run(f"EHLO c\nAUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + 'secret')}\n"
                        "MAIL FROM:<bob@example.test>\nRCPT TO:<x@elsewhere.example>\nDATA\n" + MESSAGE + "QUIT\n",
                        tls=True)
    head = backend.committed[0][1].split(b"\r\n\r\n")[0].decode()
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)" in head
    assert "(authenticated sender: bob)" in head
    assert "with ESMTPSA" in head and "for <x@elsewhere.example>" in head
    assert "\ttls TLS_AES_256_GCM_SHA384;" in head


def test_received_header_shapes():
    head = received_header(helo="bad\r\nX-Injected: 1", client_ip="2001:db8::5", hostname=HOST, esmtp=False,
                           tls_version=None, tls_cipher=None, user=None, recipients=["a@x.example", "b@x.example"],
                           now=0).decode()
    assert head == (f"Received: from bad??X-Injected:?1 ([IPv6:2001:db8::5])\r\n"
                    f"\tby {HOST} (mailhouse) with SMTP; Thu, 01 Jan 1970 00:00:00 +0000\r\n")


# ---------------------------------------------------------------------------- argument parsing

@pytest.mark.parametrize("arg", ["FROM:<a@b.example> SIZE=x", "FROM:<a@b.example> FOO=1", "FROM:a@@b",
                                 "TO:<a@b.example>", "FROM:<a@b.example> RET=ALL", "FROM:<\xe9@b.example>",
                                 "FROM:<" + "a" * 65 + "@b.example>"])
def test_bad_mail_arguments(arg):
    with pytest.raises(ArgError):
        parse_mail(arg)


def test_mail_arguments_accept_common_forms():
    assert parse_mail("FROM: <a@B.Example>").sender == "a@b.example"
    assert parse_mail("from:<@relay.example:a@b.example>").sender == "a@b.example"
    assert parse_mail('FROM:<"a b"@b.example>').sender == '"a b"@b.example'
    assert parse_mail('FROM:<"a.b"@b.example>').sender == "a.b@b.example"          # needs no quotes
    assert parse_rcpt('TO:<"d\\emo"@B.example>').address == "demo@b.example"
    assert parse_rcpt('TO:<"a..b"@b.example>').address == '"a..b"@b.example'
    assert parse_rcpt("TO:<x@y.example> NOTIFY=NEVER").notify == ["NEVER"]
    with pytest.raises(ArgError):
        parse_rcpt("TO:<x@y.example> NOTIFY=NEVER,SUCCESS")


def test_failing_user_database_is_a_temporary_error():
    backend = FakeBackend()

    def broken(name):
        raise StorageError("user database: MDB_PANIC")
    backend.accounts.get = broken
    lines, conn, _ = run("EHLO c\nMAIL FROM:<a@b.example>\nRCPT TO:<bob@example.test>\nQUIT\n", backend)
    assert "451 4.3.0 Temporary lookup failure" in lines
    assert any(line.startswith("E ") and "MDB_PANIC" in line for line in conn.log.lines)


# ---------------------------------------------------------------------------- DNSBL names

@pytest.mark.parametrize("ip, name", [
    ("192.0.2.99", "99.2.0.192.bl.test."),
    ("2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test."),
])
def test_dnsbl_query_names(ip, name):
    from workers.smtpd.rbl import query_name
    assert query_name(ip, "bl.test.") == name


# ---------------------------------------------------------------------------- DATA reader vs a line model

def reference_data(stream: bytes, max_line: int) -> tuple[bytes, bytes]:
    """The rules of workers/smtpd/data.py, one line at a time: (message, rest)."""
    out, after_crlf, pos = [], True, 0
    while True:
        end = stream.index(b"\n", pos) + 1
        line, pos = stream[pos:end], end
        if after_crlf and line == b".\r\n":
            return b"".join(out), stream[pos:]
        after_crlf = line.endswith(b"\r\n")
        text = line[:-2] if after_crlf else line[:-1]
        pieces = []
        while len(text) > max_line + text.startswith(b"."):       # break, then go on with " " + rest
            cut = max_line + text.startswith(b".")
            pieces.append(text[:cut])
            text = b" " + text[cut:]
        pieces.append(text)
        pieces[0] = pieces[0][1:] if pieces[0].startswith(b".") else pieces[0]
        out.append(b"\r\n".join(pieces) + b"\r\n")


TOKENS = [b"a", b".", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.\r\n"[:3], b"x" * 333]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.sampled_from([16, 64, 128 * 1024]),
       st.sampled_from([2, 3, 50, 998]))
def test_data_reader_matches_the_line_model(tokens, reader_limit, max_line):
    from workers.smtpd.data import read_message
    stream = b"".join(tokens) + b"\r\n.\r\nNEXT COMMAND\r\n"
    expected, rest = reference_data(stream, max_line)

    async def read():
        reader = asyncio.StreamReader(limit=reader_limit)
        reader.feed_data(stream)
        reader.feed_eof()
        stored = []
        result = await read_message(reader, stored.append, 0, max_line, 5)
        return result, b"".join(stored), await reader.read()

    result, stored, left = asyncio.run(read())
    assert left == rest
    assert stored == expected and result.size == len(expected)

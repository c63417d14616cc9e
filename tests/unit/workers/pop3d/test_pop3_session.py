"""POP3 session state machine, driven line by line through a fake transport (no sockets).

The backend is real (user database, SASL, store.mailstore in tmp_path, messages from
tests/corpus); only the transport is a fake (tests/fakes.py FakeConnection).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import os
import stat
from pathlib import Path

import pytest

from master.params import Params
from store.fsio import StorageError
from store.mailstore import INBOX, BadMailboxName
from store.users import User, UserDB
from tests.conftest import CORPUS, shared_corpus
from tests.fakes import FakeConnection, FakeLog
from workers._authpool import AuthUnavailable, LocalVerifier
from workers.pop3d import session as S
from workers.pop3d.backend import Backend
from workers.pop3d.maildrop import Maildrop, MaildropBusy
from workers.pop3d.wire import message_size, top_chunks, wire_chunks

EML = sorted(CORPUS.glob("*.eml"))


# ---------------------------------------------------------------- fakes

async def until(predicate, rounds: int = 5000):
    """Let the other task run until predicate() holds (bounded)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the session did not get there")


def make_params(tmp_path, **settings) -> Params:
    raw = {"myhostname": "mail.example.test", "data_directory": str(tmp_path), "auth_failure_delay": "0s",
           **settings}
    return Params(raw, {}, str(tmp_path))


@pytest.fixture
def params(tmp_path):
    return make_params(tmp_path)


@pytest.fixture(scope="module")
def user_db(tmp_path_factory):
    """Made once: every password form costs an scrypt. Tests must not change these users."""
    root = tmp_path_factory.mktemp("users")
    db = UserDB(str(root / "users"), str(root / "secret.key"))
    db.add(User("bob"), "secret")
    db.add(User("carol", enabled=False), "pw2")
    db.add(User("dave", protocols=["imap"]), "pw3")
    db.add(User("erin"), "correct horse battery")
    yield db
    db.close()


@pytest.fixture
def backend(params, user_db, monkeypatch):
    """The real backend (user database, SASL, store in tmp_path); TLS counts as available."""
    backend = Backend(params)
    backend.canonical = user_db.canonical
    backend.verifier = LocalVerifier.from_params(params, user_db, FakeLog())
    monkeypatch.setattr(backend, "tls_available", lambda: True)
    return backend


@pytest.fixture
def store(backend):
    return backend.store.mail


def deliver(store, *names, user="bob"):
    return [store.deliver(user, INBOX, (CORPUS / n).read_bytes()) for n in names]


def client(lines) -> bytes:
    """Command lines (str, or bytes with their line end) as the client sends them."""
    return b"".join(l.encode() + b"\r\n" if isinstance(l, str) else l for l in lines)


def run(backend, tmp_path, lines, tls=False, peer_ip="127.0.0.1", **settings):
    """Run a whole session; returns (conn, [reply lines])."""
    conn = FakeConnection(make_params(tmp_path, **settings), client(lines), tls=tls, peer_ip=peer_ip)
    asyncio.run(S.Session(conn, backend).run())
    return conn, conn.output.decode("utf-8", "replace").split("\r\n")


def replies(out):
    """Only the status lines (+OK / -ERR / +), without multi-line bodies."""
    return [l for l in out if l.startswith(("+OK", "-ERR", "+ "))]


def wire(data: bytes) -> bytes:
    return b"".join(wire_chunks(io.BytesIO(data)))


def pop_size(data: bytes) -> int:
    """What LIST reports: the wire form without the stuffed dots."""
    return len(wire(data).replace(b"\r\n..", b"\r\n.").removeprefix(b"."))


# ---------------------------------------------------------------- wire format

@pytest.mark.parametrize("path", EML, ids=lambda p: p.name)
def test_message_size_is_crlf_stream_without_stuffed_dots(path):
    data = path.read_bytes()
    out = wire(data)
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert out.replace(b"\r\n", b"\n").replace(b"\n..", b"\n.") == data
    assert message_size(io.BytesIO(data)) == len(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def test_message_size_of_every_shared_corpus_message_as_stored():
    """Raw bytes as a store may hold them (CRLF, bare LF, mixed, no final line end): the size
    is what RETR sends once its stuffed dots are taken away, i.e. the CRLF form."""
    corpus = shared_corpus()
    for path, _ in corpus:
        data = path.read_bytes()
        crlf = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        crlf += b"" if crlf.endswith(b"\r\n") or not crlf else b"\r\n"
        sent = wire(data)
        assert b"".join(l[1:] if l.startswith(b".") else l for l in sent.splitlines(keepends=True)) == crlf, path
        assert message_size(io.BytesIO(data)) == len(crlf), path
    assert sum(b"\n." in path.read_bytes() for path, _ in corpus) >= 8
    assert any("bare-lf" in features for _, features in corpus)


@pytest.mark.parametrize("data, expected", [
    (b".\n..\nx.\n", b"..\r\n...\r\nx.\r\n"),
    (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
    (b"no newline at end", b"no newline at end\r\n"),
    (b"", b""),
    (b"mixed\nends\r\n.", b"mixed\r\nends\r\n..\r\n"),
])
def test_wire_byte_stuffing_and_line_ends(data, expected):
    assert wire(data) == expected


def test_wire_long_line_split_over_blocks_keeps_crlf_and_dots():
    long_line = b"x" * (200 * 1024 - 1) + b"\r"
    data = b".first\n" + long_line + b"\n.after\n" + b"y" * 70_000 + b".z\n"
    out = wire(data)
    assert out == b"..first\r\n" + long_line + b"\n" + b"..after\r\n" + b"y" * 70_000 + b".z\r\n"
    assert message_size(io.BytesIO(data)) == len(out) - 2


def test_top_cuts_after_header_and_n_lines():
    msg = wire(b"A: 1\nB: 2\n\nl1\nl2\nl3\n")
    assert b"".join(top_chunks([msg], 0)) == b"A: 1\r\nB: 2\r\n\r\n"
    assert b"".join(top_chunks([msg], 2)) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert b"".join(top_chunks([msg], 99)) == msg
    # chunk boundaries anywhere give the same result
    pieces = [msg[i:i + 1] for i in range(len(msg))]
    assert b"".join(top_chunks(pieces, 1)) == b"A: 1\r\nB: 2\r\n\r\nl1\r\n"


# ---------------------------------------------------------------- greeting, CAPA, state table

def test_greeting_has_apop_timestamp_only_when_apop_enabled(backend, tmp_path):
    _, out = run(backend, tmp_path, ["QUIT"])
    assert out[0].startswith("+OK") and out[0].endswith("@mail.example.test>")
    _, out = run(backend, tmp_path, ["QUIT"], pop3_auth_methods="CLEAR PLAIN")
    assert out[0].startswith("+OK") and "<" not in out[0]


def test_capa_lists_what_is_offered(backend, tmp_path):
    _, out = run(backend, tmp_path, ["CAPA", "QUIT"])
    for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "STLS",
                "SASL PLAIN CRAM-MD5 SCRAM-SHA-256"):
        assert cap in out
    _, out = run(backend, tmp_path, ["CAPA", "QUIT"], pop3_auth_methods="APOP")
    assert "USER" not in out and not any(l.startswith("SASL") for l in out)


def test_transaction_commands_refused_before_login(backend, tmp_path):
    _, out = run(backend, tmp_path, ["STAT", "RETR 1", "FOO", "QUIT"])
    assert replies(out)[1:] == ["-ERR STAT is not valid in the AUTHORIZATION state",
                                "-ERR RETR is not valid in the AUTHORIZATION state",
                                "-ERR Unknown command", "+OK Bye"]


def test_too_many_bad_commands_closes(backend, tmp_path):
    conn, out = run(backend, tmp_path, ["XYZZY"] * 20)
    assert out[-2] == "-ERR Too many bad commands, closing the connection"
    assert conn.unread() == b"XYZZY\r\n" * (20 - S.MAX_BAD_COMMANDS)


def test_overlong_line_is_an_error_not_a_crash(backend, tmp_path):
    _, out = run(backend, tmp_path, [b"USER " + b"x" * 400 + b"\r\n", "QUIT"])
    assert replies(out)[1:] == ["-ERR Line too long", "+OK Bye"]


def test_timeout_ends_session_without_update(backend, store, tmp_path):
    deliver(store, "01-plain.eml")
    conn = FakeConnection(make_params(tmp_path, pop3d_timeout="1s"), client(["USER bob", "PASS secret", "DELE 1"]),
                          eof=False)
    asyncio.run(S.Session(conn, backend).run())
    assert conn.lines()[-1] == "-ERR Disconnected for inactivity"
    assert len(store.open_mailbox("bob", INBOX)) == 1


# ---------------------------------------------------------------- logins

def test_user_pass_right_and_wrong(backend, store, tmp_path):
    deliver(store, "01-plain.eml", "02-utf8-8bit.eml")
    conn, out = run(backend, tmp_path, ["USER bob", "PASS wrong", "USER bob", "PASS secret", "QUIT"])
    r = replies(out)
    assert r[1:3] == ["+OK Send your password", "-ERR [AUTH] Authentication failed"]
    assert r[4].startswith("+OK Logged in, 2 messages")
    assert conn.user == "bob"
    assert any("login failed: user=bob method=USER" in l for l in conn.log.lines)
    assert any("login: user=bob method=USER" in l for l in conn.log.lines)


def test_password_with_spaces_and_pass_needs_user_first(backend, tmp_path):
    _, out = run(backend, tmp_path, ["PASS x", "USER erin", "NOOP", "PASS correct horse battery",
                                     "USER erin", "PASS correct horse battery", "QUIT"])
    r = replies(out)
    assert r[1] == "-ERR Send USER first"
    assert r[4] == "-ERR Send USER first"      # NOOP in between breaks the USER/PASS pair
    assert r[6].startswith("+OK Logged in")


def test_unknown_user_looks_like_a_wrong_password(backend, tmp_path):
    _, out = run(backend, tmp_path, ["USER nobody", "PASS secret", "QUIT"])
    assert replies(out)[2] == "-ERR [AUTH] Authentication failed"


def test_three_failures_close_the_connection(backend, tmp_path):
    conn, out = run(backend, tmp_path, ["USER bob", "PASS a", "USER bob", "PASS b", "USER bob", "PASS c",
                                        "USER bob", "PASS secret"])
    assert "-ERR Too many failed logins, closing the connection" in out
    assert conn.user is None and conn.unread()


def test_failed_login_waits_auth_failure_delay(backend, tmp_path, monkeypatch):
    slept = []

    async def fake_sleep(seconds):
        slept.append(seconds)
    monkeypatch.setattr(S.login.asyncio, "sleep", fake_sleep)
    run(backend, tmp_path, ["USER bob", "PASS wrong", "QUIT"], auth_failure_delay="3s")
    assert slept == [3.0]


def test_apop_right_and_wrong(backend, store, tmp_path):
    deliver(store, "01-plain.eml")
    conn = FakeConnection(make_params(tmp_path))
    session = S.Session(conn, backend)
    good = hashlib.md5((session.apop_timestamp + "secret").encode()).hexdigest()
    conn.feed(client(["APOP bob " + "0" * 32, f"APOP bob {good}", "QUIT"]))
    asyncio.run(session.run())
    r = replies(conn.output.decode().split("\r\n"))
    assert r[1] == "-ERR [AUTH] Authentication failed"
    assert r[2].startswith("+OK Logged in, 1 messages")


def test_busy_verifier_is_a_temporary_failure_not_a_failed_login(backend, tmp_path):
    class Busy:
        async def verify(self, check, protocol):
            raise AuthUnavailable("34 credential checks already running or waiting")
    backend.verifier = Busy()
    plain = base64.b64encode(b"\0bob\0secret").decode()
    conn, out = run(backend, tmp_path, ["USER bob", "PASS secret", "APOP bob " + "0" * 32, f"AUTH PLAIN {plain}",
                                        "USER bob", "PASS secret", "QUIT"])
    temporary = "-ERR [SYS/TEMP] Authentication is temporarily unavailable, try again later"
    assert replies(out)[1:] == ["+OK Send your password", temporary, temporary, temporary,
                                "+OK Send your password", temporary, "+OK Bye"]
    assert not any("login failed" in line for line in conn.log.lines)
    assert any(f"login unavailable: ip={conn.peer_ip}: 34 credential checks" in line for line in conn.log.lines)


def test_apop_refused_when_not_offered(backend, tmp_path):
    _, out = run(backend, tmp_path, ["APOP bob " + "0" * 32, "QUIT"], pop3_auth_methods="CLEAR")
    assert replies(out)[1] == "-ERR [AUTH] APOP is not enabled on this server"


def test_auth_plain_initial_response_and_continuation(backend, tmp_path):
    good = base64.b64encode(b"\0bob\0secret").decode()
    bad = base64.b64encode(b"\0bob\0nope").decode()
    _, out = run(backend, tmp_path, [f"AUTH PLAIN {bad}", "AUTH PLAIN", good, "QUIT"])
    r = replies(out)
    assert r[1] == "-ERR [AUTH] Authentication failed"
    assert r[2] == "+ " and r[3].startswith("+OK Logged in")


def test_auth_cancel_bad_base64_and_unknown_mechanism(backend, tmp_path):
    _, out = run(backend, tmp_path, ["AUTH PLAIN", "*", "AUTH PLAIN !!!", "AUTH GSSAPI", "AUTH", "QUIT"])
    r = replies(out)
    assert r[1:5] == ["+ ", "-ERR Authentication cancelled", "-ERR Invalid base64 in initial response",
                      "-ERR [AUTH] Unsupported authentication mechanism"]
    listing = out.index("+OK Supported mechanisms follow")
    assert out[listing + 1:listing + 5] == ["PLAIN", "CRAM-MD5", "SCRAM-SHA-256", "."]


def test_auth_cram_md5_right_and_wrong(backend, tmp_path):
    conn = FakeConnection(make_params(tmp_path), eof=False)

    async def exchange():
        session = S.Session(conn, backend)
        task = asyncio.ensure_future(session.run())
        answers = []
        for password in ("bad", "secret"):
            conn.feed(b"AUTH CRAM-MD5\r\n")
            await until(lambda: b"+ " in conn.output)
            challenge = base64.b64decode(bytes(conn.output).split(b"+ ")[-1].split(b"\r\n")[0])
            conn.output.clear()
            digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
            conn.feed(base64.b64encode(f"bob {digest}".encode()) + b"\r\n")
            await until(lambda: conn.output.endswith(b"\r\n") and b"+ " not in conn.output)
            answers.append(conn.output.decode())
            conn.output.clear()
        conn.feed(b"QUIT\r\n")
        await task
        return answers

    bad, good = asyncio.run(exchange())
    assert bad == "-ERR [AUTH] Authentication failed\r\n"
    assert good.startswith("+OK Logged in")


def test_disabled_account_and_protocol_not_allowed(backend, tmp_path):
    _, out = run(backend, tmp_path, ["USER carol", "PASS pw2", "USER dave", "PASS pw3", "QUIT"])
    r = replies(out)
    assert r[2] == "-ERR [AUTH] This account is disabled"
    assert r[4] == "-ERR [AUTH] POP3 access is not enabled for dave"


def test_tls_required_refuses_every_login_before_stls(backend, tmp_path):
    conn, out = run(backend, tmp_path, ["CAPA", "USER bob", "PASS secret", "AUTH PLAIN", "APOP bob " + "0" * 32,
                                        "STLS", "CAPA", "USER bob", "PASS secret", "QUIT"],
                    imap_pop_tls_security_level="encrypt")
    first_capa = out[out.index("+OK Capability list follows"):out.index(".")]
    assert "USER" not in first_capa and not any(l.startswith("SASL") for l in first_capa)
    assert "STLS" in first_capa
    r = replies(out)
    refused = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS first"
    assert r[2:6] == [refused] * 4
    assert r[6] == "+OK Begin TLS negotiation now" and conn.tls
    assert r[-2].startswith("+OK Logged in")


def test_no_password_in_clear_from_a_remote_client_before_stls(backend, tmp_path):
    """disable_plaintext_auth (default yes): USER/PASS and AUTH PLAIN wait for STLS; APOP and
    the challenge-response mechanisms do not show the password and stay offered."""
    remote = "192.0.2.1"
    conn, out = run(backend, tmp_path, ["CAPA", "USER bob", "AUTH PLAIN", "AUTH", "APOP bob " + "0" * 32,
                                        "STLS", "CAPA", "USER bob", "PASS secret", "QUIT"], peer_ip=remote)
    first_capa = out[out.index("+OK Capability list follows"):out.index(".")]
    assert "USER" not in first_capa and "SASL CRAM-MD5 SCRAM-SHA-256" in first_capa and "STLS" in first_capa
    r = replies(out)
    refused = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS first"
    assert r[2:4] == [refused] * 2
    assert r[4] == "+OK Supported mechanisms follow" and "PLAIN" not in out[out.index(r[4]) + 1:][:3]
    assert r[5] == "-ERR [AUTH] Authentication failed"          # APOP was tried, not refused
    assert r[6] == "+OK Begin TLS negotiation now"
    second_capa = out[out.index("+OK Begin TLS negotiation now"):]
    assert "USER" in second_capa and "SASL PLAIN CRAM-MD5 SCRAM-SHA-256" in second_capa
    assert r[-2].startswith("+OK Logged in")
    for settings in ({"disable_plaintext_auth": "no"}, {"disable_plaintext_auth_exceptions": "192.0.2.0/24"}):
        _, out = run(backend, tmp_path, ["CAPA", *login("QUIT")], peer_ip=remote, **settings)
        assert "USER" in out and replies(out)[-2].startswith("+OK Logged in")
    _, out = run(backend, tmp_path, login("QUIT"), peer_ip="::ffff:127.0.0.1")    # loopback by default
    assert replies(out)[-2].startswith("+OK Logged in")


def test_stls_refused_when_already_tls_or_unavailable(backend, tmp_path, monkeypatch):
    _, out = run(backend, tmp_path, ["STLS", "QUIT"], tls=True)
    assert replies(out)[1] == "-ERR Command not permitted when TLS active"
    monkeypatch.setattr(backend, "tls_available", lambda: False)
    _, out = run(backend, tmp_path, ["CAPA", "STLS", "QUIT"])
    assert "STLS" not in out and "-ERR STLS not available" in out


# ---------------------------------------------------------------- transaction

def login(*more):
    return ["USER bob", "PASS secret", *more]


def test_stat_list_uidl_sizes_match_retr(backend, store, tmp_path):
    uids = deliver(store, "01-plain.eml", "08-dot-lines.eml", "05-mixed-attachment.eml")
    _, out = run(backend, tmp_path, login("STAT", "LIST", "UIDL", "UIDL 2", "LIST 9", "QUIT"))
    validity = store.mailbox("bob", INBOX).uidvalidity
    sizes = [pop_size((CORPUS / n).read_bytes()) for n in ("01-plain.eml", "08-dot-lines.eml",
                                                           "05-mixed-attachment.eml")]
    assert f"+OK 3 {sum(sizes)}" in out
    assert [f"{i} {s}" for i, s in enumerate(sizes, 1)] == out[out.index("+OK 3 messages") + 1:][:3]
    assert f"+OK 2 {validity}.{uids[1]}" in out
    assert "-ERR No such message" in out


def test_retr_sends_exact_octets_with_byte_stuffing(backend, store, tmp_path):
    deliver(store, "08-dot-lines.eml")
    conn, _ = run(backend, tmp_path, login("LIST 1", "RETR 1", "QUIT"))
    raw = bytes(conn.output)
    expected = wire((CORPUS / "08-dot-lines.eml").read_bytes())
    start = raw.index(b"octets\r\n") + len(b"octets\r\n")
    assert raw[start:start + len(expected) + 3] == expected + b".\r\n"
    stuffed = sum(line.startswith(b".") for line in (CORPUS / "08-dot-lines.eml").read_bytes().split(b"\n"))
    assert b"\r\n..\r\n...\r\n" in expected and stuffed == 8
    assert f"+OK 1 {len(expected) - stuffed}\r\n".encode() in raw
    assert f"+OK {len(expected) - stuffed} octets\r\n".encode() in raw


def test_top_on_nested_multipart(backend, store, tmp_path):
    deliver(store, "06-nested-multipart.eml")
    conn, out = run(backend, tmp_path, login("TOP 1 3", "TOP 1 x", "QUIT"))
    body_start = out.index("MIME-Version: 1.0") + 2
    assert out[body_start - 1] == 'Content-Type: multipart/mixed; boundary="000000000000outer7d41"'
    assert out[body_start:body_start + 4] == ["", "--000000000000outer7d41",
                                              'Content-Type: multipart/alternative; boundary="000000000000alt7d3f"',
                                              ""]
    assert out[body_start + 4] == "."
    assert "-ERR Syntax error in TOP: the line count must be a number" in out


def test_dele_rset_and_quit_commits(backend, store, tmp_path):
    deliver(store, "01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml")
    _, out = run(backend, tmp_path, login("DELE 1", "DELE 1", "RETR 1", "STAT", "RSET", "STAT",
                                          "DELE 2", "QUIT"))
    r = replies(out)
    assert r[3:6] == ["+OK Message 1 deleted", "-ERR No such message", "-ERR No such message"]
    assert r[6].startswith("+OK 2 ")
    assert r[7].startswith("+OK Maildrop has 3 messages") and r[8].startswith("+OK 3 ")
    assert r[-1] == "+OK Logging out, 1 messages deleted, 2 left"
    view = store.open_mailbox("bob", INBOX)
    assert len(view) == 2


def test_lock_files_stay_in_the_lock_directory(store, tmp_path):
    """Names are checked at login already; the lock path encodes them again all the same."""
    lock_dir = tmp_path / "run" / "pop3"
    with pytest.raises(BadMailboxName):              # and the store refuses the name too
        Maildrop.open(store, "../../escape", str(lock_dir))
    assert [p.parent for p in tmp_path.rglob("*.lock")] == [lock_dir]
    assert not (tmp_path / "escape.lock").exists()
    assert stat.S_IMODE(os.stat(lock_dir).st_mode) == 0o700


def test_quit_releases_the_lock_before_it_answers(backend, store, tmp_path):
    """A client that logs in again as soon as QUIT's +OK arrives must not get [IN-USE]."""
    deliver(store, "01-plain.eml")
    free_at_reply = []

    class Watching(FakeConnection):
        async def send(self, data):
            if data.startswith(b"+OK Logging out"):
                try:
                    backend.open_maildrop("bob", exclusive=True).release()
                    free_at_reply.append(True)
                except MaildropBusy:
                    free_at_reply.append(False)
            await super().send(data)

    conn = Watching(make_params(tmp_path), client(login("DELE 1", "QUIT")))
    asyncio.run(S.Session(conn, backend).run())
    assert free_at_reply == [True]
    assert len(store.open_mailbox("bob", INBOX)) == 0


def test_dropped_connection_deletes_nothing_and_releases_lock(backend, store, tmp_path):
    deliver(store, "01-plain.eml", "02-utf8-8bit.eml")
    conn, _ = run(backend, tmp_path, login("DELE 1", "DELE 2"))
    assert len(store.open_mailbox("bob", INBOX)) == 2
    assert any("disconnected without QUIT: user=bob" in l for l in conn.log.lines)
    _, out = run(backend, tmp_path, login("QUIT"))
    assert replies(out)[2].startswith("+OK Logged in, 2 messages")


def test_server_stop_says_so_and_deletes_nothing(backend, store, tmp_path):
    """Graceful stop: an idle session gets -ERR [SYS/TEMP] and ends without UPDATE."""
    deliver(store, "01-plain.eml", "02-utf8-8bit.eml")
    conn = FakeConnection(make_params(tmp_path), eof=False)

    async def stopped_while_idle():
        task = asyncio.ensure_future(S.Session(conn, backend).run())
        conn.feed(client(login("DELE 1")))
        await until(lambda: b"+OK Message 1 deleted" in conn.output)
        conn.draining.set()
        await task

    asyncio.run(stopped_while_idle())
    assert conn.output.endswith(b"+OK Message 1 deleted\r\n-ERR [SYS/TEMP] Server shutting down\r\n")
    assert len(store.open_mailbox("bob", INBOX)) == 2
    assert any("server shutting down: user=bob" in l for l in conn.log.lines)
    _, out = run(backend, tmp_path, login("QUIT"))     # the lock went with the session
    assert replies(out)[2].startswith("+OK Logged in, 2 messages")


def test_second_session_gets_in_by_default_and_in_use_with_pop3_lock_session(backend, store, tmp_path):
    deliver(store, "01-plain.eml")
    in_use = "-ERR [IN-USE] The mailbox is in use by another POP3 session"
    holder = backend.open_maildrop("bob")                     # a session with the default
    try:
        _, out = run(backend, tmp_path, login("QUIT"))
        assert replies(out)[2].startswith("+OK Logged in, 1 messages")
        _, out = run(backend, tmp_path, login("QUIT"), pop3_lock_session="yes")
        assert replies(out)[2] == in_use
    finally:
        holder.release()
    holder = backend.open_maildrop("bob", exclusive=True)     # a pop3_lock_session session
    try:
        _, out = run(backend, tmp_path, login("QUIT"))
        assert replies(out)[2] == in_use
    finally:
        holder.release()
    _, out = run(backend, tmp_path, login("QUIT"), pop3_lock_session="yes")
    assert replies(out)[2].startswith("+OK Logged in")


def test_failed_update_reports_err_and_keeps_messages(backend, store, tmp_path, monkeypatch):
    deliver(store, "01-plain.eml", "02-utf8-8bit.eml")

    def disk_full(self):
        raise StorageError("index write failed: No space left on device", 28)
    monkeypatch.setattr(Maildrop, "commit", disk_full)
    conn, out = run(backend, tmp_path, login("RETR 1", "DELE 1", "QUIT"))
    assert replies(out)[-1].startswith("-ERR [SYS/TEMP] Deleted messages could not be removed")
    assert len(store.open_mailbox("bob", INBOX)) == 2
    assert any(l.startswith("E update failed: user=bob") for l in conn.log.lines)


def test_size_cache_survives_sessions_and_new_mail(backend, store, tmp_path):
    deliver(store, "01-plain.eml")
    first = backend.open_maildrop("bob")
    first.measure()
    first.release()
    deliver(store, "08-dot-lines.eml")
    second = backend.open_maildrop("bob")
    second.measure()
    second.release()
    assert [e.pop_size for e in second.messages] == [
        pop_size((CORPUS / n).read_bytes()) for n in ("01-plain.eml", "08-dot-lines.eml")]
    assert len((Path(backend.lock_dir) / "bob.sizes").read_text().splitlines()) == 3    # format line


def test_size_cache_of_the_old_format_is_recomputed(backend, store, tmp_path):
    """Sizes cached before LIST stopped counting the stuffed dots must not be reported."""
    [uid] = deliver(store, "08-dot-lines.eml")
    view = store.open_mailbox("bob", INBOX)
    [stored] = [m.size for m in view.messages()]
    os.makedirs(backend.lock_dir, exist_ok=True)
    stale = len(wire((CORPUS / "08-dot-lines.eml").read_bytes()))
    (Path(backend.lock_dir) / "bob.sizes").write_text(f"{view.info.uidvalidity} {uid} {stored} {stale}\n")
    maildrop = backend.open_maildrop("bob")
    maildrop.measure()
    maildrop.release()
    assert [e.pop_size for e in maildrop.messages] == [pop_size((CORPUS / "08-dot-lines.eml").read_bytes())] \
        != [stale]


def test_client_that_stops_reading_a_retr_is_dropped(backend, store, tmp_path, monkeypatch):
    deliver(store, "05-mixed-attachment.eml", "01-plain.eml")
    monkeypatch.setattr(S, "FAREWELL_TIMEOUT", 0.01)
    conn = FakeConnection(make_params(tmp_path, pop3d_timeout="1s"), client(login("DELE 2", "RETR 1", "QUIT")))
    real_send = conn.send

    async def stalled_send(data):
        if data.startswith(b"+OK ") and b" octets\r\n" in data:   # RETR's status line and body
            await asyncio.Event().wait()        # the client's window stays shut
        await real_send(data)
    conn.send = stalled_send
    asyncio.run(S.Session(conn, backend).run())
    assert conn.unread() == b"QUIT\r\n"          # never got that far
    assert any("timeout: user=bob" in line for line in conn.log.lines)
    assert len(store.open_mailbox("bob", INBOX)) == 2
    assert backend.open_maildrop("bob", exclusive=True).release() is None   # the lock was given back

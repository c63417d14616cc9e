"""The AUTHORIZATION state: CAPA, STLS, USER/PASS, APOP and AUTH (RFC 1939, 2449, 2595, 5034).

pop3_auth_methods decides what is offered: CLEAR (USER/PASS), APOP, and SASL mechanisms
(PLAIN, CRAM-MD5, SCRAM-SHA-256, ...), as far as the backend implements them. With
imap_pop_tls_security_level=encrypt nothing authenticates before STLS: the commands answer
`-ERR [AUTH]` and CAPA does not list them. With disable_plaintext_auth (the default, as in
Dovecot) the same holds for the ways that send the password itself (USER/PASS and SASL
PLAIN/LOGIN), except for clients in disable_plaintext_auth_exceptions (loopback); APOP,
CRAM-MD5 and SCRAM never show the password and stay offered.
Every way in ends in finish(): a wrong name or password gets the same `-ERR [AUTH]` after
auth_failure_delay (no fast guessing, no telling which part was wrong); only a client that
proved the password learns that the account is disabled or not allowed to use POP3 (the
verifier decides: Verdict.refused / Step.refused); then the maildrop is opened (`-ERR [IN-USE]` when pop3_lock_session makes the sessions exclude
each other). The checks are awaited through the backend's verifier (the auth service, or
the process's own threads: workers/_authremote.py); when it cannot answer now the command
answers `-ERR [SYS/TEMP]`, not counted as a failure.
Diagnostics: pop.log lines `login: ...`, `login failed: ...`, `login refused: ...`,
`login unavailable: ...`.
"""
from __future__ import annotations

import asyncio
import functools
import re
from typing import Awaitable, Callable

from store.fsio import StorageError
from workers import _loginpolicy as policy
from workers._auth import decode_response, login_failed
from workers._authpool import AuthUnavailable
from workers._limits import refusal_text
from workers._saslexchange import Abort, exchange
from workers.pop3d.maildrop import MaildropBusy

MAX_AUTH_FAILURES = 3          # then the connection is closed
AUTH_LINE_MAX = 8 * 1024       # a SASL response line (base64)
APOP_DIGEST = re.compile(r"[0-9a-fA-F]{32}")
TLS_REQUIRED = "[AUTH] Plaintext authentication disallowed on non-secure connections; use STLS first"
FAILED = "[AUTH] Authentication failed"
UNAVAILABLE = "[SYS/TEMP] Authentication is temporarily unavailable, try again later"


# ---------------------------------------------------------------- what is offered

def methods(session) -> list[str]:
    return [m.upper() for m in session.params.pop3_auth_methods]


def sasl_mechanisms(session) -> list[str]:
    return policy.sasl_mechanisms(session, methods(session))


def offers(session, method: str) -> bool:
    return method in methods(session)


tls_required = policy.tls_required
plaintext_refused = policy.plaintext_refused
can_stls = policy.can_starttls


async def capa(session, args: list[str]) -> None:
    lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
    if not session.logged_in:
        if not tls_required(session):
            if offers(session, "CLEAR") and not plaintext_refused(session):
                lines.append("USER")
            if sasl_mechanisms(session):
                lines.append("SASL " + " ".join(sasl_mechanisms(session)))
        if can_stls(session):
            lines.append("STLS")
    lines.append("IMPLEMENTATION mailhouse")
    await session.ok("Capability list follows")
    await session.send("".join(f"{line}\r\n" for line in lines).encode() + b".\r\n")


async def stls(session, args: list[str]) -> None:
    if session.conn.tls:
        await session.bad_command("Command not permitted when TLS active")
        return
    if not can_stls(session):
        await session.bad_command("STLS not available")
        return
    await session.conn.start_tls(b"+OK Begin TLS negotiation now")
    session.log.debug(f"tls: ip={session.conn.peer_ip} {session.conn.tls_version()} {session.conn.tls_cipher()}")


# ---------------------------------------------------------------- USER/PASS and APOP

Handler = Callable[..., Awaitable[None]]


def _temporary_failure_when_unavailable(handler: Handler) -> Handler:
    """A login command whose check the verifier cannot take now (AuthUnavailable: too many
    waiting) answers the temporary failure of RFC 3206; no failed login is counted."""
    @functools.wraps(handler)
    async def guarded(session, args: list[str]) -> None:
        try:
            await handler(session, args)
        except AuthUnavailable as e:
            session.log.info(f"login unavailable: ip={session.conn.peer_ip}: {e}")
            await session.err(UNAVAILABLE)
    return guarded


async def user(session, args: list[str]) -> None:
    if not await _may_authenticate(session, "CLEAR", "USER"):
        return
    session.pending_user = args[0]
    await session.ok("Send your password")


@_temporary_failure_when_unavailable
async def password(session, args: list[str]) -> None:
    if not await _may_authenticate(session, "CLEAR", "PASS"):
        return
    name = session.pending_user
    if name is None:
        await session.bad_command("Send USER first")
        return
    session.pending_user = None
    verdict = await session.backend.verify_password(name, args[0])
    await finish(session, verdict.user, name, "USER", verdict.refused)


@_temporary_failure_when_unavailable
async def apop(session, args: list[str]) -> None:
    if not await _may_authenticate(session, "APOP", "APOP"):
        return
    name, digest = args
    if not APOP_DIGEST.fullmatch(digest):
        await finish(session, None, name, "APOP")
        return
    verdict = await session.backend.verify_apop(name, session.apop_timestamp, digest.lower())
    await finish(session, verdict.user, name, "APOP", verdict.refused)


async def _may_authenticate(session, method: str, verb: str) -> bool:
    if not offers(session, method):
        await session.bad_command(f"[AUTH] {verb} is not enabled on this server")
        return False
    if tls_required(session) or (method == "CLEAR" and plaintext_refused(session)):
        await session.bad_command(TLS_REQUIRED)
        return False
    return True


# ---------------------------------------------------------------- AUTH (SASL)

@_temporary_failure_when_unavailable
async def auth(session, args: list[str]) -> None:
    if tls_required(session):
        await session.bad_command(TLS_REQUIRED)
        return
    offered = sasl_mechanisms(session)
    if not args:  # the pre-RFC 5034 listing that some clients still ask for
        await session.ok("Supported mechanisms follow")
        await session.send("".join(f"{m}\r\n" for m in offered).encode() + b".\r\n")
        return
    mechanism = args[0].upper()
    if mechanism in methods(session) and policy.sends_password(session, mechanism) and plaintext_refused(session):
        await session.bad_command(TLS_REQUIRED)
        return
    if mechanism not in offered:
        await session.bad_command("[AUTH] Unsupported authentication mechanism")
        return
    server = session.backend.sasl_server(mechanism)
    response = decode_response(args[1]) if len(args) > 1 else None
    if len(args) > 1 and response is None:
        await session.bad_command("Invalid base64 in initial response")
        return

    async def prompt(challenge: bytes) -> None:
        await session.send(b"+ " + challenge + b"\r\n")
    result = await exchange(server, response, prompt, session.conn, AUTH_LINE_MAX, session.params.pop3d_timeout)
    if result is Abort.CANCELLED:
        await session.err("Authentication cancelled")
    elif result is Abort.ROUNDS:
        await finish(session, None, "-", mechanism)
    elif isinstance(result, Abort):
        await session.bad_command("Line too long" if result is Abort.TOO_LONG else "Invalid base64 in response")
    else:
        proved = result.user if result.refused or not result.failed else None
        await finish(session, proved, result.user or "-", mechanism, result.refused)



# ---------------------------------------------------------------- the common end

async def finish(session, user: str | None, tried: str, method: str, refused: str = "") -> None:
    """user is the authenticated (canonical) name, None when the credentials were wrong;
    refused: why that user may not log in over POP3 (Verdict.refused), "" when it may."""
    ip = session.conn.peer_ip
    refusal = await session.conn.report_login(user is not None, user)   # waits the auth penalty
    if refusal:
        session.log.info(f"login refused: user={tried} method={method} ip={ip} reason={refusal}")
        await session.err(f"[SYS/TEMP] {refusal_text(refusal, ip, session.params)}")
        session.closing = True
        return
    if user is None:
        session.auth_failures += 1
        session.log.info(f"login failed: user={tried} method={method} ip={ip} attempt={session.auth_failures}")
        await login_failed(session.conn)
        await session.err(FAILED)
        if session.auth_failures >= MAX_AUTH_FAILURES:
            await session.err("Too many failed logins, closing the connection")
            session.closing = True
        return
    if refused:
        session.log.info(f"login refused: user={user} method={method} ip={ip} reason={refused}")
        await session.err("[AUTH] This account is disabled" if refused == "disabled"
                          else f"[AUTH] POP3 access is not enabled for {user}")
        return
    try:
        maildrop = session.backend.open_maildrop(user, session.params.pop3_lock_session)
    except MaildropBusy:
        session.log.info(f"login refused: user={user} method={method} ip={ip} reason=in-use")
        await session.err("[IN-USE] The mailbox is in use by another POP3 session")
        return
    except (StorageError, OSError) as e:
        await _cannot_open(session, user, e)
        return
    try:
        await asyncio.to_thread(maildrop.measure)
    except OSError as e:
        maildrop.release()
        await _cannot_open(session, user, e)
        return
    session.enter_transaction(user, maildrop)
    count, octets = maildrop.stat()
    tls = session.conn.tls_version() if session.conn.tls else "no"
    session.log.info(f"login: user={user} method={method} ip={ip} tls={tls} messages={count} octets={octets}")
    await session.ok(f"Logged in, {count} messages ({octets} octets)")


async def _cannot_open(session, user: str, error: Exception) -> None:
    session.log.error(f"login failed: user={user} ip={session.conn.peer_ip}: cannot open the maildrop: {error}")
    await session.err("[SYS/TEMP] The mailbox cannot be opened now, try again later")

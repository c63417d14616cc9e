"""The NOT AUTHENTICATED state: STARTTLS, LOGIN and AUTHENTICATE (RFC 3501 6.2, RFC 4959 SASL-IR).

imap_auth_methods decides what is offered: CLEAR (the LOGIN command) and SASL mechanisms,
as far as the backend implements them (workers/_loginpolicy.py says which may be used now).
With imap_pop_tls_security_level=encrypt nothing authenticates before STARTTLS:
LOGINDISABLED is announced, LOGIN answers `NO [PRIVACYREQUIRED]` and no AUTH= is offered.
Every way in ends in finish(): a wrong name or password gets the same
`NO [AUTHENTICATIONFAILED]` after auth_failure_delay; only a client that proved the
password learns that the account is disabled or may not use IMAP (`NO
[AUTHORIZATIONFAILED]`). When the verifier cannot answer now: `NO [UNAVAILABLE]`, not counted
as a failure. A success answers `OK [CAPABILITY ...]` with the post-login capabilities;
the user's INBOX and special-use folders are made on the first login (backend.prepare_user).
After MAX_AUTH_FAILURES failed logins the connection is closed.
Diagnostics: imap.log lines `login: ...`, `login failed: ...`, `login refused: ...`,
`login unavailable: ...`.
"""
from __future__ import annotations


from store.fsio import StorageError
from workers import _loginpolicy as policy
from workers._auth import decode_response, login_failed
from workers._authpool import AuthUnavailable
from workers._limits import refusal_text
from workers._saslexchange import Abort, exchange
from workers._session import Close
from workers.imapd.parser import Bad, astring

MAX_AUTH_FAILURES = 3
AUTH_LINE_MAX = 8 * 1024
FAILED = "Authentication failed"


def methods(session) -> list[str]:
    return [m.upper() for m in session.params.imap_auth_methods]


def sasl_mechanisms(session) -> list[str]:
    return policy.sasl_mechanisms(session, methods(session))


def login_allowed(session) -> bool:
    """The LOGIN command may be used now."""
    return "CLEAR" in methods(session) and not policy.tls_required(session) and not policy.plaintext_refused(session)


can_starttls = policy.can_starttls


async def starttls(session, command) -> None:
    if command.args:
        raise Bad("STARTTLS takes no arguments")
    if session.conn.tls:
        raise Bad("TLS is already active")
    if not can_starttls(session):
        await session.no("STARTTLS is not available")
        return
    tag = command.tag
    await session.conn.start_tls(f"{tag} OK Begin TLS negotiation now".encode())
    session.log.debug(f"tls: ip={session.conn.peer_ip} {session.conn.tls_version()} {session.conn.tls_cipher()}")


async def login(session, command) -> None:
    if len(command.args) != 2:
        raise Bad("LOGIN needs a user name and a password")
    name, password = astring(command.args[0]), astring(command.args[1])
    if "CLEAR" not in methods(session):
        await session.no("LOGIN is disabled on this server; use AUTHENTICATE", "CANNOT")
        return
    if policy.tls_required(session) or policy.plaintext_refused(session):
        await session.no("Plaintext authentication disallowed on non-secure connections; use STARTTLS",
                         "PRIVACYREQUIRED")
        return
    try:
        verdict = await session.backend.verify_password(name, password)
    except AuthUnavailable as e:
        await _unavailable(session, e)
        return
    await finish(session, verdict.user, name, "LOGIN", verdict.refused)


async def authenticate(session, command) -> None:
    args = command.args
    if not 1 <= len(args) <= 2:
        raise Bad("AUTHENTICATE needs a mechanism name")
    mechanism = astring(args[0]).upper()
    if policy.tls_required(session) or (mechanism in methods(session) and policy.sends_password(session, mechanism)
                                        and policy.plaintext_refused(session)):
        await session.no("Plaintext authentication disallowed on non-secure connections; use STARTTLS",
                         "PRIVACYREQUIRED")
        return
    if mechanism not in sasl_mechanisms(session):
        await session.no("Unsupported authentication mechanism", "CANNOT")
        return
    response = None
    if len(args) == 2:                       # SASL-IR; "=" is an empty initial response
        initial = astring(args[1])
        response = b"" if initial == "=" else decode_response(initial)
        if response is None:
            raise Bad("Invalid base64 in the initial response")
    server = session.backend.sasl_server(mechanism)
    async def prompt(challenge: bytes) -> None:
        await session.continuation(challenge.decode("ascii"))
    try:
        result = await exchange(server, response, prompt, session.conn, AUTH_LINE_MAX, session.timeout)
    except AuthUnavailable as e:
        await _unavailable(session, e)
        return
    if result is Abort.ROUNDS:
        await finish(session, None, "-", mechanism)
    elif isinstance(result, Abort):
        raise Bad({Abort.TOO_LONG: "Line too long", Abort.CANCELLED: "Authentication cancelled",
                   Abort.BAD_BASE64: "Invalid base64 in the response"}[result])
    else:
        proved = result.user if result.refused or not result.failed else None
        await finish(session, proved, result.user or "-", mechanism, result.refused)


async def _unavailable(session, error: Exception) -> None:
    session.log.info(f"login unavailable: ip={session.conn.peer_ip}: {error}")
    await session.no("Authentication is temporarily unavailable, try again later", "UNAVAILABLE")


async def finish(session, user: str | None, tried: str, method: str, refused: str = "") -> None:
    """user: the authenticated (canonical) name, None when the credentials were wrong;
    refused: why that user may not log in over IMAP, "" when it may."""
    ip = session.conn.peer_ip
    refusal = await session.conn.report_login(user is not None, user)
    if refusal:
        session.log.info(f"login refused: user={tried} method={method} ip={ip} reason={refusal}")
        await session.untagged(f"BYE {refusal_text(refusal, ip, session.params)}")
        await session.tagged("NO", refusal_text(refusal, ip, session.params), "UNAVAILABLE")
        raise Close
    if user is None:
        session.auth_failures += 1
        session.log.info(f"login failed: user={tried} method={method} ip={ip} attempt={session.auth_failures}")
        await login_failed(session.conn)
        await session.no(FAILED, "AUTHENTICATIONFAILED")
        if session.auth_failures >= MAX_AUTH_FAILURES:
            await session.farewell("Too many failed logins")
            raise Close
        return
    if refused:
        session.log.info(f"login refused: user={user} method={method} ip={ip} reason={refused}")
        await session.no("This account is disabled" if refused == "disabled"
                         else f"IMAP access is not enabled for {user}", "AUTHORIZATIONFAILED")
        return
    try:
        await session.backend.prepare_user(user)
    except (StorageError, OSError) as e:
        session.log.error(f"login failed: user={user} ip={ip}: cannot open the mailboxes: {e}")
        await session.no("The mailboxes cannot be opened now, try again later", "UNAVAILABLE")
        return
    session.enter_authenticated(user)
    tls = session.conn.tls_version() if session.conn.tls else "no"
    session.log.info(f"login: user={user} method={method} ip={ip} tls={tls}")
    await session.ok("Logged in", "CAPABILITY " + session.capabilities())

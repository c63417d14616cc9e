"""Which ways of logging in a POP3 or IMAP session may use now (shared by pop3d and imapd).

Every function takes the session (its conn, params and backend) and the configured methods
(pop3_auth_methods / imap_auth_methods, upper case: CLEAR for USER/PASS or the IMAP LOGIN
command, APOP, and SASL mechanism names):
    tls_required(session)        imap_pop_tls_security_level=encrypt and no TLS yet: nothing
                                 authenticates (POP3 answers -ERR [AUTH], IMAP LOGINDISABLED)
    plaintext_refused(session)   disable_plaintext_auth (Dovecot's rule): no password in the
                                 clear before TLS, except for clients in
                                 disable_plaintext_auth_exceptions (loopback by default)
    can_starttls(session)        STLS / STARTTLS is offered: no TLS yet, the level is not
                                 `none` and a certificate is there
    sasl_mechanisms(session, methods)   the configured mechanisms the backend implements and
                                 that may be used now (none sending the password itself while
                                 plaintext_refused)
    sends_password(session, mechanism)  PLAIN and LOGIN do, CRAM-MD5 and SCRAM do not
"""
from __future__ import annotations

from master.params import in_networks


def tls_required(session) -> bool:
    return session.params.imap_pop_tls_security_level == "encrypt" and not session.conn.tls


def plaintext_refused(session) -> bool:
    return session.params.disable_plaintext_auth and not session.conn.tls \
        and not in_networks(session.conn.peer_ip, session.params.disable_plaintext_auth_exceptions)


def can_starttls(session) -> bool:
    return not session.conn.tls and session.params.imap_pop_tls_security_level != "none" \
        and session.backend.tls_available()


def sends_password(session, mechanism: str) -> bool:
    return mechanism in session.backend.sasl_mechanisms() and session.backend.sasl_is_plaintext(mechanism)


def sasl_mechanisms(session, methods: list[str]) -> list[str]:
    if tls_required(session):
        return []
    supported = set(session.backend.sasl_mechanisms())
    refused = plaintext_refused(session)
    return [m for m in methods if m in supported and not (refused and sends_password(session, m))]

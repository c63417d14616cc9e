"""What the server announces: the CAPABILITY response, before and after login.

text(session) -> the capability list as one string, for the greeting's and the post-login
OK's response code and for the CAPABILITY command. Only what works is announced.
Before login: IMAP4rev1 and IMAP4rev2 (RFC 9051 behaviour after ENABLE IMAP4rev2), the
always-on extensions, STARTTLS while TLS can start, the AUTH= mechanisms the session may
use now, LOGINDISABLED when the LOGIN command may not be used now
(imap_pop_tls_security_level=encrypt before TLS, or disable_plaintext_auth for a client
outside its exceptions). After login: the extensions the command modules implement (their
CAPABILITIES) instead of the login ones.
"""
from __future__ import annotations

from workers.imapd import (
    acl,
    compress,
    condstore,
    fetch,
    folders,
    general,
    idle,
    login,
    messages,
    notify,
    quota,
    search,
    sort,
    thread,
)

ALWAYS = ("IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE")
# each command module lists what it implements in CAPABILITIES
AFTER_LOGIN = tuple(word for module in (general, folders, messages, fetch, search, sort, thread, idle, quota, condstore, compress,
                                        acl, notify)
                    for word in getattr(module, "CAPABILITIES", ()))


def text(session) -> str:
    words = list(ALWAYS)
    if session.user is None:
        if login.can_starttls(session):
            words.append("STARTTLS")
        words += [f"AUTH={m}" for m in login.sasl_mechanisms(session)]
        if not login.login_allowed(session):
            words.append("LOGINDISABLED")
    else:
        words += AFTER_LOGIN
    return " ".join(words)


async def capability(session, command) -> None:
    if command.args:
        raise login.Bad("CAPABILITY takes no arguments")
    await session.untagged("CAPABILITY " + text(session))
    await session.ok("Capability completed")

"""SMTP replies by name: every code the server sends, with its enhanced status code.

Each constant is a Reply(code, text); str()/bytes() give the wire line without CRLF.
Replies that carry a detail (a TXT reason, a limit) are built with Reply.with_text().
Multi-line replies (EHLO) are built by multiline(code, lines).
Codes follow RFC 5321 and the enhanced status codes of RFC 3463 / RFC 2034; the texts
follow what Postfix administrators know ("Relay access denied", "User unknown").
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    def with_text(self, text: str) -> "Reply":
        """The same code and enhanced status with another explanation."""
        enhanced = self.text.split(" ", 1)[0]
        return Reply(self.code, f"{enhanced} {text}")

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    @property
    def closes(self) -> bool:
        """421 always ends the session (RFC 5321 4.2.3)."""
        return self.code == 421

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8", "replace")


def multiline(code: int, lines: list[str]) -> bytes:
    """`250-a`, `250-b`, `250 c` joined with CRLF (no final CRLF)."""
    parts = [f"{code}-{line}" for line in lines[:-1]] + [f"{code} {lines[-1]}"]
    return "\r\n".join(parts).encode("utf-8", "replace")


# 2xx / 3xx
OK = Reply(250, "2.0.0 Ok")
SENDER_OK = Reply(250, "2.1.0 Ok")
RCPT_OK = Reply(250, "2.1.5 Ok")
RESET_OK = Reply(250, "2.0.0 Ok")
VRFY_CANNOT = Reply(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
QUEUED = Reply(250, "2.0.0 Ok: queued")          # .with_text(f"Ok: queued as {queue_id}")
BYE = Reply(221, "2.0.0 Bye")
HELP = Reply(214, "2.0.0 See RFC 5321")
TLS_READY = Reply(220, "2.0.0 Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0 Authentication successful")
START_DATA = Reply(354, "End data with <CR><LF>.<CR><LF>")

# 4xx: temporary
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0 Too many connections, try again later")
TIMEOUT = Reply(421, "4.4.2 Error: timeout exceeded")
SHUTTING_DOWN = Reply(421, "4.3.2 Service shutting down")
TOO_MANY_ERRORS = Reply(421, "4.7.0 Error: too many errors")
TEMP_LOOKUP_FAILURE = Reply(451, "4.3.0 Temporary lookup failure")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1 Insufficient system storage")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3 Error: too many recipients")
OVER_QUOTA_TEMP = Reply(452, "4.2.2 Mailbox full")
TLS_UNAVAILABLE = Reply(454, "4.7.0 TLS not available due to local problem")
AUTH_UNAVAILABLE = Reply(454, "4.7.0 Temporary authentication failure, try again later")

# 5xx: permanent
LINE_TOO_LONG = Reply(500, "5.5.2 Error: line too long")
UNRECOGNIZED = Reply(500, "5.5.2 Error: command not recognized")
SYNTAX = Reply(501, "5.5.4 Syntax error in parameters or arguments")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7 Bad sender address syntax")
BAD_RCPT_SYNTAX = Reply(501, "5.1.3 Bad recipient address syntax")
AUTH_CANCELLED = Reply(501, "5.7.0 Authentication cancelled")
AUTH_BAD_ENCODING = Reply(501, "5.5.2 Cannot decode response")
NOT_IMPLEMENTED = Reply(502, "5.5.1 Error: command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1 Error: bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1 Error: send HELO/EHLO first")
NEED_MAIL = Reply(503, "5.5.1 Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1 Error: need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1 Error: nested MAIL command")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1 Error: already authenticated")
AUTH_NOT_ENABLED = Reply(503, "5.5.1 Error: authentication not enabled")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1 Error: TLS already active")
UNKNOWN_MECHANISM = Reply(504, "5.5.4 Unrecognized authentication type")
MUST_STARTTLS = Reply(530, "5.7.0 Must issue a STARTTLS command first")
AUTH_FAILED = Reply(535, "5.7.8 Error: authentication failed")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11 Encryption required for requested authentication mechanism")
USER_UNKNOWN = Reply(550, "5.1.1 Recipient address rejected: User unknown in local recipient table")
MAILBOX_DISABLED = Reply(550, "5.2.1 Recipient address rejected: Mailbox disabled")
MESSAGE_TOO_BIG = Reply(552, "5.3.4 Message size exceeds fixed limit")
OVER_QUOTA_PERM = Reply(552, "5.2.2 Mailbox full: message exceeds the quota")
BAD_PARAMETER = Reply(555, "5.5.4 Unsupported option")
RELAY_DENIED = Reply(554, "5.7.1 Relay access denied")
HOST_REFUSED = Reply(554, "5.7.1 Service unavailable; client host refused")
RBL_LISTED = Reply(554, "5.7.1 Service unavailable; client host blocked")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1 Error: no valid recipients")
PREGREET = Reply(554, "5.5.1 Protocol error")                  # talked before the greeting

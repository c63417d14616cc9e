"""Delivery status notifications: RFC 3464 multipart/report messages for the sender.

build_dsn(report, failures, original) -> bytes: a complete message (CRLF line ends) from
MAILER-DAEMON@<reporting host> to the envelope sender: a human-readable part, the
message/delivery-status part (per-message fields, then one block per recipient), and the
returned message — whole (message/rfc822) when it is small and RET=HDRS was not asked,
otherwise its header only (text/rfc822-headers, RFC 6522).
`Failure.action` is "failed" for a bounce, "delayed" for a delay warning and "delivered"
for a success report (NOTIFY=SUCCESS; those return the header only, as Postfix does).
The caller queues the result as new mail from the null sender and never builds one for a
message whose own sender is null (no bounce loops); this module does not check that.
"""
from __future__ import annotations

import email.utils
import os
import time
from dataclasses import dataclass

# Postfix's bounce_size_limit: return the whole message only up to this size.
RETURN_WHOLE_LIMIT = 50_000


@dataclass(frozen=True)
class Failure:
    recipient: str                 # the envelope recipient that failed
    status: str                    # enhanced status code, e.g. "5.1.1"
    diagnostic: str                # a human-readable reason, e.g. "user unknown"
    original_recipient: str = ""   # ORCPT as given by the client ("rfc822;bob@x"), if any
    action: str = "failed"


@dataclass(frozen=True)
class Report:
    reporting_host: str            # myhostname
    sender: str                    # the original envelope sender: the DSN goes to them
    queue_id: str
    arrival: float                 # epoch seconds the message entered the queue
    envid: str = ""                # ENVID of MAIL FROM, if any
    headers_only: bool = False     # RET=HDRS
    retry_until: float = 0.0       # for delay warnings: when the queue gives up
    to: str = ""                   # the DSN's recipient when not the sender (postmaster's copy)


def _header_block(raw: bytes) -> bytes:
    """The header section of a message (up to and including the empty line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end >= 0:
            return raw[: end + len(sep)]
    return raw


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _kind(failures: list[Failure]) -> str:
    """"delivered" or "delayed" when every entry is that; otherwise "failed"."""
    actions = {f.action for f in failures}
    return actions.pop() if len(actions) == 1 and actions <= {"delivered", "delayed"} else "failed"


def _human_text(report: Report, failures: list[Failure]) -> str:
    kind = _kind(failures)
    lines = [f"This is the mail system at host {report.reporting_host}.", ""]
    if kind == "delivered":
        lines += ["Your message was successfully delivered to the destination(s) listed below.",
                  "This is only a report, as you asked for one (NOTIFY=SUCCESS)."]
    elif kind == "delayed":
        lines += ["Your message could not be delivered yet. The mail system will keep trying;",
                  "you do not need to send it again. The recipients concerned:"]
    else:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients. It's attached below.", ""]
    lines.append("")
    for f in failures:
        lines.append(f"<{f.recipient}>: {f.diagnostic}")
    return "\r\n".join(lines) + "\r\n"


def _status_fields(report: Report, failures: list[Failure], now: float) -> str:
    out = [f"Reporting-MTA: dns; {report.reporting_host}",
           f"X-Mailhouse-Queue-ID: {report.queue_id}"]
    if report.envid:
        out.append(f"Original-Envelope-Id: {report.envid}")
    out.append(f"Arrival-Date: {email.utils.formatdate(report.arrival, localtime=True)}")
    for f in failures:
        out.append("")
        if f.original_recipient:
            out.append(f"Original-Recipient: {f.original_recipient}")
        out += [f"Final-Recipient: rfc822; {f.recipient}",
                f"Action: {f.action}",
                f"Status: {f.status}",
                f"Diagnostic-Code: X-mailhouse; {f.diagnostic}",
                f"Last-Attempt-Date: {email.utils.formatdate(now, localtime=True)}"]
        if f.action == "delayed" and report.retry_until:
            out.append(f"Will-Retry-Until: {email.utils.formatdate(report.retry_until, localtime=True)}")
    return "\r\n".join(out) + "\r\n"


def build_dsn(report: Report, failures: list[Failure], original: bytes,
              now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    boundary = f"{report.queue_id}.{os.urandom(6).hex()}/{report.reporting_host}"
    kind = _kind(failures)
    subject = {"delivered": "Successful Mail Delivery Report", "delayed": "Delayed Mail (still being retried)",
               "failed": "Undelivered Mail Returned to Sender"}[kind]
    whole = not report.headers_only and kind != "delivered" and len(original) <= RETURN_WHOLE_LIMIT
    if whole:
        returned_type, returned = "message/rfc822", _crlf(original)
    else:
        returned_type, returned = "text/rfc822-headers", _crlf(_header_block(original))
    if not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    head = "\r\n".join([
        f"From: MAILER-DAEMON@{report.reporting_host} (Mail Delivery System)",
        f"To: {report.to or report.sender}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <{report.queue_id}.{int(now)}.dsn@{report.reporting_host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
    ])
    parts = [
        ("text/plain; charset=us-ascii", "Content-Description: Notification",
         _human_text(report, failures).encode("utf-8", "replace")),
        ("message/delivery-status", "Content-Description: Delivery report",
         _status_fields(report, failures, now).encode("utf-8", "replace")),
        (returned_type, f"Content-Description: {'Delivered' if kind == 'delivered' else 'Undelivered'} Message"
         + ("" if whole else " Headers"), returned),
    ]
    body = [head.encode() + b"\r\n"]
    for ctype, description, payload in parts:
        body.append(f"--{boundary}\r\n{description}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        body.append(payload)
        body.append(b"\r\n")
    body.append(f"--{boundary}--\r\n".encode())
    return b"".join(body)

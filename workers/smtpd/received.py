"""The Received: header smtpd puts on top of every message it accepts.

received_header(...) -> bytes (folded, CRLF-terminated). Shape (RFC 5321 4.4, with the
protocol names of RFC 3848 and the `tls` clause of RFC 8314 7):

    Received: from client.example ([192.0.2.1])
            (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)
            (authenticated sender: bob)
            by mail.example.org (mailhouse) with ESMTPSA
            for <alice@example.org>
            tls TLS_AES_256_GCM_SHA384; Wed, 25 Nov 2026 09:12:00 +0000

`for` names the recipient only when there is exactly one (more would disclose Bcc
recipients to each other). The HELO name is the client's claim, so it is reduced to
characters that cannot break the header.
"""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from email.utils import format_datetime


def protocol_name(esmtp: bool, tls: bool, authenticated: bool) -> str:
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def _safe(text: str, limit: int = 100) -> str:
    return re.sub(r"[^A-Za-z0-9.@\-\[\]:_]", "?", text)[:limit] or "unknown"


def received_header(*, helo: str, client_ip: str, hostname: str, esmtp: bool,
                    tls_version: str | None, tls_cipher: str | None, user: str | None,
                    recipients: list[str], now: float | None = None) -> bytes:
    literal = f"IPv6:{client_ip}" if ":" in client_ip else client_ip       # RFC 5321 4.1.3
    lines = [f"Received: from {_safe(helo)} ([{literal}])"]
    if tls_version:
        lines.append(f"\t(using {tls_version} with cipher {tls_cipher})")
    if user:
        lines.append(f"\t(authenticated sender: {_safe(user)})")
    lines.append(f"\tby {hostname} (mailhouse) with {protocol_name(esmtp, bool(tls_version), bool(user))}")
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>")
    date = format_datetime(datetime.fromtimestamp(time.time() if now is None else now, timezone.utc))
    if tls_cipher:
        lines.append(f"\ttls {tls_cipher}; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")

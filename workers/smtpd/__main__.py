"""`python -m workers.smtpd`: the smtpd worker process started by the master.

Each connection runs one Session; refuse(conn) answers a client over the service's
connection limit or a per-client limit (conn.refusal) with `421 4.7.0` and closes; the
master logs refusals, once per burst. The Backend (queue, user directory, DNS
resolver) is built on first use and shared by every session of the process.
"""
from __future__ import annotations

from workers._limits import refusal_text
from workers._server import Connection, run_sessions
from workers.smtpd import replies as R
from workers.smtpd.backend import Backend
from workers.smtpd.session import Session


async def refuse(conn: Connection) -> None:
    text = refusal_text(conn.refusal, conn.peer_ip, conn.params)
    await conn.send_line(bytes(R.TOO_MANY_CONNECTIONS.with_text(text)))


def main() -> None:
    run_sessions(Session, Backend, refuse, log_name="smtp")


if __name__ == "__main__":
    main()

"""`python -m workers.pop3d`: the pop3d worker process started by the master.

Each connection runs one Session; refuse(conn) answers a client over the service's connection
limit or a per-client limit (conn.refusal) with `-ERR [SYS/TEMP]` (RFC 3206) and closes. The
Backend (user database, mail store, SASL) is built on first use and shared by every session
of the process.
Diagnostics: the master logs refusals in server.log, once per burst.
"""
from __future__ import annotations

from workers._limits import refusal_text
from workers._server import Connection, run_sessions
from workers.pop3d.backend import Backend
from workers.pop3d.session import Session


async def refuse(conn: Connection) -> None:
    text = refusal_text(conn.refusal, conn.peer_ip, conn.params)
    await conn.send_line(f"-ERR [SYS/TEMP] {text}".encode())


def main() -> None:
    run_sessions(Session, Backend, refuse, log_name="pop")


if __name__ == "__main__":
    main()

"""`python -m workers.pop3d`: the pop3d worker process started by the master.

Each connection runs one Session; refuse(conn) answers a client over the service's connection
limit with `-ERR [SYS/TEMP]` (RFC 3206) and closes. The Backend (user database, mail store,
SASL) is built on first use and shared by every session of the process.
Diagnostics: refusals are logged in pop.log.
"""
from __future__ import annotations

from workers._server import Connection, run_sessions
from workers.pop3d.backend import Backend
from workers.pop3d.session import Session


async def refuse(conn: Connection) -> None:
    conn.log.info(f"refused: ip={conn.peer_ip}: too many connections")
    await conn.send_line(b"-ERR [SYS/TEMP] Too many connections, try again later")


def main() -> None:
    run_sessions(Session, Backend, refuse, log_name="pop")


if __name__ == "__main__":
    main()

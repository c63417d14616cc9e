"""`python -m workers.smtpd`: the smtpd worker process started by the master.

Each connection runs one Session; refuse(conn) answers a client over the service's
connection limit with `421 4.7.0` and closes. The Backend (queue, user directory, DNS
resolver) is built on first use and shared by every session of the process.
"""
from __future__ import annotations

from workers._server import Connection, run_sessions
from workers.smtpd import replies as R
from workers.smtpd.backend import Backend
from workers.smtpd.session import Session


async def refuse(conn: Connection) -> None:
    conn.log.info(f"reject: connect from [{conn.peer_ip}]: too many connections")
    await conn.send_line(bytes(R.TOO_MANY_CONNECTIONS))


def main() -> None:
    run_sessions(Session, Backend, refuse, log_name="smtp")


if __name__ == "__main__":
    main()

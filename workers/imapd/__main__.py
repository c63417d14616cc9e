"""`python -m workers.imapd`: the imapd worker process started by the master.

Each connection runs one Session; refuse(conn) answers a client over the service's
connection limit or a per-client limit (conn.refusal) with `* BYE [UNAVAILABLE]` and closes;
the master logs refusals, once per burst. The Backend (user database, mail store, SASL) is
built on first use and shared by every session of the process.
"""
from __future__ import annotations

from workers._limits import refusal_text
from workers._server import Connection, run_sessions
from workers.imapd.backend import Backend
from workers.imapd.session import Session


async def refuse(conn: Connection) -> None:
    text = refusal_text(conn.refusal, conn.peer_ip, conn.params)
    await conn.send_line(f"* BYE [UNAVAILABLE] {text}".encode())


def main() -> None:
    run_sessions(Session, Backend, refuse, log_name="imap")


if __name__ == "__main__":
    main()

"""A test-only worker that logs what its client asks, to drive the master's logwriter.

Client lines: `<E|M|H> <server|smtp|imap|pop> <text>` logs text at that level in that log;
`bulk <count> <log> <tag>` logs `<tag> <n>` count times (level M); `raw <text>` prints text
on stderr outside the log format (as a traceback would). Each command is answered `ok`
once its lines are on the way to the master; `quit` ends the session.
"""
from __future__ import annotations

import os
import sys

from workers._log import Log
from workers._server import Connection, run_worker

LEVELS = {"E": "error", "M": "info", "H": "debug"}


async def handle(conn: Connection) -> None:
    while line := (await conn.read_line(4096, 30)).decode().strip():
        word, _, rest = line.partition(" ")
        if word in LEVELS:
            logname, _, text = rest.partition(" ")
            getattr(Log(logname), LEVELS[word])(text)
        elif word == "bulk":
            count, logname, tag = rest.split(" ", 2)
            log = Log(logname)
            for n in range(int(count)):
                log.info(f"{tag} {n:05d}")
        elif word == "raw":
            os.write(sys.stderr.fileno(), rest.encode() + b"\n")
        elif word == "quit":
            return
        await conn.send_line(b"ok")


async def refuse(conn: Connection) -> None:
    await conn.send_line(b"busy")


if __name__ == "__main__":
    run_worker(handle, refuse, log_name="server")

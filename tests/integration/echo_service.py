"""A line-echo service that exists only for the master's tests (`tests.integration.echo_service`).

Greeting `+OK echo <pid> <smtpd_banner>` (the banner shows which settings the worker got).
Commands, one per line: `PID` -> `+OK <pid>`, `PARAM <name>` -> `+OK <value>`,
`USER <name>` -> reported to the master (mailctl connections), `NEXT` -> `+OK waiting`, then
the next line is read with read_command: echoed, or `-ERR [SYS/TEMP] shutting down` and close
when the master stops meanwhile, `STARTTLS` -> `+OK begin TLS`
and the upgrade, `TLS` -> `+OK <version>` or `+OK none`, `QUIT` -> `+OK bye` and close;
`LOGIN <ok|bad> [user]` -> conn.report_login, answered `+OK <seconds waited>` or
`-ERR <limit>`; `TIMEOUT` -> `+OK <smtpd_timeout of this session>`; `HANG` blocks the whole
worker (time.sleep on its event loop, no answer) for HANG_SECONDS, `HANG hard` the same
with SIGABRT ignored (the master's liveness checks);
any other line is echoed as `+OK <line>`. Refused: `-ERR [SYS/TEMP] refused: <limit>`.
"""
from __future__ import annotations

import os
import signal
import time

from workers._limits import LineTooLong
from workers._server import Connection, run_worker

LINE_LIMIT = 1000
IDLE_TIMEOUT = 60.0
HANG_SECONDS = 120.0


async def handle(conn: Connection) -> None:
    await conn.send_line(f"+OK echo {os.getpid()} {conn.params.smtpd_banner}".encode())
    conn.log.info(f"connect from {conn.peer_ip}")
    while True:
        try:
            line = await conn.read_line(LINE_LIMIT, IDLE_TIMEOUT)
        except LineTooLong:
            await conn.send_line(b"-ERR line too long")
            continue
        if not line:
            return
        words = line.decode("utf-8", "replace").strip().split(" ", 1)
        verb, arg = words[0].upper(), (words[1] if len(words) > 1 else "")
        if verb == "QUIT":
            await conn.send_line(b"+OK bye")
            return
        if verb == "PID":
            await conn.send_line(f"+OK {os.getpid()}".encode())
        elif verb == "PARAM":
            await conn.send_line(f"+OK {conn.params.get(arg)}".encode())
        elif verb == "STARTTLS":
            await conn.start_tls(b"+OK begin TLS")
        elif verb == "TLS":
            await conn.send_line(f"+OK {conn.tls_version() or 'none'}".encode())
        elif verb == "NEXT":
            await conn.send_line(b"+OK waiting")
            line = await conn.read_command(LINE_LIMIT, IDLE_TIMEOUT)
            if line is None:
                await conn.send_line(b"-ERR [SYS/TEMP] shutting down")
                return
            await conn.send_line(b"+OK " + line.rstrip(b"\r\n"))
        elif verb == "USER":
            conn.set_user(arg)
            await conn.send_line(b"+OK")
        elif verb == "LOGIN":
            outcome, _, user = arg.partition(" ")
            started = time.monotonic()
            refusal = await conn.report_login(outcome == "ok", user or None)
            waited = time.monotonic() - started
            await conn.send_line(f"-ERR {refusal}".encode() if refusal else f"+OK {waited:.2f}".encode())
        elif verb == "TIMEOUT":
            await conn.send_line(f"+OK {conn.params.smtpd_timeout:g}".encode())
        elif verb == "HANG":
            if arg == "hard":
                signal.signal(signal.SIGABRT, signal.SIG_IGN)
            time.sleep(HANG_SECONDS)
        else:
            await conn.send_line(b"+OK " + line.rstrip(b"\r\n"))


async def refuse(conn: Connection) -> None:
    await conn.send_line(f"-ERR [SYS/TEMP] refused: {conn.refusal}".encode())


if __name__ == "__main__":
    run_worker(handle, refuse, log_name="pop")

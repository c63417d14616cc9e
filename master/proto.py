"""The master↔worker contract: every name and format both ends must spell alike.

master/spawn.py starts a worker, workers/_server.py builds it up; neither spells a name of
the other on its own: both take it from here. This module is a leaf (the standard library
and master.params only), so a worker may import it without pulling in the master.

Environment of a worker: ENV_PARAMS (JSON of the service's raw settings, -o overrides
included), ENV_BASE_DIR (relative paths are taken from it), ENV_CONTROL_FD (the worker's end
of the control socketpair), ENV_SERVICE and ENV_COMMAND (master.cf service name and command,
for the process title), ENV_LISTEN_FD (a unix service that serves a socket: the listening
socket the master bound, which the worker accepts on itself), ENV_AUTH_SOCKET and
ENV_SMTP_SOCKET (every worker, when master.cf has an auth or smtp service: the path of its
socket; service_socket("auth" | "smtp") reads it).

Control channel: a SOCK_SEQPACKET socketpair, one JSON object per datagram of at most
CONTROL_MSG_MAX bytes. encode(message) -> bytes; decode(data) -> dict, where anything but a
JSON object becomes {"op": OP_INVALID, "data": its start}, so neither end trusts the other's
bytes. The messages are built by the functions named after them:
  master -> worker  handover(conn, refuse, stress): the header of a connection whose socket
                    rides along (SCM_RIGHTS); refuse is "" or a refusal name below. It has
                    no "op": a message with "conn" and a socket is a connection.
                    drain(stop), wakeup(), login_answer(conn, delay, refuse)
  worker -> master  ready(protocol), closed(conn), session(conn, user, protocol),
                    login(conn, ok, user), alive()
Liveness: a worker sends alive() every heartbeat_interval(params) seconds from its event
loop; the master replaces a worker it has not heard from for worker_hang_timeout seconds.
Refusal names (master/anvil.py decides, workers/_limits.refusal_text words them): MAXPROC,
COUNT_LIMIT, RATE_LIMIT refuse a connection; AUTH_RATE_LIMIT, USERIP_LIMIT a login.

Log lines: a worker writes `<L> <log> <text>` lines on stderr, L in LEVEL_CODES (E error,
M medium, H high), log in LOG_NAMES. format_log_line(code, log, text) -> bytes;
parse_log_line(line) -> (code, log, text), or None for anything else (a traceback).

Run directory, shared with the workers: LOWSPACE_FLAG exists while a data directory is
below disk_min_free (master/diskwatch.py sets it; is_low(params) asks), POP3_LOCKS is the
folder of pop3d's maildrop locks.
Diagnostics: none here; each end logs what it does with a bad message.
"""
from __future__ import annotations

import json
import os
import re

from master.params import Params

# ---------------------------------------------------------------- a worker's environment
ENV_PARAMS = "MAILHOUSE_PARAMS"
ENV_BASE_DIR = "MAILHOUSE_BASE_DIR"
ENV_CONTROL_FD = "MAILHOUSE_CONTROL_FD"
ENV_SERVICE = "MAILHOUSE_SERVICE"          # the master.cf service name, e.g. 127.0.0.1:2525
ENV_COMMAND = "MAILHOUSE_COMMAND"          # the master.cf command, e.g. smtpd
ENV_LISTEN_FD = "MAILHOUSE_LISTEN_FD"      # a unix service's listening socket
ENV_AUTH_SOCKET = "MAILHOUSE_AUTH_SOCKET"  # the auth service's socket; absent: no auth service
ENV_SMTP_SOCKET = "MAILHOUSE_SMTP_SOCKET"  # the smtp (outgoing) service's socket; absent: none
SOCKET_ENV = {"auth": ENV_AUTH_SOCKET, "smtp": ENV_SMTP_SOCKET}


def service_socket(command: str) -> str:
    """The socket path of the auth or smtp service as the master handed it over, "" when
    master.cf has no such service."""
    return os.environ.get(SOCKET_ENV[command], "")


# ---------------------------------------------------------------- the control channel
CONTROL_MSG_MAX = 4096
OP_DRAIN = "drain"
OP_WAKEUP = "wakeup"
OP_READY = "ready"
OP_CLOSED = "closed"
OP_SESSION = "session"
OP_LOGIN = "login"                         # both ways: the worker's report, the master's answer
OP_ALIVE = "alive"
OP_INVALID = "invalid"                     # what decode() makes of bytes that are no message
INVALID_DATA_MAX = 200                     # characters of such bytes kept for the log
HEARTBEAT_MAX = 5.0                        # seconds between two alive() at most

MAXPROC = "maxproc"
COUNT_LIMIT = "smtpd_client_connection_count_limit"
RATE_LIMIT = "smtpd_client_connection_rate_limit"
AUTH_RATE_LIMIT = "smtpd_client_auth_rate_limit"
USERIP_LIMIT = "mail_max_userip_connections"


def encode(message: dict) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> dict:
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        return {"op": OP_INVALID, "data": data[:INVALID_DATA_MAX].decode("utf-8", "replace")}
    return message


def handover(conn: int, refuse: str, stress: bool) -> dict:
    return {"conn": conn, "refuse": refuse, "stress": stress}


def drain(stop: bool = False) -> dict:
    """Take nothing more, finish the sessions, exit; stop: the master stops, tell the sessions."""
    return {"op": OP_DRAIN, "stop": True} if stop else {"op": OP_DRAIN}


def wakeup() -> dict:
    return {"op": OP_WAKEUP}


def login_answer(conn: int, delay: float, refuse: str) -> dict:
    return {"op": OP_LOGIN, "conn": conn, "delay": delay, "refuse": refuse}


def ready(protocol: str) -> dict:
    return {"op": OP_READY, "protocol": protocol}


def closed(conn: int) -> dict:
    return {"op": OP_CLOSED, "conn": conn}


def session(conn: int, user: str, protocol: str) -> dict:
    return {"op": OP_SESSION, "conn": conn, "user": user, "protocol": protocol}


def login(conn: int, ok: bool, user: str | None) -> dict:
    return {"op": OP_LOGIN, "conn": conn, "ok": ok, "user": user}


def alive() -> dict:
    return {"op": OP_ALIVE}


def heartbeat_interval(params: Params) -> float:
    """Seconds between a worker's alive() reports: a quarter of worker_hang_timeout, at most
    HEARTBEAT_MAX, so that a few lost turns of a busy loop never look like a hang."""
    timeout = params.worker_hang_timeout
    return min(HEARTBEAT_MAX, timeout / 4) if timeout else HEARTBEAT_MAX


# ---------------------------------------------------------------- log lines
LOG_NAMES = ("server", "smtp", "imap", "pop")
LEVEL_CODES = ("E", "M", "H")
LOG_LINE_BYTES = 3900           # one write below PIPE_BUF: lines of many sessions never mix
_LOG_LINE = re.compile(r"^([{}]) ({}) (.*)$".format("".join(LEVEL_CODES), "|".join(LOG_NAMES)).encode(), re.S)


def format_log_line(code: str, log: str, text: str) -> bytes:
    line = f"{code} {log} {text}".replace("\n", " ").encode("utf-8", "replace")
    return line[:LOG_LINE_BYTES] + b"\n"


def parse_log_line(line: bytes) -> tuple[str, str, str] | None:
    m = _LOG_LINE.match(line.rstrip(b"\r\n"))
    if m is None:
        return None
    return m.group(1).decode(), m.group(2).decode(), m.group(3).decode("utf-8", "replace")


# ---------------------------------------------------------------- the run directory
LOWSPACE_FLAG = "lowspace"
POP3_LOCKS = "pop3"             # pop3d's maildrop locks and size caches (mail_owner's)


def lowspace_path(params: Params) -> str:
    return os.path.join(params.run_directory, LOWSPACE_FLAG)


def is_low(params: Params) -> bool:
    """True while the master says a data directory is below disk_min_free."""
    return os.path.exists(lowspace_path(params))

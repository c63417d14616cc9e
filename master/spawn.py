"""Worker birth and death: the master's table of services and their processes.

Service(spec, params) is one master.cf line at run time: its listener, its workers
(pid -> Worker), connection counters and the crash throttle. Worker is one child process:
its end of the control socketpair, its stderr pipe, the sessions it holds, its state.

spawn(svc) forks and execs `python -m <module> <args>` (subprocess with pass_fds, so the
child is a fresh interpreter: no LMDB handle, no master state) with the environment of
master/proto.py (control socket, the service's settings, the auth service's socket path
when master.cf has one; a unix service that serves a socket also gets its listening socket,
Service.unix_listener). When the master runs as root and the service's unpriv is y or -,
the child runs as mail_owner. Each worker draws its own
max_use (draw_max_use: between max_use less a fifth and max_use), so workers started
together do not all retire together. hand_over(worker, sock, conn_id, refusal, stress)
passes an accepted socket (SCM_RIGHTS) with proto.handover's header; send_op(worker,
message) sends a proto message; read_messages / read_log_lines collect what the worker
said. describe_exit(status) reads a waitpid status.

Liveness: every message read from a worker is a sign of life (it sends proto.alive()
regularly from its event loop). check_alive(worker, now) sends SIGABRT to one silent for
worker_hang_timeout (the worker's faulthandler prints its stack into server.log), then
SIGKILL if it still lives ABORT_GRACE seconds later; an aborted worker takes no new
connections and, once reaped, is replaced like any crashed worker.

Throttle: a worker that dies abnormally before it has proven itself (served a client, or
stayed up STARTUP_GRACE seconds after reporting ready) throttles its own service only
(1 s, doubling up to 60 s, lifted once a worker of the service proves itself; Dovecot's
rule), so a broken imapd does not take SMTP down and a crash loop does not spin the CPU.
Diagnostics: OSError from spawn()/hand_over() is left to the loop, which logs it.
"""
from __future__ import annotations

import array
import json
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from master import proto
from master.cf import ServiceSpec
from master.params import Params

STARTUP_GRACE = 5.0            # seconds a ready worker must live to count as working without a client
THROTTLE_FIRST = 1.0
THROTTLE_MAX = 60.0
LOG_LINE_MAX = 8192             # a worker's stderr line longer than this is cut into pieces
ABORT_GRACE = 5.0               # seconds a hung worker gets to die of SIGABRT before SIGKILL
MAX_USE_SPREAD = 5              # a worker's max_use is drawn down to max_use less 1/MAX_USE_SPREAD
_RANDOM = random.Random()
# The folder holding the master/ and workers/ packages: workers run the same code as the master.
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Worker:
    pid: int
    popen: subprocess.Popen
    control: socket.socket
    log_fd: int
    service: "Service"
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    protocol: str = ""                                   # as the worker reported it when ready
    draining: bool = False
    sessions: set[int] = field(default_factory=set)     # connection ids it holds
    handed: int = 0                                      # sessions handed over (not refusals): max_use
    max_use: int = 0                                     # its own limit (draw_max_use), 0 = none
    idle_since: float = field(default_factory=time.monotonic)
    last_heard: float = field(default_factory=time.monotonic)
    aborted: float = 0.0                                 # when it was sent SIGABRT as hung
    killed: bool = False                                 # and SIGKILL after ABORT_GRACE
    log_buffer: bytearray = field(default_factory=bytearray)

    def proven(self, now: float) -> bool:
        """Has it worked once: served a client, or stayed up a while after reporting ready?"""
        return self.handed > 0 or (self.ready and now - self.started >= STARTUP_GRACE)


@dataclass
class Service:
    spec: ServiceSpec
    params: Params
    listener: socket.socket | None = None       # an inet service's: the master accepts on it
    unix_listener: socket.socket | None = None  # a unix service's socket: its worker accepts
    workers: dict[int, Worker] = field(default_factory=dict)
    open: int = 0                 # client sessions open now (refused ones not counted)
    served: int = 0               # sessions handed to workers since start
    refused: int = 0              # connections refused since start (maxproc, per-client limits)
    stressed: bool = False        # in stress mode: new sessions get stress_timeout (loop._stressed)
    throttled_until: float = 0.0
    throttle_delay: float = 0.0
    next_wakeup: float = 0.0
    accept_paused_until: float = 0.0
    # connections over maxproc waiting briefly for a slot: (deadline, socket, client ip)
    waiting: deque[tuple[float, socket.socket, str]] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def client_limit(self) -> int:
        return self.params.worker_client_limit

    def active_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if not w.draining and not w.aborted]

    @property
    def ready(self) -> bool:
        return any(w.ready for w in self.active_workers())

    def throttled(self, now: float) -> bool:
        return now < self.throttled_until

    def throttle(self, now: float) -> float:
        """A worker failed before its first use: hold back the next one; returns the delay."""
        self.throttle_delay = min(THROTTLE_MAX, self.throttle_delay * 2 or THROTTLE_FIRST)
        self.throttled_until = now + self.throttle_delay
        return self.throttle_delay

    def unthrottle(self) -> None:
        """A worker proved itself, or the configuration changed."""
        self.throttle_delay = 0.0
        self.throttled_until = 0.0


def _privileges(svc: Service) -> dict:
    if os.geteuid() != 0 or not svc.spec.unpriv:
        return {}
    owner = pwd.getpwnam(svc.params.mail_owner)     # KeyError: no such user, logged by the caller
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def base_environment() -> dict[str, str]:
    """The environment every worker starts from: ours, with this code first on PYTHONPATH."""
    env = dict(os.environ)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if CODE_ROOT not in path:
        env["PYTHONPATH"] = os.pathsep.join([CODE_ROOT, *path])
    return env


def _environment(svc: Service, control_fd: int, sockets: dict[str, str]) -> dict[str, str]:
    env = base_environment()
    env.update({
        proto.ENV_PARAMS: json.dumps(svc.params.to_env()),
        proto.ENV_BASE_DIR: svc.params.base_dir,
        proto.ENV_CONTROL_FD: str(control_fd),
        proto.ENV_SERVICE: svc.spec.name,
        proto.ENV_COMMAND: svc.spec.command,
    })
    for command, path in sockets.items():
        env[proto.SOCKET_ENV[command]] = path
    if svc.unix_listener is not None:
        env[proto.ENV_LISTEN_FD] = str(svc.unix_listener.fileno())
    return env


def draw_max_use(max_use: int, rng: random.Random = _RANDOM) -> int:
    """A worker's own max_use: uniform in [max_use - max_use // MAX_USE_SPREAD, max_use]
    (exact below MAX_USE_SPREAD; 0 stays 0, never recycle)."""
    return rng.randint(max_use - max_use // MAX_USE_SPREAD, max_use)


def spawn(svc: Service, sockets: dict[str, str] | None = None) -> Worker:
    """sockets: the auth and smtp services' socket paths by command (those master.cf has)."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    log_read, log_write = os.pipe2(os.O_CLOEXEC)
    passed = [worker_end.fileno()]
    if svc.unix_listener is not None:
        passed.append(svc.unix_listener.fileno())
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", svc.spec.module, *svc.spec.args],
            stdin=subprocess.DEVNULL, stdout=log_write, stderr=log_write,
            pass_fds=passed, env=_environment(svc, worker_end.fileno(), sockets or {}),
            **_privileges(svc))
    except BaseException:
        master_end.close()
        os.close(log_read)
        raise
    finally:
        worker_end.close()
        os.close(log_write)
    master_end.setblocking(False)
    os.set_blocking(log_read, False)
    worker = Worker(pid=popen.pid, popen=popen, control=master_end, log_fd=log_read, service=svc,
                    max_use=draw_max_use(svc.params.max_use))
    svc.workers[worker.pid] = worker
    return worker


def hand_over(worker: Worker, sock: socket.socket, conn_id: int, refusal: str, stress: bool) -> None:
    header = proto.encode(proto.handover(conn_id, refusal, stress))
    fds = array.array("i", [sock.fileno()])
    worker.control.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])


def send_op(worker: Worker, message: dict) -> bool:
    """False when the worker cannot be told (it is dying; the reaper deals with it)."""
    try:
        worker.control.send(proto.encode(message))
    except OSError:
        return False
    return True


def read_messages(worker: Worker) -> list[dict] | None:
    """Every pending control message; None once the worker closed its end."""
    messages = []
    while True:
        try:
            data = worker.control.recv(proto.CONTROL_MSG_MAX)
        except BlockingIOError:
            return messages
        except OSError:
            return None
        if not data:
            return None if not messages else messages
        worker.last_heard = time.monotonic()
        messages.append(proto.decode(data))


def read_log_lines(worker: Worker, final: bool = False) -> tuple[list[bytes], bool]:
    """Complete lines from the worker's stderr, and whether the pipe reached its end."""
    eof = False
    while True:
        try:
            chunk = os.read(worker.log_fd, 65536)
        except BlockingIOError:
            break
        except OSError:
            eof = True
            break
        if not chunk:
            eof = True
            break
        worker.log_buffer += chunk
    lines = []
    buf = worker.log_buffer
    while (end := buf.find(b"\n")) >= 0 or len(buf) > LOG_LINE_MAX:
        cut = end + 1 if 0 <= end < LOG_LINE_MAX else LOG_LINE_MAX
        lines.append(bytes(buf[:cut]))
        del buf[:cut]
    if (eof or final) and buf:
        lines.append(bytes(buf))
        buf.clear()
    return lines, eof


def describe_exit(status: int) -> tuple[bool, str]:
    """(clean, text) for a waitpid status: clean means exit code 0."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return False, f"killed by signal {signum} ({name})"
    code = os.waitstatus_to_exitcode(status)
    return code == 0, f"exit status {code}"


def check_alive(worker: Worker, now: float) -> str | None:
    """Signal a worker silent past its service's worker_hang_timeout: SIGABRT, then SIGKILL
    after ABORT_GRACE. Returns what was done, for the log, or None."""
    timeout = worker.service.params.worker_hang_timeout
    if worker.aborted:
        if worker.killed or now - worker.aborted < ABORT_GRACE:
            return None
        worker.killed = True
        how = f"still running {ABORT_GRACE:g} s after SIGABRT: killed"
        signum = signal.SIGKILL
    elif timeout and now - worker.last_heard > timeout:
        worker.aborted = now
        how = f"hung (no sign of life for {now - worker.last_heard:.0f} s): aborted"
        signum = signal.SIGABRT
    else:
        return None
    try:
        os.kill(worker.pid, signum)
    except ProcessLookupError:
        return None                                 # dead already: the reaper tells
    return f"worker {worker.pid} of {worker.service.name} {how}"

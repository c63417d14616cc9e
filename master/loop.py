"""The arbiter: the master's one selectors loop over listeners, workers, signals and status.

read_config(master_cf, main_cf) -> Config validates both files and every service's -o
overrides (ConfigError `file:line: reason`). bind_services(config) binds every inet
service and the socket of every unix service that serves one (BindError names the
master.cf line); Arbiter(config, bound).run(on_started) serves until stopped and returns
the exit code. The master accepts on inet listeners; a unix service's socket is passed to
its worker (master/listeners.py), and every worker is told the auth service's socket.

Per turn: dispatch ready selector keys (accept, worker control messages, worker stderr,
signals, status requests), reap dead children, abort workers silent past
worker_hang_timeout (spawn.check_alive), then keep every service in shape: at least
one worker per inet service, `maxproc` processes per unix service, recycling (each
worker's own max_use draw of connections handed over, max_idle seconds without sessions:
drain, replace), wake-ups of unix services, and finally the disk guard and log rotation.
The messages on the control sockets are those of master/proto.py.

Connection limit: a service's open sessions are counted here, across all its workers;
connection maxproc+1 waits up to LIMIT_GRACE for a session to end, then is handed over
marked refuse (the worker's refuse() answers the protocol's polite refusal). A worker
takes at most worker_client_limit sessions; another is spawned when all are full. A worker
that nears its max_use (the last quarter) gets its successor started then, so that none of
the connections after its retirement waits for a new process to start; a worker idle for
SPARE_IDLE seconds (at most max_idle) while another has room retires, so such a spare
does not stay when the load stops.
Per-client limits (master/anvil.py): a client over a connection rate or count limit is
handed over refused at once; {"op": "login"} reports get the auth penalty and any refusal.
Refusals never count toward max_use and are logged per burst. Stress mode (Postfix's):
while a service is 3/4 full, new sessions are handed over with "stress" (shorter timeouts).
Signals: HUP reloads (a bad file is logged `file:line: reason` and the running
configuration kept), TERM/INT stop: listeners closed, workers drained, killed after
graceful_timeout; a second TERM/INT kills at once. SIGCHLD only wakes the loop.
Diagnostics: every spawn failure, crash, throttle, refusal and reload goes to server.log
with the tag master[pid]; a bug in the loop itself is logged with its traceback and
starts a graceful stop.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass, field

from master import listeners, proto, sdnotify, spawn
from master.anvil import Anvil, RefusalLog
from master.cf import SOCKET_COMMANDS, ServiceSpec, parse_master_cf, socket_service
from master.diskwatch import DiskGuard
from master.logwriter import LogWriter
from master.params import ConfigError, Params, load_main_cf
from master.proto import COUNT_LIMIT, MAXPROC, RATE_LIMIT
from master.sig import SignalPipe
from master.spawn import Service, Worker
from master.status import StatusServer, socket_path

ACCEPT_BATCH = 64           # connections accepted per listener per turn
LIMIT_GRACE = 1.0           # seconds a connection over maxproc waits for a slot before its refusal
WAITING_MAX = 32            # connections per service that may wait so; more are refused at once
TICK = 1.0                  # longest sleep of the loop
KILL_WAIT = 5.0             # after SIGKILL at the end of a stop, how long to wait for exits
SUCCESSOR_AHEAD = 4         # a worker's successor starts at the last 1/4 of its max_use
SPARE_IDLE = 10.0           # seconds an idle worker stays while another worker has room (at most max_idle)


class BindError(Exception):
    """An inet service cannot listen; str() reads `file:line: cannot listen on ...`."""


@dataclass
class Config:
    master_cf: str
    main_cf: str
    params: Params
    services: list[tuple[ServiceSpec, Params]]

    def service_sockets(self) -> dict[str, str]:
        """The socket paths of the auth and smtp services master.cf has, by command."""
        specs = [spec for spec, _ in self.services]
        return {command: listeners.unix_path(spec, self.params)
                for command in SOCKET_COMMANDS if (spec := socket_service(specs, command))}


def read_config(master_cf: str, main_cf: str) -> Config:
    params = load_main_cf(main_cf)
    specs = parse_master_cf(master_cf)
    services = [(spec, params.override(spec.overrides, where=spec.where)) for spec in specs]
    return Config(master_cf, main_cf, params, services)


@dataclass
class Conn:
    """One client connection handed to a worker."""
    service: Service
    pid: int
    ip: str
    refused: bool
    since: float = field(default_factory=time.time)
    user: str | None = None
    protocol: str = ""


def _bind(spec: ServiceSpec, params: Params) -> socket.socket:
    try:
        return listeners.bind_unix(spec, params) if spec.listens_on_socket else listeners.bind(spec)
    except OSError as e:
        raise BindError(f"{spec.where}: cannot listen on {spec.name}: {e.strerror or e}") from None


def bind_services(config: Config) -> dict[str, socket.socket]:
    """Bind every inet service and service socket before anything else: a bad address fails the start."""
    bound: dict[str, socket.socket] = {}
    try:
        for spec, _params in config.services:
            if spec.kind == "inet" or spec.listens_on_socket:
                bound[spec.key] = _bind(spec, config.params)
    except BindError:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def _service(spec: ServiceSpec, params: Params, sock: socket.socket | None) -> Service:
    if spec.listens_on_socket:
        return Service(spec, params, unix_listener=sock)
    return Service(spec, params, listener=sock)


class Arbiter:
    def __init__(self, config: Config, bound: dict[str, socket.socket]):
        self.config = config
        self.params = config.params
        self.pid = os.getpid()
        self.logwriter = LogWriter(self.params)
        self.disk = DiskGuard(self.params, lambda level, text: self.log(level, text))
        self.selector = selectors.DefaultSelector()
        self.signals = SignalPipe()
        self.services = {spec.key: _service(spec, params, bound.get(spec.key)) for spec, params in config.services}
        self.workers: dict[int, Worker] = {}          # every live child, of current and removed services
        self.conns: dict[int, Conn] = {}
        self.next_conn_id = 1
        self.anvil = Anvil(self.log)
        self.refusals = RefusalLog(self.log)
        self.started = time.time()
        self.stopping = False
        self.stop_deadline = 0.0
        self.status: StatusServer | None = None

    # ------------------------------------------------------------------ logging
    def log(self, level: str, text: str) -> None:
        self.logwriter.log("server", level, f"master[{self.pid}]", text)

    # ------------------------------------------------------------------ start
    def run(self, on_started=None) -> int:
        """Serve until stopped; on_started() is called once the status socket answers."""
        os.makedirs(self.params.run_directory, mode=0o755, exist_ok=True)
        self.status = StatusServer(socket_path(self.params.run_directory), {
            "status": lambda _req: self.status_report(),
            "connections": lambda _req: self.connections_report(),
            "reload": lambda _req: self.reload(),
            "stop": lambda _req: self.begin_stop("mailctl stop"),
        }, self.selector)
        self.signals.install()
        self.selector.register(self.signals.fileno(), selectors.EVENT_READ, self.on_signals)
        for svc in self.services.values():
            self._watch_listener(svc)
        self.log("M", f"started: {len(self.services)} services from {self.config.master_cf}")
        if on_started is not None:
            on_started()
        sdnotify.ready()                  # Type=notify: systemctl start returns now
        while not (self.stopping and (not self.workers or time.monotonic() >= self.stop_deadline)):
            try:
                self.turn()
            except Exception as e:  # a bug here must not leave workers unattended
                self.log("E", f"error in the master loop: {type(e).__name__}: {e}: "
                              + traceback.format_exc().replace("\n", " | "))
                self.begin_stop("error in the master loop")
        self.finish()
        return 0

    def turn(self) -> None:
        for key, _ in self.selector.select(self._sleep_time()):
            key.data()
        self.reap()
        now = time.monotonic()
        self.check_alive(now)
        if not self.stopping:
            for svc in list(self.services.values()):
                self.maintain(svc, now)
        self.status.expire()
        self.anvil.expire()
        self.refusals.flush()
        self.disk.sample()
        self.logwriter.maybe_rotate()
        sdnotify.settle()                 # READY=1 after a reload in this turn

    def _sleep_time(self) -> float:
        now = time.monotonic()
        due = [now + TICK, self.stop_deadline if self.stopping else now + TICK]
        for svc in self.services.values():
            due += [t for t in (svc.next_wakeup, svc.throttled_until, svc.accept_paused_until) if t > now]
            if svc.waiting:
                due.append(svc.waiting[0][0])
        return max(0.0, min(due) - now)

    # ------------------------------------------------------------------ signals
    def on_signals(self) -> None:
        for signum in self.signals.pending():
            if signum == signal.SIGHUP:
                self.reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.begin_stop(signal.Signals(signum).name)
            # SIGCHLD: reap() runs after every turn anyway.

    # ------------------------------------------------------------------ accepting
    def _watch_listener(self, svc: Service) -> None:
        if svc.listener is not None:
            self.selector.register(svc.listener, selectors.EVENT_READ, lambda: self.on_accept(svc))

    def _unwatch_listener(self, svc: Service) -> None:
        if svc.listener is not None and svc.listener in self.selector.get_map():
            self.selector.unregister(svc.listener)

    def _close_listener(self, svc: Service) -> None:
        """No more connections for this service; those waiting for a slot are closed."""
        self._unwatch_listener(svc)
        if svc.listener is not None:
            svc.listener.close()
            svc.listener = None
        if svc.unix_listener is not None:
            listeners.remove_unix(svc.unix_listener)
            svc.unix_listener = None
        while svc.waiting:
            svc.waiting.popleft()[1].close()

    def on_accept(self, svc: Service) -> None:
        if svc.listener is None:
            return                   # closed by a stop or reload earlier in this turn
        try:
            accepted = listeners.accept_ready(svc.listener, ACCEPT_BATCH)
        except OSError as e:
            # Out of descriptors or buffers: pause this listener for a second, clients wait.
            self.log("E", f"service {svc.name}: accept failed: {e.strerror}; pausing 1 s")
            self._unwatch_listener(svc)
            svc.accept_paused_until = time.monotonic() + 1.0
            return
        now = time.monotonic()
        for sock, (ip, _port) in accepted:
            if svc.accept_paused_until:
                sock.close()
            elif limit := self._client_limit(svc, ip):
                self.dispatch(svc, sock, ip, limit)
            elif (svc.waiting or self._at_limit(svc)) and len(svc.waiting) < WAITING_MAX:
                # The count drops only once a worker has noticed that its client left, so a
                # client that reconnects right after its QUIT could be refused for a session
                # that is over: give it LIMIT_GRACE seconds for a slot before the refusal.
                svc.waiting.append((now + LIMIT_GRACE, sock, ip))
            else:
                self.dispatch(svc, sock, ip)

    def _at_limit(self, svc: Service) -> bool:
        if svc.open >= svc.spec.maxproc:
            self._collect_reports(svc)
        return svc.open >= svc.spec.maxproc

    def _client_limit(self, svc: Service, ip: str) -> str | None:
        """The per-client limit this new connection is over, if any (the attempt is counted)."""
        if self.anvil.connection_rate_exceeded(svc, ip):
            return RATE_LIMIT
        if self.anvil.at_count_limit(svc, ip):
            self._collect_reports(svc)
            if self.anvil.at_count_limit(svc, ip):
                return COUNT_LIMIT
        return None

    def _collect_reports(self, svc: Service) -> None:
        """Before a refusal: "closed" reports may wait in the control sockets, count them first."""
        for worker in list(svc.workers.values()):
            self.on_control(worker)

    def _admit_waiting(self, svc: Service, now: float) -> None:
        """Hand over waiting connections: as sessions when a slot is free, else refused in time."""
        while svc.waiting and (svc.open < svc.spec.maxproc or svc.waiting[0][0] <= now):
            _, sock, ip = svc.waiting.popleft()
            self.dispatch(svc, sock, ip)

    def dispatch(self, svc: Service, sock: socket.socket, ip: str, refusal: str | None = None) -> None:
        """Hand an accepted socket to a worker, refused when `refusal` names a limit or the
        service is at maxproc, and close the master's copy."""
        try:
            self._hand_over(svc, sock, ip, refusal)
        finally:
            sock.close()

    def _hand_over(self, svc: Service, sock: socket.socket, ip: str, refusal: str | None) -> None:
        if refusal is None and svc.open >= svc.spec.maxproc:
            refusal = MAXPROC
        worker = self._pick_worker(svc, refusal is not None)
        if worker is None:
            # Throttled after crashes: close this one, let the next clients wait in the backlog.
            self.log("E", f"service {svc.name}: no worker available, connection from {ip} closed; "
                          "not accepting until the throttle ends")
            self._unwatch_listener(svc)
            svc.accept_paused_until = max(svc.throttled_until, time.monotonic() + 1.0)
            return
        conn_id = self.next_conn_id
        self.next_conn_id += 1
        stress = refusal is None and self._stressed(svc)
        try:
            spawn.hand_over(worker, sock, conn_id, refusal or "", stress)
        except OSError as e:
            if refusal is None:
                self.log("E", f"service {svc.name}: cannot hand connection from {ip} to worker {worker.pid}: "
                              f"{e.strerror}")
                return
            # A flood of refusals filled the worker's socket: this client is just disconnected.
        else:
            self.conns[conn_id] = Conn(svc, worker.pid, ip, refusal is not None,
                                       protocol=worker.protocol or svc.spec.command)
            worker.sessions.add(conn_id)
        if refusal is not None:
            # A refusal is no use of the worker: a flood of them must not recycle it.
            svc.refused += 1
            if refusal == MAXPROC:
                self.refusals.note(svc.name, MAXPROC, None, why=f"maxproc {svc.spec.maxproc}, {svc.open} "
                                                               f"sessions open; first refused: {ip}")
            else:
                self.refusals.note(svc.name, refusal, ip)
            return
        worker.handed += 1
        svc.open += 1
        svc.served += 1
        self.anvil.opened(svc.name, ip)
        if worker.max_use and worker.handed == worker.max_use - worker.max_use // SUCCESSOR_AHEAD:
            self._start_successor(svc, worker)
        if worker.max_use and worker.handed >= worker.max_use:
            self.retire(worker, f"served its {worker.max_use} connections (max_use={svc.params.max_use})")

    def _retire_spares(self, svc: Service, now: float, idle: float) -> None:
        """A worker idle for `idle` seconds while another active worker has room retires: a
        successor started ahead whose predecessor's load stopped, or the extra worker of a
        past rush. The one nearest its max_use goes first."""
        spares = [w for w in svc.active_workers() if not w.sessions and now - w.idle_since >= idle]
        for worker in sorted(spares, key=lambda w: w.handed, reverse=True):
            if any(w is not worker and len(w.sessions) < svc.client_limit for w in svc.active_workers()):
                self.retire(worker, f"spare: idle for {idle:g} s while another worker has room")

    def _start_successor(self, svc: Service, worker: Worker) -> None:
        """worker nears its max_use: start the process that takes over from it now, unless
        another worker has room, so that the connections after its retirement find one
        ready instead of waiting for an interpreter to start. Until then the busiest-first
        rule of _pick_worker keeps handing them to worker."""
        if not any(w is not worker and len(w.sessions) < svc.client_limit for w in svc.active_workers()):
            self.spawn(svc)

    def _stressed(self, svc: Service) -> bool:
        """Postfix's stress mode: once a session makes the service 3/4 full, new sessions get
        stress_timeout; it ends when less than half is used (maintain)."""
        if not svc.params.stress_timeout:
            return False
        if not svc.stressed and (svc.open + 1) * 4 >= svc.spec.maxproc * 3:
            svc.stressed = True
            self.log("M", f"service {svc.name}: {svc.open + 1} of maxproc {svc.spec.maxproc} sessions; "
                          f"under stress, new sessions time out after {svc.params.stress_timeout:g} s")
        return svc.stressed

    def _pick_worker(self, svc: Service, refuse: bool) -> Worker | None:
        active = svc.active_workers()
        if refuse and active:
            return min(active, key=lambda w: len(w.sessions))
        with_room = [w for w in active if len(w.sessions) < svc.client_limit]
        if with_room:
            # Fill the busiest worker first: idle ones can then retire on max_idle.
            return max(with_room, key=lambda w: len(w.sessions))
        return self.spawn(svc)

    # ------------------------------------------------------------------ workers
    def spawn(self, svc: Service) -> Worker | None:
        now = time.monotonic()
        if svc.throttled(now):
            return None
        try:
            worker = spawn.spawn(svc, self.config.service_sockets())
        except (OSError, KeyError, subprocess.SubprocessError) as e:
            delay = svc.throttle(now)
            self.log("E", f"service {svc.name}: cannot start {svc.spec.module}: {e}; retrying in {delay:.0f} s")
            return None
        self.workers[worker.pid] = worker
        self.selector.register(worker.control, selectors.EVENT_READ, lambda: self.on_control(worker))
        self.selector.register(worker.log_fd, selectors.EVENT_READ, lambda: self.on_worker_log(worker))
        self.log("H", f"service {svc.name}: started worker {worker.pid} ({svc.spec.module})")
        return worker

    def retire(self, worker: Worker, reason: str) -> None:
        """Take no more connections to worker; its sessions finish (recycling, reload)."""
        if worker.draining:
            return
        worker.draining = True
        spawn.send_op(worker, proto.drain())
        self.log("H", f"service {worker.service.name}: worker {worker.pid} retires: {reason}")

    def tell_stopping(self, worker: Worker) -> None:
        """Like retire, and the worker tells its idle sessions to end (graceful stop)."""
        worker.draining = True
        spawn.send_op(worker, proto.drain(stop=True))

    def on_control(self, worker: Worker) -> None:
        messages = spawn.read_messages(worker)
        if messages is None:
            if worker.control in self.selector.get_map():
                self.selector.unregister(worker.control)
            return
        for message in messages:
            self.on_message(worker, message)

    def on_message(self, worker: Worker, message: dict) -> None:
        svc = worker.service
        op = message.get("op")
        if op == proto.OP_ALIVE:
            pass                                # read_messages noted the sign of life
        elif op == proto.OP_READY:
            worker.ready = True
            worker.protocol = str(message.get("protocol") or "")[:32]
        elif op == proto.OP_CLOSED:
            conn = self.conns.get(message.get("conn"))
            if conn is not None and conn.pid == worker.pid:      # a worker speaks for its own only
                self._forget_conn(message.get("conn"))
        elif op == proto.OP_SESSION:
            conn = self.conns.get(message.get("conn"))
            if conn is not None and conn.pid == worker.pid:
                conn.user = str(message.get("user"))[:256]
                conn.protocol = str(message.get("protocol") or conn.protocol)[:32]
        elif op == proto.OP_LOGIN:
            conn = self.conns.get(message.get("conn"))
            if conn is not None and conn.pid == worker.pid:
                self._login(worker, message["conn"], conn, bool(message.get("ok")),
                            str(message["user"])[:256] if message.get("user") else None)
        else:
            self.log("E", f"service {svc.name}: worker {worker.pid} sent an unknown message {message!r:.200}")

    def _login(self, worker: Worker, conn_id: int, conn: Conn, ok: bool, user: str | None) -> None:
        """A login attempt on conn: answer the client's auth penalty and any refusal."""
        same = 0
        if ok and user is not None:
            same = sum(1 for c in self.conns.values() if c is not conn and c.ip == conn.ip
                       and c.protocol == conn.protocol and (c.user or "").lower() == user.lower())
        delay, refusal = self.anvil.login(conn.service, conn.ip, ok, user, same)
        if refusal:
            self.refusals.note(conn.service.name, refusal, conn.ip, what="logins")
        elif ok and user is not None:
            conn.user = user            # counted for the next login at once, before its session report
        spawn.send_op(worker, proto.login_answer(conn_id, delay, refusal or ""))

    def _forget_conn(self, conn_id) -> None:
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        worker = self.workers.get(conn.pid)
        if worker is not None:
            worker.sessions.discard(conn_id)
            if not worker.sessions:
                worker.idle_since = time.monotonic()
        if not conn.refused:
            conn.service.open -= 1
            self.anvil.closed(conn.service.name, conn.ip)

    def on_worker_log(self, worker: Worker, final: bool = False) -> None:
        lines, eof = spawn.read_log_lines(worker, final)
        for line in lines:
            self.logwriter.worker_line(worker.service.spec.command, worker.pid, line)
        if (eof or final) and worker.log_fd >= 0:
            self.selector.unregister(worker.log_fd)
            os.close(worker.log_fd)
            worker.log_fd = -1

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                self.log("E", f"reaped unknown child {pid}")
                continue
            worker.popen.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
            self._bury(worker, status)

    def _bury(self, worker: Worker, status: int) -> None:
        svc = worker.service
        if worker.log_fd >= 0:
            self.on_worker_log(worker, final=True)
        if worker.control in self.selector.get_map():
            self.selector.unregister(worker.control)
        worker.control.close()
        for conn_id in list(worker.sessions):
            self._forget_conn(conn_id)
        svc.workers.pop(worker.pid, None)
        clean, how = spawn.describe_exit(status)
        if worker.draining and clean:
            self.log("H", f"service {svc.name}: worker {worker.pid} finished ({how})")
            return
        if worker.draining:
            self.log("E", f"service {svc.name}: retiring worker {worker.pid} {how}")
            return
        now = time.monotonic()
        if worker.proven(now):
            self.log("E", f"service {svc.name}: worker {worker.pid} {how}; starting a new one")
            return
        delay = svc.throttle(now)
        when = "after start-up" if worker.ready else "before it was ready"
        self.log("E", f"service {svc.name}: worker {worker.pid} {how} {when}; "
                      f"throttling the service for {delay:.0f} s")

    # ------------------------------------------------------------------ upkeep
    def check_alive(self, now: float) -> None:
        for worker in list(self.workers.values()):
            if done := spawn.check_alive(worker, now):
                self.log("E", done)

    def maintain(self, svc: Service, now: float) -> None:
        if svc.throttle_delay and any(w.proven(now) for w in svc.active_workers()):
            svc.unthrottle()
            self.log("M", f"service {svc.name}: workers run fine again, throttle lifted")
        if svc.listener is not None and svc.accept_paused_until and now >= svc.accept_paused_until:
            svc.accept_paused_until = 0.0
            self._watch_listener(svc)
        self._admit_waiting(svc, now)
        if svc.stressed and svc.open * 2 < svc.spec.maxproc:
            svc.stressed = False
            self.log("M", f"service {svc.name}: {svc.open} sessions open, no longer under stress")
        max_idle = svc.params.max_idle
        if svc.spec.kind == "inet" and max_idle:
            for worker in svc.active_workers():
                if not worker.sessions and now - worker.idle_since >= max_idle:
                    self.retire(worker, f"idle for max_idle={max_idle:g} s")
            self._retire_spares(svc, now, min(max_idle, SPARE_IDLE))
        if svc.spec.kind == "inet":
            if not svc.active_workers():
                self.spawn(svc)
        else:
            # Replacements of a unix service start only once the old process is gone:
            # maxproc is the number of processes that may run at all (one qmgr).
            while len(svc.workers) < svc.spec.maxproc and self.spawn(svc):
                pass
        if svc.spec.wakeup and now >= svc.next_wakeup:
            if svc.next_wakeup:
                for worker in svc.active_workers():
                    if worker.ready:
                        spawn.send_op(worker, proto.wakeup())
            svc.next_wakeup = now + svc.spec.wakeup

    # ------------------------------------------------------------------ reload
    def reload(self) -> dict:
        sdnotify.reloading()
        try:
            config = read_config(self.config.master_cf, self.config.main_cf)
        except ConfigError as e:
            self.log("E", f"reload refused, keeping the running configuration: {e}")
            return {"ok": False, "error": str(e)}
        wanted = {spec.key: (spec, params) for spec, params in config.services}
        fresh: dict[str, socket.socket] = {}
        try:
            for key, (spec, _params) in wanted.items():
                if (spec.kind == "inet" or spec.listens_on_socket) and key not in self.services:
                    fresh[key] = _bind(spec, config.params)
        except BindError as e:
            for sock in fresh.values():
                sock.close()
            self.log("E", f"reload refused, keeping the running configuration: {e}")
            return {"ok": False, "error": str(e)}
        added = [key for key in wanted if key not in self.services]
        self.config, self.params = config, config.params
        self.logwriter.reconfigure(self.params)
        self.disk.reconfigure(self.params)
        removed = [key for key in self.services if key not in wanted]
        for key in removed:
            svc = self.services.pop(key)
            self._close_listener(svc)
            for worker in list(svc.workers.values()):
                self.retire(worker, "service removed from master.cf")
        # Like `postfix reload`, every worker is replaced, changed settings or not: new
        # processes also pick up what lives outside the two files (certificates, aliases).
        services: dict[str, Service] = {}
        for key, (spec, params) in wanted.items():
            svc = self.services.get(key)
            if svc is None:
                svc = _service(spec, params, fresh.get(key))
                self._watch_listener(svc)
            else:
                svc.spec, svc.params = spec, params
                svc.unthrottle()
                for worker in svc.active_workers():
                    self.retire(worker, "configuration reloaded")
            services[key] = svc
        self.services = services
        self.log("M", f"reloaded {config.master_cf}: {len(wanted)} services, {len(added)} added, "
                      f"{len(removed)} removed; new workers take the new configuration")
        return {"ok": True}

    # ------------------------------------------------------------------ stop
    def begin_stop(self, why: str) -> dict:
        if self.stopping:
            self.log("M", f"{why} while stopping: killing the remaining workers now")
            self.stop_deadline = 0.0
            return {"ok": True}
        self.stopping = True
        sdnotify.stopping()
        self.stop_deadline = time.monotonic() + self.params.graceful_timeout
        self.log("M", f"stopping ({why}): no new connections, waiting up to "
                      f"{self.params.graceful_timeout:g} s for {len(self.conns)} sessions")
        for svc in self.services.values():
            self._close_listener(svc)
        for worker in list(self.workers.values()):
            self.tell_stopping(worker)
        return {"ok": True}

    def finish(self) -> None:
        if self.workers:
            self.log("E", f"graceful_timeout reached: killing {len(self.workers)} workers "
                          f"with {len(self.conns)} sessions")
            for worker in self.workers.values():
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + KILL_WAIT
            while self.workers and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
        self.log("M", "stopped")
        self.status.close()
        self.signals.restore()
        self.logwriter.close()

    # ------------------------------------------------------------------ reports
    def status_report(self) -> dict:
        return {
            "running": True,
            "stopping": self.stopping,
            "pid": self.pid,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "uptime": round(time.time() - self.started),
            "config": self.config.master_cf,
            "services": [{
                "name": svc.name,
                "command": svc.spec.command,
                "kind": svc.spec.kind,
                "ready": svc.ready,
                "connections": svc.open,
                "served": svc.served,
                "refused": svc.refused,
                "stress": svc.stressed,
                "workers": sorted(svc.workers),
                "maxproc": svc.spec.maxproc,
                "throttled": svc.throttled(time.monotonic()),
            } for svc in self.services.values()],
        }

    def connections_report(self) -> dict:
        """Open sessions grouped by (user, client address, protocol)."""
        now = time.time()
        groups: dict[tuple, dict] = {}
        for conn in self.conns.values():
            if conn.refused:
                continue
            key = (conn.user, conn.ip, conn.protocol, conn.service.name)
            row = groups.setdefault(key, {"user": conn.user, "ip": conn.ip, "protocol": conn.protocol,
                                          "service": conn.service.name, "connections": 0, "seconds": 0})
            row["connections"] += 1
            row["seconds"] = max(row["seconds"], round(now - conn.since))
        rows = sorted(groups.values(), key=lambda r: (r["user"] or "", r["ip"], r["protocol"]))
        return {"connections": rows}

"""mailctl status | connections | reload | stop: talk to the running master.

status [--json]        running, pid, start time; per service: ready, open connections,
                       sessions served, refusals, maxproc, worker pids; the queue: messages
                       per queue directory and the deferred ones by their last reason
connections [--json]   open sessions grouped by user, client address and protocol, with the
                       number of connections and the longest time connected
reload                 re-read master.cf and main.cf; a refused file is reported file:line
stop                   graceful stop; waits until the master has exited
Everything goes through the status socket run/master.sock; reload and stop fall back to
the pid file and a signal (SIGHUP / SIGTERM) when the socket does not answer, and only
when that pid is a running master of this configuration (master/rundir.py).
Diagnostics: exit 1 with a one-line reason when the master is not running or refuses.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter

from master.ctl import Refused
from master.rundir import NotOurMaster, running_master
from master.status import MasterNotRunning, pid_path, request
from store.queue import Queue

STOP_MARGIN = 15.0       # seconds beyond graceful_timeout that `stop` waits for the exit


def register(sub) -> None:
    p = sub.add_parser("status", help="is the master running; services, connections, workers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("connections", help="open sessions: user, client, protocol, duration")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_connections)
    sub.add_parser("reload", help="re-read master.cf and main.cf").set_defaults(handler=cmd_reload)
    sub.add_parser("stop", help="stop gracefully and wait for the exit").set_defaults(handler=cmd_stop)


def _ask(config, op: str) -> dict:
    try:
        return request(config.params.run_directory, op)
    except (MasterNotRunning, OSError, ValueError) as e:
        raise Refused(str(e) if isinstance(e, MasterNotRunning) else f"the master does not answer: {e}") from None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    return " ".join(parts + [f"{secs}s"]) if not days else " ".join(parts)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def cmd_status(args, config) -> int:
    try:
        state = request(config.params.run_directory, "status")
    except (MasterNotRunning, OSError, ValueError) as e:
        if args.json:
            print(json.dumps({"running": False}))
        print(f"mailctl: master not running: {e}", file=sys.stderr)
        return 1
    state["queue"] = queue_summary(Queue.from_params(config.params))
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    what = "stopping" if state.get("stopping") else "running"
    print(f"master {what}, pid {state['pid']}, started {state['started']} "
          f"(up {_duration(state['uptime'])})")
    rows = [[s["name"], s["command"], "yes" if s["ready"] else ("throttled" if s.get("throttled") else "no"),
             s["connections"], s["served"], s["refused"], s["maxproc"], " ".join(map(str, s["workers"])) or "-"]
            for s in state["services"]]
    print(_table(["service", "command", "ready", "open", "served", "refused", "maxproc", "workers"], rows))
    queue = state["queue"]
    if "error" in queue:
        print(f"\nqueue: {queue['error']}")
        return 0
    print("\nqueue: " + ", ".join(f"{queue[name]} {name}" for name in QUEUE_DIRECTORIES))
    if queue["deferred_reasons"]:
        print(_table(["deferred", "reason"], [[r["messages"], r["reason"]] for r in queue["deferred_reasons"]]))
    return 0


QUEUE_DIRECTORIES = ("incoming", "active", "deferred", "hold", "corrupt")
REASON_WIDTH = 120                 # reasons are grouped by their first characters


def queue_summary(queue: Queue) -> dict:
    """Messages per queue directory; the deferred ones by their last deferral reason (the
    most common first), a message counted once per distinct reason of its recipients."""
    try:
        summary: dict = {name: len(queue.ids(name)) for name in QUEUE_DIRECTORIES}
        deferred = queue.ids("deferred")
    except OSError as e:
        return {"error": f"cannot read the queue: {e.strerror or e}"}
    reasons: Counter = Counter()
    for queue_id in deferred:
        try:
            state = queue.read_state(queue_id)
        except OSError:
            continue
        reasons.update({text[:REASON_WIDTH] for text in state.reasons.values()} or {"(no reason recorded)"})
    summary["deferred_reasons"] = [{"reason": text, "messages": count} for text, count in reasons.most_common()]
    return summary


def cmd_connections(args, config) -> int:
    rows = _ask(config, "connections")["connections"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(_table(["user", "ip", "protocol", "connections", "connected"],
                 [[r["user"] or "-", r["ip"], r["protocol"], r["connections"], _duration(r["seconds"])]
                  for r in rows]))
    return 0


def _signal_by_pid_file(config, signum: int) -> int:
    """The status socket is silent: signal the pid file's master, if it is ours and alive."""
    try:
        pid = running_master(pid_path(config.params.run_directory), config.master_cf)
        os.kill(pid, signum)
    except (NotOurMaster, OSError) as e:
        raise Refused(f"the master is not running (status socket silent; {getattr(e, 'strerror', None) or e})") \
            from None
    return pid


def cmd_reload(args, config) -> int:
    try:
        answer = request(config.params.run_directory, "reload")
    except (MasterNotRunning, OSError, ValueError):
        pid = _signal_by_pid_file(config, signal.SIGHUP)
        print(f"sent SIGHUP to master {pid}; see server.log for the outcome")
        return 0
    if not answer.get("ok"):
        raise Refused(f"reload refused, the running configuration is kept: {answer.get('error')}")
    print("reloaded")
    return 0


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that started it in the foreground."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def cmd_stop(args, config) -> int:
    try:
        pid = request(config.params.run_directory, "status")["pid"]
        request(config.params.run_directory, "stop")
    except (MasterNotRunning, OSError, ValueError, KeyError):
        pid = _signal_by_pid_file(config, signal.SIGTERM)
    deadline = time.monotonic() + config.params.graceful_timeout + STOP_MARGIN
    while _alive(pid):
        if time.monotonic() > deadline:
            raise Refused(f"master {pid} is still running after the graceful timeout")
        time.sleep(0.1)
    print(f"master {pid} stopped")
    return 0

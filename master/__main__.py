"""`master -c PATH [--daemon] [--check]`: start the mail system (also `python -m master`).

PATH is a master.cf or the folder holding it; main.cf is read from the same folder.
Order at start: read and validate both files (exit 78 EX_CONFIG with `file:line: reason`
on stderr), refuse if a master already answers on run/master.sock (exit 1), take the run
directory (master/rundir.py), check that the workers can use what they need as mail_owner
and that the TLS files load (master/preflight.py; exit 78, one line per problem naming the
path; --check does this too), bind every
inet service (exit 1 naming the line), then detach if --daemon, write run/master.pid, and
run the arbiter (master/loop.py) in the foreground. The pid file is removed at exit.
--check prints the settings given in main.cf (like `postconf -n`) and the service table
with defaults filled in, then exits 0.
Diagnostics: start-up errors on stderr; everything after start in server.log.
"""
from __future__ import annotations

import argparse
import os
import sys

from master import preflight, rundir, spawn
from master.cf import resolve_config_path
from master.loop import Arbiter, BindError, Config, bind_services, read_config
from master.params import ConfigError
from master.status import is_answering, pid_path

EX_CONFIG = 78


def _fail(message: str, code: int) -> None:
    print(f"master: {message}", file=sys.stderr)
    sys.exit(code)


def _print_check(config: Config) -> None:
    for key, value in config.params.non_default().items():
        print(f"{key} = {value}")
    print()
    print("# service type private unpriv wakeup maxproc command + args")
    for spec, _params in config.services:
        flags = f"{'y' if spec.private else 'n'} {'y' if spec.unpriv else 'n'} {spec.wakeup:g}"
        words = [spec.name, spec.kind, flags, str(spec.maxproc), spec.command, *spec.args]
        words += [f"-o {key}={value}" for key, value in spec.overrides.items()]
        print(" ".join(words))


def _daemonize():
    """Detach (double fork, new session, stdio on /dev/null); returns a function that tells
    the waiting foreground process that the master is up, so `master --daemon` exits 0
    only once the status socket answers, and 1 if the daemon died before."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        if os.read(read_end, 1) == b"1":
            os._exit(0)
        print("master: the daemon exited while starting; see server.log", file=sys.stderr)
        os._exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.chdir("/")

    def started() -> None:
        os.write(write_end, b"1")
        os.close(write_end)
    return started


def _set_title(master_cf: str) -> None:
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(f"mailhouse master -c {master_cf}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="master", description="Run the mailhouse mail system.")
    parser.add_argument("-c", "--config", default="etc", help="master.cf or its folder (default: etc)")
    parser.add_argument("--daemon", action="store_true", help="detach and write run/master.pid")
    parser.add_argument("--check", action="store_true", help="validate, print the effective configuration, exit")
    args = parser.parse_args(argv)

    master_cf, main_cf = resolve_config_path(args.config)
    try:
        config = read_config(master_cf, main_cf)
    except ConfigError as e:
        _fail(str(e), EX_CONFIG)
    run_directory = config.params.run_directory
    if not args.check:
        if is_answering(run_directory):
            _fail(f"already running: {run_directory}/master.sock answers (mailctl stop first)", 1)
        try:
            rundir.prepare(config.params)
        except OSError as e:
            _fail(f"cannot prepare {run_directory}: {e.strerror or e}", 1)
    found = preflight.problems(config, spawn.base_environment())
    if found:
        for problem in found:
            print(f"master: {problem}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    if args.check:
        _print_check(config)
        return
    try:
        bound = bind_services(config)
    except BindError as e:
        _fail(str(e), 1)
    on_started = _daemonize() if args.daemon else None
    _set_title(master_cf)
    pid_file = pid_path(run_directory)
    try:
        rundir.write_pid_file(pid_file)
        code = Arbiter(config, bound).run(on_started)
    except OSError as e:               # log directory, pid file or status socket unusable
        _fail(f"cannot start: {e}", 1)
    finally:
        rundir.remove_pid_file(pid_file)
    sys.exit(code)


if __name__ == "__main__":
    main()

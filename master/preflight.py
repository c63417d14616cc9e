"""Start-up checks: can the workers use what they need, as the user they will run as?

The master runs as root and its workers (services with unpriv `y`/`-`) as mail_owner. A
worker that cannot open the queue FIFO or execute the interpreter would crash-loop while
smtpd goes on answering `250`; so before binding anything the master checks, as
mail_owner, every path a worker needs (worker_paths) and that the interpreter starts and
imports mailhouse, and refuses to start (EX_CONFIG, one line naming the path) when one is
not usable. TLS: when a service needs TLS (level `encrypt` or wrapper mode) the certificate
and key must load; when it only offers it (`may`), files that exist must load, and missing
ones only mean no STARTTLS. `mailctl init` gives the same worker_paths to mail_owner.
The password database (and the APOP key) is among them only when mail_owner's processes
verify passwords (workers_verify: master.cf has no auth service, or runs it unpriv); with
the auth service running as root, the opposite is checked: mail_owner must not be able to
read it (a protocol worker taken over would read every password hash).

    problems(config) -> list[str]       empty when everything is usable
    worker_paths(params, verify) -> list[Need]  what workers open, with the access they need
    password_paths(params) -> list[str] the password database's files and the key
    workers_verify(specs) -> bool       do processes of mail_owner read the password database?
"""
from __future__ import annotations

import json
import os
import pwd
import ssl
import subprocess
import sys
from dataclasses import dataclass

from master.cf import socket_service
from master.params import Params
from master.proto import POP3_LOCKS
from store.aliases import map_path
from store.queue import QUEUES, Queue
from store.users import UserDB

READ, WRITE, ENTER = os.R_OK, os.W_OK, os.X_OK
DIRECTORY = READ | WRITE | ENTER
PROBE_TIMEOUT = 30.0
# What a worker imports first: if these load as mail_owner, the installation is readable.
PROBE_IMPORT = "import master.params, store.index, workers._server"


@dataclass(frozen=True)
class Need:
    path: str
    access: int                 # os.access mode
    what: str                   # how the administrator knows it (a main.cf key)
    optional: bool = False      # may be missing (created on first use by its owner)


def _describe(access: int) -> str:
    words = [w for bit, w in ((READ, "read"), (WRITE, "write"), (ENTER, "enter")) if access & bit]
    return "/".join(words)


def workers_verify(specs) -> bool:
    """True when processes of mail_owner verify passwords: no auth service, or one run unpriv."""
    spec = socket_service(list(specs), "auth")
    return spec is None or spec.unpriv


def password_paths(params: Params) -> list[str]:
    """The password database (folder and files, as far as they exist) and the key file."""
    _users, passwords_path, key_path = UserDB.paths(params)
    try:
        files = sorted(os.listdir(passwords_path))
    except OSError:                             # missing, or closed to the user looking
        files = []
    return [passwords_path, *(os.path.join(passwords_path, name) for name in files), key_path]


def worker_paths(params: Params, verify: bool) -> list[Need]:
    """verify: the workers read the password database themselves (workers_verify)."""
    queue = Queue.from_params(params)
    users_path, passwords_path, key_path = UserDB.paths(params)
    needs = [Need(params.queue_directory, DIRECTORY, "queue_directory")]
    needs += [Need(queue.path(name), DIRECTORY, "queue_directory")
              for name in (*QUEUES, "state", "tmp", "public")]
    needs.append(Need(queue.wakeup_path(), READ | WRITE, "the qmgr wake-up FIFO in queue_directory"))
    needs += [Need(params.mail_store_directory, DIRECTORY, "mail_store_directory"),
              Need(params.index_directory, DIRECTORY, "index_directory"),
              Need(users_path, DIRECTORY, "the user database"),
              Need(map_path(params.alias_maps), READ, "alias_maps (run newaliases)", optional=True),
              Need(params.run_directory, READ | ENTER, "run_directory"),
              Need(os.path.join(params.run_directory, POP3_LOCKS), DIRECTORY, "run_directory")]
    if os.path.isdir(users_path):               # as mail_owner in the start-up check: root may not look
        needs += [Need(os.path.join(users_path, name), READ | WRITE, "the user database")
                  for name in sorted(os.listdir(users_path))]
    if verify:
        what = "the password database (master.cf has no auth service running as root)"
        needs.append(Need(passwords_path, DIRECTORY, what, optional=True))
        needs += [Need(path, READ | WRITE, what) for path in password_paths(params)[1:-1]]
        needs.append(Need(key_path, READ, "the password database key", optional=True))
    return needs


def _exposed_passwords(params: Params, owner: str) -> list[str]:
    """With the auth service as root: password files mail_owner could read."""
    return [f"{path} (the password database) is readable by {owner}, though only the auth service "
            f"should read it: run `mailctl init` as root (it gives it back to root)"
            for path in password_paths(params) if os.path.isfile(path) and os.access(path, READ)]


def _tls_needs(config) -> tuple[bool, bool]:
    """(some service offers TLS, some service requires it)"""
    offered = required = False
    for spec, params in config.services:
        if spec.command == "smtpd":
            level, wrapped = params.smtpd_tls_security_level, params.smtpd_tls_wrappermode
        elif spec.command in ("pop3d", "imapd"):
            level, wrapped = params.imap_pop_tls_security_level, params.tls_wrappermode
        else:
            continue
        offered |= wrapped or level != "none"
        required |= wrapped or level == "encrypt"
    return offered, required


def _tls_problem(params: Params, offered: bool, required: bool) -> str | None:
    if not offered:
        return None
    files = (params.tls_cert_file, params.tls_key_file)
    if not required and not all(os.path.exists(path) for path in files):
        return None                  # `may` without a certificate: no STARTTLS, as Postfix
    for path in files:
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            return f"tls_cert_file/tls_key_file: {path}: no such file (mailctl init makes one)"
        except OSError as e:
            return f"tls_cert_file/tls_key_file: {path}: {e.strerror.lower()}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(*files)
    except (OSError, ssl.SSLError) as e:
        return f"tls_cert_file {files[0]} / tls_key_file {files[1]}: not a usable certificate and key ({e})"
    return None


def _closed_folder(path: str) -> str | None:
    """The first folder on the way to path that we may not enter, if any."""
    folder = "/"
    for part in os.path.abspath(path).split("/")[1:-1]:
        folder = os.path.join(folder, part)
        if not os.access(folder, ENTER):
            return folder
    return None


def _path_problems(needs: list[Need], owner: str) -> list[str]:
    found = []
    for need in needs:
        closed = _closed_folder(need.path)
        if closed is not None:
            found.append(f"{need.path} ({need.what}) is not usable by {owner}: the folder {closed} is closed to it")
            continue
        if not os.path.lexists(need.path):
            if not need.optional:
                found.append(f"{need.path} ({need.what}) does not exist: run `mailctl init` as root")
            continue
        if os.path.islink(need.path):
            found.append(f"{need.path} ({need.what}) is a symbolic link; refusing it")
        elif not os.access(need.path, need.access):
            found.append(f"{need.path} ({need.what}) is not usable by {owner}: it needs {_describe(need.access)}")
    return found


def _interpreter_problem(owner: str) -> str | None:
    if not os.access(sys.executable, os.X_OK):
        closed = _closed_folder(sys.executable)
        reason = f"the folder {closed} is closed to it" if closed else "not executable for it"
        return (f"{owner} cannot execute the interpreter {sys.executable} ({reason}): install "
                f"mailhouse where {owner} can read it (README: Production)")
    return None


def _as_owner_report(config, needs: list[Need], owner: str) -> list[str]:
    """Run in a child that has become mail_owner: the problems it sees."""
    found = _path_problems(needs, owner)
    if not workers_verify(spec for spec, _ in config.services):
        found += _exposed_passwords(config.params, owner)
    problem = _interpreter_problem(owner)
    if problem is not None:
        return [*found, problem]
    offered, required = _tls_needs(config)
    tls = _tls_problem(config.params, offered, required)
    if tls is not None:
        found.append(f"{tls} (as {owner})")
    return found


def _fork_as(user: pwd.struct_passwd, check) -> list[str]:
    """check() in a child process with user's uid/gid; its list of problems back by a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # child: never returns
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.write(write_end, json.dumps(check()).encode())
        except BaseException as e:               # the report is the child's only output
            try:
                os.write(write_end, json.dumps([f"start-up check failed as {user.pw_name}: {e}"]).encode())
            except OSError:
                code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    data = bytearray()
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data or b'["start-up check: the checking process died"]')


def _probe_interpreter(user: pwd.struct_passwd, env: dict[str, str]) -> str | None:
    """Start the interpreter as the worker will (as user, same env) and import mailhouse."""
    try:
        result = subprocess.run([sys.executable, "-c", PROBE_IMPORT], env=env, cwd="/",
                                user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{user.pw_name} cannot start the interpreter {sys.executable}: {e}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{user.pw_name} cannot load mailhouse with {sys.executable}: {last}"
    return None


def problems(config, worker_env: dict[str, str]) -> list[str]:
    """Everything that would keep a worker from running; empty when all is usable."""
    params = config.params
    unprivileged = os.geteuid() == 0 and any(spec.unpriv for spec, _ in config.services)
    if not unprivileged:
        offered, required = _tls_needs(config)
        tls = _tls_problem(params, offered, required)
        return [tls] if tls else []
    try:
        user = pwd.getpwnam(params.mail_owner)
    except KeyError:
        return [f"mail_owner {params.mail_owner!r} is not a user on this system"]
    if user.pw_uid == 0:
        return [f"mail_owner {params.mail_owner!r} must not be root"]
    verify = workers_verify(spec for spec, _ in config.services)
    found = _fork_as(user, lambda: _as_owner_report(config, worker_paths(params, verify), user.pw_name))
    if not found:
        probe = _probe_interpreter(user, worker_env)
        if probe is not None:
            found.append(probe)
    return found

"""master.cf: the service table, in Postfix's format.

parse_master_cf(path) -> list[ServiceSpec], one per service line:
    service  type  private  unpriv  chroot  wakeup  maxproc  command [args]
`#` comments, continuation lines that start with whitespace, `-` for a column's default,
`-o key=value` options (validated later against main.cf's table). An `inet` service is
`[host:]port`, `[ipv6]:port` or a name from /etc/services. A `unix` service whose command
serves a socket (SOCKET_COMMANDS: auth, smtp) listens on $run_directory/<service>.sock
(master/listeners.py); at most one of each (socket_service(specs, command)): every protocol
worker asks the auth service instead of reading the password database itself, and qmgr
hands remote deliveries to the smtp service.
Diagnostics: ConfigError("file:line: field \"maxproc\": bad value \"x\"") and the like.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

from master.params import PARAM_BY_NAME, ConfigError

DEFAULT_MAXPROC = 32
MAXPROC_LIMIT = 300

# Short command names and the worker module each one runs.
COMMANDS = {
    "smtpd": "workers.smtpd",
    "imapd": "workers.imapd",
    "pop3d": "workers.pop3d",
    "qmgr": "workers.qmgr",
    "auth": "workers.auth",
    "smtp": "workers.smtp",
}
SOCKET_COMMANDS = ("auth", "smtp")  # unix services that serve a socket (the master binds it)


@dataclass
class ServiceSpec:
    name: str                      # the first column, as written
    kind: str                      # inet | unix
    private: bool
    unpriv: bool                   # drop to mail_owner when started as root
    wakeup: float                  # seconds between wake-ups (0 = none)
    maxproc: int                   # simultaneous client connections (inet) / processes (unix)
    command: str                   # as written: smtpd, imapd, ...
    module: str                    # python module run as the worker
    args: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    host: str = ""
    port: int = 0
    where: str = ""                # file:line

    @property
    def listens_on_socket(self) -> bool:
        return self.kind == "unix" and self.command in SOCKET_COMMANDS

    @property
    def key(self) -> str:
        """Identity across reloads: the same name and command is the same service."""
        return f"{self.name}/{self.command}"


def _split_lines(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}:0: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}:0: not UTF-8 text") from None
    joined: list[list] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if not joined:
                raise ConfigError(f"{path}:{number}: continuation line without a service line before it")
            joined[-1][1] += " " + stripped
        else:
            joined.append([number, stripped])
    return [(n, text) for n, text in joined]


def _flag(value: str, default: bool, where: str, name: str) -> bool:
    if value == "-":
        return default
    if value in ("y", "n"):
        return value == "y"
    raise ConfigError(f'{where}: field "{name}": bad value "{value}" (use y, n or -)')


def _parse_address(name: str, where: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\w+)", name) or re.fullmatch(r"(?:([^:\[\]]+):)?(\w[\w-]*)", name)
    if not m:
        raise ConfigError(f'{where}: field "service": bad inet address "{name}"')
    host, port_text = m.group(1) or "", m.group(2)
    if port_text.isdigit():
        port = int(port_text)
    else:
        try:
            port = socket.getservbyname(port_text, "tcp")
        except OSError:
            raise ConfigError(f'{where}: field "service": unknown service name "{port_text}"') from None
    if not 0 < port < 65536:
        raise ConfigError(f'{where}: field "service": bad port "{port_text}"')
    return host, port


def parse_service_line(text: str, where: str) -> ServiceSpec:
    fields = text.split()
    if len(fields) < 8:
        raise ConfigError(f"{where}: expected 8 or more fields (service type private unpriv chroot wakeup "
                          f"maxproc command), got {len(fields)}")
    name, kind, private, unpriv, _chroot, wakeup, maxproc, command, *rest = fields
    if kind not in ("inet", "unix"):
        raise ConfigError(f'{where}: field "type": bad value "{kind}" (use inet or unix)')
    if wakeup == "-":
        wakeup_s = 0.0
    elif re.fullmatch(r"\d+\??", wakeup):
        wakeup_s = float(wakeup.rstrip("?"))
    else:
        raise ConfigError(f'{where}: field "wakeup": bad value "{wakeup}"')
    if maxproc == "-":
        maxproc_n = DEFAULT_MAXPROC
    elif maxproc.isdigit():
        maxproc_n = int(maxproc)
    else:
        raise ConfigError(f'{where}: field "maxproc": bad value "{maxproc}"')
    if maxproc_n > MAXPROC_LIMIT:
        raise ConfigError(f'{where}: field "maxproc": {maxproc_n} is above the limit of {MAXPROC_LIMIT}')
    if maxproc_n < 1:
        raise ConfigError(f'{where}: field "maxproc": must be at least 1')
    module = COMMANDS.get(command)
    if module is None:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", command):
            raise ConfigError(f'{where}: field "command": unknown command "{command}" '
                              f'(one of: {", ".join(COMMANDS)})')
        module = command
    args: list[str] = []
    overrides: dict[str, str] = {}
    it = iter(rest)
    for arg in it:
        if arg == "-o":
            option = next(it, None)
            if option is None or "=" not in option:
                raise ConfigError(f"{where}: -o needs key=value")
            key, value = option.split("=", 1)
            if key not in PARAM_BY_NAME:
                raise ConfigError(f"{where}: -o {key}: unknown parameter")
            overrides[key] = value
        else:
            args.append(arg)
    spec = ServiceSpec(name=name, kind=kind, private=_flag(private, True, where, "private"),
                       unpriv=_flag(unpriv, True, where, "unpriv"), wakeup=wakeup_s, maxproc=maxproc_n,
                       command=command, module=module, args=args, overrides=overrides, where=where)
    if kind == "inet":
        if command in SOCKET_COMMANDS:
            raise ConfigError(f'{where}: field "type": {command} is a unix service')
        spec.host, spec.port = _parse_address(name, where)
    elif spec.listens_on_socket and not re.fullmatch(r"[A-Za-z0-9][\w-]{0,63}", name):
        raise ConfigError(f'{where}: field "service": bad socket name "{name}" (letters, digits, "-", "_")')
    return spec


def parse_master_cf(path: str) -> list[ServiceSpec]:
    specs = [parse_service_line(text, f"{path}:{number}") for number, text in _split_lines(path)]
    seen: dict[str, str] = {}
    for spec in specs:
        ident = f"{spec.host}:{spec.port}" if spec.kind == "inet" else spec.name
        if ident in seen:
            raise ConfigError(f"{spec.where}: service {spec.name} is already defined at {seen[ident]}")
        seen[ident] = spec.where
    for command in SOCKET_COMMANDS:
        same = [spec for spec in specs if spec.command == command]
        if len(same) > 1:
            raise ConfigError(f"{same[1].where}: a second {command} service (the first is at {same[0].where})")
    return specs


def socket_service(specs: list[ServiceSpec], command: str) -> ServiceSpec | None:
    """The service of a service table that runs command ("auth", "smtp"), if it has one."""
    return next((spec for spec in specs if spec.command == command), None)


def resolve_config_path(path: str) -> tuple[str, str]:
    """`-c PATH`: a master.cf file or the folder holding it -> (master.cf, main.cf) paths."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        folder, master_cf = path, os.path.join(path, "master.cf")
    else:
        folder, master_cf = os.path.dirname(path), path
    return master_cf, os.path.join(folder, "main.cf")

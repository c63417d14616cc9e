"""main.cf: the table of settings, their types, defaults and validation.

PARAMS is the single source of truth for every key: name, type, default and bounds.
load_main_cf(path) reads `key = value` lines (`#` comments, continuation lines that start
with whitespace), expands `$name` / `${name}`, converts and validates every value and
returns a Params. Params.override({...}) applies a service's `-o key=value` options.
in_networks(ip, networks) matches an address against a parsed CIDR list (mynetworks, ...).
Relative directories are made absolute against the folder of main.cf.
Diagnostics: ConfigError("file:line: reason") for an unknown key, a bad value or a loop
in `$name` expansion; the caller decides whether that is fatal (start) or ignored (reload).
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(Exception):
    """A configuration file or value is wrong; str() reads `file:line: reason`."""


# ---------------------------------------------------------------- value types

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """`10240000`, `10M`, `200k`, `1G` -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([bkmgtBKMGT]?)\s*", text)
    if not m:
        raise ValueError(f"bad size {text!r} (use a number with an optional k/M/G suffix)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_duration(text: str) -> float:
    """`300s`, `5m`, `4h`, `5d`, `1w`, bare seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdwSMHDW]?)\s*", text)
    if not m:
        raise ValueError(f"bad time {text!r} (use a number with an optional s/m/h/d/w suffix)")
    return float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("yes", "y", "true", "on", "1"):
        return True
    if low in ("no", "n", "false", "off", "0"):
        return False
    raise ValueError(f"bad boolean {text!r} (use yes or no)")


def parse_list(text: str) -> list[str]:
    """Postfix lists: items separated by commas and/or whitespace."""
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDR list; `[::1]/128` (Postfix's bracketed IPv6) and bare addresses are accepted."""
    nets = []
    for item in parse_list(text):
        cleaned = re.sub(r"^\[([^\]]+)\]", r"\1", item)
        try:
            nets.append(ipaddress.ip_network(cleaned, strict=False))
        except ValueError:
            raise ValueError(f"bad network {item!r} (use CIDR, e.g. 192.0.2.0/24 or [2001:db8::]/32)") from None
    return nets


def in_networks(ip: str, networks) -> bool:
    """Is the address ip (text, as a socket reports it) in one of the parsed networks?"""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped                 # ::ffff:127.0.0.2 from a dual-stack socket
    return any(addr.version == net.version and addr in net for net in networks)


def parse_hostport(text: str) -> tuple[str, int] | None:
    """`host`, `host:port`, `[host]:port`, `[::1]:53` -> (host, port); empty -> None."""
    text = text.strip()
    if not text:
        return None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text) or re.fullmatch(r"([^:\[\]]+)(?::(\d+))?", text)
    if not m:
        raise ValueError(f"bad host {text!r} (use host, host:port or [host]:port)")
    port = int(m.group(2)) if m.group(2) else 0
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port in {text!r}")
    return m.group(1), port


def _enum(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"bad value {text!r} (one of: {', '.join(choices)})")
        return value
    return parse


def _words(*choices: str) -> Callable[[str], list[str]]:
    """A list whose every item is one of choices (case-insensitive)."""
    def parse(text: str) -> list[str]:
        items = [item.lower() for item in parse_list(text)]
        for item in items:
            if item not in choices:
                raise ValueError(f"unknown item {item!r} (use: {', '.join(choices)})")
        return items
    return parse


def _text(text: str) -> str:
    return text.strip()


def _delimiters(text: str) -> str:
    """recipient_delimiter: characters that end a local part's user name (`+` in `bob+lists`)."""
    text = text.strip()
    bad = sorted({ch for ch in text if ch.isalnum() or ch.isspace() or ch in '@"\\'})
    if bad:
        raise ValueError(f"{''.join(bad)!r} cannot separate a user name from its extension")
    return text


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"bad number {text!r}") from None


def _int_or_empty(text: str) -> int | None:
    """A number, or None when empty: the user of the key then works out the default."""
    return _int(text) if text.strip() else None


@dataclass(frozen=True)
class Param:
    name: str
    parse: Callable[[str], Any]
    default: str
    minimum: float | None = None
    maximum: float | None = None
    is_path: bool = False          # relative values are taken from the config folder


def _number(bound: float) -> str:
    """A bound as written in messages: 2147483648, not 2.14748e+09."""
    return str(int(bound)) if bound == int(bound) else f"{bound:g}"


def _fqdn() -> str:
    name = socket.getfqdn()
    return name if "." in name else f"{name}.localdomain"


# Defaults are strings in main.cf syntax, expanded like user values.
PARAMS: tuple[Param, ...] = (
    # identity and domains
    Param("myhostname", _text, "__fqdn__"),
    Param("mydomain", _text, "__mydomain__"),
    Param("mydestination", parse_list, "$myhostname, $mydomain"),
    Param("smtpd_banner", _text, "$myhostname ESMTP mailhouse"),
    # directories
    Param("data_directory", _text, "var", is_path=True),
    Param("queue_directory", _text, "$data_directory/queue", is_path=True),
    Param("mail_store_directory", _text, "$data_directory/store", is_path=True),
    Param("index_directory", _text, "$data_directory/index", is_path=True),
    Param("log_directory", _text, "$data_directory/log", is_path=True),
    Param("run_directory", _text, "$data_directory/run", is_path=True),
    Param("alias_maps", _text, "aliases", is_path=True),
    Param("mail_owner", _text, "mail"),
    # relay control
    Param("mynetworks", parse_networks, "127.0.0.0/8, [::1]/128"),
    Param("smtpd_relay_restrictions",
          _words("permit_mynetworks", "permit_sasl_authenticated", "reject_unauth_destination", "reject"),
          "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"),
    Param("smtpd_refused_hosts", parse_networks, ""),
    Param("smtpd_rbl_servers", parse_list, ""),
    Param("smtpd_rbl_timeout", parse_duration, "5s", 0.1, 60),
    Param("dns_resolver", parse_hostport, ""),
    Param("relayhost", parse_hostport, ""),
    # authentication
    Param("smtpd_sasl_auth_enable", parse_bool, "yes"),
    Param("smtpd_sasl_mechanisms", parse_list, "SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"),
    Param("imap_auth_methods", parse_list, "CLEAR PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256"),
    Param("pop3_auth_methods", parse_list, "CLEAR APOP PLAIN CRAM-MD5 SCRAM-SHA-256"),
    Param("disable_plaintext_auth", parse_bool, "yes"),
    Param("disable_plaintext_auth_exceptions", parse_networks, "127.0.0.0/8, [::1]/128"),
    Param("pop3_lock_session", parse_bool, "no"),
    Param("smtpd_tls_auth_only", parse_bool, "yes"),
    Param("smtpd_tls_auth_only_exceptions", parse_networks, "127.0.0.0/8, [::1]/128"),
    Param("auth_failure_delay", parse_duration, "2s", 0, 60),
    Param("auth_cache_ttl", parse_duration, "1h", 0, 7 * 86400),
    Param("auth_cache_size", _int, "1000", 0, 1_000_000),
    Param("auth_verify_threads", _int, "2", 1, 64),
    Param("auth_verify_queue_limit", _int, "32", 0, 10_000),
    Param("auth_service_timeout", parse_duration, "10s", 1, 300),
    # TLS
    Param("tls_cert_file", _text, "$data_directory/tls/cert.pem", is_path=True),
    Param("tls_key_file", _text, "$data_directory/tls/key.pem", is_path=True),
    Param("smtpd_tls_security_level", _enum("none", "may", "encrypt"), "may"),
    Param("imap_pop_tls_security_level", _enum("none", "may", "encrypt"), "may"),
    Param("smtp_tls_security_level", _enum("none", "may", "encrypt", "verify"), "may"),
    Param("smtp_tls_ca_file", _text, "", is_path=True),
    Param("smtp_tls_wrappermode", parse_bool, "no"),
    Param("smtp_sasl_auth_enable", parse_bool, "no"),
    Param("smtp_sasl_password_maps", _text, "", is_path=True),
    Param("smtpd_tls_wrappermode", parse_bool, "no"),
    Param("tls_wrappermode", parse_bool, "no"),
    # DKIM signing of our users' mail (workers/smtpd/dkim.py, mailctl dkim)
    Param("dkim_key_directory", _text, "$data_directory/dkim", is_path=True),
    Param("dkim_signing", parse_bool, "yes"),
    # limits
    Param("message_size_limit", parse_size, "10240000", 0, 2 * 1024**3),
    Param("default_quota", parse_size, "0", 0, 1024**4),
    Param("line_length_limit", _int, "2048", 998, 1024**2),
    Param("smtpd_recipient_limit", _int, "1000", 1, 100_000),
    Param("smtpd_recipient_overshoot_limit", _int, "1000", 0, 100_000),
    Param("smtpd_pregreet_delay", parse_duration, "1s", 0, 30),
    Param("smtpd_hard_error_limit", _int, "20", 1, 1000),
    Param("smtpd_timeout", parse_duration, "300s", 1, 3600),
    Param("in_flow_delay", parse_duration, "1s", 0, 10),
    Param("in_flow_queue_limit", _int, "1000", 1, 10_000_000),
    Param("smtp_connect_timeout", parse_duration, "30s", 1, 3600),
    Param("smtp_helo_timeout", parse_duration, "300s", 1, 3600),
    Param("smtp_mail_timeout", parse_duration, "300s", 1, 3600),
    Param("smtp_rcpt_timeout", parse_duration, "300s", 1, 3600),
    Param("smtp_data_init_timeout", parse_duration, "120s", 1, 3600),
    Param("smtp_data_xfer_timeout", parse_duration, "180s", 1, 3600),
    Param("smtp_data_done_timeout", parse_duration, "600s", 1, 3600),
    Param("smtp_connection_cache_time_limit", parse_duration, "2s", 0, 300),
    Param("smtp_destination_concurrency_limit", _int, "20", 1, 1000),
    Param("smtp_helo_name", _text, "$myhostname"),
    Param("imapd_timeout", parse_duration, "30m", 1, 86400),
    Param("pop3d_timeout", parse_duration, "10m", 1, 86400),
    Param("disk_min_free", parse_size, "200M", 0),
    # delivery and queue
    Param("luser_relay", _text, ""),
    Param("recipient_delimiter", _delimiters, ""),
    Param("always_bcc", _text, ""),
    Param("imap_admins", parse_list, ""),
    Param("maximal_queue_lifetime", parse_duration, "5d", 0, 100 * 86400),
    Param("minimal_backoff_time", parse_duration, "300s", 1, 7 * 86400),
    Param("maximal_backoff_time", parse_duration, "4000s", 1, 7 * 86400),
    Param("delay_warning_time", parse_duration, "4h", 0, 100 * 86400),
    Param("bounce_notice_recipient", _text, ""),
    Param("double_bounce_recipient", _text, "postmaster"),
    Param("command_time_limit", parse_duration, "1000s", 1, 86400),
    Param("default_process_limit", _int, "100", 1, 1000),
    Param("default_destination_concurrency_limit", _int, "20", 1, 1000),
    Param("qmgr_message_active_limit", _int, "20000", 1, 100_000),
    Param("mailing_lists_enabled", parse_bool, "yes"),
    # logging
    Param("log_level", _enum("low", "medium", "high"), "medium"),
    Param("log_rotate_size", parse_size, "10M", 1024, 1024**3),
    Param("log_archive_days", _int, "7", 0, 3650),
    # process management
    Param("max_use", _int, "1000", 0, 1_000_000),
    Param("max_idle", parse_duration, "100s", 0, 86400),
    Param("graceful_timeout", parse_duration, "30s", 0, 3600),
    Param("worker_hang_timeout", parse_duration, "60s", 0, 3600),
    Param("worker_client_limit", _int, "100", 1, 10_000),
    Param("stress_timeout", parse_duration, "10s", 0, 3600),
    # per-client limits, kept by the master for all workers (master/anvil.py)
    Param("smtpd_client_connection_count_limit", _int_or_empty, "", 0, 300),
    Param("smtpd_client_connection_rate_limit", _int, "0", 0, 1_000_000),
    Param("smtpd_client_auth_rate_limit", _int, "0", 0, 1_000_000),
    Param("anvil_rate_time_unit", parse_duration, "60s", 1, 86400),
    Param("smtpd_client_event_limit_exceptions", parse_networks, "$mynetworks"),
    Param("mail_max_userip_connections", _int, "10", 0, 10_000),
)

PARAM_BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}

_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def read_key_values(path: str) -> list[tuple[str, str, int]]:
    """Return (key, raw value, line number) for each setting; continuation lines join."""
    entries: list[list] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}:0: cannot read: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not entries:
                raise ConfigError(f"{path}:{number}: continuation line without a setting before it")
            entries[-1][1] += " " + line.strip()
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"\w+", key):
            raise ConfigError(f"{path}:{number}: expected `name = value`, got {line.strip()!r}")
        entries.append([key, value.strip(), number])
    return [(k, v, n) for k, v, n in entries]


class Params:
    """Typed, validated settings. Attribute access: params.message_size_limit -> int."""

    def __init__(self, raw: dict[str, str], where: dict[str, str], base_dir: str):
        self._raw = dict(raw)            # user-given raw values (before expansion)
        self._where = dict(where)        # key -> "file:line" for messages
        self.base_dir = base_dir
        self._values: dict[str, Any] = {}
        self._expanded: dict[str, str] = {}
        for p in PARAMS:
            self._values[p.name] = self._convert(p)

    # -- expansion and conversion
    def _raw_of(self, name: str) -> str:
        if name in self._raw:
            return self._raw[name]
        default = PARAM_BY_NAME[name].default
        if default == "__fqdn__":
            return _fqdn()
        if default == "__mydomain__":
            host = self.expanded("myhostname")
            return host.split(".", 1)[1] if "." in host else host
        return default

    def expanded(self, name: str, _stack: tuple[str, ...] = ()) -> str:
        if name in self._expanded:
            return self._expanded[name]
        if name in _stack:
            raise ConfigError(f"{self._where.get(name, 'main.cf:0')}: ${name} refers to itself")

        def sub(m: re.Match) -> str:
            ref = m.group(1) or m.group(2)
            if ref not in PARAM_BY_NAME:
                raise ConfigError(f"{self._where.get(name, 'main.cf:0')}: unknown parameter ${ref} in {name}")
            return self.expanded(ref, _stack + (name,))

        value = _REF.sub(sub, self._raw_of(name))
        self._expanded[name] = value
        return value

    def _convert(self, p: Param) -> Any:
        text = self.expanded(p.name)
        where = self._where.get(p.name, f"{os.path.join(self.base_dir, 'main.cf')}:0 (default)")
        try:
            value = p.parse(text)
        except ValueError as e:
            raise ConfigError(f"{where}: {p.name}: {e}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if p.minimum is not None and value < p.minimum:
                raise ConfigError(f"{where}: {p.name}: {text!r} is below the minimum {_number(p.minimum)}")
            if p.maximum is not None and value > p.maximum:
                raise ConfigError(f"{where}: {p.name}: {text!r} is above the maximum {_number(p.maximum)}")
        if p.is_path and value:
            value = os.path.normpath(os.path.join(self.base_dir, value))
        return value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str) -> Any:
        return self._values[name]

    def override(self, overrides: dict[str, str], where: str = "master.cf:0") -> "Params":
        """A copy with a service's `-o key=value` options applied and validated."""
        for key in overrides:
            if key not in PARAM_BY_NAME:
                raise ConfigError(f"{where}: -o {key}: unknown parameter")
        raw = {**self._raw, **overrides}
        here = {**self._where, **{k: where for k in overrides}}
        return Params(raw, here, self.base_dir)

    def non_default(self) -> dict[str, str]:
        """The user-given settings, for `master --check` (like `postconf -n`)."""
        return dict(self._raw)

    def as_text(self) -> str:
        """Every effective setting, one `name = value` line each."""
        return "\n".join(f"{p.name} = {self.expanded(p.name)}" for p in PARAMS)

    def to_env(self) -> dict[str, str]:
        """Raw settings to hand a worker, which rebuilds the same Params after exec."""
        return dict(self._raw)


def load_main_cf(path: str, overrides: dict[str, str] | None = None) -> Params:
    """Read and validate main.cf (a missing file means all defaults)."""
    base_dir = os.path.dirname(os.path.abspath(path))
    raw: dict[str, str] = {}
    where: dict[str, str] = {}
    for key, value, number in read_key_values(path):
        if key not in PARAM_BY_NAME:
            raise ConfigError(f"{path}:{number}: unknown parameter {key!r}")
        raw[key] = value
        where[key] = f"{path}:{number}"
    params = Params(raw, where, base_dir)
    return params.override(overrides) if overrides else params

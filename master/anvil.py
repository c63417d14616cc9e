"""Per-client limits for every worker at once (Postfix's anvil, Dovecot's auth penalty).

The master sees every connection and every login report, so the bookkeeping lives here and
holds across worker processes. Anvil(log) keeps, per service and client address:

    connection_rate_exceeded(svc, ip)   counts a connection attempt (refused ones too, as
                                        Postfix does); True over smtpd_client_connection_rate_limit
                                        attempts per anvil_rate_time_unit
    at_count_limit(svc, ip)             the client already holds smtpd_client_connection_count_limit
                                        sessions (empty: half the service's maxproc)
    opened(service, ip) / closed(...)   a session was handed over / has ended
    login(svc, ip, ok, user, user_sessions) -> (delay, refusal)
                                        a login attempt a worker reports: counted against
                                        smtpd_client_auth_rate_limit; a success of `user` is
                                        refused when the client already has user_sessions >=
                                        mail_max_userip_connections sessions of that user;
                                        delay is the client's auth penalty as it stood before
                                        this attempt, which the worker waits whatever the result
    expire()                            forgets rate windows and penalties that are over

Auth penalty (per client address, across services, as Dovecot's): each failed login doubles
the wait of the client's next login attempts, 1, 2, 4, 8, then 15 s; a successful login or
an hour without failures forgets it. Waiting before every answer, right or wrong, keeps the
answer's timing from telling the password was right.
Clients in smtpd_client_event_limit_exceptions (default $mynetworks) are never limited.
Every table is bounded (MAX_CLIENTS, oldest entry dropped first).

RefusalLog(log) writes refusals once per burst: the first refusal of a client for a limit
at once, then one line per BURST_WINDOW with the number refused meanwhile. Past
NEW_CLIENTS_LOGGED new clients in a window (a flood from many addresses), the others are
summed up together as "other clients".
Diagnostics: penalty growth (once per step) and refusal bursts, through the log callable.
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict
from typing import Callable

from master.params import Params, in_networks
from master.proto import AUTH_RATE_LIMIT, USERIP_LIMIT

PENALTY_FIRST = 1.0            # seconds after the first failure; doubles with each one
PENALTY_MAX = 15.0
PENALTY_FORGET = 3600.0        # seconds without a failure after which a client's penalty ends
BURST_WINDOW = 10.0            # seconds summed up in one refusal log line
MAX_CLIENTS = 100_000          # entries per table; a flood of addresses evicts the oldest
NEW_CLIENTS_LOGGED = 20        # first lines per service and limit and BURST_WINDOW; more are summed

Log = Callable[[str, str], None]       # (level, text)


def count_limit(params: Params, maxproc: int) -> int:
    """smtpd_client_connection_count_limit, or half the service's maxproc when it is empty."""
    limit = params.smtpd_client_connection_count_limit
    return max(1, maxproc // 2) if limit is None else limit


def penalty(failures: int) -> float:
    """Seconds a client's login attempts wait after `failures` failed logins."""
    return 0.0 if failures <= 0 else min(PENALTY_MAX, PENALTY_FIRST * 2 ** min(failures - 1, 30))


class _Windows:
    """Fixed-window event counters per key: a window opens at its first event and lasts
    `unit` seconds (Postfix's anvil_rate_time_unit)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, tuple[float, float, int]] = OrderedDict()  # key -> (start, unit, count)

    def count(self, key: tuple, unit: float, now: float) -> int:
        start, _unit, n = self.entries.get(key, (now, unit, 0))
        if now - start >= unit:
            start, n = now, 0
        if n == 0:
            self.entries.pop(key, None)      # a new window goes to the end: the order is by start
        self.entries[key] = (start, unit, n + 1)
        _bound(self.entries)
        return n + 1

    def expire(self, now: float) -> None:
        """Drop closed windows from the oldest on (one with a longer unit may hold others back)."""
        while self.entries:
            start, unit, _n = next(iter(self.entries.values()))
            if now - start < unit:
                return
            self.entries.popitem(last=False)


def _bound(table: OrderedDict) -> None:
    while len(table) > MAX_CLIENTS:
        table.popitem(last=False)


class Anvil:
    def __init__(self, log: Log, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.clock = clock
        self.open: Counter[tuple[str, str]] = Counter()             # (service, ip) -> sessions
        self.connections = _Windows()                               # (service, ip)
        self.logins = _Windows()                                    # (service, ip)
        self.penalties: OrderedDict[str, tuple[int, float]] = OrderedDict()   # ip -> (failures, last)

    @staticmethod
    def exempt(params: Params, ip: str) -> bool:
        return in_networks(ip, params.smtpd_client_event_limit_exceptions)

    # ------------------------------------------------------------------ connections
    def connection_rate_exceeded(self, svc, ip: str) -> bool:
        limit = svc.params.smtpd_client_connection_rate_limit
        if not limit or self.exempt(svc.params, ip):
            return False
        return self._count(self.connections, (svc.name, ip), svc.params) > limit

    def at_count_limit(self, svc, ip: str) -> bool:
        limit = count_limit(svc.params, svc.spec.maxproc)
        if not limit or self.exempt(svc.params, ip):
            return False
        return self.open[(svc.name, ip)] >= limit

    def opened(self, service: str, ip: str) -> None:
        self.open[(service, ip)] += 1

    def closed(self, service: str, ip: str) -> None:
        key = (service, ip)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]

    # ------------------------------------------------------------------ logins
    def login(self, svc, ip: str, ok: bool, user: str | None, user_sessions: int) -> tuple[float, str | None]:
        params = svc.params
        if self.exempt(params, ip):
            return 0.0, None
        delay = penalty(self._failures(ip))
        limit = params.smtpd_client_auth_rate_limit
        over_rate = bool(limit) and self._count(self.logins, (svc.name, ip), params) > limit
        if not ok:
            self._failed(ip)
        elif not over_rate:
            self.penalties.pop(ip, None)
        if over_rate:
            return delay, AUTH_RATE_LIMIT
        userip = params.mail_max_userip_connections
        if ok and user is not None and userip and user_sessions >= userip:
            return delay, USERIP_LIMIT
        return delay, None

    def _failures(self, ip: str) -> int:
        failures, last = self.penalties.get(ip, (0, 0.0))
        return failures if self.clock() - last < PENALTY_FORGET else 0

    def _failed(self, ip: str) -> None:
        before = self._failures(ip)
        self.penalties.pop(ip, None)
        self.penalties[ip] = (before + 1, self.clock())
        _bound(self.penalties)
        if penalty(before + 1) != penalty(before):
            self.log("M", f"client {ip}: {before + 1} failed logins; its next logins wait "
                          f"{penalty(before + 1):g} s (auth penalty)")

    # ------------------------------------------------------------------ upkeep
    def _count(self, windows: _Windows, key: tuple, params: Params) -> int:
        return windows.count(key, params.anvil_rate_time_unit, self.clock())

    def expire(self) -> None:
        now = self.clock()
        self.connections.expire(now)
        self.logins.expire(now)
        while self.penalties:
            _failures, last = next(iter(self.penalties.values()))
            if now - last < PENALTY_FORGET:
                break
            self.penalties.popitem(last=False)


class RefusalLog:
    """Refusals summed up per (service, limit, client) and burst, so a flood costs a few lines."""

    def __init__(self, log: Log, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.clock = clock
        self.bursts: OrderedDict[tuple[str, str, str | None, str], tuple[float, int]] = OrderedDict()
        self.new_clients: dict[tuple[str, str], tuple[float, int]] = {}     # (service, limit) -> window

    def note(self, service: str, limit: str, ip: str | None, what: str = "connections", why: str = "") -> None:
        """One refusal of a client (None: summed over all clients); `why` goes on the burst's
        first line."""
        key = (service, limit, ip, what)
        if key not in self.bursts and ip is not None and not self._may_name(service, limit):
            key, ip, why = (service, limit, "other clients", what), "other clients", ""
        if key in self.bursts:
            start, count = self.bursts[key]
            self.bursts[key] = (start, count + 1)
            return
        self.bursts[key] = (self.clock(), 0)
        _bound(self.bursts)
        self.log("M", f"service {service}: refusing {what}{_source(ip)} over {limit}" + (f" ({why})" if why else ""))

    def _may_name(self, service: str, limit: str) -> bool:
        """Is there room for one more client's own first line in this window?"""
        now = self.clock()
        start, named = self.new_clients.get((service, limit), (now, 0))
        if now - start >= BURST_WINDOW:
            start, named = now, 0
        self.new_clients[(service, limit)] = (start, named + 1)
        return named < NEW_CLIENTS_LOGGED

    def flush(self) -> None:
        """Sum up the bursts whose window is over; a quiet client's burst ends."""
        now = self.clock()
        while self.bursts:
            (service, limit, ip, what), (start, count) = next(iter(self.bursts.items()))
            if now - start < BURST_WINDOW:
                return
            del self.bursts[(service, limit, ip, what)]
            if count:
                self.log("M", f"service {service}: refused {count} more {what}{_source(ip)} over {limit} "
                              f"in the last {BURST_WINDOW:g} s")
                self.bursts[(service, limit, ip, what)] = (now, 0)


def _source(ip: str | None) -> str:
    return f" from {ip}" if ip else ""

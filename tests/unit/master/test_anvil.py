"""master/anvil.py on a fake clock: rate windows, count limits, the auth penalty, bursts."""
from __future__ import annotations

from types import SimpleNamespace

from master import anvil
from master.anvil import AUTH_RATE_LIMIT, USERIP_LIMIT, Anvil, RefusalLog
from master.params import Params


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def service(maxproc: int = 32, **settings) -> SimpleNamespace:
    raw = {"smtpd_client_event_limit_exceptions": "127.0.0.1/32", **settings}
    return SimpleNamespace(name="smtp", params=Params(raw, {}, "/tmp"), spec=SimpleNamespace(maxproc=maxproc))


def make() -> tuple[Anvil, Clock, list[str]]:
    clock, lines = Clock(), []
    return Anvil(lambda level, text: lines.append(text), clock), clock, lines


def test_connection_rate_counts_attempts_per_window_and_client():
    table, clock, _ = make()
    svc = service(smtpd_client_connection_rate_limit="2", anvil_rate_time_unit="10s")
    assert [table.connection_rate_exceeded(svc, "192.0.2.1") for _ in range(4)] == [False, False, True, True]
    assert not table.connection_rate_exceeded(svc, "192.0.2.2")
    assert not any(table.connection_rate_exceeded(svc, "127.0.0.1") for _ in range(5))   # exempt
    clock.now += 10
    assert not table.connection_rate_exceeded(svc, "192.0.2.1")        # a new window
    table.expire()
    assert list(table.connections.entries) == [("smtp", "192.0.2.1")]


def test_count_limit_defaults_to_half_of_maxproc():
    table, _, _ = make()
    svc = service(maxproc=6)
    for _ in range(3):
        assert not table.at_count_limit(svc, "192.0.2.1")
        table.opened("smtp", "192.0.2.1")
    assert table.at_count_limit(svc, "192.0.2.1")
    table.closed("smtp", "192.0.2.1")
    assert not table.at_count_limit(svc, "192.0.2.1")
    assert not table.at_count_limit(service(maxproc=6, smtpd_client_connection_count_limit="0"), "192.0.2.1")


def test_penalty_doubles_up_to_its_maximum_and_is_forgotten():
    table, clock, lines = make()
    svc = service()
    delays = [table.login(svc, "192.0.2.1", False, None, 0)[0] for _ in range(7)]
    assert delays == [0, 1, 2, 4, 8, 15, 15]
    assert len(lines) == 5                                 # one line per step, none at the cap
    assert table.login(svc, "192.0.2.2", False, None, 0)[0] == 0      # per client
    clock.now += anvil.PENALTY_FORGET
    table.expire()
    assert table.login(svc, "192.0.2.1", True, None, 0)[0] == 0


def test_success_waits_the_penalty_then_forgives():
    table, _, _ = make()
    svc = service()
    for _ in range(3):
        table.login(svc, "192.0.2.1", False, None, 0)
    assert table.login(svc, "192.0.2.1", True, "bob", 0) == (4, None)
    assert table.login(svc, "192.0.2.1", False, None, 0) == (0, None)


def test_auth_rate_and_user_address_limits():
    table, _, _ = make()
    svc = service(smtpd_client_auth_rate_limit="2", mail_max_userip_connections="3")
    assert table.login(svc, "192.0.2.1", True, "bob", 2) == (0, None)
    assert table.login(svc, "192.0.2.1", True, "bob", 3) == (0, USERIP_LIMIT)
    assert table.login(svc, "192.0.2.1", True, "bob", 0) == (0, AUTH_RATE_LIMIT)
    assert table.login(svc, "192.0.2.1", False, "bob", 0)[1] == AUTH_RATE_LIMIT
    assert table.login(svc, "127.0.0.1", True, "bob", 50) == (0, None)       # exempt


def test_tables_are_bounded(monkeypatch):
    monkeypatch.setattr(anvil, "MAX_CLIENTS", 3)
    table, _, _ = make()
    svc = service()
    for n in range(5):
        table.login(svc, f"192.0.2.{n}", False, None, 0)
    assert list(table.penalties) == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_refusals_are_logged_once_per_burst():
    clock, lines = Clock(), []
    log = RefusalLog(lambda level, text: lines.append(text), clock)
    for _ in range(500):
        log.note("smtp", "smtpd_client_connection_count_limit", "192.0.2.1")
    log.note("smtp", "maxproc", None, why="maxproc 2")
    clock.now += anvil.BURST_WINDOW
    log.flush()
    clock.now += anvil.BURST_WINDOW
    log.flush()                                            # a quiet window ends the burst
    log.note("smtp", "smtpd_client_connection_count_limit", "192.0.2.1")
    assert lines == [
        "service smtp: refusing connections from 192.0.2.1 over smtpd_client_connection_count_limit",
        "service smtp: refusing connections over maxproc (maxproc 2)",
        "service smtp: refused 499 more connections from 192.0.2.1 over smtpd_client_connection_count_limit "
        "in the last 10 s",
        "service smtp: refusing connections from 192.0.2.1 over smtpd_client_connection_count_limit",
    ]


def test_a_flood_from_many_addresses_is_summed_up_past_a_few_first_lines():
    clock, lines = Clock(), []
    log = RefusalLog(lambda level, text: lines.append(text), clock)
    for n in range(1000):
        log.note("smtp", "smtpd_client_connection_rate_limit", f"10.0.{n // 250}.{n % 250}")
    assert len(lines) == anvil.NEW_CLIENTS_LOGGED + 1
    assert lines[-1] == "service smtp: refusing connections from other clients over smtpd_client_connection_rate_limit"
    clock.now += anvil.BURST_WINDOW
    log.flush()
    assert lines[-1] == ("service smtp: refused 979 more connections from other clients over "
                         "smtpd_client_connection_rate_limit in the last 10 s")

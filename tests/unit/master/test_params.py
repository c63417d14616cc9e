"""main.cf: sizes, durations, $expansion, validation with file:line, -o overrides."""
from __future__ import annotations

import pytest

from master.params import ConfigError, load_main_cf, parse_duration, parse_size


@pytest.mark.parametrize("text, size", [("10240000", 10240000), ("10M", 10 * 1024**2), ("200k", 204800),
                                        ("1G", 1024**3), ("0", 0), (" 5 m ", 5 * 1024**2)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, seconds", [("300s", 300), ("300", 300), ("5m", 300), ("4h", 14400),
                                           ("5d", 432000), ("1w", 604800), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10X", "-1", "ten", "1 0M"])
def test_bad_sizes_and_durations(bad):
    with pytest.raises(ValueError):
        parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration(bad)


def _main(tmp_path, text: str):
    path = tmp_path / "main.cf"
    path.write_text(text)
    return str(path)


def test_defaults_expansion_and_paths(tmp_path):
    path = _main(tmp_path, """\
# comment
myhostname = mx.example.org
mydestination = $myhostname, ${mydomain},
    localhost
data_directory = data
message_size_limit = 20M
max_idle = 2m
""")
    params = load_main_cf(path)
    assert params.mydomain == "example.org"
    assert params.mydestination == ["mx.example.org", "example.org", "localhost"]
    assert params.smtpd_banner == "mx.example.org ESMTP mailhouse"
    assert params.data_directory == str(tmp_path / "data")
    assert params.queue_directory == str(tmp_path / "data" / "queue")
    assert params.message_size_limit == 20 * 1024**2
    assert params.max_idle == 120
    assert (params.max_use, params.worker_client_limit, params.graceful_timeout) == (1000, 100, 30)


def test_missing_main_cf_means_defaults(tmp_path):
    params = load_main_cf(str(tmp_path / "main.cf"))
    assert params.log_level == "medium" and params.disk_min_free == 200 * 1024**2


@pytest.mark.parametrize("text, line, reason", [
    ("myhostname = a.b\nno_such_key = 1\n", 2, "unknown parameter 'no_such_key'"),
    ("\n\nmessage_size_limit = big\n", 3, "message_size_limit: bad size 'big'"),
    ("smtpd_timeout = 0s\n", 1, "smtpd_timeout: '0s' is below the minimum 1"),
    ("max_use = 2000000\n", 1, "max_use: '2000000' is above the maximum 1000000"),
    ("message_size_limit = 3G\n", 1, "message_size_limit: '3G' is above the maximum 2147483648"),
    ("message_size_limit = -1\n", 1, "message_size_limit: bad size '-1'"),
    ("smtpd_recipient_limit = 100001\n", 1, "smtpd_recipient_limit: '100001' is above the maximum 100000"),
    ("smtpd_recipient_limit = -5\n", 1, "smtpd_recipient_limit: '-5' is below the minimum 1"),
    ("maximal_queue_lifetime = 1000d\n", 1, "maximal_queue_lifetime: '1000d' is above the maximum 8640000"),
    ("line_length_limit = 100\n", 1, "line_length_limit: '100' is below the minimum 998"),
    ("smtpd_pregreet_delay = 1h\n", 1, "smtpd_pregreet_delay: '1h' is above the maximum 30"),
    ("log_level = loud\n", 1, "log_level: bad value 'loud'"),
    ("mynetworks = 10.0.0.0/33\n", 1, "mynetworks: bad network '10.0.0.0/33'"),
    ("smtpd_sasl_auth_enable = perhaps\n", 1, "smtpd_sasl_auth_enable: bad boolean 'perhaps'"),
    ("myhostname = $myhostname.x\n", 1, "$myhostname refers to itself"),
    ("smtpd_banner = $nosuch\n", 1, "unknown parameter $nosuch in smtpd_banner"),
    ("just some words\n", 1, "expected `name = value`"),
])
def test_errors_name_file_and_line(tmp_path, text, line, reason):
    path = _main(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_main_cf(path)
    assert str(e.value).startswith(f"{path}:{line}: ")
    assert reason in str(e.value)


def test_overrides_apply_per_service_and_are_validated(tmp_path):
    params = load_main_cf(_main(tmp_path, "smtpd_sasl_auth_enable = no\n"))
    tls = params.override({"smtpd_tls_wrappermode": "yes", "smtpd_sasl_auth_enable": "yes"}, where="master.cf:4")
    assert (tls.smtpd_tls_wrappermode, tls.smtpd_sasl_auth_enable) == (True, True)
    assert (params.smtpd_tls_wrappermode, params.smtpd_sasl_auth_enable) == (False, False)
    assert tls.to_env()["smtpd_tls_wrappermode"] == "yes"       # what a worker gets
    with pytest.raises(ConfigError, match="master.cf:4: max_use: 'x'|master.cf:4: max_use: bad number"):
        params.override({"max_use": "x"}, where="master.cf:4")

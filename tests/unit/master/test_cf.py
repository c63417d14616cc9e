"""master.cf parsing: columns, defaults, continuation lines, -o options, errors with file:line."""
from __future__ import annotations

import pytest

from master.cf import parse_master_cf, socket_service, resolve_config_path
from master.params import ConfigError


def _write(tmp_path, text: str):
    path = tmp_path / "master.cf"
    path.write_text(text)
    return str(path)


def test_service_lines_with_comments_and_continuations(tmp_path):
    path = _write(tmp_path, """\
# service  type private unpriv chroot wakeup maxproc command
127.0.0.1:2525 inet n - n - - smtpd

[::1]:2587 inet n n n - 10 smtpd
    -o smtpd_sasl_auth_enable=yes
  # a comment inside the continuation block is skipped
    -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
qmgr unix n - n 300 1 qmgr
""")
    smtp, submission, qmgr = parse_master_cf(path)
    assert (smtp.host, smtp.port, smtp.maxproc, smtp.unpriv, smtp.module) == \
           ("127.0.0.1", 2525, 32, True, "workers.smtpd")     # maxproc - = 32
    assert smtp.where == f"{path}:2"
    assert (submission.host, submission.port, submission.maxproc, submission.unpriv) == ("::1", 2587, 10, False)
    assert submission.overrides == {"smtpd_sasl_auth_enable": "yes",
                                    "smtpd_relay_restrictions": "permit_sasl_authenticated,reject"}
    assert (qmgr.kind, qmgr.wakeup, qmgr.maxproc, qmgr.module) == ("unix", 300.0, 1, "workers.qmgr")


def test_service_names_and_dotted_modules(tmp_path):
    path = _write(tmp_path, "smtp inet n - n - - tests.integration.echo_service arg1\n")
    (spec,) = parse_master_cf(path)
    assert (spec.host, spec.port, spec.module, spec.args) == ("", 25, "tests.integration.echo_service", ["arg1"])


@pytest.mark.parametrize("line, reason", [
    ("127.0.0.1:25 inet n - n - 301 smtpd", 'field "maxproc": 301 is above the limit of 300'),
    ("127.0.0.1:25 inet n - n - 0 smtpd", 'field "maxproc": must be at least 1'),
    ("127.0.0.1:25 inet n - n - many smtpd", 'field "maxproc": bad value "many"'),
    ("127.0.0.1:25 fifo n - n - - smtpd", 'field "type": bad value "fifo"'),
    ("127.0.0.1:25 inet x - n - - smtpd", 'field "private": bad value "x"'),
    ("127.0.0.1:25 inet n - n soon - smtpd", 'field "wakeup": bad value "soon"'),
    ("127.0.0.1:70000 inet n - n - - smtpd", 'field "service": bad port "70000"'),
    ("127.0.0.1:nosuchservice inet n - n - - smtpd", 'field "service": unknown service name "nosuchservice"'),
    ("127.0.0.1:25 inet n - n - - frobd", 'field "command": unknown command "frobd"'),
    ("127.0.0.1:25 inet n - n - - smtpd -o nokey=1", "-o nokey: unknown parameter"),
    ("127.0.0.1:25 inet n - n - - smtpd -o", "-o needs key=value"),
    ("127.0.0.1:25 inet n - n -", "expected 8 or more fields"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path, f"# table\n\n{line}\n")
    with pytest.raises(ConfigError) as e:
        parse_master_cf(path)
    assert str(e.value).startswith(f"{path}:3: {reason}")


def test_duplicate_service_names_first_definition(tmp_path):
    path = _write(tmp_path, "127.0.0.1:25 inet n - n - - smtpd\n127.0.0.1:25 inet n - n - - pop3d\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: service 127.0.0.1:25 is already defined at {path}:1"):
        parse_master_cf(path)


def test_continuation_without_service_line(tmp_path):
    path = _write(tmp_path, "  -o smtpd_banner=x\n")
    with pytest.raises(ConfigError, match=rf"{path}:1: continuation line"):
        parse_master_cf(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        parse_master_cf(str(tmp_path / "nope.cf"))


def test_config_path_is_file_or_folder(tmp_path):
    assert resolve_config_path(str(tmp_path)) == (str(tmp_path / "master.cf"), str(tmp_path / "main.cf"))
    assert resolve_config_path(str(tmp_path / "other.cf")) == (str(tmp_path / "other.cf"),
                                                                str(tmp_path / "main.cf"))


def test_the_auth_service_listens_on_a_socket_and_is_unique(tmp_path):
    path = _write(tmp_path, "qmgr unix n - n 300 1 qmgr\nauth unix - n n - 1 auth\n")
    qmgr, auth = parse_master_cf(path)
    assert (auth.module, auth.unpriv, auth.listens_on_socket) == ("workers.auth", False, True)
    assert not qmgr.listens_on_socket and socket_service([qmgr, auth], "auth") is auth and socket_service([qmgr], "auth") is None
    for text, error in (("127.0.0.1:9 inet n - n - - auth\n", "auth is a unix service"),
                        ("auth unix - n n - 1 auth\nauth2 unix - n n - 1 auth\n", ":2: a second auth service"),
                        ("../x unix - n n - 1 auth\n", 'bad socket name "../x"')):
        with pytest.raises(ConfigError, match=error):
            parse_master_cf(_write(tmp_path, text))

"""mailctl init: directories, certificate, demo user, the connection summary; idempotent."""
from __future__ import annotations

from master.ctl import load_config, run
from store.handle import Store

MASTER_CF = """\
127.0.0.1:2525     inet  n       n      n      -      -       smtpd
127.0.0.1:2587     inet  n       n      n      -      -       smtpd
    -o smtpd_sasl_auth_enable=yes
    -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
127.0.0.1:2465     inet  n       n      n      -      -       smtpd -o smtpd_tls_wrappermode=yes
[::1]:1995         inet  n       n      n      -      -       pop3d -o tls_wrappermode=yes
qmgr               unix  n       n      n      300    1       qmgr
"""


def make_config(tmp_path) -> str:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("myhostname = mail.example.test\nmydomain = example.test\n"
                                 "data_directory = var\n")
    (etc / "master.cf").write_text(MASTER_CF)
    return str(etc)


def test_init_creates_the_data_directories_and_a_certificate(tmp_path, capsys):
    etc = make_config(tmp_path)
    assert run(["-c", etc, "init"]) == 0
    var = tmp_path / "etc" / "var"                   # relative to the folder of main.cf
    for name in ("queue", "store", "index", "log", "run", "tls"):
        assert (var / name).is_dir(), name
    assert (var / "queue" / "incoming").is_dir()
    assert (var / "tls" / "cert.pem").exists() and (var / "tls" / "key.pem").exists()
    out = capsys.readouterr().out
    assert "new, self-signed for mail.example.test" in out
    assert "master -c " + str(tmp_path / "etc" / "master.cf") in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ") and ":" in line.split()[1]}
    assert "SMTP" in lines["127.0.0.1:2525"] and "STARTTLS offered" in lines["127.0.0.1:2525"]
    assert "submission" in lines["127.0.0.1:2587"] and "AUTH required" in lines["127.0.0.1:2587"]
    assert "SMTPS" in lines["127.0.0.1:2465"] and "TLS from the first byte" in lines["127.0.0.1:2465"]
    assert "POP3S" in lines["[::1]:1995"]
    assert "qmgr" not in out


def test_init_twice_keeps_what_is_there(tmp_path, capsys):
    etc = make_config(tmp_path)
    assert run(["-c", etc, "init"]) == 0
    cert = (tmp_path / "etc" / "var" / "tls" / "cert.pem").read_bytes()
    capsys.readouterr()
    assert run(["-c", etc, "init"]) == 0
    assert (tmp_path / "etc" / "var" / "tls" / "cert.pem").read_bytes() == cert
    assert "cert.pem: kept" in capsys.readouterr().out


def test_init_refuses_a_bad_master_cf(tmp_path, capsys):
    etc = make_config(tmp_path)
    (tmp_path / "etc" / "master.cf").write_text("127.0.0.1:2525 inet n n n - 900 smtpd\n")
    assert run(["-c", etc, "init"]) == 1
    assert "master.cf:1:" in capsys.readouterr().err


def test_init_demo_adds_the_demo_user_once(tmp_path, capsys):
    etc = make_config(tmp_path)
    assert run(["-c", etc, "init", "--demo"]) == 0
    assert "demo / password demo (created)" in capsys.readouterr().out
    with Store.open(load_config(etc).params) as store:
        assert store.users.verify_password("demo", "demo")
    assert run(["-c", etc, "init", "--demo"]) == 0
    assert "(already there)" in capsys.readouterr().out
    with Store.open(load_config(etc).params) as store:
        assert [user.name for user in store.users.list()] == ["demo", "postmaster"]


def test_init_gives_postmaster_and_abuse_somewhere_to_go(tmp_path, capsys):
    etc = make_config(tmp_path)
    assert run(["-c", etc, "init"]) == 0
    with Store.open(load_config(etc).params) as store:
        assert store.users.get("postmaster") is not None
    aliases = (tmp_path / "etc" / "aliases").read_text()
    assert "abuse: postmaster\n" in aliases and (tmp_path / "etc" / "aliases.lmdb").exists()
    assert "account postmaster" in capsys.readouterr().out
    assert run(["-c", etc, "init"]) == 0                # twice: nothing written again
    assert (tmp_path / "etc" / "aliases").read_text() == aliases


def test_init_postmaster_option_writes_the_alias_and_keeps_the_administrators(tmp_path):
    etc = make_config(tmp_path)
    (tmp_path / "etc" / "aliases").write_text("abuse: security-team@example.org\n")
    assert run(["-c", etc, "init", "--postmaster", "alice"]) == 0
    assert (tmp_path / "etc" / "aliases").read_text() == "abuse: security-team@example.org\npostmaster: alice\n"
    with Store.open(load_config(etc).params) as store:
        assert store.users.get("postmaster") is None


def test_init_makes_no_folder_outside_data_directory_but_the_named_ones(tmp_path):
    etc = make_config(tmp_path)
    elsewhere = tmp_path / "ssl" / "private"
    with open(tmp_path / "etc" / "main.cf", "a") as f:
        f.write(f"tls_cert_file = {elsewhere}/cert.pem\ntls_key_file = {elsewhere}/key.pem\n")
    assert run(["-c", etc, "init"]) == 1
    assert not (tmp_path / "ssl").exists()

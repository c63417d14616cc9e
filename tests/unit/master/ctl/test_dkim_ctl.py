"""mailctl dkim keygen / show: key files, modes and owner, the DNS record, refusals."""
from __future__ import annotations

import base64
import json
import os
import pwd
import re
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from master.ctl import run

ZONE_LINE = re.compile(r'(\S+) IN TXT ((?:"[^"]*" ?)+)')


def setup_config(tmp_path, extra: str = "") -> str:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(f"myhostname = mail.example.test\ndata_directory = ../var\n{extra}")
    (etc / "master.cf").write_text("")
    return str(etc)


def parse_zone_line(line: str) -> tuple[str, list[str]]:
    """(owner name, [character-strings]) of a printed `NAME IN TXT "..." "..."` line."""
    match = ZONE_LINE.fullmatch(line.strip())
    assert match, line
    return match[1], re.findall(r'"([^"]*)"', match[2])


def keygen(etc: str, capsys, domain: str, *options: str) -> tuple[str, str]:
    """Run `mailctl dkim keygen`; -> (record name, TXT value as a verifier joins it)."""
    assert run(["-c", etc, "dkim", "keygen", domain, *options]) == 0
    name, strings = parse_zone_line(capsys.readouterr().out.splitlines()[-1])
    return name, "".join(strings)


def test_keygen_writes_an_owner_only_rsa_key_and_prints_its_record(tmp_path, capsys):
    etc = setup_config(tmp_path)
    assert run(["-c", etc, "dkim", "keygen", "Example.ORG."]) == 0
    out = capsys.readouterr().out.splitlines()
    path = tmp_path / "var" / "dkim" / "example.org.mail.key"
    assert out[0] == f"wrote {path} (rsa 2048); publish this DNS record:"
    name, strings = parse_zone_line(out[1])
    assert name == "mail._domainkey.example.org."
    assert all(len(s) <= 255 for s in strings) and len(strings) == 2      # 2048 bits: over 255
    value = "".join(strings)
    assert value.startswith("v=DKIM1; k=rsa; p=")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    if os.geteuid() == 0:                                  # the workers (mail_owner) read it
        owner = pwd.getpwnam("mail")
        assert (path.stat().st_uid, path.parent.stat().st_uid) == (owner.pw_uid, owner.pw_uid)
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    published = serialization.load_der_public_key(base64.b64decode(value.split("p=")[1]))
    assert published.public_numbers() == key.public_key().public_numbers()


def test_keygen_ed25519_publishes_the_raw_public_key(tmp_path, capsys):
    etc = setup_config(tmp_path)
    name, value = keygen(etc, capsys, "example.org", "--selector", "Ed2026", "--type", "ed25519")
    assert name == "ed2026._domainkey.example.org."
    key = serialization.load_pem_private_key((tmp_path / "var" / "dkim" / "example.org.ed2026.key").read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert value == f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


@pytest.mark.parametrize("args, reason", [
    (["bad_domain.example"], "bad domain 'bad_domain.example'"),
    (["localhost"], "bad domain 'localhost'"),
    (["example.org", "--selector", "a.b"], "bad selector 'a.b'"),
    (["example.org", "--selector=x-"], "bad selector 'x-'"),
    (["example.org", "--bits", "512"], "--bits 512: RSA keys must have 1024 to 4096 bits"),
    (["example.org", "--type", "ed25519", "--bits", "2048"], "--bits is for RSA keys"),
])
def test_keygen_refuses_bad_names_and_sizes_with_one_line(tmp_path, capsys, args, reason):
    etc = setup_config(tmp_path)
    assert run(["-c", etc, "dkim", "keygen", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mailctl: {reason}") and err.count("\n") == 1
    assert not (tmp_path / "var" / "dkim").exists() or not os.listdir(tmp_path / "var" / "dkim")


def test_keygen_never_replaces_a_key(tmp_path, capsys):
    etc = setup_config(tmp_path)
    keygen(etc, capsys, "example.org")
    path = tmp_path / "var" / "dkim" / "example.org.mail.key"
    before = path.read_bytes()
    assert run(["-c", etc, "dkim", "keygen", "example.org", "--type", "ed25519"]) == 1
    assert "exists" in capsys.readouterr().err and path.read_bytes() == before


def test_show_lists_keys_the_signing_one_and_records(tmp_path, capsys):
    etc = setup_config(tmp_path)
    _, old_value = keygen(etc, capsys, "example.org", "--selector", "old")
    _, new_value = keygen(etc, capsys, "example.org", "--selector", "new", "--type", "ed25519")
    _, other_value = keygen(etc, capsys, "other.example", "--type", "ed25519")
    folder = tmp_path / "var" / "dkim"
    os.utime(folder / "example.org.old.key", ns=(1, 1))          # the oldest file of a domain signs
    (folder / "broken.example.mail.key").write_text("not a key")
    (folder / "README").write_text("not a key file name: ignored")

    assert run(["-c", etc, "dkim", "show", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["domain"], r["selector"], r["type"], r["signing"]) for r in rows] == [
        ("broken.example", "mail", None, True), ("example.org", "new", "ed25519", False),
        ("example.org", "old", "rsa 2048", True), ("other.example", "mail", "ed25519", True)]
    assert rows[0]["error"] and rows[0]["record"] is None
    assert [r["record"] for r in rows[1:]] == [new_value, old_value, other_value]
    assert rows[2]["record_name"] == "old._domainkey.example.org."

    assert run(["-c", etc, "dkim", "show", "EXAMPLE.org"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("example.org new ed25519, not signing") and lines[2].startswith("example.org old rsa 2048, signing")
    assert "".join(parse_zone_line(lines[3])[1]) == old_value

    assert run(["-c", etc, "dkim", "show", "nokey.example"]) == 1
    assert capsys.readouterr().err == "mailctl: no DKIM key for nokey.example (mailctl dkim keygen nokey.example)\n"


def test_show_without_keys_is_empty(tmp_path, capsys):
    etc = setup_config(tmp_path)
    assert run(["-c", etc, "dkim", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

"""The relay hosts' password file (workers/smtp/passwords.py): Postfix's format, the order of
the keys looked up, the refusal of a file others may read, the re-read after an edit and the
last good entries kept when an edit breaks it; and `mailctl sasl-passwords check`."""
from __future__ import annotations

import json
import os

import pytest

from master.ctl import run as mailctl
from tests.fakes import FakeLog
from workers.smtp.mx import parse_nexthop
from workers.smtp.passwords import (
    MapUnusable,
    PasswordFileError,
    PasswordMap,
    check_file,
    keys_for,
    parse_passwords,
)

GOOD = """# relay hosts
[smtp.example.net]:587   alice@example.net:s3cret:with colon
[SMTP.example.net]       bob:pw two
relay.example.org\tcarol:x
[::1]:2525 dave:d
"""


def write(tmp_path, text: str, mode: int = 0o600, name: str = "sasl_passwd"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_keys_in_postfix_order():
    assert keys_for(parse_nexthop("[smtp.example.net]:587")) == ["[smtp.example.net]:587", "[smtp.example.net]",
                                                                "smtp.example.net"]
    assert keys_for(parse_nexthop("example.org")) == ["example.org:25", "example.org"]


def test_lookup_by_nexthop(tmp_path):
    passwords = PasswordMap(write(tmp_path, GOOD), FakeLog())
    assert passwords.lookup(parse_nexthop("[smtp.example.net]:587")) == ("alice@example.net", "s3cret:with colon")
    assert passwords.lookup(parse_nexthop("[smtp.example.net]:25")) == ("bob", "pw two")
    assert passwords.lookup(parse_nexthop("[relay.example.org]:465")) == ("carol", "x")
    assert passwords.lookup(parse_nexthop("[::1]:2525")) == ("dave", "d")
    assert passwords.lookup(parse_nexthop("[other.example]:25")) is None


@pytest.mark.parametrize("line, reason", [
    ("[a.example]", "no user:password"),
    ("[a.example] password-only", "must be user:password"),
    ("[a.example] :pw", "must be user:password"),
    ("  [a.example] u:p", "white space"),
    ("[a.example:25 u:p", "bad host"),
])
def test_bad_lines_name_the_file_and_line(line, reason):
    with pytest.raises(PasswordFileError, match=f"^f:2: .*{reason}"):
        parse_passwords(f"# first\n{line}\n", "f")


def test_a_duplicate_is_a_warning_and_the_first_wins():
    entries, warnings = parse_passwords("[a.example] u1:p1\n[A.example] u2:p2\n", "f")
    assert entries == {"[a.example]": ("u1", "p1")} and warnings == [
        "f:2: duplicate entry for [a.example] ignored (the first one is used)"]


def test_a_file_others_may_read_is_refused_with_a_clear_log_line(tmp_path):
    path = write(tmp_path, GOOD, 0o644)
    log = FakeLog()
    passwords = PasswordMap(path, log)
    for _ in range(2):
        with pytest.raises(MapUnusable, match="others may access it"):
            passwords.lookup(parse_nexthop("[smtp.example.net]:587"))
    assert len(log.lines) == 1 and log.lines[0].startswith(f"E smtp_sasl_password_maps {path}: refused: ")
    os.chmod(path, 0o640)                       # fixed: used at the next lookup
    assert passwords.lookup(parse_nexthop("[smtp.example.net]:587"))[0] == "alice@example.net"
    with pytest.raises(PasswordFileError, match="refused"):
        check_file(write(tmp_path, GOOD, 0o604, "other"))


def test_an_edit_is_seen_and_a_broken_edit_keeps_the_last_good_entries(tmp_path):
    path = write(tmp_path, "[a.example] u1:p1\n")
    log = FakeLog()
    passwords = PasswordMap(path, log)
    nexthop = parse_nexthop("[a.example]:25")
    assert passwords.lookup(nexthop) == ("u1", "p1")
    write(tmp_path, "[a.example]   u2:p2   \n")
    assert passwords.lookup(nexthop) == ("u2", "p2")
    write(tmp_path, "[a.example] u3:p3\nbroken\n")
    assert passwords.lookup(nexthop) == ("u2", "p2")
    assert any(":2: no user:password" in line and "stay in use" in line for line in log.lines)
    os.unlink(path)
    with pytest.raises(MapUnusable, match="No such file"):
        passwords.lookup(nexthop)
    fresh = PasswordMap(write(tmp_path, "broken\n"), FakeLog())
    with pytest.raises(MapUnusable, match="no user:password"):
        fresh.lookup(nexthop)


def test_mailctl_check(tmp_path, capsys):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "master.cf").write_text("")
    (etc / "main.cf").write_text("smtp_sasl_password_maps = sasl_passwd\n")
    write(etc, GOOD + "[smtp.example.net]:587 x:y\n")
    assert mailctl(["-c", str(etc), "sasl-passwords", "check", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0] == {"key": "[smtp.example.net]:587", "user": "alice@example.net"}
    assert "s3cret" not in out and "duplicate entry" in err
    assert mailctl(["-c", str(etc), "sasl-passwords", "check"]) == 0
    assert f"{etc / 'sasl_passwd'}: 4 entries" in capsys.readouterr().out
    bad = write(tmp_path, "x\n", 0o644, "bad")
    assert mailctl(["-c", str(etc), "sasl-passwords", "check", "--file", bad]) == 1
    assert "refused: others may access it" in capsys.readouterr().err

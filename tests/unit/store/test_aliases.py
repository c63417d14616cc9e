"""The aliases file: syntax, errors with file:line, atomic rebuilds, recursive expansion."""
from __future__ import annotations

import os
import types

import pytest

from store import aliases
from store.aliases import AliasError, AliasMap, build, map_path, parse
from store.handle import Store

SAMPLE = """\
# system aliases
postmaster: root
Root: bob,
      "|/usr/bin/procmail -a x, y",
  /var/archive/root.mbox
staff: :include:staff.list, carol@example.org
bob: bob, bob@elsewhere.example
"""


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def source(tmp_path):
    (tmp_path / "staff.list").write_text("# the staff\ndave\neve, frank\n")
    return write(tmp_path / "aliases", SAMPLE)


def test_parse_sample(source):
    entries, warnings = parse(source)
    assert warnings == []
    assert entries == {
        "postmaster": ["root"],
        "root": ["bob", "|/usr/bin/procmail -a x, y", "/var/archive/root.mbox"],
        "staff": ["dave", "eve", "frank", "carol@example.org"],
        "bob": ["bob", "bob@elsewhere.example"],
    }


@pytest.mark.parametrize("text,line,reason", [
    ("ok: a\nno colon here\n", 2, "expected `name: target"),
    ("ok: a\n\nbad: a,,b\n", 3, "empty target"),
    ("bad: a,\n", 1, "empty target"),
    ("  leading: continuation\n", 1, "continuation line"),
    ('bad: "|cmd\n', 1, "unbalanced quote"),
    ("bad: |\n", 1, "empty command"),
    ("bad: /var/dir/\n", 1, "is a folder"),
    ("bad: two words\n", 1, "bad address"),
    ("bad: a@b@c\n", 1, "bad address"),
    ("a b: c\n", 1, "expected `name: target"),
    ("bad: :include:missing.list\n", 1, "cannot read"),
    ("ok: a\nbad: :include:\n", 2, "without a file name"),
])
def test_errors_name_file_and_line(tmp_path, text, line, reason):
    path = write(tmp_path / "aliases", text)
    with pytest.raises(AliasError) as caught:
        parse(path)
    assert str(caught.value).startswith(f"{path}:{line}:") and reason in str(caught.value)


def test_error_inside_include_names_the_included_file(tmp_path):
    write(tmp_path / "inner.list", "good\nbad address\n")
    path = write(tmp_path / "aliases", "x: :include:inner.list\n")
    with pytest.raises(AliasError, match=r"inner\.list:2: bad address"):
        parse(path)


def test_include_loop_is_bounded(tmp_path):
    write(tmp_path / "self.list", ":include:self.list\n")
    path = write(tmp_path / "aliases", "x: :include:self.list\n")
    with pytest.raises(AliasError, match="nested more than"):
        parse(path)


def test_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(aliases, "MAX_LINE", 100)
    path = write(tmp_path / "aliases", "x: a\n" + "long: " + "b, " * 50 + "c\n")
    with pytest.raises(AliasError, match=r":2: entry longer than 100"):
        parse(path)
    (tmp_path / "bin").write_bytes(b"x: \xff\n")
    with pytest.raises(AliasError, match="not UTF-8"):
        parse(str(tmp_path / "bin"))


def test_overlong_names_are_refused_in_the_file_and_unknown_in_lookups(source, tmp_path):
    path = write(tmp_path / "long", "ok: a\n" + "n" * 300 + ": b\n")
    with pytest.raises(AliasError, match=r":2: alias name longer than 255 bytes"):
        parse(path)
    amap = AliasMap(build(source).target)
    assert amap.lookup("x" * 600) is None and amap.lookup("") is None    # LMDB refuses an empty key


def test_duplicate_warns_and_first_wins(tmp_path):
    path = write(tmp_path / "aliases", "a: one\nA: two\n")
    entries, warnings = parse(path)
    assert entries == {"a": ["one"]} and warnings == [f"{path}:2: duplicate alias 'a' ignored (the first one counts)"]


def test_build_and_lookup(source):
    report = build(source)
    assert report.target == map_path(source) and report.count == 4
    amap = AliasMap(report.target)
    assert amap.lookup("POSTMASTER") == ["root"] and amap.lookup("nobody") is None
    assert [n for n in os.listdir(os.path.dirname(source)) if n.startswith(".")] == []


def test_bad_file_keeps_the_previous_map(source, tmp_path):
    build(source)
    amap = AliasMap(map_path(source))
    assert amap.lookup("postmaster") == ["root"]
    before = os.stat(map_path(source)).st_ino
    write(tmp_path / "aliases", "postmaster: admin\nbroken line\n")
    with pytest.raises(AliasError, match=r"aliases:2:"):
        build(source)
    assert os.stat(map_path(source)).st_ino == before
    assert amap.lookup("postmaster") == ["root"]
    assert sorted(os.listdir(tmp_path)) == ["aliases", "aliases.lmdb", "staff.list"]


def test_open_reader_sees_the_rebuilt_map(source, tmp_path):
    build(source)
    amap = AliasMap(map_path(source))
    assert amap.lookup("postmaster") == ["root"]
    write(tmp_path / "aliases", "postmaster: admin\n")
    build(source)
    assert amap.lookup("postmaster") == ["admin"] and amap.lookup("staff") is None


def test_missing_map_means_no_aliases(tmp_path):
    assert AliasMap(str(tmp_path / "none.lmdb")).lookup("postmaster") is None


def test_the_store_reads_the_map_of_alias_maps(source):
    build(source)
    with Store.open(types.SimpleNamespace(alias_maps=source)) as store:
        assert store.aliases.lookup("Staff") == ["dave", "eve", "frank", "carol@example.org"]

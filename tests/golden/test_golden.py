"""Golden transcripts: every tests/golden/<service>/*.in played against a real master, the
transcript compared with the .ref beside it (format: tests/golden/README.md).

One master per kind of service (module scope), with the services of SERVICES on free
loopback ports and a self-signed certificate; a script names its service with `@service`
(default: the first of its kind) and creates what it needs with `@user` / `@deliver`.
No qmgr runs, so mail accepted by smtpd stays in queue/incoming, where `@queued` reads it.
With MAILHOUSE_UPDATE_GOLDEN=1 (or `--update-golden` when tests/golden is the path given
to pytest) the .ref files are rewritten instead; read the diff before committing it.
"""
from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path

import pytest

from master.params import load_main_cf
from store.handle import Store
from store.mailstore import INBOX
from store.users import User
from tests.conftest import CORPUS, MailSystem
from tests.golden.transcript import escape, normalise, parse, play, unescape

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parent
SCRIPTS = sorted(GOLDEN.glob("*/*.in"))

# service name -> its -o options; the first of a kind is the default
SERVICES: dict[str, dict[str, tuple[str, ...]]] = {
    "smtpd": {
        "smtpd": (),                                      # defaults: loopback is mynetworks
        "strict": ("-o", "mynetworks=127.0.0.1/32"),      # a client from 127.0.0.2 is a stranger
        "limits": ("-o", "smtpd_recipient_limit=2", "-o", "smtpd_recipient_overshoot_limit=1",
                   "-o", "smtpd_hard_error_limit=4", "-o", "message_size_limit=1000"),
        "tlsonly": ("-o", "smtpd_tls_auth_only_exceptions="),   # no AUTH before STARTTLS, even locally
    },
    "pop3d": {
        "pop3d": (),                                      # loopback may send passwords in clear
        "narrow": ("-o", "disable_plaintext_auth_exceptions=127.0.0.1/32"),  # 127.0.0.2 may not
    },
}


class GoldenSystem:
    """One master with the services of one kind; setup helpers for the scripts."""

    def __init__(self, root: Path, kind: str):
        self.kind = kind
        self.ms = MailSystem(root)
        for name, args in SERVICES[kind].items():
            self.ms.add_service(kind, *args, name=name)
        self.ms.write_config()
        self.ms.mailctl("tls", "selfsigned")
        self.ms.start()
        self.users: dict[str, str] = {}
        self.filled: set[str] = set()

    def describe(self, service: str) -> str:
        options = " ".join(SERVICES[self.kind][service])
        return f"{service}" + (f" ({options})" if options else "")

    def connect(self, service: str, source: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ms.port(service)), timeout=10, source_address=(source, 0))

    def store(self) -> Store:
        return Store.open(load_main_cf(str(self.ms.etc / "main.cf")))

    def add_user(self, name: str, password: str) -> None:
        if name in self.users:
            assert self.users[name] == password, f"@user {name} is given two passwords"
            return
        with self.store() as store:
            store.users.add(User(name=name), password=password)
        self.users[name] = password

    def deliver(self, user: str, names: list[str]) -> None:
        assert user not in self.filled, f"@deliver for {user} in two scripts: give each script its own user"
        self.filled.add(user)
        with self.store() as store:
            for name in names:
                store.mail.deliver(user, INBOX, (CORPUS / name).read_bytes())

    def queued(self, queue_id: str):
        with self.store() as store, store.queue.message_file(queue_id) as f:
            return store.queue.load(queue_id).envelope, f.read()

    def stop(self) -> None:
        self.ms.stop()
        self.ms.kill()


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    started: dict[str, GoldenSystem] = {}

    def get(kind: str) -> GoldenSystem:
        if kind not in started:
            started[kind] = GoldenSystem(tmp_path_factory.mktemp(f"golden-{kind}"), kind)
        return started[kind]
    yield get
    for system in started.values():
        system.stop()


def updating(config) -> bool:
    return os.environ.get("MAILHOUSE_UPDATE_GOLDEN") == "1" or bool(config.getoption("update_golden", default=False))


def test_every_kind_has_its_transcripts(request):
    counts = {kind: len(list((GOLDEN / kind).glob("*.in"))) for kind in SERVICES}
    assert counts["smtpd"] >= 15 and counts["pop3d"] >= 10, counts
    if not updating(request.config):
        assert not [s.name for s in SCRIPTS if not s.with_suffix(".ref").exists()]
        assert not [r.name for r in GOLDEN.glob("*/*.ref") if not r.with_suffix(".in").exists()]


def test_normaliser_and_escapes():
    assert normalise("S: 250 2.0.0 Ok: queued as 18EB3F0A1B2C3D4E5F6A7B") == "S: 250 2.0.0 Ok: queued as <QUEUE-ID>"
    assert normalise("M: \tfor <bob@example.test>; Wed, 5 Nov 2025 09:12:00 +0000") == \
        "M: \tfor <bob@example.test>; <DATE>"
    assert normalise("S: +OK ready <812.3141592653.1762333920@mail.example.test>") == "S: +OK ready <APOP-TIMESTAMP>"
    assert normalise("S: 2 1762333920.17") == "S: 2 <UIDVALIDITY>.17"
    assert normalise("S: 2 1234") == "S: 2 1234"                   # a LIST line stays
    assert normalise("S: 334 PDEyMzQ1LjY3ODlAbWFpbC5leGFtcGxlLnRlc3Q+") == "S: 334 <SASL-CHALLENGE>"
    assert normalise("S: 334 VXNlcm5hbWU6") == "S: 334 VXNlcm5hbWU6"     # LOGIN's fixed prompt stays
    raw = b"a\\b\r\n.\x00\xff \t"
    assert unescape(escape(raw)) == raw
    script = parse("# c\n@service strict\n@user bob pw\n@deliver 01-plain.eml\nEHLO x\n\nbody\n", "t.in")
    assert (script.service, script.users, script.deliveries) == ("strict", [("bob", "pw")], [("bob", ["01-plain.eml"])])
    assert [text for _, text in script.body] == ["EHLO x", "", "body"]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_transcript(path: Path, systems, request):
    kind = path.parent.name
    assert kind in SERVICES, f"{path}: no services for {kind!r}"
    script = parse(path.read_text(encoding="utf-8"), path.name)
    service = script.service or next(iter(SERVICES[kind]))
    assert service in SERVICES[kind], f"{path}: unknown @service {service}"
    system = systems(kind)
    for name, password in script.users:
        system.add_user(name, password)
    for user, names in script.deliveries:
        system.deliver(user, names)

    lines = play(script, kind, lambda source: system.connect(service, source),
                 system.queued if kind == "smtpd" else None)
    header = [f"# {kind}/{path.name} played by tests/golden/test_golden.py; do not edit, regenerate",
              f"# service {system.describe(service)}, client {script.source}"]
    actual = "\n".join(header + lines) + "\n"
    ref = path.with_suffix(".ref")
    if updating(request.config):
        ref.write_text(actual, encoding="utf-8")
        return
    assert ref.exists(), f"{ref} is missing: run with MAILHOUSE_UPDATE_GOLDEN=1 and read it"
    expected = ref.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"{kind}/{ref.name} (expected)", "this run"))
        pytest.fail(f"transcript differs from {kind}/{ref.name}:\n{diff}", pytrace=False)

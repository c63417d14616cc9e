"""DKIM signing (workers/smtpd/dkim.py): signatures that dkimpy verifies against the record
`mailctl dkim keygen` printed, which messages get one, key reloads and bad keys, and the
queue writer putting the signature on top of a spooled message (in memory and on disk)."""
from __future__ import annotations

import io
import os
import re

import dkim
import pytest

from master.ctl import load_config
from store.queue import SPOOL_IN_MEMORY, Envelope, Queue, Recipient
from tests.conftest import SHARED_CORPUS
from tests.fakes import FakeLog
from tests.unit.master.ctl.test_dkim_ctl import keygen, setup_config
from workers.smtpd.dkim import Signer

BASIC = SHARED_CORPUS / "messages/mikel-mail/basic_email_lf.eml"           # From: test@lindsaar.net
GMAIL = SHARED_CORPUS / "messages/mimekit/dkim-gmail.eml"                  # signed by gmail.com already
LARGE = SHARED_CORPUS / "messages/mimekit/tnef-rich-text.eml"              # 1.1 MB, From: ...@microsoft.com
RECEIVED = b"Received: from client.example ([127.0.0.1])\r\n\tby mail.example.test (mailhouse) with ESMTP; Tue, 1 Dec 2026 02:00:00 +0000\r\n"


def crlf(path) -> bytes:
    """The corpus file as smtpd spools it: CRLF line ends, its own Received: on top."""
    return RECEIVED + re.sub(rb"\r?\n", b"\r\n", path.read_bytes())


class Keys:
    """A config folder, its key directory, and the records keygen printed (the fake DNS)."""

    def __init__(self, tmp_path, capsys):
        self.etc = setup_config(tmp_path)
        self.capsys = capsys
        self.directory = os.path.join(tmp_path, "var", "dkim")
        self.records: dict[str, str] = {}
        self.log = FakeLog()
        self.signer = Signer(self.directory, self.log)

    def add(self, domain: str, *options: str) -> None:
        name, value = keygen(self.etc, self.capsys, domain, *options)
        self.records[name] = value

    def dns(self, name: bytes, timeout: float = 5) -> bytes | None:
        value = self.records.get(name.decode())
        return value.encode() if value is not None else None

    def verify(self, message: bytes) -> bool:
        return dkim.verify(message, dnsfunc=self.dns)


@pytest.fixture
def keys(tmp_path, capsys) -> Keys:
    return Keys(tmp_path, capsys)


def tags(field: bytes) -> dict[str, str]:
    value = re.sub(rb"\s+", b"", field.split(b":", 1)[1]).decode()
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


@pytest.mark.parametrize("kind, algorithm", [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")])
def test_signature_verifies_with_the_record_keygen_printed(keys, kind, algorithm):
    keys.add("lindsaar.net", "--type", kind)
    message = crlf(BASIC)
    field = keys.signer.top(io.BytesIO(message))
    assert field.startswith(b"DKIM-Signature: ") and field.endswith(b"\r\n")
    assert keys.verify(field + message)
    t = tags(field)
    assert (t["a"], t["c"], t["d"], t["s"]) == (algorithm, "relaxed/relaxed", "lindsaar.net", "mail")
    # the fields present that we sign, each once, and From once more (over-signed)
    assert sorted(t["h"].split(":")) == ["content-transfer-encoding", "content-type", "date", "from", "from",
                                         "message-id", "mime-version", "subject", "to"]
    assert keys.log.lines == [f"H DKIM-Signature d=lindsaar.net s=mail a={algorithm}"]


def test_a_from_added_after_signing_breaks_the_signature(keys):
    keys.add("lindsaar.net")
    message = crlf(BASIC)
    signed = keys.signer.top(io.BytesIO(message)) + message
    assert keys.verify(signed)
    assert not keys.verify(signed.replace(b"\r\n\r\n", b"\r\nFrom: ceo@lindsaar.net\r\n\r\n", 1))


def test_our_signature_goes_on_top_of_an_existing_one(keys):
    keys.add("gmail.com", "--type", "ed25519")
    message = crlf(GMAIL)
    field = keys.signer.top(io.BytesIO(message))
    assert message.count(b"DKIM-Signature:") == 1 and keys.verify(field + message)     # dkimpy checks the top one


@pytest.mark.parametrize("header, signed", [
    (b"From: Bob <bob@LindSaar.NET>", True),                       # domains compare case-insensitively
    (b"From: bob@mail.lindsaar.net", False),                      # exactly the domain, not below it
    (b"From: bob@lindsaar.net.example", False),
    (b"From: a@lindsaar.net, b@lindsaar.net", True),               # several authors of one domain
    (b"From: a@lindsaar.net, b@elsewhere.example", False),
    (b"From: a@lindsaar.net\r\nFrom: b@lindsaar.net", False),      # two From: fields (RFC 5322: one)
    (b"Sender: bob@lindsaar.net", False),                          # no From: at all
])
def test_only_the_from_domain_with_a_key_is_signed(keys, header, signed):
    keys.add("lindsaar.net", "--type", "ed25519")
    message = RECEIVED + header + b"\r\nSubject: s\r\n\r\nbody\r\n"
    field = keys.signer.top(io.BytesIO(message))
    assert bool(field) == signed
    if signed:
        assert keys.verify(field + message)


def test_no_key_folder_signs_nothing(keys):
    assert keys.signer.top(io.BytesIO(crlf(BASIC))) == b"" and keys.log.lines == []


def test_a_bad_key_is_logged_once_and_a_replaced_key_is_used(keys):
    keys.add("lindsaar.net", "--type", "ed25519")
    path = os.path.join(keys.directory, "lindsaar.net.mail.key")
    message = crlf(BASIC)
    assert keys.verify(keys.signer.top(io.BytesIO(message)) + message)
    with open(path, "w") as f:                       # damaged in place: the folder's mtime stays
        f.write("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    os.utime(path, ns=(1, 1))
    for _ in range(3):
        assert keys.signer.top(io.BytesIO(message)) == b""           # accepted unsigned, never an error
    warnings = [line for line in keys.log.lines if line.startswith("M ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"M warning: DKIM key {path}: cannot load it")
    os.remove(path)
    keys.add("lindsaar.net", "--type", "rsa", "--bits", "1024")      # a new file, a new record
    field = keys.signer.top(io.BytesIO(message))
    assert tags(field)["a"] == "rsa-sha256" and keys.verify(field + message)


def test_dkim_signing_no_turns_it_off(tmp_path):
    etc = setup_config(tmp_path, "dkim_signing = no\n")
    params = load_config(etc).params
    assert params.dkim_key_directory == os.path.join(tmp_path, "var", "dkim")
    assert Signer.from_params(params, FakeLog()) is None
    (tmp_path / "on").mkdir()
    assert Signer.from_params(load_config(setup_config(tmp_path / "on")).params, FakeLog()) is not None


@pytest.mark.parametrize("source", [BASIC, LARGE])
def test_the_queue_file_has_the_signature_on_top_of_the_spooled_message(keys, tmp_path, source):
    domain = {BASIC: "lindsaar.net", LARGE: "microsoft.com"}[source]
    keys.add(domain)
    queue = Queue(str(tmp_path / "queue"))
    queue.ensure_layout()
    message = crlf(source)
    assert (len(message) > SPOOL_IN_MEMORY) == (source is LARGE)      # the large one is spooled on disk
    writer = queue.writer(top=keys.signer.top)
    for i in range(0, len(message), 65536):
        writer.write(message[i:i + 65536])
    queue_id = writer.commit(Envelope("a@example.org", [Recipient("b@example.test")]))
    with queue.message_file(queue_id) as f:
        stored = f.read()
    field, rest = stored.split(b"\r\nReceived: ", 1)
    assert field.startswith(b"DKIM-Signature: ") and b"Received: " + rest == message
    assert keys.verify(stored)
    assert queue.load(queue_id).envelope.size == len(stored)

"""The real-mail corpus (../shared/corpus, 179 messages) through the whole system: every
message goes in by SMTP, and again by `sendmail`, and comes back out by POP3 RETR.

One master (smtpd, pop3d, qmgr) serves both tests; each path has its own user, and each
message its own envelope sender (corpusNNN@sender.example), so the Return-Path: of what
RETR returns says which message it is.

What must come back, octet for octet once the CRLF line ends and POP3's dot-stuffing are
undone and the trace lines delivery puts on top are removed (matched exactly, see
SMTP_TRACE and SENDMAIL_TRACE: Return-Path:, Delivered-To:, and smtpd's Received: or
pickup's Received: by ... from userid N):
- by SMTP: the message as the client sent it: LF line ends made CRLF (bare CR kept), a
  final CRLF added where the file has none, BODY=8BITMIME declared for 8-bit messages.
  smtpd changes one thing, as documented (README, line_length_limit): a line longer than
  2048 octets is broken with CRLF SP every 2047 octets after the first 2048 (three corpus
  messages have such lines). smtpd refuses none of the corpus: the largest is 3 MB, under
  message_size_limit, and neither malformed MIME, 8-bit headers, long lines nor a missing
  final line end is a reason to refuse (REFUSED is empty; a refusal must match it).
- by sendmail -i: the message with CRLF line ends, a leading mbox `From ` line removed (as
  Postfix's sendmail does: it is the envelope of a Unix mailbox, not a header), From:,
  Date: and Message-ID: added at the end of the header when missing (README, sendmail), and
  an empty line put between the header and a body that starts without one (the added
  fields must stay in the header). Long lines are kept whole.
The sizes POP3 announces (LIST and RETR's +OK) must equal the octets RETR delivers once the
dot-stuffing is undone (RFC 1939, README "Sizes and UIDs").
"""
from __future__ import annotations

import re
import smtplib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import MailSystem, shared_corpus
from tests.integration.delivery_support import queue_files, wait_queues_empty
from tests.integration.pop3d_support import RawPop
from tests.integration.smtpd_support import add_user

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MESSAGES = shared_corpus()
LINE_LENGTH_LIMIT = 2048            # main.cf default, not changed here
SMTP_USER, SENDMAIL_USER = "viasmtp", "viasendmail"
PASSWORD = "Corpus-pw-1"
HELO = "client.example"
SENDMAIL_PARALLEL = 3               # sendmail runs at once (one Python start each)

# path (relative to the corpus) -> (reply code, reply text) that smtpd must refuse it with
REFUSED: dict[str, tuple[int, bytes]] = {}

SMTP_TRACE = re.compile(
    rb"Return-Path: <(?P<sender>corpus\d{3}@sender\.example)>\r\n"
    rb"Delivered-To: viasmtp@example\.test\r\n"
    rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby mail\.example\.test \(mailhouse\) with ESMTP\r\n"
    rb"\tfor <viasmtp@example\.test>; [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n")
SENDMAIL_TRACE = re.compile(
    rb"Return-Path: <(?P<sender>corpus\d{3}@sender\.example)>\r\n"
    rb"Delivered-To: viasendmail@example\.test\r\n"
    rb"Received: by mail\.example\.test \(mailhouse, from userid \d+\)\r\n"
    rb"\tid [0-9A-F]+; [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n")
HEADER_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")      # RFC 5322 field name, then the colon
MBOX_FROM = re.compile(rb">*From ")


def sender_of(index: int) -> str:
    return f"corpus{index:03d}@sender.example"


def name_of(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# ---------------------------------------------------------------- what must come back

def crlf(raw: bytes) -> bytes:
    """A client's view: LF line ends become CRLF (a bare CR stays), the last line gets one."""
    data = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def broken_long_lines(data: bytes, limit: int = LINE_LENGTH_LIMIT) -> bytes:
    """Each line over limit octets: the first limit octets, then CRLF SP + limit-1 more, ..."""
    out = []
    for line in data.split(b"\r\n")[:-1]:
        pieces = [line[:limit]]
        pieces += [b" " + line[pos:pos + limit - 1] for pos in range(limit, len(line), limit - 1)]
        out.append(b"\r\n".join(pieces))
    return b"".join(line + b"\r\n" for line in out)


def expected_by_smtp(raw: bytes) -> bytes:
    return broken_long_lines(crlf(raw))


def expected_by_sendmail(raw: bytes, sender: str) -> tuple[bytes, bytes, list[bytes]]:
    """-> (header lines as they must come back, the rest, the fields sendmail must add)."""
    lines = [line.rstrip(b"\r") for line in raw.split(b"\n")]
    if raw.endswith(b"\n"):
        lines.pop()
    while lines and MBOX_FROM.match(lines[0]):
        lines.pop(0)
    count = 0
    while count < len(lines) and (HEADER_FIELD.match(lines[count])
                                  or (count and lines[count][:1] in (b" ", b"\t"))):
        count += 1
    header = b"".join(line + b"\r\n" for line in lines[:count])
    rest = b"".join(line + b"\r\n" for line in lines[count:])
    if not rest.startswith(b"\r\n"):
        rest = b"\r\n" + rest
    names = {HEADER_FIELD.match(line).group(0)[:-1].lower() for line in lines[:count] if HEADER_FIELD.match(line)}
    added = [field for name, field in ((b"from", b"From: " + sender.encode()),
                                       (b"date", b"Date: "), (b"message-id", b"Message-ID: <"))
             if name not in names]
    return header, rest, added


def unstuffed(wire: bytes) -> bytes:
    return b"".join(line[1:] if line.startswith(b".") else line for line in wire.splitlines(keepends=True))


def first_difference(got: bytes, want: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"{len(got)} octets, expected {len(want)}; first difference at {at}: "
            f"got {got[max(0, at - 40):at + 40]!r}, expected {want[max(0, at - 40):at + 40]!r}")


# ---------------------------------------------------------------- the system

@pytest.fixture(scope="module")
def system(tmp_path_factory):
    ms = MailSystem(tmp_path_factory.mktemp("corpus"), main={"minimal_backoff_time": "1s",
                                                              "maximal_backoff_time": "2s"})
    ms.add_service("smtpd", name="smtpd")
    ms.add_service("pop3d", name="pop3d")
    ms.add_unix_service("qmgr", wakeup=60)
    ms.write_config()
    for user in (SMTP_USER, SENDMAIL_USER):
        add_user(ms, user, PASSWORD)
    ms.start()
    yield ms
    ms.stop()
    ms.kill()


def wait_delivered(system: MailSystem, timeout: float) -> None:
    left = wait_queues_empty(system, queues=("maildrop", "incoming", "active"), timeout=timeout)
    assert not any(left.values()), f"not delivered within {timeout:.0f} s: {left}"
    assert queue_files(system, "deferred") == [] and queue_files(system, "corrupt") == [], \
        f"deferred: {queue_files(system, 'deferred')}, corrupt: {queue_files(system, 'corrupt')} (see smtp.log)"


def no_tracebacks(system: MailSystem) -> None:
    """Malformed input is stored or refused, never a crash: no worker traceback in any log."""
    for log in ("server", "smtp", "pop"):
        assert "Traceback" not in system.log(log), f"{log}.log:\n{system.log(log)[-3000:]}"


def retrieve_all(system: MailSystem, user: str, trace: re.Pattern) -> dict[str, tuple[bytes, list[str]]]:
    """POP3: every message of user -> {sender: (message without the trace lines, size problems)}."""
    pop = RawPop(system.port("pop3d"))
    try:
        assert pop.command(f"USER {user}").startswith(b"+OK")
        assert pop.command(f"PASS {PASSWORD}").startswith(b"+OK")
        assert pop.command("LIST").startswith(b"+OK")
        sizes = dict(line.split() for line in pop.multiline().splitlines())
        found: dict[str, tuple[bytes, list[str]]] = {}
        for number, size in sizes.items():
            status = pop.command(f"RETR {number.decode()}")
            assert status.startswith(b"+OK"), (number, status)
            message = unstuffed(pop.multiline())
            problems = []
            if int(size) != len(message):
                problems.append(f"LIST says {int(size)} octets, RETR gave {len(message)}")
            if status != b"+OK %d octets" % len(message):
                problems.append(f"RETR answered {status!r} for {len(message)} octets")
            m = trace.match(message)
            assert m, f"message {number.decode()} does not start with the expected trace lines: {message[:400]!r}"
            sender = m.group("sender").decode()
            assert sender not in found, f"{sender} delivered twice"
            found[sender] = (message[m.end():], problems)
        assert pop.command("QUIT").startswith(b"+OK")
        return found
    finally:
        pop.close()


# ---------------------------------------------------------------- the tests

def test_corpus_is_all_there():
    assert len(MESSAGES) == 179
    assert not [name for name in REFUSED if name not in {name_of(p) for p, _ in MESSAGES}]


def test_every_message_by_smtp_comes_back_by_pop3(system):
    sent: dict[str, Path] = {}
    refusals: list[str] = []
    with smtplib.SMTP("127.0.0.1", system.port("smtpd"), local_hostname=HELO, timeout=60) as smtp:
        smtp.ehlo()
        for index, (path, features) in enumerate(MESSAGES):
            raw = path.read_bytes()
            sender = sender_of(index)
            code, text = smtp.mail(sender, ["BODY=8BITMIME"] if "8bit" in features else [])
            assert code == 250, (name_of(path), code, text)
            code, text = smtp.rcpt(f"{SMTP_USER}@example.test")
            assert code == 250, (name_of(path), code, text)
            code, text = smtp.docmd("DATA")
            assert code == 354, (name_of(path), code, text)
            # smtplib's data() would also turn a bare CR into CRLF; send the octets ourselves
            stuffed = re.sub(rb"(?m)^\.", b"..", crlf(raw))
            smtp.send(stuffed + b".\r\n")
            code, text = smtp.getreply()
            refused = REFUSED.get(name_of(path))
            if refused:
                if (code, text) != refused:
                    refusals.append(f"{name_of(path)}: {code} {text!r}, expected the refusal {refused}")
            elif code != 250:
                refusals.append(f"{name_of(path)}: refused with {code} {text!r}")
            else:
                sent[sender] = path
    assert not refusals, "\n".join(refusals)

    wait_delivered(system, timeout=240)
    found = retrieve_all(system, SMTP_USER, SMTP_TRACE)
    assert sorted(found) == sorted(sent)
    problems = []
    for sender, path in sent.items():
        message, size_problems = found[sender]
        problems += [f"{name_of(path)}: {p}" for p in size_problems]
        want = expected_by_smtp(path.read_bytes())
        if message != want:
            problems.append(f"{name_of(path)}: {first_difference(message, want)}")
    no_tracebacks(system)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def test_every_message_by_sendmail_comes_back_by_pop3(system):
    def submit(index: int, path: Path):
        return system.tool("sendmail", "-i", "-f", sender_of(index), f"{SENDMAIL_USER}@example.test",
                           input=path.read_bytes(), check=False)

    with ThreadPoolExecutor(SENDMAIL_PARALLEL) as pool:
        results = list(pool.map(lambda item: submit(item[0], item[1][0]), enumerate(MESSAGES)))
    failed = [f"{name_of(path)}: exit {r.returncode}: {r.stderr!r}"
              for (path, _), r in zip(MESSAGES, results) if r.returncode != 0 or r.stderr]
    assert not failed, "\n".join(failed)

    wait_delivered(system, timeout=240)
    found = retrieve_all(system, SENDMAIL_USER, SENDMAIL_TRACE)
    assert sorted(found) == sorted(sender_of(i) for i in range(len(MESSAGES)))
    problems = []
    for index, (path, _) in enumerate(MESSAGES):
        message, size_problems = found[sender_of(index)]
        problems += [f"{name_of(path)}: {p}" for p in size_problems]
        header, rest, added = expected_by_sendmail(path.read_bytes(), sender_of(index))
        if not message.startswith(header):
            problems.append(f"{name_of(path)}: header: {first_difference(message[:len(header)], header)}")
            continue
        tail = message[len(header):]
        for field in added:
            if not tail.startswith(field):
                problems.append(f"{name_of(path)}: expected an added {field.split(b':')[0].decode()} "
                                f"field, got {tail[:80]!r}")
                break
            tail = tail[tail.index(b"\r\n") + 2:]
        else:
            if tail != rest:
                problems.append(f"{name_of(path)}: body: {first_difference(tail, rest)}")
    no_tracebacks(system)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)

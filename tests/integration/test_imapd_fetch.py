"""FETCH / UID FETCH against a real master (workers/imapd/fetch.py), with imaplib.

Every tests/corpus message is fetched and compared with what Python's email package reads
from the same bytes; the shared corpus is fetched whole. \\Seen by BODY[] but not PEEK, on
EXAMINE never; partial fetches; BINARY; macros; errors; the structure cache serving
ENVELOPE/BODYSTRUCTURE with the files out of the way; EXPUNGEISSUED.
"""
from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import imaplib
import os
import re

import pytest

from store.mailstore import INBOX, DeliveryRequest
from tests.conftest import CORPUS, SHARED_CORPUS, shared_corpus
from tests.integration.imapd_support import ImapSystem, imap, login

USER, PASSWORD = "alice", "pw one two"
MESSAGES = sorted(p.name for p in CORPUS.glob("*.eml"))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = ImapSystem(tmp_path_factory.mktemp("imapfetch"))
    s.add_user(USER, PASSWORD)
    store = s.store()
    try:
        store.ensure_inbox(USER)
        for name in ("Shared", "Seen", "Gone", "Cache", "Flags", "Odd", "Many"):
            store.create_mailbox(USER, name)
    finally:
        store.index.close()
    s.deliver(USER, *MESSAGES)
    yield s
    s.stop()


@pytest.fixture
def client(system):
    c = login(system.port(), USER, PASSWORD)
    yield c
    try:
        c.logout()
    except (imaplib.IMAP4.abort, OSError):
        pass


# ---- a small reader of FETCH responses ------------------------------------------------------

class Atom(str):
    pass


def _value(data: bytes, pos: int):
    while data[pos:pos + 1] == b" ":
        pos += 1
    c = data[pos:pos + 1]
    if c == b"(":
        out, pos = [], pos + 1
        while True:
            while data[pos:pos + 1] == b" ":
                pos += 1
            if data[pos:pos + 1] == b")":
                return out, pos + 1
            item, pos = _value(data, pos)
            out.append(item)
    if c == b'"':
        m = re.compile(rb'"((?:[^"\\]|\\.)*)"').match(data, pos)
        return re.sub(rb"\\(.)", rb"\1", m.group(1)), m.end()
    m = re.compile(rb"~?\{(\d+)\}\r\n").match(data, pos)
    if m:
        end = m.end() + int(m.group(1))
        return data[m.end():end], end
    m = re.compile(rb"[^ ()\[]+(?:\[[^\]]*\][^ ()]*)?").match(data, pos)
    text = m.group().decode()
    return (None if text == "NIL" else Atom(text)), m.end()


def fetched(data: list) -> dict[int, dict[str, object]]:
    """imaplib's FETCH data -> {sequence number: {item name: value}}; literal sizes must be exact."""
    blob = b"".join(d[0] + b"\r\n" + d[1] if isinstance(d, tuple) else d for d in data if d is not None)
    out, pos = {}, 0
    while pos < len(blob):
        m = re.compile(rb" *(\d+) ").match(blob, pos)
        assert m, blob[pos:pos + 80]
        items, pos = _value(blob, m.end())
        answer = out.setdefault(int(m.group(1)), {})
        answer.update({items[i]: items[i + 1] for i in range(0, len(items), 2)})
        answer.setdefault("_order", []).extend(items[::2])
    return out


def fetch(c, seqs: str, items: str, uid: bool = False) -> dict[int, dict[str, object]]:
    """FETCH, parsed; \\Recent (the session's, test_recent_is_the_first_sessions) left out of FLAGS."""
    typ, data = c.uid("FETCH", seqs, items) if uid else c.fetch(seqs, items)
    assert typ == "OK", data
    answers = fetched(data)
    for answer in answers.values():
        if "FLAGS" in answer:
            answer["FLAGS"] = [flag for flag in answer["FLAGS"] if flag != "\\Recent"]
    return answers


def command(c, *words: str) -> tuple[str, bytes]:
    """A raw command whose tagged answer is wanted, not raised: (status, text)."""
    tag = c._new_tag()
    c.send(tag + b" " + " ".join(words).encode() + b"\r\n")
    while True:
        line = c._get_line()
        literal = re.search(rb"\{(\d+)\}$", line)
        if literal:
            c.read(int(literal.group(1)))
        if line.startswith(tag + b" "):
            status, _, text = line[len(tag) + 1:].partition(b" ")
            return status.decode(), text


def settle(c) -> None:
    """NOOP, and forget the updates it brought (imaplib would hand them to the next FETCH)."""
    c.noop()
    c.untagged_responses.clear()


# ---- comparing with Python's email ------------------------------------------------------------

def s(value) -> str | None:
    return None if value is None else (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)


def leaves(msg, number: str = ""):
    """(section number, email part) of every part that has a section number of its own."""
    if msg.is_multipart():
        for i, sub in enumerate(msg.get_payload(), 1):
            n = f"{number}.{i}" if number else str(i)
            yield n, sub
            if sub.get_content_maintype() == "multipart" or sub.get_content_type() == "message/rfc822":
                yield from leaves(sub, n)
    elif msg.get_content_type() == "message/rfc822":
        inner = msg.get_payload()[0]
        if inner.is_multipart():
            yield from leaves(inner, number)
        else:
            yield f"{number}.1", inner
    elif not number:
        yield "1", msg


def check_structure(bs, msg) -> None:
    """BODYSTRUCTURE against an email.message: types, subtypes, parameters, part counts."""
    if isinstance(bs[0], list):
        children = bs[:next(i for i, x in enumerate(bs) if not isinstance(x, list))]
        subtype = bs[len(children)]
        assert msg.is_multipart()
        assert s(subtype).lower() == msg.get_content_subtype()
        params = dict(zip(*[iter(bs[len(children) + 1])] * 2))
        assert s(params.get(b"boundary")) == msg.get_boundary()
        assert len(children) == len(msg.get_payload())
        for child, sub in zip(children, msg.get_payload()):
            check_structure(child, sub)
        return
    kind = f"{s(bs[0])}/{s(bs[1])}".lower()
    assert kind == msg.get_content_type()
    for name, value in zip(*[iter(bs[2] or [])] * 2):
        expected = msg.get_param(s(name), header="content-type")
        if isinstance(expected, str):
            assert s(value) == expected
    assert s(bs[5]).lower() == (msg.get("content-transfer-encoding") or "7bit").strip().lower()
    assert s(bs[3]) == (msg.get("content-id") or None)
    if kind == "message/rfc822":
        inner = msg.get_payload()[0]
        assert s(bs[7][1]) == inner.get("subject")
        check_structure(bs[8], inner)
    disposition = msg.get("content-disposition")
    index = 11 if kind == "message/rfc822" else 9 if bs[0].lower() == b"text" else 8
    if disposition:
        assert s(bs[index][0]).lower() == msg.get_content_disposition()
        if msg.get_filename():
            assert s(dict(zip(*[iter(bs[index][1])] * 2))[b"filename"]) == msg.get_filename()
    else:
        assert bs[index] is None


def addresses(value) -> list[str]:
    return [f"{s(a[2])}@{s(a[3])}" for a in value or [] if a[3] is not None]


@pytest.mark.parametrize("name", MESSAGES)
def test_corpus_message_matches_email(system, client, name):
    raw = (CORPUS / name).read_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    seq = MESSAGES.index(name) + 1
    client.select(INBOX)
    answer = fetch(client, str(seq), "(RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER] "
                   "BODY.PEEK[TEXT] BODY.PEEK[HEADER.FIELDS (Subject Message-ID)] FLAGS)")[seq]
    assert answer["RFC822.SIZE"] == str(len(raw))
    assert answer["BODY[HEADER]"] + answer["BODY[TEXT]"] == raw
    assert email.message_from_bytes(answer["BODY[HEADER]"]).items() == msg.items()
    fields = email.message_from_bytes(answer["BODY[HEADER.FIELDS (Subject Message-ID)]"])
    assert fields.get("subject") == msg.get("subject") and fields.get("message-id") == msg.get("message-id")
    env = answer["ENVELOPE"]
    assert s(env[0]) == msg.get("date") and s(env[1]) == re.sub(r"\r?\n", "", msg.get("subject") or "")
    assert s(env[9]) == msg.get("message-id")
    assert addresses(env[2]) == [a for _, a in email.utils.getaddresses(msg.get_all("from", []))]
    assert addresses(env[5]) == [a for _, a in email.utils.getaddresses(msg.get_all("to", []))]
    check_structure(answer["BODYSTRUCTURE"], msg)
    assert answer["FLAGS"] == []
    numbers = list(leaves(msg))
    items = " ".join(f"BODY.PEEK[{n}] BODY.PEEK[{n}.MIME]" for n, part in numbers if msg.is_multipart())
    if items:
        parts = fetch(client, str(seq), f"({items})")[seq]
        for n, part in numbers:
            body, head = parts[f"BODY[{n}]"], parts[f"BODY[{n}.MIME]"]
            assert body in raw and head in raw
            assert email.message_from_bytes(head).get_content_type() == part.get_content_type()
            if not part.is_multipart():
                assert email.message_from_bytes(head + body).get_payload(decode=True) == \
                    part.get_payload(decode=True)
    assert fetch(client, str(seq), "(FLAGS)")[seq]["FLAGS"] == []


def test_shared_corpus_whole_messages(system, client):
    paths = [p for p, _ in shared_corpus()]
    store = system.store()
    try:
        uids = [store.deliver(USER, "Shared", p.read_bytes()) for p in paths]
    finally:
        store.index.close()
    client.select("Shared", readonly=True)
    answers = fetch(client, "1:*", "(RFC822.SIZE BODY[] BODYSTRUCTURE ENVELOPE)", uid=True)
    assert len(answers) == len(paths)
    for seq, (path, uid) in enumerate(zip(paths, uids), 1):
        raw = path.read_bytes()
        answer = answers[seq]
        assert answer["_order"][0] == "UID" and answer["UID"] == str(uid)
        assert answer["BODY[]"] == raw and answer["RFC822.SIZE"] == str(len(raw)), path
        assert "FLAGS" not in answer     # EXAMINE: nothing becomes \Seen
    assert all(a["FLAGS"] == [] for a in fetch(client, "1:*", "FLAGS").values())


def test_seen_by_body_not_by_peek(system, client):
    system.deliver(USER, "01-plain.eml", "03-quoted-printable.eml", "04-alternative.eml", "12-long-lines.eml",
                   mailbox="Seen")
    client.select("Seen")
    answer = fetch(client, "1", "(BODY.PEEK[] BODY.PEEK[1] RFC822.HEADER BINARY.SIZE[1])")[1]
    assert "FLAGS" not in answer
    assert fetch(client, "1", "FLAGS")[1]["FLAGS"] == []
    answer = fetch(client, "1", "BODY[TEXT]")[1]
    assert answer["FLAGS"] == ["\\Seen"]
    assert fetch(client, "1", "BODY[TEXT]")[1].keys() == {"BODY[TEXT]", "_order"}   # already \Seen
    assert fetch(client, "2", "(FLAGS RFC822)")[2]["FLAGS"] == ["\\Seen"]
    assert fetch(client, "3", "RFC822.TEXT")[3]["FLAGS"] == ["\\Seen"]
    assert fetch(client, "4", "BINARY[1]")[4]["FLAGS"] == ["\\Seen"]
    client.untagged_responses.clear()
    client.noop()                          # our own changes are not repeated as updates
    assert "FETCH" not in client.untagged_responses
    client.select("Seen", readonly=True)
    store = system.store()
    try:
        store.set_flags(USER, "Seen", [(1, 4)], "-", ["\\Seen"])
    finally:
        store.index.close()
    settle(client)
    assert "FLAGS" not in fetch(client, "1", "BODY[]")[1]
    assert fetch(client, "1:*", "FLAGS")[1]["FLAGS"] == []


def test_flags_set_through_the_store(system, client):
    system.deliver(USER, *MESSAGES[:3], mailbox="Flags")
    client.select("Flags")
    store = system.store()
    try:
        store.set_flags(USER, "Flags", [(2, 3)], "+", ["\\Flagged", "$Important"])
    finally:
        store.index.close()
    settle(client)
    answers = fetch(client, "1:3", "(FLAGS)", uid=True)
    assert answers[1]["FLAGS"] == []
    assert answers[2]["FLAGS"] == ["\\Flagged", "$Important"] == answers[3]["FLAGS"]


def test_partial_fetches(client):
    raw = (CORPUS / MESSAGES[0]).read_bytes()
    client.select(INBOX)
    answer = fetch(client, "1", "(BODY.PEEK[]<0.10> BODY.PEEK[]<10.25> BODY.PEEK[TEXT]<5.1000000> "
                   f"BODY.PEEK[]<{len(raw) + 5}.10>)")[1]
    assert answer["BODY[]<0>"] == raw[:10] and answer["BODY[]<10>"] == raw[10:35]
    assert answer["BODY[TEXT]<5>"] == raw[raw.index(b"\n\n") + 2 + 5:]
    assert answer[f"BODY[]<{len(raw) + 5}>"] == b""


def test_binary_decodes_base64_and_quoted_printable(client):
    name = "05-mixed-attachment.eml"
    msg = email.message_from_bytes((CORPUS / name).read_bytes())
    seq = MESSAGES.index(name) + 1
    client.select(INBOX)
    answer = fetch(client, str(seq), "(BINARY.PEEK[2] BINARY.SIZE[3] BINARY.PEEK[3]<0.8> BODY.PEEK[2])")[seq]
    pdf, png = (p.get_payload(decode=True) for p in msg.get_payload()[1:3])
    assert answer["BINARY[2]"] == pdf and base64.b64decode(answer["BODY[2]"]) == pdf
    assert answer["BINARY.SIZE[3]"] == str(len(png)) and answer["BINARY[3]<0>"] == png[:8]
    qp = MESSAGES.index("03-quoted-printable.eml") + 1
    decoded = email.message_from_bytes((CORPUS / MESSAGES[qp - 1]).read_bytes()).get_payload(decode=True)
    assert fetch(client, str(qp), "BINARY.PEEK[1]")[qp]["BINARY[1]"] == decoded
    assert fetch(client, str(qp), "BINARY.PEEK[9]")[qp]["BINARY[9]"] is None


def test_binary_quoted_printable_keeps_stored_line_breaks(system, client):
    """Soft line breaks and trailing blanks go; hard line breaks stay CRLF when stored so."""
    source = (CORPUS / "03-quoted-printable.eml").read_bytes()
    decoded = email.message_from_bytes(source).get_payload(decode=True)
    body = source.split(b"\n\n", 1)[1]
    assert b"=\n" in body and b"\r" not in decoded
    crlf = source.replace(b"\n", b"\r\n")
    crlf = crlf.replace(b"\r\n\r\n", b"\r\n\r\nline with blanks \t\r\nsoft =  \r\nbreak\r\n", 1)
    store = system.store()
    try:
        store.create_mailbox(USER, "Crlf")
        store.deliver(USER, "Crlf", crlf)
    finally:
        store.index.close()
    client.select("Crlf")
    answer = fetch(client, "1", "(BINARY.PEEK[1] BINARY.SIZE[1])")[1]
    expected = b"line with blanks\r\nsoft break\r\n" + decoded.replace(b"\n", b"\r\n")
    assert answer["BINARY[1]"] == expected and answer["BINARY.SIZE[1]"] == str(len(expected))


def test_uid_fetch_puts_uid_first_and_macros(client):
    client.select(INBOX)
    answers = fetch(client, "2:4", "(FLAGS RFC822.SIZE)", uid=True)
    assert sorted(answers) == [2, 3, 4]
    assert all(a["_order"] == ["UID", "FLAGS", "RFC822.SIZE"] for a in answers.values())
    assert fetch(client, "1", "(RFC822.SIZE UID)")[1]["_order"] == ["UID", "RFC822.SIZE"]
    full = fetch(client, "1", "FULL")[1]
    assert full["_order"] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
    assert re.fullmatch(r"\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d \+0000", s(full["INTERNALDATE"]))
    assert imaplib.Internaldate2tuple(b'INTERNALDATE "' + full["INTERNALDATE"] + b'"') is not None
    assert fetch(client, "1", "ALL")[1]["_order"] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert fetch(client, "1", "FAST")[1]["_order"] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert fetch(client, "1", "(BODY.PEEK[] BODY.PEEK[]<0.5> BODY.PEEK[])")[1]["_order"] == ["BODY[]", "BODY[]<0>"]


@pytest.mark.parametrize("args", ["1 (FOO)", "1 ()", "1", "1 (FLAGS (X))", "1 ALL FAST", "x FLAGS",
                                  "99 FLAGS", "1:* (\"FLAGS\")", "1 BODY[1.FOO]", "1 (BODY[HEADER.FIELDS])"])
def test_bad_requests(client, args):
    client.select(INBOX)
    status, text = command(client, "FETCH", args)
    assert status == "BAD", text


def test_uid_fetch_of_absent_uids_answers_nothing(client):
    client.select(INBOX)
    typ, data = client.uid("FETCH", "500:600", "(FLAGS)")
    assert typ == "OK" and data == [None]


def test_structure_cache_serves_without_files(system, client):
    system.deliver(USER, *MESSAGES, mailbox="Cache")
    client.select("Cache", readonly=True)
    first = fetch(client, "1:*", "(ENVELOPE BODYSTRUCTURE BODY)")
    store = system.store()
    try:
        view = store.open_mailbox(USER, "Cache")
        assert sorted(store.structures(USER, "Cache", view.view.uids())) == view.view.uids()
        paths = [view.path(seq) for seq in range(1, len(view) + 1)]
    finally:
        store.index.close()
    for path in paths:
        os.rename(path, path + ".away")
    try:
        assert fetch(client, "1:*", "(ENVELOPE BODYSTRUCTURE BODY)") == first
        status, text = command(client, "FETCH", "1:*", "(ENVELOPE BODY.PEEK[1])")
        assert (status, text.split(b"]")[0]) == ("NO", b"[EXPUNGEISSUED")
    finally:
        for path in paths:
            os.rename(path + ".away", path)


def test_message_expunged_by_another_session(system, client):
    system.deliver(USER, "01-plain.eml", "02-utf8-8bit.eml", "08-dot-lines.eml", mailbox="Gone")
    client.select("Gone")
    store = system.store()
    try:
        store.expunge(USER, "Gone", [(2, 2)], deleted_only=False)
    finally:
        store.index.close()
    status, text = command(client, "FETCH", "1:3", "(BODY.PEEK[])")
    assert status == "NO" and text.startswith(b"[EXPUNGEISSUED]")
    settle(client)
    answers = fetch(client, "1:*", "(RFC822.SIZE)")
    assert sorted(answers) == [1, 2]


def test_binary_of_an_unknown_encoding(system, client):
    path = SHARED_CORPUS / "messages/mikel-mail/content_transfer_encoding_x_uuencode.eml"
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    number = next(n for n, part in leaves(msg) if part.get("content-transfer-encoding", "").lower() == "x-uuencode")
    store = system.store()
    try:
        store.deliver(USER, "Odd", path.read_bytes())
    finally:
        store.index.close()
    client.select("Odd")
    status, text = command(client, "FETCH", "1", f"(BINARY.PEEK[{number}])")
    assert status == "NO" and text.startswith(b"[UNKNOWN-CTE]")
    assert fetch(client, "1", f"(BODY.PEEK[{number}] FLAGS)")[1]["FLAGS"] == []


def test_many_messages_in_batches(system, client):
    raws = [(CORPUS / name).read_bytes() for name in MESSAGES]
    count = 1500
    store = system.store()
    try:
        store.deliver_many([DeliveryRequest(USER, "Many", raws[i % len(raws)]) for i in range(count)])
    finally:
        store.index.close()
    client.select("Many")
    answers = fetch(client, "1:*", "(FLAGS ENVELOPE RFC822.SIZE)", uid=True)
    assert sorted(answers) == list(range(1, count + 1))
    for seq, answer in answers.items():
        raw = raws[(seq - 1) % len(raws)]
        assert answer["UID"] == str(seq) and answer["RFC822.SIZE"] == str(len(raw))
        assert s(answer["ENVELOPE"][9]) == email.message_from_bytes(raw).get("message-id")
    answers = fetch(client, "1:*", "BODY[HEADER.FIELDS (SUBJECT)]")
    assert all(a["FLAGS"] == ["\\Seen"] and a["_order"] == ["BODY[HEADER.FIELDS (SUBJECT)]", "FLAGS"]
               for a in answers.values())
    assert all(a["FLAGS"] == ["\\Seen"] for a in fetch(client, "1:*", "FLAGS").values())


def test_recent_is_the_first_sessions(system):
    system.add_user("recency", "Recent pass 1")
    system.deliver("recency", "01-plain.eml", "02-utf8-8bit.eml")
    first, second = imap(system.port()), imap(system.port())
    try:
        first.login("recency", "Recent pass 1")
        second.login("recency", "Recent pass 1")
        assert first.select("INBOX")[0] == "OK" and first.response("RECENT")[1] == [b"2"]
        assert second.select("INBOX")[0] == "OK" and second.response("RECENT")[1] == [b"0"]
        assert fetched(first.fetch("1:2", "(FLAGS)")[1])[1]["FLAGS"] == ["\\Recent"]
        assert fetched(second.fetch("1:2", "(FLAGS)")[1])[2]["FLAGS"] == []
        assert first.search(None, "RECENT") == ("OK", [b"1 2"]) and second.search(None, "NEW") == ("OK", [b""])
    finally:
        first.logout()
        second.logout()

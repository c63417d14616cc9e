"""workers/imapd/fetch.py without a server: items, the cache blob, BINARY decoding, dates."""
import base64
import calendar
import email

import pytest

from tests.conftest import CORPUS
from workers.imapd import fetch, mime
from workers.imapd.parser import NIL, Atom, Bad, Section, String


def labels(token, uid=False):
    return [item.label.decode() for item in fetch.parse_items(token, uid)]


def test_items_macros_order_and_duplicates():
    assert labels(Atom("fast")) == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert labels(Atom("FULL"), uid=True) == ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
    assert labels([Atom("flags"), Atom("UID"), Atom("FLAGS")]) == ["UID", "FLAGS"]
    assert labels([Section("BODY.PEEK"), Section("BODY")]) == ["BODY[]"]
    assert labels(Section("BODY", (1, 2), "HEADER.FIELDS", ("From", "X y"), (0, 10))) == \
        ['BODY[1.2.HEADER.FIELDS (From "X y")]<0>']
    assert labels(Section("BINARY.SIZE", (3,))) == ["BINARY.SIZE[3]"]
    assert labels(Section("BINARY.PEEK", (), partial=(5, 6))) == ["BINARY[]<5>"]


def test_items_that_set_seen():
    seen = lambda token: [i.seen for i in fetch.parse_items(token, False)]
    assert seen([Atom("RFC822"), Atom("RFC822.TEXT"), Atom("RFC822.HEADER"), Atom("BODY")]) == \
        [True, True, False, False]
    assert seen([Section("BODY"), Section("BODY.PEEK", (1,)), Section("BINARY", (1,)), Section("BINARY.PEEK", (2,)),
                 Section("BINARY.SIZE", (1,))]) == [True, False, True, False, False]
    assert seen([Section("BODY.PEEK"), Section("BODY")]) == [True]


@pytest.mark.parametrize("token", [Atom("FOO"), [], [Atom("ALL")], [[Atom("FLAGS")]], NIL, String("FLAGS"),
                                   Atom("MODSEQS")])
def test_unknown_items_are_bad(token):
    with pytest.raises(Bad):
        fetch.parse_items(token, False)


def test_section_spec_matches_mime_section():
    raw = (CORPUS / "06-nested-multipart.eml").read_bytes()
    assert fetch.section_spec((1, 2), "MIME") == "1.2.MIME"
    assert fetch.section_spec((), "HEADER.FIELDS", ("Subject",)) == "HEADER.FIELDS (Subject)"
    assert mime.section(raw, fetch.section_spec((), "HEADER.FIELDS", ("Subject",))).startswith(b"Subject:")


def test_cache_blob_round_trip_and_damage():
    raw = (CORPUS / "07-forwarded-rfc822.eml").read_bytes()
    made = fetch.Cached.compute(raw)
    back = fetch.Cached.decode(made.encode())
    assert (back.envelope, back.body, back.bodystructure) == (mime.envelope(raw), mime.bodystructure(raw, False),
                                                              mime.bodystructure(raw, True))
    assert mime.section(raw, "2.1.TEXT", back.structure) == mime.section(raw, "2.1.TEXT")
    assert fetch.Cached.decode(b"") is None
    assert fetch.Cached.decode(b"\x09" + made.encode()[1:]) is None
    assert fetch.Cached.decode(made.encode()[:20]) is None


def test_binary_decodes_like_email():
    raw = (CORPUS / "05-mixed-attachment.eml").read_bytes()
    msg = email.message_from_bytes(raw)
    structure = mime.Structure.parse(raw)
    for number, part in enumerate(msg.get_payload(), 1):
        assert fetch.binary_section(raw, (number,), structure) == part.get_payload(decode=True)
    assert fetch.binary_section(raw, (), structure) == raw
    assert fetch.binary_section(raw, (9,), structure) is None


def test_decode_transfer_rules():
    header = lambda cte: b"Content-Type: text/plain\r\nContent-Transfer-Encoding:\r\n " + cte + b"\r\n\r\n"
    data = bytes(range(256))
    assert fetch.decode_transfer(base64.encodebytes(data), header(b"BASE64")) == data
    assert fetch.decode_transfer(base64.b64encode(data)[:-2] + b"!\r\n", header(b"base64")) == data
    assert fetch.decode_transfer(b"a=3Db=\r\nc", header(b"Quoted-Printable")) == b"a=bc"
    assert fetch.decode_transfer(b"as is", b"Content-Type: text/plain\r\n\r\n") == b"as is"
    with pytest.raises(fetch.UnknownCTE):
        fetch.decode_transfer(b"begin 644 x", header(b"x-uuencode"))


def test_binary_string_uses_literal8_for_nul():
    assert fetch.binary_string(b"a\0b") == b"~{3}\r\na\0b"
    assert fetch.binary_string(b"abc") == b'"abc"'
    assert fetch.binary_string(None) == b"NIL"


def test_internal_date_format():
    assert fetch.internal_date(calendar.timegm((2026, 7, 4, 3, 5, 9))) == b'"04-Jul-2026 03:05:09 +0000"'

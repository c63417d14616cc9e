"""workers/imapd/mime.py: ENVELOPE, BODY/BODYSTRUCTURE and BODY[section] of raw messages.

Hand-written cases for each rule (RFC 3501 §6.4.5 / §7.4.2 examples), malformed and huge
input, and the whole shared corpus checked against Python's email package.
"""

import base64
import binascii
import email
import email.policy
import quopri
import time

import pytest

from tests.conftest import SHARED_CORPUS, shared_corpus
from workers.imapd import mime
from workers.imapd.mime import (
    Structure,
    bodystructure,
    envelope,
    imap_string,
    partial,
    section,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


SIMPLE = crlf("""Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US,
 John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Hello Joe, do you think we can meet at 3:30 tomorrow?
Line two.
""")

MULTI = crlf("""From: a@example.com
Subject: multi
Content-Type: multipart/mixed; boundary="XX"

preamble
--XX
Content-Type: text/plain; charset=utf-8
Content-ID: <p1@example>
Content-Description: first part

one
--XX
Content-Type: multipart/alternative; boundary=YY
Content-Disposition: inline; filename="a b.txt"
Content-Language: en, de

--YY

plain
--YY
Content-Type: text/html
Content-Location: http://example.com/x

<p>html</p>
--YY--
--XX
Content-Type: message/rfc822

From: Inner <inner@example.com>
Subject: inner
Content-Type: image/gif
Content-Transfer-Encoding: base64

R0lGODlh
--XX--
epilogue
""")


# ---- strings and ENVELOPE ----------------------------------------------------------------

def test_imap_string_quotes_escapes_and_literals():
    assert imap_string(None) == b"NIL"
    assert imap_string("") == b'""'
    assert imap_string(b'a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert imap_string("Jürgen") == b"{7}\r\nJ\xc3\xbcrgen"
    assert imap_string(b"a\r\nb") == b"{4}\r\na\r\nb"


def test_envelope_rfc3501_example():
    assert envelope(SIMPLE) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US") ("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")')


def test_envelope_nil_rules_and_own_sender_reply_to():
    assert envelope(b"\r\nbody") == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    raw = crlf("From: a@x.test\nSender: s@x.test\nReply-To: r@x.test\nSubject:\n"
               "In-Reply-To: <1@x>\n\n")
    assert envelope(raw) == (b'(NIL "" ((NIL NIL "a" "x.test")) ((NIL NIL "s" "x.test")) '
                             b'((NIL NIL "r" "x.test")) NIL NIL NIL "<1@x>" NIL)')
    # an empty Sender/Reply-To counts as absent
    assert envelope(b"From: a@x.test\nSender:\n\n").count(b'"a" "x.test"') == 3


@pytest.mark.parametrize("value, expected", [
    (b'"Joe Q. Public" <john.q.public@example.com>',
     b'(("Joe Q. Public" NIL "john.q.public" "example.com"))'),
    (b"A Group:Ed Jones <c@a.test>,joe@where.test;",
     (b'((NIL NIL "A Group" NIL) ("Ed Jones" NIL "c" "a.test") (NIL NIL "joe" "where.test") '
      b'(NIL NIL NIL NIL))')),
    (b"Undisclosed recipients:;", b'((NIL NIL "Undisclosed recipients" NIL) (NIL NIL NIL NIL))'),
    (b'"Giant; \\"Big\\" Box" <sysservices@example.net>',
     b'(("Giant; \\"Big\\" Box" NIL "sysservices" "example.net"))'),
    (b"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
     b'(("Pete" NIL "pete" "silly.test"))'),
    (b"<@a.test,@b.test:joe@c.test>", b'((NIL "@a.test,@b.test" "joe" "c.test"))'),
    (b"joe@example.com (Joe Bloggs)", b'(("Joe Bloggs" NIL "joe" "example.com"))'),
    (b'"quoted local"@example.com', b'((NIL NIL "\\"quoted local\\"" "example.com"))'),
    (b"=?utf-8?q?J=C3=BCrgen?= <j@x.test>", b'(("=?utf-8?q?J=C3=BCrgen?=" NIL "j" "x.test"))'),
    (b"J\xc3\xbcrgen <j@x.test>", b'(({7}\r\nJ\xc3\xbcrgen NIL "j" "x.test"))'),
    (b"nodomain", b'((NIL NIL "nodomain" "MISSING_DOMAIN"))'),
    (b"", b"NIL"),
    (b"<<<,,;;::@@>>>", None),
])
def test_address_lists(value, expected):
    got = envelope(b"To: " + value + b"\r\n\r\n").split(b" ", 5)[5]
    if expected is not None:
        assert got.startswith(expected + b" NIL NIL NIL NIL)")


def test_envelope_keeps_encoded_words_and_unfolds():
    raw = b"Subject: =?iso-8859-1?q?caf=E9?=\r\n  and more\r\n\r\n"
    assert envelope(raw).startswith(b'(NIL "=?iso-8859-1?q?caf=E9?=  and more" NIL')


# ---- BODY / BODYSTRUCTURE ----------------------------------------------------------------

def test_bodystructure_single_part_rfc3501_example():
    assert bodystructure(SIMPLE, extensible=False) == \
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 66 2)'
    assert bodystructure(SIMPLE) == \
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 66 2 NIL NIL NIL NIL)'


def test_bodystructure_defaults():
    assert bodystructure(b"Subject: x\n\nhi") == \
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 1 NIL NIL NIL NIL)'
    assert bodystructure(b"Content-Type: garbage\n\nhi", False) == \
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 1)'


def test_bodystructure_multipart_nested_and_message():
    inner_env = (b'(NIL "inner" (("Inner" NIL "inner" "example.com")) '
                 b'(("Inner" NIL "inner" "example.com")) (("Inner" NIL "inner" "example.com")) '
                 b'NIL NIL NIL NIL NIL)')
    assert bodystructure(MULTI) == (
        b'(("text" "plain" ("charset" "utf-8") "<p1@example>" "first part" "7bit" 3 1 '
        b'NIL NIL NIL NIL)'
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1 NIL NIL NIL NIL)'
        b'("text" "html" NIL NIL NIL "7bit" 11 1 NIL NIL NIL "http://example.com/x") '
        b'"alternative" ("boundary" "YY") ("inline" ("filename" "a b.txt")) ("en" "de") NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 119 ' + inner_env +
        b' ("image" "gif" NIL NIL NIL "base64" 8 NIL NIL NIL NIL) 6 NIL NIL NIL NIL) '
        b'"mixed" ("boundary" "XX") NIL NIL NIL)')
    assert bodystructure(MULTI, extensible=False) == (
        b'(("text" "plain" ("charset" "utf-8") "<p1@example>" "first part" "7bit" 3 1)'
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1)'
        b'("text" "html" NIL NIL NIL "7bit" 11 1) "alternative")'
        b'("message" "rfc822" NIL NIL NIL "7bit" 119 ' + inner_env +
        b' ("image" "gif" NIL NIL NIL "base64" 8) 6) "mixed")')


def test_bodystructure_rfc2231_and_digest_default():
    raw = crlf('Content-Type: multipart/digest; boundary=D\n\n--D\n\nSubject: s\n\nx\n--D--\n')
    assert b'("message" "rfc822" NIL NIL NIL "7bit" 15 (NIL "s" ' in bodystructure(raw)
    raw = (b"Content-Type: application/x; name*0*=utf-8''a%20; name*1=b\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nAAAA")
    assert bodystructure(raw, False) == \
        b'("application" "x" ("name*" "utf-8\'\'a%20b") NIL NIL "base64" 4)'


def test_bodystructure_8bit_header_becomes_literal():
    raw = b"Content-Type: text/plain; name=\"caf\xc3\xa9\"\n\nx"
    assert bodystructure(raw, False) == \
        b'("text" "plain" ("name" {5}\r\ncaf\xc3\xa9) NIL NIL "7bit" 1 1)'


# ---- sections ----------------------------------------------------------------------------

def test_sections_of_a_single_part_message():
    head, _, body = SIMPLE.partition(b"\r\n\r\n")
    assert section(SIMPLE, "") == SIMPLE
    assert section(SIMPLE, "HEADER") == head + b"\r\n\r\n"
    assert section(SIMPLE, "TEXT") == section(SIMPLE, "1") == body
    assert section(SIMPLE, "1.MIME") == head + b"\r\n\r\n"
    assert section(SIMPLE, "2") is None
    assert section(SIMPLE, "1.1") is None
    assert section(SIMPLE, "MIME") is None
    assert section(SIMPLE, "1.HEADER") is None
    assert section(SIMPLE, "bogus") is None


def test_header_fields_keep_order_folding_and_blank_line():
    assert section(SIMPLE, "HEADER.FIELDS (Subject cc FROM)") == crlf(
        "From: Terry Gray <gray@cac.washington.edu>\n"
        "Subject: IMAP4rev1 WG mtg summary and minutes\n"
        "cc: minutes@CNRI.Reston.VA.US,\n John Klensin <KLENSIN@MIT.EDU>\n\n")
    not_ = section(SIMPLE, 'HEADER.FIELDS.NOT ("To" Date Message-Id MIME-Version cc)')
    assert not_ == crlf("From: Terry Gray <gray@cac.washington.edu>\n"
                        "Subject: IMAP4rev1 WG mtg summary and minutes\n"
                        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\n")
    assert section(SIMPLE, "HEADER.FIELDS (X-None)") == b"\r\n"
    assert section(b"From: a\nTo: b\n\nx", "HEADER.FIELDS (to)") == b"To: b\n\n"


def test_sections_of_a_multipart_message():
    assert section(MULTI, "1") == b"one"
    assert section(MULTI, "1.MIME").startswith(b"Content-Type: text/plain; charset=utf-8\r\n")
    assert section(MULTI, "1.MIME").endswith(b"first part\r\n\r\n")
    assert section(MULTI, "2.1") == b"plain"
    assert section(MULTI, "2.1.MIME") == b"\r\n"
    assert section(MULTI, "2.2") == b"<p>html</p>"
    assert section(MULTI, "2.3") is None
    assert section(MULTI, "3").startswith(b"From: Inner") and section(MULTI, "3").endswith(b"h")
    assert section(MULTI, "3.HEADER").endswith(b"base64\r\n\r\n")
    assert section(MULTI, "3.TEXT") == section(MULTI, "3.1") == b"R0lGODlh"
    assert section(MULTI, "3.HEADER.FIELDS (subject)") == b"Subject: inner\r\n\r\n"
    assert section(MULTI, "3.1.MIME") == section(MULTI, "3.HEADER")
    assert section(MULTI, "3.2") is None
    assert section(MULTI, "1.TEXT") is None
    assert section(MULTI, "4") is None
    assert section(MULTI, "TEXT").startswith(b"preamble") and section(MULTI, "TEXT").endswith(
        b"epilogue\r\n")


def test_partial():
    assert partial(b"0123456789", 2, 3) == b"234"
    assert partial(b"0123456789", 8, 10) == b"89"
    assert partial(b"0123456789", 20, 10) == b""


def test_bare_lf_offsets():
    raw = MULTI.replace(b"\r\n", b"\n")
    assert section(raw, "2.2") == b"<p>html</p>"
    assert section(raw, "3.HEADER.FIELDS (subject)") == b"Subject: inner\n\n"
    assert b'"7bit" 3 1' in bodystructure(raw)


# ---- the stored form ---------------------------------------------------------------------

def test_structure_round_trip_gives_the_same_answers():
    s = Structure.parse(MULTI)
    data = s.to_bytes()
    assert len(data) < 200
    again = Structure.from_bytes(data)
    assert again.root == s.root
    assert bodystructure(MULTI, structure=again) == bodystructure(MULTI)
    assert envelope(MULTI, structure=again) == envelope(MULTI)
    assert section(MULTI, "3.1", again) == b"R0lGODlh"


# ---- malformed and huge ------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"", b"\r\n", b"no header at all", b"Content-Type: multipart/mixed\r\n\r\nno boundary",
    b"Content-Type: multipart/mixed; boundary=B\r\n\r\nno delimiter line",
    b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B--\r\n",
    b"Content-Type: multipart/mixed; boundary=\"B\r\n\r\n--B\r\nx",
    b"Content-Type: ;;;===\"\r\n(: \r\n\r\n", b"From: (((\r\nTo: \"\\\r\n\r\n",
])
def test_malformed_degrades_to_text_plain(raw):
    s = Structure.parse(raw)
    assert bodystructure(raw).startswith(b'("text" "plain" ("charset" "us-ascii")')
    envelope(raw)
    assert section(raw, "1", s) == raw[s.root.body:]


def test_empty_message_rfc822():
    for raw in (b"Content-Type: message/rfc822\r\n\r\n", b"Content-Type: message/rfc822\r\n"):
        assert bodystructure(raw, False) == (
            b'("message" "rfc822" NIL NIL NIL "7bit" 0 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 0)')
        assert section(raw, "1.HEADER") == section(raw, "1.1") == b""


def test_truncated_multipart_keeps_its_parts():
    raw = crlf("Content-Type: multipart/mixed; boundary=B\n\n--B\n\nfirst\n--B\nContent-Ty")
    assert section(raw, "1") == b"first"
    assert section(raw, "2.MIME") == b""
    assert section(raw, "2") == b"Content-Ty"


def test_doubled_delimiter_makes_no_empty_part():
    raw = crlf("Content-Type: multipart/mixed; boundary=B\n\n--B\n--B\n\nonly\n--B--\n")
    assert section(raw, "1") == b"only" and section(raw, "2") is None


def test_non_header_line_ends_the_header():
    raw = b"Subject: x\r\nthis is body\r\nmore\r\n"
    assert section(raw, "HEADER") == b"Subject: x\r\n"
    assert section(raw, "TEXT") == b"this is body\r\nmore\r\n"


def test_deep_nesting_is_cut_at_max_depth():
    levels = 500
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                   for i in range(levels)) + b"\r\ndeep\r\n"
    start = time.monotonic()
    s = Structure.parse(raw)
    depth, part = 0, s.root
    while part.children:
        part, depth = part.children[0], depth + 1
    assert depth == mime.MAX_DEPTH
    assert bodystructure(raw, structure=s).count(b"(") > mime.MAX_DEPTH
    assert section(raw, ".".join(["1"] * mime.MAX_DEPTH), s).endswith(b"deep\r\n")
    assert section(raw, ".".join(["1"] * (mime.MAX_DEPTH + 2)), s) is None
    msgs = b"Content-Type: message/rfc822\r\n\r\n" * levels + b"\r\nend"
    assert envelope(msgs) and bodystructure(msgs) and section(msgs, "1" + ".1" * 99) is not None
    assert time.monotonic() - start < 10


def test_ten_thousand_parts_within_time():
    n = mime.MAX_PARTS - 1
    raw = b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + \
        b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(n)) + \
        b"--p--\r\n"
    start = time.monotonic()
    s = Structure.parse(raw)
    assert len(s.root.children) == n
    assert bodystructure(raw, structure=s).count(b'"text" "plain"') == n
    assert section(raw, str(n), s) == b"part %d" % (n - 1)
    assert len(Structure.from_bytes(s.to_bytes()).root.children) == n
    assert time.monotonic() - start < 20
    more = raw[:-7] + b"--p\r\n\r\nx\r\n--p--\r\n"   # one part too many
    s = Structure.parse(more)
    assert len(s.root.children) == n
    assert section(more, str(n), s) == b"part %d\r\n--p\r\n\r\nx\r\n--p--\r\n" % (n - 1)


# ---- the shared corpus against Python's email ---------------------------------------------

# Where email reads a message differently from IMAP on purpose (the rule in mime.py wins):
LEGIT = {
    # the last part of a multipart without its close delimiter runs to the end of the file
    # (its final line break included); email drops that line break
    "flanker/missing-final-boundary.eml": "last part keeps its final line break",
    # message/rfc822 with Content-Transfer-Encoding base64 is a basic part for IMAP (the
    # embedded message is not readable as stored); email parses the encoded text as a message
    "mime4j/base64encoded-rfc822message.eml": "encoded message/rfc822 is a basic part",
    "mimekit/dkim-multipart-no-end-boundary.eml": "last part keeps its final line break",
    # a multipart with no delimiter line (or only a close one) is one text/plain leaf of its
    # whole body; email keeps for it the line break before the parent's next delimiter
    # (mimekit, mime4j) or cuts its close delimiter off (flanker)
    "mimekit/empty-multipart.eml": "unsplit multipart keeps no parent line break",
    "mime4j/missing-inner-boundary.eml": "unsplit multipart keeps no parent line break",
    "flanker/mailformed-headers.eml": "a lone close delimiter starts no part",
    # boundary="simple<CRLF> boundary" is unfolded to "simple boundary" (RFC 5322 §2.2.3),
    # which the delimiter lines use; email keeps the line break and splits nothing
    "mime4j/mimetools-multi-digest.eml": "folded boundary parameter is unfolded",
}


def _decode(data: bytes, cte: str) -> bytes:
    cte = cte.strip().lower()
    if cte == "base64":
        try:                                    # email too drops what is not base64
            return base64.b64decode(data)
        except binascii.Error:                  # and then mends the padding
            return base64.b64decode(data + b"==")
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    if cte in ("x-uuencode", "uuencode", "uue", "x-uue"):
        lines = data.splitlines()
        begin = next((i for i, line in enumerate(lines) if line.startswith(b"begin ")), None)
        if begin is None:                       # not uuencoded after all: as it is
            return data
        out = b""
        for line in lines[begin + 1:]:
            if line.strip() == b"end":
                break
            out += binascii.a2b_uu(line.strip() or b" ") if line.strip() != b"`" else b""
        return out
    return data


def _ours(raw: bytes, s: Structure) -> list[tuple[str, bytes | None]]:
    """(content type as IMAP serves it, decoded payload of a leaf) of every entity, in order."""
    out = []

    def walk(part, path):
        fields = mime._fields(raw, part.header, part.body)
        ctype, sub, _ = mime._content_type(fields, part.digest)
        kind = (ctype + b"/" + sub).decode().lower()
        if part.kind == mime.MULTI:
            out.append((kind, None))
            for number, child in enumerate(part.children, 1):
                walk(child, path + [number])
        elif part.kind == mime.MESSAGE:
            out.append((kind, None))
            inner = part.children[0]
            walk(inner, path if inner.kind == mime.MULTI else path + [1])
        else:
            if kind.startswith("multipart/"):
                kind = "text/plain"
            cte = (mime._get(fields, b"content-transfer-encoding") or b"").decode("latin-1")
            out.append((kind, _decode(section(raw, ".".join(map(str, path)) or "1", s), cte)))
    walk(s.root, [] if s.root.kind == mime.MULTI else [1])
    return out


def _theirs(msg) -> list[tuple[str, bytes | None]]:
    kind = msg.get_content_type()
    if kind in ("message/delivery-status", "message/disposition-notification",
                "message/feedback-report") or (kind.startswith("message/")
                                               and kind not in ("message/rfc822", "message/global")):
        # basic parts for IMAP; email splits them into header blocks: types only
        return [(kind, ...)]
    if msg.is_multipart():
        return [(kind, None)] + [x for sub in msg.get_payload() for x in _theirs(sub)]
    if kind.startswith("multipart/") or kind in ("message/rfc822", "message/global"):
        kind = "text/plain"     # a multipart email could not split: one text/plain leaf
    return [(kind, msg.get_payload(decode=True))]


CORPUS = shared_corpus()


@pytest.mark.parametrize("path", [p for p, _ in CORPUS],
                         ids=[str(p.relative_to(SHARED_CORPUS / "messages")) for p, _ in CORPUS])
def test_corpus_message_matches_email(path):
    raw = path.read_bytes()
    name = str(path.relative_to(SHARED_CORPUS / "messages"))
    s = Structure.parse(raw)
    assert Structure.from_bytes(s.to_bytes()).root == s.root
    assert envelope(raw, s).startswith(b"(") and bodystructure(raw, False, s).startswith(b"(")
    assert bodystructure(raw, True, s).count(b"(") >= 1
    assert section(raw, "HEADER", s) + section(raw, "TEXT", s) == raw
    if name in LEGIT:
        return
    ours = _ours(raw, s)
    theirs = _theirs(email.message_from_bytes(raw, policy=email.policy.compat32))
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    for (kind, mine), (_, expected) in zip(ours, theirs):
        if expected is not ...:
            assert mine == expected, kind

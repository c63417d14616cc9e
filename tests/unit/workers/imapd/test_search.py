"""workers/imapd/search.py and sort.py: the search program parser, evaluation over an index
View with corpus files, decoding, base subjects, SORT keys (DISPLAY too), ESORT's ordered sets."""
from __future__ import annotations

import calendar
from types import SimpleNamespace

import pytest

from store._index_view import RECORD
from store.index import FLAGGED, SEEN, MailboxInfo, View
from tests.conftest import CORPUS
from workers.imapd.mime import addresses
from workers.imapd.parser import NIL, Atom, Bad, Literal, String
from workers.imapd.search import (
    And,
    BodyKey,
    Budget,
    Constant,
    Content,
    DateKey,
    FlagKey,
    HeaderKey,
    Not,
    Or,
    Scope,
    SearchLimit,
    SentKey,
    SetKey,
    SizeKey,
    check_charset,
    compact_set,
    decode_words,
    esearch_line,
    evaluate,
    parse_program,
)
from workers.imapd.sort import base_subject, order, sort_keys, subject_base

FILES = ["01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml", "05-mixed-attachment.eml",
         "07-forwarded-rfc822.eml", "09-folded-headers.eml"]
DAY = 86400
JAN1 = calendar.timegm((2027, 1, 1, 0, 0, 0))


def A(*words):
    return [Atom(w) for w in words]


class FakeMailbox:
    """A MailboxView stand-in: a real View whose messages are corpus files."""

    def __init__(self, flags, dates):
        blob = b"".join(RECORD.pack(10 * (i + 1), (CORPUS / name).stat().st_size, flags[i], dates[i], 1)
                        for i, name in enumerate(FILES))
        info = MailboxInfo("u", "INBOX", 1, 1, 100, 1, len(FILES), 0, 0, False, "", ())
        self.view = View(info, blob)

    def path(self, seq):
        return str(CORPUS / FILES[seq - 1])


@pytest.fixture
def scope():
    flags = [SEEN, 0, FLAGGED, SEEN | FLAGGED, 0, SEEN]
    dates = [JAN1 + i * DAY for i in range(len(FILES))]       # 1-Jan-2027 ... 6-Jan-2027
    return Scope(FakeMailbox(flags, dates), Budget())


def run(scope, *tokens):
    return evaluate(scope, parse_program(list(tokens)))


# ---------------------------------------------------------------- parsing

def test_parse_shapes():
    assert isinstance(parse_program(A("ALL")), Constant)
    program = parse_program(A("SEEN", "LARGER", "100", "NOT", "FLAGGED"))
    assert isinstance(program, And) and len(program.children) == 3
    program = parse_program([Atom("OR"), A("SEEN"), [Atom("FROM"), String("x"), Atom("DELETED")]])
    assert isinstance(program, Or) and program.costly
    assert isinstance(parse_program(A("1:3,5")), SetKey)
    assert isinstance(parse_program(A("UID", "2:*")), SetKey)
    assert isinstance(parse_program(A("ON", "1-Feb-2027")), DateKey)
    assert isinstance(parse_program([Atom("SENTSINCE"), String("01-Feb-2027")]), SentKey)
    assert isinstance(parse_program([Atom("HEADER"), Atom("X-Mailer"), String("")]), HeaderKey)
    assert isinstance(parse_program([Atom("body"), Literal("Grüße".encode())]), BodyKey)
    assert isinstance(parse_program(A("unkeyword", "$Junk")), FlagKey)
    assert isinstance(parse_program(A("smaller", "5")), SizeKey)
    assert isinstance(parse_program(A("NOT", "NOT", "SEEN")), Not)


def test_nil_and_saved_result(scope):
    assert isinstance(parse_program([Atom("SUBJECT"), NIL]), HeaderKey)       # the string "NIL"
    assert run(scope, Atom("BODY"), NIL) == []
    scope.saved = [20, 40, 99]                                   # UIDs; 99 is not in the mailbox
    assert run(scope, Atom("$")) == [2, 4]
    assert run(scope, *A("UID", "$", "SEEN")) == [4]
    assert run(scope, *A("NOT", "$")) == [1, 3, 5, 6]


@pytest.mark.parametrize("tokens", [
    [], A("BOGUS"), A("FROM"), A("LARGER", "x"), A("LARGER", "99999999999"), A("SINCE", "1-Foo-2020"),
    A("SINCE", "31-Feb-2020"), A("BEFORE", "2020-01-01"), A("UID", "1:x"), A("0:3"), A("UID", "$x"), A("OR", "SEEN"),
    A("NOT"), [[]], [Atom("HEADER"), String("bad name"), String("x")], [Atom("KEYWORD"), String("x")],
    [Atom("SUBJECT"), Literal(b"\xff\xfe")], A(*["NOT"] * 200, "SEEN"), A(*["SEEN"] * 1001),
])
def test_parse_refuses(tokens):
    with pytest.raises(Bad) as info:
        parse_program(tokens)
    assert info.value.status == "BAD"


def test_charset():
    rev1, utf8 = SimpleNamespace(enabled=set()), SimpleNamespace(enabled={"UTF8=ACCEPT"})
    check_charset(rev1, Atom("utf-8"))
    check_charset(rev1, String("US-ASCII"))
    with pytest.raises(Bad) as info:
        check_charset(rev1, Atom("ISO-8859-1"))
    assert info.value.status == "NO" and info.value.code == "BADCHARSET (UTF-8 US-ASCII)"
    check_charset(utf8, Atom("utf-8"))
    with pytest.raises(Bad) as info:
        check_charset(utf8, Atom("US-ASCII"))      # RFC 6855 3: conflicting labels
    assert info.value.status == "BAD"


# ---------------------------------------------------------------- evaluation

def test_index_keys(scope):
    assert run(scope, Atom("ALL")) == [1, 2, 3, 4, 5, 6]
    assert run(scope, Atom("SEEN")) == [1, 4, 6]
    assert run(scope, Atom("UNSEEN"), Atom("UNFLAGGED")) == [2, 5]
    assert run(scope, Atom("NOT"), Atom("SEEN")) == [2, 3, 5]
    assert run(scope, Atom("OR"), Atom("FLAGGED"), Atom("1")) == [1, 3, 4]
    assert run(scope, *A("ON", "2-Jan-2027")) == [2]
    assert run(scope, *A("SINCE", "5-Jan-2027")) == [5, 6]
    assert run(scope, *A("BEFORE", "2-Jan-2027")) == [1]
    assert run(scope, *A("UID", "20:30,60")) == [2, 3, 6]
    assert run(scope, *A("2,4:*")) == [2, 4, 5, 6]
    assert run(scope, *A("5:99")) == [5, 6]                   # beyond the snapshot: nothing more
    assert run(scope, Atom("RECENT")) == run(scope, Atom("NEW")) == []
    assert run(scope, Atom("OLD")) == [1, 2, 3, 4, 5, 6]
    assert run(scope, *A("KEYWORD", "$Junk")) == []
    assert run(scope, *A("UNKEYWORD", "$Junk")) == [1, 2, 3, 4, 5, 6]
    sizes = [(CORPUS / name).stat().st_size for name in FILES]
    size = sizes[3]
    assert run(scope, *A("LARGER", str(size - 1))) == [s for s in range(1, 7) if sizes[s - 1] >= size]
    assert run(scope, *A("SMALLER", str(size))) == [s for s in range(1, 7) if sizes[s - 1] < size]
    assert run(scope, *A("SMALLER", str(size), "LARGER", str(size - 2))) == []


def test_content_keys(scope):
    assert run(scope, Atom("SUBJECT"), String("grüße aus köln")) == [2]           # RFC 2047 Q, UTF-8
    assert run(scope, Atom("SUBJECT"), String("angebote für")) == [3]             # ISO-8859-1
    assert run(scope, Atom("FROM"), String("Jürgen Müller <jurgen")) == [2]
    assert run(scope, Atom("TO"), String("bob keller <BOB@")) == [1, 5]
    assert run(scope, Atom("CC"), String("grace ho")) == [6]
    assert run(scope, Atom("BODY"), String("/Type /Catalog")) == [4]              # inside base64 PDF
    assert run(scope, Atom("BODY"), String("Minutes of Friday")) == []            # header, not body
    assert run(scope, Atom("TEXT"), String("Minutes of Friday")) == [1]
    assert run(scope, Atom("BODY"), String("Facility Management")) == [5]         # embedded header
    assert run(scope, Atom("HEADER"), String("Message-ID"), String("inv-2026-1187")) == [4]
    assert run(scope, *A("SENTON", "16-Nov-2026")) == [1]
    assert run(scope, *A("SENTBEFORE", "18-Nov-2026")) == [1, 2]
    assert run(scope, *A("SENTSINCE", "24-Nov-2026")) == [6]
    assert run(scope, Atom("SEEN"), Atom("NOT"), Atom("BODY"), String("invoice")) == [1, 6]
    assert run(scope, Atom("OR"), Atom("FLAGGED"), Atom("SUBJECT"), String("fwd:")) == [3, 4, 5]


def test_only_candidates_are_read(scope, monkeypatch):
    opened = []
    original = Content.head
    monkeypatch.setattr(Content, "head", lambda self: opened.append(self.path) or original(self))
    assert run(scope, Atom("FLAGGED"), Atom("FROM"), String("billing")) == [4]
    assert sorted(p.rsplit("/", 1)[1] for p in opened) == [FILES[2], FILES[3]]


def test_budget(scope):
    scope.budget = Budget(octets=100)
    with pytest.raises(SearchLimit):
        run(scope, Atom("BODY"), String("x"))


def test_decoding():
    assert decode_words("=?UTF-8?B?R3LDvMOfZQ==?=\n =?UTF-8?Q?_zur=C3=BCck?=") == "Grüße zurück"
    assert decode_words("=?x-unknown?Q?abc?=") == "=?x-unknown?Q?abc?="
    content = Content(str(CORPUS / "03-quoted-printable.eml"), Budget())
    assert "für" in "".join(content.body_texts())


def test_esearch_line():
    assert compact_set([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert compact_set([5, 6, 2, 3, 4, 1]) == "5:6,2:4,1"        # a sort order survives
    assert esearch_line("A1", True, [2, 3, 9], ["MIN", "MAX", "COUNT", "ALL"]) == \
        'ESEARCH (TAG "A1") UID MIN 2 MAX 9 COUNT 3 ALL 2:3,9'
    assert esearch_line("A2", False, [], ["MIN", "COUNT", "ALL"]) == 'ESEARCH (TAG "A2") COUNT 0'


# ---------------------------------------------------------------- sort

@pytest.mark.parametrize("subject, base", [
    ("Re: hello", "hello"), ("RE: Re: Fwd: hello (fwd)", "hello"), ("[dev] Re: [dev] plan", "plan"),
    ("  Fw:   spaced\tout  ", "spaced out"), ("[Fwd: Re: inner]", "inner"), ("[only blob]", "[only blob]"),
    ("Re:", ""), ("Re [x]: topic (fwd) (FWD)", "topic"),
])
def test_base_subject(subject, base):
    assert base_subject(subject) == base


def test_sort(scope):
    everything = [1, 2, 3, 4, 5, 6]
    assert order(scope.mailbox, everything, sort_keys(A("REVERSE", "ARRIVAL")), Budget()) == [6, 5, 4, 3, 2, 1]
    by_date = order(scope.mailbox, everything, sort_keys(A("DATE")), Budget())
    assert by_date == [1, 2, 3, 4, 5, 6]          # the corpus's Date: headers are in file order
    by_subject = order(scope.mailbox, everything, sort_keys(A("SUBJECT")), Budget())
    assert by_subject[0] == 5                     # "Fwd: Building access cards"
    alice = sorted([1, 5], key=lambda s: -(CORPUS / FILES[s - 1]).stat().st_size)
    # local parts: alice alice billing eve jurgen newsletter
    assert order(scope.mailbox, everything, sort_keys(A("FROM", "REVERSE", "SIZE")), Budget()) == \
        alice + [4, 6, 2, 3]
    assert order(scope.mailbox, [2, 4], sort_keys(A("REVERSE", "FROM")), Budget()) == [2, 4]
    for bad in ([], A("REVERSE"), A("BOGUS"), A("REVERSE", "REVERSE", "SIZE"), Atom("SIZE")):
        with pytest.raises(Bad):
            sort_keys(bad)


@pytest.mark.parametrize("subject, base, reply", [
    ("hello", "hello", False), ("[list] hello", "hello", False), ("Re: hello", "hello", True),
    ("hello (fwd)", "hello", True), ("[Fwd: hello]", "hello", True), ("Ad: Re: x", "Ad: Re: x", False),
])
def test_subject_base_marks_replies(subject, base, reply):
    assert subject_base(subject) == (base, reply)


def test_first_addresses():
    # a group's start is an address whose mailbox is the group's name (as in the ENVELOPE)
    assert addresses(b"user2: blah@domain1.org;")[0] == (None, None, b"user2", None)
    assert addresses(b"user2@domain2.org (foo bar)")[0] == (b"foo bar", None, b"user2", b"domain2.org")
    assert addresses(b"undisclosed-recipients:;") == [(None, None, b"undisclosed-recipients", None),
                                                      (None, None, None, None)]


def test_sort_display_and_esort_order(scope):
    everything = [1, 2, 3, 4, 5, 6]
    # alice martin (1, 5), eve lindqvist, jürgen müller (RFC 2047), shop example, supplier billing
    assert order(scope.mailbox, everything, sort_keys(A("DISPLAYFROM")), Budget()) == [1, 5, 6, 2, 3, 4]
    # REVERSE applies to its key only: the tied 1 and 5 stay in sequence order
    assert order(scope.mailbox, everything, sort_keys(A("REVERSE", "DISPLAYFROM")), Budget()) == [4, 3, 2, 6, 1, 5]
    assert order(scope.mailbox, everything, sort_keys(A("DISPLAYTO")), Budget())[-1] == 6    # "development ..."
    assert esearch_line("S", False, [5, 6, 1, 2], ["MIN", "MAX", "ALL"]) == 'ESEARCH (TAG "S") MIN 5 MAX 2 ALL 5:6,1:2'

"""imapd's SEARCH, UID SEARCH, ESEARCH (RFC 4731 RETURN) and SORT through the real master.

A mailbox of corpus messages with known internal dates and flags set through the store;
every search key at least once (flags, keywords, sizes, internal and Date: dates, sequence
and UID sets, address and subject headers with RFC 2047 words, BODY inside base64 and
quoted-printable parts, TEXT, HEADER), NOT/OR nesting and parentheses, CHARSET (UTF-8
literals; an unknown charset answers NO [BADCHARSET]), BAD for unknown keys and malformed
arguments, the ESEARCH forms, SEARCHRES (`$`), SORT/UID SORT with REVERSE, header and
DISPLAY keys, ESORT, and THREAD/UID THREAD (both algorithms) over a mailbox `Threads` of
corpus messages, some turned into replies of others by their Message-ID/In-Reply-To/
References/Subject fields.
"""
from __future__ import annotations

import calendar

import imapclient
import pytest

from store.mailstore import INBOX
from tests.conftest import CORPUS
from tests.integration.imapd_support import ImapSystem, Raw

pytestmark = pytest.mark.integration
PASSWORD = "Search pass 1"
USER = "searcher"
FILES = ["01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml", "04-alternative.eml",
         "05-mixed-attachment.eml", "07-forwarded-rfc822.eml", "09-folded-headers.eml", "11-vacation-reply.eml"]
NOON = calendar.timegm((2027, 1, 1, 12, 0, 0))     # message n arrived on n-Jan-2027 at noon UTC
THREADS = "Threads"
PRINTER_ID = b"<6b7e2c1d-1f3a-4c55-8e0e-2d9b7a4f5c60@example.test>"      # 04-alternative.eml's


def reply(name: str, message_id: bytes, parents: bytes, subject: bytes) -> bytes:
    """A corpus message turned into a reply: a new Message-ID, References and Subject."""
    lines = (CORPUS / name).read_bytes().split(b"\n")
    head = [line for line in lines[:lines.index(b"")] if not line.lower().startswith((b"message-id:", b"subject:"))]
    fields = [b"Message-ID: " + message_id, b"References: " + parents, b"Subject: " + subject]
    return b"\n".join(fields + head + lines[lines.index(b""):])


# seq (UID): 1 (2) printer contract, 19 Nov; 2 (3) its reply, 16 Nov; 3 (4) a reply to both, 17 Nov;
# 4 (5) the vacation reply, 25 Nov; 5 (6) the folded Re: [dev] one, 24 Nov; 6 (7) Fwd: Building, 22 Nov
THREAD_MESSAGES = [
    (CORPUS / "03-quoted-printable.eml").read_bytes(),             # expunged
    (CORPUS / "04-alternative.eml").read_bytes(),
    reply("01-plain.eml", b"<r1@example.org>", PRINTER_ID, b"Re: Printer contract: two offers"),
    reply("02-utf8-8bit.eml", b"<r2@example.de>", PRINTER_ID + b" <r1@example.org>",
          b"RE: Re: Printer contract: two offers"),
    (CORPUS / "11-vacation-reply.eml").read_bytes(),
    (CORPUS / "09-folded-headers.eml").read_bytes(),
    (CORPUS / "07-forwarded-rfc822.eml").read_bytes(),
]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-search"))
    running.add_user(USER, PASSWORD)
    store = running.store()
    try:
        uids = [store.deliver(USER, INBOX, (CORPUS / name).read_bytes(), internal_date=NOON + i * 86400)
                for i, name in enumerate(FILES)]
        assert uids == list(range(1, 9))
        store.set_flags(USER, INBOX, [(1, 2)], "+", ["\\Seen"])
        store.set_flags(USER, INBOX, [(2, 3)], "+", ["\\Flagged"])
        store.set_flags(USER, INBOX, [(4, 4)], "+", ["\\Answered", "\\Draft", "$Work"])
        store.set_flags(USER, INBOX, [(8, 8)], "+", ["\\Deleted", "\\Seen"])
        store.create_mailbox(USER, THREADS)
        for data in THREAD_MESSAGES:
            store.deliver(USER, THREADS, data)
        store.expunge(USER, THREADS, [(1, 1)], deleted_only=False)          # UIDs are sequence numbers + 1
    finally:
        store.index.close()
    yield running
    running.stop()


@pytest.fixture
def client(system):
    c = imapclient.IMAPClient("127.0.0.1", port=system.port(), ssl=False, timeout=30)
    c.login(USER, PASSWORD)
    c.select_folder(INBOX)
    yield c
    c.logout()


@pytest.fixture
def raw(system):
    r = Raw(system.port())
    assert r.command(b"L", f'LOGIN {USER} "{PASSWORD}"'.encode())[-1].startswith(b"L OK")
    assert r.command(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
    yield r
    r.close()


def seqs(client, criteria, charset=None):
    return sorted(client.search(criteria, charset))


@pytest.mark.parametrize("criteria, expected", [
    (["ALL"], [1, 2, 3, 4, 5, 6, 7, 8]),
    (["SEEN"], [1, 2, 8]),
    (["UNSEEN"], [3, 4, 5, 6, 7]),
    (["FLAGGED"], [2, 3]),
    (["UNFLAGGED"], [1, 4, 5, 6, 7, 8]),
    (["ANSWERED"], [4]),
    (["UNANSWERED"], [1, 2, 3, 5, 6, 7, 8]),
    (["DRAFT"], [4]),
    (["UNDRAFT"], [1, 2, 3, 5, 6, 7, 8]),
    (["DELETED"], [8]),
    (["UNDELETED"], [1, 2, 3, 4, 5, 6, 7]),
    (["KEYWORD", "$Work"], [4]),
    (["KEYWORD", "$Nobody"], []),
    (["UNKEYWORD", "$work"], [1, 2, 3, 5, 6, 7, 8]),
    (["RECENT"], []),
    (["NEW"], []),
    (["OLD"], [1, 2, 3, 4, 5, 6, 7, 8]),
    (["2,4:5"], [2, 4, 5]),
    (["7:*"], [7, 8]),
    (["UID", "3:4,8"], [3, 4, 8]),
    (["BEFORE", "3-Jan-2027"], [1, 2]),
    (["ON", "3-Jan-2027"], [3]),
    (["SINCE", "7-Jan-2027"], [7, 8]),
    (["SENTBEFORE", "18-Nov-2026"], [1, 2]),
    (["SENTON", "20-Nov-2026"], [5]),
    (["SENTSINCE", "24-Nov-2026"], [7, 8]),
    (["FROM", "alice@example.org"], [1, 6]),
    (["FROM", "Jürgen Müller"], [2]),                       # RFC 2047 display name
    (["TO", "dev@lists"], [7]),
    (["CC", "Grace Ho"], [7]),
    (["CC", "alice martin <alice@"], [4]),
    (["BCC", "anyone"], []),
    (["SUBJECT", "grüße aus köln"], [2]),                   # RFC 2047 Q, UTF-8
    (["SUBJECT", "ANGEBOTE FÜR DEZEMBER"], [3]),            # RFC 2047 Q, ISO-8859-1
    (["SUBJECT", "nightly build"], [7]),                    # folded Subject
    (["HEADER", "Message-ID", "inv-2026-1187"], [5]),
    (["HEADER", "List-Unsubscribe", ""], [3]),
    (["BODY", "/Type /Catalog"], [5]),                      # inside a base64 application/pdf part
    (["BODY", "2026-1187: EUR"], [5]),
    (["BODY", "contract: two offers"], []),                 # the Subject, not the body
    (["TEXT", "contract: two offers"], [4]),
    (["BODY", "Building access cards"], [6]),               # the forwarded message
    (["NOT", "SEEN"], [3, 4, 5, 6, 7]),
    (["OR", "FLAGGED", "ANSWERED"], [2, 3, 4]),
    (["OR", "SEEN", ["FLAGGED", "NOT", "SUBJECT", "aus K"]], [1, 2, 3, 8]),
    (["NOT", ["OR", "FROM", "alice", "OR", "DELETED", "BODY", "invoice"]], [2, 3, 4, 7]),
    (["UNSEEN", "NOT", "NOT", "TO", "bob keller"], [4, 6]),
    (["LARGER", "1", "SMALLER", "1"], []),
])
def test_search_keys(client, criteria, expected):
    assert seqs(client, criteria, "UTF-8") == expected


def test_sizes(client, system):
    store = system.store()
    try:
        view = store.open_mailbox(USER, INBOX).view
        sizes = {seq: view.record(seq).size for seq in range(1, len(view) + 1)}
    finally:
        store.index.close()
    middle = sorted(sizes.values())[4]
    assert seqs(client, ["LARGER", middle]) == [s for s, n in sizes.items() if n > middle]
    assert seqs(client, ["SMALLER", middle]) == [s for s, n in sizes.items() if n < middle]


def test_utf8_body_in_quoted_printable_and_8bit(client):
    assert seqs(client, ["BODY", "grüße"], "UTF-8") == [2]                     # 8bit UTF-8
    assert seqs(client, ["BODY", "handschuhe für 12,90"], "UTF-8") == [3]     # windows-1252 QP


def test_uid_search(raw, system):
    store = system.store()
    try:
        view = store.open_mailbox(USER, INBOX).view
        assert [view.uid(s) for s in range(1, len(view) + 1)] == list(range(1, 9))
    finally:
        store.index.close()
    lines = raw.command(b"U1", b"UID SEARCH FLAGGED")
    assert lines == [b"* SEARCH 2 3\r\n", b"U1 OK UID SEARCH completed\r\n"]
    lines = raw.command(b"U2", b"UID SEARCH UID 5:* SUBJECT Invoice")
    assert lines[0] == b"* SEARCH 5\r\n"
    assert raw.command(b"U3", b"SEARCH SUBJECT nothing-like-this")[0] == b"* SEARCH\r\n"


def test_literal_and_charsets(raw):
    text = "Müller".encode()
    raw.send(b"C1 SEARCH CHARSET UTF-8 FROM {%d+}\r\n" % len(text) + text + b"\r\n")
    assert raw.until_tagged(b"C1")[0] == b"* SEARCH 2\r\n"
    assert raw.command(b"C2", b"SEARCH CHARSET us-ascii SEEN")[0] == b"* SEARCH 1 2 8\r\n"
    lines = raw.command(b"C3", b"SEARCH CHARSET ISO-8859-1 FROM x")
    assert lines == [b"C3 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset ISO-8859-1\r\n"]
    assert raw.command(b"C4", b'SEARCH CHARSET "KOI8-R" ALL')[-1].startswith(b"C4 NO [BADCHARSET")


@pytest.mark.parametrize("command", [
    b"SEARCH", b"SEARCH FOO", b"SEARCH FROM", b"SEARCH LARGER big", b"SEARCH SINCE 2027-01-01",
    b"SEARCH ON 30-Feb-2027", b"SEARCH UID 1:x", b"SEARCH OR SEEN", b"SEARCH NOT", b"SEARCH ()",
    b"SEARCH $x", b"SEARCH 0:2", b"SEARCH RETURN (SAVED) ALL", b"SEARCH RETURN MIN ALL", b"SEARCH CHARSET",
    b"SEARCH KEYWORD \"x y\"", b"SEARCH " + b"NOT " * 150 + b"SEEN",
])
def test_bad_programs(raw, command):
    lines = raw.command(b"B1", command)
    assert lines[-1].startswith(b"B1 BAD "), lines
    assert raw.command(b"B2", b"NOOP")[-1].startswith(b"B2 OK")


def test_esearch(raw):
    lines = raw.command(b"E1", b"SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert lines[0] == b'* ESEARCH (TAG "E1") MIN 3 MAX 7 COUNT 5 ALL 3:7\r\n'
    lines = raw.command(b"E2", b"UID SEARCH RETURN () OR SEEN FLAGGED")
    assert lines[0] == b'* ESEARCH (TAG "E2") UID ALL 1:3,8\r\n'
    lines = raw.command(b"E3", b"SEARCH RETURN (COUNT MIN) CHARSET UTF-8 SUBJECT nothing-like-this")
    assert lines[0] == b'* ESEARCH (TAG "E3") COUNT 0\r\n'
    assert lines[1].startswith(b"E3 OK")


def test_capabilities(client):
    assert {b"ESEARCH", b"SEARCHRES", b"SORT", b"ESORT", b"SORT=DISPLAY", b"THREAD=REFERENCES",
            b"THREAD=ORDEREDSUBJECT"} <= set(client.capabilities())


def test_nil_is_a_string(raw):
    assert raw.command(b"N1", b"SEARCH SUBJECT NIL") == [b"* SEARCH\r\n", b"N1 OK SEARCH completed\r\n"]
    assert raw.command(b"N2", b"SEARCH OR BODY nil FROM Nil")[-1].startswith(b"N2 OK")


def test_searchres(raw):
    assert raw.command(b"R1", b"SEARCH RETURN (SAVE) FLAGGED") == [b"R1 OK SEARCH completed\r\n"]
    assert raw.command(b"R2", b"FETCH $ (UID)")[:2] == [b"* 2 FETCH (UID 2)\r\n", b"* 3 FETCH (UID 3)\r\n"]
    assert raw.command(b"R3", b"UID SEARCH UID $ SEEN")[0] == b"* SEARCH 2\r\n"
    assert raw.command(b"R4", b"SEARCH RETURN (SAVE MIN COUNT) UNSEEN")[0] == b'* ESEARCH (TAG "R4") MIN 3 COUNT 5\r\n'
    assert raw.command(b"R5", b"SEARCH NOT $")[0] == b"* SEARCH 1 2 8\r\n"     # COUNT: all five saved
    assert raw.command(b"R6", b"SEARCH RETURN (SAVE MAX) UNSEEN") == \
        [b'* ESEARCH (TAG "R6") MAX 7\r\n', b"R6 OK SEARCH completed\r\n"]
    assert raw.command(b"R7", b"UID FETCH $ (FLAGS)")[0] == b"* 7 FETCH (UID 7 FLAGS ())\r\n"
    assert raw.command(b"R8", b"SORT RETURN (SAVE) (REVERSE ARRIVAL) UTF-8 1:2") == [b"R8 OK SORT completed\r\n"]
    assert raw.command(b"R9", b"SEARCH $")[0] == b"* SEARCH 1 2\r\n"
    assert raw.command(b"RA", b"SEARCH RETURN (SAVE) BOGUS")[-1].startswith(b"RA BAD")
    assert raw.command(b"RB", b"SEARCH $")[0] == b"* SEARCH\r\n"                # a failed SAVE empties $
    raw.command(b"RC", b"SEARCH RETURN (SAVE) ALL")
    assert raw.command(b"RD", b"SELECT INBOX")[-1].startswith(b"RD OK")
    assert raw.command(b"RE", b"SEARCH $")[0] == b"* SEARCH\r\n"                # a new selection forgets it


def test_sort(client, raw):
    assert client.sort(["REVERSE", "ARRIVAL"]) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert client.sort(["DATE"]) == [1, 2, 3, 4, 5, 6, 7, 8]        # the corpus's Date: order
    # base subjects: "Re: [dev] Proposal..." -> "Proposal...", "Fwd: Building..." -> "Building..."
    # BUILDING, GRüßE, INVOICE, MINUTES, OUT OF OFFICE, PRINTER, PROPOSAL, UNSERE
    assert client.sort(["SUBJECT"]) == [6, 2, 5, 1, 8, 4, 7, 3]
    # alice, billing, carla, eve, newsletter
    assert client.sort(["FROM", "ARRIVAL"], ["UNSEEN"]) == [6, 5, 4, 7, 3]
    assert client.sort(["REVERSE", "FROM", "ARRIVAL"], ["FROM", "alice"]) == [1, 6]
    lines = raw.command(b"T1", b"UID SORT (REVERSE SIZE) UTF-8 1:3")
    sizes = {i: (CORPUS / FILES[i - 1]).stat().st_size for i in (1, 2, 3)}
    assert lines[0] == b"* SORT " + " ".join(map(str, sorted(sizes, key=lambda s: -sizes[s]))).encode() + b"\r\n"
    assert raw.command(b"T2", b"SORT (TO CC) US-ASCII SEEN")[0] == b"* SORT 1 2 8\r\n"
    assert raw.command(b"T3", b"SORT (CC) UTF-8 OR 4 7")[0] == b"* SORT 4 7\r\n"     # alice < frank
    assert raw.command(b"T3", b"SORT (ARRIVAL) ISO-8859-1 ALL")[-1].startswith(b"T3 NO [BADCHARSET")
    for bad in (b"SORT ARRIVAL UTF-8 ALL", b"SORT () UTF-8 ALL", b"SORT (REVERSE) UTF-8 ALL",
                b"SORT (NAME) UTF-8 ALL", b"SORT (DATE)", b"SORT (DATE) UTF-8"):
        assert raw.command(b"T4", bad)[-1].startswith(b"T4 BAD"), bad


def test_sort_display_and_esort(client, raw):
    # alice (1, 6), carla, eve, frank, jürgen (RFC 2047), shop example, supplier billing
    assert client.sort(["DISPLAYFROM"]) == [1, 6, 4, 7, 8, 2, 3, 5]
    assert client.sort(["REVERSE", "DISPLAYFROM"]) == [5, 3, 2, 8, 7, 4, 1, 6]
    lines = raw.command(b"E1", b"SORT RETURN (MIN MAX COUNT ALL) (REVERSE ARRIVAL) UTF-8 UNSEEN")
    assert lines[0] == b'* ESEARCH (TAG "E1") MIN 7 MAX 3 COUNT 5 ALL 7,6,5,4,3\r\n'
    assert raw.command(b"E2", b"UID SORT RETURN () (SIZE) UTF-8 99")[0] == b'* ESEARCH (TAG "E2") UID\r\n'


@pytest.fixture
def threads(system):
    r = Raw(system.port())
    assert r.command(b"L", f'LOGIN {USER} "{PASSWORD}"'.encode())[-1].startswith(b"L OK")
    assert r.command(b"S", f"EXAMINE {THREADS}".encode())[-1].startswith(b"S OK")
    yield r
    r.close()


def test_thread(threads):
    lines = threads.command(b"T1", b"THREAD REFERENCES UTF-8 ALL")
    assert lines == [b"* THREAD (1 2 3)(6)(5)(4)\r\n", b"T1 OK THREAD completed\r\n"]
    # without message 2, message 3 hangs under its first reference through a pruned dummy
    assert threads.command(b"T2", b"UID THREAD REFERENCES US-ASCII NOT 2")[0] == b"* THREAD (2 4)(7)(6)(5)\r\n"
    assert threads.command(b"T3", b"THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (2 (3)(1))(6)(5)(4)\r\n"
    assert threads.command(b"T4", b"THREAD REFERENCES UTF-8 SUBJECT nothing-like-this")[0] == b"* THREAD\r\n"
    assert threads.command(b"T5", b"THREAD REFERENCES ISO-8859-1 ALL")[-1].startswith(b"T5 NO [BADCHARSET")
    for bad in (b"THREAD", b"THREAD BOGUS UTF-8 ALL", b"THREAD REFERENCES", b"THREAD REFERENCES UTF-8",
                b"THREAD (REFERENCES) UTF-8 ALL", b"THREAD REFERENCES UTF-8 BOGUS"):
        assert threads.command(b"T6", bad)[-1].startswith(b"T6 BAD"), bad

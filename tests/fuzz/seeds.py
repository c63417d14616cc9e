"""Seeds of the fuzzers: real mail, and the known attacks on SMTP's framing.

messages(max_size) -> [(name, bytes)]: the shared real-mail corpus (`../shared/corpus`
from the repository root; its MANIFEST.tsv lists the messages), or tests/corpus/*.eml in a
clone without it. Only the tests read these files; the product never does.
to_crlf(message) -> the message with CRLF line ends, ending in CRLF (as a client sends it).
FAKE_ENDS: endings of DATA that some servers accept and RFC 5321 does not (SMTP smuggling).
smuggling(fake_end) -> a DATA stream that hides a second transaction behind a fake end.
SMTP_SESSIONS: whole client streams: pipelined transactions, STARTTLS with commands pipelined
behind it in the same packet (CVE-2011-0411), AUTH exchanges, over-long and 8-bit lines.
POP3_SESSIONS: command lines of a POP3 client after login.
IMAP_SESSIONS: streams of a logged-in IMAP client: selection, FETCH of every item, SEARCH,
STORE/EXPUNGE, folders with modified UTF-7 names, literals of both kinds, broken lines.
"""
from __future__ import annotations

import base64
import csv
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"
LOCAL_CORPUS = REPO / "tests" / "corpus"

FAKE_ENDS = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n", b"\n.\r", b"\r\n\x00.\r\n"]

TRANSACTION = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"


@functools.cache
def messages(max_size: int = 1 << 20) -> list[tuple[str, bytes]]:
    if (SHARED_CORPUS / "MANIFEST.tsv").is_file():
        with open(SHARED_CORPUS / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f, delimiter="\t") if row["path"].startswith("messages/")]
        paths = [SHARED_CORPUS / row["path"] for row in rows if int(row["size"]) <= max_size]
    else:
        paths = [p for p in sorted(LOCAL_CORPUS.glob("*.eml")) if p.stat().st_size <= max_size]
    return [(str(p.relative_to(p.parents[1])), p.read_bytes()) for p in paths]


def to_crlf(message: bytes) -> bytes:
    message = re.sub(rb"\r?\n", b"\r\n", message)
    return message if message.endswith(b"\r\n") or not message else message + b"\r\n"


def smuggling(fake_end: bytes) -> bytes:
    """The body of one DATA: text, a fake end, a whole second transaction, the real end."""
    return (b"Subject: one\r\n\r\nfirst" + fake_end + TRANSACTION
            + b"Subject: smuggled\r\n\r\nsecond\r\n.\r\n")


SMTP_SESSIONS = [
    b"EHLO client.example\r\n" + TRANSACTION + b"Subject: hi\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n",
    b"EHLO client.example\r\nSTARTTLS\r\nMAIL FROM:<evil@b.example>\r\nRCPT TO:<bob@example.test>\r\n",
    b"EHLO c\r\nSTARTTLS\r\nEHLO c\r\nAUTH PLAIN " + base64.b64encode(b"\0bob\0secret") + b"\r\nQUIT\r\n",
    b"EHLO c\r\nAUTH LOGIN\r\n" + base64.b64encode(b"bob") + b"\r\n*\r\nAUTH CRAM-MD5\r\n=\r\n",
    b"HELO c\r\nMAIL FROM:<> SIZE=99999999999 BODY=8BITMIME RET=HDRS ENVID=a+2Bb\r\n"
    b"RCPT TO:<Postmaster> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+40example.test\r\nRSET\r\n",
    b"EHLO c\r\nMAIL FROM:<@r1,@r2:\"a b\"@[192.0.2.1]>\r\nRCPT TO:<\xff@example.test>\r\nDATA\r\n",
    b"EHLO c\r\nNOOP " + b"x" * 600 + b"\r\nVRFY bob\nEXPN x\rETRN\r\nBDAT 10 LAST\r\n\x00\r\n",
] + [b"EHLO c\r\n" + TRANSACTION + smuggling(end) + b"QUIT\r\n" for end in FAKE_ENDS]

POP3_SESSIONS = [
    b"STAT\r\nLIST\r\nUIDL\r\nLIST 1\r\nRETR 1\r\nTOP 1 0\r\nDELE 1\r\nRETR 1\r\nRSET\r\nNOOP\r\n",
    b"list 2\r\nuidl 99\r\nretr 0\r\ntop 1 -1\r\ntop 2 3 4\r\ndele 01\r\nCAPA\r\nUSER bob\r\n",
    b"RETR \xd9\xa1\r\nLIST 99999999999\r\nTOP 1 00000000001\r\nX\r\n\r\n \r\nAPOP a b\r\nSTLS\r\n",
]

IMAP_SESSIONS = [
    b"a SELECT INBOX\r\nb FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.20>)\r\n"
    b"c UID FETCH 1:* (BODY.PEEK[1.MIME] BINARY.PEEK[1] BINARY.SIZE[1] RFC822.SIZE INTERNALDATE)\r\n"
    b"d SEARCH CHARSET UTF-8 OR SUBJECT {3+}\r\n123 NOT SEEN\r\ne STORE 1:2 +FLAGS.SILENT (\\Deleted $Junk)\r\n"
    b"f UID SEARCH RETURN (MIN MAX COUNT SAVE) UNDELETED\r\ng FETCH $ FLAGS\r\nh EXPUNGE\r\ni CLOSE\r\n",
    b"a CREATE \"caf&AOk-/sub\"\r\nb LIST \"\" *\r\nc RENAME caf&AOk- {4}\r\nthe\xe9\r\n"
    b"d APPEND INBOX (\\Seen) \"22-Nov-2008 15:04:59 +1100\" {23+}\r\nSubject: x\r\n\r\nhello\r\n\r\n"
    b"e STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE)\r\nf DELETE &AOk\r\ng SUBSCRIBE \"\"\r\nh NAMESPACE\r\n",
    b"a ENABLE CONDSTORE QRESYNC\r\nb EXAMINE INBOX (QRESYNC (1 1))\r\nc FETCH 1:* FLAGS (CHANGEDSINCE 1)\r\n"
    b"d UID SORT (REVERSE DATE SUBJECT) UTF-8 ALL\r\ne THREAD REFERENCES UTF-8 ALL\r\nf IDLE\r\nDONE\r\n"
    b"g MOVE 1 Trash\r\nh UNSELECT\r\n",
    b"a SELECT INBOX\r\nb FETCH 0:4294967296 (BODY[\r\nc FETCH * ((FLAGS))\r\n\xff\x00 NOOP\r\n"
    b"d SEARCH HEADER {2}\r\nX-\r\ne STORE 1 FLAGS (\\Recent\r\nf COPY 1:* \"\"\r\n* NOOP\r\n+ x\r\ng LOGOUT\r\n",
]

"""Properties of an IMAP session (workers/imapd/session.py and its handlers) under any input.

A real Session, logged in (or not) through the fake transport of tests/fakes.py, over a real
store (a fresh copy per run of a store holding corpus messages), is fed generated units one
at a time: commands of every kind with random arguments (sequence sets, fetch items and
sections, search keys, flags, mailbox names in modified UTF-7, valid and not, strings as
atoms, quoted strings and literals synchronising or not, nested lists), random bytes,
truncated lines, and changes made meanwhile by another writer (a delivery, an expunge, a
flag change). Whatever comes:
  - every unit gets exactly one completion (a tagged response with its tag, or `* BAD` for
    a line without a tag) in order, unless the session has ended with `* BYE`;
  - the session never raises, and the output is a sequence of well-formed responses: each
    line ends in CRLF, `{n}` literals are followed by exactly n octets, data responses have
    balanced parentheses and well-formed quoted strings, status responses say OK/NO/BAD;
  - sequence numbers in `* n FETCH` and `* n EXPUNGE` (and in a SEARCH answer) stay within
    the number of messages the client has been told of through EXISTS/EXPUNGE/VANISHED.
check_stream() is the same property for a raw client stream (atheris_imap.py).
"""
from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from master.params import Params
from store.mailstore import INBOX
from tests.fakes import FakeConnection
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.seeds import IMAP_SESSIONS, messages
from workers.imapd.backend import Backend
from workers.imapd.session import Session

USER = "bob"
STORE_MAX = 8_000                  # message size for the store: FETCH output stays small
ANSWER_WAIT = 10.0                 # seconds for one unit's answer: a hang fails the property
STATUS = (b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH")


# ---------------------------------------------------------------- the store

def _params(root: str) -> Params:
    return Params({"myhostname": "mail.example.test", "data_directory": root, "auth_failure_delay": "0s"}, {}, root)


def make_template(root: str) -> str:
    """A store in `root` with USER's default folders, corpus messages in INBOX and two in Archive."""
    backend = Backend(_params(root))
    try:
        asyncio.run(backend.prepare_user(USER))
        corpus = [m for _, m in messages(STORE_MAX)][:7]
        for message in corpus:
            backend.mail.deliver(USER, INBOX, message)
        for message in corpus[:2]:
            backend.mail.deliver(USER, "Archive", message)
        backend.mail.set_flags(USER, INBOX, [(2, 3)], "+", ["\\Seen", "$Junk"])
    finally:
        close_backend(backend)
    return root


def close_backend(backend: Backend) -> None:
    backend.store.close()
    backend._thread.shutdown()       # Backend has no close(): its store thread would stay


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template(str(tmp_path_factory.mktemp("imap-template")))


# ---------------------------------------------------------------- the client's units

@dataclass
class Unit:
    """Bytes for the server; tag: the tag of its completion (None: any tag or `* BAD`);
    answered: whether a completion must come (False: a cut last line)."""
    data: bytes
    tag: str | None = None
    answered: bool = True


@dataclass
class Change:
    """What another writer does to USER's INBOX between two commands: ("deliver", i),
    ("expunge", uid), ("flag", uid)."""
    what: str
    arg: int


def apply_change(backend: Backend, change: Change) -> None:
    mail = backend.mail
    if mail.mailbox(USER, INBOX) is None:
        return
    if change.what == "deliver":
        corpus = messages(STORE_MAX)
        mail.deliver(USER, INBOX, corpus[change.arg % len(corpus)][1])
    elif change.what == "expunge":
        mail.expunge(USER, INBOX, [(change.arg, change.arg)], deleted_only=False)
    else:
        mail.set_flags(USER, INBOX, [(change.arg, change.arg + 1)], "+", ["\\Flagged", "$Later"])


# ---------------------------------------------------------------- reading the server's output

@dataclass
class Response:
    kind: str          # "tagged", "untagged" or "continuation"
    tag: str
    text: bytes        # after the tag and a space, literals included


def _data_syntax(text: bytes) -> None:
    """Balanced parentheses, quoted strings closed with only \\\\ and \\" escaped, literal
    octets skipped (their sizes were checked when the response was read)."""
    depth, pos = 0, 0
    while pos < len(text):
        c = text[pos:pos + 1]
        if c == b"(":
            depth += 1
        elif c == b")":
            depth -= 1
            assert depth >= 0, f"unbalanced ')' in {text!r}"
        elif c == b'"':
            m = re.compile(rb'"(?:\\[\\"]|[^"\\\r\n])*"').match(text, pos)
            assert m, f"bad quoted string at {pos} in {text!r}"
            pos = m.end() - 1
        elif c == b"{":
            m = re.compile(rb"\{(\d+)\}\r\n").match(text, pos)
            if m:
                pos = m.end() + int(m.group(1)) - 1
        pos += 1
    assert depth == 0, f"unbalanced '(' in {text!r}"


def split_responses(output: bytes, whole: bool = True) -> list[bytes]:
    """The responses in `output` (CRLF and literals included); whole=False: the complete ones
    so far, else each must be complete, with CRLF line ends and literal octets as announced."""
    out, pos = [], 0
    while pos < len(output):
        start = pos
        while pos < len(output):
            end = output.find(b"\r\n", pos)
            if end < 0:
                assert not whole, f"response without CRLF: {output[start:]!r}"
                return out
            line = output[pos:end + 2]
            assert b"\r" not in line[:-2] and b"\n" not in line[:-2], f"bare CR or LF in {line!r}"
            m = _LITERAL.search(line)
            pos = end + 2 + (int(m.group(1)) if m else 0)
            if not m:
                break
            if pos > len(output):
                assert not whole, f"literal runs past the output: {output[start:]!r}"
                return out
        out.append(output[start:pos])
    return out


_LITERAL = re.compile(rb"~?\{(\d+)\}\r\n$")


def read_responses(output: bytes) -> list[Response]:
    """The responses in `output`, each checked for well-formedness."""
    out = []
    for whole in split_responses(output):
        assert whole.endswith(b"\r\n"), f"response ends inside a literal: {whole!r}"
        tag, _, text = whole[:-2].partition(b" ")
        word = text.split(b" ", 1)[0]
        if tag == b"+":
            out.append(Response("continuation", "+", text))
        elif tag == b"*":
            out.append(Response("untagged", "*", text))
            if word.upper() not in STATUS:
                _data_syntax(text)
        else:
            assert re.fullmatch(rb"[\x21-\x7e]+", tag) and word in (b"OK", b"NO", b"BAD"), f"bad response {whole!r}"
            out.append(Response("tagged", tag.decode(), text))
    return out


def is_completion(response: Response) -> bool:
    return response.kind == "tagged" or (response.kind == "untagged" and response.text.startswith(b"BAD "))


def _uid_count(text: bytes) -> int:
    count = 0
    for piece in text.split(b","):
        low, _, high = piece.partition(b":")
        count += abs(int(high or low) - int(low)) + 1
    return count


def check_numbers(responses: list[Response], commands: list[str]) -> None:
    """Sequence numbers within what the client knows; `commands` are the completions' command
    names in order (for SEARCH), None for an unknown one."""
    exists = 0
    done = 0
    for r in responses:
        if is_completion(r):
            done += 1
            continue
        if r.kind != "untagged":
            continue
        fields = r.text.split(b" ", 2)
        if len(fields) >= 2 and fields[0].isdigit():
            n, what = int(fields[0]), fields[1].upper()
            if what == b"EXISTS":
                exists = n
            elif what == b"EXPUNGE":
                assert 1 <= n <= exists, f"* {n} EXPUNGE with {exists} messages known"
                exists -= 1
            elif what == b"FETCH":
                assert 1 <= n <= exists, f"* {n} FETCH with {exists} messages known"
        elif fields[0].upper() == b"VANISHED" and len(fields) == 2 and re.fullmatch(rb"[\d:,]+", fields[1]):
            exists -= _uid_count(fields[1])
            assert exists >= 0, f"VANISHED more than known: {r.text!r}"
        elif fields[0].upper() == b"SEARCH" and done < len(commands) and commands[done] == "SEARCH":
            numbers = [int(x) for x in re.findall(rb"\d+", r.text.split(b"(MODSEQ")[0])]
            assert all(1 <= x <= exists for x in numbers), f"SEARCH {numbers} with {exists} messages known"


def check_completions(responses: list[Response], units: list[Unit]) -> None:
    completions = [r for r in responses if is_completion(r)]
    byes = [i for i, r in enumerate(responses) if r.kind == "untagged" and r.text.upper().startswith(b"BYE")]
    ended = bool(byes)
    assert len(byes) <= 1, "more than one BYE"
    if ended:
        assert all(r.kind == "tagged" for r in responses[byes[0] + 1:]) and len(responses) - byes[0] <= 2, \
            f"responses after BYE: {responses[byes[0]:]}"
    answered = 0
    for unit in units:
        if answered == len(completions):
            assert ended or not unit.answered, f"no answer to {unit.data!r}"
            break
        got = completions[answered]
        if unit.tag is not None:
            assert got.kind == "tagged" and got.tag == unit.tag, f"{unit.data!r} answered by {got}"
        answered += 1
    assert answered == len(completions), f"more completions than commands: {completions[answered:]}"


# ---------------------------------------------------------------- running a session

class Client(FakeConnection):
    """The fake transport, with an event set whenever the session sends."""

    def __init__(self, params):
        super().__init__(params, eof=False)
        self.sent = asyncio.Event()

    async def send(self, data: bytes) -> None:
        await super().send(data)
        self.sent.set()


def _completions(output: bytes) -> int:
    return sum(bool(re.match(rb"(?:\* BAD |[^*+ ][\x21-\x7e]* (?:OK|NO|BAD)\b)", r))
               for r in split_responses(output, whole=False))


async def _serve(backend: Backend, script: list, login: bool) -> bytes:
    conn = Client(backend.params)
    session = Session(conn, backend)
    if login:
        await backend.prepare_user(USER)
        session.enter_authenticated(USER)
    task = asyncio.ensure_future(session.run())
    expected = 0
    for item in script:
        if task.done():
            break
        if isinstance(item, Change):
            apply_change(backend, item)
            continue
        conn.feed(item.data)
        expected += item.answered
        while not task.done() and _completions(bytes(conn.output)) < expected:
            conn.sent.clear()
            waiter = asyncio.ensure_future(conn.sent.wait())
            finished, _ = await asyncio.wait({task, waiter}, timeout=ANSWER_WAIT,
                                             return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            assert finished, f"no answer to {item.data!r} after {bytes(conn.output)[-300:]!r}"
    conn.reader.feed_eof()
    await asyncio.wait_for(task, ANSWER_WAIT)
    task.result()                         # the session never raises
    return bytes(conn.output)


def run_script(template: str, script: list, login: bool = True) -> list[Response]:
    with tempfile.TemporaryDirectory() as scratch:
        root = str(Path(scratch) / "store")
        shutil.copytree(template, root)
        backend = Backend(_params(root))
        try:
            output = asyncio.run(_serve(backend, script, login))
        finally:
            close_backend(backend)
    responses = read_responses(output)
    assert responses and responses[0].kind == "untagged" and responses[0].text.startswith(b"OK"), output[:200]
    return responses[1:]


def check_script(template: str, script: list, login: bool = True) -> list[Response]:
    responses = run_script(template, script, login)
    units = [u for u in script if isinstance(u, Unit)]
    check_completions(responses, units)
    check_numbers(responses, [_command_name(u) for u in units])
    return responses


def _command_name(unit: Unit) -> str | None:
    words = unit.data.split(b"\r\n", 1)[0].split(b" ")
    return words[1].decode("latin-1").upper() if unit.tag is not None and len(words) > 1 else None


def check_stream(template: str, data: bytes, login: bool = True) -> None:
    """A raw client stream, sent at once: well-formed responses, numbers within what the
    client knows, at most one completion per line."""
    responses = run_script(template, [Unit(data, None, False)], login)
    assert sum(map(is_completion, responses)) <= data.count(b"\n") + 1, "more completions than lines"
    check_numbers(responses, [])


# ---------------------------------------------------------------- generating commands

class Lit(bytes):
    """A literal argument; plus: non-synchronising."""
    plus = False


ATOM_CHARS = "abcxyzABC019.-_:*,$&=+"


def atom_text(max_size=10):
    return st.text(ATOM_CHARS, min_size=1, max_size=max_size)


def render(arg) -> bytes:
    if isinstance(arg, list):
        return b"(" + b" ".join(render(a) for a in arg) + b")"
    if isinstance(arg, Lit):
        return b"{%d%s}\r\n" % (len(arg), b"+" if arg.plus else b"") + bytes(arg)
    if isinstance(arg, bytes):
        return arg
    return b'"' + arg.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@st.composite
def string(draw, values):
    """One string value as an atom (when it is one), a quoted string or a literal."""
    value = draw(values)
    raw = value.encode() if isinstance(value, str) else value
    forms = ["literal"]
    if re.fullmatch(rb"[!#-'*-Z^-z|~]+", raw) and not raw.endswith(b"}") and raw.upper() != b"NIL":
        forms.append("atom")
    if b"\r" not in raw and b"\n" not in raw and b"\0" not in raw:
        forms.append("quoted")
    form = draw(st.sampled_from(forms))
    if form == "atom":
        return raw
    if form == "quoted":
        return raw.decode("utf-8", "replace")
    literal = Lit(raw)
    literal.plus = draw(st.booleans())
    return literal


MAILBOXES = st.one_of(
    st.sampled_from(["INBOX", "inbox", "Archive", "Trash", "Sent", "new", "new/sub", "a/b/c", "&AOk-", "caf&AOk-",
                     "&ZeVnLIqe-", "&-", "&", "&AOk", "&Jjo", "&AGE-", "&2D3cAA-", "", "/", "a//b", "*", "%",
                     "new/", "INBOX/x", "café", ".", "..", "\x7f"]),
    st.text("ab&-/%*AOk", min_size=1, max_size=8))
NAME = string(MAILBOXES)
TEXT = string(st.one_of(st.sampled_from(["test", "Lindsaar", "é", "", "a b", "\\", '"', "ü" * 3, "=?utf-8?", "x\r\ny"]),
                        st.text(max_size=6)))
GOOD_NUMBER = st.integers(1, 9).map(str)
NUMBER = st.one_of(GOOD_NUMBER, GOOD_NUMBER, st.sampled_from(["0", "12", "4294967295", "4294967296", "-1", "01",
                                                              "99999999999"]))
SEQ_ITEM = st.one_of(NUMBER, st.just("*"), st.builds(lambda a, b: f"{a}:{b}", NUMBER, st.sampled_from(["*", "1", "3", "9"])))
SEQ_SET = st.one_of(st.lists(SEQ_ITEM, min_size=1, max_size=3).map(",".join), st.just("1:*"), GOOD_NUMBER,
                    st.sampled_from(["$", "1:*", "*", "", "1,", ":", "1:2:3", "a"])).map(lambda s: s.encode() or b'""')
FLAG = st.sampled_from([b"\\Seen", b"\\Deleted", b"\\Answered", b"\\Flagged", b"\\Draft", b"\\Recent", b"\\Foo",
                        b"$Junk", b"keyword", b"\\*", b"\\"])
FLAGS = st.one_of(FLAG, st.lists(FLAG, max_size=4))
PART = st.lists(st.integers(0, 4).map(str), max_size=3).map(".".join)
SECTION_TEXT = st.sampled_from(["", "HEADER", "TEXT", "MIME", "HEADER.FIELDS (Subject From)",
                                'HEADER.FIELDS.NOT ("To" X-Y)', "HEADER.FIELDS ()", "BOGUS", "HEADER.FIELDS"])


@st.composite
def section(draw) -> bytes:
    name = draw(st.sampled_from(["BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"]))
    part, text = draw(PART), draw(SECTION_TEXT)
    spec = part + ("." if part and text else "") + text
    partial = draw(st.sampled_from(["", "<0.10>", "<5>", "<3.0>", "<4294967296.1>"]))
    return f"{name}[{spec}]{partial}".encode()


FETCH_ATOM = st.sampled_from([b"FLAGS", b"UID", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY",
                              b"BODYSTRUCTURE", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT", b"ALL", b"FAST", b"FULL",
                              b"MODSEQ", b"SAVEDATE", b"BOGUS"])
GOOD_SECTION = st.builds(lambda p, t: f"BODY.PEEK[{p}{'.' if p and t else ''}{t}]".encode(),
                         st.sampled_from(["", "1", "2", "1.1"]), st.sampled_from(["", "HEADER", "TEXT"]))
FETCH_ITEMS = st.one_of(FETCH_ATOM, section(), st.lists(st.one_of(FETCH_ATOM, section()), max_size=4),
                        st.lists(st.one_of(FETCH_ATOM, GOOD_SECTION), min_size=1, max_size=4))
DATE = st.sampled_from([b"1-Jan-2000", b"22-Nov-2008", b'"1-Feb-2030"', b"31-Feb-2020", b"x"])
SEARCH_KEY = st.deferred(lambda: st.one_of(
    st.sampled_from([[b"ALL"], [b"ANSWERED"], [b"DELETED"], [b"FLAGGED"], [b"NEW"], [b"OLD"], [b"RECENT"], [b"SEEN"],
                     [b"UNSEEN"], [b"UNDELETED"], [b"DRAFT"], [b"UNDRAFT"], [b"BOGUS"], [b"$"]]),
    st.tuples(st.sampled_from([b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT", b"BODY", b"TEXT"]), TEXT).map(list),
    st.tuples(st.just(b"HEADER"), TEXT, TEXT).map(list),
    st.tuples(st.sampled_from([b"KEYWORD", b"UNKEYWORD"]), FLAG).map(list),
    st.tuples(st.sampled_from([b"LARGER", b"SMALLER", b"MODSEQ"]), NUMBER.map(str.encode)).map(list),
    st.tuples(st.sampled_from([b"BEFORE", b"ON", b"SINCE", b"SENTBEFORE", b"SENTON", b"SENTSINCE"]), DATE).map(list),
    st.tuples(st.just(b"UID"), SEQ_SET).map(list),
    SEQ_SET.map(lambda s: [s]),
    st.tuples(st.just(b"NOT"), SEARCH_KEY).map(lambda t: [t[0], *t[1]]),
    st.tuples(st.just(b"OR"), SEARCH_KEY, SEARCH_KEY).map(lambda t: [t[0], *t[1], *t[2]]),
    st.lists(SEARCH_KEY, max_size=2).map(lambda keys: [[x for k in keys for x in k]])))
SEARCH = st.tuples(st.sampled_from([[], [b"CHARSET", b"UTF-8"], [b"CHARSET", b"x"], [b"RETURN", [b"MIN", b"COUNT"]],
                                    [b"RETURN", [b"SAVE"]], [b"RETURN", []], [b"RETURN", [b"ALL", b"PARTIAL"]]]),
                   st.lists(SEARCH_KEY, max_size=3)).map(lambda t: t[0] + [x for k in t[1] for x in k])
STATUS_ITEMS = st.lists(st.sampled_from([b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"SIZE",
                                         b"HIGHESTMODSEQ", b"DELETED", b"BOGUS"]), max_size=4)
APPEND_BODY = st.one_of(st.sampled_from([m for _, m in messages(STORE_MAX)][:4] or [b"Subject: x\r\n\r\nx\r\n"]),
                        st.binary(max_size=40))


@st.composite
def append_args(draw) -> list:
    args = [draw(NAME)]
    if draw(st.booleans()):
        args.append(draw(st.lists(FLAG, max_size=3)))
    if draw(st.booleans()):
        args.append(draw(st.sampled_from([b'"22-Nov-2008 15:04:59 +1100"', b'"bad date"', b"NIL"])))
    literal = Lit(draw(APPEND_BODY))
    literal.plus = draw(st.booleans())
    args.append(literal)
    return args


def _with_uid(names: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(names).flatmap(lambda n: st.sampled_from([n, "UID " + n]))


COMMAND_ARGS = st.one_of(
    st.tuples(st.sampled_from(["SELECT", "EXAMINE"]), st.tuples(NAME, st.sampled_from(
        [(), ([b"CONDSTORE"],), ([b"QRESYNC", [b"1", b"1"]],), ([b"BOGUS"],)])).map(lambda t: [t[0], *t[1]])),
    st.tuples(st.sampled_from(["CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT", "GETACL", "MYRIGHTS"]),
              st.lists(NAME, min_size=1, max_size=2)),
    st.tuples(st.just("RENAME"), st.lists(NAME, min_size=2, max_size=2)),
    st.tuples(st.sampled_from(["LIST", "LSUB"]), st.tuples(NAME, string(st.sampled_from(["*", "%", "INBOX", "&AOk-*", "a/%", ""])))
              .map(list)),
    st.tuples(st.just("LIST"), st.tuples(st.sampled_from([[b"SUBSCRIBED"], [b"SPECIAL-USE"], []]), NAME, NAME,
                                          st.sampled_from([[b"RETURN", [b"CHILDREN", b"STATUS", [b"MESSAGES"]]],
                                                           [b"RETURN", [b"SPECIAL-USE"]], []])).map(
        lambda t: [t[0], t[1], t[2], *t[3]])),
    st.tuples(st.just("STATUS"), st.tuples(NAME, STATUS_ITEMS).map(list)),
    st.tuples(st.just("APPEND"), append_args()),
    st.tuples(_with_uid(["FETCH"]), st.tuples(SEQ_SET, FETCH_ITEMS, st.sampled_from(
        [[], [[b"CHANGEDSINCE", b"1"]], [[b"VANISHED", b"CHANGEDSINCE", b"1"]]])).map(lambda t: [t[0], t[1], *t[2]])),
    st.tuples(_with_uid(["STORE"]), st.tuples(SEQ_SET, st.sampled_from(
        [[], [[b"UNCHANGEDSINCE", b"1"]]]), st.sampled_from([b"FLAGS", b"+FLAGS", b"-FLAGS.SILENT", b"+FLAGS.SILENT",
                                                             b"BOGUS"]), FLAGS).map(lambda t: [t[0], *t[1], t[2], t[3]])),
    st.tuples(_with_uid(["COPY", "MOVE"]), st.tuples(SEQ_SET, NAME).map(list)),
    st.tuples(_with_uid(["SEARCH"]), SEARCH),
    st.tuples(_with_uid(["SORT"]), st.tuples(st.sampled_from([[b"ARRIVAL"], [b"REVERSE", b"DATE"], [b"SUBJECT", b"FROM"],
                                                             [b"DISPLAYFROM"], [], [b"BOGUS"]]),
                                             st.sampled_from([b"UTF-8", b"US-ASCII", b"x"]), SEARCH).map(
        lambda t: [t[0], t[1], *(t[2] or [b"ALL"])])),
    st.tuples(_with_uid(["THREAD"]), st.tuples(st.sampled_from([b"REFERENCES", b"ORDEREDSUBJECT", b"BOGUS"]),
                                               st.sampled_from([b"UTF-8", b"x"]), SEARCH).map(
        lambda t: [t[0], t[1], *(t[2] or [b"ALL"])])),
    st.tuples(st.just("UID EXPUNGE"), st.lists(SEQ_SET, max_size=1)),
    st.tuples(st.just("ENABLE"), st.lists(st.sampled_from([b"CONDSTORE", b"QRESYNC", b"UTF8=ACCEPT", b"IMAP4rev2",
                                                           b"BOGUS"]), max_size=3)),
    st.tuples(st.just("ID"), st.sampled_from([[b"NIL"], [[b'"name"', b'"x"']], [[b'"a"']], [], [[]]])),
    st.tuples(st.sampled_from(["NOOP", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "CAPABILITY", "NAMESPACE", "LOGOUT"]),
              st.sampled_from([[], [], [], [b"x"]])),
    st.tuples(st.sampled_from(["SETACL", "DELETEACL", "LISTRIGHTS", "GETQUOTA", "SETQUOTA", "COMPRESS", "STARTTLS",
                               "LOGIN", "AUTHENTICATE", "BOGUS"]),
              st.lists(st.one_of(NAME, st.sampled_from([b"anyone", b"bob", b"lrs", b"-w", b"x", [b"STORAGE", b"10"]])),
                       max_size=3)),
)


@st.composite
def units(draw, serial: int, login: bool):
    """One unit: a command (rarely LOGOUT), an IDLE with its DONE (logged in: else IDLE is
    refused and DONE would be a command), random bytes, a cut line."""
    tag = f"t{serial}"
    kind = draw(st.sampled_from(["command"] * 8 + ["idle", "bytes", "cut"]))
    if kind == "idle":
        end = draw(st.sampled_from([b"DONE", b"done", b"NOPE"])) + b"\r\n" if login else b""
        return Unit(f"{tag} IDLE\r\n".encode() + end, tag)
    if kind == "bytes":
        data = draw(st.binary(max_size=30)).replace(b"\r", b"").replace(b"\n", b"")
        return Unit((data + b"x" if data.endswith(b"}") else data) + b"\r\n", None)
    name, args = draw(COMMAND_ARGS)
    if name == "LOGOUT" and draw(st.integers(0, 3)):
        name = "NOOP"
    line = b" ".join([tag.encode(), name.encode(), *(render(a) for a in args)]) + b"\r\n"
    if kind == "cut":
        first = line.split(b"\r\n", 1)[0]
        cut = first[:draw(st.integers(0, max(0, len(first) - 1)))]
        cut += b"x" if cut.endswith(b"}") else b""
        return Unit(cut + draw(st.sampled_from([b"\r\n", b"\n"])), None)
    return Unit(line, tag)


@st.composite
def scripts(draw, login: bool = True) -> list:
    out = []
    for serial in range(draw(st.integers(1, 12))):
        if draw(st.integers(0, 5)) == 0:
            out.append(Change(draw(st.sampled_from(["deliver", "expunge", "flag"])), draw(st.integers(1, 9))))
        out.append(draw(units(serial, login)))
    if draw(st.integers(0, 4)) == 0:
        last = out[-1] if isinstance(out[-1], Unit) else Unit(b"t99 NOOP\r\n", "t99")
        out[-1] = Unit(last.data[:draw(st.integers(0, max(0, len(last.data) - 3)))].rstrip(b"\r"), None, False)
    return out


SELECT = Unit(b"s SELECT INBOX\r\n", "s")


@fuzz_settings(40)
@given(scripts())
def test_selected_session_keeps_its_promises(template, script):
    check_script(template, [SELECT, *script])


@fuzz_settings(20)
@given(st.booleans().flatmap(lambda login: st.tuples(st.just(login), scripts(login))))
def test_authenticated_or_not_session_keeps_its_promises(template, drawn):
    login, script = drawn
    check_script(template, script, login)


def test_seed_sessions(template):
    for stream in IMAP_SESSIONS:
        check_stream(template, stream)


def test_others_changes_reach_the_client_within_known_numbers(template):
    script = [SELECT, Change("expunge", 1), Change("deliver", 0), Unit(b"a FETCH 1:* FLAGS\r\n", "a"),
              Change("flag", 2), Unit(b"b NOOP\r\n", "b"), Change("expunge", 3), Unit(b"c SEARCH ALL\r\n", "c"),
              Unit(b"d EXPUNGE\r\n", "d")]
    responses = check_script(template, script)
    texts = [r.text for r in responses]
    assert b"1 EXPUNGE" in texts and any(t.endswith(b"EXISTS") for t in texts)


def test_sort_by_a_header_key_when_nothing_matches(template):
    """Found by this fuzzer: SORT by DATE (any header key) over an empty search result raised
    KeyError in workers/imapd/sort.py order() and ended the session with a traceback."""
    responses = check_script(template, [SELECT, Unit(b"a SORT (REVERSE DATE) UTF-8 ANSWERED\r\n", "a")])
    assert responses[-1].kind == "tagged" and responses[-1].text.startswith(b"OK")

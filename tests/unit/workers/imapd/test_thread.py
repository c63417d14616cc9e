"""workers/imapd/thread.py: ORDEREDSUBJECT and REFERENCES (RFC 5256) on Message records, the
THREAD response's nesting, and reading the threading fields of corpus files."""
from __future__ import annotations

import pytest

from tests.conftest import CORPUS
from workers.imapd.search import Budget, Content
from workers.imapd.thread import (
    Message,
    message_ids,
    ordered_subject,
    read_message,
    references,
    thread_list,
)


def messages(*specs) -> list[Message]:
    """(message id, references, date[, subject[, reply]]) per message, sequence numbers from 1."""
    out = []
    for seq, spec in enumerate(specs, 1):
        message_id, refs, date, *rest = spec
        subject = rest[0] if rest else ""
        out.append(Message(seq, date, subject, bool(rest[1:] and rest[1]), message_id, list(refs)))
    return out


@pytest.mark.parametrize("specs, expected", [
    # a reference chain: 3 is the parent of 2, whose last reference is 3; 1 lost its child
    ((("a", [], 17), ("b", ["a", "c"], 15), ("c", ["b"], 16)), "(3 2)(1)"),
    # a duplicate Message-ID gets a container of its own
    ((("a", [], 1), ("a", [], 1)), "(1)(2)"),
    ((("a", [], 1), ("b", ["a"], 1), ("c", ["b"], 1), ("b", ["a"], 1)), "(1 (2 3)(4))"),
    # siblings in date order, then sequence order
    ((("1", [], 9), ("2", ["1"], 5), ("3", ["1"], 4), ("4", ["2"], 5)), "(1 (3)(2 4))"),
    # a dummy parent at the top stays when it has several children, gives way to one
    ((("3", ["1"], 1), ("4", ["2"], 1), ("5", ["2"], 1)), "(1)((2)(3))"),
    (((None, ["x"], 1), (None, ["x"], 2)), "((1)(2))"),
    # a reference loop is not closed: b, which a named as its parent, keeps it as child
    ((("a", ["b"], 1), ("b", ["a"], 2)), "(2 1)"),
    ((("a", ["a"], 1),), "(1)"),
])
def test_references_links(specs, expected):
    assert thread_list(references(messages(*specs))) == expected


def test_references_subjects():
    # a reply joins the thread of its base subject; two non-replies meet under a dummy
    assert thread_list(references(messages(("a", [], 1, "FOO"), ("b", ["c"], 2, "FOO", True)))) == "(1 2)"
    assert thread_list(references(messages(("a", [], 1, "FOO"), ("b", [], 2, "FOO"), ("c", [], 3, "BAR")))) == \
        "((1)(2))(3)"
    # no subject: no merging
    assert thread_list(references(messages(("a", [], 1), ("b", [], 2)))) == "(1)(2)"


def test_ordered_subject():
    found = ordered_subject(messages(("a", [], 5, "A"), ("b", [], 3, "C"), ("c", [], 4, "A"), ("d", [], 1, "C"),
                                     ("e", [], 2, "C"), ("f", [], 9, "")))
    assert thread_list(found) == "(4 (5)(2))(3 1)(6)"
    assert thread_list(found, lambda seq: seq * 10) == "(40 (50)(20))(30 10)(60)"


def test_deep_chain_needs_no_recursion():
    chain = messages(*((str(i), [str(i - 1)] if i else [], i) for i in range(5000)))
    text = thread_list(references(chain))
    assert text.startswith("(1 2 3 ") and text.endswith(" 4999 5000)")


def test_reading_corpus_fields():
    assert message_ids(" <a@b>\n\t< c@d > <> junk") == ["a@b", "c@d"]
    vacation = read_message(Content(str(CORPUS / "11-vacation-reply.eml"), Budget()), 1, 0)
    assert vacation.message_id == "vacation.1764057672.frank@example.net"
    assert vacation.references == ["maint-sat-2026-11@example.test"]
    assert vacation.subject == "OUT OF OFFICE: RE: SERVER MAINTENANCE ON SATURDAY" and not vacation.reply
    # a folded References field; "Re: [dev] ..." is a reply; the Date: field as UTC
    folded = read_message(Content(str(CORPUS / "09-folded-headers.eml"), Budget()), 2, 0)
    assert folded.references == ["CAH2r5Mu1234abcd@mail.example.net", "87a1b2c3d4.fsf@workstation.example.com",
                                 "87lk9x4p1a.fsf@laptop.example.net"]
    assert folded.reply and folded.subject.startswith("PROPOSAL: MOVE") and folded.date == 1795541465

"""THREAD and UID THREAD (RFC 5256): `THREAD algorithm charset search-keys` -> `* THREAD (..)(..)`.

Algorithms ORDEREDSUBJECT and REFERENCES, over the messages the search keys match (SEARCH's
parse_program / matching / check_charset, workers/imapd/search.py). Each message's
Message-ID, References, In-Reply-To, Subject and Date fields are read (header only, in a
thread, under SEARCH's Budget) into a Message; the algorithms are pure functions of those:
    ordered_subject(messages) / references(messages) -> list[Node] (roots, in thread order)
    thread_list(roots, number) -> the response's thread lists (`(3 6 (4 23)(44 7 96))`)
Sent dates are sort.py's sent_time (Date: as UTC, else the internal date); subjects are the
casemapped base subjects of sort.py's subject_base; ties in date order fall back on sequence
numbers. REFERENCES: a message with no Message-ID, or one already taken by an earlier
message, gets a container of its own; the parent link a References chain implies is not made
when it would close a loop, and a message's last reference replaces any parent it had
(when that would close a loop, the message becomes a root). Everything is iterative, so
deep reference chains cost no recursion.
Diagnostics: BAD for a missing or unknown algorithm, a missing charset or malformed search
keys; NO [BADCHARSET], NO [LIMIT] as for SEARCH.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from workers.imapd.parser import Atom, Bad
from workers.imapd.search import (
    Budget,
    Content,
    Gone,
    check_charset,
    matching,
    parse_program,
)
from workers.imapd.sort import off_loop, sent_time, subject_key

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
CAPABILITIES = tuple(f"THREAD={name}" for name in ALGORITHMS)

_MESSAGE_ID = re.compile(r"<([^<>]*)>")


@dataclass
class Message:
    """What threading needs of one message."""
    seq: int
    date: int = 0                   # sent date, UTC epoch seconds
    subject: str = ""               # casemapped base subject
    reply: bool = False             # the subject had reply/forward decorations
    message_id: str | None = None
    references: list[str] = field(default_factory=list)


class Node:
    """A thread container: a message, or none (a dummy standing for a referenced message)."""
    __slots__ = ("children", "message", "parent")

    def __init__(self, message: Message | None = None):
        self.message = message
        self.parent: Node | None = None
        self.children: list[Node] = []


def message_ids(value: str) -> list[str]:
    """The <id>s of a field value, blanks inside removed; empty ones skipped."""
    ids = ("".join(found.split()) for found in _MESSAGE_ID.findall(value))
    return [i for i in ids if i]


def read_message(content: Content, seq: int, internal: int) -> Message:
    message = Message(seq, sent_time(content, internal))
    message.subject, message.reply = subject_key(content)
    for value in content.values("message-id"):
        found = message_ids(value)
        if found:
            message.message_id = found[0]
            break
    references = [i for value in content.values("references") for i in message_ids(value)]
    if not references:
        references = [i for value in content.values("in-reply-to") for i in message_ids(value)][:1]
    message.references = references
    return message


def read_messages(mailbox, seqs: list[int], budget: Budget) -> list[Message]:
    """The Message of each of seqs (a message expunged meanwhile keeps just its internal date)."""
    out = []
    for seq in seqs:
        internal = mailbox.view.record(seq).internal_date
        try:
            out.append(read_message(Content(mailbox.path(seq), budget), seq, internal))
        except Gone:
            out.append(Message(seq, internal))
    return out


# ---------------------------------------------------------------- algorithms

def _leader(node: Node) -> Message:
    """The message a container stands for in date order and subject: its own, or that of
    its first child (dummies)."""
    while node.message is None:
        node = node.children[0]
    return node.message


def _date_order(node: Node) -> tuple[int, int]:
    message = _leader(node)
    return message.date, message.seq


def _descendants_first(roots: list[Node]) -> list[Node]:
    """Every node below the roots (roots included), each after all of its descendants."""
    order, stack = [], list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _sort_siblings(roots: list[Node]) -> list[Node]:
    for node in _descendants_first(roots):
        node.children.sort(key=_date_order)
    return sorted(roots, key=_date_order)


def ordered_subject(messages: list[Message]) -> list[Node]:
    """ORDEREDSUBJECT: one thread per base subject; its earliest message is the parent of
    the others, which are siblings in date order; threads in the date order of their first."""
    roots: list[Node] = []
    for message in sorted(messages, key=lambda m: (m.subject, m.date, m.seq)):
        if roots and roots[-1].message.subject == message.subject:
            roots[-1].children.append(Node(message))
        else:
            roots.append(Node(message))
    return sorted(roots, key=_date_order)


def _closes_loop(parent: Node, child: Node) -> bool:
    """Whether making child a child of parent would close a loop (parent is child or below it)."""
    node = parent
    while node is not None:
        if node is child:
            return True
        node = node.parent
    return False


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    child.parent.children.remove(child)
    child.parent = None


def _containers(messages: list[Message]) -> list[Node]:
    """RFC 5256 REFERENCES (1)-(2): the containers linked by the messages' references;
    returns every container, in creation order."""
    table: dict[str, Node] = {}
    made: list[Node] = []

    def container(message_id: str | None) -> Node:
        node = table.get(message_id) if message_id is not None else None
        if node is None:
            node = Node()
            made.append(node)
            if message_id is not None:
                table[message_id] = node
        return node

    for message in messages:
        node = table.get(message.message_id) if message.message_id is not None else None
        if node is None or node.message is not None:       # none yet, or a duplicate ID
            node = container(None if node is not None else message.message_id)
        node.message = message
        previous = None
        for reference in message.references:
            current = container(reference)
            if previous is not None and current.parent is None and not _closes_loop(previous, current):
                _link(previous, current)
            previous = current
        if node.parent is not None:
            _unlink(node)
        if previous is not None and not _closes_loop(previous, node):
            _link(previous, node)
    return made


def _prune(roots: list[Node]) -> list[Node]:
    """(3): dummies without children go; the others give way to their children, except at
    the top when they have more than one."""
    for node in _descendants_first(roots):
        kept = []
        for child in node.children:
            if child.message is None:
                kept.extend(child.children)
            else:
                kept.append(child)
        node.children = kept
    top = []
    for node in roots:
        if node.message is None and len(node.children) < 2:
            top.extend(node.children)
        else:
            top.append(node)
    return top


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """(5): top-level threads with the same base subject come together."""
    table: dict[str, Node] = {}
    for node in roots:
        leader = _leader(node)
        if not leader.subject:
            continue
        held = table.get(leader.subject)
        if held is None or (node.message is None and held.message is not None) or \
                (held.message is not None and not leader.reply and _leader(held).reply):
            table[leader.subject] = node
    merged = [node for node in roots if not _leader(node).subject]
    for node in roots:
        leader = _leader(node)
        if not leader.subject:
            continue
        held = table[leader.subject]
        if held is node:
            continue
        if node.message is None and held.message is None:
            held.children.extend(node.children)
        elif held.message is None or (leader.reply and not _leader(held).reply):
            held.children.append(node)
        else:
            dummy = Node()
            dummy.children = [held, node]
            table[leader.subject] = dummy
    return merged + list(table.values())


def references(messages: list[Message]) -> list[Node]:
    """REFERENCES (RFC 5256 3): threads from References/In-Reply-To, then by base subject."""
    roots = [node for node in _containers(messages) if node.parent is None]
    roots = _sort_siblings(_prune(roots))
    return _sort_siblings(_merge_subjects(roots))


def thread_list(roots: list[Node], number=lambda seq: seq) -> str:
    """The thread lists of the THREAD response (number: seq -> the number to show)."""
    out: list[str] = []
    stack: list[object] = []
    for root in reversed(roots):
        stack += [")", root, "("]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        pieces: list[object] = []
        if item.message is not None:
            pieces.append(str(number(item.message.seq)))
            if item.children:
                pieces.append(" ")
        if len(item.children) == 1:
            pieces.append(item.children[0])
        else:
            for child in item.children:
                pieces += ["(", child, ")"]
        stack.extend(reversed(pieces))
    return "".join(out)


# ---------------------------------------------------------------- the command

def _threads(mailbox, seqs: list[int], algorithm: str, budget: Budget) -> list[Node]:
    messages = read_messages(mailbox, seqs, budget)
    return references(messages) if algorithm == "REFERENCES" else ordered_subject(messages)


async def thread(session, command) -> None:
    uid = command.name.startswith("UID ")
    args = list(command.args)
    algorithm = args.pop(0).upper() if args and isinstance(args[0], Atom) else ""
    if algorithm not in ALGORITHMS:
        raise Bad("THREAD needs an algorithm: " + " or ".join(ALGORITHMS))
    if not args:
        raise Bad("THREAD needs a charset")
    check_charset(session, args.pop(0))
    seqs = await matching(session, parse_program(args))
    mailbox = session.selected.view
    roots = await off_loop(session, "Thread", _threads, mailbox, seqs, algorithm, Budget())
    number = mailbox.view.uid if uid else (lambda seq: seq)
    await session.untagged(("THREAD " + thread_list(roots, number)).rstrip())
    await session.ok(f"{command.name} completed")

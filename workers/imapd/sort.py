"""SORT and UID SORT (RFC 5256): `SORT (keys) charset search-keys` -> `* SORT n ...`.

Sort keys: ARRIVAL (internal date), CC, FROM, TO (the local part of the field's first
address), DATE (the Date: header as UTC, the internal date when it has none or an
unparsable one), SIZE, SUBJECT (the base subject of RFC 5256 2.1), each optionally after
REVERSE; strings compare with i;ascii-casemap; ties end in sequence-number order. The
search keys and charset are SEARCH's (workers/imapd/search.py: parse_program, matching,
check_charset); header fields are read (header only) in a thread under SEARCH's Budget.
base_subject(text) is exposed for tests.
Diagnostics: BAD for a missing, empty or unknown sort key list; what SEARCH answers
otherwise (BADCHARSET, LIMIT).
"""
from __future__ import annotations

import asyncio
import email.utils
import re

from workers.imapd.parser import Atom, Bad
from workers.imapd.search import (
    Budget,
    Content,
    Gone,
    SearchLimit,
    address_list,
    check_charset,
    decode_words,
    matching,
    parse_program,
)

CAPABILITIES = ("SORT",)

_HEADER_KEYS = ("CC", "DATE", "FROM", "SUBJECT", "TO")
_KEYS = ("ARRIVAL", "SIZE") + _HEADER_KEYS
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACES = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_TRAILER = re.compile(r"(?:[ \t]|\(fwd\))+\Z", re.IGNORECASE)
_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:[ \t]*|[ \t]+", re.IGNORECASE)
_LEADING_BLOB = re.compile(_BLOB)
_FWD_HEADER = re.compile(r"\[fwd:(.*)\]\Z", re.IGNORECASE | re.DOTALL)


def base_subject(subject: str) -> str:
    """RFC 5256 2.1: the subject without its reply/forward decorations (decoded text in)."""
    text = _SPACES.sub(" ", subject)
    while True:
        text = _TRAILER.sub("", text)                  # (2) trailing "(fwd)" and blanks
        while True:                                    # (3)-(5) leading "re:", "[blob]"...
            before = text
            match = _LEADER.match(text)
            if match and match.end():
                text = text[match.end():]
            blob = _LEADING_BLOB.match(text)
            if blob and text[blob.end():]:
                text = text[blob.end():]
            if text == before:
                break
        wrapped = _FWD_HEADER.match(text)              # (6) "[fwd: ... ]"
        if not wrapped:
            return text
        text = wrapped.group(1)


def _casemap(text: str) -> str:
    return text.translate(_ASCII_UPPER)


def _first_mailbox(content: Content, name: str) -> str:
    for value in content.values(name):
        for _, addr in address_list(value):
            if addr:
                return _casemap(addr.rpartition("@")[0] if "@" in addr else addr)
    return ""


def _sent_time(content: Content, internal: int) -> int:
    for value in content.values("date"):
        try:
            parsed = email.utils.parsedate_tz(decode_words(value))
            if parsed is not None:
                return int(email.utils.mktime_tz(parsed))
        except (ValueError, IndexError, TypeError, OverflowError):
            pass
    return internal


def _header_value(key: str, content: Content, internal: int):
    if key == "DATE":
        return _sent_time(content, internal)
    if key == "SUBJECT":
        subjects = content.values("subject")
        return _casemap(base_subject(decode_words(subjects[0]))) if subjects else ""
    return _first_mailbox(content, key.lower())


def sort_keys(tokens) -> list[tuple[str, bool]]:
    """The sort criteria list -> [(key, reverse)]."""
    if not isinstance(tokens, list) or not tokens:
        raise Bad("SORT needs a parenthesised list of sort keys")
    keys, reverse = [], False
    for token in tokens:
        name = token.upper() if isinstance(token, Atom) else ""
        if name == "REVERSE" and not reverse:
            reverse = True
            continue
        if name not in _KEYS:
            raise Bad(f"Unknown sort key {str(token)[:40]}")
        keys.append((name, reverse))
        reverse = False
    if reverse:
        raise Bad("REVERSE needs a sort key after it")
    return keys


def order(mailbox, seqs: list[int], keys: list[tuple[str, bool]], budget: Budget) -> list[int]:
    """seqs (ascending) sorted by keys; reads the header of each message when a key needs it."""
    view = mailbox.view
    records = {seq: view.record(seq) for seq in seqs}
    values: dict[str, dict[int, object]] = {}
    header_keys = [name for name, _ in keys if name in _HEADER_KEYS]
    if header_keys:
        for seq in seqs:
            content = Content(mailbox.path(seq), budget)
            for name in header_keys:
                try:
                    value = _header_value(name, content, records[seq].internal_date)
                except Gone:
                    value = records[seq].internal_date if name == "DATE" else ""
                values.setdefault(name, {})[seq] = value
    result = list(seqs)
    for name, reverse in reversed(keys):        # stable sorts, the last key first
        if name == "ARRIVAL":
            result.sort(key=lambda s: records[s].internal_date, reverse=reverse)
        elif name == "SIZE":
            result.sort(key=lambda s: records[s].size, reverse=reverse)
        else:
            column = values[name]
            result.sort(key=column.__getitem__, reverse=reverse)
    return result


async def sort(session, command) -> None:
    uid = command.name.startswith("UID ")
    args = list(command.args)
    if not args:
        raise Bad("SORT needs sort keys, a charset and search keys")
    keys = sort_keys(args.pop(0))
    if not args:
        raise Bad("SORT needs a charset")
    check_charset(args.pop(0))
    program = parse_program(args)
    seqs = await matching(session, program)
    mailbox = session.selected.view
    try:
        ordered = await asyncio.to_thread(order, mailbox, seqs, keys, Budget())
    except SearchLimit as e:
        session.log.info(f"sort limit: user={session.user} mailbox={session.selected.name} {e}")
        raise Bad(f"Sort not completed: {e}", status="NO", code="LIMIT") from None
    numbers = [mailbox.view.uid(seq) for seq in ordered] if uid else ordered
    await session.untagged(" ".join(["SORT", *map(str, numbers)]))
    await session.ok(f"{command.name} completed")

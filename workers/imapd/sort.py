"""SORT and UID SORT (RFC 5256) with ESORT (RFC 5267) and SORT=DISPLAY (RFC 5957).

`SORT [RETURN (opts)] (keys) charset search-keys` -> `* SORT n ...`, or with RETURN an
`* ESEARCH (TAG ..)` whose MIN/MAX are the first/last in sort order and whose ALL keeps the
sort order (SEARCH's return options, SAVE included: workers/imapd/search.py answer()).
Sort keys: ARRIVAL (internal date), CC, FROM, TO (the mailbox of the field's first address;
a group's start counts, with the group name as mailbox), DISPLAYFROM, DISPLAYTO (its display
name, else its addr-spec), DATE (the Date: header as UTC, the internal date when it has none
or an unparsable one), SIZE, SUBJECT (the base subject of RFC 5256 2.1), each optionally
after REVERSE, which reverses that key only; strings compare with i;ascii-casemap (display
names case-folded); ties end in sequence-number order. The search keys and charset are
SEARCH's; header fields are read (header only) in a thread under SEARCH's Budget.
Shared with THREAD (workers/imapd/thread.py): subject_base(text) -> (base, reply/forward),
subject_key(content), sent_time(content, internal), off_loop(session, verb, fn, *args).
Diagnostics: BAD for a missing, empty or unknown sort key list; what SEARCH answers
otherwise (BADCHARSET, LIMIT).
"""
from __future__ import annotations

import asyncio
import email.utils
import re

from workers.imapd.mime import addresses
from workers.imapd.parser import Atom, Bad
from workers.imapd.search import (
    Budget,
    Content,
    Gone,
    SearchLimit,
    answer,
    check_charset,
    decode_words,
    forget_on_failure,
    matching,
    parse_program,
    return_options,
    uses_modseq,
)

CAPABILITIES = ("SORT", "ESORT", "SORT=DISPLAY")

_HEADER_KEYS = ("CC", "DATE", "DISPLAYFROM", "DISPLAYTO", "FROM", "SUBJECT", "TO")
_KEYS = ("ARRIVAL", "SIZE") + _HEADER_KEYS
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACES = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_TRAILER = re.compile(r"(?:[ \t]|\(fwd\))+\Z", re.IGNORECASE)
_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:[ \t]*|[ \t]+", re.IGNORECASE)
_LEADING_BLOB = re.compile(_BLOB)
_FWD_HEADER = re.compile(r"\[fwd:(.*)\]\Z", re.IGNORECASE | re.DOTALL)


def subject_base(subject: str) -> tuple[str, bool]:
    """RFC 5256 2.1: (the subject without its reply/forward decorations, whether any
    "re:"/"fwd:" leader, "(fwd)" trailer or "[fwd: ...]" wrapper was removed)."""
    text = _SPACES.sub(" ", subject)
    reply = False
    while True:
        trailer = _TRAILER.search(text)                # (2) trailing "(fwd)" and blanks
        if trailer:
            reply = reply or "(" in trailer.group()
            text = text[:trailer.start()]
        while True:                                    # (3)-(5) leading "re:", "[blob]"...
            before = text
            match = _LEADER.match(text)
            if match and match.end():
                reply = reply or not match.group().isspace()
                text = text[match.end():]
            blob = _LEADING_BLOB.match(text)
            if blob and text[blob.end():]:
                text = text[blob.end():]
            if text == before:
                break
        wrapped = _FWD_HEADER.match(text)              # (6) "[fwd: ... ]"
        if not wrapped:
            return text, reply
        text, reply = wrapped.group(1), True


def base_subject(subject: str) -> str:
    return subject_base(subject)[0]


def casemap(text: str) -> str:
    """i;ascii-casemap's canonical form."""
    return text.translate(_ASCII_UPPER)


def subject_key(content: Content) -> tuple[str, bool]:
    """(the casemapped base subject of the first Subject: field, reply/forward)."""
    subjects = content.values("subject")
    if not subjects:
        return "", False
    base, reply = subject_base(decode_words(subjects[0]))
    return casemap(base), reply


def _octets(value) -> str:
    return value.decode("utf-8", "replace") if value else ""


def first_address(content: Content, name: str) -> tuple | None:
    """The first address (mime.addresses' tuple) of the first instance of the field that has
    one; a group's start counts, its name as mailbox (as in the ENVELOPE)."""
    for value in content.values(name):
        found = addresses(value.encode("utf-8", "surrogateescape"))
        if found:
            return found[0]
    return None


def _mailbox_of(content: Content, name: str) -> str:
    address = first_address(content, name)
    return casemap(_octets(address[2])) if address else ""


def _display_of(content: Content, name: str) -> str:
    """RFC 5957: the display name of the first address, else its addr-spec."""
    address = first_address(content, name)
    if address is None:
        return ""
    display, _, mailbox, host = address
    if display:
        text = decode_words(_octets(display))
    else:
        text = _octets(mailbox) + ("@" + _octets(host) if host else "")
    return text.casefold()


def sent_time(content: Content, internal: int) -> int:
    """The Date: field as UTC epoch seconds; the internal date when it has none or a bad one."""
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
        return sent_time(content, internal)
    if key == "SUBJECT":
        return subject_key(content)[0]
    if key.startswith("DISPLAY"):
        return _display_of(content, key.removeprefix("DISPLAY").lower())
    return _mailbox_of(content, key.lower())


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
    """seqs (ascending) sorted by keys; reads the header of each message when a key needs it.
    Python's sorts are stable (also reversed), so ties keep sequence order under REVERSE too."""
    if not seqs:
        return []
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


async def off_loop(session, verb: str, fn, *args):
    """fn(*args) in a thread; SEARCH's budget running out there is NO [LIMIT] (logged)."""
    try:
        return await asyncio.to_thread(fn, *args)
    except SearchLimit as e:
        session.log.info(f"{verb.lower()} limit: user={session.user} mailbox={session.selected.name} {e}")
        raise Bad(f"{verb} not completed: {e}", status="NO", code="LIMIT") from None


async def sort(session, command) -> None:
    uid = command.name.startswith("UID ")
    args = list(command.args)
    options = return_options(args)
    try:
        if not args:
            raise Bad("SORT needs sort keys, a charset and search keys")
        keys = sort_keys(args.pop(0))
        if not args:
            raise Bad("SORT needs a charset")
        check_charset(session, args.pop(0))
        program = parse_program(args)
        seqs = await matching(session, program)
        ordered = await off_loop(session, "Sort", order, session.selected.view, seqs, keys, Budget())
    except Bad:
        forget_on_failure(session, options)
        raise
    await answer(session, command, uid, ordered, options, "SORT", uses_modseq(program))

"""The mail store's on-disk vocabulary: mailbox names, file names and the two small text files.

Layout (mail_store_directory):
  <user>/<mailbox path...>/       one directory per mailbox, any depth ("Work/2024" is
                                  <user>/Work/2024/); name parts are %-encoded where unsafe
  <mailbox dir>/<uid>.<uidvalidity>.eml   one file per message
  <mailbox dir>/.mailbox          UIDVALIDITY, subscription, special-use, ACL (written durably)
  <mailbox dir>/.journal          flag changes and expunges, appended: a recovery hint that
                                  reconstruct reads to keep flags after the index is lost
  .deleted.*                      a mailbox or user directory on its way out
The writer (store/mailstore.py) and the reader that rebuilds the index from the files
(store/reconstruct.py) both speak through this module, so neither imports the other's names.

Interface:
  normalise_mailbox(name) -> name      "/"-separated, INBOX case-insensitive (BadMailboxName)
  encode_component(part) / decode_component(entry)   a name part <-> a directory entry
  message_file_name(uid, uidvalidity) / parse_message_file_name(entry) -> (uid, uidvalidity) | None
  meta_text(uidvalidity, subscribed, special_use, acl={}) / read_meta(path) -> {key: value};
  meta_acl(meta) -> {identifier: rights}: the `acl` line (`acl anyone=lr bob=lrs`), for reconstruct
  journal_flags(uid, flags), journal_expunged(uids), journal_next(uidnext): journal lines;
  read_journal(path) -> Journal (last flags per UID, expunged UIDs, highest UID seen)
Diagnostics: BadMailboxName (a ValueError) for a name the store cannot hold; unreadable
meta and journal files read as empty (they are hints, the index is the truth).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import unquote

INBOX = "INBOX"
SEPARATOR = "/"
MESSAGE_SUFFIX = ".eml"
META_FILE = ".mailbox"
JOURNAL_FILE = ".journal"
DELETED_PREFIX = ".deleted."
MAX_NAME_DEPTH = 16
MAX_COMPONENT_BYTES = 200
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+=@,. ")


class BadMailboxName(ValueError):
    """The mailbox name is empty, too deep, or has an empty or control-character part."""


# ---------------------------------------------------------------- names

def normalise_mailbox(name: str) -> str:
    """Validate a mailbox name ("/"-separated); INBOX is case-insensitive."""
    parts = name.split(SEPARATOR)
    if not name or len(parts) > MAX_NAME_DEPTH or any(not p for p in parts):
        raise BadMailboxName(f"bad mailbox name {name!r}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise BadMailboxName("control characters in mailbox name")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    return SEPARATOR.join(parts)


def encode_component(text: str) -> str:
    """A name part as a directory name: unsafe bytes, "%" and a leading "." become %XX."""
    out = []
    for i, ch in enumerate(text):
        if ch in _SAFE and not (ch == "." and i == 0):
            out.append(ch)
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
    encoded = "".join(out)
    if len(encoded.encode()) > MAX_COMPONENT_BYTES:
        raise BadMailboxName(f"name part too long: {text[:40]!r}...")
    return encoded


def decode_component(encoded: str) -> str:
    return unquote(encoded, errors="strict")


def message_file_name(uid: int, uidvalidity: int) -> str:
    return f"{uid}.{uidvalidity}{MESSAGE_SUFFIX}"


def parse_message_file_name(name: str) -> tuple[int, int] | None:
    """(uid, uidvalidity) of a file this store wrote, else None."""
    if not name.endswith(MESSAGE_SUFFIX):
        return None
    uid_text, _, validity_text = name[:-len(MESSAGE_SUFFIX)].partition(".")
    if uid_text.isdigit() and validity_text.isdigit() and 0 < int(uid_text) <= 0xFFFFFFFF:
        return int(uid_text), int(validity_text)
    return None


# ---------------------------------------------------------------- .mailbox

def meta_text(uidvalidity: int, subscribed: bool, special_use: str, acl: dict[str, str] | None = None) -> str:
    text = f"uidvalidity {uidvalidity}\nsubscribed {int(subscribed)}\nspecial-use {special_use}\n"
    if acl:
        text += "acl " + " ".join(f"{identifier}={rights}" for identifier, rights in sorted(acl.items())) + "\n"
    return text


def meta_acl(meta: dict[str, str]) -> dict[str, str]:
    """The ACL entries of a read_meta() result; malformed words are skipped (a hint only)."""
    pairs = (word.partition("=") for word in meta.get("acl", "").split())
    return {identifier: rights for identifier, sep, rights in pairs if identifier and sep and rights}


def read_meta(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return dict(line.rstrip("\n").partition(" ")[::2] for line in f if " " in line)
    except OSError:
        return {}


# ---------------------------------------------------------------- .journal

def journal_flags(uid: int, flags: Iterable[str]) -> str:
    return f"f {uid} {' '.join(flags)}\n"


def journal_expunged(uids: Iterable[int]) -> str:
    return "x " + " ".join(map(str, uids)) + "\n"


def journal_next(uidnext: int) -> str:
    return f"n {uidnext}\n"


@dataclass
class Journal:
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)
    expunged: set[int] = field(default_factory=set)
    highest_uid: int = 0


def read_journal(path: str) -> Journal:
    journal = Journal()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return journal
    for line in lines:
        words = line.split()
        if len(words) < 2 or not words[1].isdigit():
            continue  # a torn last line after a crash, or junk
        if words[0] == "f":
            uid = int(words[1])
            journal.flags[uid] = tuple(words[2:])
            journal.expunged.discard(uid)
        elif words[0] == "x":
            uid = max(int(w) for w in words[1:] if w.isdigit())
            journal.expunged.update(int(w) for w in words[1:] if w.isdigit())
        elif words[0] == "n":
            uid = int(words[1]) - 1
        else:
            continue
        journal.highest_uid = max(journal.highest_uid, uid)
    return journal

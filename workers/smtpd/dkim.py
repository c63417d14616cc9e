"""DKIM signing (RFC 6376) of the mail that smtpd accepts from its own users.

Who is signed: a message whose client authenticated (SASL) or is in mynetworks (the
session decides: Session.may_sign; Backend.open_message(sign=True) hands this module's
Signer.top to the queue writer), when `dkim_signing = yes` and a key exists for the domain
of its From: address. Mail from anyone else (inbound mail) is never signed.

Keys: `$dkim_key_directory/DOMAIN.SELECTOR.key` (written by `mailctl dkim keygen`, or any
PEM private key, PKCS#8 or the traditional RSA form), RSA (rsa-sha256) or Ed25519
(ed25519-sha256, RFC 8463). DOMAIN is matched exactly and case-insensitively against the
From: domain (a key for example.org does not sign mail from sub.example.org); the
selector is one DNS label, so the name splits at its last dot. When a domain has several
keys, the oldest file (mtime) signs: a new key waits, unused, while its DNS record spreads,
and takes over once the old file is removed. The listing of the folder is read again when
the folder's mtime changes (and while it changed less than a second ago), a key file when
its own mtime does; otherwise both stay in memory for the life of the worker process.

The signature: relaxed/relaxed; h= the fields of SIGNED_FIELDS and List-* that the message
has (each occurrence), plus From once more than present (over-signing: a From: added on
the way breaks the signature instead of being believed). It goes on top of the message,
above the Received: that smtpd wrote when it spooled the message. DKIM does not sign
Received: (each hop adds its own on top), so a verifier finds the same signed fields and
body wherever the signature sits; on top is where signers that run after the MTA's own
trace header put it, and RFC 6376 5.6 asks for new signatures to be prepended.

Where the work runs: Signer.top(message) is called by QueueWriter.commit in the thread that
writes the queue file (never on the event loop): it reads the spooled message's header
first and the body only when a key matches; the whole message is then in memory once
(dkimpy signs bytes), bounded by message_size_limit.
Diagnostics (smtp.log): a key that cannot be loaded or used is logged once per file and
mtime (`warning: DKIM key PATH: ...`), and its mail is accepted unsigned (never refused,
never lost); each signature at level high (`DKIM-Signature d=... s=...`).
"""
from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from workers._log import Log

KEY_SUFFIX = ".key"
DEFAULT_SELECTOR = "mail"
SIGNED_FIELDS = ("from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
                 "references", "mime-version", "content-type", "content-transfer-encoding")
HEAD_LIMIT = 1024 * 1024           # octets of header read to find From:; a longer head is not signed
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})+")
SELECTOR = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


# ---------------------------------------------------------------- key files

def key_name(domain: str, selector: str) -> str:
    return f"{domain}.{selector}{KEY_SUFFIX}"


def parse_key_name(name: str) -> tuple[str, str] | None:
    """`DOMAIN.SELECTOR.key` -> (domain, selector), lowercase; None for any other name."""
    if not name.endswith(KEY_SUFFIX):
        return None
    domain, _, selector = name[:-len(KEY_SUFFIX)].lower().rpartition(".")
    if not DOMAIN.fullmatch(domain) or not SELECTOR.fullmatch(selector):
        return None
    return domain, selector


def load_private_key(path: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """The PEM key in path; ValueError for an unreadable, encrypted or other kind of key."""
    with open(path, "rb") as f:
        try:
            key = serialization.load_pem_private_key(f.read(), password=None)
        except TypeError:                                # encrypted
            raise ValueError("the key is encrypted") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError(f"a {type(key).__name__}, neither RSA nor Ed25519")  # noqa: TRY004 - bad file content
    return key


def key_files(directory: str) -> dict[str, list[tuple[str, str]]]:
    """domain -> [(selector, path), ...] of the key files in directory (OSError if unreadable)."""
    files: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(os.listdir(directory)):
        parsed = parse_key_name(name)
        if parsed:
            files.setdefault(parsed[0], []).append((parsed[1], os.path.join(directory, name)))
    return files


def signing_file(files: list[tuple[str, str]]) -> tuple[int, str, str] | None:
    """Of one domain's (selector, path) files, the one that signs: (mtime_ns, selector, path)
    of the oldest; None when none is left."""
    found = []
    for selector, path in files:
        try:
            found.append((os.stat(path).st_mtime_ns, selector, path))
        except OSError:
            continue                             # removed since the listing
    return min(found, default=None)


@dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    path: str
    mtime_ns: int
    algorithm: bytes                  # a= of the signature
    secret: bytes                     # the private key as dkimpy takes it


def load_key(domain: str, selector: str, path: str, mtime_ns: int) -> Key:
    key = load_private_key(path)
    if isinstance(key, rsa.RSAPrivateKey):       # dkimpy reads the PKCS#1 PEM form
        return Key(domain, selector, path, mtime_ns, b"rsa-sha256",
                   key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return Key(domain, selector, path, mtime_ns, b"ed25519-sha256", base64.b64encode(raw))


# ---------------------------------------------------------------- the message

def read_head(message: BinaryIO) -> bytes | None:
    """The header block (up to and including the empty line); None when over HEAD_LIMIT."""
    lines, size = [], 0
    while True:
        line = message.readline(HEAD_LIMIT)
        lines.append(line)
        size += len(line)
        if size > HEAD_LIMIT:
            return None
        if line in (b"\r\n", b"\n", b""):
            return b"".join(lines)


def from_domain(head: bytes) -> str | None:
    """The domain of the From: address, lowercase; None unless there is exactly one From:
    field and all of its addresses are in one domain."""
    fields = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head, headersonly=True).get_all("From")
    if not fields or len(fields) != 1:
        return None
    domains = {address.rpartition("@")[2].rstrip(".").lower()
               for _, address in email.utils.getaddresses([str(fields[0])]) if "@" in address}
    return domains.pop() if len(domains) == 1 else None


def fields_to_sign(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """h=: every occurrence of the fields we sign, then From once more (over-signing)."""
    names = [name.lower() for name, _ in headers]
    signed = [n for n in names if n.decode("latin-1") in SIGNED_FIELDS or n.startswith(b"list-")]
    return [*signed, b"from"]


# ---------------------------------------------------------------- the signer

class Signer:
    """One per smtpd process; top() is thread-safe (commits of several sessions run at once)."""

    def __init__(self, directory: str, log: Log):
        self.directory = directory
        self.log = log
        self._lock = threading.Lock()
        self._listed_ns: int | None = None            # the folder's mtime when listed (-1: list again)
        self._files: dict[str, list[tuple[str, str]]] = {}   # domain -> [(selector, path)]
        self._keys: dict[str, Key] = {}                # path -> loaded key
        self._reported: set[tuple[str, int]] = set()   # (path, mtime_ns) already logged as bad
        self._reported_lock = threading.Lock()

    @classmethod
    def from_params(cls, params, log: Log) -> Signer | None:
        return cls(params.dkim_key_directory, log) if params.dkim_signing else None

    def top(self, message: BinaryIO) -> bytes:
        """A DKIM-Signature field for the message read from `message` (at its start), or b""
        when no key applies or signing failed. Never raises."""
        try:
            with self._lock:
                if not self._listing():
                    return b""                    # no keys at all: not even the header is read
            head = read_head(message)
            domain = from_domain(head) if head is not None else None
            key = self.key_for(domain) if domain else None
            if key is None:
                return b""
            return self.sign(key, head + message.read())
        except Exception as e:  # noqa: BLE001 - a message dkimpy cannot parse: unsigned, as promised
            self.log.info(f"warning: DKIM: message not signed: {type(e).__name__}: {e}")
            return b""

    def sign(self, key: Key, message: bytes) -> bytes:
        signer = dkim.DKIM(message, signature_algorithm=key.algorithm, linesep=b"\r\n")
        try:
            field = signer.sign(key.selector.encode(), key.domain.encode(), key.secret,
                                canonicalize=(b"relaxed", b"relaxed"),
                                include_headers=fields_to_sign(signer.headers))
        except dkim.KeyFormatError as e:
            self._report(key.path, key.mtime_ns, f"cannot sign with it: {e}")
            return b""
        self.log.debug(f"DKIM-Signature d={key.domain} s={key.selector} a={key.algorithm.decode()}")
        return field

    def key_for(self, domain: str) -> Key | None:
        """The key that signs for domain (the oldest of its files), loaded or reloaded."""
        with self._lock:
            chosen = signing_file(self._listing().get(domain, []))
            if chosen is None:
                return None
            mtime_ns, selector, path = chosen
            key = self._keys.get(path)
            if key is not None and key.mtime_ns == mtime_ns:
                return key
            try:
                key = load_key(domain, selector, path, mtime_ns)
            except (OSError, ValueError) as e:
                self._report(path, mtime_ns, f"cannot load it: {getattr(e, 'strerror', None) or e}")
                return None
            self._keys[path] = key
            return key

    def _listing(self) -> dict[str, list[tuple[str, str]]]:
        try:
            listed_ns = os.stat(self.directory).st_mtime_ns
        except OSError:
            listed_ns = None                      # no folder: no keys
        if listed_ns != self._listed_ns:
            # A change within the clock's granularity may not move the mtime again: a folder
            # changed in the last second is listed again next time.
            recent = listed_ns is not None and time.time_ns() - listed_ns < 1_000_000_000
            self._listed_ns = -1 if recent else listed_ns
            try:
                self._files = key_files(self.directory) if listed_ns is not None else {}
            except OSError as e:
                self._report(self.directory, listed_ns, f"cannot list the folder: {e.strerror}")
                self._files = {}
            listed = {path for files in self._files.values() for _, path in files}
            self._keys = {path: key for path, key in self._keys.items() if path in listed}
        return self._files

    def _report(self, path: str, mtime_ns: int, what: str) -> None:
        with self._reported_lock:
            if (path, mtime_ns) in self._reported:
                return
            self._reported.add((path, mtime_ns))
        self.log.info(f"warning: DKIM key {path}: {what}; the mail it would sign is accepted unsigned")

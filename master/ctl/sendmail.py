"""sendmail: the sendmail-compatible submission command that scripts and cron use.

    sendmail [-t] [-i] [-f SENDER] [-F NAME] [-c PATH] [-N DSN] [-R RET] [-V ENVID] [RCPT ...] < message

Reads the message on stdin and writes it durably into the `maildrop` queue, then pokes
qmgr (if it is not running, the mail waits there and is delivered when the master starts).
Any local user may run it when the system runs as root: maildrop takes files from everyone,
and qmgr's pickup checks them and puts the trusted Received: line naming the submitter's
uid on top (store.maildrop); a user who may not write the wake-up FIFO is seen within
seconds anyway (qmgr watches maildrop).
-t takes the recipients from To/Cc/Bcc (Resent-To/-Cc/-Bcc when the message has Resent-
headers) in addition to those on the command line; Bcc headers are removed. Without -i
(or -oi) a line holding a single dot ends the message, as in sendmail. Unqualified
addresses get `@myhostname`. From, Date and Message-ID are added when missing.
DSN requests as in Postfix: -N never | success,failure,delay (for every recipient),
-R full | hdrs, -V envid (printable ASCII, at most 100 characters).
Accepted and ignored, because cron and scripts pass them: -bm, -oXXX, -odb/-odi, -v,
-B TYPE, -L LABEL, -em/-ep/-eq.
Exit codes (sysexits): 0 queued, 64 usage, 65 bad message (too big, no recipients,
bad address), 75 temporary (queue not writable, disk full), 78 configuration.
"""
from __future__ import annotations

import email.utils
import getpass
import os
import pwd
import re
import secrets
import sys
import time
from dataclasses import dataclass, field

from master.cf import resolve_config_path
from master.params import ConfigError, Params, load_main_cf
from store.fsio import StorageError
from store.maildrop import bad_address, drop
from store.queue import Envelope, Queue, Recipient, wake_qmgr

EX_USAGE, EX_DATAERR, EX_TEMPFAIL, EX_CONFIG = 64, 65, 75, 78

MAX_HEADER_LINE = 64 * 1024      # a header line longer than this is not a header line
MAX_RECIPIENTS = 10_000
# Options that take an argument (attached, `-fbob`, or separate, `-f bob`).
_WITH_ARG = set("fFcCNRVBLOhpqrX")
_IGNORED_FLAGS = {"-bm", "-v", "-odb", "-odi", "-em", "-ep", "-eq", "-ew", "-Am", "-Ac"}

USAGE = ("usage: sendmail [-t] [-i] [-f sender] [-F full name] [-c config] [-N dsn] [-R ret] [-V envid]"
         " [recipient ...]")


class UsageError(Exception):
    pass


class MessageError(Exception):
    """The message or its addresses cannot be queued (EX_DATAERR)."""


@dataclass
class Options:
    config: str = "etc"
    sender: str | None = None          # None: the invoking user; "" the null sender
    full_name: str = ""
    extract: bool = False               # -t
    dot_ends: bool = True               # cleared by -i / -oi
    recipients: list[str] = field(default_factory=list)
    notify: list[str] | None = None     # -N: ["NEVER"] or a subset of NOTIFY_WORDS
    ret: str | None = None              # -R: FULL | HDRS
    envid: str | None = None            # -V


NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}


def _dsn_option(letter: str, value: str, opts: Options) -> None:
    """-N, -R and -V: checked like the SMTP parameters they stand for (RFC 3461)."""
    if letter == "N":
        words = [w.strip().upper() for w in value.split(",")]
        if words != ["NEVER"] and not (words and set(words) <= NOTIFY_WORDS and len(set(words)) == len(words)):
            raise UsageError(f"-N wants never or a list of success, failure, delay, not {value!r}")
        opts.notify = words
    elif letter == "R":
        if value.upper() not in ("FULL", "HDRS"):
            raise UsageError(f"-R wants full or hdrs, not {value!r}")
        opts.ret = value.upper()
    else:
        if not value or len(value) > 100 or not all(" " <= c <= "~" for c in value):
            raise UsageError("-V wants an envelope id of 1 to 100 printable ASCII characters")
        opts.envid = value


def parse_options(argv: list[str]) -> Options:
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            opts.recipients += args
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        letter = arg[1]
        if letter in _WITH_ARG and letter != "o":
            value = arg[2:]
            if not value:
                if not args:
                    raise UsageError(f"option -{letter} needs a value")
                value = args.pop(0)
            if letter in "fr":
                opts.sender = value
            elif letter == "F":
                opts.full_name = value
            elif letter in "cC":
                opts.config = value
            elif letter in "NRV":
                _dsn_option(letter, value, opts)
            continue
        if letter == "o":
            if arg in ("-oi", "-oitrue"):
                opts.dot_ends = False
            elif arg == "-o" and args:
                args.pop(0)            # -o with a separate value: nothing we use
            continue
        if arg == "-t":
            opts.extract = True
        elif arg == "-i":
            opts.dot_ends = False
        elif arg.startswith("-b") and arg != "-bm":
            raise UsageError(f"mode {arg} is not supported (only -bm, the default)")
        elif arg not in _IGNORED_FLAGS:
            raise UsageError(f"unknown option {arg}")
    return opts


def read_message(stream, dot_ends: bool, limit: int) -> bytes:
    """stdin up to EOF (or a lone "." line unless -i), as CRLF lines; MessageError over limit."""
    lines: list[bytes] = []
    size = 0
    for line in iter(lambda: stream.readline(MAX_HEADER_LINE), b""):
        body = line.rstrip(b"\r\n")
        if dot_ends and body == b".":
            break
        lines.append(body + b"\r\n")
        size += len(body) + 2
        if limit and size > limit:
            raise MessageError(f"message is larger than message_size_limit ({limit} bytes)")
    return b"".join(lines)


def split_message(raw: bytes) -> tuple[list[bytes], bytes]:
    """(header lines, each with continuations joined keeping their CRLF; the rest). Leading
    mbox `From ` lines (a message saved from a mailbox) are not part of it and are dropped."""
    headers: list[bytes] = []
    pos = 0
    while raw.startswith(b"From ", pos):
        end = raw.find(b"\r\n", pos)
        pos = len(raw) if end < 0 else end + 2
    while pos < len(raw):
        end = raw.find(b"\r\n", pos)
        end = len(raw) if end < 0 else end + 2
        line = raw[pos:end]
        if line in (b"\r\n", b""):
            return headers, raw[pos:]
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1] += line
        elif re.match(rb"[!-9;-~]+:", line):
            headers.append(line)
        else:                           # not a header: the body starts here
            return headers, b"\r\n" + raw[pos:]
        pos = end
    return headers, b""


def _name(line: bytes) -> str:
    return line.split(b":", 1)[0].decode("ascii", "replace").strip().lower()


def _value(line: bytes) -> str:
    return line.split(b":", 1)[1].decode("utf-8", "replace")


def extract_recipients(headers: list[bytes]) -> list[str]:
    names = {_name(h) for h in headers}
    wanted = ("resent-to", "resent-cc", "resent-bcc") if names & {"resent-to", "resent-cc", "resent-bcc"} \
        else ("to", "cc", "bcc")
    values = [_value(h) for h in headers if _name(h) in wanted]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def qualify(address: str, domain: str) -> str:
    address = address.strip().strip("<>").strip()
    if not address:
        raise MessageError("empty recipient address")
    if bad_address(address) or address.count("@") > 1 or address.endswith("@") or address.startswith("@"):
        raise MessageError(f"bad address {address!r}")
    return address if "@" in address else f"{address}@{domain}"


def login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def complete_headers(headers: list[bytes], sender: str, full_name: str, hostname: str,
                     queue_id: str, now: float) -> list[bytes]:
    """Drop Bcc, add From/Date/Message-ID when missing (the Received: line is pickup's)."""
    kept = [h for h in headers if _name(h) not in ("bcc", "resent-bcc")]
    names = {_name(h) for h in kept}
    added: list[str] = []
    if "from" not in names:
        author = sender or f"MAILER-DAEMON@{hostname}"
        added.append(f"From: {email.utils.formataddr((full_name, author)) if full_name else author}")
    if "date" not in names:
        added.append(f"Date: {email.utils.formatdate(now, localtime=True)}")
    if "message-id" not in names:
        added.append(f"Message-ID: <{queue_id}@{hostname}>")
    return [*kept, *(a.encode("utf-8") + b"\r\n" for a in added)]


def queue_message(params: Params, opts: Options, raw: bytes) -> str:
    """Build the envelope, complete the header and drop it into maildrop; returns its name there."""
    hostname = params.myhostname
    headers, body = split_message(raw)
    wanted = list(opts.recipients)
    if opts.extract:
        wanted += extract_recipients(headers)
    recipients = list(dict.fromkeys(qualify(a, hostname) for a in wanted))
    if not recipients:
        raise MessageError("no recipients (give addresses or use -t with To/Cc/Bcc headers)")
    if len(recipients) > MAX_RECIPIENTS:
        raise MessageError(f"more than {MAX_RECIPIENTS} recipients")
    if opts.sender is None:
        sender = f"{login_name()}@{hostname}"
    else:
        sender = opts.sender.strip().strip("<>").strip()
        sender = qualify(sender, hostname) if sender else ""
    queue = Queue.from_params(params)
    if not os.path.isdir(queue.path("maildrop")):    # no queue yet (a user's own dev system)
        queue.ensure_layout()
    now = time.time()
    label = f"{int(now)}.{secrets.token_hex(6).upper()}"
    message = b"".join(complete_headers(headers, sender, opts.full_name, hostname, label, now)) + (body or b"\r\n")
    envelope = Envelope(sender=sender, recipients=[Recipient(r, opts.notify) for r in recipients],
                        ret=opts.ret, envid=opts.envid)
    name = drop(queue, envelope, message)
    wake_qmgr(params)
    return name


def run(argv: list[str]) -> int:
    try:
        opts = parse_options(argv)
    except UsageError as e:
        print(f"sendmail: {e}\n{USAGE}", file=sys.stderr)
        return EX_USAGE
    try:
        params = load_main_cf(resolve_config_path(opts.config)[1])
    except ConfigError as e:
        print(f"sendmail: {e}", file=sys.stderr)
        return EX_CONFIG
    try:
        raw = read_message(sys.stdin.buffer, opts.dot_ends, params.message_size_limit)
        queue_message(params, opts, raw)
    except MessageError as e:
        print(f"sendmail: {e}", file=sys.stderr)
        return EX_DATAERR
    except (StorageError, OSError) as e:       # OSError: the queue folders cannot be made or written
        print(f"sendmail: cannot queue the message, try again later: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))

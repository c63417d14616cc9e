"""Parsing of MAIL FROM / RCPT TO arguments: the path and the ESMTP parameters.

parse_mail(arg) -> MailArgs and parse_rcpt(arg) -> RcptArgs take the text after the verb
(`FROM:<a@b> SIZE=10 BODY=8BITMIME`, `TO:<c@d> NOTIFY=SUCCESS ORCPT=rfc822;c@d`).
Both raise ArgError(reply) with the reply to send: bad address syntax (501 5.1.7 / 5.1.3),
an unknown or malformed parameter (555 5.5.4 / 501 5.5.4).
Supported parameters: SIZE (RFC 1870), BODY (RFC 6152), RET/ENVID (MAIL) and NOTIFY/ORCPT
(RCPT) of DSN (RFC 3461, xtext-decoded), AUTH (RFC 4954, accepted and ignored).
Limits follow RFC 5321 4.5.3.1: local part 64, domain 255, path 256 octets; addresses are
ASCII (SMTPUTF8 is not offered). A quoted local part that needs no quotes (`"bob"@x`) is
returned plain (`bob@x`): it names the same mailbox.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from workers.smtpd import replies as R

MAX_PATH = 256
MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PARAM_VALUE = 500           # ENVID is at most 100 octets, ORCPT at most 500

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})")
_SOURCE_ROUTE = re.compile(r"^@[^:]+:")          # <@a,@b:user@c>: ignored (RFC 5321 4.1.2)
# <...>: a quoted string inside may hold '<' and '>' (each '"' opens one, so no backtracking)
_PATH = re.compile(r'^(?P<keyword>FROM|TO):[ \t]*(?P<path><(?:[^<>"]|"(?:[^"\\]|\\.)*")*>|[^\s<>]+)'
                   r"(?P<params>(?:[ \t].*)?)$", re.I)
_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}


class ArgError(Exception):
    def __init__(self, reply: R.Reply):
        super().__init__(str(reply))
        self.reply = reply


@dataclass
class MailArgs:
    sender: str                       # "" for the null sender <>
    size: int | None = None           # declared SIZE=
    body: str = "7BIT"
    ret: str | None = None            # FULL | HDRS
    envid: str | None = None


@dataclass
class RcptArgs:
    address: str
    notify: list[str] = field(default_factory=list)     # [] = not given; ["NEVER"] or subset of NOTIFY_WORDS
    orcpt: str | None = None                             # "rfc822;addr" decoded


def xtext_decode(text: str) -> str:
    if not _XTEXT.match(text):
        raise ValueError("bad xtext")
    decoded = re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)
    if not all(" " <= c <= "~" for c in decoded):     # RFC 3461 4: printable US-ASCII only
        raise ValueError("xtext decodes to a control character")  # (it goes into DSN headers)
    return decoded


def _split(arg: str, keyword: str, bad: R.Reply) -> tuple[str, dict[str, str]]:
    """-> (address without brackets, {PARAM: value}); raises ArgError."""
    m = _PATH.match(arg.strip())
    if not m or m.group("keyword").upper() != keyword:
        raise ArgError(R.SYNTAX.with_text(f"Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>"))
    path = m.group("path")
    address = path[1:-1] if path.startswith("<") else path
    address = _SOURCE_ROUTE.sub("", address)
    if len(address) > MAX_PATH:
        raise ArgError(bad)
    params: dict[str, str] = {}
    for word in re.split(r"[ \t]+", m.group("params")):      # SP (and tab); no other white space
        if not word:
            continue
        name, _, value = word.partition("=")
        name = name.upper()
        if not re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", name) or name in params or len(value) > MAX_PARAM_VALUE:
            raise ArgError(R.SYNTAX)
        params[name] = value
    return address, params


def plain_local_part(local: str) -> str:
    """`"demo"` -> `demo`: a quoted string whose content is a dot-string is the same mailbox
    (RFC 5321 4.1.2), so it is stored in the plain form; other quoted strings stay as they are."""
    if not local.startswith('"'):
        return local
    content = re.sub(r"\\(.)", r"\1", local[1:-1])
    return content if re.fullmatch(_DOT_STRING, content) else local


def check_mailbox(address: str, bad: R.Reply) -> str:
    """Validate local@domain; returns it with the domain lower-cased and the local part plain."""
    if not address.isascii():
        raise ArgError(bad)
    m = _MAILBOX.fullmatch(address)
    if not m or len(m.group("local")) > MAX_LOCAL or len(m.group("domain")) > MAX_DOMAIN:
        raise ArgError(bad)
    return f"{plain_local_part(m.group('local'))}@{m.group('domain').rstrip('.').lower()}"


def parse_mail(arg: str) -> MailArgs:
    address, params = _split(arg, "FROM", R.BAD_SENDER_SYNTAX)
    result = MailArgs(sender=check_mailbox(address, R.BAD_SENDER_SYNTAX) if address else "")
    for name, value in params.items():
        try:
            if name == "SIZE":
                if not value.isdigit() or len(value) > 20:
                    raise ValueError
                result.size = int(value)
            elif name == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    raise ValueError
                result.body = value.upper()
            elif name == "RET":
                if value.upper() not in ("FULL", "HDRS"):
                    raise ValueError
                result.ret = value.upper()
            elif name == "ENVID":
                result.envid = xtext_decode(value)
                if not result.envid or len(result.envid) > 100:
                    raise ValueError
            elif name == "AUTH":
                if value != "<>":
                    xtext_decode(value)      # checked, then ignored: RFC 4954 5 lets a server drop it
            else:
                raise ArgError(R.BAD_PARAMETER.with_text(f"Unsupported option: {name}"))
        except ValueError:
            raise ArgError(R.SYNTAX.with_text(f"Bad {name} parameter")) from None
    return result


def parse_rcpt(arg: str) -> RcptArgs:
    address, params = _split(arg, "TO", R.BAD_RCPT_SYNTAX)
    if address.lower() == "postmaster":            # RFC 5321 4.5.1: <Postmaster> without a domain
        address = "postmaster"
    elif not address:
        raise ArgError(R.BAD_RCPT_SYNTAX)
    else:
        address = check_mailbox(address, R.BAD_RCPT_SYNTAX)
    result = RcptArgs(address=address)
    for name, value in params.items():
        try:
            if name == "NOTIFY":
                words = [w.upper() for w in value.split(",")]
                if words != ["NEVER"] and not (set(words) <= NOTIFY_WORDS and len(set(words)) == len(words)):
                    raise ValueError
                result.notify = words
            elif name == "ORCPT":
                kind, sep, text = value.partition(";")
                if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", kind):
                    raise ValueError
                result.orcpt = f"{kind.lower()};{xtext_decode(text)}"
            else:
                raise ArgError(R.BAD_PARAMETER.with_text(f"Unsupported option: {name}"))
        except ValueError:
            raise ArgError(R.SYNTAX.with_text(f"Bad {name} parameter")) from None
    return result

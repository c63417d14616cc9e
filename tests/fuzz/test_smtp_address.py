"""Properties of the MAIL FROM / RCPT TO argument parser (workers/smtpd/address.py).

Round trip: a well-formed path with ESMTP parameters, written in any of the spellings RFC
5321 allows (case, spacing, source routes, quoted local parts, address literals), parses
back to what was written, and the parsed address parses to itself (canonical form).
Any text at all: the parser answers a result or ArgError with a 501/555 reply, nothing else;
a result never carries a control character or non-ASCII into the envelope (it ends up in
queue files, Received: and DSN headers).
"""
from __future__ import annotations

import re
import string

from hypothesis import example, given, strategies as st

from tests.fuzz.budget import fuzz_settings
from tests.fuzz.seeds import SMTP_SESSIONS
from workers.smtpd.address import (MAX_DOMAIN, MAX_LOCAL, MAX_PATH, NOTIFY_WORDS, ArgError, parse_mail,
                                   parse_rcpt)

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
DOT_STRING = re.compile(rf"[{re.escape(ATEXT)}]+(?:\.[{re.escape(ATEXT)}]+)*")
QTEXT = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')

atom = st.text(ATEXT, min_size=1, max_size=10)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
quoted = st.lists(st.one_of(st.sampled_from(QTEXT), st.sampled_from(QTEXT).map("\\".__add__)),
                  max_size=12).map(lambda parts: '"' + "".join(parts) + '"')
local_part = st.one_of(dot_string, quoted).filter(lambda s: len(s) <= MAX_LOCAL)
ALNUM = string.ascii_letters + string.digits
label = st.builds(lambda first, middle, last: first + middle + last, st.sampled_from(ALNUM),
                  st.text(ALNUM + "-", max_size=8), st.sampled_from(["", *ALNUM])).filter(lambda s: not s.endswith("-"))
domain = st.one_of(st.lists(label, min_size=1, max_size=5).map(".".join),
                   st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
                   st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"))
mailbox = st.tuples(local_part, domain).filter(lambda t: len(t[1]) <= MAX_DOMAIN and len(t[0]) + len(t[1]) < MAX_PATH)
route = st.lists(st.lists(label, min_size=1, max_size=2).map(lambda ls: "@" + ".".join(ls)), max_size=2).map(",".join)
printable_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
spacing = st.sampled_from([" ", "  ", " \t"])
keyword_case = st.sampled_from([str.upper, str.lower, str.title])


def xtext(text: str) -> str:
    """RFC 3461 4: '+', '=' and anything outside 0x21-0x7E as +XX."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


def expected_address(local: str, dom: str) -> str:
    """The mailbox as parsed: domain lower-cased, quotes dropped where a dot-string says the same."""
    content = re.sub(r"\\(.)", r"\1", local[1:-1]) if local.startswith('"') else local
    if DOT_STRING.fullmatch(content):
        local = content
    return f"{local}@{dom.lower()}"


def check_envelope_text(value: str | None) -> None:
    """What the parser hands on is printable ASCII (quoted local parts may hold spaces)."""
    assert value is None or all(" " <= c <= "~" for c in value), value


def check_any(arg: str) -> None:
    """The parser on any text: a clean result or a 501/555 reply, never another exception."""
    for parse in (parse_mail, parse_rcpt):
        try:
            result = parse(arg)
        except ArgError as e:
            assert e.reply.code in (501, 555), e.reply
            continue
        if parse is parse_mail:
            check_envelope_text(result.sender)
            check_envelope_text(result.envid)
            assert len(result.sender) <= MAX_PATH
            assert result.size is None or result.size >= 0
            assert result.body in ("7BIT", "8BITMIME") and result.ret in (None, "FULL", "HDRS")
            assert parse_mail(f"FROM:<{result.sender}>").sender == result.sender
        else:
            check_envelope_text(result.address)
            check_envelope_text(result.orcpt)
            assert result.address and len(result.address) <= MAX_PATH
            assert result.notify in ([], ["NEVER"]) or set(result.notify) <= NOTIFY_WORDS
            assert parse_rcpt(f"TO:<{result.address}>").address == result.address


@fuzz_settings(80)
@given(mailbox, route, spacing, keyword_case, st.data())
def test_mail_from_round_trip(box, source_route, space, case, data):
    local, dom = box
    size = data.draw(st.none() | st.integers(0, 10**19))
    body = data.draw(st.none() | st.sampled_from(["7bit", "8BITMIME", "8bitmime"]))
    ret = data.draw(st.none() | st.sampled_from(["full", "HDRS"]))
    envid = data.draw(st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                                          max_size=100))
    params = [f"{case('size')}={size}" if size is not None else None,
              f"{case('body')}={body}" if body else None,
              f"{case('ret')}={ret}" if ret else None,
              f"{case('envid')}={xtext(envid)}" if envid else None]
    path = f"{source_route}:{local}@{dom}" if source_route else f"{local}@{dom}"
    arg = f"{case('from')}:{data.draw(st.sampled_from(['', ' ']))}<{path}>" + "".join(
        space + p for p in params if p) + data.draw(st.sampled_from(["", " "]))
    result = parse_mail(arg)
    assert result.sender == expected_address(local, dom)
    assert (result.size, result.body, result.ret, result.envid) == (
        size, (body or "7BIT").upper(), ret and ret.upper(), envid)
    assert parse_mail(f"FROM:<{result.sender}>").sender == result.sender


@fuzz_settings(80)
@given(mailbox, spacing, keyword_case, st.data())
def test_rcpt_to_round_trip(box, space, case, data):
    local, dom = box
    notify = data.draw(st.none() | st.just(["NEVER"])
                       | st.lists(st.sampled_from(sorted(NOTIFY_WORDS)), min_size=1, unique=True))
    orcpt = data.draw(st.none() | printable_ascii)
    params = [f"{case('notify')}={','.join(map(case, notify))}" if notify else None,
              f"{case('orcpt')}=rfc822;{xtext(orcpt)}" if orcpt else None]
    arg = f"{case('to')}:<{local}@{dom}>" + "".join(space + p for p in params if p)
    result = parse_rcpt(arg)
    assert result.address == expected_address(local, dom)
    assert result.notify == (notify or [])
    assert result.orcpt == (f"rfc822;{orcpt}" if orcpt else None)


envelope_noise = st.one_of(
    st.text(st.characters(max_codepoint=0xFF), max_size=80),
    st.lists(st.sampled_from(["FROM:", "TO:", "<", ">", "@", ":", ",", ";", "\"", "\\", " ", "=", "+",
                              "+0D", "+0A", "+00", "SIZE", "BODY", "RET", "ENVID", "AUTH", "NOTIFY", "ORCPT",
                              "rfc822", "a", "b.example", "[", "]", ".", "\x00", "\r", "\n", "\x85", "\xa0",
                              "\xff", "x" * 300]), max_size=25).map("".join),
)


@fuzz_settings(300)
@given(envelope_noise)
@example("FROM:<a@b.example> ENVID=+0D+0A")
@example("TO:<a@b.example> ORCPT=rfc822;+00")
@example("FROM:<\"\\\x00\"@b.example>")
@example("TO:<@\x00:a@b.example>")
def test_any_text_gives_a_result_or_a_proper_reply(arg):
    check_any(arg)


def command_arguments(stream: bytes) -> list[str]:
    """The arguments of the MAIL and RCPT lines of a client stream, as the session cuts them."""
    args = []
    for line in stream.split(b"\n"):
        verb, _, arg = line.rstrip(b"\r").decode("latin-1").partition(" ")
        if verb.upper() in ("MAIL", "RCPT"):
            args.append(arg.strip())
    return args


def test_seed_sessions_arguments():
    for stream in SMTP_SESSIONS:
        for arg in command_arguments(stream):
            check_any(arg)


def test_quoted_local_part_may_hold_angle_brackets():
    assert parse_mail('FROM:<"a>b"@example.test>').sender == '"a>b"@example.test'
    assert parse_rcpt('TO:<"<a"@example.test> NOTIFY=NEVER').notify == ["NEVER"]

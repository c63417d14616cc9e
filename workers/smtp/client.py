"""One SMTP client connection to one host (RFC 5321), as Postfix's smtp(8) speaks it.

await Session.open(host, settings, log, credentials=None) connects (smtp_connect_timeout),
reads the greeting, says EHLO smtp_helo_name (HELO when EHLO gets a 5xx), and starts TLS per
smtp_tls_security_level: none never; may when offered (a refused STARTTLS goes on in clear
text, a failed handshake fails the host); encrypt must; verify must, and the certificate
chain and the host's name (the MX host name, or the literal's address) are checked against
smtp_tls_ca_file or the system's CAs. The STARTTLS reply is read before anything else is
sent, and whatever arrived behind it is dropped before the handshake (CVE-2011-0411 from
the client's side); after TLS, EHLO again. With smtp_tls_wrappermode (settings.wrappermode,
port 465) TLS starts with the connection, before the greeting, whatever the level (verify
still checks the certificate as above) and STARTTLS is never said.
SMTP AUTH (RFC 4954), when credentials (user, password) are given and the last EHLO offers
AUTH: the first of SCRAM-SHA-256 (scramp; the server's final message is checked, so a
server that does not know the password is caught), PLAIN, LOGIN that it offers. A password
is never sent without TLS to a host whose address is not loopback (4.7.0); no mechanism in
common is 4.7.0; a refusal is 4.7.8 for 535 (else the reply's own status). A server
without AUTH gets the mail without it.
SessionFailed(status, text, code) when the host cannot be used (no connection, a greeting
other than 220, EHLO and HELO refused, TLS the level needs and cannot get, AUTH as above):
the caller tries the next one, and defers after the last. Looping (a SessionFailed) when
the host answers EHLO/HELO with settings.myhostname: it is this system (the caller bounces).

await session.send(request, message) -> list[Result], one per recipient in order: MAIL FROM
(SIZE when offered; BODY=8BITMIME when the envelope says so; SMTPUTF8; RET/ENVID when DSN
is offered), one RCPT TO per recipient (NOTIFY/ORCPT when DSN is offered), DATA, the message
(workers/smtp/message.py DataEncoder), all of MAIL, RCPT and DATA in one write when
PIPELINING is offered. Refused before any command: a message larger than the peer's SIZE
(bounced 5.3.4), an 8BITMIME body to a peer without 8BITMIME (bounced 5.6.3: no
conversion to 7bit is done), an envelope that needs SMTPUTF8 to a peer without it (bounced
5.6.7). RCPT 5xx bounces and 4xx defers that recipient; a MAIL or DATA refusal applies to
every recipient (accepted ones for DATA). It raises SessionFailed while nothing is
settled (the connection was lost or timed out before DATA's 354: the request may go to
the next host); once the message is under way a lost connection (or a queue file that
cannot be read to its end: the connection is closed without the final ".") defers them.
A 421 reply or any protocol error leaves session.usable False; else `await reset()` (RSET)
prepares it for the next transaction. `await quit()` says QUIT (its answer awaited at most
QUIT_TIMEOUT seconds) and closes; abort() just closes.
Replies: at most REPLY_LINE_MAX bytes a line, REPLY_LINES_MAX lines; the enhanced status
code is the reply's own (RFC 2034) when it has one of its class, else 2.0.0/4.0.0/5.0.0.
Result texts are Postfix's: "host NAME[ADDR] said: 550 5.1.1 ... (in reply to RCPT TO
command)", "250 2.0.0 Ok: queued as X" for sent mail, our reason otherwise.
Log (the smtp log): connection problems are the caller's to log; TLS state and the AUTH
user and mechanism at level high (never a password).
"""
from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import ssl
from dataclasses import dataclass

import scramp

from workers._tls import client_context
from workers.smtp.message import DataEncoder, MessageSource, Truncated
from workers.smtp.mx import Host
from workers.smtp.request import Request, Result

REPLY_LINE_MAX = 2048
REPLY_LINES_MAX = 100
TEXT_MAX = 500                 # characters of a remote reply kept in a result
QUIT_TIMEOUT = 2.0
RSET_TIMEOUT = 20.0
AUTH_MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")      # in the order of preference
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


@dataclass(frozen=True)
class Settings:
    helo_name: str
    tls_level: str               # none | may | encrypt | verify
    ca_file: str
    connect_timeout: float
    helo_timeout: float
    mail_timeout: float
    rcpt_timeout: float
    data_init_timeout: float
    data_xfer_timeout: float
    data_done_timeout: float
    wrappermode: bool = False    # smtp_tls_wrappermode: TLS from the first byte (port 465)
    myhostname: str = ""         # a peer greeting with this name is this system (a loop)

    @classmethod
    def from_params(cls, params) -> Settings:
        return cls(params.smtp_helo_name, params.smtp_tls_security_level, params.smtp_tls_ca_file,
                   params.smtp_connect_timeout, params.smtp_helo_timeout, params.smtp_mail_timeout,
                   params.smtp_rcpt_timeout, params.smtp_data_init_timeout, params.smtp_data_xfer_timeout,
                   params.smtp_data_done_timeout, params.smtp_tls_wrappermode, params.myhostname.lower())


class SessionFailed(Exception):
    """The host cannot take the mail now: the recipients are deferred if it is the last host.
    status is always a 4.x.x (a refusal's 5 becomes 4: the next try may find a better host)."""

    def __init__(self, status: str, text: str, code: int = 0):
        super().__init__(text)
        self.status = "4" + status[1:]
        self.text = text
        self.code = code


class Looping(SessionFailed):
    """The host is this system: it answers EHLO (or HELO) with myhostname. The caller
    bounces the mail (5.4.6, "mail for DOMAIN loops back to myself")."""

    def __init__(self, text: str):
        super().__init__("4.4.6", text)


class _Broken(Exception):
    """The connection ended, timed out or spoke nonsense; str() says how."""


@dataclass(frozen=True)
class Reply:
    code: int
    status: str
    text: str                    # the lines' texts without code and status, joined by " "
    lines: tuple[str, ...]       # the lines' texts (EHLO keywords), status left in

    @property
    def ok(self) -> bool:
        return self.code // 100 == 2

    @property
    def outcome(self) -> str:
        """sent for 2xx, bounced for 5xx, deferred for the rest (4xx, and a 3xx out of place)."""
        return {2: "sent", 5: "bounced"}.get(self.code // 100, "deferred")

    def own(self) -> str:
        return f"{self.code} {self.status} {self.text}".rstrip()


def parse_reply(raw_lines: list[bytes]) -> Reply:
    """The reply of lines that _REPLY_LINE matches, all with the same code."""
    texts = [(_REPLY_LINE.fullmatch(raw.rstrip(b"\r\n")).group(3) or b"").decode("utf-8", "replace")
             for raw in raw_lines]
    code = int(raw_lines[0][:3])
    kind = str(code // 100) if code // 100 in (2, 5) else "4"
    status = f"{kind}.0.0"
    m = _STATUS.match(texts[0])
    if m and m.group(1) == kind:
        status = ".".join(m.groups())
        texts_plain = [_STATUS.sub("", t, count=1) if _STATUS.match(t) else t for t in texts]
    else:
        texts_plain = texts
    text = " ".join(t.strip() for t in texts_plain if t.strip())
    text = "".join(c if c.isprintable() else "?" for c in text)[:TEXT_MAX]
    return Reply(code, status, text, tuple(texts))


def xtext(text: str) -> str:
    """RFC 3461 xtext: "+XX" for "+", "=" and every octet outside 33-126."""
    return "".join(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}"
                   for b in text.encode("utf-8"))


def _tls_reason(e: Exception) -> str:
    return getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e) or type(e).__name__


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _unb64(reply: Reply) -> str:
    """The SASL challenge of a 334 reply (ValueError when it is not base64 UTF-8)."""
    return base64.b64decode(reply.lines[0].strip(), validate=True).decode("utf-8")


class Session:
    def __init__(self, host: Host, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: Settings, log):
        self.host = host
        self.reader = reader
        self.writer = writer
        self.settings = settings
        self.log = log
        self.features: dict[str, str] = {}
        self.usable = True
        self.tls = False

    # ------------------------------------------------------------------ opening
    @classmethod
    async def open(cls, host: Host, settings: Settings, log,
                   credentials: tuple[str, str] | None = None) -> Session:
        """credentials: (user, password) for SMTP AUTH, None: no AUTH."""
        verify = settings.tls_level == "verify"
        tls = {}
        if settings.wrappermode:
            tls = {"ssl": client_context(verify, settings.ca_file if verify else ""),
                   "server_hostname": host.name, "ssl_handshake_timeout": settings.connect_timeout}
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.address, host.port, limit=REPLY_LINE_MAX, **tls),
                settings.connect_timeout)
        except TimeoutError:
            raise SessionFailed("4.4.1", f"connect to {host.relay}: Connection timed out") from None
        except (ssl.SSLError, ssl.CertificateError, ValueError) as e:  # ValueError: a bad name
            raise SessionFailed("4.7.5", f"Cannot start TLS with {host.name}[{host.address}]: "
                                         f"handshake failed: {_tls_reason(e)}") from None
        except OSError as e:
            raise SessionFailed("4.4.1", f"connect to {host.relay}: {e.strerror or e}") from None
        session = cls(host, reader, writer, settings, log)
        if settings.wrappermode:
            session._tls_started(verify)
        try:
            await session._start(credentials)
        except _Broken as e:
            session.abort()
            raise SessionFailed("4.4.2", str(e)) from None
        except SessionFailed:
            session.abort()
            raise
        return session

    async def _start(self, credentials: tuple[str, str] | None) -> None:
        greeting = await self._read("receiving the initial server greeting", self.settings.helo_timeout)
        if greeting.code != 220:
            raise SessionFailed(greeting.status, f"host {self._name()} refused to talk to me: {greeting.own()}",
                                greeting.code)
        await self._hello()
        if await self._want_starttls():
            await self._hello()
        if credentials is not None and "AUTH" in self.features:
            await self._authenticate(*credentials)

    async def _want_starttls(self) -> bool:
        """True once STARTTLS made TLS run (EHLO is due again)."""
        level = self.settings.tls_level
        if level == "none" or self.tls:
            return False
        if "STARTTLS" not in self.features:
            if level == "may":
                return False
            raise SessionFailed("4.7.4", f"TLS is required, but was not offered by host {self._name()}")
        return await self._starttls()

    async def _hello(self) -> None:
        timeout = self.settings.helo_timeout
        self.features = {}
        command = "EHLO"
        reply = await self._command(f"EHLO {self.settings.helo_name}", command, timeout)
        if reply.code // 100 == 5:
            command = "HELO"
            reply = await self._command(f"HELO {self.settings.helo_name}", command, timeout)
        if not reply.ok:
            raise self._failed(reply, command)
        peer = reply.lines[0].split(" ", 1)[0].strip().lower().rstrip(".")
        if self.settings.myhostname and peer == self.settings.myhostname:
            self.usable = False
            raise Looping(f"host {self._name()} replied to {command} with my own hostname {peer}")
        if command == "EHLO":
            for line in reply.lines[1:]:
                keyword, _, value = line.strip().partition(" ")
                self.features[keyword.upper()] = value.strip()

    async def _starttls(self) -> bool:
        """True once TLS runs; False when a `may` peer refused STARTTLS (clear text goes on)."""
        reply = await self._command("STARTTLS", "STARTTLS", self.settings.helo_timeout)
        if reply.code != 220:
            if self.settings.tls_level == "may" and reply.code != 421:
                self.log.debug(f"{self.host.relay}: STARTTLS refused ({reply.own()}), going on without TLS")
                return False
            raise self._failed(reply, "STARTTLS")
        # Nothing is sent between the reply and the handshake, and whatever the server sent
        # behind its reply came in clear text: dropped (a man in the middle's injection).
        self.writer.transport.pause_reading()
        self.reader._buffer.clear()              # asyncio offers no public way
        verify = self.settings.tls_level == "verify"
        try:
            context = client_context(verify, self.settings.ca_file if verify else "")
            await asyncio.wait_for(self.writer.start_tls(context, server_hostname=self.host.name),
                                   self.settings.helo_timeout)
        except (ssl.SSLError, ssl.CertificateError, OSError, TimeoutError, ValueError) as e:   # ValueError: a bad name
            self.usable = False
            raise SessionFailed("4.7.5", f"Cannot start TLS with {self._name()}: handshake failed: "
                                         f"{_tls_reason(e)}") from None
        self._tls_started(verify)
        return True

    def _tls_started(self, verify: bool) -> None:
        obj = self.writer.get_extra_info("ssl_object")
        self.tls = True
        self.log.debug(f"{self.host.relay}: TLS {obj.version()} {obj.cipher()[0]}"
                       f"{' (certificate verified)' if verify else ''}")

    # ------------------------------------------------------------------ SMTP AUTH
    async def _authenticate(self, user: str, password: str) -> None:
        """AUTH with the first of AUTH_MECHANISMS the server offers; SessionFailed when it
        cannot be done (no TLS to a host that is not loopback, no common mechanism) or the
        server refuses it (535: 4.7.8)."""
        if not self.tls and not _loopback(self.host.address):
            raise SessionFailed("4.7.0", f"not sending a password to host {self._name()} without TLS "
                                         f"(it offers AUTH, and TLS was not used)")
        offered = self.features["AUTH"].upper().split()
        mechanism = next((m for m in AUTH_MECHANISMS if m in offered), None)
        if mechanism is None:
            raise SessionFailed("4.7.0", f"SASL authentication failed; cannot authenticate to server "
                                         f"{self._name()}: no mechanism in common (it offers "
                                         f"{' '.join(offered)[:100] or 'none'})")
        try:
            reply = await _SASL[mechanism](self, user, password)
        except _Broken as e:
            raise SessionFailed("4.4.2", str(e)) from None
        if reply.code != 235:
            self.usable = False
            raise SessionFailed("4.7.8" if reply.code == 535 else reply.status,
                                f"SASL authentication failed; server {self._name()} said: {reply.own()}", reply.code)
        self.log.debug(f"{self.host.relay}: authenticated as {user} with {mechanism}")

    async def _auth_step(self, line: str) -> Reply:
        return await self._command(line, "AUTH", self.settings.helo_timeout)

    async def _plain(self, user: str, password: str) -> Reply:
        return await self._auth_step("AUTH PLAIN " + _b64(f"\0{user}\0{password}"))

    async def _login(self, user: str, password: str) -> Reply:
        reply = await self._auth_step("AUTH LOGIN")
        for answer in (user, password):
            if reply.code != 334:
                return reply
            reply = await self._auth_step(_b64(answer))
        return reply

    async def _scram(self, user: str, password: str) -> Reply:
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        reply = await self._auth_step("AUTH SCRAM-SHA-256 " + _b64(client.get_client_first()))
        try:
            if reply.code != 334:
                return reply
            client.set_server_first(_unb64(reply))
            reply = await self._auth_step(_b64(client.get_client_final()))
            if reply.code != 334:
                return reply
            client.set_server_final(_unb64(reply))      # the server proves it knows the password
        except (scramp.ScramException, ValueError) as e:
            await self._settle(self._auth_step("*"))    # cancel the exchange (RFC 4954)
            self.usable = False
            raise SessionFailed("4.7.0", f"SASL authentication failed; server {self._name()} "
                                         f"gave a bad SCRAM answer: {str(e)[:100]}") from None
        return await self._auth_step("")

    # ------------------------------------------------------------------ transactions
    async def send(self, request: Request, message: MessageSource) -> list[Result]:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        dsn = "DSN" in self.features
        mail = f"MAIL FROM:<{request.sender}>"
        if "SIZE" in self.features:
            mail += f" SIZE={request.size}"
        if request.body == "8BITMIME":
            mail += " BODY=8BITMIME"
        if request.needs_smtputf8:
            mail += " SMTPUTF8"
        if dsn and request.ret:
            mail += f" RET={request.ret}"
        if dsn and request.envid:
            mail += f" ENVID={xtext(request.envid)}"
        rcpts = []
        for recipient in request.recipients:
            rcpt = f"RCPT TO:<{recipient.address}>"
            if dsn and recipient.notify:
                rcpt += f" NOTIFY={','.join(recipient.notify)}"
            if dsn and recipient.orcpt:
                kind, _, address = recipient.orcpt.partition(";")
                rcpt += f" ORCPT={kind};{xtext(address)}"
            rcpts.append(rcpt)
        try:
            replies = await self._envelope(mail, rcpts)
        except _Broken as e:
            self.abort()
            raise SessionFailed("4.4.2", str(e)) from None
        return await self._finish(request, message, replies)

    def _refusal(self, request: Request) -> list[Result] | None:
        limit = self.features.get("SIZE", "")
        if limit.isdigit() and int(limit) and request.size > int(limit):
            return self._all(request, "bounced", "5.3.4", f"message size {request.size} exceeds size limit "
                                                          f"{int(limit)} of server {self._name()}")
        if request.body == "8BITMIME" and "8BITMIME" not in self.features:
            return self._all(request, "bounced", "5.6.3", f"host {self._name()} does not accept 8-bit mail "
                                                          f"(no 8BITMIME) and this mail is not converted")
        if request.needs_smtputf8 and "SMTPUTF8" not in self.features:
            return self._all(request, "bounced", "5.6.7", f"host {self._name()} does not support SMTPUTF8, "
                                                          f"which this mail needs")
        return None

    async def _envelope(self, mail: str, rcpts: list[str]) -> list[tuple[str, Reply]]:
        """(command name, reply) of MAIL, each RCPT and DATA, as far as they went. Without
        PIPELINING it stops after a refused MAIL and before DATA when no RCPT was accepted."""
        s = self.settings
        steps = [("MAIL FROM", mail, s.mail_timeout)] + [("RCPT TO", r, s.rcpt_timeout) for r in rcpts] \
            + [("DATA", "DATA", s.data_init_timeout)]
        replies: list[tuple[str, Reply]] = []
        if "PIPELINING" in self.features:
            await self._write("".join(f"{line}\r\n" for _, line, _ in steps).encode(), "MAIL FROM", s.mail_timeout)
            for name, _, timeout in steps:
                replies.append((name, await self._read(f"receiving the {name} reply", timeout)))
                if replies[-1][1].code == 421:
                    break
            return replies
        for name, line, timeout in steps:
            if name == "DATA" and not any(r.ok for n, r in replies if n == "RCPT TO"):
                break
            replies.append((name, await self._command(line, name, timeout)))
            if replies[-1][1].code == 421 or (name == "MAIL FROM" and not replies[-1][1].ok):
                break
        return replies

    async def _finish(self, request: Request, message: MessageSource,
                      replies: list[tuple[str, Reply]]) -> list[Result]:
        count = len(request.recipients)
        last = replies[-1][1]
        if last.code == 421:
            self.usable = False
        mail = replies[0][1]
        if not mail.ok:
            return [self._said(r.address, mail, "MAIL FROM") for r in request.recipients]
        results: list[Result | None] = [None] * count
        for i, recipient in enumerate(request.recipients):
            if i + 1 < len(replies):
                name, reply = replies[i + 1]
                if not reply.ok:
                    results[i] = self._said(recipient.address, reply, name)
            else:                                            # a 421 came before this RCPT's reply
                results[i] = self._said(recipient.address, last, "RCPT TO")
        accepted = [i for i in range(count) if results[i] is None]
        data = replies[count + 1][1] if len(replies) == count + 2 else None
        if data is None:                                    # not sent, or a 421 came first
            for i in accepted:
                results[i] = self._said(request.recipients[i].address, last, "DATA")
            return results
        if not accepted:
            if data.code == 354:                            # pipelined DATA taken anyway: end it empty
                await self._settle(self._write(b".\r\n", "end of DATA", self.settings.data_done_timeout))
                await self._settle(self._read("receiving the end of DATA reply", self.settings.data_done_timeout))
            return results
        if data.code != 354:
            for i in accepted:
                results[i] = self._said(request.recipients[i].address, data, "DATA")
            return results
        try:
            final = await self._transfer(message)
        except (_Broken, Truncated, OSError) as e:       # the last two: the queue file (never "." then)
            self.abort()
            status, text = ("4.4.2", str(e)) if isinstance(e, _Broken) else ("4.3.0", f"cannot read the message: {e}")
            for i in accepted:
                results[i] = Result(request.recipients[i].address, "deferred", status, 0, text, self.host.relay)
            return results
        if final.code == 421:
            self.usable = False
        for i in accepted:
            address = request.recipients[i].address
            results[i] = (Result(address, "sent", final.status, final.code, final.own(), self.host.relay)
                          if final.ok else self._said(address, final, "end of DATA"))
        return results

    async def _settle(self, step) -> None:
        """A step whose failure only makes the connection unusable."""
        try:
            await step
        except _Broken:
            self.usable = False

    async def _transfer(self, message: MessageSource) -> Reply:
        encoder = DataEncoder()
        timeout = self.settings.data_xfer_timeout
        async for chunk in message.chunks():
            data = encoder.feed(chunk)
            if data:
                await self._write(data, "message content", timeout)
        await self._write(encoder.end(), "message content", timeout)
        return await self._read("receiving the end of data reply", self.settings.data_done_timeout)

    async def reset(self) -> bool:
        """RSET before the next transaction; False (and closed) when the connection is no good."""
        try:
            reply = await self._command("RSET", "RSET", RSET_TIMEOUT)
        except _Broken:
            reply = None
        if reply is None or not reply.ok:
            self.abort()
            return False
        return True

    async def quit(self) -> None:
        """QUIT, its answer awaited at most QUIT_TIMEOUT seconds, and close."""
        if not self.writer.is_closing():
            try:
                await self._write(b"QUIT\r\n", "QUIT", QUIT_TIMEOUT)
                await self._read("receiving the QUIT reply", QUIT_TIMEOUT)
            except _Broken:
                pass
        self.abort()

    def abort(self) -> None:
        self.usable = False
        self.writer.close()

    # ------------------------------------------------------------------ the wire
    def _name(self) -> str:
        return f"{self.host.name}[{self.host.address}]"

    def _said(self, address: str, reply: Reply, command: str) -> Result:
        """The result of a refusal (a reply that is not what command needs)."""
        if reply.ok:                                         # 2xx where 354 belongs: a confused peer
            self.usable = False
            return Result(address, "deferred", "4.5.0", reply.code, f"host {self._name()} said: {reply.own()} "
                          f"(in reply to {command} command), not the reply it needs", self.host.relay)
        return Result(address, reply.outcome, reply.status, reply.code,
                      f"host {self._name()} said: {reply.own()} (in reply to {command} command)", self.host.relay)

    def _all(self, request: Request, outcome: str, status: str, text: str) -> list[Result]:
        return [Result(r.address, outcome, status, 0, text, self.host.relay) for r in request.recipients]

    def _failed(self, reply: Reply, command: str) -> SessionFailed:
        self.usable = False
        return SessionFailed(reply.status, f"host {self._name()} said: {reply.own()} (in reply to {command} command)",
                             reply.code)

    async def _command(self, line: str, name: str, timeout: float) -> Reply:
        await self._write(f"{line}\r\n".encode(), name, timeout)
        return await self._read(f"receiving the {name} reply", timeout)

    async def _write(self, data: bytes, doing: str, timeout: float) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), timeout)
        except TimeoutError:
            self.usable = False
            raise _Broken(f"conversation with {self._name()} timed out while sending {doing}") from None
        except (OSError, ssl.SSLError) as e:
            self.usable = False
            raise _Broken(f"lost connection with {self._name()} while sending {doing}: "
                          f"{getattr(e, 'strerror', None) or e}") from None

    async def _read(self, doing: str, timeout: float) -> Reply:
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.reader.readuntil(b"\n")
                    m = _REPLY_LINE.fullmatch(line.rstrip(b"\r\n"))
                    if not m or (lines and line[:3] != lines[0][:3]):
                        raise _Broken(f"bad reply from {self._name()} while {doing}: "
                                      f"{line[:80].decode('ascii', 'replace').rstrip()!r}")
                    lines.append(line)
                    if m.group(2) != b"-":
                        return parse_reply(lines)
                    if len(lines) >= REPLY_LINES_MAX:
                        raise _Broken(f"reply from {self._name()} longer than {REPLY_LINES_MAX} lines "
                                      f"while {doing}")
        except TimeoutError:
            self.usable = False
            raise _Broken(f"conversation with {self._name()} timed out while {doing}") from None
        except asyncio.LimitOverrunError:
            self.usable = False
            raise _Broken(f"reply line from {self._name()} longer than {REPLY_LINE_MAX} bytes "
                          f"while {doing}") from None
        except (asyncio.IncompleteReadError, OSError, ssl.SSLError) as e:
            self.usable = False
            detail = "" if isinstance(e, asyncio.IncompleteReadError) else f": {e}"
            raise _Broken(f"lost connection with {self._name()} while {doing}{detail}") from None
        except _Broken:
            self.usable = False
            raise


_SASL = {"SCRAM-SHA-256": Session._scram, "PLAIN": Session._plain, "LOGIN": Session._login}

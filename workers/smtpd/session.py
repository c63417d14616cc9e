"""One SMTP server session (RFC 5321): a workers._session.Session with SMTP's table and replies.

Session(conn, backend).run() serves one client from greeting to close. conn is a
workers._session.Connection; backend is a workers.smtpd.backend.Backend (queue, user
directory, disk flag, SASL, DNS).

States: CONNECTED (greeted, no HELO/EHLO yet; also after STARTTLS, RFC 3207 4.2),
READY (HELO/EHLO done, no transaction), MAIL (sender accepted), RCPT (a recipient
accepted). DATA is not a state of the table: the message is read by data.read_message as a
separate receiver and the session goes back to READY. The table (Session.commands, also
COMMANDS) says, per verb, in which states it is legal and what a client hears otherwise;
the base's dispatcher enforces that, line lengths (512 octets, 12288 for AUTH, RFC 4954 4),
`smtpd_tls_security_level=encrypt` (530 5.7.0 for AUTH, MAIL, RCPT and DATA before
STARTTLS: TLS_FIRST), the error budget (every error reply counts against
smtpd_hard_error_limit -> 421) and the idle time (smtpd_timeout -> 421). When the master
stops (conn.draining), a session waiting for a command gets `421 4.3.2 Service shutting
down` at once; a message being received is finished (and acknowledged) first.
Before the greeting a client outside mynetworks gets smtpd_pregreet_delay of silence; one
that talks into it gets `554 5.5.1` and is dropped. AUTH is neither offered nor accepted
(538 5.7.11) before TLS under smtpd_tls_auth_only, except from its exempt networks.
Recipients past smtpd_recipient_limit get 452 4.5.3 without costing errors until
smtpd_recipient_overshoot_limit; postmaster of a local domain is always accepted.
While the incoming queue is at in_flow_queue_limit, MAIL is answered only after
in_flow_delay (backend.flow). A message's 250 goes out once its queue file and directory
are fsynced; the queue manager's wakeup and the log lines follow it. The message of an
authenticated or mynetworks client is DKIM-signed while it is committed (may_sign;
workers/smtpd/dkim.py).

Diagnostics (smtp.log): connect/disconnect with command counts at level high; rejected
commands, authentications and every accepted message (`QUEUEID: from=<a>, size=N, nrcpt=K`)
at level medium; storage failures at level low.
"""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import ClassVar

from master.params import in_networks
from store.fsio import StorageError
from store.queue import Envelope, Recipient
from workers import _session
from workers._auth import login_failed, offered_mechanisms
from workers._limits import refusal_text
from workers._session import Close, Command, Connection, Flag, Request
from workers.smtpd import replies as R
from workers.smtpd.address import ArgError, MailArgs, parse_mail, parse_rcpt
from workers.smtpd.data import read_message
from workers.smtpd.received import received_header
from workers.smtpd.relay import Policy
from workers.smtpd.sasl import AuthExchange

MAX_COMMAND = 512                 # RFC 5321 4.5.3.1.4, CRLF included
MAX_AUTH_LINE = 12288             # RFC 4954 4
MAX_HELO = 255
PREGREET_SAMPLE = 64              # octets of early talk read (and logged) before closing


class State(enum.Enum):
    CONNECTED = "connected"
    READY = "ready"
    MAIL = "mail"
    RCPT = "rcpt"


ANY = frozenset(State)
READY_ONLY = frozenset({State.READY})
IN_TRANSACTION = frozenset({State.MAIL, State.RCPT})
# What a client hears for a command out of sequence (elsewhere: R.BAD_SEQUENCE).
HELO_FIRST = {State.CONNECTED: R.NEED_HELO}
MAIL_FIRST = {State.CONNECTED: R.NEED_HELO, State.READY: R.NEED_MAIL}
NO_NESTING = {State.CONNECTED: R.NEED_HELO, State.MAIL: R.NESTED_MAIL, State.RCPT: R.NESTED_MAIL}


@dataclass
class Transaction:
    mail: MailArgs
    recipients: list[Recipient] = field(default_factory=list)
    refused: int = 0                  # RCPTs answered with an error (for DATA's reply)
    overshoot: int = 0                # RCPTs past smtpd_recipient_limit


class Session(_session.Session):
    line_limit = MAX_COMMAND
    encoding = "latin-1"

    def __init__(self, conn: Connection, backend):
        super().__init__(conn, backend, State.CONNECTED, conn.params.smtpd_hard_error_limit,
                         conn.params.smtpd_timeout)
        self.policy = Policy(self.params)
        self.helo_name: str | None = None
        self.esmtp = False
        self.user: str | None = None                  # SASL-authenticated user
        self.txn: Transaction | None = None
        self.rbl_task: asyncio.Task | None = None
        self.client = f"[{conn.peer_ip}]"

    # ------------------------------------------------------------------ the session's life
    async def start(self) -> bool:
        self.log.debug(f"connect from {self.client}")
        if self.policy.host_refused(self.conn.peer_ip):
            self.log.info(f"reject: connect from {self.client}: client host refused (smtpd_refused_hosts)")
            await self.reply(R.HOST_REFUSED)
            return False
        zones = self.params.smtpd_rbl_servers
        if zones:
            self.rbl_task = asyncio.ensure_future(self.backend.rbl_lookup(self.conn.peer_ip, zones))
        if await self.spoke_too_early():
            return False
        await self.conn.send_line(f"220 {self.params.smtpd_banner}".encode())
        return True

    async def spoke_too_early(self) -> bool:
        """postscreen's pregreet test: wait smtpd_pregreet_delay before the greeting; a real
        SMTP client waits for it, many spam senders talk at once. Not in wrapper mode (the
        handshake came first) nor for mynetworks clients. True: the session is over."""
        delay = self.params.smtpd_pregreet_delay
        if not delay or self.conn.tls or in_networks(self.conn.peer_ip, self.params.mynetworks):
            return False
        try:
            async with asyncio.timeout(delay):
                early = await self.conn.reader.read(PREGREET_SAMPLE)
        except TimeoutError:
            return False
        if not early:
            self.log.debug(f"lost connection before the greeting from {self.client}")
            return True
        self.log.info(f"reject: PREGREET {len(early)} from {self.client}: {early!r}")
        await self.reply(R.PREGREET)
        return True

    def end(self) -> None:
        if self.rbl_task:
            self.rbl_task.cancel()
        stats = " ".join(f"{verb.lower()}={n}" for verb, n in self.verbs.items())
        self.log.debug(f"disconnect from {self.client} {stats}".rstrip())

    async def timed_out(self) -> None:
        self.log.info(f"timeout after {self.state.value} from {self.client}")
        await self.conn.send_line(bytes(R.TIMEOUT))

    def lost(self) -> None:
        self.log.debug(f"lost connection after {self.state.value} from {self.client}")

    async def shutting_down(self) -> None:
        self.log.debug(f"{self.client}: service shutting down after {self.state.value}")
        await self.reply(R.SHUTTING_DOWN)

    # ------------------------------------------------------------------ replies
    async def reply(self, reply: R.Reply, charge: bool = True) -> None:
        """Send a reply; a charged error counts against smtpd_hard_error_limit; 421 ends the session."""
        await self.conn.send_line(bytes(reply))
        if reply.closes:
            raise Close
        if reply.is_error and charge:
            await self.charge_error()

    async def too_many_errors(self) -> None:
        self.log.info(f"too many errors from {self.client}")
        await self.conn.send_line(bytes(R.TOO_MANY_ERRORS))

    async def unknown(self, request: Request) -> None:
        await self.reply(R.UNRECOGNIZED)

    async def too_long(self) -> None:
        await self.reply(R.LINE_TOO_LONG)

    async def wrong_state(self, request: Request, command: Command) -> None:
        await self.reply(command.otherwise.get(self.state, R.BAD_SEQUENCE))

    async def must_use_tls(self, request: Request) -> None:
        await self.reply(R.MUST_STARTTLS)

    def tls_required(self) -> bool:
        return self.params.smtpd_tls_security_level == "encrypt" and not self.conn.tls

    def reset(self, state: State) -> None:
        self.txn = None
        self.state = state

    # ------------------------------------------------------------------ greeting commands
    async def helo(self, arg: str) -> None:
        await self._hello(arg, esmtp=False)

    async def ehlo(self, arg: str) -> None:
        await self._hello(arg, esmtp=True)

    async def _hello(self, arg: str, esmtp: bool) -> None:
        name = arg.split(" ", 1)[0]
        if not name or len(name) > MAX_HELO or not name.isascii() or not name.isprintable():
            await self.reply(R.SYNTAX.with_text(f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
            return
        self.helo_name, self.esmtp = name, esmtp
        self.reset(State.READY)
        hostname = self.params.myhostname
        if not esmtp:
            await self.conn.send_line(f"250 {hostname}".encode())
            return
        await self.conn.send_line(R.multiline(250, [hostname, *self.capabilities()]))

    def capabilities(self) -> list[str]:
        limit = self.params.message_size_limit
        caps = ["PIPELINING", f"SIZE {limit}" if limit else "SIZE"]
        if self.can_starttls():
            caps.append("STARTTLS")
        mechanisms = self.auth_mechanisms()
        if mechanisms and self.user is None:
            caps.append("AUTH " + " ".join(mechanisms))
        caps += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN"]
        return caps

    def can_starttls(self) -> bool:
        return (not self.conn.tls and self.params.smtpd_tls_security_level != "none"
                and self.backend.tls_available())

    def auth_mechanisms(self) -> list[str]:
        """The mechanisms offered now: none before TLS under `encrypt` or smtpd_tls_auth_only."""
        if not self.params.smtpd_sasl_auth_enable or self.auth_needs_tls():
            return []
        return offered_mechanisms(self.params.smtpd_sasl_mechanisms, self.conn.tls,
                                  self.params.smtpd_tls_security_level)

    def auth_needs_tls(self) -> bool:
        """smtpd_tls_auth_only: no AUTH in clear text, except from smtpd_tls_auth_only_exceptions."""
        return (self.params.smtpd_tls_auth_only and not self.conn.tls
                and not in_networks(self.conn.peer_ip, self.params.smtpd_tls_auth_only_exceptions))

    async def starttls(self, arg: str) -> None:
        if arg:
            await self.reply(R.SYNTAX.with_text("Syntax: STARTTLS"))
        elif self.conn.tls:
            await self.reply(R.TLS_ALREADY_ACTIVE)
        elif not self.can_starttls():
            await self.reply(R.TLS_UNAVAILABLE)
        else:
            try:
                await self.conn.start_tls(bytes(R.TLS_READY))
            except Exception as e:          # a failed handshake leaves no usable stream
                self.log.info(f"STARTTLS handshake failed from {self.client}: {type(e).__name__}: {e}")
                raise Close from None
            # RFC 3207 4.2: forget everything learnt from the client before TLS.
            self.helo_name, self.esmtp, self.user = None, False, None
            self.reset(State.CONNECTED)
            self.log.debug(f"{self.client}: TLS established: {self.conn.tls_version()} {self.conn.tls_cipher()}")

    async def auth(self, arg: str) -> None:
        if not self.params.smtpd_sasl_auth_enable:
            await self.reply(R.AUTH_NOT_ENABLED)
            return
        if self.auth_needs_tls():
            await self.reply(R.ENCRYPTION_REQUIRED)
            return
        if self.user is not None:
            await self.reply(R.ALREADY_AUTHENTICATED)
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if not mechanism:
            await self.reply(R.SYNTAX.with_text("Syntax: AUTH mechanism"))
            return
        if mechanism not in self.auth_mechanisms():
            await self.reply(R.UNKNOWN_MECHANISM)
            return
        exchange = AuthExchange(self.conn, self.backend, mechanism, self.params.smtpd_timeout, MAX_AUTH_LINE)
        outcome = await exchange.run(initial.strip() or None)
        if outcome.user or outcome.reply == R.AUTH_FAILED:
            refusal = await self.conn.report_login(outcome.user is not None)   # waits the auth penalty
            if refusal:
                self.log.info(f"warning: {self.client}: {mechanism} authentication refused: over {refusal}")
                await self.reply(R.AUTH_UNAVAILABLE.with_text(refusal_text(refusal, self.conn.peer_ip, self.params)))
                return
        if outcome.user:
            self.user = outcome.user
            self.conn.set_user(outcome.user)
            self.log.info(f"{self.client}: sasl_method={mechanism}, sasl_username={outcome.user}")
            await self.reply(R.AUTH_OK)
            return
        if outcome.reply == R.AUTH_FAILED:
            self.log.info(f"warning: {self.client}: {mechanism} authentication failed"
                          + (f" for {outcome.attempted_user}" if outcome.attempted_user else "")
                          + (f": {outcome.reason}" if outcome.reason else ""))
            await login_failed(self.conn)
        elif outcome.reply == R.AUTH_UNAVAILABLE:
            self.log.info(f"warning: {self.client}: {mechanism} authentication unavailable: {outcome.reason}")
        await self.reply(outcome.reply)

    # ------------------------------------------------------------------ the transaction
    async def mail(self, arg: str) -> None:
        try:
            args = parse_mail(arg)
        except ArgError as e:
            await self.reply(e.reply)
            return
        limit = self.params.message_size_limit
        if limit and args.size is not None and args.size > limit:
            await self.reject(R.MESSAGE_TOO_BIG, "MAIL", f"from=<{args.sender}> size={args.size}")
        elif self.backend.disk_low():
            await self.reject(R.INSUFFICIENT_STORAGE, "MAIL", f"from=<{args.sender}> (disk below disk_min_free)")
        else:
            await self.backend.flow.pause()
            self.txn = Transaction(args)
            self.state = State.MAIL
            await self.reply(R.SENDER_OK)

    async def rcpt(self, arg: str) -> None:
        txn = self.txn
        assert txn is not None
        try:
            args = parse_rcpt(arg)
        except ArgError as e:
            txn.refused += 1
            await self.reply(e.reply)
            return
        details = f"from=<{txn.mail.sender}> to=<{args.address}>"
        if len(txn.recipients) >= self.params.smtpd_recipient_limit:
            await self.too_many_recipients(txn, details)
            return
        refusal = await self.check_recipient(args.address, txn)
        if refusal:
            txn.refused += 1
            await self.reject(refusal, "RCPT", details)
            return
        txn.recipients.append(Recipient(args.address, args.notify or None, args.orcpt))
        self.state = State.RCPT
        await self.reply(R.RCPT_OK)

    async def too_many_recipients(self, txn: Transaction, details: str) -> None:
        """452 past smtpd_recipient_limit. A well-behaved client sends those recipients again in
        the next transaction, so (as in Postfix) they count as errors only past
        smtpd_recipient_overshoot_limit; the recipients accepted so far stay valid."""
        txn.refused += 1
        txn.overshoot += 1
        if txn.overshoot == 1:
            self.log.info(f"NOQUEUE: reject: RCPT from {self.client}: {R.TOO_MANY_RECIPIENTS}; {details}")
        overshoot_limit = self.params.smtpd_recipient_overshoot_limit
        await self.reply(R.TOO_MANY_RECIPIENTS, charge=txn.overshoot > overshoot_limit)

    async def check_recipient(self, address: str, txn: Transaction) -> R.Reply | None:
        if self.policy.is_postmaster(address):
            return None                  # RFC 5321 4.5.1: always accepted, blocklisted client or not
        listing = await self.rbl_listing()
        if listing:
            return listing
        refusal = self.policy.relay_check(self.conn.peer_ip, self.user is not None, address)
        if refusal or not self.policy.is_local(address):
            return refusal
        try:
            return self.policy.recipient_check(address, self.backend.directory, txn.mail.size)
        except StorageError as e:
            self.log.error(f"{self.client}: recipient lookup for <{address}> failed: {e}")
            return R.TEMP_LOOKUP_FAILURE

    async def rbl_listing(self) -> R.Reply | None:
        """The blocklists' verdict; authenticated and mynetworks clients are exempt."""
        if self.rbl_task is None or self.user is not None or in_networks(self.conn.peer_ip, self.params.mynetworks):
            return None
        listing, failures = await self.rbl_task
        for failure in failures:
            self.log.info(f"warning: {self.client}: DNS blocklist lookup failed: {failure}")
        if listing is None:
            return None
        reason = f"; {listing.reason}" if listing.reason else ""
        return R.RBL_LISTED.with_text(
            f"Service unavailable; client host {self.client} blocked using {listing.zone}{reason}")

    async def reject(self, reply: R.Reply, verb: str, details: str) -> None:
        """Refuse a command and log it Postfix-style: `NOQUEUE: reject: RCPT from [ip]: 550 ...; from=<a> to=<b>`."""
        self.log.info(f"NOQUEUE: reject: {verb} from {self.client}: {reply}; {details}")
        await self.reply(reply)

    async def data(self, arg: str) -> None:
        txn = self.txn
        assert txn is not None
        if arg:
            await self.reply(R.SYNTAX.with_text("Syntax: DATA"))
            return
        if not txn.recipients:
            await self.reply(R.NO_VALID_RECIPIENTS if txn.refused else R.NEED_RCPT)
            return
        try:
            writer = self.backend.open_message(sign=self.may_sign())
        except (StorageError, OSError) as e:
            self.log.error(f"cannot open a queue file: {e}")
            await self.reply(R.INSUFFICIENT_STORAGE)
            return
        await self.conn.send_line(bytes(R.START_DATA))
        self.reset(State.READY)
        try:
            await self.receive(writer, txn)
        finally:
            writer.abort()

    async def receive(self, writer, txn: Transaction) -> None:
        """Read the message into writer; 250 only after commit() made it durable."""
        result = await read_message(self.conn.reader, writer.write, self.params.message_size_limit,
                                    self.params.line_length_limit, self.params.smtpd_timeout,
                                    head=self.received_header([r.address for r in txn.recipients]))
        details = f"from=<{txn.mail.sender}> nrcpt={len(txn.recipients)}"
        if result.too_big:
            await self.reject(R.MESSAGE_TOO_BIG, "DATA", details)
            return
        if result.storage_error:
            self.log.error(f"{self.client}: cannot spool a message: {result.storage_error}")
            await self.reply(R.INSUFFICIENT_STORAGE)
            return
        envelope = Envelope(sender=txn.mail.sender, recipients=txn.recipients, ret=txn.mail.ret,
                            envid=txn.mail.envid, body=txn.mail.body, client=self.client_info())
        try:
            queue_id = await asyncio.to_thread(writer.commit, envelope)
        except (StorageError, OSError) as e:
            self.log.error(f"{self.client}: cannot queue a message: {e}")
            await self.reply(R.INSUFFICIENT_STORAGE)
            return
        self.backend.flow.committed()
        try:
            # The reply leaves first (the write is immediate; only its drain waits): the two
            # log lines (pipe writes that wake the master) and the wakeup are not its latency.
            await self.reply(R.QUEUED.with_text(f"Ok: queued as {queue_id}"))
        finally:
            self.backend.wake_qmgr()
            self.log.info(f"{queue_id}: client={self.client}, helo={self.helo_name}"
                          + (f", sasl_username={self.user}" if self.user else "")
                          + (f", tls={self.conn.tls_version()}" if self.conn.tls else ""))
            self.log.info(f"{queue_id}: from=<{txn.mail.sender}>, size={envelope.size}, "
                          f"nrcpt={len(txn.recipients)}")

    def may_sign(self) -> bool:
        """Our own users' mail gets a DKIM signature: authenticated or mynetworks clients."""
        return self.user is not None or in_networks(self.conn.peer_ip, self.params.mynetworks)

    def received_header(self, recipients: list[str]) -> bytes:
        return received_header(helo=self.helo_name or "unknown", client_ip=self.conn.peer_ip,
                               hostname=self.params.myhostname, esmtp=self.esmtp,
                               tls_version=self.conn.tls_version(), tls_cipher=self.conn.tls_cipher(),
                               user=self.user, recipients=recipients)

    def client_info(self) -> dict:
        return {"helo": self.helo_name, "addr": self.conn.peer_ip, "protocol": "ESMTP" if self.esmtp else "SMTP",
                "user": self.user, "tls": self.conn.tls_version()}

    # ------------------------------------------------------------------ small commands
    async def rset(self, arg: str) -> None:
        self.reset(State.CONNECTED if self.state is State.CONNECTED else State.READY)
        await self.reply(R.RESET_OK)

    async def noop(self, arg: str) -> None:
        await self.reply(R.OK)

    async def vrfy(self, arg: str) -> None:
        await self.reply(R.VRFY_CANNOT if arg else R.SYNTAX.with_text("Syntax: VRFY address"))

    async def help(self, arg: str) -> None:
        await self.reply(R.HELP)

    async def not_implemented(self, arg: str) -> None:
        await self.reply(R.NOT_IMPLEMENTED)

    async def quit(self, arg: str) -> None:
        await self.conn.send_line(bytes(R.BYE))
        raise Close

    # ------------------------------------------------------------------ the table
    commands: ClassVar[dict[str, Command]] = {
        #                   handler          legal in        out of sequence       flags, longer line
        "EHLO":     Command(ehlo,            ANY),
        "HELO":     Command(helo,            ANY),
        "STARTTLS": Command(starttls,        READY_ONLY,     otherwise=HELO_FIRST),
        "AUTH":     Command(auth,            READY_ONLY,     otherwise=HELO_FIRST, flags=Flag.TLS_FIRST,
                            max_line=MAX_AUTH_LINE),
        "MAIL":     Command(mail,            READY_ONLY,     otherwise=NO_NESTING, flags=Flag.TLS_FIRST),
        "RCPT":     Command(rcpt,            IN_TRANSACTION, otherwise=MAIL_FIRST, flags=Flag.TLS_FIRST),
        "DATA":     Command(data,            IN_TRANSACTION, otherwise=MAIL_FIRST, flags=Flag.TLS_FIRST),
        "RSET":     Command(rset,            ANY),
        "NOOP":     Command(noop,            ANY),
        "VRFY":     Command(vrfy,            ANY),
        "HELP":     Command(help,            ANY),
        "QUIT":     Command(quit,            ANY),
        "EXPN":     Command(not_implemented, ANY),
        "ETRN":     Command(not_implemented, ANY),
        "BDAT":     Command(not_implemented, ANY),
    }


COMMANDS = Session.commands

"""A small SMTP server for the smtp client's tests: asyncio, on 127.0.0.1, a free port.

    server = FakeSMTP(extensions=["PIPELINING", "SIZE 1000", "8BITMIME", "DSN"], tls=certificate)
    async with server:                   # server.port
        ...
    server.commands      every command line received (str, without CRLF), in order
    server.messages      the DATA of each transaction, dot-stuffing undone (bytes, CRLF kept)
    server.raw_data      the DATA as received (dot-stuffed, with the final ".\r\n")
    server.tls_used      True once a STARTTLS handshake completed
    server.connections   how many connections were accepted; server.most_at_once

Behaviour knobs: greeting (the greeting line), ehlo_reply (a whole reply for EHLO instead of
the extension list), auth ({user: password}: AUTH offered with auth_mechanisms, each
checked for real: PLAIN, LOGIN and SCRAM-SHA-256 with scramp's server; a wrong password
gets 535; server.authenticated lists (user, mechanism) of each success), wrapper (TLS from
the first byte with the tls certificate, port 465 style), replies[VERB] (a reply, or a function(argument) -> reply, for MAIL,
RCPT, DATA, "." (end of data), RSET, STARTTLS), strict_pipelining (no reply to MAIL until
DATA has arrived: a client that waits for each reply deadlocks), close_after_354 (the
connection ends in the middle of the message), inject_after_starttls (bytes sent in the
same write as the STARTTLS go-ahead), hold_end_of_data (an asyncio.Event: the reply to the
end of DATA waits for it; data_received is set when the message is in). Replies are str
without the final CRLF; "\n" separates the lines of a multi-line reply.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import ssl

import scramp

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from master.ctl.tls import build_selfsigned


def make_certificate(tmp_path, hostname: str = "localhost") -> tuple[str, str]:
    """(cert_file, key_file) of a fresh self-signed certificate for hostname."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = build_selfsigned(key, hostname)
    cert_file, key_file = tmp_path / f"{hostname}.pem", tmp_path / f"{hostname}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc)
    return str(cert_file), str(key_file)


class FakeSMTP:
    def __init__(self, extensions=("PIPELINING", "8BITMIME", "DSN", "SIZE 10240000", "SMTPUTF8"),
                 tls: tuple[str, str] | None = None, greeting: str = "220 fake.test ESMTP",
                 ehlo_reply: str | None = None, replies: dict | None = None,
                 strict_pipelining: bool = False, close_after_354: bool = False,
                 inject_after_starttls: bytes = b"", hold_end_of_data: asyncio.Event | None = None,
                 auth: dict[str, str] | None = None, auth_mechanisms=("SCRAM-SHA-256", "PLAIN", "LOGIN"),
                 wrapper: bool = False):
        self.extensions = list(extensions)
        self.auth = auth
        self.auth_mechanisms = list(auth_mechanisms)
        self.wrapper = wrapper
        self.authenticated: list[tuple[str, str]] = []
        self.tls = tls
        self.greeting = greeting
        self.ehlo_reply = ehlo_reply
        self.replies = dict(replies or {})
        self.strict_pipelining = strict_pipelining
        self.close_after_354 = close_after_354
        self.inject_after_starttls = inject_after_starttls
        self.hold_end_of_data = hold_end_of_data
        self.data_received = asyncio.Event()
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.raw_data: list[bytes] = []
        self.tls_used = False
        self.connections = 0
        self.open = 0
        self.most_at_once = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeSMTP:
        context = None
        if self.wrapper:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    def _reply_for(self, verb: str, argument: str, default: str) -> str:
        reply = self.replies.get(verb, default)
        return reply(argument) if callable(reply) else reply

    @staticmethod
    def _wire(reply: str) -> bytes:
        lines = reply.split("\n")
        out = [f"{line[:3]}-{line[4:]}" if i < len(lines) - 1 and len(line) > 3 and line[3] == " " else line
               for i, line in enumerate(lines)]
        return "".join(f"{line}\r\n" for line in out).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_at_once = max(self.most_at_once, self.open)
        self.tls_used = self.tls_used or self.wrapper
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _session(self, reader, writer) -> None:
        writer.write(self._wire(self.greeting))
        if not self.greeting.startswith("220"):
            await writer.drain()
            return
        held: list[str] = []           # strict pipelining: replies waiting for DATA
        while True:
            line = await reader.readline()
            if not line:
                return
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            self.commands.append(command)
            verb, _, argument = command.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                if self.ehlo_reply is not None and (verb == "EHLO" or not self.ehlo_reply.startswith("250")):
                    reply = self.ehlo_reply if verb == "EHLO" else "250 fake.test"
                else:
                    offered = [e for e in self.extensions
                               if e != "STARTTLS" or (self.tls and not self.tls_used and not self.wrapper)]
                    if self.auth is not None:
                        offered.append("AUTH " + " ".join(self.auth_mechanisms))
                    reply = "\n".join(["250 fake.test"] + [f"250 {e}" for e in offered]) if verb == "EHLO" \
                        else "250 fake.test"
                writer.write(self._wire(reply))
            elif verb == "STARTTLS":
                reply = self._reply_for("STARTTLS", argument, "220 2.0.0 go ahead")
                writer.write(self._wire(reply) + self.inject_after_starttls)
                await writer.drain()
                if reply.startswith("220"):
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain(*self.tls)
                    await writer.start_tls(context)
                    self.tls_used = True
                continue
            elif verb == "AUTH" and self.auth is not None:
                writer.write(self._wire(await self._authenticate(reader, writer, argument)))
            elif verb == "MAIL":
                reply = self._reply_for("MAIL", argument, "250 2.1.0 Ok")
                (held.append(reply) if self.strict_pipelining else writer.write(self._wire(reply)))
            elif verb == "RCPT":
                reply = self._reply_for("RCPT", argument, "250 2.1.5 Ok")
                (held.append(reply) if self.strict_pipelining else writer.write(self._wire(reply)))
            elif verb == "DATA":
                for reply in held:
                    writer.write(self._wire(reply))
                held.clear()
                reply = self._reply_for("DATA", argument, "354 End data with <CR><LF>.<CR><LF>")
                writer.write(self._wire(reply))
                if reply.startswith("354"):
                    if self.close_after_354:
                        await writer.drain()
                        await reader.read(10)
                        return
                    await writer.drain()
                    await self._data(reader, writer)
            elif verb == "RSET":
                writer.write(self._wire(self._reply_for("RSET", argument, "250 2.0.0 Ok")))
            elif verb == "QUIT":
                writer.write(self._wire("221 2.0.0 Bye"))
                await writer.drain()
                return
            else:
                writer.write(self._wire("502 5.5.2 Error: command not recognized"))
            await writer.drain()
            if any(r.startswith("421") for r in [self.replies.get(verb, "")] if isinstance(r, str)):
                return

    async def _challenge(self, reader, writer, data: str) -> str:
        writer.write(f"334 {base64.b64encode(data.encode()).decode()}\r\n".encode())
        await writer.drain()
        line = (await reader.readline()).decode().strip()
        self.commands.append(line)
        return "*" if line == "*" else base64.b64decode(line).decode()

    async def _authenticate(self, reader, writer, argument: str) -> str:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in self.auth_mechanisms:
            return "504 5.5.4 Unrecognized authentication type"
        failed = "535 5.7.8 Error: authentication failed"
        if mechanism == "PLAIN":
            _zid, user, password = base64.b64decode(initial).decode().split("\0")
        elif mechanism == "LOGIN":
            user = await self._challenge(reader, writer, "Username:")
            password = await self._challenge(reader, writer, "Password:")
        else:
            known = {u: scramp.ScramMechanism().make_auth_info(p) for u, p in self.auth.items()}
            decoy = scramp.ScramMechanism().make_auth_info("not anyone's password")
            asked: list[str] = []
            server = scramp.ScramMechanism().make_server(lambda name: asked.append(name) or known.get(name, decoy))
            try:
                server.set_client_first(base64.b64decode(initial).decode())
                user = asked[0]
                server.set_client_final(await self._challenge(reader, writer, server.get_server_first()))
            except scramp.ScramException:
                return failed
            if await self._challenge(reader, writer, server.get_server_final()) == "*":
                return "501 5.7.0 Authentication cancelled"
            self.authenticated.append((user, mechanism))
            return "235 2.7.0 Authentication successful"
        if self.auth.get(user) != password:
            return failed
        self.authenticated.append((user, mechanism))
        return "235 2.7.0 Authentication successful"

    async def _data(self, reader, writer) -> None:
        raw, message = [], []
        while True:
            line = await reader.readuntil(b"\r\n")
            raw.append(line)
            if line == b".\r\n":
                break
            message.append(line[1:] if line.startswith(b".") else line)
        self.raw_data.append(b"".join(raw))
        self.messages.append(b"".join(message))
        self.data_received.set()
        if self.hold_end_of_data is not None:
            await self.hold_end_of_data.wait()
        writer.write(self._wire(self._reply_for(".", "", "250 2.0.0 Ok: queued as ABC")))

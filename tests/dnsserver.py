"""A tiny DNS server for the tests: UDP on 127.0.0.1, answers from a table, in a thread.

    with DNSServer() as dns:
        dns.add("2.0.0.127.bl.test", a="127.0.0.2", txt="Listed, see https://bl.test/")
        dns.silence("slow.test")           # queries under slow.test get no answer at all
        ... main.cf: dns_resolver = 127.0.0.1:{dns.port}, smtpd_rbl_servers = bl.test

Names not in the table get NXDOMAIN; a name in the table asked for a type it lacks gets
an empty NOERROR answer. queries lists every (name, type) received, for assertions.
Built on dnspython's message classes.
"""
from __future__ import annotations

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DNSServer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.records: dict[str, dict[str, str]] = {}
        self.silent: list[str] = []
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def add(self, name: str, a: str | None = None, txt: str | None = None) -> None:
        entry = self.records.setdefault(name.lower().rstrip("."), {})
        if a:
            entry["A"] = a
        if txt:
            entry["TXT"] = txt

    def silence(self, zone: str) -> None:
        self.silent.append(zone.lower().rstrip("."))

    def __enter__(self) -> "DNSServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, client = self.sock.recvfrom(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue
            answer = self._answer(query)
            if answer is not None:
                self.sock.sendto(answer.to_wire(), client)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, kind))
        if any(name == zone or name.endswith("." + zone) for zone in self.silent):
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        entry = self.records.get(name)
        if entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif kind in entry:
            value = entry[kind] if kind == "A" else f'"{entry[kind]}"'
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", kind, value))
        return response

"""A tiny DNS server for the tests: UDP on 127.0.0.1, answers from a table, in a thread.

    with DNSServer() as dns:
        dns.add("2.0.0.127.bl.test", a="127.0.0.2", txt="Listed, see https://bl.test/")
        dns.silence("slow.test")           # queries under slow.test get no answer at all
        ... main.cf: dns_resolver = 127.0.0.1:{dns.port}, smtpd_rbl_servers = bl.test
        dns.add("example.test", mx=[(10, "mx1.example.test"), (20, "mx2.example.test")])
        dns.add("mx1.example.test", a=["127.0.0.5", "127.0.0.6"], aaaa="::1")
        dns.add("nomail.test", mx=[(0, ".")])   # a null MX (RFC 7505)
        dns.fail("broken.test")            # queries under broken.test get SERVFAIL

a, aaaa, mx and txt take one value or a list (one record each; a long TXT value is split
into strings of 255 characters), ptr one name (add it under the reversed address's name). Names not in the table get
NXDOMAIN; a name in the table asked for a type it lacks gets an empty NOERROR answer. queries lists every (name, type) received, for assertions.
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
        self.records: dict[str, dict[str, list[str]]] = {}
        self.silent: list[str] = []
        self.failing: list[str] = []
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def add(self, name: str, a: str | list[str] | None = None, txt: str | list[str] | None = None,
            aaaa: str | list[str] | None = None, mx: list[tuple[int, str]] | None = None,
            ptr: str | None = None) -> None:
        entry = self.records.setdefault(name.lower().rstrip("."), {})
        for kind, values in (("A", a), ("AAAA", aaaa)):
            if values:
                entry[kind] = [values] if isinstance(values, str) else list(values)
        if txt:   # one record per value, split into strings of at most 255 characters
            entry["TXT"] = [" ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
                            for value in ([txt] if isinstance(txt, str) else txt)]
        if ptr:
            entry["PTR"] = [f"{ptr.rstrip('.')}."]
        if mx:
            entry["MX"] = [f"{preference} {host.rstrip('.')}." for preference, host in mx]

    def silence(self, zone: str) -> None:
        self.silent.append(zone.lower().rstrip("."))

    def fail(self, zone: str) -> None:
        self.failing.append(zone.lower().rstrip("."))

    @staticmethod
    def _under(name: str, zones: list[str]) -> bool:
        return any(name == zone or name.endswith("." + zone) for zone in zones)

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
        if self._under(name, self.silent):
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        entry = self.records.get(name)
        if self._under(name, self.failing):
            response.set_rcode(dns.rcode.SERVFAIL)
        elif entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif kind in entry:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", kind, entry[kind]))
        return response

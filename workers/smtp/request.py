"""A delivery request of the smtp service's protocol, parsed and checked, and its results.

parse_request(line) -> Request, or BadRequest (str: why; request_id: the id when it was read).
Every field of the protocol (workers/smtp/service.py) is checked for its type and shape:
addresses carry no spaces, controls or angle brackets (they go into MAIL FROM:<...> and
RCPT TO:<...> as they are), the queue id is store.queue.is_queue_id's, the nexthop is
workers/smtp/mx.py parse_nexthop's. Result(address, outcome, status, code, text, relay) is
one recipient's line of the reply; results_for(request, ...) gives every recipient the same.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from store.queue import is_queue_id
from workers._jsonservice import BadRequest, read_request
from workers.smtp.mx import Nexthop, parse_nexthop

ADDRESS_MAX = 512
TEXT_MAX = 1000                # ENVID and ORCPT (RFC 3461: 100 and 500 octets)
RECIPIENTS_MAX = 1000
NOTIFY = ("SUCCESS", "FAILURE", "DELAY", "NEVER")
_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")
FIELDS = ("id", "queue_id", "offset", "size", "sender", "ret", "envid", "body", "smtputf8",
          "nexthop", "recipients")


@dataclass(frozen=True)
class Recipient:
    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None            # "rfc822;bob@example.org", decoded (we xtext-encode it)


@dataclass(frozen=True)
class Request:
    id: int
    queue_id: str
    offset: int
    size: int
    sender: str
    ret: str | None
    envid: str | None
    body: str | None
    smtputf8: bool
    nexthop: Nexthop
    recipients: tuple[Recipient, ...]

    @property
    def needs_smtputf8(self) -> bool:
        return self.smtputf8 or not all(a.isascii() for a in (self.sender, *(r.address for r in self.recipients)))


@dataclass(frozen=True)
class Result:
    address: str
    outcome: str                        # sent | deferred | bounced
    status: str                         # the enhanced status code, 2.0.0
    code: int                           # the remote reply's code, 0 when there was none
    text: str
    relay: str                          # host[address]:port, "" when no host was reached

    def to_wire(self) -> dict:
        return asdict(self)


def results_for(request: Request, outcome: str, status: str, code: int, text: str, relay: str) -> list[Result]:
    return [Result(r.address, outcome, status, code, text, relay) for r in request.recipients]


def _field(data: dict, name: str, kind: type, request_id):
    value = data.get(name)
    if type(value) is not kind:                         # exact: True is no int here
        raise BadRequest(f"{name!r} must be {kind.__name__}", request_id)
    return value


def _address(text: str, what: str, request_id, empty_ok: bool = False) -> str:
    if (not text and not empty_ok) or len(text) > ADDRESS_MAX or _BAD_ADDRESS.search(text):
        raise BadRequest(f"bad {what} address {text[:80]!r}", request_id)
    return text


def _text(value, what: str, request_id) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > TEXT_MAX or not value.isprintable():
        raise BadRequest(f"bad {what}", request_id)
    return value


def _recipient(data, request_id) -> Recipient:
    if not isinstance(data, dict) or set(data) - {"address", "notify", "orcpt"}:
        raise BadRequest("a recipient must be an object of address, notify, orcpt", request_id)
    address = _address(_field(data, "address", str, request_id), "recipient", request_id)
    notify = data.get("notify")
    if notify is not None:
        if (not isinstance(notify, list) or not notify or any(n not in NOTIFY for n in notify)
                or ("NEVER" in notify and len(notify) > 1)):
            raise BadRequest(f"bad notify {notify!r}"[:100], request_id)
        notify = tuple(notify)
    orcpt = _text(data.get("orcpt"), "orcpt", request_id)
    if orcpt is not None and ";" not in orcpt:
        raise BadRequest("orcpt must be TYPE;ADDRESS", request_id)
    return Recipient(address, notify, orcpt)


def parse_request(line: bytes) -> Request:
    data, request_id = read_request(line)
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {min(unknown)!r}", request_id)
    queue_id = _field(data, "queue_id", str, request_id)
    if not is_queue_id(queue_id):
        raise BadRequest("bad queue_id", request_id)
    offset, size = _field(data, "offset", int, request_id), _field(data, "size", int, request_id)
    if offset < 0 or size < 0:
        raise BadRequest("offset and size must not be negative", request_id)
    sender = _address(_field(data, "sender", str, request_id), "sender", request_id, empty_ok=True)
    ret, body = data.get("ret"), data.get("body")
    if ret not in (None, "FULL", "HDRS") or body not in (None, "7BIT", "8BITMIME"):
        raise BadRequest("bad ret or body", request_id)
    smtputf8 = data.get("smtputf8", False)
    if type(smtputf8) is not bool:
        raise BadRequest("'smtputf8' has the wrong type", request_id)
    try:
        nexthop = parse_nexthop(_field(data, "nexthop", str, request_id))
    except ValueError as e:
        raise BadRequest(str(e), request_id) from None
    recipients = _field(data, "recipients", list, request_id)
    if not recipients or len(recipients) > RECIPIENTS_MAX:
        raise BadRequest(f"between 1 and {RECIPIENTS_MAX} recipients", request_id)
    return Request(request_id, queue_id, offset, size, sender, ret, _text(data.get("envid"), "envid", request_id),
                   body, smtputf8, nexthop, tuple(_recipient(r, request_id) for r in recipients))


def id_of(line: bytes) -> int | None:
    try:
        return parse_request(line).id
    except BadRequest as e:
        return e.request_id

"""The smtp service (Postfix's smtp(8)): delivers queued mail to other mail servers for qmgr.

A unix service of master.cf (`smtp unix - - n - 1 smtp`): the master binds its socket,
$run_directory/<service>.sock, and hands the listening socket to this process (env
proto.ENV_LISTEN_FD); qmgr finds the path with proto.service_socket("smtp") and sends each
delivery here (workers/qmgr/transports/remote.py). This process holds no queue state and
writes no index: it reads the message from the queue file, talks SMTP, and answers with
one result per recipient; qmgr logs them and writes the done marks.

Protocol: one JSON object per line (UTF-8, `\n`), both ways.
  request  {"id": N, "queue_id": ID, "offset": O, "size": S, "sender": "a@b" | "" (null sender),
            "ret": null | "FULL" | "HDRS", "envid": null | TEXT, "body": null | "7BIT" | "8BITMIME",
            "smtputf8": BOOL,
            "nexthop": "example.org" (MX lookup) | "example.org:587" (MX lookup, that port)
                     | "[mx.example.org]" | "[192.0.2.1]:587" (that host, no MX lookup; port 25
                       unless given),
            "recipients": [{"address": "x@example.org",
                            "notify": null | ["SUCCESS", "FAILURE", "DELAY"] (some) | ["NEVER"],
                            "orcpt": null | "rfc822;y@z" (decoded: it is sent xtext-encoded)}, ...]}
           N: an integer in [0, 2**31) chosen by the client and echoed in the reply. The message
           is bytes [O, O+S) of queue_directory/active/ID (opened read-only; ID must be a queue
           id, so no other file can be named), with its Received: header already in; it is
           sent as it is, dot-stuffed with CRLF line ends.
  reply    {"id": N, "results": [{"address": A, "outcome": "sent" | "deferred" | "bounced",
                                  "status": "5.1.1", "code": 550 (0: no remote reply),
                                  "text": "host mx.example.org[192.0.2.1] said: 550 5.1.1 ...
                                           (in reply to RCPT TO command)" or our reason,
                                  "relay": "mx.example.org[192.0.2.1]:25" | ""}, ...]}
             one result per request recipient, in the request's order;
           {"id": N | null, "error": TEXT}: the whole request is deferred: a bad request (then
             id null when it could not be read), an unreadable queue file, too many in flight,
             or a failure of this service.
  Replies are sent as deliveries finish, not in the order of the requests. A request is
  never delivered twice by this service; a connection that ends before its reply leaves
  the outcome unknown to qmgr (it retries later, as after a crash).
Limits (workers/_jsonservice.py): a request line of at most REQUEST_MAX bytes, ended within
REQUEST_TIMEOUT seconds once begun; at most IN_FLIGHT_MAX unanswered requests per
connection; at most CONNECTIONS_MAX connections; a reply not taken within WRITE_TIMEOUT
seconds closes the connection.
Drain (reload, recycling, stop): no new requests are read; the deliveries under way finish
and are answered, the kept SMTP connections say QUIT, and the process exits.
DNS answers (MX, A, AAAA) are kept for their TTL (at most DNS_CACHE_ENTRIES of them), as a
caching resolver next to Postfix would keep them.
Inside: workers/smtp/request.py (the request), deliver.py (hosts, connection reuse, the
per-nexthop limit), mx.py (DNS), client.py (the SMTP conversation), message.py (the queue
file's bytes in DATA form).
Diagnostics: the smtp log: bad requests (one line each, the start of the request), a host
that could not be used (host and reason), a password file that cannot be used (once per
problem), TLS state and the AUTH user at level high. The per-recipient lines
(to=, relay=, status=) are qmgr's.
"""
from __future__ import annotations

import traceback

import dns.resolver

from workers._jsonservice import JSONLineService, Limits
from workers._server import Daemon, run_daemon
from workers.smtp.client import Settings
from workers.smtp.deliver import Deliverer
from workers.smtp.message import MessageSource
from workers.smtp.passwords import PasswordMap
from workers.smtp.request import BadRequest, id_of, parse_request
from workers.smtpd.rbl import make_resolver

REQUEST_MAX = 1024 * 1024      # 1000 recipients of 512 octets with their ORCPTs fit
REQUEST_TIMEOUT = 10.0
IN_FLIGHT_MAX = 1024
CONNECTIONS_MAX = 64
WRITE_TIMEOUT = 30.0
DNS_TIMEOUT = 20.0             # seconds for one DNS question (its retries included)
DNS_CACHE_ENTRIES = 10_000     # MX and address answers kept for their TTL (dnspython's LRU cache)
LOGGED_REQUEST = 80            # characters of a bad request kept for the log
LIMITS = Limits(REQUEST_MAX, REQUEST_TIMEOUT, IN_FLIGHT_MAX, CONNECTIONS_MAX, WRITE_TIMEOUT)


class SMTPService:
    """Answers delivery request lines: parse, open the message, deliver."""

    def __init__(self, deliverer: Deliverer, queue_directory: str, log):
        self.deliverer = deliverer
        self.queue_directory = queue_directory
        self.log = log

    async def answer(self, line: bytes) -> dict:
        try:
            request = parse_request(line)
        except BadRequest as e:
            shown = line[:LOGGED_REQUEST].decode("utf-8", "replace").rstrip("\n")
            self.log.error(f"smtp service: bad request ({e}): {shown!r}")
            return {"id": e.request_id, "error": f"bad request: {e}"}
        try:
            message = await MessageSource.open(self.queue_directory, request.queue_id, request.offset, request.size)
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            return {"id": request.id, "error": f"cannot read queue file active/{request.queue_id}: {reason}"}
        try:
            results = await self.deliverer.deliver(request, message)
        except Exception as e:          # a bug here must not leave qmgr waiting: an answer still
            self.log.error(f"smtp service: delivery of {request.queue_id} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
            return {"id": request.id, "error": f"the delivery failed: {type(e).__name__}"}
        finally:
            message.close()
        return {"id": request.id, "results": [result.to_wire() for result in results]}


def deliverer_from_params(params, log) -> Deliverer:
    passwords = None
    if params.smtp_sasl_auth_enable and params.smtp_sasl_password_maps:
        passwords = PasswordMap(params.smtp_sasl_password_maps, log)
    resolver = make_resolver(params.dns_resolver)
    resolver.cache = dns.resolver.LRUCache(DNS_CACHE_ENTRIES)   # answers kept for their TTL
    return Deliverer(Settings.from_params(params), resolver, DNS_TIMEOUT,
                     params.smtp_connection_cache_time_limit, params.smtp_destination_concurrency_limit, log,
                     passwords)


async def main(daemon: Daemon) -> None:
    deliverer = deliverer_from_params(daemon.params, daemon.log)
    service = SMTPService(deliverer, daemon.params.queue_directory, daemon.log)
    await JSONLineService(service.answer, id_of, LIMITS, daemon.log, "smtp service").run(daemon)
    deliverer.close_idle()
    await deliverer.closed()


def run() -> None:
    run_daemon(main, "smtp")

"""The auth service (Dovecot's auth process): password checks for smtpd, pop3d and imapd.

A unix service of master.cf (`auth unix - n n - 1 auth`): the master binds its socket,
$run_directory/<service>.sock, and hands the listening socket to this process (env
proto.ENV_LISTEN_FD); every other worker gets the path (proto.ENV_AUTH_SOCKET) and asks
here through workers/_authremote.py RemoteVerifier instead of reading the password
database itself. Inside, a LocalVerifier (workers/_authpool.py) answers: scrypt in
auth_verify_threads threads, at most auth_verify_queue_limit waiting, the cache of
successful logins (auth_cache_ttl, auth_cache_size; an entry holds only for the account's
version it was made with, so a `mailctl user` change applies at the next login), and the
per-user allowances (disabled, the user's protocols) in every Verdict. The protocols keep
the failure delays (auth_failure_delay and the master's auth penalty).

Protocol: one JSON object per line (UTF-8, `\n`), both ways; bytes are base64 text.
  request  {"id": N, "protocol": "smtp" | "pop" | "imap", "check": NAME, FIELD: VALUE...}
           with NAME and FIELDs those of workers/_authchecks.py CHECKS:
             password      login, password
             cram          login, challenge, digest
             apop          login, timestamp, hexdigest
             scram-lookup  login
             scram-proof   login, salt, iterations, auth_message, proof
           N: an integer in [0, 2**31) chosen by the client and echoed in the reply.
  reply    {"id": N, "user": NAME | null, "server_signature": B64, "refused": ""|REASON}
             a Verdict (user null: wrong credentials; refused: the user may not log in with
             this protocol: "disabled", "pop-not-allowed", "imap-not-allowed")
           {"id": N, "salt": B64, "iterations": I}                   for scram-lookup
           {"id": N | null, "error": TEXT}   no answer: a bad request (not JSON, unknown check
             or field, bad id: then null), too many in flight, or the verifier cannot answer
             now (its queue is full, the database unreadable): the client's temporary failure
  Replies are sent as the checks finish, not in the order of the requests.
Limits (workers/_jsonservice.py): a request line of at most REQUEST_MAX bytes (longer: an error reply, then the
connection is closed); a line once begun must end within REQUEST_TIMEOUT seconds (else
the same); at most IN_FLIGHT_MAX unanswered requests per connection (one more gets an error
reply at once); at most CONNECTIONS_MAX connections (one more is closed at once); a reply
the client does not take within WRITE_TIMEOUT seconds closes its connection.
Drain (reload, recycling, stop): no new connection; the requests read are answered, then
every connection is closed and the process exits. The clients send their next check again
on a new connection, which waits in the master's listening socket until the next process
takes it.
Diagnostics: server.log: bad requests (one line each, the start of the request), lost
connections at level high, `auth cache hit: user=NAME protocol=P` at level high.
"""
from __future__ import annotations


from store.users import UserDB
from workers._authchecks import answer_to_wire, check_from_wire
from workers._authpool import AuthUnavailable, LocalVerifier
from workers._jsonservice import BadRequest, JSONLineService, Limits, read_request
from workers._server import Daemon, run_daemon

REQUEST_MAX = 64 * 1024
REQUEST_TIMEOUT = 10.0
IN_FLIGHT_MAX = 256
CONNECTIONS_MAX = 1024
WRITE_TIMEOUT = 10.0
LOGIN_PROTOCOLS = ("smtp", "pop", "imap")
LOGGED_REQUEST = 80            # characters of a bad request kept for the log


def parse_request(line: bytes) -> tuple[int | None, str, object]:
    """(id, protocol, check) of a request line; BadRequest (with the id when it was read)."""
    data, request_id = read_request(line)
    protocol = data.get("protocol")
    try:
        if protocol not in LOGIN_PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(LOGIN_PROTOCOLS)}")
        return request_id, protocol, check_from_wire(data, ("id", "protocol"))
    except ValueError as e:
        raise BadRequest(str(e), request_id) from None


class AuthService(JSONLineService):
    """The connections of the protocol workers (serve, stop_reading, finish: workers/_jsonservice.py)
    and the checks they asked."""

    def __init__(self, verifier, log):
        limits = Limits(REQUEST_MAX, REQUEST_TIMEOUT, IN_FLIGHT_MAX, CONNECTIONS_MAX, WRITE_TIMEOUT)
        super().__init__(self._check_line, self._id_of, limits, log, "auth")
        self.verifier = verifier

    @staticmethod
    def _id_of(line: bytes) -> int | None:
        try:
            return parse_request(line)[0]
        except BadRequest as e:
            return e.request_id

    async def _check_line(self, line: bytes) -> dict:
        try:
            request_id, protocol, check = parse_request(line)
        except BadRequest as e:
            shown = line[:LOGGED_REQUEST].decode("utf-8", "replace").rstrip("\n")
            self.log.error(f"auth: bad request ({e}): {shown!r}")
            return {"id": e.request_id, "error": f"bad request: {e}"}
        try:
            answer = await self.verifier.verify(check, protocol)
        except AuthUnavailable as e:
            return {"id": request_id, "error": str(e)}
        except Exception as e:     # input the checks did not foresee: an answer still, no traceback
            self.log.error(f"auth: {type(check).__name__} for {protocol} failed: {type(e).__name__}: {e}")
            return {"id": request_id, "error": "the check failed"}
        return {"id": request_id, **answer_to_wire(answer)}


async def main(daemon: Daemon) -> None:
    users = UserDB.from_params(daemon.params)
    await AuthService(LocalVerifier.from_params(daemon.params, users, daemon.log), daemon.log).run(daemon)
    users.close()


def run() -> None:
    run_daemon(main, "server")

"""One delivery request from nexthop to results: hosts, connection reuse, concurrency.

Deliverer(settings, resolver, dns_timeout, cache_time, concurrency, log, passwords=None):
`await deliverer.deliver(request, message) -> list[Result]` (one per recipient, in order)
  0. with passwords (workers/smtp/passwords.py PasswordMap: smtp_sasl_auth_enable with a
     smtp_sasl_password_maps), looks up the nexthop's user and password, given to each new
     connection (client.py authenticates when the host offers AUTH); a password file that
     cannot be used defers every recipient (4.3.5, the reason; logged by the map);
  1. waits for one of the nexthop's `concurrency` slots (smtp_destination_concurrency_limit:
     deliveries to one nexthop at once; the others wait their turn);
  2. takes a connection to the nexthop that an earlier delivery left open, when there is one
     (RSET first; a connection that fails that is dropped);
  3. else resolves the nexthop (workers/smtp/mx.py; Unroutable gives every recipient its
     outcome) and tries the hosts in order: a host that cannot be used (SessionFailed: no
     connection, a refusing greeting or EHLO, TLS that the level needs and cannot be had,
     a connection lost before DATA) is logged and the next one tried; when none is left,
     every recipient is deferred with the last host's reason. A host that is this system
     (client.py Looping: it answers EHLO with myhostname) bounces them all (5.4.6 "mail for
     DOMAIN loops back to myself"), as does an MX list led by myhostname (mx.py);
  4. after a transaction, a connection still usable is kept open for `cache_time` seconds
     (smtp_connection_cache_time_limit; 0: never) for the nexthop's next request, then
     closed with QUIT. Kept connections count in the nexthop's limit: never more than
     `concurrency` connections to one nexthop, busy and idle together.
close_idle() closes the kept connections (drain); `await closed()` waits for their QUITs.
Log: one line per host that could not be used (level medium: host and reason).
"""
from __future__ import annotations

import asyncio
import contextlib

from workers.smtp.client import Looping, Session, SessionFailed, Settings
from workers.smtp.message import MessageSource
from workers.smtp.mx import Host, Nexthop, Unroutable, looping, resolve
from workers.smtp.passwords import MapUnusable, PasswordMap
from workers.smtp.request import Request, Result, results_for


class Deliverer:
    def __init__(self, settings: Settings, resolver, dns_timeout: float, cache_time: float,
                 concurrency: int, log, passwords: PasswordMap | None = None):
        self.settings = settings
        self.passwords = passwords
        self.resolver = resolver
        self.dns_timeout = dns_timeout
        self.cache_time = cache_time
        self.concurrency = concurrency
        self.log = log
        self._slots: dict[Nexthop, list] = {}             # nexthop -> [Semaphore, users]
        self._idle: dict[Nexthop, list[tuple[Session, asyncio.TimerHandle]]] = {}
        self._closing: set[asyncio.Task] = set()
        self.keep = True                                   # False once draining: nothing kept

    @contextlib.asynccontextmanager
    async def _slot(self, nexthop: Nexthop):
        slot = self._slots.setdefault(nexthop, [asyncio.Semaphore(self.concurrency), 0])
        slot[1] += 1
        try:
            async with slot[0]:
                yield
        finally:
            slot[1] -= 1
            if not slot[1]:
                del self._slots[nexthop]

    async def deliver(self, request: Request, message: MessageSource) -> list[Result]:
        credentials = None
        if self.passwords is not None:
            try:
                credentials = self.passwords.lookup(request.nexthop)
            except MapUnusable as e:
                return results_for(request, "deferred", "4.3.5", 0, str(e), "")
        async with self._slot(request.nexthop):
            session = await self._reuse(request.nexthop)
            if session is not None:
                try:
                    return await self._send(request.nexthop, session, request, message)
                except SessionFailed as e:
                    self.log.info(f"reused connection failed: {e.text}")
            try:
                hosts = await resolve(request.nexthop, self.resolver, self.dns_timeout, self.settings.myhostname)
            except Unroutable as e:
                return results_for(request, e.outcome, e.status, 0, e.text, "")
            return await self._try_hosts(request, message, hosts, credentials)

    async def _try_hosts(self, request: Request, message: MessageSource, hosts: list[Host],
                         credentials: tuple[str, str] | None = None) -> list[Result]:
        for host in hosts:
            try:
                session = await Session.open(host, self.settings, self.log, credentials)
                return await self._send(request.nexthop, session, request, message)
            except Looping as e:
                self.log.error(e.text)
                loop = looping(request.nexthop.host)
                return results_for(request, loop.outcome, loop.status, 0, loop.text, host.relay)
            except SessionFailed as e:
                self.log.info(e.text)                       # every text names the host
                failure = e
        return results_for(request, "deferred", failure.status, failure.code, failure.text, host.relay)

    async def _send(self, nexthop: Nexthop, session: Session, request: Request,
                    message: MessageSource) -> list[Result]:
        try:
            results = await session.send(request, message)
        except BaseException:
            session.abort()
            raise
        self._keep(nexthop, session)
        return results

    # ------------------------------------------------------------------ kept connections
    async def _reuse(self, nexthop: Nexthop) -> Session | None:
        idle = self._idle.get(nexthop)
        while idle:
            session, timer = idle.pop()
            timer.cancel()
            if not idle:
                del self._idle[nexthop]
            if await session.reset():
                return session
            idle = self._idle.get(nexthop)
        return None

    def _keep(self, nexthop: Nexthop, session: Session) -> None:
        if not session.usable:
            session.abort()
            return
        if not self.keep or self.cache_time <= 0:
            self._quit(session)
            return
        timer = asyncio.get_running_loop().call_later(self.cache_time, self._expire, nexthop, session)
        self._idle.setdefault(nexthop, []).append((session, timer))

    def _expire(self, nexthop: Nexthop, session: Session) -> None:
        idle = self._idle.get(nexthop, [])
        for i, (kept, _timer) in enumerate(idle):
            if kept is session:
                del idle[i]
                break
        if not idle:
            self._idle.pop(nexthop, None)
        self._quit(session)

    def _quit(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close_idle(self) -> None:
        self.keep = False
        for idle in self._idle.values():
            for session, timer in idle:
                timer.cancel()
                self._quit(session)
        self._idle.clear()

    async def closed(self) -> None:
        while self._closing:
            await asyncio.wait(set(self._closing))

"""The connection limit (maxproc) across worker processes, with the polite refusal."""
from __future__ import annotations

import pytest

from tests.integration.echo_client import ECHO, EchoClient, service, wait_until

pytestmark = pytest.mark.integration


def test_limit_refuses_politely_while_open_sessions_go_on(mailsystem):
    ms = mailsystem(main={"worker_client_limit": "2"})
    echo = ms.add_service(ECHO, maxproc=3)
    ms.start()
    sessions = [EchoClient(ms.port(echo)) for _ in range(3)]
    try:
        assert all(s.greeting.startswith("+OK echo") for s in sessions)
        # worker_client_limit 2: the third session needed a second worker process.
        assert len({s.pid() for s in sessions}) == 2

        with EchoClient(ms.port(echo)) as over:
            assert over.greeting.startswith("-ERR [SYS/TEMP]")
            assert over.line() == ""                      # and the server closed it

        assert [s.ask(f"still here {i}") for i, s in enumerate(sessions)] == \
               [f"+OK still here {i}" for i in range(3)]
        state = service(ms, echo)
        assert (state["connections"], state["refused"], len(state["workers"])) == (3, 1, 2)
        assert "refusing connections over maxproc (maxproc 3, 3 sessions open; first refused: 127.0.0.1)" \
            in ms.log("server")

        # A session that ends frees its slot for the next client.
        assert sessions.pop().ask("QUIT") == "+OK bye"
        wait_until(lambda: service(ms, echo)["connections"] == 2, what="the slot to be freed")
        with EchoClient(ms.port(echo)) as again:
            assert again.greeting.startswith("+OK echo")
    finally:
        for s in sessions:
            s.close()


def test_limits_are_per_service(mailsystem):
    ms = mailsystem()
    small = ms.add_service(ECHO, maxproc=1)
    other = ms.add_service(ECHO, maxproc=2)
    ms.start()
    with EchoClient(ms.port(small)) as first, EchoClient(ms.port(other)) as elsewhere:
        with EchoClient(ms.port(small)) as over:
            assert over.greeting.startswith("-ERR [SYS/TEMP]")
        assert elsewhere.ask("ping") == "+OK ping"
        assert first.ask("ping") == "+OK ping"


def test_slot_is_free_as_soon_as_the_client_sees_the_end(mailsystem):
    ms = mailsystem()
    echo = ms.add_service(ECHO, maxproc=1)
    ms.start()
    for round_ in range(20):
        with EchoClient(ms.port(echo)) as client:
            assert client.greeting.startswith("+OK echo"), f"round {round_}: {client.greeting}"
            assert client.ask("QUIT") == "+OK bye"
            assert client.line() == ""                  # the server closed the session


def test_client_that_hangs_up_and_reconnects_at_once_is_not_refused(mailsystem):
    ms = mailsystem()
    echo = ms.add_service(ECHO, maxproc=1)
    ms.start()
    for round_ in range(20):
        with EchoClient(ms.port(echo)) as client:
            assert client.greeting.startswith("+OK echo"), f"round {round_}: {client.greeting}"
        # The client closed first: the worker notices a moment later; the next one waits for that.

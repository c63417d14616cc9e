"""A unix service that exists only for the master's tests (`tests.integration.tick_service`).

It logs `tick <n>` in server.log at every wakeup the master sends and exits when drained.
With the argument `crash` it fails right after start-up instead (a crash loop).
"""
from __future__ import annotations

import sys

from workers._server import Daemon, run_daemon


async def main(daemon: Daemon) -> None:
    if "crash" in sys.argv[1:]:
        raise RuntimeError("tick_service told to crash")
    ticks = 0
    while not daemon.stopping:
        if await daemon.wait_wakeup(timeout=None) and not daemon.stopping:
            ticks += 1
            daemon.log.info(f"tick {ticks}")


if __name__ == "__main__":
    run_daemon(main, log_name="server")

"""UIDL values survive a master restart and `mailctl reconstruct` of a lost index, and the
maildrop stays readable while the disk guard says space is low. A session open while the
master stops (SIGTERM) is told `-ERR [SYS/TEMP]` and its DELE marks are not committed.
"""
from __future__ import annotations

import poplib
import shutil
import time

import pytest

from tests.integration.pop3d_support import PopSystem, login

pytestmark = pytest.mark.integration

NAMES = ["01-plain.eml", "05-mixed-attachment.eml", "07-forwarded-rfc822.eml", "09-folded-headers.eml"]


def uidls(system) -> list[bytes]:
    client = login(system.port("plain"), "keeper", "keep-pw")
    try:
        return client.uidl()[1]
    finally:
        client.quit()


def restart(system, **main) -> None:
    system.ms.stop()
    system.ms.set_main(**main)
    system.ms.start()


def test_uidl_stable_across_restart_reconstruct_and_low_space(tmp_path):
    system = PopSystem(tmp_path / "sys")
    try:
        system.add_user("keeper", "keep-pw")
        system.deliver("keeper", *NAMES)
        before = uidls(system)
        assert len(before) == len(NAMES)

        idle = login(system.port("plain"), "keeper", "keep-pw")
        idle.dele(1)
        restart(system)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\] Server shutting down"):
            idle._getresp()   # the line the server sent when it stopped (nothing is sent: it is gone)
        idle.close()
        assert uidls(system) == before

        system.ms.stop()
        shutil.rmtree(system.ms.var / "index")            # the index is lost
        system.ms.start()
        report = system.ms.mailctl("reconstruct", "keeper")
        assert report.returncode == 0
        assert uidls(system) == before

        # Disk guard raised: reading, and deleting (which frees space), keep working.
        restart(system, disk_min_free="1000000G")
        flag = system.ms.var / "run" / "lowspace"
        deadline = time.monotonic() + 10
        while not flag.exists():
            assert time.monotonic() < deadline, "lowspace flag never appeared"
            time.sleep(0.1)
        client = login(system.port("plain"), "keeper", "keep-pw")
        assert client.uidl()[1] == before
        assert len(client.retr(2)[1]) > 10
        client.dele(1)
        assert client.quit().startswith(b"+OK Logging out, 1 messages deleted")
        assert [line.split()[1] for line in uidls(system)] == [line.split()[1] for line in before[1:]]
    finally:
        system.stop()

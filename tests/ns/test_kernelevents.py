"""The kernel's uevent socket, in a private network namespace (root; netlink groups are per
namespace, so nothing reaches the host's listeners): what user space sends to the kernel's
group is ignored, and every wait ends at its timeout."""

from __future__ import annotations

import _socket
import os
import time
from typing import Any

import pytest

from pyinit import kernelevents
from tests.ns.test_switchroot import in_namespace
from tests.unit.test_kernelevents import ADD_VDA

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
CLONE_NEWNET = 0x40000000


def forge() -> None:
    """Send ADD_VDA to the kernel's group from user space, as a forged kernel event."""
    sender = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM,
                            kernelevents.NETLINK_KOBJECT_UEVENT)
    sender.bind((0, 0))
    sender.sendto(ADD_VDA, (0, kernelevents.KERNEL_GROUP))
    sender.close()


def test_user_space_datagrams_are_ignored_and_waits_end() -> None:
    def body() -> dict[str, Any]:
        monitor = kernelevents.Monitor()
        forge()
        start = time.monotonic()
        first = monitor.poll(0.3)  # received, and dropped: its port is not 0
        waited = time.monotonic() - start
        queued = monitor.poll(0)  # nothing queued: at once
        monitor.close()
        monitor.close()
        try:
            monitor.poll(0)
            closed = "returned"
        except RuntimeError as err:
            closed = str(err)
        return {"first": repr(first), "waited": waited, "queued": repr(queued),
                "closed": closed}

    said = in_namespace(body, CLONE_NEWNET)
    assert said["first"] == said["queued"] == "None"
    assert 0.25 < said["waited"] < 2
    assert "the kernel's socket was closed" in said["closed"]


def test_the_forged_datagram_arrives_at_all() -> None:
    # The test above means something only if the datagram reaches the socket: it does,
    # and only the sender check drops it.
    def body() -> dict[str, Any]:
        monitor = kernelevents.Monitor()
        forge()
        assert monitor.sock is not None
        monitor.sock.settimeout(2)
        message, (port, _groups) = monitor.sock.recvfrom(kernelevents.MESSAGE_MAX)
        return {"same": message == ADD_VDA, "port": port}

    said = in_namespace(body, CLONE_NEWNET)
    assert said["same"] and said["port"] != 0

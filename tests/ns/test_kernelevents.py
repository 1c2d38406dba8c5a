"""The kernel's uevent socket, in a private network namespace (root): what user space
sends to the kernel's group is ignored, and every wait ends at its timeout."""

from __future__ import annotations

import _socket
import os
import time
import traceback
from collections.abc import Callable

import pytest

from pyinit import kernelevents, syscalls
from tests.unit.test_kernelevents import ADD_VDA

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
CLONE_NEWNET = 0x40000000


def in_network_namespace(body: Callable[[], None]) -> str:
    """Run BODY in a forked child in a new network namespace (netlink groups are per
    namespace: nothing reaches the host's listeners); "" or the child's traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        said = ""
        try:
            syscalls.unshare(CLONE_NEWNET)
            body()
        except BaseException:
            said = traceback.format_exc()
        os.write(write_end, said.encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return b"".join(chunks).decode()


def test_user_space_datagrams_are_ignored_and_waits_end() -> None:
    def body() -> None:
        monitor = kernelevents.Monitor()
        sender = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM,
                                kernelevents.NETLINK_KOBJECT_UEVENT)
        sender.bind((0, 0))
        sender.sendto(ADD_VDA, (0, kernelevents.KERNEL_GROUP))  # a forged kernel event
        start = time.monotonic()
        assert monitor.poll(0.3) is None  # received, and dropped: its port is not 0
        assert 0.25 < time.monotonic() - start < 2
        assert monitor.poll(0) is None  # nothing queued: at once
        monitor.close()
        monitor.close()
        try:
            monitor.poll(0)
        except RuntimeError as err:
            assert "the kernel's socket was closed" in str(err)
        else:
            raise AssertionError("poll on a closed monitor returned")

    assert in_network_namespace(body) == ""


def test_the_forged_datagram_arrives_at_all() -> None:
    # The test above means something only if the datagram reaches the socket: it does,
    # and only the sender check drops it.
    def body() -> None:
        monitor = kernelevents.Monitor()
        sender = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM,
                                kernelevents.NETLINK_KOBJECT_UEVENT)
        sender.bind((0, 0))
        sender.sendto(ADD_VDA, (0, kernelevents.KERNEL_GROUP))
        assert monitor.sock is not None
        monitor.sock.settimeout(2)
        message, (port, _groups) = monitor.sock.recvfrom(kernelevents.MESSAGE_MAX)
        assert message == ADD_VDA and port != 0

    assert in_network_namespace(body) == ""

"""free_port never hands out the same port twice in one process, even when the kernel would."""

from __future__ import annotations

import socket

from chronos import embedded


def test_a_port_the_kernel_gives_again_is_not_handed_out_twice(monkeypatch):
    # The kernel's ephemeral allocator may return a just-closed port; make it always do so.
    real_socket = socket.socket

    class SamePortSocket(real_socket):
        def getsockname(self):
            return ("127.0.0.1", 40000 + SamePortSocket.calls.pop(0))

    SamePortSocket.calls = [1, 1, 1, 2]
    monkeypatch.setattr(embedded.socket, "socket", SamePortSocket)
    monkeypatch.setattr(embedded, "_handed_out", set())
    assert embedded.free_port() == 40001
    assert embedded.free_port() == 40002  # 40001 again twice, skipped


def test_real_ports_are_distinct():
    ports = [embedded.free_port() for _ in range(50)]
    assert len(set(ports)) == 50

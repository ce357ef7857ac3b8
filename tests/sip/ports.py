"""Free loopback ports for the peers, so parallel runs and the lead's server never collide.

A port is free when we could bind it a moment ago: the peer binds it right after, so a race is
possible but rare; callers that fail to bind should simply retry with a fresh port.
"""

from __future__ import annotations

import random
import socket

HOST = "127.0.0.1"


def _can_bind(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(udp: bool = True, tcp: bool = True) -> int:
    """A port free on 127.0.0.1 for UDP and/or TCP (SIP listens on both)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if (not udp or _can_bind(port, socket.SOCK_DGRAM)) and (
            not tcp or _can_bind(port, socket.SOCK_STREAM)
        ):
            return port
    raise RuntimeError("no free loopback port found after 200 tries")


def free_udp_block(count: int = 4) -> int:
    """An even port P with P..P+count-1 free for UDP: RTP/RTCP (and sipp's video pair)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000, 2)
        if all(_can_bind(base + i, socket.SOCK_DGRAM) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free UDP ports found after 200 tries")

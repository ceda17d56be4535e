"""The caller's address, as budgets and lockouts count it."""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote


def peer_address(peer: str) -> str:
    """The address a call came from, as throttled: ``ipv4:127.0.0.1:5555`` -> ``127.0.0.1``.

    A client named by a trusted proxy has no port: ``ipv4:203.0.113.7``, ``ipv6:[2001:db8::1]``
    (see gateway/call/forwarded.py). An IPv6 peer counts by its /64 network: one host usually
    holds a whole /64, and would otherwise get a fresh budget of failures from each of its addresses.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        host, colon, _ = rest.rpartition(":")
        return host if colon else rest
    if kind == "ipv6":
        # grpc writes the brackets percent-encoded: ipv6:%5B::1%5D:5555
        text = unquote(rest)
        host = text[1:].partition("]")[0] if text.startswith("[") else text.rpartition(":")[0]
        host = host.partition("%")[0]
        try:
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return peer  # unix sockets and the like: the whole peer string
